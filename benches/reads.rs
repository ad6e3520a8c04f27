//! Reads under load: what a dashboard costs a busy master, and what it
//! waits for.
//!
//! One real master process, `AGORA_READS_AGENTS` emulated agents (default
//! 10,000; tasks run until killed) and a resident framework holding
//! `AGORA_READS_TASKS` running tasks (default 100,000). Then a load
//! framework launches `AGORA_READS_LOAD` more (default 50,000) as fast as
//! offers allow: once to warm up (not counted), then in
//! `AGORA_READS_ROUNDS` rounds (default 36, about 25 minutes) of three
//! loads: alone; while the web UI looks (the dashboard); and while the web
//! UI looks, a client follows every task update and a script polls the
//! whole state (everything). Each round puts a different kind first.
//! A dent is a kind's throughput against the load alone of the same
//! round, reported as the mean over rounds with its 95% confidence
//! interval: the machine's speed swings from load to load by more than any
//! dent, so one round, or three, cannot tell one. The same for the
//! master's CPU per task. Every load starts after the master has stopped
//! keeping up with the benchmark's own fresh reads (it waits them out), so
//! a load alone is one nobody reads.
//!
//! What the web UI reads (`master/ui/app.js`): the summary, the
//! frameworks, the roles and a page each of agents and of tasks, once a
//! second, accepting a snapshot published in the last second
//! (`Cache-Control: max-age=1`, as the UI sends; fresh ones with
//! `AGORA_READS_FRESH=1`), and the event stream of every kind but task
//! updates (which it reads a page at a time). The dashboard also reads a
//! page of 100 tasks every 250 ms (as the UI does), and a scraper
//! `/metrics` every second (fresh, as Prometheus does). With everything,
//! a client follows the whole event stream, task updates too (three per
//! task launched), and the `/state` poller reads the whole
//! `/api/v1/state` every two seconds, as Mesos-era dashboards did.
//! `/health`, which reads nothing, is timed with each page: the floor any
//! request meets on a machine this busy.
//!
//! The master's CPU time, in all and by thread, is read from `/proc`
//! around each load: what the dashboard costs the master. The dashboard's
//! and event client's threads report theirs: what the dashboard's own
//! client (in this process, on the same two cores) costs the machine,
//! which a dashboard on another machine would not. The share of the
//! machine's CPU time the hypervisor gave elsewhere during each load
//! (`steal`) is reported with it: on a VM, a load's speed moves with it.
//!
//! Inside the clocks: a read's clock runs from its request sent to its
//! body's last byte received (counted as it arrives, not gathered;
//! HTTP/1.1 on loopback, the dashboard's requests one after another on
//! one kept-alive connection, from a thread and runtime of its own, apart
//! from the emulator's); the load's from its first accept to its last
//! `TASK_RUNNING` (the scale benchmark's measure). Idle reads are the
//! same requests with nothing scheduling. The master's own histogram of
//! reads' waits for a fresh snapshot (`agora_read_wait_seconds`, scraped
//! around each watched load) splits a read's time into waiting for the
//! core and the rest.
//!
//! `AGORA_READS_CLIENT_NICE=-5` runs the dashboard and the event client at
//! that nice value (see [`client_nice`]).
//!
//! `cargo bench --bench reads`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::master::dev::percentile;
use cluster::{Cluster, Histogram, MachineCpu, block_on, env_u64, metrics_page};

/// Latencies of one endpoint, in milliseconds, and the last body's size.
#[derive(Default)]
struct Timings {
    ms: Vec<f64>,
    bytes: usize,
}

impl Timings {
    fn line(&mut self, what: &str) -> String {
        self.ms.sort_by(f64::total_cmp);
        format!(
            "| {what} | {} | {:.1} | {:.1} | {:.1} | {} |",
            self.ms.len(),
            percentile(&self.ms, 0.5),
            percentile(&self.ms, 0.99),
            self.ms.last().copied().unwrap_or(0.0),
            human_bytes(self.bytes)
        )
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KB", n as f64 / 1024.0)
    }
}

/// Times a GET to its last byte. The body is counted as it arrives, not
/// gathered: gathering 55 MB into one growing buffer (`bytes()`) cost the
/// client more than the master took to send it, and timed the client's
/// allocator on these two busy cores, not the master.
async fn timed_get(client: &reqwest::Client, url: &str, into: &mut Timings) {
    timed(client.get(url), url, into).await;
}

