//! The running framework: the engine behind a lock, the SDK scheduler that
//! feeds it offers and updates, a clock that ticks it, and a writer that
//! group-commits its changes to the store. Nothing is launched and no
//! update acknowledged before the change it caused is on disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_sdk::{Driver, FrameworkConfig, Offer, Scheduler, TaskStatus};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::engine::{Action, Engine};
use crate::model::Millis;
use crate::store::{BatchStore, StoreError};
use agora_store::replica::StoreConfig;

/// How the batch framework runs.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// The master, e.g. `http://127.0.0.1:5050`.
    pub master: String,
    /// The framework's name; the master serves its API under `/{name}/`.
    pub name: String,
    pub role: String,
    /// Where the store file lives.
    pub data_dir: PathBuf,
    /// The URL the master should use to reach this framework's HTTP API;
    /// by default the address it listens on.
    pub advertise: Option<String>,
    /// How long a task the master does not know may be unaccounted for
    /// before it counts as lost (its agent may still re-register).
    pub reconcile_grace: Duration,
    /// How long the master keeps this framework's tasks while it is away.
    pub failover_timeout: Duration,
    /// Run as one of several replicas with the state in etcd
    /// (`http://h1:2379,…`): one is active, the others stand by.
    pub etcd: Option<String>,
    /// A dead active replica is replaced within about this.
    pub lease_ttl: Duration,
    /// The bearer token of the framework's principal (none for a master
    /// without authentication).
    pub token: Option<String>,
    /// What the framework trusts of an `https://` master.
    pub tls: agora_sdk::ClientTls,
    /// The HTTP API's certificate and key, loaded: with them it serves
    /// https (and the master must trust their CA).
    pub http_tls: Option<agora_sdk::serve::ServerTls>,
}

impl BatchConfig {
    pub fn new(master: impl Into<String>, data_dir: impl Into<PathBuf>) -> BatchConfig {
        BatchConfig {
            master: master.into(),
            name: "batch".into(),
            role: "*".into(),
            data_dir: data_dir.into(),
            advertise: None,
            reconcile_grace: Duration::from_secs(30),
            failover_timeout: Duration::from_secs(7 * 24 * 3600),
            etcd: None,
            lease_ttl: Duration::from_secs(2),
            token: None,
            tls: Default::default(),
            http_tls: None,
        }
    }
}

