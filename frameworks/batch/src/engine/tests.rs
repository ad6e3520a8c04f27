use super::*;
use agora_sdk::Resources;

fn offer(id: &str, agent: &str, cpus: f64, mem: f64, attrs: &[(&str, &str)]) -> Offer {
    Offer {
        id: Some(v1::OfferId { value: id.into() }),
        agent_id: Some(v1::AgentId {
            value: agent.into(),
        }),
        hostname: format!("host-{agent}"),
        resources: Resources::new()
            .with_scalar("cpus", cpus)
            .with_scalar("mem", mem)
            .to_proto(),
        attributes: attrs
            .iter()
            .map(|(n, t)| v1::Attribute {
                name: n.to_string(),
                text: t.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn status(task: &str, state: TaskState, exit: Option<i32>) -> TaskStatus {
    TaskStatus {
        task_id: Some(v1::TaskId { value: task.into() }),
        state: state as i32,
        exit_code: exit,
        ..Default::default()
    }
}

fn submit(engine: &mut Engine, text: &str, now: Millis) -> Vec<String> {
    let specs = spec::parse(text).expect("valid spec");
    engine.submit(specs, now).expect("submitted")
}

fn launched(p: &Placement) -> Vec<String> {
    p.launches
        .iter()
        .flat_map(|(_, tasks)| {
            tasks.iter().map(|t| {
                t.task_id
                    .as_ref()
                    .map_or(String::new(), |i| i.value.clone())
            })
        })
        .collect()
}

fn state(engine: &Engine, id: &str) -> &'static str {
    engine.job(id).expect("job").state()
}

#[test]
fn priority_then_fifo() {
    let mut e = Engine::new(30_000);
    submit(&mut e, "id = \"low\"\ncmd = \"true\"\ncpus = 1\n", 0);
    submit(
        &mut e,
        "id = \"old\"\ncmd = \"true\"\ncpus = 1\npriority = 5\n",
        1,
    );
    submit(
        &mut e,
        "id = \"new\"\ncmd = \"true\"\ncpus = 1\npriority = 5\n",
        2,
    );
    let p = e.place(&[offer("o1", "a1", 2.0, 1024.0, &[])], 10);
    let got = launched(&p);
    assert_eq!(got.len(), 2);
    assert!(got[0].starts_with("old."), "{got:?}");
    assert!(got[1].starts_with("new."), "{got:?}");
    assert_eq!(state(&e, "low"), "QUEUED");
    assert_eq!(state(&e, "old"), "RUNNING");
}

#[test]
fn best_fit_picks_the_tightest_offer_and_declines_the_rest() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"a\"\ncmd = \"true\"\ncpus = 1\nmem = 100\n",
        0,
    );
    let p = e.place(
        &[
            offer("big", "a1", 8.0, 8192.0, &[]),
            offer("snug", "a2", 1.5, 200.0, &[]),
        ],
        1,
    );
    assert_eq!(p.launches.len(), 1);
    assert_eq!(p.launches[0].0, "snug");
    assert_eq!(p.unused, vec!["big".to_string()]);
}

#[test]
fn instances_pack_and_see_their_index() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"par\"\ncmd = \"true\"\ncpus = 1\ninstances = 4\n",
        0,
    );
    let p = e.place(
        &[
            offer("o1", "a1", 2.0, 1024.0, &[]),
            offer("o2", "a2", 2.0, 1024.0, &[]),
        ],
        1,
    );
    assert_eq!(p.launches.len(), 2);
    assert!(p.launches.iter().all(|(_, t)| t.len() == 2));
    let envs: Vec<String> = p
        .launches
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter_map(|t| t.command.as_ref()?.environment.as_ref())
        .flat_map(|e| {
            e.variables
                .iter()
                .filter(|v| v.name == "AGORA_INSTANCE")
                .map(|v| v.value.clone())
        })
        .collect();
    let mut envs = envs;
    envs.sort();
    assert_eq!(envs, vec!["0", "1", "2", "3"]);
}