/// Times a GET as the web UI makes it: accepting what the master published
/// in the last second (`Cache-Control: max-age=1`).
async fn timed_look(client: &reqwest::Client, url: &str, into: &mut Timings) {
    timed(
        client.get(url).header("cache-control", "max-age=1"),
        url,
        into,
    )
    .await;
}

async fn timed(request: reqwest::RequestBuilder, url: &str, into: &mut Timings) {
    let started = Instant::now();
    let mut response = request.send().await.expect("request");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await.expect("body") {
        bytes += chunk.len();
    }
    into.ms.push(started.elapsed().as_secs_f64() * 1000.0);
    into.bytes = bytes;
}

/// The reads timed, by index into a `[Timings; READS]`.
const READS: usize = 6;
const PAGE: usize = 0;
const METRICS: usize = 1;
const STATE: usize = 2;
const HEALTH: usize = 3;
const SUMMARY: usize = 4;
const AGENTS_PAGE: usize = 5;
const READ_NAMES: [&str; READS] = [
    "page of 100 tasks",
    "/metrics",
    "/api/v1/state",
    "/health (reads nothing: the floor)",
    "/api/v1/summary",
    "page of 100 agents",
];

/// The dashboard's reads until `stop` (see the top of this file): the web
/// UI's, a paging client's, a scraper's, and with `whole_state` a
/// `/state` poller's (with everything).
async fn dashboard(url: String, stop: Arc<AtomicBool>, whole_state: bool) -> [Timings; READS] {
    let fresh = fresh_dashboard();
    let scraper_fresh = env_flag("AGORA_READS_SCRAPER_FRESH", true);
    let client = reqwest::Client::new();
    let mut timings: [Timings; READS] = Default::default();
    let mut untimed = Timings::default();
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        timed_get(&client, &format!("{url}/health"), &mut timings[HEALTH]).await;
        let page = format!("{url}/api/v1/tasks?limit=100");
        if fresh {
            timed_get(&client, &page, &mut timings[PAGE]).await;
        } else {
            timed_look(&client, &page, &mut timings[PAGE]).await;
        }
        if n.is_multiple_of(4) {
            // A scraper, fresh as Prometheus's are (it sends no
            // `Cache-Control`).
            let metrics = format!("{url}/metrics");
            if scraper_fresh {
                timed_get(&client, &metrics, &mut timings[METRICS]).await;
            } else {
                timed_look(&client, &metrics, &mut timings[METRICS]).await;
            }
            // The web UI's look.
            let look = async |path: &str, into: &mut Timings| {
                let url = format!("{url}/{path}");
                if fresh {
                    timed_get(&client, &url, into).await;
                } else {
                    timed_look(&client, &url, into).await;
                }
            };
            look("api/v1/summary", &mut timings[SUMMARY]).await;
            look("api/v1/frameworks", &mut untimed).await;
            look("api/v1/roles", &mut untimed).await;
            look(
                "api/v1/agents?offset=0&limit=100",
                &mut timings[AGENTS_PAGE],
            )
            .await;
            look("api/v1/tasks?offset=0&limit=100", &mut untimed).await;
        }
        if whole_state && n.is_multiple_of(8) {
            timed_get(&client, &format!("{url}/api/v1/state"), &mut timings[STATE]).await;
        }
        n += 1;
        let next = started + Duration::from_millis(250 * n);
        tokio::time::sleep_until(next.into()).await;
    }
    timings
}

/// What the event-stream client saw: events, and events the master
/// dropped because the client fell behind (it says how many).
#[derive(Default)]
struct EventCounts {
    received: AtomicU64,
    dropped: AtomicU64,
}

