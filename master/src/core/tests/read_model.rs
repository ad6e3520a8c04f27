//! The published read model, kept up to date from changes, matches the
//! state counted from scratch after every kind of change.

use super::*;
use std::sync::Arc;

use crate::snapshot::{Snapshot, UsageSum};

/// Publishes, then checks the snapshot against the core's own state.
fn published_matches_the_core(h: &mut Harness) -> Arc<Snapshot> {
    h.core.publish();
    let snap = h.core.read.latest();
    let core = &h.core;
    assert_eq!(snap.tasks.len(), core.tasks.len(), "tasks");
    assert_eq!(snap.offers.len(), core.offers.len(), "offers");
    assert_eq!(snap.agents.len(), core.agents.len(), "agents");
    assert_eq!(snap.frameworks.len(), core.frameworks.len(), "frameworks");
    for (id, a) in core.agents.iter() {
        let mut used = Resources::default();
        let mut offered = Resources::default();
        let mut live = 0;
        for t in core.tasks.values() {
            if &t.agent == id && !is_terminal(t.state) {
                used.add(&t.resources);
                live += 1;
            }
        }
        for o in core.offers.values().filter(|o| &o.agent == id) {
            offered.add(&o.resources);
        }
        let view = &snap.agents[id.as_str()];
        assert_eq!(view.status, a.status.name(), "agent {id} status");
        assert_eq!(view.draining, a.draining, "agent {id} draining");
        assert_eq!(view.task_count, live, "agent {id} live tasks");
        for kind in ["cpus", "mem"] {
            assert!(
                (view.used.scalar(kind) - used.scalar(kind)).abs() < 1e-9,
                "agent {id} used {kind}: {} vs {}",
                view.used.scalar(kind),
                used.scalar(kind)
            );
            assert!(
                (view.offered.scalar(kind) - offered.scalar(kind)).abs() < 1e-9,
                "agent {id} offered {kind}"
            );
        }
    }
    for (id, f) in core.frameworks.iter() {
        let live = core
            .tasks
            .iter()
            .filter(|((fw, _), t)| fw == id && !is_terminal(t.state))
            .count();
        let view = &snap.frameworks[id.as_str()];
        assert_eq!(view.task_count, live, "framework {id} live tasks");
        assert_eq!(view.active, f.stream.is_some(), "framework {id} active");
    }
    for ((fw, id), t) in core.tasks.iter() {
        let view = &snap.tasks[&(Arc::from(fw.as_str()), Arc::from(id.as_str()))];
        assert_eq!(view.state, t.state.as_str_name(), "task {id}");
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for t in core.tasks.values() {
        *by_state.entry(t.state.as_str_name()).or_default() += 1;
    }
    let published: BTreeMap<&str, usize> = snap
        .tasks_by_state
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (*s, *n))
        .collect();
    assert_eq!(published, by_state, "tasks by state");
    assert_eq!(
        snap.agent_totals,
        crate::snapshot::AgentTotals::of(snap.agents.values().map(|a| a.as_ref())),
        "agent totals kept as they changed"
    );
    let by_hostname: Vec<(String, Arc<str>)> = snap.agents_by_hostname.iter().cloned().collect();
    let mut expected: Vec<(String, Arc<str>)> = snap
        .agents
        .iter()
        .map(|(id, a)| (a.registered.hostname.clone(), id.clone()))
        .collect();
    expected.sort();
    assert_eq!(by_hostname, expected, "agents by hostname");
    usage_sums_match(&snap);
    state_json_matches(&snap);
    snap
}