#[test]
fn constraints_steer_placement() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"z\"\ncmd = \"true\"\nconstraints = [[\"zone\", \"LIKE\", \"b.*\"]]\n",
        0,
    );
    let p = e.place(
        &[
            offer("oa", "a1", 4.0, 1024.0, &[("zone", "a")]),
            offer("ob", "a2", 4.0, 1024.0, &[("zone", "b2")]),
        ],
        1,
    );
    assert_eq!(p.launches.len(), 1);
    assert_eq!(p.launches[0].0, "ob");

    submit(
        &mut e,
        "id = \"u\"\ncmd = \"true\"\ninstances = 3\nconstraints = [[\"hostname\", \"UNIQUE\"]]\n",
        2,
    );
    let p = e.place(
        &[
            offer("o1", "a1", 4.0, 1024.0, &[]),
            offer("o2", "a2", 4.0, 1024.0, &[]),
        ],
        3,
    );
    assert_eq!(launched(&p).len(), 2, "one per host, the third waits");
}

#[test]
fn failing_instance_is_retried_with_backoff_then_fails_the_run() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"f\"\ncmd = \"false\"\nretries = 2\nbackoff = \"1s\"\n",
        0,
    );
    let mut now = 0;
    for attempt in 0..3 {
        let p = e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], now);
        let tasks = launched(&p);
        assert_eq!(tasks.len(), 1, "attempt {attempt}");
        e.on_status(&status(&tasks[0], TaskState::TaskRunning, None), now);
        e.on_status(&status(&tasks[0], TaskState::TaskFailed, Some(3)), now);
        if attempt < 2 {
            assert_eq!(state(&e, "f"), "RUNNING");
            assert!(!e.wants_offers(now), "backing off");
            assert!(
                e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], now)
                    .launches
                    .is_empty()
            );
            now += 1000 * (1 << attempt);
            assert!(e.wants_offers(now));
        }
    }
    let job = e.job("f").expect("job");
    assert_eq!(job.state(), "FAILED");
    let run = job.latest().expect("run");
    assert_eq!(run.instances[0].attempts.len(), 3);
    assert!(run.message.contains("exit code 3"), "{}", run.message);
    assert!(!e.wants_offers(now + 100_000));
}

#[test]
fn demand_counts_what_could_launch_now() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"w\"\ncmd = \"true\"\ninstances = 3\ncpus = 0.5\nmem = 100\n",
        0,
    );
    submit(
        &mut e,
        "id = \"after\"\ncmd = \"true\"\ndepends_on = [\"w\"]\n",
        0,
    );
    let d = e.demand(0);
    assert_eq!(d.tasks, 3, "the dependent waits for `w`: {d:?}");
    assert_eq!(d.resources.scalar("cpus"), 1.5);
    assert_eq!(d.resources.scalar("mem"), 300.0);
    // Placed instances are no longer wanted.
    let tasks = launched(&e.place(&[offer("o", "a1", 1.0, 1024.0, &[])], 0));
    assert_eq!(tasks.len(), 2);
    assert_eq!(e.demand(0).tasks, 1);
}

#[test]
fn user_kill_is_not_retried() {
    let mut e = Engine::new(30_000);
    submit(&mut e, "id = \"k\"\ncmd = \"sleep 100\"\nretries = 5\n", 0);
    let tasks = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&tasks[0], TaskState::TaskRunning, None), 1);
    let actions = e.kill("k", None, 2).expect("kill");
    assert_eq!(actions, vec![Action::Kill(tasks[0].clone())]);
    e.on_status(&status(&tasks[0], TaskState::TaskKilled, None), 3);
    assert_eq!(state(&e, "k"), "KILLED");
    assert!(!e.wants_offers(10_000));
    assert!(matches!(
        e.kill("k", None, 4),
        Err(EngineError::Conflict(_))
    ));
}

#[test]
fn lost_task_is_retried_and_its_ghost_killed() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"l\"\ncmd = \"sleep 1\"\nretries = 1\nbackoff = \"0s\"\n",
        0,
    );
    let first = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&first[0], TaskState::TaskRunning, None), 1);
    e.on_status(&status(&first[0], TaskState::TaskUnreachable, None), 2);
    let second = launched(&e.place(&[offer("o2", "a2", 4.0, 1024.0, &[])], 2));
    assert_eq!(second.len(), 1);
    assert_ne!(second[0], first[0]);
    // The first agent comes back with the old task still running.
    let actions = e.on_status(&status(&first[0], TaskState::TaskRunning, None), 3);
    assert_eq!(
        actions,
        vec![Action::Kill(first[0].clone())],
        "the ghost is killed"
    );
    e.on_status(&status(&first[0], TaskState::TaskKilled, None), 3);
    e.on_status(&status(&second[0], TaskState::TaskFinished, Some(0)), 4);
    assert_eq!(state(&e, "l"), "SUCCEEDED");
}

