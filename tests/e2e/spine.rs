//! The spine end to end: master, agents and frameworks as real processes and
//! real gRPC streams on loopback, tasks as real processes.

use std::time::{Duration, Instant};

use agora_sdk::{
    Demand, FrameworkConfig, Resources, TaskState, offer_id, offer_resources, status_state, task,
};
use nix::sys::signal::Signal;

use crate::support::*;

const AGENT_4CPU: &str = "cpus:4;mem:4096;disk:1000;ports:[31000-31099]";

fn small_task() -> Resources {
    Resources::new()
        .with_scalar("cpus", 1.0)
        .with_scalar("mem", 128.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_of_two_frameworks_on_two_agents_finish_and_show_in_state() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let (d1, d2) = (tempdir(), tempdir());
    let _a1 = start_agent(&url, d1.path(), AGENT_4CPU, "host-a");
    let _a2 = start_agent(&url, d2.path(), AGENT_4CPU, "host-b");
    wait_for_agents(&url, 2).await;

    let per_task = Resources::new()
        .with_scalar("cpus", 0.5)
        .with_scalar("mem", 64.0);
    let (mut one, done1) = Launcher::new(
        "one",
        "echo hi from $AGORA_TASK_ID; echo port=$PORT0",
        per_task.clone(),
        3,
    );
    one.ports = 1;
    let (two, done2) = Launcher::new("two", "true", per_task, 3);
    let f1 = spawn_launcher(&url, "first", "*", one);
    let f2 = spawn_launcher(&url, "second", "*", two);
    wait_until("all six tasks to end", Duration::from_secs(30), || async {
        (all_ended(&done1, 3) && all_ended(&done2, 3)).then_some(())
    })
    .await;
    assert_eq!(count_in(&done1, TaskState::TaskFinished), 3);
    assert_eq!(count_in(&done2, TaskState::TaskFinished), 3);

    let s = state(&url).await;
    let tasks = s["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 6, "{s:#}");
    assert!(tasks.iter().all(|t| t["state"] == "TASK_FINISHED"), "{s:#}");
    let ids: Vec<&str> = tasks
        .iter()
        .filter_map(|t| t["framework_id"].as_str())
        .collect();
    let (id1, id2) = (
        f1.framework_id().expect("id"),
        f2.framework_id().expect("id"),
    );
    assert_eq!(ids.iter().filter(|i| **i == id1).count(), 3);
    assert_eq!(ids.iter().filter(|i| **i == id2).count(), 3);
    let agents = s["agents"].as_array().expect("agents");
    let hosts: Vec<&str> = agents
        .iter()
        .filter_map(|a| a["hostname"].as_str())
        .collect();
    assert_eq!(hosts, vec!["host-a", "host-b"]);
    assert_eq!(agents[0]["attributes"]["host"], "host-a");
    assert_eq!(agents[0]["resources"]["total"]["cpus"], 4.0);
    let names: Vec<&str> = s["frameworks"]
        .as_array()
        .expect("frameworks")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, vec!["first", "second"]);

    // The task's output landed in its sandbox.
    let stdout = ["one-0", "one-1", "one-2"]
        .iter()
        .flat_map(|t| [d1.path(), d2.path()].map(|d| sandbox_file(d, &id1, t, "stdout")))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>();
    assert_eq!(stdout.len(), 3);
    assert!(
        stdout
            .iter()
            .all(|o| o.starts_with("hi from one-") && o.contains("port=310")),
        "{stdout:?}"
    );
}

/// Runs two hungry frameworks (one 1-cpu `sleep` task per offer, more than
/// the cluster holds) and returns how many tasks each got running.
async fn hungry_split(
    master_flags: &[&str],
    agents: &[&str],
    roles: (&str, &str),
    wanted: u32,
) -> (usize, usize) {
    let master = start_master("127.0.0.1:0", master_flags);
    let url = master.url.clone().expect("url");
    let total_cpus: f64 = agents
        .iter()
        .map(|r| Resources::parse(r).expect("valid").scalar("cpus"))
        .sum();

    // Both frameworks are subscribed before there is anything to offer, so
    // neither gets a head start.
    let (mut a, done_a) = Launcher::new("a", "sleep 60", small_task(), wanted);
    let (mut b, done_b) = Launcher::new("b", "sleep 60", small_task(), wanted);
    a.one_per_offer = true;
    b.one_per_offer = true;
    let fa = spawn_launcher(&url, "a", roles.0, a);
    let fb = spawn_launcher(&url, "b", roles.1, b);
    wait_until(
        "both frameworks to subscribe",
        Duration::from_secs(10),
        || async { (fa.framework_id().is_some() && fb.framework_id().is_some()).then_some(()) },
    )
    .await;

    let dirs: Vec<_> = agents.iter().map(|_| tempdir()).collect();
    let _agents: Vec<Proc> = agents
        .iter()
        .zip(&dirs)
        .enumerate()
        .map(|(i, (r, d))| start_agent(&url, d.path(), r, &format!("host-{i}")))
        .collect();
    wait_until(
        "the cluster to fill up",
        Duration::from_secs(30),
        || async {
            let running = count_in(&done_a, TaskState::TaskRunning)
                + count_in(&done_b, TaskState::TaskRunning);
            (running as f64 == total_cpus).then_some(())
        },
    )
    .await;
    let split = (
        count_in(&done_a, TaskState::TaskRunning),
        count_in(&done_b, TaskState::TaskRunning),
    );
    fa.teardown();
    fb.teardown();
    split
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hungry_frameworks_of_equal_weight_split_the_cluster_evenly() {
    // Seven one-task agents: every offer is one task, so the split is DRF's
    // turn-taking alone, not how long a framework sits on a bigger offer
    // (offered resources count towards a share, as in Mesos).
    let agents = ["cpus:1;mem:1024"; 7];
    let (a, b) = hungry_split(&[], &agents, ("*", "*"), 10).await;
    assert_eq!(a + b, 7);
    assert!(a.abs_diff(b) <= 1, "DRF split {a} vs {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_of_weight_two_gets_twice_the_share() {
    let (p, d) = hungry_split(
        &["--weights", "prod=2"],
        &["cpus:6;mem:4096"],
        ("prod", "dev"),
        10,
    )
    .await;
    assert_eq!((p, d), (4, 2), "weighted DRF split");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_agent_goes_to_the_other_framework_until_the_filter_expires() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;

    let mut f1 = TestFramework::start(&url, "f1", "*").await;
    let first = f1.next_offers(Duration::from_secs(10)).await;
    let mut f2 = TestFramework::start(&url, "f2", "*").await;
    let refuse = Duration::from_secs(3);
    f1.driver
        .decline(&[offer_id(&first[0])], Some(refuse.as_secs_f64()))
        .await
        .expect("decline");
    let declined_at = Instant::now();

    // f2 gets the agent; it holds the offer a moment, then refuses it for long.
    let second = f2.next_offers(Duration::from_secs(10)).await;
    assert_eq!(second[0].agent_id, first[0].agent_id);
    f2.driver
        .decline(&[offer_id(&second[0])], Some(3600.0))
        .await
        .expect("decline");

    // f1 sees the agent again only once its filter has expired.
    let again = f1.next_offers(Duration::from_secs(10)).await;
    let waited = declined_at.elapsed();
    assert_eq!(again[0].agent_id, first[0].agent_id);
    assert!(
        waited >= refuse,
        "re-offered after {waited:?}, before the {refuse:?} filter expired"
    );
    f1.teardown().await;
    f2.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_reports_its_tasks_unreachable_and_a_frozen_one_comes_back() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let (d1, d2) = (tempdir(), tempdir());
    let mut doomed = start_agent(&url, d1.path(), "cpus:1;mem:1024", "doomed");
    let frozen = start_agent(&url, d2.path(), "cpus:1;mem:1024", "frozen");
    wait_for_agents(&url, 2).await;

    let mut f = TestFramework::start(&url, "watcher", "*").await;
    let mut placed = Vec::new();
    while placed.len() < 2 {
        for offer in f.next_offers(Duration::from_secs(10)).await {
            let id = format!("t-{}", offer.hostname);
            let cmd = "exec sleep 60";
            f.driver
                .accept(
                    &[offer_id(&offer)],
                    vec![task(&id, cmd, &small_task())],
                    Some(3600.0),
                )
                .await
                .expect("accept");
            placed.push((id, offer.hostname.clone()));
        }
    }
    f.wait_all(
        &["t-doomed", "t-frozen"],
        TaskState::TaskRunning,
        Duration::from_secs(10),
    )
    .await;
    // SIGKILL: the agent's connection drops and it never heartbeats again.
    doomed.kill_hard();
    let update = f
        .wait_state(
            "t-doomed",
            TaskState::TaskUnreachable,
            Duration::from_secs(10),
        )
        .await;
    let doomed_id = state(&url).await["agents"].as_array().and_then(|a| {
        a.iter()
            .find(|a| a["hostname"] == "doomed")
            .map(|a| a["id"].clone())
    });
    assert_eq!(update.agent_id.map(|a| a.value.into()), doomed_id);

    // The task outlived its agent; the restarted agent re-attaches to it and
    // the master reports it running again.
    let _doomed = start_agent(&url, d1.path(), "cpus:1;mem:1024", "doomed");
    f.wait_state("t-doomed", TaskState::TaskRunning, Duration::from_secs(15))
        .await;

    // SIGSTOP: the connection stays open but goes silent; after SIGCONT the
    // agent re-registers and its task is running again.
    frozen.signal(Signal::SIGSTOP);
    f.wait_state(
        "t-frozen",
        TaskState::TaskUnreachable,
        Duration::from_secs(10),
    )
    .await;
    let s = state(&url).await;
    let status = s["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["hostname"] == "frozen")
        .map(|a| a["status"].clone());
    assert_eq!(status, Some("unreachable".into()));
    frozen.signal(Signal::SIGCONT);
    let back = f
        .wait_state("t-frozen", TaskState::TaskRunning, Duration::from_secs(15))
        .await;
    assert_eq!(status_state(&back), TaskState::TaskRunning);
    wait_until(
        "the frozen agent to be active again",
        Duration::from_secs(10),
        || async {
            let s = state(&url).await;
            s["agents"]
                .as_array()?
                .iter()
                .any(|a| a["hostname"] == "frozen" && a["status"] == "active")
                .then_some(())
        },
    )
    .await;
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_made_while_the_master_is_down_survives_an_agent_restart_and_arrives() {
    let mut master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let listen = url.trim_start_matches("http://").to_string();
    let dir = tempdir();
    let mut agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;
    let endpoint = agent_endpoint(&url, "host-a").await;

    let mut f = TestFramework::start(&url, "patient", "*").await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    // The task ends only when the test says so, which is while the master
    // is down; it sees the gate through a declared volume (its /tmp is
    // its own).
    let gates = tempdir();
    let gate = gates.path().join("gate");
    let cmd = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; echo done",
        gate.display()
    );
    let mut survivor = task("survivor", &cmd, &small_task());
    survivor.volumes = vec![agora_sdk::v1::Volume {
        host_path: gates.path().display().to_string(),
        read_only: false,
    }];
    f.driver
        .accept(&[offer_id(&offer)], vec![survivor], None)
        .await
        .expect("accept");
    f.wait_state("survivor", TaskState::TaskRunning, Duration::from_secs(10))
        .await;

    master.kill_hard();
    std::fs::write(&gate, b"").expect("open the gate");
    let output = sandbox_file(dir.path(), &f.id, "survivor", "stdout");
    wait_until(
        "the task to finish while the master is down",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&output)
                .ok()
                .filter(|o| o.contains("done"))
                .map(|_| ())
        },
    )
    .await;

    // The agent has taken note of the end (no running container left)...
    wait_until(
        "the agent to see the task end",
        Duration::from_secs(10),
        || async { containers(&endpoint).await.is_empty().then_some(()) },
    )
    .await;
    // ...and is itself killed and restarted while the master is still down:
    // the unacknowledged update lives in its checkpoint.
    agent.kill_hard();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");

    let master = start_master(&listen, &[]);
    let finished = f
        .wait_state("survivor", TaskState::TaskFinished, Duration::from_secs(30))
        .await;
    assert_eq!(finished.exit_code, Some(0));
    let s = state(master.url.as_deref().expect("url")).await;
    let t = s["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["id"] == "survivor")
        .cloned();
    assert_eq!(
        t.map(|t| t["state"].clone()),
        Some("TASK_FINISHED".into()),
        "{s:#}"
    );
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_accepts_launch_nothing_and_leak_nothing() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;
    let total = Resources::parse(AGENT_4CPU).expect("valid");
    let mut f = TestFramework::start(&url, "careless", "*").await;

    // Resources beyond the offer.
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let greedy = Resources::new()
        .with_scalar("cpus", 64.0)
        .with_scalar("mem", 128.0);
    let err = f
        .driver
        .accept(
            &[offer_id(&offer)],
            vec![task("big", "true", &greedy)],
            Some(0.0),
        )
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("not within the offer"), "{err}");

    // The offer's resources came back whole; use them for one valid task.
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    assert_eq!(offer_resources(&offer), total);
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("keeper", "sleep 60", &small_task())],
            Some(0.0),
        )
        .await
        .expect("valid accept");

    // The same offer again.
    let err = f
        .driver
        .accept(
            &[offer_id(&offer)],
            vec![task("again", "true", &small_task())],
            Some(0.0),
        )
        .await
        .expect_err("reused offer");
    assert!(err.to_string().contains("not outstanding"), "{err}");

    // A task id already in use, and one named twice in an accept.
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    assert_eq!(offer_resources(&offer), total.minus(&small_task()));
    let err = f
        .driver
        .accept(
            &[offer_id(&offer)],
            vec![task("keeper", "true", &small_task())],
            Some(0.0),
        )
        .await
        .expect_err("duplicate id");
    assert!(err.to_string().contains("already in use"), "{err}");
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let twice = vec![
        task("twin", "true", &small_task()),
        task("twin", "true", &small_task()),
    ];
    let err = f
        .driver
        .accept(&[offer_id(&offer)], twice, Some(0.0))
        .await
        .expect_err("twice in one accept");
    assert!(err.to_string().contains("appears twice"), "{err}");

    // Nothing was launched or leaked: one task, using one task's resources,
    // and the rest of the agent on offer again.
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    assert_eq!(offer_resources(&offer), total.minus(&small_task()));
    let s = state(&url).await;
    let tasks = s["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{s:#}");
    assert_eq!(tasks[0]["id"], "keeper");
    assert_eq!(s["agents"][0]["resources"]["used"]["cpus"], 1.0);
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_fail_with_their_exit_code_get_killed_and_reconcile() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;
    let mut f = TestFramework::start(&url, "mixed", "*").await;

    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let mut stubborn = task(
        "stubborn",
        "trap '' TERM; echo $$ > pid; sleep 60 & wait",
        &small_task(),
    );
    stubborn.kill_grace_period = 0.5;
    let tasks = vec![
        task("failing", "echo about to fail >&2; exit 3", &small_task()),
        task("sleeper", "exec sleep 60", &small_task()),
        stubborn,
    ];
    f.driver
        .accept(&[offer_id(&offer)], tasks, Some(3600.0))
        .await
        .expect("accept");

    let failed = f
        .wait_state("failing", TaskState::TaskFailed, Duration::from_secs(10))
        .await;
    assert_eq!(failed.exit_code, Some(3));
    assert!(
        failed.message.contains("exited with code 3"),
        "{}",
        failed.message
    );
    let stderr = sandbox_file(dir.path(), &f.id, "failing", "stderr");
    assert_eq!(
        std::fs::read_to_string(stderr).expect("stderr"),
        "about to fail\n"
    );

    f.wait_all(
        &["sleeper", "stubborn"],
        TaskState::TaskRunning,
        Duration::from_secs(10),
    )
    .await;
    let endpoint = agent_endpoint(&url, "host-a").await;
    let stubborn = container_of(&endpoint, "stubborn").await;
    let stubborn_id = stubborn["container_id"]
        .as_str()
        .expect("container id")
        .to_string();
    let stubborn_pids = wait_until(
        "the stubborn task's child",
        Duration::from_secs(10),
        || async {
            let pids = cgroup_pids(&stubborn_id);
            (pids.len() >= 3).then_some(pids)
        },
    )
    .await;

    // Reconciliation answers with the master's view: explicit ids, and an
    // unknown one.
    f.driver
        .reconcile(&["sleeper", "ghost"])
        .await
        .expect("reconcile");
    let mut answers = std::collections::BTreeMap::new();
    while answers.len() < 2 {
        let s = f
            .next_update(Duration::from_secs(10), |s| {
                s.reason == agora_sdk::v1::task_status::Reason::Reconciliation as i32
            })
            .await;
        answers.insert(agora_sdk::status_task_id(&s).to_string(), status_state(&s));
    }
    assert_eq!(answers.get("sleeper"), Some(&TaskState::TaskRunning));
    assert_eq!(answers.get("ghost"), Some(&TaskState::TaskUnknown));

    // Kill: one that obeys SIGTERM, one that ignores it and is SIGKILLed
    // after its grace period, with its child.
    f.driver.kill("sleeper").await.expect("kill");
    f.driver.kill("stubborn").await.expect("kill");
    let killed = f
        .wait_all(
            &["sleeper", "stubborn"],
            TaskState::TaskKilled,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        killed["sleeper"].message.contains("SIGTERM"),
        "{:?}",
        killed["sleeper"].message
    );
    assert!(
        killed["stubborn"].message.contains("SIGKILL"),
        "{:?}",
        killed["stubborn"].message
    );
    // Every process of the task's cgroup is gone, and so is the cgroup.
    assert!(
        stubborn_pids.iter().all(|p| !process_alive(*p)),
        "{stubborn_pids:?} survived"
    );
    assert!(
        cgroup_dirs(&stubborn_id).is_empty(),
        "the cgroup was removed"
    );
    let err = f.driver.kill("nobody").await.expect_err("unknown task");
    assert_eq!(err.code(), Some(tonic::Code::NotFound));

    let s = state(&url).await;
    let by_id = |id: &str| {
        s["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["id"] == id).cloned())
    };
    assert_eq!(
        by_id("failing").map(|t| t["state"].clone()),
        Some("TASK_FAILED".into())
    );
    assert_eq!(
        by_id("sleeper").map(|t| t["state"].clone()),
        Some("TASK_KILLED".into())
    );
    assert_eq!(s["agents"][0]["resources"]["used"], serde_json::json!({}));
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_subscription_with_the_same_id_takes_over_the_framework() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;
    let mut old = TestFramework::start(&url, "phoenix", "*").await;
    let offer = old.next_offers(Duration::from_secs(10)).await.remove(0);
    old.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("kept", "exec sleep 60", &small_task())],
            Some(0.0),
        )
        .await
        .expect("accept");
    old.wait_state("kept", TaskState::TaskRunning, Duration::from_secs(10))
        .await;

    // Without the secret issued with the id, nobody takes it over.
    let mut config = agora_sdk::FrameworkConfig::new(&url, "phoenix");
    config.framework_id = Some(old.id.clone());
    let refused = agora_sdk::Driver::new(config.clone())
        .expect("driver")
        .run(Recorder::new(tokio::sync::mpsc::unbounded_channel().0))
        .await;
    assert!(
        matches!(refused, Err(agora_sdk::SdkError::SubscribeRefused(_))),
        "{:?}",
        refused.err()
    );
    // With it (the framework's next process), the id is resumed.
    config.framework_secret = old.driver.framework_secret();
    assert!(config.framework_secret.is_some());
    let driver = agora_sdk::Driver::new(config).expect("driver");
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let runner = driver.clone();
    tokio::spawn(async move { runner.run(Recorder::new(tx)).await });
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(Seen::Subscribed(id))) => assert_eq!(id, old.id),
        other => panic!("expected a subscription, got {other:?}"),
    }
    // The old subscription is told, and its calls are refused.
    loop {
        if let Seen::Error(message) = old.next(Duration::from_secs(10)).await {
            assert!(message.contains("failed over"), "{message}");
            break;
        }
    }
    let err = old.driver.revive().await.expect_err("stale subscription");
    assert!(
        matches!(err.code(), Some(tonic::Code::FailedPrecondition) | None),
        "{err}"
    );

    // The task is still the framework's, under the new subscription.
    driver.reconcile(&["kept"]).await.expect("reconcile");
    loop {
        if let Some(Seen::Update(s)) = events.recv().await
            && agora_sdk::status_task_id(&s) == "kept"
        {
            assert_eq!(status_state(&s), TaskState::TaskRunning);
            break;
        }
    }
    driver.teardown();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_offer_is_rescinded_at_the_offer_timeout_and_offered_again() {
    let master = start_master("127.0.0.1:0", &["--offer-timeout", "1s"]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT_4CPU, "host-a");
    wait_for_agents(&url, 1).await;
    let mut f = TestFramework::start(&url, "sluggish", "*").await;
    let first = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let first_id = offer_id(&first).to_string();
    let rescinded = f
        .next_matching(Duration::from_secs(10), |s| match s {
            Seen::Rescinded(id) => Some(id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(rescinded, first_id);
    // A rescinded offer cannot be used...
    let err = f
        .driver
        .accept(
            &[&first_id],
            vec![task("late", "true", &small_task())],
            None,
        )
        .await
        .expect_err("rescinded offer");
    assert!(err.to_string().contains("not outstanding"), "{err}");
    // ...and its resources are offered again, whole.
    let again = f.next_offers(Duration::from_secs(10)).await.remove(0);
    assert_ne!(offer_id(&again), first_id);
    assert_eq!(
        offer_resources(&again),
        Resources::parse(AGENT_4CPU).expect("valid")
    );
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agora_dev_runs_a_master_and_an_agent_that_agora_state_shows() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let dev = start_dev(
        &data,
        &[
            "--resources",
            "cpus:2;mem:2048;ports:[31000-31010]",
            "--attributes",
            "zone:dev",
        ],
    );
    let url = dev.url.clone().expect("url");
    wait_for_agents(&url, 1).await;
    let health: serde_json::Value = fetch(format!("{url}/health"))
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
    let missing = fetch(format!("{url}/api/v1/nope")).await.expect("GET");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("json error");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("/api/v1/nope"))
    );

    // A framework's task runs on the dev agent, and `agora state` shows it.
    let (job, done) = Launcher::new("dev", "echo hello", small_task(), 1);
    spawn_launcher(&url, "devtest", "*", job);
    wait_until("the task to finish", Duration::from_secs(20), || async {
        all_ended(&done, 1).then_some(())
    })
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["state", "--master", &url])
        .output()
        .expect("agora state");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("agents (1)"), "{text}");
    assert!(
        text.contains("dev-0") && text.contains("TASK_FINISHED"),
        "{text}"
    );
    assert!(
        data.join("agent_id").exists(),
        "the agent keeps its id in --data-dir"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emulated_agents_register_and_run_tasks_the_master_cannot_tell_apart() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let _emulator = Proc::spawn_plain(&[
        "sim",
        "emulate",
        "--master",
        &url,
        "--agents",
        "50",
        "--resources",
        "cpus:2;mem:1024",
        "--task-duration",
        "1s",
        "--agents-per-connection",
        "20",
    ]);
    let s = wait_for_agents(&url, 50).await;
    assert!(
        s["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .all(|a| a["hostname"]
                .as_str()
                .is_some_and(|h| h.starts_with("emulated-"))),
        "{s:#}"
    );
    let mut f = TestFramework::start(&url, "on-emulated", "*").await;
    let offers = f.next_offers(Duration::from_secs(10)).await;
    let tasks = vec![
        task("short", "true", &small_task()),
        task("long", "sleep 600", &small_task()),
    ];
    f.driver
        .accept(&[offer_id(&offers[0])], tasks, None)
        .await
        .expect("accept");
    // The emulated task runs its duration and finishes; a killed one is killed.
    f.wait_state("long", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    f.driver.kill("long").await.expect("kill");
    f.wait_state("long", TaskState::TaskKilled, Duration::from_secs(10))
        .await;
    let finished = f
        .wait_state("short", TaskState::TaskFinished, Duration::from_secs(10))
        .await;
    assert_eq!(finished.exit_code, Some(0));
    f.teardown().await;
    // A framework that tells its demand with its subscription is first
    // offered what covers it (one agent of 50), not every agent.
    let mut config = FrameworkConfig::new(&url, "wanting-little");
    config.token = user_token();
    let mut demand = Demand::default();
    demand.add(&small_task(), 1);
    let mut wanting = TestFramework::start_wanting(config, Some(&demand)).await;
    let first = wanting.next_offers(Duration::from_secs(10)).await;
    assert_eq!(first.len(), 1, "{first:?}");
    wanting.teardown().await;
    // The load framework places its tasks on them — every one reported
    // running, none failed — and tells how long that took.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["sim", "load", "--master", &url, "--tasks", "2000", "--json"])
        .args(["--task-size", "cpus:0.01;mem:1"])
        .output()
        .expect("agora sim load");
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["running"], 2000, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["tasks_per_second"].as_f64().is_some_and(|r| r > 0.0));
    assert!(report["latency_p99_ms"].as_f64().is_some_and(|l| l > 0.0));
}