/// The events the web UI follows (`master/ui/app.js`): all but task
/// updates, which it reads a page at a time.
fn web_ui_event_types() -> String {
    agora_master::events::EVENT_NAMES
        .iter()
        .filter(|name| **name != "task_updated")
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// Counts server-sent events until `stop`: of the `types` given, or all.
async fn event_listener(
    url: String,
    types: Option<String>,
    stop: Arc<AtomicBool>,
    counts: Arc<EventCounts>,
) {
    let client = reqwest::Client::new();
    let query = types.map(|t| format!("?types={t}")).unwrap_or_default();
    let mut response = client
        .get(format!("{url}/api/v1/events{query}"))
        .send()
        .await
        .expect("event stream");
    let mut partial: Vec<u8> = Vec::new();
    let mut lagged = false;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                partial.extend_from_slice(&chunk);
                // Whole lines only; the rest waits for the next chunk.
                let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                    continue;
                };
                for line in partial[..end].split(|b| *b == b'\n') {
                    if line == b"event: lagged" {
                        lagged = true;
                    } else if let Some(data) = line.strip_prefix(b"data: ") {
                        if lagged {
                            let n = String::from_utf8_lossy(data)
                                .split(' ')
                                .next()
                                .and_then(|n| n.parse::<u64>().ok())
                                .unwrap_or(0);
                            counts.dropped.fetch_add(n, Ordering::Relaxed);
                        } else {
                            counts.received.fetch_add(1, Ordering::Relaxed);
                        }
                        lagged = false;
                    }
                }
                partial.drain(..=end);
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
}

/// Runs `work` on a thread and runtime of its own, as if on another
/// machine: on this process's runtime the dashboard's requests queued
/// behind the emulator's ten thousand sessions, and its clocks timed that
/// queue as much as the master. (It still shares the machine's cores.)
/// The thread returns what `work` made and the CPU seconds it used.
fn elsewhere<F, T>(
    name: &str,
    work: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<(T, f64)>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(nice) = client_nice() {
                set_this_threads_nice(nice);
            }
            let made = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(work());
            (
                made,
                cluster::master::cpu_seconds_in("/proc/thread-self/stat"),
            )
        })
        .expect("thread")
}

