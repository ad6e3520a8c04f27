//! The running services framework: the engine behind a lock, the SDK
//! scheduler feeding it offers and updates, a clock that reconciles, a
//! writer that group-commits its changes, the event stream, usage polling
//! for autoscaling, and the built-in load balancer. Nothing is launched and
//! no update acknowledged before the change it caused is on disk.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_sdk::operator::MasterApi;
use agora_sdk::{
    Code, Driver, FrameworkConfig, Offer, RefusalReason, Scheduler, SdkError, TaskStatus,
};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{info, warn};

use crate::engine::{Action, Engine, ServiceEvent};
use crate::lb::LoadBalancer;
use crate::model::Millis;
use crate::store::{ServicesStore, ServicesStoreError};
use agora_store::replica::StoreConfig;

/// How the services framework runs.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    /// The master, e.g. `http://127.0.0.1:5050`.
    pub master: String,
    /// The framework's name; the master serves its API under `/{name}/`.
    pub name: String,
    pub role: String,
    pub data_dir: PathBuf,
    /// The URL the master uses to reach the HTTP API (default: the
    /// listen address).
    pub advertise: Option<String>,
    /// How long a task the master does not know may stay unaccounted for
    /// before it counts as lost.
    pub reconcile_grace: Duration,
    pub failover_timeout: Duration,
    /// Where the built-in load balancer listens; `None`: no balancer.
    pub lb_address: Option<IpAddr>,
    /// How often running instances' usage is read (for autoscaling).
    pub usage_interval: Duration,
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