/// Each agent's usage sum is its live tasks' latest reports, summed.
fn usage_sums_match(snap: &Snapshot) {
    let mut expected: BTreeMap<&str, Vec<&crate::state::UsageView>> = BTreeMap::new();
    for t in snap.tasks.values() {
        let live = !is_terminal(TaskState::from_str_name(t.state).expect("a state name"));
        if let Some(usage) = t.usage.as_ref().filter(|_| live) {
            expected.entry(&t.agent_id).or_default().push(usage);
        }
    }
    let kept: BTreeMap<&str, &UsageSum> = snap
        .usage_by_agent
        .iter()
        .map(|(a, sum)| (&**a, sum))
        .collect();
    assert_eq!(
        kept.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "agents with usage"
    );
    for (agent, usages) in expected {
        let counted = UsageSum::of(usages.into_iter());
        let sum = kept[agent];
        assert_eq!(
            (sum.memory_bytes, sum.pids, sum.tasks),
            (counted.memory_bytes, counted.pids, counted.tasks),
            "agent {agent} usage"
        );
        assert!(
            (sum.cpu_seconds - counted.cpu_seconds).abs() < 1e-9,
            "agent {agent} cpu seconds: {} kept, {} counted",
            sum.cpu_seconds,
            counted.cpu_seconds
        );
    }
}

/// `/state`'s body (copied from views' kept JSON) says what the snapshot
/// says: a view that changed is never served from an old one's JSON.
fn state_json_matches(snap: &Snapshot) {
    let body: serde_json::Value = serde_json::from_slice(&{
        let mut out = Vec::new();
        snap.write_state_json(0, &mut out).expect("state");
        out
    })
    .expect("state is JSON");
    let tasks: BTreeMap<(String, String), String> = body["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| {
            let text = |k: &str| t[k].as_str().expect(k).to_string();
            ((text("framework_id"), text("id")), text("state"))
        })
        .collect();
    let expected: BTreeMap<(String, String), String> = snap
        .tasks
        .iter()
        .map(|((fw, id), t)| ((fw.to_string(), id.to_string()), t.state.to_string()))
        .collect();
    assert_eq!(tasks, expected, "/state's tasks");
    let agents: BTreeMap<String, (String, f64)> = body["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            let used = a["resources"]["used"]["cpus"].as_f64().unwrap_or(0.0);
            let status = a["status"].as_str().expect("status").to_string();
            (a["id"].as_str().expect("id").to_string(), (status, used))
        })
        .collect();
    let expected: BTreeMap<String, (String, f64)> = snap
        .agents
        .iter()
        .map(|(id, a)| {
            let used = a.used.scalar("cpus");
            (id.to_string(), (a.status.to_string(), used))
        })
        .collect();
    assert_eq!(agents, expected, "/state's agents");
    assert_eq!(
        body["frameworks"].as_array().expect("frameworks").len(),
        snap.frameworks.len()
    );
    assert_eq!(
        body["offers"].as_array().expect("offers").len(),
        snap.offers.len()
    );
}

/// Launches `names` (small tasks) on the framework's newest offer.
fn launch_on_an_offer(h: &mut Harness, framework: &mut FrameworkSession, names: &[&str]) {
    let offer = offers(&mut framework.rx).pop().expect("offer");
    let tasks = names
        .iter()
        .map(|n| task_info(n, "cpus:0.1;mem:10"))
        .collect();
    h.call(framework, accept(&offer, tasks)).expect("accept");
}