async fn settle(cluster: &Cluster, client: &reqwest::Client, resident: u64) {
    // The last load's tasks are killed at its teardown: wait until only
    // the resident ones run.
    let started = Instant::now();
    loop {
        let running = cluster.tasks_in(client, "TASK_RUNNING").await;
        if running == Some(resident) {
            // These polls read `/metrics` fresh, and the master keeps its
            // read model up to date turn by turn for a while after a fresh
            // read (`READERS_LINGER` in `master/src/core/publish.rs`, 5 s):
            // without this wait every load, alone too, began as if a reader
            // were watching.
            tokio::time::sleep(READERS_FORGOTTEN).await;
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let page = metrics_page(client, &cluster.master.url).await;
            let lines: Vec<&str> = page
                .lines()
                .filter(|l| {
                    l.starts_with("agora_tasks")
                        || l.starts_with("agora_agents")
                        || l.starts_with("agora_peer")
                        || l.starts_with("agora_status")
                })
                .collect();
            panic!(
                "did not settle: {running:?} tasks running, {resident} expected\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Longer than the master keeps up with readers after a fresh read.
const READERS_FORGOTTEN: Duration = Duration::from_secs(6);

/// The master's CPU seconds while a load ran: all its threads, and by
/// thread name (threads that ended meanwhile, such as idle blocking
/// threads, count in `master` only).
#[derive(Clone)]
struct Cpu {
    master: f64,
    by_thread: std::collections::BTreeMap<String, f64>,
    /// Of the machine's CPU time while the load ran, the share the
    /// hypervisor gave to others (`steal` in `/proc/stat`): this VM's
    /// speed moves with it, and so do the loads' figures.
    stolen: f64,
}

impl Cpu {
    /// Seconds of the threads named `name`.
    fn of(&self, name: &str) -> f64 {
        self.by_thread.get(name).copied().unwrap_or(0.0)
    }
}

/// The threads whose CPU the report splits out; the rest is "other".
const THREADS: [(&str, &str); 5] = [
    ("master-core", "core"),
    ("registry-writer", "registry writer"),
    ("tokio-rt-worker", "agents' and frameworks' connections"),
    (
        "master-operator",
        "operators' thread: pages, `/metrics`, events",
    ),
    (
        "master-op-block",
        "operators' blocking threads: `/state`'s writing",
    ),
];

/// A load of `tasks` as fast as offers allow, and the master's CPU
/// seconds while it ran.
async fn measured_load(
    cluster: &Cluster,
    name: &str,
    tasks: u64,
) -> (agora_sim::load::LoadReport, Cpu) {
    let cpu_before = cluster.master.cpu_seconds();
    let threads_before = cluster.master.thread_cpu_seconds();
    let machine_before = MachineCpu::now();
    let report = agora_sim::load::run(
        cluster.load(name, tasks, None),
        Arc::new(agora_sim::load::LoadStats::default()),
    )
    .await
    .expect("load ran");
    let mut by_thread = std::collections::BTreeMap::<String, f64>::new();
    for (tid, (name, after)) in cluster.master.thread_cpu_seconds() {
        let before = threads_before.get(&tid).map_or(0.0, |(_, cpu)| *cpu);
        *by_thread.entry(name).or_default() += after - before;
    }
    let machine_after = MachineCpu::now();
    let cpu = Cpu {
        master: cluster.master.cpu_seconds() - cpu_before,
        by_thread,
        stolen: machine_before.stolen_share_until(&machine_after),
    };
    (report, cpu)
}

/// Who reads while a load runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alone,
    /// The web UI as it is (its looks and its event stream, which leaves
    /// task updates out), a paging client and a scraper: the dashboard.
    WebUi,
    /// The dashboard, a client following every task update, and a script
    /// polling the whole state.
    Everything,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Alone, Kind::WebUi, Kind::Everything];

    fn name(self) -> &'static str {
        match self {
            Kind::Alone => "alone",
            Kind::WebUi => "while the web UI looks",
            Kind::Everything => {
                "while the web UI looks, a client follows every task update and `/state` is polled"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Alone => "alone",
            Kind::WebUi => "web UI",
            Kind::Everything => "web UI + every update + `/state`",
        }
    }
}

/// One load of a run and what it cost.
struct Load {
    kind: Kind,
    report: agora_sim::load::LoadReport,
    master: Cpu,
    /// CPU seconds of the dashboard's and event client's threads (this
    /// process, the same cores): what the dashboard costs the machine
    /// outside the master.
    client: f64,
}

/// What the dashboard and the event client saw, over every watched load.
#[derive(Default)]
struct Watching {
    reads: [Timings; READS],
    events_received: u64,
    events_dropped: u64,
    /// The master's own histogram of reads' waits for a fresh snapshot,
    /// over the watched loads.
    waits: Histogram,
}

/// The master's histogram of reads' waits for a fresh snapshot.
const READ_WAITS: &str = "agora_read_wait_seconds";

/// A line on the master's `agora_read_wait_seconds`.
fn waits_line(waits: &Histogram) -> String {
    if waits.count == 0.0 {
        return "not reported by this master".to_string();
    }
    let shares: Vec<String> = waits
        .buckets
        .iter()
        .filter(|(le, _)| ["0.001", "0.002", "0.005", "0.01"].contains(&le.as_str()))
        .map(|(le, n)| {
            let ms = le.parse::<f64>().unwrap_or(0.0) * 1000.0;
            format!("≤ {ms} ms {:.0}%", n / waits.count * 100.0)
        })
        .collect();
    format!(
        "{:.0} reads, mean {:.1} ms; {}",
        waits.count,
        waits.sum / waits.count * 1000.0,
        shares.join(", ")
    )
}

/// A load while the dashboard polls and event clients follow.
async fn watched_load(
    cluster: &Cluster,
    name: &str,
    tasks: u64,
    kind: Kind,
    into: &mut Watching,
) -> Load {
    let url = cluster.master.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(EventCounts::default());
    let everything = kind == Kind::Everything;
    let polling = elsewhere("dashboard", {
        let (url, stop) = (url.clone(), stop.clone());
        move || dashboard(url, stop, everything)
    });
    // The web UI's own stream, and with everything a client following
    // every task update (`AGORA_READS_EVENTS=0` leaves it out).
    let follower = everything && env_flag("AGORA_READS_EVENTS", true);
    let listening = elsewhere("events", {
        let (url, stop, events) = (url.clone(), stop.clone(), events.clone());
        move || async move {
            let web_ui = event_listener(
                url.clone(),
                Some(web_ui_event_types()),
                stop.clone(),
                events.clone(),
            );
            let every_update = async {
                if follower {
                    event_listener(url, None, stop, events).await;
                }
            };
            tokio::join!(web_ui, every_update);
        }
    });
    // The dashboard's first round lands before the load starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scraper = reqwest::Client::new();
    let waits_before = Histogram::scrape(&scraper, &url, READ_WAITS).await;
    let (report, master) = measured_load(cluster, name, tasks).await;
    let waits_after = Histogram::scrape(&scraper, &url, READ_WAITS).await;
    waits_before.add_since(&waits_after, &mut into.waits);
    stop.store(true, Ordering::Relaxed);
    let ((reads, dashboard_cpu), (_, listener_cpu)) = tokio::task::spawn_blocking(move || {
        let listened = listening.join().expect("event client");
        (polling.join().expect("dashboard"), listened)
    })
    .await
    .expect("joined");
    for (all, these) in into.reads.iter_mut().zip(reads) {
        all.ms.extend(these.ms);
        all.bytes = these.bytes;
    }
    into.events_received += events.received.load(Ordering::Relaxed);
    into.events_dropped += events.dropped.load(Ordering::Relaxed);
    Load {
        kind,
        report,
        master,
        client: dashboard_cpu + listener_cpu,
    }
}

/// A kind's effect against the loads alone, round by round: the mean of
/// the rounds' ratios (taken as logarithms, so that +x% and −x% weigh the
/// same) and its 95% confidence interval, in percent. A round's loads are
/// minutes apart at most, so pairing them takes out the machine's slow
/// drift; what is left of its swing from load to load is in the interval.
struct Paired {
    mean: f64,
    low: f64,
    high: f64,
    rounds: usize,
}

impl Paired {
    fn of(loads: &[Load], kind: Kind, value: &dyn Fn(&Load) -> f64) -> Paired {
        let logs: Vec<f64> = loads
            .chunks(Kind::ALL.len())
            .filter_map(|round| {
                let of = |k: Kind| round.iter().find(|l| l.kind == k).map(value);
                Some((of(kind)? / of(Kind::Alone)?).ln())
            })
            .filter(|l| l.is_finite())
            .collect();
        let n = logs.len();
        let m = mean(logs.iter().copied());
        let half = if n > 1 {
            let var = logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            t_975(n - 1) * (var / n as f64).sqrt()
        } else {
            f64::INFINITY
        };
        let percent = |l: f64| (l.exp() - 1.0) * 100.0;
        Paired {
            mean: percent(m),
            low: percent(m - half),
            high: percent(m + half),
            rounds: n,
        }
    }

    fn text(&self) -> String {
        format!(
            "{:+.1}% (95% interval {:+.1}% to {:+.1}%, {} rounds)",
            self.mean, self.low, self.high, self.rounds
        )
    }
}

/// Student's t, two-sided 95%, for `df` degrees of freedom.
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13,
        2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05, 2.04,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        31..=40 => 2.03,
        41..=60 => 2.01,
        61..=120 => 1.99,
        _ => 1.96,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(sum, n), v| (sum + v, n + 1));
    sum / f64::from(n)
}

