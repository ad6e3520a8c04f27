//! A load framework for scale tests (`agora sim load`): a real framework
//! (the SDK, over gRPC) that keeps a master's offers busy launching small
//! tasks — as fast as offers allow, or at a set rate — and measures what a
//! scheduler sees: tasks placed per second, from the first accept to each
//! task's `TASK_RUNNING`, and each task's latency from its accept being
//! sent to its `TASK_RUNNING` arriving (summed up by [`crate::latency`]).
//! Accepts go out concurrently and updates are acknowledged as they come
//! (the SDK pipelines them), so the framework is not what limits the
//! master.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::latency::{self, Ran};
pub use crate::latency::{Hops, LaunchTimes, Window};
use agora_proto::{Demand, Resources};
use agora_sdk::{
    Driver, FrameworkConfig, Offer, Scheduler, SdkError, TaskState, TaskStatus, is_terminal,
    offer_id, offer_resources, status_state, status_task_id, task,
};

/// What load to make.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The masters (`http://m1:5050,http://m2:5050`).
    pub masters: String,
    /// Tasks to launch in all.
    pub tasks: u64,
    /// Tasks launched per second at most; `None`: as fast as offers allow.
    pub rate: Option<f64>,
    /// Each task's resources.
    pub task: Resources,
    /// Each task's command (emulated agents run nothing).
    pub command: String,
    pub name: String,
    /// Once every task runs, keep them running until told to leave (and
    /// reconcile them when told); `None`: tear down at once.
    pub hold: Option<Arc<Hold>>,
    /// The framework's bearer token (none for a master without
    /// authentication).
    pub token: Option<String>,
    /// What the framework trusts of an `https://` master.
    pub tls: agora_proto::tls::ClientTls,
    /// Where emulated agents in this process note when each launch
    /// reached them: given, the report splits each task's latency there
    /// ([`LoadReport::hops`]).
    pub launches: Option<Arc<LaunchTimes>>,
}

/// What a load that keeps its tasks is told.
#[derive(Debug, Default)]
pub struct Hold {
    /// Tear down (the master kills the tasks).
    pub leave: tokio::sync::Notify,
    /// Ask the master for the state of every task (answers are counted
    /// in [`LoadStats::reconciled`]).
    pub reconcile: tokio::sync::Notify,
}

/// Counts kept as the load runs, for progress lines.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub launched: AtomicU64,
    pub running: AtomicU64,
    pub ended: AtomicU64,
    pub failed: AtomicU64,
    /// Reconciliation answers received.
    pub reconciled: AtomicU64,
}

/// What a load run measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadReport {
    pub tasks: u64,
    pub running: u64,
    /// Ended other than `TASK_FINISHED` (or refused at accept).
    pub failed: u64,
    /// First accept sent → last `TASK_RUNNING` received.
    pub seconds: f64,
    pub tasks_per_second: f64,
    /// Accept sent → `TASK_RUNNING` received, per task.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Each task's latency split where its launch reached its agent (with
    /// [`LoadConfig::launches`]).
    pub hops: Option<Hops>,
    /// The latency over the load, by when accepts were sent.
    pub over_time: Vec<Window>,
}

/// What the scheduler and the pacer share.
struct Shared {
    config: LoadConfig,
    stats: Arc<LoadStats>,
    next: u64,
    /// Offers held for the pacer (id, resources), oldest first.
    held: VecDeque<(String, Resources)>,
    /// When each launched task's accept was sent (until it runs).
    sent: HashMap<String, Instant>,
    first_accept: Option<Instant>,
    /// The pace is counted from here.
    paced_from: Option<Instant>,
}

impl Shared {
    fn remaining(&self) -> u64 {
        self.config.tasks - self.next
    }

