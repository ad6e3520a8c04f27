//! An emulated cluster for the whole-system benchmarks: a real master
//! process, N emulated agents in this process (tasks run until killed), and
//! a resident framework holding a number of running tasks.

#![allow(dead_code)]

/// The emulated agents and load frameworks allocate with mimalloc, as
/// `agora sim emulate` and `agora sim load` do (the `agora` binary's
/// allocator): with glibc's malloc, 40% of this process's CPU at 50,000
/// agents went to `malloc` and `free`, on the cores the master measured
/// here shares.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "master.rs"]
pub mod master;
pub use master::Master;

pub struct Cluster {
    pub master: Master,
    pub agents: usize,
    pub emulator: Arc<agora_sim::emulate::EmulatorStats>,
    /// Notify to make every emulated agent drop its session at once.
    pub cut_sessions: Arc<tokio::sync::Notify>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    emulating: Option<tokio::task::JoinHandle<Result<(), agora_sim::emulate::EmulateError>>>,
    /// The resident framework's controls; it leaves when the cluster is
    /// dropped.
    pub hold: Arc<agora_sim::load::Hold>,
    /// The resident framework's counts.
    pub resident: Arc<agora_sim::load::LoadStats>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.hold.leave.notify_one();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(e) = self.emulating.take() {
            e.abort();
        }
    }
}

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs a benchmark's body on a multi-threaded runtime.
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body)
}

/// Emulated agents of the benchmarks' size against `master`.
pub fn emulation(
    master: &str,
    agents: usize,
    task_duration: Option<Duration>,
) -> agora_sim::emulate::EmulateConfig {
    agora_sim::emulate::EmulateConfig {
        masters: master.to_string(),
        agents,
        resources: agora_proto::Resources::parse("cpus:8;mem:16384;disk:100000").expect("valid"),
        attributes: Vec::new(),
        task_duration,
        agents_per_connection: 100,
        cut_sessions: Default::default(),
        token: None,
        tls: Default::default(),
        launches: None,
    }
}

/// A load framework of small tasks (`cpus:0.01;mem:1`) against `master`.
pub fn load_config(
    master: &str,
    name: &str,
    tasks: u64,
    rate: Option<f64>,
) -> agora_sim::load::LoadConfig {
    agora_sim::load::LoadConfig {
        masters: master.to_string(),
        tasks,
        rate,
        task: agora_proto::Resources::parse("cpus:0.01;mem:1").expect("valid"),
        command: "true".into(),
        name: name.into(),
        hold: None,
        token: None,
        tls: Default::default(),
        launches: None,
    }
}

