//! The driver: a framework's connection to the master. One subscription
//! stream delivers events to the [`Scheduler`]; calls are unary gRPC and
//! carry the framework id and stream id of the live subscription.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_proto::Demand;
use agora_proto::auth::BearerToken;
use agora_proto::v1::{self, event, scheduler_client::SchedulerClient};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::Scheduler;

/// What went wrong talking to the master.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("master URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("not subscribed yet")]
    NotSubscribed,
    #[error("the master refused the subscription: {0}")]
    SubscribeRefused(String),
    #[error("the master ended this framework's subscription: {0}")]
    Ended(String),
    /// The framework was removed (an operator tore it down): its id is gone
    /// and its tasks were killed.
    #[error("the master removed this framework: {0}")]
    TornDown(String),
    /// The master refused an accept; nothing of it was launched.
    #[error("accept refused ({reason:?}): {message}")]
    AcceptRefused {
        reason: crate::RefusalReason,
        message: String,
        /// The task at fault, when one was.
        task_id: String,
    },
    /// The master's operator API did not answer as expected.
    #[error("{url}: {message}")]
    Operator { url: String, message: String },
    #[error("{call}: {message} ({code:?})")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl SdkError {
    /// The gRPC code of a refused call, if it was one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            SdkError::Call { code, .. } => Some(*code),
            SdkError::AcceptRefused {
                reason: crate::RefusalReason::NotAuthorized,
                ..
            } => Some(tonic::Code::PermissionDenied),
            SdkError::AcceptRefused { .. } => Some(tonic::Code::InvalidArgument),
            _ => None,
        }
    }

    /// Whether the call may have taken effect although it failed: the
    /// connection broke, or the master died, after it was sent. An accept
    /// that fails so may have launched its tasks: reconcile them rather
    /// than launch them again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            SdkError::Call { code, .. } => !matches!(
                code,
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::PermissionDenied
                    | tonic::Code::AlreadyExists
                    | tonic::Code::Unauthenticated
            ),
            _ => false,
        }
    }
}

/// Who the framework is and where its master lives.
#[derive(Clone, Debug)]
pub struct FrameworkConfig {
    /// e.g. `http://127.0.0.1:5050`.
    pub master: String,
    pub name: String,
    /// The role whose share the framework draws on ("*" by default).
    pub role: String,
    /// How long the master keeps the framework's tasks while it is away.
    pub failover_timeout: Duration,
    /// Resume this framework id instead of registering a new framework.
    pub framework_id: Option<String>,
    /// The secret the master issued with `framework_id` (see
    /// [`Driver::framework_secret`]); an id is only resumed with it.
    pub framework_secret: Option<String>,
    /// Acknowledge each status update when `status_update` returns.
    pub auto_acknowledge: bool,
    /// The framework's own HTTP API or UI, announced to the master.
    pub webui_url: Option<String>,
    /// The bearer token that authenticates the framework's principal to
    /// the master (none for a master without authentication).
    pub token: Option<String>,
    /// What the framework trusts of an `https://` master (and the client
    /// certificate it presents, if any).
    pub tls: agora_proto::tls::ClientTls,
}

impl FrameworkConfig {
    /// A framework called `name` for the master at `master`.
    pub fn new(master: impl Into<String>, name: impl Into<String>) -> Self {
        FrameworkConfig {
            master: master.into(),
            name: name.into(),
            role: "*".into(),
            failover_timeout: Duration::from_secs(7 * 24 * 3600),
            framework_id: None,
            framework_secret: None,
            auto_acknowledge: true,
            webui_url: None,
            token: None,
            tls: Default::default(),
        }
    }
}

#[derive(Default)]
struct Subscription {
    framework_id: Option<String>,
    /// Issued by the master with the id; needed to resubscribe under it.
    secret: Option<String>,
    stream_id: Option<String>,
    /// What the master presents on requests it relays to `webui_url`.
    relay_token: Option<String>,
    /// The demand last set: sent with every subscription.
    demand: Option<v1::Demand>,
}