/// Why the framework could not run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch HTTP API: {0}")]
    Http(std::io::Error),
    // Its messages say they are about the master; `{0}` beside a source
    // would print it twice in an error chain.
    #[error(transparent)]
    Sdk(#[from] agora_sdk::SdkError),
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// State shared by the scheduler, the clock, the writer and the HTTP API.
pub(crate) struct Shared {
    engine: Mutex<Engine>,
    /// Where the framework's state lives (the engine's changes reach it
    /// through the group-commit writer).
    store: Arc<BatchStore>,
    /// Replaced when the framework must register anew (it was torn down).
    driver: Mutex<Driver>,
    pub(crate) master: String,
    /// Presents the framework's token to the master.
    pub(crate) client: reqwest::Client,
    pub(crate) token: Option<String>,
    pub(crate) tls: agora_sdk::ClientTls,
    /// The engine version the store holds.
    committed: watch::Sender<u64>,
    wake_writer: Notify,
    /// Whether offers were last revived (true) or suppressed (false).
    interest: agora_sdk::OfferInterest,
    /// Store commits and the time they took, for `/batch/v1/metrics`.
    pub(crate) commits: AtomicU64,
    pub(crate) commit_micros: AtomicU64,
}

impl Shared {
    pub(crate) fn driver(&self) -> Driver {
        self.driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The engine; never held across an `.await`.
    pub(crate) fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock leaves the engine as it was at the
        // panic; carrying on beats wedging every request.
        self.engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until everything changed so far is on disk.
    pub(crate) async fn persist(&self) {
        let version = self.engine().version();
        let mut committed = self.committed.subscribe();
        if *committed.borrow() >= version {
            return;
        }
        self.wake_writer.notify_one();
        let _ = committed.wait_for(|v| *v >= version).await;
    }

    /// Asks the master for the tasks, kills or reconciliations the engine
    /// wants.
    pub(crate) async fn act(&self, actions: Vec<Action>) {
        for action in actions {
            let result = match &action {
                Action::Kill(task) => self.driver().kill(task).await,
                Action::Reconcile(tasks) => {
                    let ids: Vec<&str> = tasks.iter().map(String::as_str).collect();
                    self.driver().reconcile(&ids).await
                }
            };
            if let Err(e) = result {
                warn!(?action, "{e}");
            }
        }
    }

    /// Revives offers when there is work that could launch, suppresses them
    /// when there is none.
    /// New work revives even when offers were never suppressed: a revive
    /// also lifts the filters of earlier declines.
    pub(crate) async fn sync_interest(&self) {
        let (new_work, demand) = {
            let mut engine = self.engine();
            (engine.take_new_work(), engine.demand(now_ms()))
        };
        self.interest.sync(&self.driver(), demand, new_work).await;
    }

    fn forget_interest(&self) {
        self.interest.forget();
    }
}

/// The SDK side: offers and updates into the engine.
struct BatchScheduler {
    shared: Arc<Shared>,
}

/// How long an agent whose offer was not (fully) used is not offered again.
const REFUSE_SECONDS: f64 = 5.0;
/// The rest of a used offer comes back soon: more work may be waiting.
const REMAINDER_REFUSE_SECONDS: f64 = 0.5;

impl Scheduler for BatchScheduler {
    async fn subscribed(&mut self, driver: &Driver, framework_id: &str) {
        // The secret that goes with the id is on disk before the id is:
        // without it, the id could not be resumed.
        if let Some(secret) = driver.framework_secret() {
            let store = self.shared.store.clone();
            let saved =
                tokio::task::spawn_blocking(move || store.save_framework_secret(&secret)).await;
            if let Err(e) = saved
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                warn!("saving the framework secret: {e}");
            }
        }
        let live = {
            let mut engine = self.shared.engine();
            engine.set_framework_id(framework_id);
            engine.live_task_ids()
        };
        self.shared.persist().await;
        // The master tells us where each task we think is alive stands.
        if !live.is_empty() {
            info!(tasks = live.len(), "reconciling");
            let ids: Vec<&str> = live.iter().map(String::as_str).collect();
            if let Err(e) = driver.reconcile(&ids).await {
                warn!("reconcile: {e}");
            }
        }
        self.shared.forget_interest();
        self.shared.sync_interest().await;
    }

    async fn offers(&mut self, driver: &Driver, offers: Vec<Offer>) {
        let placement = self.shared.engine().place(&offers, now_ms());
        // Write-ahead: the store knows every task before the master does, so
        // a restart reconciles it instead of launching it again.
        self.shared.persist().await;
        for (offer, tasks) in placement.launches {
            let ids: Vec<String> = tasks
                .iter()
                .filter_map(|t| t.task_id.as_ref().map(|i| i.value.clone()))
                .collect();
            if let Err(e) = driver
                .accept(&[offer.as_str()], tasks, Some(REMAINDER_REFUSE_SECONDS))
                .await
            {
                // The refusal's reason tells a stale offer from bad tasks.
                let stale_offer = matches!(
                    &e,
                    agora_sdk::SdkError::AcceptRefused {
                        reason: agora_sdk::RefusalReason::OfferNotOutstanding,
                        ..
                    }
                );
                if e.outcome_unknown() {
                    // Sent, but no answer: the tasks may be running. The
                    // master says (or, after the grace, does not): no second
                    // launch meanwhile.
                    warn!(%offer, "accept: {e}; reconciling its tasks before anything else");
                    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                    if let Err(e) = driver.reconcile(&id_refs).await {
                        warn!("reconcile: {e}; the next subscription reconciles");
                    }
                    continue;
                }
                let actions = if stale_offer {
                    // The offer went away meanwhile: nothing was launched.
                    warn!(%offer, "accept refused: {e}; the tasks go back in the queue");
                    self.shared.engine().unlaunch(&ids, now_ms())
                } else {
                    // Refused for the tasks themselves: a failed attempt
                    // (retried as the job allows), not a loop.
                    warn!(%offer, "launch refused: {e}");
                    let mut engine = self.shared.engine();
                    let mut actions = Vec::new();
                    for id in &ids {
                        let status = TaskStatus {
                            task_id: Some(agora_sdk::v1::TaskId { value: id.clone() }),
                            state: agora_sdk::TaskState::TaskError as i32,
                            message: format!("the master refused the launch: {e}"),
                            ..Default::default()
                        };
                        actions.extend(engine.on_status(&status, now_ms()));
                    }
                    actions
                };
                self.shared.act(actions).await;
            }
        }
        if !placement.unused.is_empty() {
            let ids: Vec<&str> = placement.unused.iter().map(String::as_str).collect();
            if let Err(e) = driver.decline(&ids, Some(REFUSE_SECONDS)).await {
                warn!("decline: {e}");
            }
        }
        self.shared.sync_interest().await;
    }

    async fn status_update(&mut self, driver: &Driver, status: TaskStatus) {
        let actions = self.shared.engine().on_status(&status, now_ms());
        self.shared.act(actions).await;
        // Acknowledge once the update is on disk, without holding up the
        // next one: commits are grouped.
        let shared = self.shared.clone();
        let driver = driver.clone();
        tokio::spawn(async move {
            shared.persist().await;
            if let Err(e) = driver.acknowledge(&status).await {
                warn!("acknowledge: {e}");
            }
        });
        // Offer interest is otherwise re-checked by the clock, not per
        // update: the check scans every job, and updates come by the
        // thousand. Work this update made ready (a dependent, a retry)
        // revives at once.
        let ready = self.shared.engine().has_new_work();
        if ready {
            self.shared.sync_interest().await;
        }
    }

    async fn disconnected(&mut self, _driver: &Driver) {
        self.shared.forget_interest();
    }
}

/// Runs the batch framework until `shutdown`: subscribes to the master,
/// serves the HTTP API on `listener`, and keeps the store current.
/// With etcd, a replica acts only while it holds the lease: it stands by
/// until then, and again whenever it loses it.
pub async fn run(
    config: BatchConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BatchError> {
    tokio::pin!(shutdown);
    let addr: SocketAddr = listener.local_addr().map_err(BatchError::Http)?;
    let mut listener = Some(listener);
    // A term per turn: standing by until active, then acting until
    // `shutdown` or deposed (the process froze past its lease, or lost
    // etcd) — then standing by again, as any standby does.
    loop {
        let listener = match listener.take() {
            Some(listener) => listener,
            // The last term's server let go of it.
            None => TcpListener::bind(addr).await.map_err(BatchError::Http)?,
        };
        match run_term(&config, listener, shutdown.as_mut()).await? {
            Term::Ended => return Ok(()),
            Term::Deposed => warn!("this batch replica lost its lease; standing by again"),
        }
    }
}

/// How a replica's term ended.
enum Term {
    /// Asked to stop (before it was ever active, too).
    Ended,
    /// Another replica may be active now.
    Deposed,
}

/// One term: stands by until active, then runs until `shutdown` or until
/// deposed.
async fn run_term(
    config: &BatchConfig,
    listener: TcpListener,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Term, BatchError> {
    let addr: SocketAddr = listener.local_addr().map_err(BatchError::Http)?;
    let webui = agora_sdk::serve::advertised_url(
        config.advertise.as_deref(),
        addr,
        config.http_tls.as_ref(),
    );
    let store_config = StoreConfig::for_framework(
        config.data_dir.join("batch-store.redb"),
        config.etcd.as_deref(),
        &config.name,
        &webui,
        config.lease_ttl,
    );
    let Some((store, active)) =
        agora_store::replica::become_active(&store_config, shutdown.as_mut())
            .await
            .map_err(StoreError::from)?
    else {
        return Ok(Term::Ended);
    };
    if config.etcd.is_none() {
        crate::store::migrate_old_file(&config.data_dir.join("batch.redb"), &store)?;
    }
    let store = Arc::new(BatchStore::on(store));
    let loaded = store.load()?;
    info!(
        jobs = loaded.jobs.len(),
        framework = loaded.framework_id.as_deref().unwrap_or("(new)"),
        "batch store loaded"
    );
    let engine = Engine::restore(
        loaded.jobs,
        loaded.next_seq,
        loaded.framework_id.clone(),
        config.reconcile_grace.as_millis() as Millis,
    );
    let mut fw = FrameworkConfig::new(config.master.clone(), config.name.clone());
    fw.role = config.role.clone();
    fw.failover_timeout = config.failover_timeout;
    fw.framework_id = loaded.framework_id;
    fw.framework_secret = loaded.framework_secret;
    fw.auto_acknowledge = false;
    fw.webui_url = Some(webui.clone());
    fw.token = config.token.clone();
    fw.tls = config.tls.clone();
    let driver = Driver::new(fw.clone())?;
    let version = engine.version();
    let (committed, _) = watch::channel(version);
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        store: store.clone(),
        driver: Mutex::new(driver),
        master: config.master.trim_end_matches('/').to_string(),
        client: agora_sdk::operator::http_client(
            config.token.as_deref(),
            &config.tls,
            Duration::from_secs(10),
        ),
        token: config.token.clone(),
        tls: config.tls.clone(),
        committed,
        wake_writer: Notify::new(),
        interest: agora_sdk::OfferInterest::new(),
        commits: AtomicU64::new(0),
        commit_micros: AtomicU64::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let journal = Arc::new(BatchJournal {
        shared: shared.clone(),
    });
    let writer = tokio::spawn(agora_store::writer::group_commits(journal, stop_rx.clone()));
    let clock = tokio::spawn(clock_loop(shared.clone(), stop_rx.clone()));
    let app = crate::http::router(shared.clone());
    let server = tokio::spawn(agora_sdk::serve::serve_api(
        listener,
        app,
        config.http_tls.clone(),
        stop_rx.clone(),
    ));
    info!(%webui, master = %config.master, "batch framework serving");
    let result = agora_sdk::run_until(
        fw,
        &shared.driver,
        || BatchScheduler {
            shared: shared.clone(),
        },
        active.until(shutdown.as_mut()),
    )
    .await;
    stop_tx.send_replace(true);
    let _ = clock.await;
    let _ = server.await;
    // The writer saves what is left before it ends.
    shared.wake_writer.notify_one();
    let _ = writer.await;
    let deposed = active.deposed();
    // Deposed, too: the lease may still hold the key by etcd's clock.
    active.resign().await;
    if deposed {
        return Ok(Term::Deposed);
    }
    result.map_err(BatchError::from)?;
    Ok(Term::Ended)
}

/// The batch engine and its store, as the group-commit writer sees them.
struct BatchJournal {
    shared: Arc<Shared>,
}

impl agora_store::writer::Journal for BatchJournal {
    type Changes = crate::engine::Changes;
    type Error = StoreError;

    fn take_changes(&self) -> Option<(u64, Self::Changes)> {
        self.shared.engine().take_changes().map(|c| (c.version, c))
    }

    fn requeue(&self, changes: Self::Changes) {
        self.shared.engine().requeue(changes);
    }

    fn commit(&self, changes: &Self::Changes) -> Result<(), StoreError> {
        self.shared.store.commit(changes)
    }

    fn committed(&self, version: u64, took: Duration) {
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared
            .commit_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.shared.committed.send_replace(version);
    }

    fn wake(&self) -> &Notify {
        &self.shared.wake_writer
    }
}

/// Fires schedules, times runs out, and re-checks offer interest (a retry
/// whose backoff ended wants offers again).
async fn clock_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let actions = shared.engine().tick(now_ms());
        if !actions.is_empty() {
            shared.persist().await;
            shared.act(actions).await;
        }
        shared.sync_interest().await;
    }
}
