//! What authentication and TLS cost: one real master (its own process,
//! release build) against 100 emulated agents and the load framework (in
//! this process), three ways — no authentication on plaintext, bearer
//! tokens on plaintext, and tokens over TLS (every agent session, framework
//! call and HTTP read encrypted) — run in turn, `AGORA_SECURITY_ROUNDS`
//! times each (default 6), interleaved; a summary gives each mode's medians.
//!
//! Inside the clocks: the paced load's accept → `TASK_RUNNING` latency per
//! task (`AGORA_SECURITY_TASKS`, default 10,000 tasks at
//! `AGORA_SECURITY_RATE`, default 2,000 a second), started once the
//! unpaced load's tasks are all killed; the unpaced load's throughput
//! (same count, as fast as offers allow, first accept to last RUNNING); and `GET /api/v1/state` (body read) with 20,000 resident tasks,
//! 20 requests one after another, each timed alone. The master's CPU
//! seconds over both loads are read from `/proc`.
//!
//! `cargo bench --bench security`; writes `target/security/security.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::Master;

const OPS: &str = "ops-token-0123456789abcdef";
const AGENTS: &str = "agents-token-0123456789ab";
const LOAD: &str = "load-token-0123456789abcd";

#[derive(serde::Serialize)]
struct Point {
    mode: &'static str,
    round: usize,
    paced_p50_ms: f64,
    paced_p99_ms: f64,
    tasks_per_second: f64,
    state_p50_ms: f64,
    state_bytes: usize,
    master_cpu_ms_per_1k_tasks: f64,
}

/// The ways the master runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Open,
    Tokens,
    TokensTls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Open => "no auth, plaintext",
            Mode::Tokens => "tokens, plaintext",
            Mode::TokensTls => "tokens over TLS",
        }
    }
}

/// The auth file and certificates the secured modes use.
struct Secrets {
    _dir: tempfile::TempDir,
    auth: PathBuf,
    certs: PathBuf,
}

fn secrets() -> Secrets {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(
        &auth,
        format!(
            "[[principals]]\nname = \"ops\"\ntoken = \"{OPS}\"\n\n\
             [[principals]]\nname = \"agents\"\ntoken = \"{AGENTS}\"\n\n\
             [[principals]]\nname = \"load\"\ntoken = \"{LOAD}\"\n"
        ),
    )
    .expect("auth file");
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["certs", "--name", "master", "--hosts", "127.0.0.1", "--out"])
        .arg(&certs)
        .output()
        .expect("agora certs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    Secrets {
        _dir: dir,
        auth,
        certs,
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

fn master_flags(mode: Mode, s: &Secrets) -> Vec<String> {
    let mut flags = Vec::new();
    if mode != Mode::Open {
        flags.extend(["--auth".to_string(), path(&s.auth)]);
    }
    if mode == Mode::TokensTls {
        flags.extend([
            "--tls-cert".to_string(),
            path(&s.certs.join("master.pem")),
            "--tls-key".to_string(),
            path(&s.certs.join("master-key.pem")),
        ]);
    }
    flags
}

fn client_tls(mode: Mode, s: &Secrets) -> agora_proto::tls::ClientTls {
    if mode == Mode::TokensTls {
        agora_proto::tls::ClientTls::load(Some(&s.certs.join("ca.pem")), None).expect("ca")
    } else {
        Default::default()
    }
}

/// An operator's HTTP client (its token is ignored without authentication).
fn ops_client(tls: &agora_proto::tls::ClientTls) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().default_headers({
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {OPS}").parse().expect("header"),
        );
        h
    });
    if let Some(pem) = &tls.ca_pem {
        for c in reqwest::Certificate::from_pem_bundle(pem).expect("pem") {
            builder = builder.add_root_certificate(c);
        }
    }
    builder.build().expect("client")
}