impl Subscription {
    /// What identifies calls on the current subscription, once there is one.
    fn header(&self) -> Option<v1::CallHeader> {
        match (&self.framework_id, &self.stream_id) {
            (Some(f), Some(stream)) => Some(v1::CallHeader {
                framework_id: Some(v1::FrameworkId { value: f.clone() }),
                stream_id: stream.clone(),
            }),
            _ => None,
        }
    }
}

/// A cheap, cloneable handle for calls to the master.
#[derive(Clone)]
pub struct Driver {
    config: Arc<FrameworkConfig>,
    /// The masters, and a connection to each one used so far.
    masters: Arc<Mutex<Masters>>,
    // A std mutex: held only to copy ids, never across an `.await`.
    subscription: Arc<Mutex<Subscription>>,
    stop: Arc<watch::Sender<Stop>>,
}

/// Where the framework talks: the master it follows (the leader, when
/// there are several) and a lazily connected channel per master.
struct Masters {
    list: agora_proto::MasterList,
    clients: std::collections::HashMap<String, Client>,
    token: BearerToken,
    tls: agora_proto::tls::ClientTls,
}

/// A connection to one master, every call carrying the framework's token.
type Client = SchedulerClient<InterceptedService<Channel, BearerToken>>;

fn lazy_client(
    url: &str,
    token: &BearerToken,
    tls: &agora_proto::tls::ClientTls,
) -> Result<Client, String> {
    let endpoint = agora_proto::tls::endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(
        SchedulerClient::with_interceptor(endpoint.connect_lazy(), token.clone())
            .max_decoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES),
    )
}

/// Most acknowledgements in one call.
const MAX_ACKS_PER_CALL: usize = 1000;
/// Acknowledgement calls on their way at once.
const ACK_CALLS_IN_FLIGHT: usize = 4;
/// Calls' worth of acknowledgements queued before the event loop waits.
const ACKS_QUEUED: usize = 16;

/// Acknowledges status updates in the background, off the event loop: up
/// to [`ACK_CALLS_IN_FLIGHT`] calls at a time, each carrying what piled up
/// meanwhile — so a burst of updates costs a few calls, not one round trip
/// each. Acknowledgements name their update's uuid, so their order does
/// not matter.
struct Acker {
    tx: Option<tokio::sync::mpsc::Sender<v1::TaskStatus>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Acker {
    fn start(driver: Driver) -> Acker {
        // Bounded: while acknowledgements lag, the event loop waits for
        // room, stops reading its stream, and the master stops offering.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<v1::TaskStatus>(ACKS_QUEUED * MAX_ACKS_PER_CALL);
        let task = tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_ACKS_PER_CALL {
                    match rx.try_recv() {
                        Ok(status) => batch.push(status),
                        Err(_) => break,
                    }
                }
                while calls.len() >= ACK_CALLS_IN_FLIGHT {
                    calls.join_next().await;
                }
                let driver = driver.clone();
                calls.spawn(async move {
                    if let Err(e) = driver.acknowledge_all(&batch).await {
                        warn!("{e}");
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        });
        Acker {
            tx: Some(tx),
            task: Some(task),
        }
    }

    async fn send(&self, status: v1::TaskStatus) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(status).await;
        }
    }

