//! Bounded peer streams: what the core does when a peer reads slower than
//! it is sent to (see `core::delivery`).

use super::*;

fn kill(task: &str) -> Call {
    Call::Kill {
        task_id: v1::TaskId { value: task.into() },
        grace: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_framework_that_stops_reading_misses_retried_updates_and_offers_but_nothing_else() {
    let mut h = Harness::new();
    h.stream_capacity = 32;
    let (agent, mut framework) = running_task(&mut h, 3600.0);
    // The framework stops reading; the agent keeps reporting (as an agent
    // retrying an unacknowledged update does).
    for i in 0..40u32 {
        let uuid = format!("r{i}");
        h.update(
            &agent,
            &framework.id,
            "t1",
            TaskState::TaskRunning,
            uuid.as_bytes(),
        );
    }
    assert!(h.core.metrics.updates_deferred > 0, "not all 40 fit");
    // An agent that joins meanwhile is not offered to it.
    let second = h.admit(2);
    let waiting = drain(&mut framework.rx);
    assert!(waiting.len() < 32, "the stream held {}", waiting.len());
    assert!(
        waiting.iter().all(|e| e.is_ok()),
        "a slow framework is not cut off: its agents retry"
    );
    assert!(
        waiting.iter().all(|e| !matches!(
            e,
            Ok(Event {
                event: Some(event::Event::Offers(_))
            })
        )),
        "no offers while the stream was full"
    );
    // Once it drained, offers resume.
    h.heartbeat(&agent);
    let offered = offers(&mut framework.rx);
    assert!(
        offered
            .iter()
            .any(|o| o.agent_id.as_ref().is_some_and(|a| a.value == second.id)),
        "offers resume once the stream drained: {offered:?}"
    );
    h.update(
        &agent,
        &framework.id,
        "t1",
        TaskState::TaskFinished,
        b"last",
    );
    let updates: Vec<String> = event_kinds(&mut framework.rx)
        .into_iter()
        .filter(|k| k.starts_with("update"))
        .collect();
    assert_eq!(updates, ["update:TASK_FINISHED"]);
}

#[tokio::test(start_paused = true)]
async fn reconciling_more_tasks_than_the_stream_holds_answers_every_one_in_order() {
    let mut h = Harness::new();
    h.stream_capacity = 16;
    let _agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 0.0, None);
    let offer = offers(&mut framework.rx).pop().expect("offer");
    let ids: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
    let tasks = ids
        .iter()
        .map(|id| task_info(id, "cpus:0.01;mem:1"))
        .collect();
    h.call(&framework, accept(&offer, tasks)).expect("accept");
    drain(&mut framework.rx);
    let asked = ids
        .iter()
        .map(|id| v1::TaskId { value: id.clone() })
        .collect();
    h.call(&framework, Call::Reconcile(asked))
        .expect("reconcile");
    let mut answered = Vec::new();
    for _ in 0..10 {
        for event in drain(&mut framework.rx) {
            if let Some(event::Event::Update(u)) = event.expect("open stream").event {
                answered.push(u.status.expect("status").task_id.expect("id").value);
            }
        }
        // The backlog moves at the end of every burst.
        h.core.end_of_burst();
    }
    assert_eq!(
        answered, ids,
        "every task answered once, in the order asked"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_stops_reading_is_cut_off_and_disconnected() {
    let mut h = Harness::new();
    h.stream_capacity = 8;
    let (mut agent, framework) = running_task(&mut h, 3600.0);
    for _ in 0..10 {
        h.call(&framework, kill("t1")).expect("kill");
    }
    let told = agent_kinds(&mut agent.rx);
    assert_eq!(
        told.last().map(String::as_str),
        Some("closed:ResourceExhausted"),
        "{told:?}"
    );
    assert_eq!(h.core.metrics.peer_streams_cut, 1);
    assert_eq!(
        h.core.agents[&agent.id].status,
        AgentStatus::Disconnected,
        "the master no longer talks into the full session"
    );
}