async fn one(mode: Mode, round: usize, s: &Secrets, tasks: u64, rate: f64) -> Point {
    let master = Master::start_with(&master_flags(mode, s));
    let token = |t: &str| (mode != Mode::Open).then(|| t.to_string());
    let tls = client_tls(mode, s);
    let stats = Arc::new(agora_sim::emulate::EmulatorStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Tasks run until killed: the loads tear theirs down when done, the
    // resident framework keeps its own for the reads.
    let mut emulation = cluster::emulation(&master.url, 100, None);
    emulation.token = token(AGENTS);
    emulation.tls = tls.clone();
    let emulator = tokio::spawn(agora_sim::emulate::emulate(
        emulation,
        stats.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    cluster::wait_for("registration", Duration::from_secs(60), || {
        stats.registered.load(std::sync::atomic::Ordering::Relaxed) >= 100
    })
    .await;
    let load = |name: &str, count: u64, rate: Option<f64>| {
        let mut config = cluster::load_config(&master.url, name, count, rate);
        config.token = token(LOAD);
        config.tls = tls.clone();
        config
    };
    let ops = ops_client(&tls);
    let cpu_before = master.cpu_seconds();
    let fast = agora_sim::load::run(load("fast", tasks, None), Default::default())
        .await
        .expect("the load ran");
    // The fast load's framework leaves and its tasks are killed: the paced
    // load starts once that is over, so its latency is its own.
    cluster::quiesce(&ops, &master.url, Duration::from_secs(120)).await;
    let paced = agora_sim::load::run(load("paced", tasks, Some(rate)), Default::default())
        .await
        .expect("the paced load ran");
    let cpu = master.cpu_seconds() - cpu_before;

    // /state with resident tasks (they run until the framework leaves).
    let hold = Arc::new(agora_sim::load::Hold::default());
    let resident = Arc::new(agora_sim::load::LoadStats::default());
    let mut config = load("resident", 20_000, None);
    config.hold = Some(hold.clone());
    let holding = tokio::spawn(agora_sim::load::run(config, resident.clone()));
    cluster::wait_for("the resident tasks", Duration::from_secs(120), || {
        resident.running.load(std::sync::atomic::Ordering::Relaxed) >= 20_000
    })
    .await;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let body = ops
            .get(format!("{}/api/v1/state", master.url))
            .send()
            .await
            .expect("GET /state")
            .bytes()
            .await
            .expect("body");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
    }
    times.sort_by(f64::total_cmp);
    hold.leave.notify_one();
    holding.abort();
    let _ = stop_tx.send(());
    let _ = emulator.await;
    Point {
        mode: mode.name(),
        round,
        paced_p50_ms: paced.latency_p50_ms,
        paced_p99_ms: paced.latency_p99_ms,
        tasks_per_second: fast.tasks_per_second,
        state_p50_ms: times[times.len() / 2],
        state_bytes: bytes,
        master_cpu_ms_per_1k_tasks: cpu * 1000.0 / (2 * tasks) as f64 * 1000.0,
    }
}

fn main() {
    agora_proto::tls::install_default_provider();
    let tasks = cluster::env_u64("AGORA_SECURITY_TASKS", 10_000);
    let rate = cluster::env_u64("AGORA_SECURITY_RATE", 2_000) as f64;
    let rounds = cluster::env_u64("AGORA_SECURITY_ROUNDS", 6) as usize;
    let s = secrets();
    let points = cluster::block_on(async {
        let mut points = Vec::new();
        for round in 1..=rounds {
            for mode in [Mode::Open, Mode::Tokens, Mode::TokensTls] {
                eprintln!("security: round {round}, {}", mode.name());
                points.push(one(mode, round, &s, tasks, rate).await);
            }
        }
        points
    });
    println!(
        "{:<20} {:>5} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "mode", "round", "p50 ms", "p99 ms", "tasks/s", "/state ms", "cpu ms/1k"
    );
    for p in &points {
        println!(
            "{:<20} {:>5} {:>10.1} {:>10.1} {:>10.0} {:>12.1} {:>14.1}",
            p.mode,
            p.round,
            p.paced_p50_ms,
            p.paced_p99_ms,
            p.tasks_per_second,
            p.state_p50_ms,
            p.master_cpu_ms_per_1k_tasks
        );
    }
    println!("\nmedians:");
    for mode in [Mode::Open, Mode::Tokens, Mode::TokensTls] {
        let of = |f: fn(&Point) -> f64| {
            let mut v: Vec<f64> = points
                .iter()
                .filter(|p| p.mode == mode.name())
                .map(f)
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        println!(
            "{:<20} {:>5} {:>10.1} {:>10.1} {:>10.0} {:>12.1} {:>14.1}",
            mode.name(),
            "",
            of(|p| p.paced_p50_ms),
            of(|p| p.paced_p99_ms),
            of(|p| p.tasks_per_second),
            of(|p| p.state_p50_ms),
            of(|p| p.master_cpu_ms_per_1k_tasks)
        );
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/security");
    let _ = std::fs::create_dir_all(&out);
    let json = serde_json::to_string_pretty(&points).expect("json");
    let _ = std::fs::write(out.join("security.json"), json);
}
