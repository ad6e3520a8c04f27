//! Whole-system scale benchmark: one real master (its own process, release
//! build, embedded registry) against N emulated agents and the load
//! framework, both in this process, all on this machine.
//!
//! For each agent count: the master starts; `agora_sim::emulate` registers
//! N agents (each its own session speaking the agent protocol; a task runs
//! for `AGORA_SCALE_TASK_MS`, default 1 ms, then finishes); once all are
//! registered, `agora_sim::load` launches `AGORA_SCALE_TASKS` tasks (default
//! 100,000) as fast as offers allow — the throughput — and then, once the
//! master is quiet again (no task running, no status update for a second),
//! as a second framework, the same number at `AGORA_SCALE_RATE` tasks per
//! second (default 10,000) — the latency under that load, without a
//! backlog of its own or the first load's making.
//!
//! Inside the clocks: registration runs from the emulator's start to the
//! last agent registered; throughput from the load framework's first accept
//! sent to its last `TASK_RUNNING` received (every update acknowledged);
//! latency from each task's accept sent to its `TASK_RUNNING` received,
//! split where its launch reached its emulated agent (both ends' clocks are
//! this process's), and shown over the paced load a quarter second at a
//! time (by when each accept was sent): a tail made of a few stalls shows
//! as peaks there. Memory is the master's resident set once the runs are
//! over. For each load the master's histogram of its core's turns says how
//! many turns were long enough to show in the latency tail, and the
//! emulator's count of updates sent says how many were resends (more than
//! three per task).
//!
//! `cargo bench --bench scale` (1,000, 5,000 and 10,000 agents);
//! `AGORA_SCALE_AGENTS=1000,5000,10000,50000` picks the counts.
//! Writes `target/scale/scale.json` and plots (`scale-throughput.svg`,
//! `scale-latency.svg`, `scale-latency-over-time.svg`) there.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agora_sim::report::{COLOURS, Scale, Series, line_chart};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::Master;

#[derive(serde::Serialize)]
struct Point {
    agents: usize,
    register_seconds: f64,
    master_rss_idle_mib: f64,
    /// As fast as offers allow.
    load: agora_sim::load::LoadReport,
    /// At the set rate.
    paced: agora_sim::load::LoadReport,
    master_rss_after_mib: f64,
    /// What each load cost while it ran (see [`WhileItRan`]).
    load_cost: WhileItRan,
    paced_cost: WhileItRan,
}

/// What went on while a load ran: the core's turns (from the master's
/// `agora_core_turn_seconds`: how many, how long busy, and how many took
/// longer than 10, 50 and 100 ms — a task that arrives in a long turn
/// waits it out), the CPU per 1,000 tasks of the master (all its threads)
/// and of this process (the emulated agents and the load framework), the
/// share of the machine's CPU time left idle and the share the hypervisor
/// gave to other guests (`steal`: on a VM, what the machine can do moves
/// with it), the status updates the
/// emulated agents sent per task (three when none was resent: starting,
/// running, finished), and the registry's commits per second (each a
/// transaction and a sync to disk).
#[derive(serde::Serialize)]
struct WhileItRan {
    turns: f64,
    busy_seconds: f64,
    turns_over_10_ms: f64,
    turns_over_50_ms: f64,
    turns_over_100_ms: f64,
    master_cpu_per_1000: f64,
    emulator_and_load_cpu_per_1000: f64,
    machine_idle: f64,
    machine_stolen: f64,
    updates_per_task: f64,
    registry_commits_per_second: f64,
}

impl WhileItRan {
    /// The table's cells after the agents and the load.
    fn cells(&self) -> String {
        format!(
            "{:.0} turns, {:.1} s busy; over 10 / 50 / 100 ms: {:.0} / {:.0} / {:.0} | {:.1} ms | {:.1} ms | {:.0}% | {:.1}% | {:.2} | {:.0}",
            self.turns,
            self.busy_seconds,
            self.turns_over_10_ms,
            self.turns_over_50_ms,
            self.turns_over_100_ms,
            self.master_cpu_per_1000,
            self.emulator_and_load_cpu_per_1000,
            self.machine_idle * 100.0,
            self.machine_stolen * 100.0,
            self.updates_per_task,
            self.registry_commits_per_second
        )
    }
}

