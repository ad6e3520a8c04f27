//! The master's registry with real processes: a master killed with
//! SIGKILL and started again on the same data directory keeps what agents
//! cannot tell it; agent ids are only good with their secret.

use std::time::Duration;

use agora_sdk::{FrameworkConfig, Resources, TaskState, offer_id, task};
use serde_json::Value;

use crate::support::*;

const AGENT: &str = "cpus:2;mem:1024;disk:1000;ports:[31200-31219]";

fn small() -> Resources {
    Resources::new()
        .with_scalar("cpus", 0.2)
        .with_scalar("mem", 32.0)
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

/// A master on a fixed data directory, restartable on the same address.
fn master_in(data: &std::path::Path, listen: &str) -> Proc {
    let dir = data.to_str().expect("utf-8 path");
    start_master(listen, &["--data-dir", dir])
}

/// Launches `sleep 600` as `id` from the framework's next offer and waits
/// for it to run; returns its pid on the agent at `endpoint`.
async fn launch_sleeper(f: &mut TestFramework, endpoint: &str, id: &str) -> i32 {
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task(id, "sleep 600", &small())],
            None,
        )
        .await
        .expect("accept");
    f.wait_state(id, TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    container_of(endpoint, id).await["pid"]
        .as_i64()
        .expect("pid") as i32
}