    /// Waits until everything sent so far was acknowledged (or failed).
    async fn drain(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// What [`Driver::run`] is asked to do next.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Running,
    Leave,
    Teardown,
}

fn to_offer_ids(ids: &[&str]) -> Vec<v1::OfferId> {
    ids.iter()
        .map(|id| v1::OfferId {
            value: id.to_string(),
        })
        .collect()
}

fn call_error(call: &'static str, status: tonic::Status) -> SdkError {
    if let Some(refusal) = agora_proto::refusal_of(&status) {
        return SdkError::AcceptRefused {
            reason: refusal.reason(),
            message: refusal.message,
            task_id: refusal.task_id,
        };
    }
    SdkError::Call {
        call,
        code: status.code(),
        message: status.message().to_string(),
    }
}

impl Driver {
    /// A driver for `config`; connects lazily, in [`Driver::run`].
    pub fn new(config: FrameworkConfig) -> Result<Driver, SdkError> {
        let bad = |reason: String| SdkError::BadUrl {
            url: config.master.clone(),
            reason,
        };
        let list = agora_proto::MasterList::new(&config.master)
            .ok_or_else(|| bad("names no master".into()))?;
        let token = BearerToken::new(config.token.as_deref())
            .map_err(|e| SdkError::SubscribeRefused(format!("the framework's token: {e}")))?;
        let mut clients = std::collections::HashMap::new();
        for url in list.all() {
            let client =
                lazy_client(url, &token, &config.tls).map_err(|e| bad(format!("`{url}`: {e}")))?;
            clients.insert(url.clone(), client);
        }
        let (stop, _) = watch::channel(Stop::Running);
        let subscription = Subscription {
            framework_id: config.framework_id.clone(),
            secret: config.framework_secret.clone(),
            stream_id: None,
            relay_token: None,
            demand: None,
        };
        Ok(Driver {
            masters: Arc::new(Mutex::new(Masters {
                list,
                clients,
                token,
                tls: config.tls.clone(),
            })),
            config: Arc::new(config),
            subscription: Arc::new(Mutex::new(subscription)),
            stop: Arc::new(stop),
        })
    }

    /// The longest wait between attempts: short when standbys can say
    /// who leads (a new leader is at most a lease away).
    fn backoff_cap(&self) -> Duration {
        let masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        if masters.list.all().len() > 1 {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        }
    }

    fn master_count(&self) -> usize {
        let masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        masters.list.all().len()
    }

    /// The master the framework follows now.
    fn client(&self) -> Client {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        let url = masters.list.current().to_string();
        if let Some(client) = masters.clients.get(&url) {
            return client.clone();
        }
        // A leader named by a standby, not in the list we were given.
        let client = lazy_client(&url, &masters.token, &masters.tls).unwrap_or_else(|_| {
            let first = masters.list.all()[0].clone();
            masters.clients[&first].clone()
        });
        masters.clients.insert(url, client.clone());
        client
    }

    /// The master that was followed did not serve: follow the leader it
    /// named, else try the next one.
    fn master_failed(&self, status: &tonic::Status) {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        let hint = agora_proto::leader_hint(status);
        masters.list.failed(hint);
    }

    /// The secret that goes with the framework id: keep it with the id to
    /// resume the framework after a restart.
    pub fn framework_secret(&self) -> Option<String> {
        self.subscription.lock().ok().and_then(|s| s.secret.clone())
    }

