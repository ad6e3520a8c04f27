//! Registration waits for the registry without the core waiting: an agent
//! issued a secret is told only once the secret is committed, and the
//! core goes on meanwhile.

use super::*;

fn agent_ids_in_state(h: &Harness) -> Vec<String> {
    h.core.agents.keys().cloned().collect()
}

#[tokio::test(start_paused = true)]
async fn a_new_agent_is_told_only_once_its_secret_is_committed() {
    let mut h = Harness::new();
    let first = h.admit(1);
    h.hold_commits();
    let (tx, mut rx) = h.register(2, None, "", Vec::new());
    // The core goes on: a known agent's heartbeat is answered, time passes.
    h.heartbeat(&first);
    h.advance(Duration::from_secs(2)).await;
    // A heartbeat of the waiting session (early, but not wrong) leaves it be.
    h.send(CoreMsg::Agent {
        conn: 2,
        tx: tx.clone(),
        msg: AgentMessage {
            message: Some(agent_message::Message::Heartbeat(
                agent_message::Heartbeat::default(),
            )),
        },
        may_join: true,
    });
    let early = drain(&mut rx);
    assert!(
        early.iter().all(Result::is_ok),
        "the session was ended: {early:?}"
    );
    assert!(
        !early
            .iter()
            .flatten()
            .any(|m| matches!(m.message, Some(master_message::Message::Registered(_)))),
        "told before the commit"
    );
    assert_eq!(agent_ids_in_state(&h), vec![first.id.clone()]);

    h.release_commits();
    let told = registered(&mut rx).expect("registered once committed");
    let id = told.agent_id.expect("id").value;
    assert!(!told.secret.is_empty(), "a new agent is issued a secret");
    assert!(h.core.agents.contains_key(&id));
    let second = AgentSession {
        conn: 2,
        tx,
        rx,
        id,
        secret: told.secret,
    };

    // The secret it was told survives a restart (it was durable).
    let mut h = h.restart();
    h.reregister(&second, 3, Vec::new());
}

#[tokio::test(start_paused = true)]
async fn a_session_closed_before_the_commit_leaves_no_agent_behind() {
    let mut h = Harness::new();
    h.hold_commits();
    let (_tx, mut rx) = h.register(1, None, "", Vec::new());
    h.send(CoreMsg::AgentClosed { conn: 1 });
    h.release_commits();
    h.advance(Duration::from_secs(1)).await;
    assert!(registered(&mut rx).is_none());
    assert!(agent_ids_in_state(&h).is_empty());
    // Nor in the registry: a restarted master knows no agent.
    let h = h.restart();
    assert!(agent_ids_in_state(&h).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_returning_agent_does_not_wait_for_commits() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    h.hold_commits();
    // Told at once: nothing new to make durable before it hears.
    let back = h.reregister(&agent, 2, Vec::new());
    h.release_commits();
    assert_eq!(back.id, agent.id);
}

#[tokio::test(start_paused = true)]
async fn a_newer_session_replaces_one_waiting_for_its_commit() {
    let mut h = Harness::new();
    h.hold_commits();
    let (_old_tx, mut old_rx) = h.register(1, Some("agent-x"), "", Vec::new());
    let (tx, mut rx) = h.register(2, Some("agent-x"), "", Vec::new());
    assert_eq!(closed_with(&mut old_rx), Some(tonic::Code::Aborted));
    h.release_commits();
    let told = registered(&mut rx).expect("the newer session registered");
    assert_eq!(told.agent_id.expect("id").value, "agent-x");
    let agent = AgentSession {
        conn: 2,
        tx,
        rx,
        id: "agent-x".into(),
        secret: told.secret,
    };
    // The older session's close comes after: it changes nothing.
    h.send(CoreMsg::AgentClosed { conn: 1 });
    assert_eq!(agent_ids_in_state(&h), vec!["agent-x".to_string()]);
    // The newer session's secret is the one the registry kept.
    let mut h = h.restart();
    h.reregister(&agent, 3, Vec::new());
}