#[test]
fn dependency_chain_runs_in_order_and_a_failure_stops_it() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\ndepends_on = [\"a\"]\n[[job]]\nid = \"c\"\ncmd = \"true\"\ndepends_on = [\"b\"]\n",
        0,
    );
    let o = || [offer("o", "a1", 8.0, 8192.0, &[])];
    let t = launched(&e.place(&o(), 1));
    assert_eq!(t.len(), 1);
    assert!(t[0].starts_with("a."));
    e.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 2);
    let t = launched(&e.place(&o(), 3));
    assert_eq!(t.len(), 1);
    assert!(t[0].starts_with("b."));
    e.on_status(&status(&t[0], TaskState::TaskFailed, Some(1)), 4);
    assert_eq!(state(&e, "b"), "FAILED");
    assert_eq!(state(&e, "c"), "FAILED");
    assert!(
        e.job("c")
            .expect("c")
            .latest()
            .expect("run")
            .message
            .contains("dependency `b`")
    );
    assert!(launched(&e.place(&o(), 5)).is_empty());
    // Re-running `b` to success restarts `c`.
    e.run_now("b", 6).expect("run b");
    let t = launched(&e.place(&o(), 7));
    e.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 8);
    let t = launched(&e.place(&o(), 9));
    assert!(t[0].starts_with("c."), "{t:?}");
}

#[test]
fn cycles_unknown_and_duplicate_ids_are_refused_and_nothing_changes() {
    let mut e = Engine::new(30_000);
    submit(&mut e, "id = \"a\"\ncmd = \"true\"\n", 0);
    e.take_changes();
    let refuse = |e: &mut Engine, text: &str| match e.submit(spec::parse(text).expect("parses"), 1)
    {
        Err(EngineError::Invalid(err)) => err.field,
        other => panic!("not refused as invalid: {other:?}"),
    };
    assert_eq!(
        refuse(
            &mut e,
            "[[job]]\nid = \"x\"\ncmd = \"true\"\ndepends_on = [\"y\"]\n[[job]]\nid = \"y\"\ncmd = \"true\"\ndepends_on = [\"x\"]\n"
        ),
        "depends_on"
    );
    assert_eq!(
        refuse(&mut e, "id = \"s\"\ncmd = \"true\"\ndepends_on = [\"s\"]\n"),
        "depends_on"
    );
    assert_eq!(
        refuse(
            &mut e,
            "id = \"b\"\ncmd = \"true\"\ndepends_on = [\"nope\"]\n"
        ),
        "depends_on[0]"
    );
    assert_eq!(refuse(&mut e, "id = \"a\"\ncmd = \"true\"\n"), "id");
    assert!(
        e.take_changes().is_none(),
        "a refused submission stores nothing"
    );
    assert_eq!(e.jobs().count(), 1);
}

#[test]
fn cron_fires_and_forbid_skips_overlaps() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"c\"\ncmd = \"sleep 5\"\nschedule = \"* * * * * *\"\nconcurrency = \"forbid\"\n",
        0,
    );
    assert_eq!(state(&e, "c"), "SCHEDULED");
    let fire = e.job("c").and_then(|j| j.next_fire).expect("next fire");
    assert_eq!(fire, 1000);
    e.tick(fire);
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], fire));
    assert_eq!(t.len(), 1);
    e.on_status(&status(&t[0], TaskState::TaskRunning, None), fire);
    e.tick(2000);
    e.tick(3000);
    let job = e.job("c").expect("job");
    assert_eq!(job.runs.len(), 1, "overlapping fires are skipped");
    assert_eq!(job.skipped_runs, 2);
    e.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 3500);
    e.tick(4000);
    assert_eq!(e.job("c").expect("job").runs.len(), 2);
}

#[test]
fn cron_replace_kills_the_old_run() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"r\"\ncmd = \"sleep 5\"\nschedule = \"* * * * * *\"\nconcurrency = \"replace\"\n",
        0,
    );
    e.tick(1000);
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 1000));
    let actions = e.tick(2000);
    assert_eq!(actions, vec![Action::Kill(t[0].clone())]);
    let job = e.job("r").expect("job");
    assert_eq!(job.runs[0].state, RunState::Killed);
    assert_eq!(job.runs[1].state, RunState::Queued);
}