#[tokio::test(start_paused = true)]
async fn the_read_model_follows_launches_ends_offers_and_agents() {
    let mut h = Harness::new();
    let mut agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    published_matches_the_core(&mut h);

    let offer = offers(&mut framework.rx).pop().expect("offer");
    let tasks = (0..5)
        .map(|i| task_info(&format!("t{i}"), "cpus:0.3;mem:100"))
        .collect();
    h.call(&framework, accept(&offer, tasks)).expect("accept");
    agent_kinds(&mut agent.rx);
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.frameworks[framework.id.as_str()].task_count, 5);

    for i in 0..5 {
        let uuid = format!("r{i}");
        let task = format!("t{i}");
        h.update(
            &agent,
            &framework.id,
            &task,
            TaskState::TaskRunning,
            uuid.as_bytes(),
        );
    }
    // Starting to running holds the same resources in the same place:
    // the agent's view is not rebuilt for it.
    let held = snap.agents[agent.id.as_str()].clone();
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.tasks_by_state.get("TASK_RUNNING"), Some(&5));
    assert!(Arc::ptr_eq(&held, &snap.agents[agent.id.as_str()]));
    assert!(snap.usage_by_agent.is_empty(), "no usage reported yet");

    // Usage reports: task i uses i seconds, i KiB and i processes; a
    // second report replaces the first.
    let report = |h: &mut Harness, scale: u64| {
        let usage = (0..5)
            .map(|i| v1::TaskUsage {
                framework_id: Some(v1::FrameworkId {
                    value: framework.id.clone(),
                }),
                task_id: Some(v1::TaskId {
                    value: format!("t{i}"),
                }),
                usage: Some(v1::ResourceUsage {
                    cpu_seconds: (i * scale) as f64,
                    memory_bytes: i * scale * 1024,
                    memory_peak_bytes: 0,
                    pids: i * scale,
                }),
            })
            .collect();
        h.heartbeat_with_usage(&agent, usage);
    };
    report(&mut h, 1);
    report(&mut h, 2);
    let snap = published_matches_the_core(&mut h);
    let sum = &snap.usage_by_agent[agent.id.as_str()];
    assert_eq!((sum.pids, sum.memory_bytes, sum.tasks), (20, 20 * 1024, 5));

    h.update(&agent, &framework.id, "t0", TaskState::TaskFinished, b"f0");
    h.update(&agent, &framework.id, "t4", TaskState::TaskFailed, b"f1");
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.tasks_by_state.get("TASK_RUNNING"), Some(&3));
    let sum = &snap.usage_by_agent[agent.id.as_str()];
    assert_eq!(
        (sum.pids, sum.tasks),
        (2 + 4 + 6, 3),
        "the ended tasks' usage no longer counts"
    );
    // A report sent before the ends and arriving after them.
    report(&mut h, 2);
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.usage_by_agent[agent.id.as_str()].tasks, 3);
    assert!(task_view(&snap, &framework, "t4").usage.is_none());
    let used = snap.agents[agent.id.as_str()].used.scalar("cpus");
    assert!(
        (used - 0.9).abs() < 1e-9,
        "three running tasks of 0.3: {used}"
    );

    // A second agent, drained; then the first goes silent.
    let second = h.admit(2);
    h.operator(Operator::Drain {
        agent_id: second.id.clone(),
        kill_tasks: false,
    })
    .expect("drain");
    published_matches_the_core(&mut h);
    h.advance(Duration::from_secs(11)).await;
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.agents[agent.id.as_str()].status, "unreachable");

    // It comes back from another host (its hostname is its connection's
    // here); the drained one is marked gone.
    let running = ["t1", "t2", "t3"]
        .map(|t| reported(&framework.id, t, TaskState::TaskRunning))
        .to_vec();
    assert_eq!(
        task_view(&snap, &framework, "t1")
            .sandbox
            .as_ref()
            .map(|s| s.stdout()),
        Some(format!(
            "http://host1:5051/files/read?path={}/t1/stdout",
            framework.id
        ))
    );
    let agent = h.reregister(&agent, 3, running);
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.agents[agent.id.as_str()].registered.hostname, "host3");
    // Its tasks' sandboxes moved with it.
    for t in ["t1", "t2", "t3"] {
        let stdout = task_view(&snap, &framework, t)
            .sandbox
            .as_ref()
            .map(|s| s.stdout());
        assert_eq!(
            stdout,
            Some(format!(
                "http://host3:5051/files/read?path={}/{t}/stdout",
                framework.id
            )),
            "{t}"
        );
    }
    assert_eq!(
        snap.agents_sorted()
            .map(|a| a.registered.hostname.as_str())
            .collect::<Vec<_>>(),
        ["host2", "host3"]
    );
    h.operator(Operator::MarkGone {
        agent_id: second.id.clone(),
    })
    .expect("mark gone");
    published_matches_the_core(&mut h);

    // The framework leaves for good: its tasks and offers go.
    h.operator(Operator::Teardown {
        framework_id: framework.id.clone(),
    })
    .expect("teardown");
    let snap = published_matches_the_core(&mut h);
    assert!(!snap.frameworks.contains_key(framework.id.as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_reader_gets_a_snapshot_taken_after_it_asked() {
    let mut h = Harness::new();
    let (publisher, reader) = crate::snapshot::channel();
    h.core.publish_to(publisher);
    let agent = h.admit(1);
    // The core publishes when it has finished the burst it is in.
    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    assert!(!read.is_finished(), "nothing published since it asked");
    h.core.end_of_burst();
    h.core.publish_if_wanted();
    let snap = read.await.expect("reader");
    assert!(snap.agents.contains_key(agent.id.as_str()));
}

/// A core that looks for readers at every step of its work, publishing
/// to the reader returned, with an agent and a framework.
fn watched_core() -> (
    Harness,
    crate::snapshot::Reader,
    AgentSession,
    FrameworkSession,
) {
    let mut h = Harness::new();
    h.core.read.check_at_every_step();
    let (publisher, reader) = crate::snapshot::channel();
    h.core.publish_to(publisher);
    let agent = h.admit(1);
    let framework = h.subscribe("f", "*", 3600.0, None);
    (h, reader, agent, framework)
}

#[tokio::test(start_paused = true)]
async fn a_reader_is_answered_within_a_long_burst() {
    let (mut h, reader, agent, mut framework) = watched_core();
    let offer = offers(&mut framework.rx).pop().expect("offer");
    h.call(
        &framework,
        accept(&offer, vec![task_info("t", "cpus:0.1;mem:10")]),
    )
    .expect("accept");
    h.core.publish();
    let before = h.core.read.latest().metrics.status_updates;

    // A burst of updates queued, and a reader asking before it is handled.
    let (tx, mut inbox) = super::super::inbox(MAX_BURST);
    let burst = MAX_BURST - 1;
    for i in 0..burst {
        tx.try_send(h.update_msg(
            &agent,
            &framework.id,
            "t",
            TaskState::TaskRunning,
            &[i as u8, (i >> 8) as u8],
        ))
        .expect("room");
    }
    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    let first = inbox.try_next().expect("queued");
    h.core.handle_burst(first, &mut inbox);
    let snap = read.await.expect("reader");
    let seen = snap.metrics.status_updates - before;
    assert_eq!(
        seen, 1,
        "answered after the first of {burst} updates, not at the burst's end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_is_answered_within_a_long_accept() {
    let (mut h, reader, _agent, mut framework) = watched_core();
    let offer = offers(&mut framework.rx).pop().expect("offer");
    h.core.publish();
    let before = h.core.read.latest().seq;

    // A reader asks before an accept of many tasks is handled: it is
    // answered between two of them, not after the last.
    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| task_info(&format!("t{i}"), "cpus:0.01;mem:1"))
        .collect();
    h.call(&framework, accept(&offer, tasks)).expect("accept");
    let snap = read.await.expect("reader");
    assert!(
        snap.seq > before && snap.tasks.len() < 50,
        "answered by a publication within the accept (seq {} after {before}), with {} of its 50 tasks",
        snap.seq,
        snap.tasks.len()
    );
    // What the reader saw was whole as far as it went, and the rest follows.
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.tasks.len(), 50);
}

#[tokio::test(start_paused = true)]
async fn while_readers_are_around_a_burst_is_applied_as_it_goes() {
    let (mut h, reader, agent, mut framework) = watched_core();
    launch_on_an_offer(&mut h, &mut framework, &["a", "b", "c"]);
    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    h.core.publish_if_wanted();
    let seq = read.await.expect("reader").seq;

    // Updates handled in a burst with nobody asking: each step's changes
    // are in the working copy as the burst goes, none published.
    let (tx, mut inbox) = super::super::inbox(16);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        tx.try_send(h.update_msg(
            &agent,
            &framework.id,
            name,
            TaskState::TaskRunning,
            &[i as u8],
        ))
        .expect("room");
    }
    let first = inbox.try_next().expect("queued");
    h.core.handle_burst(first, &mut inbox);
    assert!(!h.core.tasks.has_changes(), "taken as the burst went");
    assert_eq!(h.core.read.latest().seq, seq, "not published");
    let snap = published_matches_the_core(&mut h);
    assert_eq!(snap.tasks_by_state.get("TASK_RUNNING"), Some(&3));
}