/// A load run, and what went on meanwhile.
async fn load_watched(
    master: &Master,
    stats: &agora_sim::emulate::EmulatorStats,
    config: agora_sim::load::LoadConfig,
    load_stats: Arc<agora_sim::load::LoadStats>,
) -> (agora_sim::load::LoadReport, WhileItRan) {
    let client = reqwest::Client::new();
    let turns_before = cluster::Histogram::scrape(&client, &master.url, CORE_TURNS).await;
    let commits_before = cluster::gauge(&client, &master.url, REGISTRY_COMMITS).await;
    let updates_before = stats.updates_sent.load(Ordering::Relaxed);
    let (master_before, own_before) = (master.cpu_seconds(), own_cpu_seconds());
    let machine_before = cluster::MachineCpu::now();
    let report = agora_sim::load::run(config, load_stats)
        .await
        .expect("the load ran");
    let machine_after = cluster::MachineCpu::now();
    let machine_idle = machine_before.idle_share_until(&machine_after);
    let machine_stolen = machine_before.stolen_share_until(&machine_after);
    let (master_cpu, own_cpu) = (
        master.cpu_seconds() - master_before,
        own_cpu_seconds() - own_before,
    );
    let updates = stats.updates_sent.load(Ordering::Relaxed) - updates_before;
    let turns_after = cluster::Histogram::scrape(&client, &master.url, CORE_TURNS).await;
    let commits_after = cluster::gauge(&client, &master.url, REGISTRY_COMMITS).await;
    let mut turns = cluster::Histogram::default();
    turns_before.add_since(&turns_after, &mut turns);
    let tasks = report.tasks.max(1) as f64;
    let cost = WhileItRan {
        turns: turns.count,
        busy_seconds: turns.sum,
        turns_over_10_ms: turns.over("0.01"),
        turns_over_50_ms: turns.over("0.05"),
        turns_over_100_ms: turns.over("0.1"),
        master_cpu_per_1000: master_cpu * 1e6 / tasks,
        emulator_and_load_cpu_per_1000: own_cpu * 1e6 / tasks,
        machine_idle,
        machine_stolen,
        updates_per_task: updates as f64 / tasks,
        registry_commits_per_second: match (commits_before, commits_after) {
            (Some(before), Some(after)) if report.seconds > 0.0 => {
                after.saturating_sub(before) as f64 / report.seconds
            }
            _ => 0.0,
        },
    };
    (report, cost)
}

/// CPU seconds of this process: the emulated agents and load frameworks.
fn own_cpu_seconds() -> f64 {
    cluster::master::cpu_seconds_in("/proc/self/stat")
}

const CORE_TURNS: &str = "agora_core_turn_seconds";
const REGISTRY_COMMITS: &str = "agora_registry_commits_total";

async fn one(agents: usize, tasks: u64, task_ms: u64, rate: f64) -> Point {
    let master = Master::start();
    let stats = Arc::new(agora_sim::emulate::EmulatorStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let launches = Arc::new(agora_sim::load::LaunchTimes::default());
    let mut config = cluster::emulation(&master.url, agents, Some(Duration::from_millis(task_ms)));
    config.launches = Some(launches.clone());
    let started = Instant::now();
    let emulator = tokio::spawn(agora_sim::emulate::emulate(config, stats.clone(), async {
        let _ = stop_rx.await;
    }));
    while stats.registered.load(Ordering::Relaxed) < agents {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{agents} agents did not register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let register_seconds = started.elapsed().as_secs_f64();
    let master_rss_idle_mib = master.rss_mib();
    let load_stats = Arc::new(agora_sim::load::LoadStats::default());
    let progress = load_stats.clone();
    let ticker = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            eprintln!(
                "  {agents} agents: {} launched, {} running",
                progress.launched.load(Ordering::Relaxed),
                progress.running.load(Ordering::Relaxed)
            );
        }
    });
    let config = |name: &str, rate: Option<f64>| agora_sim::load::LoadConfig {
        launches: Some(launches.clone()),
        ..cluster::load_config(&master.url, name, tasks, rate)
    };
    let (load, load_cost) =
        load_watched(&master, &stats, config("load-max", None), load_stats).await;
    // The paced load's latency is its own: it starts once what the first
    // load left (ends, their updates, its framework's removal) is over.
    cluster::quiesce(
        &reqwest::Client::new(),
        &master.url,
        Duration::from_secs(300),
    )
    .await;
    eprintln!("  {agents} agents: the paced load, {rate:.0} tasks/s");
    let (paced, paced_cost) = load_watched(
        &master,
        &stats,
        config("load-paced", Some(rate)),
        Arc::new(agora_sim::load::LoadStats::default()),
    )
    .await;
    ticker.abort();
    let master_rss_after_mib = master.rss_mib();
    let _ = stop_tx.send(());
    let _ = emulator.await;
    drop(master);
    Point {
        agents,
        register_seconds,
        master_rss_idle_mib,
        load,
        paced,
        master_rss_after_mib,
        load_cost,
        paced_cost,
    }
}