/// The master's count of refused agent registrations.
async fn registrations_refused(url: &str) -> Option<f64> {
    let metrics = fetch(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("agora_agent_registrations_refused_total "))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_killed_hard_keeps_weights_drains_and_frameworks_and_reconciles_tasks() {
    let master_data = tempdir();
    let mut master = master_in(master_data.path(), "127.0.0.1:0");
    let url = master.url.clone().expect("url");
    let listen = url.trim_start_matches("http://").to_string();
    let (da, db) = (tempdir(), tempdir());
    let _a = start_agent(&url, da.path(), AGENT, "keep-a");
    let _b = start_agent(&url, db.path(), AGENT, "keep-b");
    let s = wait_for_agents(&url, 2).await;
    let b_id = find(&s["agents"], "hostname", "keep-b").expect("keep-b")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut config = FrameworkConfig::new(&url, "keeper");
    config.role = "prod".into();
    config.failover_timeout = Duration::from_secs(3600);
    let mut f = TestFramework::start_with(config).await;
    let offer = loop {
        let offers = f.next_offers(Duration::from_secs(10)).await;
        if let Some(o) = offers.into_iter().find(|o| o.hostname == "keep-a") {
            break o;
        }
    };
    f.driver
        .accept(
            &[offer_id(&offer)],
            vec![task("kept", "sleep 600", &small())],
            None,
        )
        .await
        .expect("accept");
    f.wait_state("kept", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    let (code, _) = send(
        reqwest::Method::PUT,
        &format!("{url}/api/v1/roles/prod"),
        r#"{"weight": 3}"#,
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{b_id}/drain"),
        "{}",
    )
    .await;
    assert_eq!(code, 200);

    master.kill_hard();
    let master = master_in(master_data.path(), &listen);
    let url = master.url.clone().expect("url");

    // What only the registry knew is back at once, before any agent returns.
    let (_, roles) = get(&format!("{url}/api/v1/roles")).await;
    let prod = find(&roles["roles"], "role", "prod").expect("role prod");
    assert_eq!(prod["weight"], 3.0, "{roles:#}");
    let s = state(&url).await;
    let keeper = find(&s["frameworks"], "name", "keeper").expect("keeper recovered");
    assert_eq!(keeper["role"], "prod");
    assert_eq!(
        find(&s["tasks"], "id", "kept").expect("task recovered")["state"],
        "TASK_RUNNING"
    );

    // Agents and the framework come back; the drain holds and the task
    // reconciles as running.
    let s = wait_for_agents(&url, 2).await;
    assert_eq!(
        find(&s["agents"], "id", &b_id).expect("b")["draining"],
        true
    );
    wait_until(
        "the framework to resubscribe",
        Duration::from_secs(20),
        || async {
            let s = state(&url).await;
            (find(&s["frameworks"], "name", "keeper")?["active"] == true).then_some(())
        },
    )
    .await;
    f.driver.reconcile(&[]).await.expect("reconcile");
    let status = f
        .wait_state("kept", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    assert_eq!(
        status.agent_id.map(|a| a.value).as_deref(),
        find(&s["agents"], "hostname", "keep-a").and_then(|a| a["id"].as_str())
    );
    // Offers come only from the undrained agent.
    for _ in 0..3 {
        for o in f.next_offers(Duration::from_secs(10)).await {
            assert_eq!(o.hostname, "keep-a", "a drained agent was offered");
            f.driver
                .decline(&[offer_id(&o)], Some(0.2))
                .await
                .expect("decline");
        }
    }
    f.driver.kill("kept").await.expect("kill");
    f.wait_state("kept", TaskState::TaskKilled, Duration::from_secs(10))
        .await;
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_framework_away_past_its_failover_timeout_loses_its_tasks_across_a_master_restart() {
    let master_data = tempdir();
    let mut master = master_in(master_data.path(), "127.0.0.1:0");
    let url = master.url.clone().expect("url");
    let listen = url.trim_start_matches("http://").to_string();
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "orphanage");
    wait_for_agents(&url, 1).await;

    let mut config = FrameworkConfig::new(&url, "fleeting");
    config.failover_timeout = Duration::from_secs(6);
    let mut f = TestFramework::start_with(config).await;
    let endpoint = agent_endpoint(&url, "orphanage").await;
    let pid = launch_sleeper(&mut f, &endpoint, "orphan").await;

    // The framework process dies (no teardown); then so does the master.
    f.abandon();
    // The master sees it go (and records since when) before it dies too.
    wait_until(
        "the master to see the framework go",
        Duration::from_secs(10),
        || async {
            let s = state(&url).await;
            (find(&s["frameworks"], "name", "fleeting")?["active"] == false).then_some(())
        },
    )
    .await;
    master.kill_hard();
    let master = master_in(master_data.path(), &listen);
    let url = master.url.clone().expect("url");
    let s = state(&url).await;
    assert_eq!(
        find(&s["frameworks"], "name", "fleeting").expect("still known")["active"],
        false
    );

    // The timeout ran on through the restart: the task is killed.
    wait_until(
        "the orphaned task to be killed",
        Duration::from_secs(20),
        || async {
            let s = state(&url).await;
            let gone = find(&s["frameworks"], "name", "fleeting").is_none();
            (gone && !process_alive(pid)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_claiming_another_agents_id_without_its_secret_is_refused() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let (da, db) = (tempdir(), tempdir());
    let _a = start_agent(&url, da.path(), AGENT, "owner");
    let s = wait_for_agents(&url, 1).await;
    let id = find(&s["agents"], "hostname", "owner").expect("owner")["id"]
        .as_str()
        .expect("id")
        .to_string();
    // The master lists the agent as soon as it admits it; the agent
    // checkpoints its secret once the answer reaches it.
    let secret = da.path().join("agent_secret");
    wait_until(
        "the owner to checkpoint its secret",
        Duration::from_secs(10),
        || async { secret.exists().then_some(()) },
    )
    .await;

    // The impostor copies the id, not the secret.
    std::fs::write(db.path().join("agent_id"), &id).expect("write id");
    let _b = start_agent(&url, db.path(), AGENT, "impostor");
    // Refused, and refused again when it retries.
    wait_until(
        "the impostor to be refused twice",
        Duration::from_secs(20),
        || async {
            let refused = registrations_refused(&url).await?;
            (refused >= 2.0).then_some(())
        },
    )
    .await;
    let s = state(&url).await;
    let agents = s["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{s:#}");
    assert_eq!(agents[0]["hostname"], "owner");
    assert_eq!(agents[0]["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_must_not_outlive_a_partition_dies_when_its_frozen_agent_wakes() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let agent = start_agent(&url, dir.path(), AGENT, "frozen");
    wait_for_agents(&url, 1).await;
    let endpoint = agent_endpoint(&url, "frozen").await;

    let mut f = TestFramework::start(&url, "partitioned", "*").await;
    let offer = f.next_offers(Duration::from_secs(10)).await.remove(0);
    let mut careful = task("careful", "sleep 600", &small());
    careful.stop_when_master_lost = true;
    let patient = task("patient", "sleep 600", &small());
    f.driver
        .accept(&[offer_id(&offer)], vec![careful, patient], None)
        .await
        .expect("accept");
    f.wait_all(
        &["careful", "patient"],
        TaskState::TaskRunning,
        Duration::from_secs(10),
    )
    .await;
    let pid_of = |c: Value| c["pid"].as_i64().expect("pid") as i32;
    let careful_pid = pid_of(container_of(&endpoint, "careful").await);
    let patient_pid = pid_of(container_of(&endpoint, "patient").await);

    // Frozen past the agent timeout (2 s): the master gives its tasks up.
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    f.wait_state(
        "careful",
        TaskState::TaskUnreachable,
        Duration::from_secs(10),
    )
    .await;
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    // On waking, before anything else, it stops the task that asked for it.
    wait_until(
        "the careful task to be stopped",
        Duration::from_secs(3),
        || async { (!process_alive(careful_pid)).then_some(()) },
    )
    .await;
    assert!(process_alive(patient_pid), "the other task keeps running");
    let patient = f
        .wait_state("patient", TaskState::TaskRunning, Duration::from_secs(10))
        .await;
    assert_eq!(patient.state, TaskState::TaskRunning as i32);
    f.teardown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_marked_gone_loses_its_tasks_kills_them_and_is_refused() {
    let master = start_master("127.0.0.1:0", &[]);
    let url = master.url.clone().expect("url");
    let dir = tempdir();
    let _agent = start_agent(&url, dir.path(), AGENT, "doomed");
    let s = wait_for_agents(&url, 1).await;
    let id = find(&s["agents"], "hostname", "doomed").expect("agent")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let endpoint = agent_endpoint(&url, "doomed").await;
    let mut f = TestFramework::start(&url, "bystander", "*").await;
    let pid = launch_sleeper(&mut f, &endpoint, "stranded").await;

    let (code, body) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{id}/gone"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    f.wait_state(
        "stranded",
        TaskState::TaskGoneByOperator,
        Duration::from_secs(10),
    )
    .await;
    // The agent is told, and kills what it ran.
    wait_until("the task to be killed", Duration::from_secs(10), || async {
        (!process_alive(pid)).then_some(())
    })
    .await;
    // It keeps trying to come back and is refused every time.
    wait_until("a refused return", Duration::from_secs(10), || async {
        (registrations_refused(&url).await? > 0.0).then_some(())
    })
    .await;
    let s = state(&url).await;
    assert!(find(&s["agents"], "id", &id).is_none(), "{s:#}");
    let (code, body) = send(
        reqwest::Method::POST,
        &format!("{url}/api/v1/agents/{id}/gone"),
        "",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    f.teardown().await;
}