/// Turns until a publication under way ends, with `each` called after
/// every turn that left it under way.
fn turns_to_publish(h: &mut Harness, mut each: impl FnMut(&Harness, usize)) -> usize {
    let mut turns = 0;
    loop {
        h.core.publish_if_wanted();
        turns += 1;
        if !h.core.read.publishing() {
            return turns;
        }
        each(h, turns);
        assert!(turns < 40, "the publication ends");
    }
}

#[tokio::test(start_paused = true)]
async fn without_readers_a_publication_goes_a_slice_at_a_time_and_a_reader_gets_it_all() {
    let mut h = Harness::new();
    h.core.read.set_slice(2);
    let (publisher, reader) = crate::snapshot::channel();
    h.core.publish_to(publisher);
    let _agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    h.core.publish();
    let launch = launch_on_an_offer;
    launch(&mut h, &mut framework, &["a", "b", "c", "d", "e"]);
    let before = h.core.read.latest().seq;

    // Five changed tasks, then the offers and the agent they touched, in
    // slices of two: published on the last turn, not before.
    h.advance(super::super::publish::PUBLISH_EVERY).await;
    let turns = turns_to_publish(&mut h, |h, turn| {
        assert_eq!(
            h.core.read.latest().seq,
            before,
            "turn {turn}: nothing published"
        );
    });
    assert!(
        turns >= 4,
        "five tasks and an agent in slices of two: {turns} turns"
    );
    let snap = h.core.read.latest();
    assert_eq!(snap.seq, before + 1);
    assert_eq!(snap.tasks.len(), 5);
    published_matches_the_core(&mut h);

    // A reader arriving halfway through gets everything at once.
    h.core.end_of_burst();
    launch(&mut h, &mut framework, &["f", "g", "h", "i", "j"]);
    h.advance(super::super::publish::PUBLISH_EVERY).await;
    h.core.publish_if_wanted();
    assert!(h.core.read.publishing());
    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    h.core.publish_if_wanted();
    let snap = read.await.expect("reader");
    assert_eq!(snap.tasks.len(), 10);
    assert!(!h.core.read.publishing());
    published_matches_the_core(&mut h);
}