fn main() {
    agora_proto::tls::install_default_provider();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let counts: Vec<usize> = std::env::var("AGORA_SCALE_AGENTS")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("AGORA_SCALE_AGENTS: numbers"))
        .collect();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let tasks = env("AGORA_SCALE_TASKS", 100_000);
    let task_ms = env("AGORA_SCALE_TASK_MS", 1);
    let rate = env("AGORA_SCALE_RATE", 10_000) as f64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| agents | register | tasks | tasks/s, as fast as offers allow | latency p50 / p99 there | latency p50 / p99 / max at {rate:.0} tasks/s (achieved) | master RSS idle → after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut points = Vec::new();
    for agents in counts {
        let p = runtime.block_on(one(agents, tasks, task_ms, rate));
        println!(
            "| {} | {:.1} s | {} | {:.0} | {:.0} / {:.0} ms | {:.1} / {:.1} / {:.1} ms ({:.0}/s) | {:.0} → {:.0} MiB |",
            p.agents,
            p.register_seconds,
            p.load.running,
            p.load.tasks_per_second,
            p.load.latency_p50_ms,
            p.load.latency_p99_ms,
            p.paced.latency_p50_ms,
            p.paced.latency_p99_ms,
            p.paced.latency_max_ms,
            p.paced.tasks_per_second,
            p.master_rss_idle_mib,
            p.master_rss_after_mib,
        );
        points.push(p);
    }
    println!(
        "\n| agents | load | the core's turns meanwhile | master CPU per 1,000 tasks | emulated agents' and load's CPU per 1,000 tasks | machine idle | stolen by the hypervisor | status updates sent per task | registry commits per second |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for p in &points {
        for (what, cost) in [
            ("as fast as offers allow", &p.load_cost),
            ("paced", &p.paced_cost),
        ] {
            println!("| {} | {what} | {} |", p.agents, cost.cells());
        }
    }
    println!(
        "\n| agents | load | accept sent → launch at the agent, p50 / p99 | launch at the agent → `TASK_RUNNING` at the framework, p50 / p99 | the slowest 1%: mean of each |"
    );
    println!("|---:|---|---:|---:|---:|");
    for p in &points {
        for (what, load) in [("as fast as offers allow", &p.load), ("paced", &p.paced)] {
            if let Some(h) = &load.hops {
                println!(
                    "| {} | {what} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} + {:.1} ms |",
                    p.agents,
                    h.to_agent_p50_ms,
                    h.to_agent_p99_ms,
                    h.back_p50_ms,
                    h.back_p99_ms,
                    h.slowest_to_agent_mean_ms,
                    h.slowest_back_mean_ms
                );
            }
        }
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("scale");
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::write(
        out.join("scale.json"),
        serde_json::to_string_pretty(&points).expect("json"),
    )
    .expect("write");
    let x = |p: &Point| p.agents as f64;
    let throughput = line_chart(
        "master throughput against agents (tasks placed per second)",
        "emulated agents",
        "tasks/s, accept → TASK_RUNNING",
        &[Series {
            name: "tasks/s".into(),
            colour: COLOURS[0],
            points: points
                .iter()
                .map(|p| (x(p), p.load.tasks_per_second))
                .collect(),
        }],
        Scale {
            log_x: true,
            log_y: false,
        },
    );
    let latency = line_chart(
        &format!("accept → TASK_RUNNING latency against agents, at {rate:.0} tasks/s"),
        "emulated agents",
        "milliseconds",
        &[
            Series {
                name: "p50".into(),
                colour: COLOURS[0],
                points: points
                    .iter()
                    .map(|p| (x(p), p.paced.latency_p50_ms))
                    .collect(),
            },
            Series {
                name: "p99".into(),
                colour: COLOURS[1],
                points: points
                    .iter()
                    .map(|p| (x(p), p.paced.latency_p99_ms))
                    .collect(),
            },
        ],
        Scale {
            log_x: true,
            log_y: true,
        },
    );
    let over_time = line_chart(
        &format!(
            "accept → TASK_RUNNING over the load at {rate:.0} tasks/s: p99 of each quarter second"
        ),
        "seconds from the first accept (by when each task's accept was sent)",
        "milliseconds",
        &points
            .iter()
            .enumerate()
            .map(|(i, p)| Series {
                name: format!("{} agents", p.agents),
                colour: COLOURS[i % COLOURS.len()],
                points: p
                    .paced
                    .over_time
                    .iter()
                    .map(|w| (w.from_seconds, w.p99_ms))
                    .collect(),
            })
            .collect::<Vec<_>>(),
        Scale {
            log_x: false,
            log_y: true,
        },
    );
    std::fs::write(out.join("scale-latency-over-time.svg"), over_time).expect("write");
    std::fs::write(out.join("scale-throughput.svg"), throughput).expect("write");
    std::fs::write(out.join("scale-latency.svg"), latency).expect("write");
    println!("wrote {}", out.display());
}