async fn run(agents: usize, resident: u64, load: u64, rounds: u64) {
    eprintln!("reads: starting {agents} agents");
    let cluster = Cluster::start(agents).await;
    eprintln!("reads: {resident} resident tasks");
    cluster.resident(resident).await;
    let client = reqwest::Client::new();
    settle(&cluster, &client, resident).await;
    let url = cluster.master.url.clone();

    let mut idle: [Timings; READS] = Default::default();
    for i in 0..20 {
        for (read, path) in [
            (PAGE, "api/v1/tasks?limit=100"),
            (HEALTH, "health"),
            (METRICS, "metrics"),
            (SUMMARY, "api/v1/summary"),
            (AGENTS_PAGE, "api/v1/agents?offset=0&limit=100"),
        ] {
            timed_get(&client, &format!("{url}/{path}"), &mut idle[read]).await;
        }
        if i % 4 == 0 {
            timed_get(&client, &format!("{url}/api/v1/state"), &mut idle[STATE]).await;
        }
    }

    // A first load, not counted: the first load after the resident
    // tasks ran at 60-70% of the speed of the rest in every run (the
    // master's tables and allocator growing into fresh memory), and it
    // always fell to the "alone" kind.
    eprintln!("reads: a warm-up load, not counted");
    let (warm_up, _) = measured_load(&cluster, "warm-up", load).await;
    settle(&cluster, &client, resident).await;

    // Each round puts a different kind first (and the rest in turn): a
    // master's second load in a row is not the same as its first, and
    // the machine's speed drifts, so a fixed order had mixed both into
    // the dent.
    let mut loads = Vec::new();
    let mut watching: [Watching; 2] = Default::default();
    for round in 0..rounds {
        for turn in 0..Kind::ALL.len() {
            let kind = Kind::ALL[(round as usize + turn) % Kind::ALL.len()];
            let name = format!("load-{round}-{turn}");
            eprintln!(
                "reads: round {} of {rounds}, load {}",
                round + 1,
                kind.name()
            );
            let run = match kind {
                Kind::Alone => {
                    let (report, master) = measured_load(&cluster, &name, load).await;
                    Load {
                        kind,
                        report,
                        master,
                        client: 0.0,
                    }
                }
                Kind::WebUi => watched_load(&cluster, &name, load, kind, &mut watching[0]).await,
                Kind::Everything => {
                    watched_load(&cluster, &name, load, kind, &mut watching[1]).await
                }
            };
            settle(&cluster, &client, resident).await;
            loads.push(run);
        }
    }
    let rss = cluster.master.rss_mib();
    println!(
        "{agents} agents, {resident} resident tasks; {} loads of {load} tasks; master RSS at the end {rss:.0} MiB\n",
        loads.len()
    );
    println!(
        "warm-up load, not counted: {:.0} tasks/s, latency p50 / p99 {:.0} / {:.0} ms\n",
        warm_up.tasks_per_second, warm_up.latency_p50_ms, warm_up.latency_p99_ms
    );
    report(load, &loads, &mut idle, &mut watching);
}