    /// How many more tasks the rate allows now.
    fn allowed_now(&mut self) -> u64 {
        let Some(rate) = self.config.rate else {
            return self.remaining();
        };
        // The pace starts with the first offer to launch on, not before:
        // no backlog of allowance turns into a burst.
        if self.held.is_empty() && self.paced_from.is_none() {
            return 0;
        }
        let since = *self.paced_from.get_or_insert_with(Instant::now);
        let allowed = (since.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
        allowed.saturating_sub(self.next).min(self.remaining())
    }

    /// Launches what the rate allows on held offers (each offer used once:
    /// the master takes back what an accept leaves of it), each accept its
    /// own call so one round trip does not hold up the next.
    fn launch_due(&mut self, driver: &Driver) {
        let mut budget = self.allowed_now();
        while budget > 0 {
            let Some((offer, mut left)) = self.held.pop_front() else {
                break;
            };
            let mut tasks = Vec::new();
            while budget > 0 && left.contains(&self.config.task) {
                let id = format!("{}-{}", self.config.name, self.next);
                tasks.push(task(&id, &self.config.command, &self.config.task));
                left.subtract(&self.config.task);
                self.next += 1;
                budget -= 1;
            }
            if tasks.is_empty() {
                continue;
            }
            let now = Instant::now();
            self.first_accept.get_or_insert(now);
            for t in &tasks {
                if let Some(id) = &t.task_id {
                    self.sent.insert(id.value.clone(), now);
                }
            }
            let count = tasks.len() as u64;
            self.stats.launched.fetch_add(count, Ordering::Relaxed);
            let (driver, stats) = (driver.clone(), self.stats.clone());
            tokio::spawn(async move {
                if let Err(e) = driver.accept(&[&offer], tasks, Some(0.0)).await {
                    tracing::warn!("accept refused: {e}");
                    stats.failed.fetch_add(count, Ordering::Relaxed);
                    stats.ended.fetch_add(count, Ordering::Relaxed);
                }
            });
        }
    }
}

struct Load {
    shared: Arc<Mutex<Shared>>,
    ran: Vec<Ran>,
    launches: Option<Arc<LaunchTimes>>,
    last_running: Option<Instant>,
    /// Every task ran: teardown is underway (or waits for `hold`).
    leaving: bool,
    told_demand: Option<u64>,
    tasks: u64,
    stats: Arc<LoadStats>,
}

impl Load {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the master what is left to place (a second's worth, at a
    /// rate), so the demand policy offers enough and no more. On the way
    /// down it tells only once what is left has halved since the last
    /// telling (or is none): at a rate, what is left changes with every
    /// launch of the last second, and a call per offer, awaited here while
    /// status updates wait behind it, had held the last second's tasks up.
    async fn tell_demand(&mut self, driver: &Driver) {
        let (tasks, task) = {
            let s = self.shared();
            let tasks = match s.config.rate {
                Some(rate) => s.remaining().min(rate.ceil() as u64),
                None => s.remaining(),
            };
            (tasks, s.config.task.clone())
        };
        if !demand_worth_telling(self.told_demand, tasks) {
            return;
        }
        let mut demand = Demand::default();
        demand.add(&task, u32::try_from(tasks).unwrap_or(u32::MAX));
        match driver.set_demand(Some(&demand)).await {
            Ok(()) => self.told_demand = Some(tasks),
            Err(e) => tracing::warn!("telling the master our demand: {e}"),
        }
    }
}

impl Scheduler for Load {
    async fn subscribed(&mut self, driver: &Driver, _framework_id: &str) {
        // The demand told went with the subscription (the SDK sends it
        // with every one); what changed since goes now.
        self.tell_demand(driver).await;
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        let (done, useless) = {
            let mut s = self.shared();
            let mut useless = Vec::new();
            for offer in offers {
                let left = offer_resources(&offer);
                if s.remaining() > 0 && left.contains(&s.config.task) {
                    s.held.push_back((offer_id(&offer).to_string(), left));
                } else {
                    useless.push(offer_id(&offer).to_string());
                }
            }
            if s.config.rate.is_none() {
                s.launch_due(driver);
            }
            (s.remaining() == 0, useless)
        };
        if !useless.is_empty() {
            let ids: Vec<&str> = useless.iter().map(String::as_str).collect();
            let _ = driver.decline(&ids, Some(60.0)).await;
        }
        if done {
            let held: Vec<String> = self.shared().held.drain(..).map(|(id, _)| id).collect();
            if !held.is_empty() {
                let ids: Vec<&str> = held.iter().map(String::as_str).collect();
                let _ = driver.decline(&ids, Some(60.0)).await;
            }
            let _ = driver.suppress().await;
        }
        self.tell_demand(driver).await;
    }

    async fn rescinded(&mut self, _driver: &Driver, offer_id: &str) {
        self.shared().held.retain(|(id, _)| id != offer_id);
    }