#[test]
fn timeout_kills_and_fails_without_retry() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "id = \"t\"\ncmd = \"sleep 100\"\ntimeout = \"2s\"\nretries = 3\n",
        0,
    );
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&t[0], TaskState::TaskRunning, None), 10);
    assert!(e.tick(1999).is_empty());
    assert_eq!(e.tick(2000), vec![Action::Kill(t[0].clone())]);
    e.on_status(&status(&t[0], TaskState::TaskKilled, None), 2100);
    let job = e.job("t").expect("job");
    assert_eq!(job.state(), "FAILED");
    assert!(
        job.latest()
            .expect("run")
            .message
            .contains("timed out after 2s")
    );
    assert!(!e.wants_offers(100_000));
}

#[test]
fn a_task_the_master_does_not_know_is_dropped_or_lost_after_the_grace() {
    let mut e = Engine::new(10_000);
    submit(
        &mut e,
        "[[job]]\nid = \"never\"\ncmd = \"true\"\n[[job]]\nid = \"ran\"\ncmd = \"true\"\n",
        0,
    );
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    assert_eq!(t.len(), 2);
    let (never, ran) = (&t[0], &t[1]);
    e.on_status(&status(ran, TaskState::TaskRunning, None), 50);
    e.on_status(&status(never, TaskState::TaskUnknown, None), 100);
    e.on_status(&status(ran, TaskState::TaskUnknown, None), 100);
    let asked = e.tick(5_000);
    assert_eq!(
        asked,
        vec![Action::Reconcile(vec![never.clone(), ran.clone()])]
    );
    assert_eq!(state(&e, "never"), "RUNNING", "still within the grace");
    e.tick(10_100);
    // Never reported by an agent: dropped, relaunched, not counted (retries = 0).
    let again = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 10_100));
    assert_eq!(again.len(), 1);
    assert!(again[0].starts_with("never.") && again[0] != *never);
    let attempts = &e.job("never").expect("job").runs[0].instances[0].attempts;
    assert_eq!(attempts[0].state, "TASK_DROPPED");
    // It ran, then vanished: lost, and with no retries left the run fails.
    assert_eq!(state(&e, "ran"), "FAILED");
}

#[test]
fn launches_refused_for_a_stale_offer_go_again_uncounted() {
    let mut e = Engine::new(30_000);
    submit(&mut e, "id = \"once\"\ncmd = \"true\"\n", 0);
    let first = launched(&e.place(&[offer("gone", "a1", 4.0, 1024.0, &[])], 0));
    e.unlaunch(&first, 1);
    assert!(e.wants_offers(1));
    let second = launched(&e.place(&[offer("o2", "a1", 4.0, 1024.0, &[])], 2));
    assert_eq!(second.len(), 1);
    assert_ne!(second[0], first[0], "task ids are never reused");
    e.on_status(&status(&second[0], TaskState::TaskFinished, Some(0)), 3);
    assert_eq!(state(&e, "once"), "SUCCEEDED");
    // A late word about the dropped task cannot run it twice.
    assert_eq!(
        e.on_status(&status(&first[0], TaskState::TaskRunning, None), 4),
        vec![Action::Kill(first[0].clone())]
    );
}

#[test]
fn restored_engine_carries_on() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "[[job]]\nid = \"run\"\ncmd = \"sleep 9\"\n[[job]]\nid = \"wait\"\ncmd = \"true\"\ncpus = 64\n",
        0,
    );
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    assert_eq!(t.len(), 1);
    let jobs: Vec<Job> = e
        .jobs()
        .map(|j| serde_json::from_slice(&serde_json::to_vec(j).expect("ser")).expect("de"))
        .collect();
    let mut back = Engine::restore(jobs, 3, Some("fw".into()), 30_000);
    assert_eq!(back.live_task_ids(), t);
    // The running one is not launched again; the waiting one still is.
    assert!(launched(&back.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 1)).is_empty());
    let later = launched(&back.place(&[offer("o", "a1", 64.0, 1024.0, &[])], 2));
    assert_eq!(later.len(), 1);
    assert!(later[0].starts_with("wait."));
    back.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 3);
    assert_eq!(back.job("run").expect("run").state(), "SUCCEEDED");
}

#[test]
fn remove_is_refused_while_active_or_depended_on() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\ndepends_on = [\"a\"]\n",
        0,
    );
    assert!(matches!(
        e.remove("a", false, 10),
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        e.remove("zzz", false, 10),
        Err(EngineError::NotFound(_))
    ));
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 1);
    assert!(matches!(e.remove("a", false, 10), Err(EngineError::Conflict(m)) if m.contains("`b`")));
}