    /// Who sent a request the master relayed to this framework's
    /// `webui_url` (see [`crate::relay`]): trusted only when the request
    /// carries the relay token of the current subscription.
    pub fn relayed_caller(
        &self,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<crate::relay::RelayedCaller, crate::relay::RelayRefusal> {
        let expected = self
            .subscription
            .lock()
            .ok()
            .and_then(|s| s.relay_token.clone())
            .ok_or(crate::relay::RelayRefusal::NotSubscribed)?;
        crate::relay::RelayedCaller::from_headers(headers, &expected)
    }

    /// Whether a subscription has been granted since this driver started:
    /// until then the master may already relay requests (it has the
    /// framework) that the framework cannot yet check.
    pub fn has_subscribed(&self) -> bool {
        self.subscription
            .lock()
            .is_ok_and(|s| s.relay_token.is_some())
    }

    /// The framework id, once subscribed.
    pub fn framework_id(&self) -> Option<String> {
        self.subscription
            .lock()
            .ok()
            .and_then(|s| s.framework_id.clone())
    }

    fn header(&self) -> Result<v1::CallHeader, SdkError> {
        self.subscription
            .lock()
            .map_err(|_| SdkError::NotSubscribed)?
            .header()
            .ok_or(SdkError::NotSubscribed)
    }

    /// Launches `tasks` on the resources of `offer_ids` (all on one agent);
    /// what the tasks do not use is declined with `refuse_seconds`.
    pub async fn accept(
        &self,
        offer_ids: &[&str],
        tasks: Vec<v1::TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), SdkError> {
        let request = v1::AcceptRequest {
            header: Some(self.header()?),
            offer_ids: to_offer_ids(offer_ids),
            tasks,
            filters: Some(v1::Filters { refuse_seconds }),
        };
        let call = self.client().accept(request).await;
        call.map(drop).map_err(|s| call_error("accept", s))
    }

    /// Declines offers; the agent is not offered again for `refuse_seconds`
    /// (default 5).
    pub async fn decline(
        &self,
        offer_ids: &[&str],
        refuse_seconds: Option<f64>,
    ) -> Result<(), SdkError> {
        let request = v1::DeclineRequest {
            header: Some(self.header()?),
            offer_ids: to_offer_ids(offer_ids),
            filters: Some(v1::Filters { refuse_seconds }),
        };
        let call = self.client().decline(request).await;
        call.map(drop).map_err(|s| call_error("decline", s))
    }

    /// Asks for offers again, clearing every refusal filter.
    pub async fn revive(&self) -> Result<(), SdkError> {
        let request = v1::ReviveRequest {
            header: Some(self.header()?),
        };
        let call = self.client().revive(request).await;
        call.map(drop).map_err(|s| call_error("revive", s))
    }

    /// Stops offers until [`Driver::revive`].
    pub async fn suppress(&self) -> Result<(), SdkError> {
        let request = v1::SuppressRequest {
            header: Some(self.header()?),
        };
        let call = self.client().suppress(request).await;
        call.map(drop).map_err(|s| call_error("suppress", s))
    }

    /// Tells the master what the framework still wants placed (`None`:
    /// forget it). Under the master's `demand` offer policy, offers are
    /// sized to it; it does not clear refusal filters. Set before
    /// [`Driver::run`], it goes with the subscription, so the first offers
    /// are sized to it too; it goes again with every resubscription (a
    /// master taking over learns it).
    pub async fn set_demand(&self, demand: Option<&Demand>) -> Result<(), SdkError> {
        let demand = demand.map(Demand::to_proto);
        let header = {
            let mut s = self
                .subscription
                .lock()
                .map_err(|_| SdkError::NotSubscribed)?;
            s.demand = demand.clone();
            s.header()
        };
        let Some(header) = header else {
            // Not subscribed yet: it goes with the subscription.
            return Ok(());
        };
        let request = v1::DemandRequest {
            header: Some(header),
            demand,
        };
        let call = self.client().set_demand(request).await;
        call.map(drop).map_err(|s| call_error("set_demand", s))
    }

    /// Kills a task with its own grace period; its end arrives as a status
    /// update.
    pub async fn kill(&self, task_id: &str) -> Result<(), SdkError> {
        self.kill_with_grace(task_id, None).await
    }

    /// Kills a task: SIGTERM, then `grace` (or the task's own
    /// `kill_grace_period`), then SIGKILL of everything it left.
    pub async fn kill_with_grace(
        &self,
        task_id: &str,
        grace: Option<Duration>,
    ) -> Result<(), SdkError> {
        let request = v1::KillRequest {
            header: Some(self.header()?),
            task_id: Some(v1::TaskId {
                value: task_id.to_string(),
            }),
            kill_grace_period: grace.map(|g| g.as_secs_f64()),
        };
        let call = self.client().kill(request).await;
        call.map(drop).map_err(|s| call_error("kill", s))
    }

    /// Acknowledges a status update (done for you unless `auto_acknowledge`
    /// is off). Updates without a uuid need none.
    pub async fn acknowledge(&self, status: &v1::TaskStatus) -> Result<(), SdkError> {
        self.acknowledge_all(std::slice::from_ref(status)).await
    }

    /// Acknowledges several status updates in one call.
    pub async fn acknowledge_all(&self, statuses: &[v1::TaskStatus]) -> Result<(), SdkError> {
        let mut acks =
            statuses
                .iter()
                .filter(|s| !s.uuid.is_empty())
                .map(|s| v1::Acknowledgement {
                    agent_id: s.agent_id.clone(),
                    task_id: s.task_id.clone(),
                    uuid: s.uuid.clone(),
                });
        let Some(first) = acks.next() else {
            return Ok(());
        };
        let request = v1::AcknowledgeRequest {
            header: Some(self.header()?),
            agent_id: first.agent_id,
            task_id: first.task_id,
            uuid: first.uuid,
            more: acks.collect(),
        };
        let call = self.client().acknowledge(request).await;
        call.map(drop).map_err(|s| call_error("acknowledge", s))
    }

    /// Asks for the latest state of these tasks (all live tasks when empty);
    /// answers arrive as status updates.
    pub async fn reconcile(&self, task_ids: &[&str]) -> Result<(), SdkError> {
        let request = v1::ReconcileRequest {
            header: Some(self.header()?),
            task_ids: task_ids
                .iter()
                .map(|id| v1::TaskId {
                    value: id.to_string(),
                })
                .collect(),
        };
        let call = self.client().reconcile(request).await;
        call.map(drop).map_err(|s| call_error("reconcile", s))
    }

    /// Asks [`Driver::run`] to remove the framework from the master (its
    /// tasks are killed) and return. Safe inside a callback: the teardown is
    /// sent once the callback and its acknowledgement are done.
    pub fn teardown(&self) {
        self.stop.send_replace(Stop::Teardown);
    }

    /// Asks [`Driver::run`] to return without tearing down: the master keeps
    /// the framework's tasks for its failover timeout.
    pub fn stop(&self) {
        self.stop.send_if_modified(|s| {
            let leave = *s == Stop::Running;
            if leave {
                *s = Stop::Leave;
            }
            leave
        });
    }

    async fn finish<S>(&self, scheduler: S, acker: &mut Acker) -> Result<S, SdkError> {
        // Acknowledgements still on their way go out first.
        acker.drain().await;
        if *self.stop.borrow() == Stop::Teardown {
            let request = v1::TeardownRequest {
                header: Some(self.header()?),
            };
            self.client()
                .teardown(request)
                .await
                .map_err(|s| call_error("teardown", s))?;
            info!("framework torn down");
        }
        Ok(scheduler)
    }

    /// Subscribes and feeds events to `scheduler` until [`Driver::stop`] or
    /// [`Driver::teardown`]; reconnects with backoff when the master goes
    /// away. Hands the scheduler back when stopped; fails when the master
    /// refuses or ends the subscription.
    pub async fn run<S: Scheduler>(&self, mut scheduler: S) -> Result<S, SdkError> {
        let mut stop = self.stop.subscribe();
        let mut acker = Acker::start(self.clone());
        let mut backoff = Duration::from_millis(100);
        let mut failed_in_round = 0;
        loop {
            if *stop.borrow() != Stop::Running {
                return self.finish(scheduler, &mut acker).await;
            }
            let info = v1::FrameworkInfo {
                name: self.config.name.clone(),
                role: self.config.role.clone(),
                failover_timeout: self.config.failover_timeout.as_secs_f64(),
                id: self.framework_id().map(|value| v1::FrameworkId { value }),
                webui_url: self.config.webui_url.clone().unwrap_or_default(),
                ..Default::default()
            };
            let subscribed = self
                .client()
                .subscribe(v1::SubscribeRequest {
                    framework_info: Some(info),
                    secret: self.framework_secret().unwrap_or_default(),
                    demand: self.subscription.lock().ok().and_then(|s| s.demand.clone()),
                })
                .await;
            let mut events = match subscribed {
                Ok(response) => response.into_inner(),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(SdkError::SubscribeRefused(status.message().to_string()));
                }
                Err(status) if agora_proto::leader_hint(&status).is_some() => {
                    // A standby: straight to the leader it names.
                    self.master_failed(&status);
                    continue;
                }
                Err(status) => {
                    self.master_failed(&status);
                    // The next master at once, until a whole round failed.
                    failed_in_round += 1;
                    if failed_in_round < self.master_count() {
                        continue;
                    }
                    failed_in_round = 0;
                    warn!(code = ?status.code(), message = %status.message(), "subscribing failed; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return self.finish(scheduler, &mut acker).await,
                    }
                    backoff = (backoff * 2).min(self.backoff_cap());
                    continue;
                }
            };
            let subscribed_at = tokio::time::Instant::now();
            failed_in_round = 0;
            // Silence for three heartbeats means the master is gone.
            let mut silence = Duration::from_secs(45);
            loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(silence, events.message()) => next,
                    _ = stop.changed() => return self.finish(scheduler, &mut acker).await,
                };
                let event = match next {
                    Ok(Ok(Some(e))) => e,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        if status.code() == tonic::Code::Aborted {
                            // Torn down by the master: nothing to resume.
                            return Err(SdkError::TornDown(status.message().to_string()));
                        }
                        warn!(message = %status.message(), "event stream failed");
                        break;
                    }
                    Err(_) => {
                        warn!("no heartbeat from the master; reconnecting");
                        break;
                    }
                };
                match event.event {
                    Some(event::Event::Subscribed(s)) => {
                        let id = s.framework_id.map(|f| f.value).unwrap_or_default();
                        if let Ok(mut sub) = self.subscription.lock() {
                            sub.framework_id = Some(id.clone());
                            sub.stream_id = Some(s.stream_id);
                            sub.relay_token = Some(s.relay_token);
                            if !s.secret.is_empty() {
                                sub.secret = Some(s.secret);
                            }
                        }
                        if s.heartbeat_interval_seconds.is_finite()
                            && s.heartbeat_interval_seconds > 0.0
                        {
                            silence = Duration::from_secs_f64(s.heartbeat_interval_seconds * 3.0);
                        }
                        backoff = Duration::from_millis(100);
                        info!(framework = %id, "subscribed");
                        scheduler.subscribed(self, &id).await;
                    }
                    Some(event::Event::Offers(o)) => scheduler.offers(self, o.offers).await,
                    Some(event::Event::Rescind(r)) => {
                        let id = r.offer_id.map(|o| o.value).unwrap_or_default();
                        scheduler.rescinded(self, &id).await;
                    }
                    Some(event::Event::Update(u)) => {
                        if let Some(status) = u.status {
                            scheduler.status_update(self, status.clone()).await;
                            if self.config.auto_acknowledge {
                                acker.send(status).await;
                            }
                        }
                    }
                    Some(event::Event::Failure(f)) => {
                        let agent = f.agent_id.map(|a| a.value).unwrap_or_default();
                        scheduler.failure(self, &agent, &f.message).await;
                    }
                    Some(event::Event::Error(e)) => {
                        // Errors end the subscription (e.g. another scheduler
                        // took over); resubscribing would steal it back.
                        scheduler.error(self, &e.message).await;
                        return Err(SdkError::Ended(e.message));
                    }
                    Some(event::Event::Heartbeat(_)) | None => {}
                }
            }
            if let Ok(mut sub) = self.subscription.lock() {
                sub.stream_id = None;
            }
            scheduler.disconnected(self).await;
            // A subscription that lasted resubscribes at once (its master
            // may have died and another lead already); one that ended
            // straight away backs off.
            if subscribed_at.elapsed() < Duration::from_secs(1) {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return self.finish(scheduler, &mut acker).await,
                }
                backoff = (backoff * 2).min(self.backoff_cap());
            }
        }
    }
}

/// Runs a framework until `shutdown`, with a scheduler from `make` for each
/// subscription. When the master removes the framework (an operator tore
/// it down) it registers anew under a new id and carries on: what the
/// framework keeps (jobs, apps) is still its own, and its old tasks turn
/// out unknown at reconciliation. `driver` always holds the current driver,
/// for calls made from elsewhere (an HTTP API, a clock).
pub async fn run_until<S: Scheduler>(
    mut config: FrameworkConfig,
    driver: &Mutex<Driver>,
    mut make: impl FnMut() -> S,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SdkError> {
    tokio::pin!(shutdown);
    loop {
        let current = driver.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let ended = tokio::select! {
            r = current.run(make()) => r,
            () = &mut shutdown => {
                current.stop();
                return Ok(());
            }
        };
        match ended {
            Ok(_) => return Ok(()),
            Err(SdkError::TornDown(why)) => {
                warn!(%why, "the master removed this framework; registering anew");
                config.framework_id = None;
                config.framework_secret = None;
                let fresh = Driver::new(config.clone())?;
                *driver.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