    async fn status_update(&mut self, driver: &Driver, status: TaskStatus) {
        if status.reason == agora_proto::v1::task_status::Reason::Reconciliation as i32 {
            self.stats.reconciled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let state = status_state(&status);
        let id = status_task_id(&status);
        let sent = {
            let mut s = self.shared();
            if state == TaskState::TaskRunning || is_terminal(state) {
                s.sent.remove(id)
            } else {
                None
            }
        };
        if state == TaskState::TaskRunning
            && let Some(sent) = sent
        {
            let now = Instant::now();
            self.ran.push(Ran {
                sent,
                launched: self.launches.as_ref().and_then(|l| l.take(id)),
                running: now,
            });
            self.last_running = Some(now);
            self.stats.running.fetch_add(1, Ordering::Relaxed);
        }
        if is_terminal(state) {
            self.stats.ended.fetch_add(1, Ordering::Relaxed);
            if state != TaskState::TaskFinished {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let stats = &self.stats;
        if stats.running.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed)
            >= self.tasks
            && !self.leaving
        {
            self.leaving = true;
            match self.shared().config.hold.clone() {
                None => driver.teardown(),
                Some(hold) => {
                    let driver = driver.clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                () = hold.leave.notified() => break,
                                () = hold.reconcile.notified() => {
                                    if let Err(e) = driver.reconcile(&[]).await {
                                        tracing::warn!("reconcile: {e}");
                                    }
                                }
                            }
                        }
                        driver.teardown();
                    });
                }
            }
        }
    }
}

/// Whether `tasks` left to place is worth a call when `told` was said
/// last: the first time, when it grew, and on the way down once it halved
/// or ran out.
fn demand_worth_telling(told: Option<u64>, tasks: u64) -> bool {
    match told {
        None => true,
        Some(told) => tasks != told && (tasks > told || tasks <= told / 2),
    }
}

/// Runs the load until every task ran (or failed), then tears the
/// framework down; `stats` shows progress meanwhile.
pub async fn run(config: LoadConfig, stats: Arc<LoadStats>) -> Result<LoadReport, SdkError> {
    let mut framework = FrameworkConfig::new(&config.masters, &config.name);
    framework.token = config.token.clone();
    framework.tls = config.tls.clone();
    framework.failover_timeout = Duration::from_secs(0);
    let driver = Driver::new(framework)?;
    let tasks = config.tasks;
    let paced = config.rate.is_some();
    let launches = config.launches.clone();
    let shared = Arc::new(Mutex::new(Shared {
        config,
        stats: stats.clone(),
        next: 0,
        held: VecDeque::new(),
        sent: HashMap::new(),
        first_accept: None,
        paced_from: None,
    }));
    // At a rate, a pacer launches what is due on held offers every few
    // milliseconds, so launches are spread evenly rather than sent in
    // bursts as offers arrive.
    let pacer = paced.then(|| {
        let (shared, driver) = (shared.clone(), driver.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .launch_due(&driver);
            }
        })
    });
    let mut load = Load {
        shared: shared.clone(),
        ran: Vec::new(),
        launches,
        last_running: None,
        leaving: false,
        told_demand: None,
        tasks,
        stats: stats.clone(),
    };
    // Goes with the subscription: the first offers are sized to it.
    load.tell_demand(&driver).await;
    let result = driver.run(load).await;
    if let Some(pacer) = pacer {
        pacer.abort();
    }
    let load = result?;
    let summary = latency::summarize(&load.ran);
    let first_accept = shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .first_accept;
    let seconds = match (first_accept, load.last_running) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let running = stats.running.load(Ordering::Relaxed);
    Ok(LoadReport {
        tasks,
        running,
        failed: stats.failed.load(Ordering::Relaxed),
        seconds,
        tasks_per_second: if seconds > 0.0 {
            running as f64 / seconds
        } else {
            0.0
        },
        latency_p50_ms: summary.p50_ms,
        latency_p99_ms: summary.p99_ms,
        latency_max_ms: summary.max_ms,
        hops: summary.hops,
        over_time: summary.windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_is_told_first_when_it_grows_and_on_the_way_down_at_halves() {
        assert!(demand_worth_telling(None, 10_000));
        assert!(demand_worth_telling(Some(100), 101));
        // A second's worth at 10,000/s counted down task by task: told at
        // each halving and at the end, not at every launch.
        let mut told = Some(10_000);
        let mut tellings = Vec::new();
        for left in (0..10_000).rev() {
            if demand_worth_telling(told, left) {
                tellings.push(left);
                told = Some(left);
            }
        }
        assert_eq!(
            tellings,
            [5000, 2500, 1250, 625, 312, 156, 78, 39, 19, 9, 4, 2, 1, 0]
        );
        assert!(!demand_worth_telling(Some(0), 0));
    }
}