#[tokio::test(start_paused = true)]
async fn without_readers_a_backlog_of_changes_is_published_before_it_is_due() {
    let mut h = Harness::new();
    // Slices of two: a publication starts once 16 changed tasks wait.
    h.core.read.set_slice(2);
    let _first = h.admit(1);
    let _second = h.admit(2);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    h.core.publish();
    let before = h.core.read.latest().seq;
    let mut offers_made = offers(&mut framework.rx);
    assert_eq!(offers_made.len(), 2, "one offer per agent");
    let mut launch = |h: &mut Harness, prefix: &str| {
        let offer = offers_made.pop().expect("offer");
        let tasks = (0..10)
            .map(|i| task_info(&format!("{prefix}{i}"), "cpus:0.1;mem:10"))
            .collect();
        h.call(&framework, accept(&offer, tasks)).expect("accept");
    };
    launch(&mut h, "a");
    h.core.publish_if_wanted();
    assert!(
        !h.core.read.publishing(),
        "10 changed tasks wait for their time"
    );

    launch(&mut h, "b");
    turns_to_publish(&mut h, |_, _| {});
    let snap = h.core.read.latest();
    assert_eq!(snap.seq, before + 1, "published well before it was due");
    assert_eq!(snap.tasks.len(), 20);
    published_matches_the_core(&mut h);
}