impl ServicesConfig {
    pub fn new(master: impl Into<String>, data_dir: impl Into<PathBuf>) -> ServicesConfig {
        ServicesConfig {
            master: master.into(),
            name: "services".into(),
            role: "*".into(),
            data_dir: data_dir.into(),
            advertise: None,
            reconcile_grace: Duration::from_secs(30),
            failover_timeout: Duration::from_secs(7 * 24 * 3600),
            lb_address: Some(IpAddr::from([127, 0, 0, 1])),
            usage_interval: Duration::from_secs(2),
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
pub enum ServicesError {
    #[error(transparent)]
    Store(#[from] ServicesStoreError),
    #[error("services HTTP API: {0}")]
    Http(std::io::Error),
    // Its messages say they are about the master; `{0}` beside a source
    // would print it twice in an error chain.
    #[error(transparent)]
    Sdk(#[from] SdkError),
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
    store: Arc<ServicesStore>,
    driver: Mutex<Driver>,
    pub(crate) master: MasterApi,
    committed: watch::Sender<u64>,
    wake_writer: Notify,
    interest: agora_sdk::OfferInterest,
    /// Service events for `/services/v1/events` (JSON, one per event).
    pub(crate) events: broadcast::Sender<ServiceEvent>,
    pub(crate) lb: Option<Arc<LoadBalancer>>,
    pub(crate) commits: AtomicU64,
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
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Sends what changed to the event stream and the load balancer.
    pub(crate) async fn publish(&self) {
        let events = self.engine().take_events();
        for event in events {
            if let (
                Some(lb),
                ServiceEvent::Endpoints {
                    app,
                    service_port,
                    endpoints,
                },
            ) = (&self.lb, &event)
                && let Err(e) = lb.update(app, *service_port, endpoints).await
            {
                warn!("{e}");
            }
            let _ = self.events.send(event);
        }
    }

    /// Carries out the engine's actions.
    pub(crate) async fn act(&self, actions: Vec<Action>) {
        for action in actions {
            let result = match &action {
                Action::Kill { task_id, grace } => {
                    self.driver().kill_with_grace(task_id, *grace).await
                }
                Action::Reconcile(tasks) => {
                    let ids: Vec<&str> = tasks.iter().map(String::as_str).collect();
                    self.driver().reconcile(&ids).await
                }
            };
            match result {
                Ok(()) => {}
                // Already gone: its end is on its way (or was), nothing to do.
                Err(SdkError::Call {
                    code: Code::NotFound | Code::FailedPrecondition,
                    ..
                }) => {}
                Err(e) => warn!(?action, "{e}"),
            }
        }
    }

    /// Revives offers when an app wants launches, suppresses them when none
    /// does. New work always revives (which also lifts decline filters).
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

    /// Everything that follows a change: on disk, announced, acted on.
    pub(crate) async fn settle(&self, actions: Vec<Action>) {
        self.persist().await;
        self.publish().await;
        self.act(actions).await;
        self.sync_interest().await;
    }
}

/// The SDK side: offers and updates into the engine.
struct ServicesScheduler {
    shared: Arc<Shared>,
}

/// How long an agent whose offer was not used is not offered again.
const REFUSE_SECONDS: f64 = 5.0;
const REMAINDER_REFUSE_SECONDS: f64 = 1.0;

impl Scheduler for ServicesScheduler {
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
        if !live.is_empty() {
            info!(
                tasks = live.len(),
                "reconciling the instances from the store"
            );
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
        // Write-ahead: the store knows every instance before the master does.
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
                if e.outcome_unknown() {
                    // Sent, but no answer: the instances may be running;
                    // reconciliation tells (or the grace gives up on them).
                    warn!(%offer, "accept: {e}; reconciling its tasks before anything else");
                    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                    if let Err(e) = driver.reconcile(&id_refs).await {
                        warn!("reconcile: {e}; the next subscription reconciles");
                    }
                    continue;
                }
                let failed = match &e {
                    SdkError::AcceptRefused {
                        reason: RefusalReason::OfferNotOutstanding,
                        ..
                    } => None,
                    other => Some(other.to_string()),
                };
                warn!(%offer, "accept refused: {e}");
                self.shared
                    .engine()
                    .unlaunch(&ids, failed.as_deref(), now_ms());
            }
        }
        if !placement.unused.is_empty() {
            let ids: Vec<&str> = placement.unused.iter().map(String::as_str).collect();
            if let Err(e) = driver.decline(&ids, Some(REFUSE_SECONDS)).await {
                warn!("decline: {e}");
            }
        }
        self.shared.settle(Vec::new()).await;
    }

    async fn status_update(&mut self, driver: &Driver, status: TaskStatus) {
        let actions = self.shared.engine().on_status(&status, now_ms());
        let shared = self.shared.clone();
        let driver = driver.clone();
        // Acknowledged once on disk; commits are grouped, so updates do
        // not wait on each other.
        tokio::spawn(async move {
            shared.persist().await;
            if let Err(e) = driver.acknowledge(&status).await {
                warn!("acknowledge: {e}");
            }
        });
        self.shared.settle(actions).await;
    }

    async fn failure(&mut self, _driver: &Driver, agent_id: &str, message: &str) {
        warn!(agent = %agent_id, %message, "agent lost; replacing its instances");
        self.shared.engine().on_agent_lost(agent_id, now_ms());
        self.shared.settle(Vec::new()).await;
    }

    async fn disconnected(&mut self, _driver: &Driver) {
        self.shared.forget_interest();
    }
}

/// Runs the services framework until `shutdown`: subscribes to the master,
/// serves the HTTP API on `listener`, balances load, and keeps the store
/// current.
/// With etcd, a replica acts only while it holds the lease: it stands by
/// until then, and again whenever it loses it.
pub async fn run(
    config: ServicesConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServicesError> {
    tokio::pin!(shutdown);
    let addr: SocketAddr = listener.local_addr().map_err(ServicesError::Http)?;
    let mut listener = Some(listener);
    // A term per turn: standing by until active, then acting until
    // `shutdown` or deposed (the process froze past its lease, or lost
    // etcd) — then standing by again, as any standby does.
    loop {
        let listener = match listener.take() {
            Some(listener) => listener,
            // The last term's server let go of it.
            None => TcpListener::bind(addr).await.map_err(ServicesError::Http)?,
        };
        match run_term(&config, listener, shutdown.as_mut()).await? {
            Term::Ended => return Ok(()),
            Term::Deposed => warn!("this services replica lost its lease; standing by again"),
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
    config: &ServicesConfig,
    listener: TcpListener,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Term, ServicesError> {
    let addr: SocketAddr = listener.local_addr().map_err(ServicesError::Http)?;
    let webui = agora_sdk::serve::advertised_url(
        config.advertise.as_deref(),
        addr,
        config.http_tls.as_ref(),
    );
    let store_config = StoreConfig::for_framework(
        config.data_dir.join("services.redb"),
        config.etcd.as_deref(),
        &config.name,
        &webui,
        config.lease_ttl,
    );
    let Some((store, active)) =
        agora_store::replica::become_active(&store_config, shutdown.as_mut())
            .await
            .map_err(ServicesStoreError::from)?
    else {
        return Ok(Term::Ended);
    };
    let store = Arc::new(ServicesStore::on(store));
    let loaded = store.load()?;
    info!(
        apps = loaded.apps.len(),
        framework = loaded.framework_id.as_deref().unwrap_or("(new)"),
        "services store loaded"
    );
    let engine = Engine::restore(
        loaded.apps,
        loaded.next_task,
        loaded.next_deployment,
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
    let (committed, _) = watch::channel(engine.version());
    let (events, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        store: store.clone(),
        driver: Mutex::new(driver),
        master: MasterApi::new(&config.master, config.token.as_deref(), &config.tls),
        committed,
        wake_writer: Notify::new(),
        interest: agora_sdk::OfferInterest::new(),
        events,
        lb: config.lb_address.map(LoadBalancer::new),
        commits: AtomicU64::new(0),
    });
    // The balancer takes up the apps the store knows at once.
    shared.publish().await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let journal = Arc::new(ServicesJournal {
        shared: shared.clone(),
    });
    let writer = tokio::spawn(agora_store::writer::group_commits(journal, stop_rx.clone()));
    let clock = tokio::spawn(clock_loop(shared.clone(), stop_rx.clone()));
    let usage = tokio::spawn(usage_loop(
        shared.clone(),
        config.usage_interval,
        stop_rx.clone(),
    ));
    let app = crate::http::router(shared.clone());
    let server = tokio::spawn(agora_sdk::serve::serve_api(
        listener,
        app,
        config.http_tls.clone(),
        stop_rx.clone(),
    ));
    info!(%webui, master = %config.master, "services framework serving");
    let result = agora_sdk::run_until(
        fw,
        &shared.driver,
        || ServicesScheduler {
            shared: shared.clone(),
        },
        active.until(shutdown.as_mut()),
    )
    .await;
    stop_tx.send_replace(true);
    let _ = clock.await;
    let _ = usage.await;
    let _ = server.await;
    shared.wake_writer.notify_one();
    let _ = writer.await;
    let deposed = active.deposed();
    // Deposed, too: the lease may still hold the key by etcd's clock.
    active.resign().await;
    if deposed {
        return Ok(Term::Deposed);
    }
    result.map_err(ServicesError::from)?;
    Ok(Term::Ended)
}

/// The services engine and its store, as the group-commit writer sees them.
struct ServicesJournal {
    shared: Arc<Shared>,
}

impl agora_store::writer::Journal for ServicesJournal {
    type Changes = crate::engine::Changes;
    type Error = ServicesStoreError;

    fn take_changes(&self) -> Option<(u64, Self::Changes)> {
        self.shared.engine().take_changes().map(|c| (c.version, c))
    }

    fn requeue(&self, changes: Self::Changes) {
        self.shared.engine().requeue(changes);
    }

    fn commit(&self, changes: &Self::Changes) -> Result<(), ServicesStoreError> {
        self.shared.store.commit(changes)
    }

    fn committed(&self, version: u64, _took: Duration) {
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.committed.send_replace(version);
    }

    fn wake(&self) -> &Notify {
        &self.shared.wake_writer
    }
}

/// Reconciles every app: deployments, drains, autoscaling, lost tasks.
async fn clock_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let actions = {
            let lb = shared.lb.clone();
            let connections = move |task: &str| lb.as_ref().map_or(0, |lb| lb.connections(task));
            shared.engine().tick(now_ms(), &connections)
        };
        shared.settle(actions).await;
    }
}

/// Reads running instances' cpu use from the master, for autoscaling.
async fn usage_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        let (framework, wanted) = {
            let engine = shared.engine();
            let wanted = engine.apps().any(|a| a.spec().autoscale.is_some());
            (engine.framework_id().map(str::to_string), wanted)
        };
        let (Some(framework), true) = (framework, wanted) else {
            continue;
        };
        match shared.master.task_usage(&framework).await {
            Ok(usage) => {
                let samples: Vec<(String, f64)> = usage
                    .into_iter()
                    .map(|u| (u.task_id, u.cpu_seconds))
                    .collect();
                shared.engine().observe_usage(&samples, now_ms());
            }
            Err(e) => warn!("reading usage: {e}"),
        }
    }
}
