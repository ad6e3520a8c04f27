//! Bounded peer streams: what the core does when a peer reads slower than
//! it is sent to (see `core::delivery`).

use super::*;

fn kill(task: &str) -> Call {
    Call::Kill {
        task_id: v1::TaskId { value: task.into() },
        grace: None,
    }
}

/// The agent reports t1 running `n` times, updates `r0`, `r1`, ….
fn report_running(h: &mut Harness, agent: &AgentSession, framework: &str, n: u32) {
    for i in 0..n {
        let uuid = format!("r{i}");
        h.update(
            agent,
            framework,
            "t1",
            TaskState::TaskRunning,
            uuid.as_bytes(),
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_framework_that_stops_reading_gets_every_update_once_and_no_offers_meanwhile() {
    let mut h = Harness::new();
    h.stream_capacity = 32;
    let (agent, mut framework) = running_task(&mut h, 3600.0);
    // The framework stops reading; the agent reports 40 updates, and
    // retries each (as an agent whose updates go unacknowledged does).
    let report_all = |h: &mut Harness| report_running(h, &agent, &framework.id, 40);
    report_all(&mut h);
    let waiting = h.core.metrics.events_backlogged;
    assert!(waiting > 0, "the stream could not take all 40");
    report_all(&mut h);
    // Retries of what waits are not queued again (those already in the
    // stream are: the master forwards every retry, as Mesos does).
    assert_eq!(h.core.metrics.events_backlogged - waiting, 40 - waiting);
    // An agent that joins meanwhile is not offered to it.
    let second = h.admit(2);
    let mut uuids = Vec::new();
    let mut offered_while_behind = false;
    let mut offered_after = Vec::new();
    for _ in 0..5 {
        for event in drain(&mut framework.rx) {
            match event.expect("the stream stays open").event {
                Some(event::Event::Update(u)) => uuids.push(u.status.expect("status").uuid),
                Some(event::Event::Offers(o)) if uuids.len() < 40 => {
                    offered_while_behind |= !o.offers.is_empty();
                }
                Some(event::Event::Offers(o)) => offered_after.extend(o.offers),
                _ => {}
            }
        }
        h.core.end_of_burst();
    }
    let mut first_seen = Vec::new();
    for uuid in &uuids {
        if !first_seen.contains(uuid) {
            first_seen.push(uuid.clone());
        }
    }
    let expected: Vec<Vec<u8>> = (0..40).map(|i| format!("r{i}").into_bytes()).collect();
    assert_eq!(first_seen, expected, "every update, in order");
    assert!(!offered_while_behind, "no offers while updates waited");
    // Caught up: offers resume.
    h.heartbeat(&agent);
    offered_after.extend(offers(&mut framework.rx));
    assert!(
        offered_after
            .iter()
            .any(|o| o.agent_id.as_ref().is_some_and(|a| a.value == second.id)),
        "offers resume once the stream drained: {offered_after:?}"
    );
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

#[tokio::test(start_paused = true)]
async fn a_retried_running_update_after_the_task_ended_neither_revives_it_nor_frees_it_twice() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = running_task(&mut h, 3600.0);
    h.update(&agent, &framework.id, "t1", TaskState::TaskFinished, b"u2");
    assert_eq!(update_kinds(&mut framework.rx), ["update:TASK_FINISHED"]);
    // The agent resent RUNNING before the framework's acknowledgement of
    // it arrived, then FINISHED, still unacknowledged, again.
    h.update(&agent, &framework.id, "t1", TaskState::TaskRunning, b"u1");
    assert_eq!(
        h.task_state(&framework.id, "t1"),
        Some(TaskState::TaskFinished),
        "an ended task stays ended"
    );
    assert_eq!(
        agent_kinds(&mut agent.rx),
        ["ack:u1"],
        "the agent stops retrying the stale update"
    );
    h.update(&agent, &framework.id, "t1", TaskState::TaskFinished, b"u2");
    assert_eq!(
        update_kinds(&mut framework.rx),
        ["update:TASK_FINISHED"],
        "only the unacknowledged end is resent to the framework"
    );
    assert!(h.core.used_on_agent(&agent.id).is_empty());
    // Freed once: what is offered of the agent is no more than it has.
    h.advance(Duration::from_secs(2)).await;
    let total = h.core.agents[&agent.id].registered.total.scalar("cpus");
    let offered: f64 = h
        .core
        .offers
        .values()
        .filter(|o| o.agent == agent.id)
        .map(|o| o.resources.scalar("cpus"))
        .sum();
    assert!(offered <= total, "{offered} cpus offered of {total}");
}

#[tokio::test(start_paused = true)]
async fn a_retried_starting_update_that_was_overtaken_does_not_set_the_task_back() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = running_task(&mut h, 3600.0);
    // `running_task` ran t1 without a STARTING update; the agent retries
    // one that was never forwarded.
    h.update(
        &agent,
        &framework.id,
        "t1",
        TaskState::TaskStarting,
        b"late",
    );
    assert_eq!(
        h.task_state(&framework.id, "t1"),
        Some(TaskState::TaskRunning)
    );
    assert!(
        event_kinds(&mut framework.rx).is_empty(),
        "the framework is not told of it"
    );
    assert_eq!(
        agent_kinds(&mut agent.rx),
        ["ack:late"],
        "the agent stops retrying it"
    );
}

#[tokio::test(start_paused = true)]
async fn the_core_is_woken_when_a_framework_that_waits_has_room_again() {
    let mut h = Harness::new();
    h.stream_capacity = 32;
    let (agent, mut framework) = running_task(&mut h, 3600.0);
    let ready = |h: &Harness| {
        let mut room = Box::pin(h.core.room_for_waiting_frameworks()?);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        Some(room.as_mut().poll(&mut cx).is_ready())
    };
    assert_eq!(ready(&h), None, "nobody waits");
    // The framework stops reading; 40 updates fill its stream and its
    // backlog.
    report_running(&mut h, &agent, &framework.id, 40);
    assert!(h.core.metrics.events_backlogged > 0);
    assert_eq!(ready(&h), Some(false), "no room yet");
    // It reads what its stream holds: room, and the core is to be woken
    // to move the backlog on, with no other message to wake it.
    drain(&mut framework.rx);
    assert_eq!(ready(&h), Some(true));
    h.core.end_of_burst();
    let moved = drain(&mut framework.rx).len();
    assert!(moved > 0, "the backlog moved on");
}