/// The loads' table, means by kind, CPU by thread, and the reads.
fn report(load: u64, loads: &[Load], idle: &mut [Timings; READS], watching: &mut [Watching; 2]) {
    let per_thousand = |seconds: f64| seconds * 1e6 / load as f64;
    println!(
        "| # | load | tasks/s | latency p50 / p99 | master CPU per 1,000 tasks | of it the core's | the client's CPU per 1,000 tasks | stolen by the hypervisor |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (n, l) in loads.iter().enumerate() {
        println!(
            "| {} | {} | {:.0} | {:.0} / {:.0} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1}% |",
            n + 1,
            l.kind.short(),
            l.report.tasks_per_second,
            l.report.latency_p50_ms,
            l.report.latency_p99_ms,
            per_thousand(l.master.master),
            per_thousand(l.master.of("master-core")),
            per_thousand(l.client),
            l.master.stolen * 100.0,
        );
    }
    // Means over the loads of each kind: the rounds put each kind in each
    // place equally often (with as many rounds as kinds).
    let of_kind = |kind: Kind, value: &dyn Fn(&Load) -> f64| {
        mean(loads.iter().filter(|l| l.kind == kind).map(value))
    };
    let rate = |kind: Kind| of_kind(kind, &|l| l.report.tasks_per_second);
    let alone = rate(Kind::Alone);
    println!(
        "
mean tasks/s alone: {alone:.0}"
    );
    for kind in [Kind::WebUi, Kind::Everything] {
        let by_round: Vec<String> = loads
            .chunks(Kind::ALL.len())
            .map(|round| {
                let of = |kind: Kind| {
                    round
                        .iter()
                        .find(|l| l.kind == kind)
                        .map_or(f64::NAN, |l| l.report.tasks_per_second)
                };
                format!("{:+.0}%", (of(kind) / of(Kind::Alone) - 1.0) * 100.0)
            })
            .collect();
        println!(
            "mean tasks/s {}: {:.0} ({:+.1}%); round by round {}",
            kind.name(),
            rate(kind),
            (rate(kind) / alone - 1.0) * 100.0,
            by_round.join(", ")
        );
    }
    println!(
        "\n| against the loads alone, paired by round | tasks/s | the core's CPU per task | the master's CPU per task |"
    );
    println!("|---|---:|---:|---:|");
    for kind in [Kind::WebUi, Kind::Everything] {
        println!(
            "| {} | {} | {} | {} |",
            kind.short(),
            Paired::of(loads, kind, &|l| l.report.tasks_per_second).text(),
            Paired::of(loads, kind, &|l| l.master.of("master-core")).text(),
            Paired::of(loads, kind, &|l| l.master.master).text(),
        );
    }
    println!(
        "\n| of the master's CPU per 1,000 tasks, mean | {} | {} | {} |",
        Kind::ALL[0].short(),
        Kind::ALL[1].short(),
        Kind::ALL[2].short()
    );
    println!("|---|---:|---:|---:|");
    let cpu_mean =
        |kind: Kind, of: &dyn Fn(&Cpu) -> f64| of_kind(kind, &|l| per_thousand(of(&l.master)));
    let row = |what: &str, of: &dyn Fn(&Cpu) -> f64| {
        let cells: Vec<String> = Kind::ALL
            .iter()
            .map(|k| format!("{:.1} ms", cpu_mean(*k, of)))
            .collect();
        println!("| {what} | {} |", cells.join(" | "));
    };
    for (thread, what) in THREADS {
        row(&format!("{what} (`{thread}`)"), &|c| c.of(thread));
    }
    row("other threads, and threads that ended", &|cpu| {
        cpu.master - THREADS.iter().map(|(t, _)| cpu.of(t)).sum::<f64>()
    });
    row("all of the master", &|cpu| cpu.master);
    println!(
        "| the dashboard's own client (not the master) | – | {:.1} ms | {:.1} ms |",
        of_kind(Kind::WebUi, &|l| per_thousand(l.client)),
        of_kind(Kind::Everything, &|l| per_thousand(l.client)),
    );
    println!("\n| read | requests | p50 ms | p99 ms | max ms | body |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, what) in READ_NAMES.iter().enumerate() {
        println!("{}", idle[i].line(&format!("{what}, idle")));
        for (kind, seen) in [Kind::WebUi, Kind::Everything]
            .iter()
            .zip(watching.iter_mut())
        {
            if !seen.reads[i].ms.is_empty() {
                println!(
                    "{}",
                    seen.reads[i].line(&format!("{what}, {}", kind.name()))
                );
            }
        }
    }
    for (kind, seen) in [Kind::WebUi, Kind::Everything].iter().zip(watching.iter()) {
        println!(
            "\nreads' wait for a fresh snapshot, by the master's `agora_read_wait_seconds`, {}: {}",
            kind.name(),
            waits_line(&seen.waits)
        );
        println!(
            "event stream {}: {} events received, {} dropped by the master for falling behind",
            kind.name(),
            seen.events_received,
            seen.events_dropped
        );
    }
}