#[tokio::test(start_paused = true)]
async fn a_teardown_is_no_change_to_its_tasks_views_and_a_reader_is_answered_within_it() {
    let (mut h, reader, _agent, mut framework) = watched_core();
    let names: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    launch_on_an_offer(&mut h, &mut framework, &names);
    h.core.publish();
    let before = h.core.read.latest().seq;

    let read = tokio::spawn(async move { reader.fresh().await });
    tokio::task::yield_now().await;
    let (reply, _answer) = tokio::sync::oneshot::channel();
    // The teardown alone, without the end of its turn (which publishes).
    h.core.handle(CoreMsg::Operator {
        op: Operator::Teardown {
            framework_id: framework.id.clone(),
        },
        reply,
    });
    let snap = read.await.expect("reader");
    assert!(snap.seq > before, "answered between two of its kills");
    // A kill asked for shows in no view: 30 kills are not 30 changes to
    // publish (the agents' reports of the tasks killed are).
    assert!(
        !h.core.tasks.has_changes(),
        "{} tasks marked changed",
        h.core.tasks.changes()
    );
    published_matches_the_core(&mut h);
}

#[tokio::test(start_paused = true)]
async fn while_readers_are_around_each_turn_is_applied_unpublished() {
    use super::super::publish::{PUBLISH_EVERY, READERS_LINGER};
    let mut h = Harness::new();
    let (publisher, reader) = crate::snapshot::channel();
    h.core.publish_to(publisher);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    h.core.publish();
    // Each launch on an agent of its own, offered at once (what is left
    // of an accepted offer is declined for a while).
    let mut agents = Vec::new();
    let mut launch = |h: &mut Harness, framework: &mut FrameworkSession, names: &[&str]| {
        agents.push(h.admit(agents.len() as u64 + 1));
        launch_on_an_offer(h, framework, names);
    };

    // No reader yet: a turn's changes wait, coalescing, for the publication.
    launch(&mut h, &mut framework, &["a", "b"]);
    h.core.publish_if_wanted();
    assert!(h.core.tasks.has_changes(), "left in the change record");
    assert_eq!(h.core.read.working_tasks(), 0);

    // A reader asks and gets them.
    let asking = reader.clone();
    let read = tokio::spawn(async move { asking.fresh().await });
    tokio::task::yield_now().await;
    h.core.publish_if_wanted();
    let seq = read.await.expect("reader").seq;

    // With a reader around, the next turn's changes go into the working
    // copy at the turn's end, not published.
    launch(&mut h, &mut framework, &["c", "d"]);
    h.core.publish_if_wanted();
    assert!(!h.core.tasks.has_changes(), "taken");
    assert_eq!(h.core.read.working_tasks(), 4, "applied");
    assert_eq!(h.core.read.latest().seq, seq, "not published");
    assert!(h.core.unpublished(), "still to publish");

    // Nobody asks again: they are published when due all the same.
    h.advance(PUBLISH_EVERY).await;
    for _ in 0..10 {
        h.core.publish_if_wanted();
        if !h.core.read.publishing() {
            break;
        }
    }
    let snap = h.core.read.latest();
    assert_eq!(snap.seq, seq + 1);
    assert_eq!(snap.tasks.len(), 4);
    assert!(!h.core.unpublished());
    published_matches_the_core(&mut h);

    // No reader for as long as READERS_LINGER: turns no longer apply
    // their changes.
    assert!(PUBLISH_EVERY >= READERS_LINGER);
    launch(&mut h, &mut framework, &["e"]);
    h.core.publish_if_wanted();
    assert!(
        h.core.tasks.has_changes(),
        "waits for the publication again"
    );
}

