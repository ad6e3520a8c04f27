//! Storms: every agent reconnecting at once, and a framework reconciling
//! every task at once.
//!
//! One real master process, `AGORA_STORM_AGENTS` emulated agents (default
//! 10,000) and a resident framework holding `AGORA_STORM_TASKS` running
//! tasks (default 100,000). Then:
//!
//! - **Network blip**: every agent's session is dropped at once (the
//!   emulator closes them) while the master keeps running; each agent
//!   reconnects after 100 ms and re-registers with its tasks. Inside the
//!   clock: the cut → every agent registered again (its `Registered`
//!   received) and active on the master's `/metrics`.
//! - **Master restart**: the master is killed (`SIGKILL`) and started again
//!   on the same address and registry. Every agent's session drops at once
//!   and each reconnects (backing off from 100 ms to 2 s) and re-registers
//!   with its tasks. Inside the clock: the new master's process start →
//!   every agent active again on its `/metrics` (polled every 50 ms). Then
//!   the tasks are counted: running, and lost.
//! - **Reconciliation**: the resident framework asks for the state of all
//!   its tasks in one call. Inside the clock: the call sent → the last
//!   answer received.
//!
//! `cargo bench --bench storm`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, block_on, env_u64, gauge, wait_for};

async fn run(agents: usize, tasks: u64) {
    eprintln!("storm: starting {agents} agents");
    let mut cluster = Cluster::start(agents).await;
    eprintln!("storm: {tasks} resident tasks");
    cluster.resident(tasks).await;
    let client = reqwest::Client::new();
    let active = r#"agora_agents{status="active"}"#;

    eprintln!("storm: cutting every agent's session");
    let cut = Instant::now();
    cluster.cut_sessions.notify_waiters();
    let registered = || cluster.emulator.registered.load(Ordering::Relaxed);
    wait_for("the agents to notice", Duration::from_secs(10), || {
        registered() < agents
    })
    .await;
    wait_for(
        "every agent registered again",
        Duration::from_secs(300),
        || registered() >= agents,
    )
    .await;
    while gauge(&client, &cluster.master.url, active).await != Some(agents as u64) {
        assert!(
            cut.elapsed() < Duration::from_secs(300),
            "agents not active again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let blip_whole = cut.elapsed();
    let sessions_cut = cluster.emulator.sessions_cut.load(Ordering::Relaxed);
    let blip_running = cluster.tasks_in(&client, "TASK_RUNNING").await.unwrap_or(0);

    eprintln!("storm: killing and restarting the master");
    let rss_before = cluster.master.rss_mib();
    let restarted = Instant::now();
    cluster.master.kill_and_restart();
    let listening = restarted.elapsed();
    let url = cluster.master.url.clone();
    let mut whole = None;
    while restarted.elapsed() < Duration::from_secs(300) {
        if gauge(&client, &url, active).await == Some(agents as u64) {
            whole = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let whole = whole.expect("every agent came back within 5 minutes");
    let running = cluster.tasks_in(&client, "TASK_RUNNING").await.unwrap_or(0);
    let lost = cluster.tasks_in(&client, "TASK_LOST").await.unwrap_or(0)
        + cluster
            .tasks_in(&client, "TASK_UNREACHABLE")
            .await
            .unwrap_or(0)
        + cluster.tasks_in(&client, "TASK_GONE").await.unwrap_or(0);

    eprintln!("storm: reconciling {tasks} tasks");
    // The framework is back too (it resubscribes on its own).
    let frameworks = r#"agora_frameworks{active="true"}"#;
    let mut back = false;
    for _ in 0..600 {
        if gauge(&client, &url, frameworks).await == Some(1) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the resident framework did not resubscribe");
    let before = cluster.resident.reconciled.load(Ordering::Relaxed);
    let asked = Instant::now();
    cluster.hold.reconcile.notify_one();
    let stats = cluster.resident.clone();
    wait_for(
        "every reconciliation answer",
        Duration::from_secs(300),
        || stats.reconciled.load(Ordering::Relaxed) - before >= tasks,
    )
    .await;
    let reconciled = asked.elapsed();
    let rss_after = cluster.master.rss_mib();

    println!("{agents} agents, {tasks} running tasks\n");
    println!("| storm | measured |");
    println!("|---|---:|");
    println!(
        "| network blip: {sessions_cut} sessions cut → every agent registered and active again | **{:.2} s** |",
        blip_whole.as_secs_f64()
    );
    println!("| tasks running after the blip | {blip_running} of {tasks} |");
    println!(
        "| master restart: new process listening | {:.2} s |",
        listening.as_secs_f64()
    );
    println!(
        "| master restart: every agent active again | **{:.2} s** |",
        whole.as_secs_f64()
    );
    println!("| tasks running once the agents were back | {running} of {tasks} |");
    println!("| tasks lost, unreachable or gone | {lost} |");
    println!(
        "| reconciling {tasks} tasks in one call | **{:.2} s** |",
        reconciled.as_secs_f64()
    );
    println!("| master RSS before → after the restart | {rss_before:.0} → {rss_after:.0} MiB |");
}

fn main() {
    agora_proto::tls::install_default_provider();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let agents = env_u64("AGORA_STORM_AGENTS", 10_000) as usize;
    let tasks = env_u64("AGORA_STORM_TASKS", 100_000);
    block_on(run(agents, tasks));
}