fn main() {
    agora_proto::tls::install_default_provider();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let agents = env_u64("AGORA_READS_AGENTS", 10_000) as usize;
    let resident = env_u64("AGORA_READS_TASKS", 100_000);
    // Many short loads, not a few long ones: a dent within ±5% (the 95%
    // interval of the paired mean) takes about 36 rounds on this machine,
    // whose speed swings by 15% from one load to the next.
    let load = env_u64("AGORA_READS_LOAD", 50_000);
    let rounds = env_u64("AGORA_READS_ROUNDS", 36).max(1);
    block_on(run(agents, resident, load, rounds));
}

/// `NAME=0` or `NAME=1`, else `default`: `AGORA_READS_EVENTS=0` leaves the
/// follower of every task update out, `AGORA_READS_SCRAPER_FRESH=0` has the scraper accept
/// a snapshot a second old (both to tell what each costs).
fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name).as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => default,
    }
}

/// `AGORA_READS_FRESH=1`: the web UI's reads and the dashboard's pages ask
/// for fresh snapshots, as the web UI did before it sent
/// `Cache-Control: max-age=1` (a fresh read sees everything done before
/// it; see `Freshness` in `master/src/http/mod.rs`).
fn fresh_dashboard() -> bool {
    env_flag("AGORA_READS_FRESH", false)
}

/// `AGORA_READS_CLIENT_NICE`: the dashboard's and event client's nice
/// value (default: the process's). On a machine of its own a dashboard
/// would not wait behind the emulator for a CPU; `-5`, the master's
/// operators' priority, comes closer to that than sharing the emulator's.
fn client_nice() -> Option<i32> {
    let nice = std::env::var("AGORA_READS_CLIENT_NICE").ok()?;
    Some(
        nice.parse()
            .unwrap_or_else(|_| panic!("AGORA_READS_CLIENT_NICE={nice}: not a nice value")),
    )
}

#[allow(unsafe_code)]
fn set_this_threads_nice(nice: i32) {
    // SAFETY: acts on the calling thread only, takes no pointers.
    let set = unsafe {
        nix::libc::setpriority(
            nix::libc::PRIO_PROCESS,
            nix::libc::gettid() as nix::libc::id_t,
            nice,
        )
    };
    assert_eq!(set, 0, "nice {nice}: {}", std::io::Error::last_os_error());
}