/// A publication asked for by `reader`, as a reader of the whole state
/// (`/api/v1/state`) asks or as any other does.
async fn read_as(
    h: &mut Harness,
    reader: &crate::snapshot::Reader,
    whole_state: bool,
) -> Arc<Snapshot> {
    if whole_state {
        reader.will_write_whole_state();
    }
    let asking = reader.clone();
    let read = tokio::spawn(async move { asking.fresh().await });
    tokio::task::yield_now().await;
    h.core.publish_if_wanted();
    read.await.expect("reader")
}

fn task_view<'a>(snap: &'a Snapshot, framework: &FrameworkSession, id: &str) -> &'a TaskView {
    &snap.tasks[&(Arc::from(framework.id.as_str()), Arc::from(id))]
}

#[tokio::test(start_paused = true)]
async fn while_the_whole_state_is_read_lasting_tasks_json_is_made_as_they_change() {
    use super::super::publish::WHOLE_STATE_LINGER;
    let (mut h, reader, agent, mut framework) = watched_core();
    launch_on_an_offer(&mut h, &mut framework, &["a", "b", "c"]);

    // Readers of anything but the whole state: no JSON is made.
    read_as(&mut h, &reader, false).await;
    h.update(&agent, &framework.id, "a", TaskState::TaskRunning, b"ra");
    let snap = read_as(&mut h, &reader, false).await;
    assert!(task_view(&snap, &framework, "a").json.kept().is_none());

    // Once the whole state is read, a task that comes to a state it will
    // stay in has its JSON made with its view; one passing through not.
    read_as(&mut h, &reader, true).await;
    h.update(&agent, &framework.id, "b", TaskState::TaskRunning, b"rb");
    h.update(&agent, &framework.id, "c", TaskState::TaskStarting, b"sc");
    let snap = read_as(&mut h, &reader, false).await;
    let running = task_view(&snap, &framework, "b");
    assert_eq!(
        running.json.kept().map(<[u8]>::to_vec),
        Some(serde_json::to_vec(running).expect("serde"))
    );
    assert!(task_view(&snap, &framework, "c").json.kept().is_none());

    // Until no reader has read the whole state for a while.
    h.advance_alive(&agent, WHOLE_STATE_LINGER).await;
    h.update(&agent, &framework.id, "c", TaskState::TaskRunning, b"rc");
    let snap = read_as(&mut h, &reader, false).await;
    assert_eq!(task_view(&snap, &framework, "c").state, "TASK_RUNNING");
    assert!(task_view(&snap, &framework, "c").json.kept().is_none());
}

#[tokio::test(start_paused = true)]
async fn tasks_share_their_frameworks_and_agents_ids_in_the_read_model() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    launch_on_an_offer(&mut h, &mut framework, &["a", "b"]);
    h.update(&agent, &framework.id, "a", TaskState::TaskRunning, b"ra");
    let snap = published_matches_the_core(&mut h);
    let (a, b) = (
        task_view(&snap, &framework, "a"),
        task_view(&snap, &framework, "b"),
    );
    assert_eq!(&*a.framework_id, framework.id.as_str());
    assert_eq!(&*a.agent_id, agent.id.as_str());
    // One copy of each id, however many tasks and views of them.
    assert!(Arc::ptr_eq(&a.framework_id, &b.framework_id));
    assert!(Arc::ptr_eq(&a.agent_id, &b.agent_id));
    let (key, _) = snap
        .tasks
        .get_key_value(&(Arc::from(framework.id.as_str()), Arc::from("a")))
        .expect("task a");
    assert!(Arc::ptr_eq(&key.0, &a.framework_id));
    assert!(Arc::ptr_eq(&key.1, &a.id));
}