/// Polls `done` every 20 ms until it holds, for at most `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Cluster {
    /// A master and `agents` emulated agents, all registered.
    pub async fn start(agents: usize) -> Cluster {
        let master = Master::start();
        let emulator = Arc::new(agora_sim::emulate::EmulatorStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = emulation(&master.url, agents, None);
        let cut_sessions = config.cut_sessions.clone();
        let emulating = tokio::spawn(agora_sim::emulate::emulate(
            config,
            emulator.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        let stats = emulator.clone();
        wait_for("registration", Duration::from_secs(600), || {
            stats.registered.load(Ordering::Relaxed) >= agents
        })
        .await;
        Cluster {
            master,
            agents,
            emulator,
            cut_sessions,
            stop: Some(stop),
            emulating: Some(emulating),
            hold: Arc::new(agora_sim::load::Hold::default()),
            resident: Arc::new(agora_sim::load::LoadStats::default()),
        }
    }

    /// A load framework's configuration against this master.
    pub fn load(&self, name: &str, tasks: u64, rate: Option<f64>) -> agora_sim::load::LoadConfig {
        load_config(&self.master.url, name, tasks, rate)
    }

    /// Launches `tasks` that keep running (their framework stays) until
    /// the cluster is dropped; returns once all run.
    pub async fn resident(&self, tasks: u64) {
        let stats = self.resident.clone();
        let mut config = self.load("resident", tasks, None);
        config.hold = Some(self.hold.clone());
        tokio::spawn(agora_sim::load::run(config, stats.clone()));
        wait_for("the resident tasks", Duration::from_secs(600), || {
            stats.running.load(Ordering::Relaxed) >= tasks
        })
        .await;
    }

    /// The master's gauge `agora_tasks{state="…"}`.
    pub async fn tasks_in(&self, client: &reqwest::Client, state: &str) -> Option<u64> {
        gauge(
            client,
            &self.master.url,
            &format!("agora_tasks{{state=\"{state}\"}}"),
        )
        .await
    }
}

/// Waits until the master is quiet: no task running, and no status update
/// for a second (what a previous load left — kills, ends, their updates —
/// is over), for at most `limit` (then it says what it saw and returns).
pub async fn quiesce(client: &reqwest::Client, url: &str, limit: Duration) {
    let started = Instant::now();
    let mut last = None;
    loop {
        let updates = gauge(client, url, "agora_status_updates_total").await;
        let running = gauge(client, url, "agora_tasks{state=\"TASK_RUNNING\"}").await;
        if running == Some(0) && updates.is_some() && updates == last {
            return;
        }
        if started.elapsed() >= limit {
            // Reported, not fatal: the measurement goes on, and says so.
            eprintln!(
                "  the master did not quiet down in {limit:?}: {running:?} tasks running, status updates {last:?} → {updates:?} in the last second"
            );
            return;
        }
        last = updates;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The master's `/metrics` page.
pub async fn metrics_page(client: &reqwest::Client, url: &str) -> String {
    try_metrics_page(client, url).await.expect("metrics")
}

async fn try_metrics_page(client: &reqwest::Client, url: &str) -> Option<String> {
    client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// A gauge's value on the master's `/metrics` page.
pub async fn gauge(client: &reqwest::Client, url: &str, name: &str) -> Option<u64> {
    let page = try_metrics_page(client, url).await?;
    Some(
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64,
    )
}

/// A histogram on the master's `/metrics` page: cumulative counts by
/// upper bound (the text of `le`), their sum in seconds, and how many.
#[derive(Default)]
pub struct Histogram {
    pub buckets: Vec<(String, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    pub async fn scrape(client: &reqwest::Client, url: &str, name: &str) -> Histogram {
        let page = metrics_page(client, url).await;
        let mut histogram = Histogram::default();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let Some((series, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().expect("a number");
            if let Some(le) = series.strip_prefix("_bucket{le=\"") {
                histogram
                    .buckets
                    .push((le.trim_end_matches("\"}").to_string(), value));
            } else if series == "_sum" {
                histogram.sum = value;
            } else if series == "_count" {
                histogram.count = value;
            }
        }
        histogram
    }

    /// What `after` holds that `self` did not, added to `into`.
    pub fn add_since(&self, after: &Histogram, into: &mut Histogram) {
        if into.buckets.is_empty() {
            into.buckets = after
                .buckets
                .iter()
                .map(|(le, _)| (le.clone(), 0.0))
                .collect();
        }
        for ((_, sum), ((_, a), (_, b))) in into
            .buckets
            .iter_mut()
            .zip(after.buckets.iter().zip(&self.buckets))
        {
            *sum += a - b;
        }
        into.sum += after.sum - self.sum;
        into.count += after.count - self.count;
    }

    /// How many were over the bucket bound `le` (as `/metrics` writes it).
    pub fn over(&self, le: &str) -> f64 {
        let under = self
            .buckets
            .iter()
            .find(|(bound, _)| bound == le)
            .map_or(0.0, |(_, n)| *n);
        self.count - under
    }
}

/// The machine's CPU seconds so far, from `/proc/stat`'s first line (all
/// CPUs, in ticks of 1/100 s): in all, idle, and stolen by the hypervisor
/// (on a VM the machine's speed moves with it).
pub struct MachineCpu {
    pub all: f64,
    pub idle: f64,
    pub stolen: f64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …; guest time is
        // in user already.
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / 100.0;
        MachineCpu {
            all: (0..8).map(at).sum(),
            idle: at(3) + at(4),
            stolen: at(7),
        }
    }

    /// Of the machine's CPU time from `self` to `later`, the share stolen.
    pub fn stolen_share_until(&self, later: &MachineCpu) -> f64 {
        (later.stolen - self.stolen) / (later.all - self.all).max(0.01)
    }

    /// Of the machine's CPU time from `self` to `later`, the share idle.
    pub fn idle_share_until(&self, later: &MachineCpu) -> f64 {
        (later.idle - self.idle) / (later.all - self.all).max(0.01)
    }
}