#[test]
fn new_work_is_flagged_for_a_revive() {
    let mut e = Engine::new(30_000);
    assert!(!e.take_new_work());
    submit(
        &mut e,
        "id = \"w\"\ncmd = \"false\"\nretries = 1\nbackoff = \"2s\"\n",
        0,
    );
    assert!(e.take_new_work(), "a submission is new work");
    assert!(!e.take_new_work(), "taken once");
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&t[0], TaskState::TaskFailed, Some(1)), 100);
    assert!(!e.take_new_work(), "the retry waits out its backoff");
    e.tick(1_000);
    assert!(!e.take_new_work());
    e.tick(2_200);
    assert!(e.take_new_work(), "backoff over: new work");
}

#[test]
fn update_replaces_the_spec_and_keeps_history() {
    let mut e = Engine::new(30_000);
    submit(
        &mut e,
        "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\nschedule = \"* * * * * *\"\n",
        0,
    );
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    e.on_status(&status(&t[0], TaskState::TaskFinished, Some(0)), 1);
    let new = spec::parse(
        "id = \"b\"\ncmd = \"echo new\"\nschedule = \"0 0 1 1 *\"\ndepends_on = [\"a\"]\n",
    )
    .expect("valid")
    .remove(0);
    e.update(new, 500).expect("updated");
    let b = e.job("b").expect("b");
    assert_eq!(b.spec.cmd, "echo new");
    assert!(
        b.next_fire.expect("fires") > 86_400_000,
        "the new, yearly schedule"
    );
    assert_eq!(e.job("a").expect("a").runs.len(), 1, "history kept");
    // An update that would close a cycle, or name an unknown job, changes nothing.
    let cyclic = spec::parse("id = \"a\"\ncmd = \"true\"\ndepends_on = [\"b\"]\n")
        .expect("valid")
        .remove(0);
    assert!(
        matches!(e.update(cyclic, 600), Err(EngineError::Invalid(err)) if err.field == "depends_on")
    );
    assert!(e.job("a").expect("a").spec.depends_on.is_empty());
    let ghost = spec::parse("id = \"zz\"\ncmd = \"true\"\n")
        .expect("valid")
        .remove(0);
    assert!(matches!(
        e.update(ghost, 600),
        Err(EngineError::NotFound(_))
    ));
}

#[test]
fn forced_remove_kills_the_active_run() {
    let mut e = Engine::new(30_000);
    submit(&mut e, "id = \"busy\"\ncmd = \"sleep 100\"\n", 0);
    let t = launched(&e.place(&[offer("o", "a1", 4.0, 1024.0, &[])], 0));
    assert!(matches!(
        e.remove("busy", false, 1),
        Err(EngineError::Conflict(_))
    ));
    assert_eq!(
        e.remove("busy", true, 2).expect("forced"),
        vec![Action::Kill(t[0].clone())]
    );
    assert!(e.job("busy").is_none());
    assert!(
        e.on_status(&status(&t[0], TaskState::TaskKilled, None), 3)
            .is_empty()
    );
}

#[test]
fn big_tasks_spill_over_to_the_next_accept_and_too_big_ones_are_refused() {
    let mut engine = Engine::new(30_000);
    // 1.5 MB commands, 8 instances: 12 MB, more than one accept carries.
    let command = format!("# {}\necho ok", "a".repeat(1_500_000));
    let spec = format!(
        "[[job]]\nid = \"big\"\ncmd = '''{command}'''\ninstances = 8\ncpus = 0.1\nmem = 8\n"
    );
    submit(&mut engine, &spec, 1);
    let first = engine.place(&[offer("o1", "a1", 8.0, 1024.0, &[])], 2);
    let bytes: usize = first.launches[0].1.iter().map(agora_sdk::task_bytes).sum();
    assert!(bytes <= agora_sdk::limits::MAX_ACCEPT_TASK_BYTES, "{bytes}");
    let placed = launched(&first).len();
    assert!(
        (1..8).contains(&placed),
        "{placed} of 8 in the first accept"
    );
    let second = engine.place(&[offer("o2", "a1", 8.0, 1024.0, &[])], 3);
    let third = engine.place(&[offer("o3", "a1", 8.0, 1024.0, &[])], 4);
    assert_eq!(placed + launched(&second).len() + launched(&third).len(), 8);

    let huge = format!(
        "[[job]]\nid = \"huge\"\ncmd = '''{}'''\n",
        "b".repeat(5_000_000)
    );
    let refused = spec::parse(&huge).expect_err("too big for a task");
    assert_eq!(refused.field, "cmd");
}
