//! The master core: one task that owns the authoritative cluster state and is
//! driven by messages from the connection tasks (gRPC streams, HTTP
//! handlers) and by its own timer. Nothing else mutates the state, so no lock
//! is ever held across an `.await`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agora_proto::v1::accept_refusal::Reason as Refusal;
use agora_proto::v1::{
    self, AgentMessage, Event, MasterMessage, TaskState, TaskStatus, agent_message, event,
    master_message, task_status,
};
use agora_proto::{Resources, is_terminal, refusal_status};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, info_span, warn};

mod accept;
mod agents;
mod awaiting;
mod calls;
mod delivery;
mod frameworks;
mod offers;
mod operator;
mod publish;
mod recovery;
mod tasks;
#[cfg(test)]
mod tests;
mod tracked;
mod view;

use crate::allocator::{Allocator, DrfAllocator, Millis};
use crate::auth::{Action, Caller};
use crate::config::MasterConfig;
use crate::events::ClusterEvent;
use crate::metrics::Metrics;
use crate::offer_book::{OfferBook, OpenOffer};
use crate::outbound::{Heard, Outbound, Unsent};
use crate::registry::{Registry, RegistryError};
use crate::state::{
    AgentRegistration, AgentView, FrameworkView, OfferView, SandboxView, TaskView, UsageView,
};
use tracked::{FastMap, FastSet, Tracked};

/// Outbound half of an agent's session stream.
pub type AgentTx = Outbound<MasterMessage>;
/// Outbound half of a framework's event stream.
pub type FrameworkTx = Outbound<Event>;
/// The reply to a framework call.
pub type CallReply = oneshot::Sender<Result<(), Status>>;

/// A framework call, after the gRPC layer unpacked it.
#[derive(Debug)]
pub enum Call {
    /// Boxed: the biggest call, which would make every message as big.
    Accept(Box<v1::AcceptRequest>),
    Decline(v1::DeclineRequest),
    Revive,
    Suppress,
    SetDemand(Option<agora_proto::Demand>),
    Kill {
        task_id: v1::TaskId,
        grace: Option<f64>,
    },
    Acknowledge(Box<v1::AcknowledgeRequest>),
    Reconcile(Vec<v1::TaskId>),
    Teardown,
}

/// What the core is told.
pub enum CoreMsg {
    Agent {
        conn: u64,
        tx: AgentTx,
        msg: AgentMessage,
        /// The session's caller may admit a new agent (it presented a join
        /// credential); a known agent needs only its own secret.
        may_join: bool,
    },
    /// What an agent's heartbeat reported of its tasks' usage, its
    /// connection having answered the heartbeat itself.
    AgentUsage {
        conn: u64,
        usage: Vec<v1::TaskUsage>,
    },
    AgentClosed {
        conn: u64,
    },
    Subscribe {
        /// Boxed: the biggest message by far, and a rare one.
        info: Box<v1::FrameworkInfo>,
        /// The secret presented with a framework id to resume.
        secret: String,
        /// What it wants placed, from the start.
        demand: Option<agora_proto::Demand>,
        caller: Caller,
        tx: FrameworkTx,
        reply: oneshot::Sender<Result<(String, String), Status>>,
    },
    FrameworkClosed {
        framework_id: String,
        stream_id: String,
    },
    Call {
        header: Option<v1::CallHeader>,
        caller: Caller,
        call: Call,
        reply: CallReply,
    },
    Operator {
        op: Operator,
        reply: oneshot::Sender<Result<(), OperatorError>>,
    },
}

impl CoreMsg {
    /// What kind of message, for the log of slow turns.
    fn kind(&self) -> &'static str {
        match self {
            CoreMsg::Agent { .. } => "an agent's message",
            CoreMsg::AgentUsage { .. } => "an agent's usage",
            CoreMsg::AgentClosed { .. } => "an agent's session closed",
            CoreMsg::Subscribe { .. } => "a subscription",
            CoreMsg::FrameworkClosed { .. } => "a framework's stream closed",
            CoreMsg::Call { call, .. } => match call {
                Call::Accept(_) => "an accept",
                Call::Decline(_) => "a decline",
                Call::Revive => "a revive",
                Call::Suppress => "a suppress",
                Call::SetDemand(_) => "a demand",
                Call::Kill { .. } => "a kill",
                Call::Acknowledge(_) => "acknowledgements",
                Call::Reconcile(_) => "a reconciliation",
                Call::Teardown => "a teardown",
            },
            CoreMsg::Operator { .. } => "an operator's action",
        }
    }
}

/// An operator's action through the HTTP API.
#[derive(Debug)]
pub enum Operator {
    SetWeight {
        role: String,
        weight: f64,
    },
    /// Back to the default weight (1), forgetting the role's own.
    ResetWeight {
        role: String,
    },
    Teardown {
        framework_id: String,
    },
    /// No new offers from the agent; optionally kill what runs there (each
    /// task with its grace period).
    Drain {
        agent_id: String,
        kill_tasks: bool,
    },
    Undrain {
        agent_id: String,
    },
    /// The agent is gone for good: its tasks are `TASK_GONE_BY_OPERATOR`,
    /// and it is refused (and told to kill what it runs) if it returns.
    MarkGone {
        agent_id: String,
    },
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OperatorError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The change could not be made durable; nothing changed.
    #[error("{0}")]
    Registry(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentStatus {
    Active,
    Disconnected,
    Unreachable,
}

impl AgentStatus {
    fn name(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Disconnected => "disconnected",
            AgentStatus::Unreachable => "unreachable",
        }
    }
}

/// An agent's open session: whose it is, and when the agent last spoke
/// on it.
struct AgentSession {
    agent: String,
    /// Stamped by the session's connection as each message arrives, and
    /// held while the connection waits for room in the core's queue (it
    /// reads nothing meanwhile): a registration storm that keeps the core
    /// behind does not make agents that heartbeat on time look silent.
    heard: Heard,
}

impl AgentSession {
    fn new(agent: String, heard: Heard) -> Self {
        AgentSession { agent, heard }
    }

    /// When the agent last spoke.
    fn last_spoke(&self) -> Instant {
        self.heard.last()
    }
}

struct AgentEntry {
    attributes: Vec<v1::Attribute>,
    /// What it registered with (hostname, endpoint, total resources), as
    /// its views share it.
    registered: Arc<AgentRegistration>,
    status: AgentStatus,
    conn: Option<(u64, AgentTx)>,
    /// When the master last heard from the agent, as of its last session's
    /// end (an open session keeps its own, see [`AgentSession`]).
    last_seen: Instant,
    /// No new offers (an operator drain); survives re-registration.
    draining: bool,
    /// SHA-256 of the secret issued at admission: re-registering under this
    /// id needs the secret.
    secret_sha256: Vec<u8>,
    /// Since when the agent is unreachable: past `agent_removal_timeout` it
    /// is removed.
    unreachable_since: Option<Instant>,
}

struct FrameworkEntry {
    id: String,
    info: v1::FrameworkInfo,
    role: String,
    stream: Option<(String, FrameworkTx)>,
    /// Events that found the stream full, each with its update's uuid
    /// (empty for the master's own): sent as it drains, in order; dropped
    /// with the stream (agents retry, the framework reconciles).
    backlog: VecDeque<(Event, Vec<u8>)>,
    /// Uuids of the updates in `backlog`: a retry is not queued twice.
    backlog_uuids: HashSet<Vec<u8>>,
    /// No offers while its stream is nearly full (the allocator sees it as
    /// inactive); resumed once the stream drains.
    offers_paused: bool,
    disconnected_at: Option<Instant>,
    failover_timeout: Duration,
    /// SHA-256 of the secret issued with the id (empty for frameworks
    /// known only from agents' reports, or from before secrets).
    secret_sha256: Vec<u8>,
    /// Presented on requests relayed to the framework's `webui_url`; new
    /// with each subscription (empty without authentication).
    relay_token: String,
}

struct TaskEntry {
    info: v1::TaskInfo,
    agent: String,
    resources: Resources,
    state: TaskState,
    message: String,
    reason: task_status::Reason,
    kill_requested: bool,
    /// Latest usage the agent reported, while running.
    usage: Option<v1::ResourceUsage>,
    /// Latest health-check result the agent reported.
    healthy: Option<bool>,
}

type TaskKey = (String, String);

/// The authoritative master state and its event handlers.
pub struct Core {
    config: MasterConfig,
    started: Instant,
    allocator: Box<dyn Allocator>,
    agents: Tracked<String, AgentEntry>,
    frameworks: Tracked<String, FrameworkEntry>,
    offers: OfferBook<String>,
    /// Boxed: a `TaskEntry` is about a kilobyte (its `TaskInfo` inline),
    /// and a table of them inline grew by rehashing hundreds of megabytes
    /// into fresh pages — seconds of the core's time in page faults on this
    /// machine's VM, once per growth. Boxed, a growth moves pointers.
    tasks: Tracked<TaskKey, Box<TaskEntry>>,
    /// The keys of the tasks on each agent.
    tasks_by_agent: FastMap<String, FastSet<TaskKey>>,
    /// What readers see, brought up to date from the changes above.
    read: publish::ReadModel,
    completed: VecDeque<TaskKey>,
    allocation_needed: bool,
    /// The periodic pass over every agent is due (refusal filters that
    /// expired are only seen there); other passes cover what changed.
    full_pass_due: bool,
    last_allocation: Instant,
    last_heartbeat: Instant,
    events: crate::events::EventSender,
    metrics: Metrics,
    /// Relayed updates awaiting the framework's acknowledgement, by uuid.
    awaiting_ack: FastMap<Vec<u8>, Instant>,
    /// Acknowledgements for agents, gathered over a burst and sent at its
    /// end: one message per agent, not one per update (a framework
    /// acknowledges a task's STARTING and RUNNING, or a whole accept's
    /// tasks, in the same few calls).
    acks_for_agents: FastMap<String, Vec<master_message::Acknowledge>>,
    /// Which agent each open session belongs to, and when it was last
    /// heard on it: every heartbeat and update is looked up here, once (at
    /// 50,000 agents, with a second lookup in the agents' table for the
    /// liveness, this took a tenth of the core's time).
    agent_of_conn: FastMap<u64, AgentSession>,
    /// What survives a restart; changes are committed once per burst of
    /// messages (a reply that promises durability waits for the commit).
    registry: Registry,
    /// Registrations that issued a secret, in the order they were
    /// recorded: each finishes once the registry has committed its record.
    awaiting_registrations: awaiting::AwaitingRegistrations,
    /// Agents an operator marked gone: refused if they return.
    gone_agents: HashSet<String>,
    clock: recovery::WallClock,
    /// A registry write was fenced off: another master leads.
    deposed: bool,
    /// Given to agents at registration: the master presents it to their
    /// HTTP API (empty without authentication).
    agent_http_token: String,
    /// What agents' connections answer heartbeats with, kept current.
    heartbeat_terms: Arc<HeartbeatTerms>,
}

/// The heartbeat interval and agent timeout as the core last set them (they
/// grow with the cluster), for agents' connections to answer heartbeats
/// with: a heartbeat is answered where it arrives, and costs the core
/// nothing (at 50,000 agents, 5,000 a second had each woken it).
#[derive(Debug, Default)]
pub struct HeartbeatTerms {
    interval_ms: std::sync::atomic::AtomicU64,
    timeout_ms: std::sync::atomic::AtomicU64,
}

impl HeartbeatTerms {
    pub(crate) fn set(&self, interval: Duration, timeout: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.interval_ms.store(ms(interval), Relaxed);
        self.timeout_ms.store(ms(timeout), Relaxed);
    }

    /// The answer to a heartbeat (zeros, "unchanged", before the core set
    /// any).
    pub fn ack(&self) -> master_message::HeartbeatAck {
        let seconds = |ms: &std::sync::atomic::AtomicU64| {
            ms.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
        };
        master_message::HeartbeatAck {
            heartbeat_interval_seconds: seconds(&self.interval_ms),
            agent_timeout_seconds: seconds(&self.timeout_ms),
        }
    }
}

/// Why the core stopped.
#[derive(Debug, PartialEq)]
pub enum CoreExit {
    Stopped,
    /// It may no longer lead; it acted on nothing since it knew.
    Deposed,
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn header_ids(header: &Option<v1::CallHeader>) -> (String, String) {
    header.as_ref().map_or_else(Default::default, |h| {
        (
            h.framework_id
                .as_ref()
                .map(|f| f.value.clone())
                .unwrap_or_default(),
            h.stream_id.clone(),
        )
    })
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An identity's secret (agents and frameworks alike): with `known` (the
/// hash issued before), the `presented` secret must match and nothing new
/// is issued; without, a new secret is issued. Returns the secret issued,
/// if any, and the hash to keep — or `None` when the secret does not match.
fn check_or_issue_secret(
    known: Option<&[u8]>,
    presented: &str,
) -> Option<(Option<String>, Vec<u8>)> {
    match known.filter(|h| !h.is_empty()) {
        Some(hash) => (sha256(presented) == hash).then(|| (None, hash.to_vec())),
        None => {
            let secret = format!("{}{}", new_id(), new_id()).replace('-', "");
            let hash = sha256(&secret);
            Some((Some(secret), hash))
        }
    }
}

fn sha256(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

/// The id a peer asked to resume, or a fresh one.
fn id_or_new(requested: Option<&str>) -> String {
    requested
        .filter(|r| !r.is_empty())
        .map_or_else(new_id, str::to_string)
}

/// The core's queues, both bounded: frameworks' calls and operators'
/// actions apart from agents' messages, and taken first, so an
/// acknowledgement (which lets an agent and a framework move on) never
/// waits behind a flood of agent updates.
pub struct Inbox {
    calls: mpsc::Receiver<CoreMsg>,
    agents: mpsc::Receiver<CoreMsg>,
}

/// The sending side of an [`Inbox`].
#[derive(Clone)]
pub struct InboxSender {
    calls: mpsc::Sender<CoreMsg>,
    agents: mpsc::Sender<CoreMsg>,
}

/// An inbox whose lanes hold `capacity` messages each.
pub fn inbox(capacity: usize) -> (InboxSender, Inbox) {
    let (calls_tx, calls) = mpsc::channel(capacity);
    let (agents_tx, agents) = mpsc::channel(capacity);
    (
        InboxSender {
            calls: calls_tx,
            agents: agents_tx,
        },
        Inbox { calls, agents },
    )
}

impl InboxSender {
    fn lane(&self, msg: &CoreMsg) -> &mpsc::Sender<CoreMsg> {
        match msg {
            CoreMsg::Agent { .. } | CoreMsg::AgentUsage { .. } | CoreMsg::AgentClosed { .. } => {
                &self.agents
            }
            _ => &self.calls,
        }
    }

    /// Waits for room; fails once the core has gone.
    pub async fn send(&self, msg: CoreMsg) -> Result<(), mpsc::error::SendError<CoreMsg>> {
        self.lane(&msg).send(msg).await
    }

    /// Queues without waiting; a full lane hands the message back.
    pub fn try_send(&self, msg: CoreMsg) -> Result<(), Box<mpsc::error::TrySendError<CoreMsg>>> {
        self.lane(&msg).try_send(msg).map_err(Box::new)
    }
}

impl Inbox {
    /// The next message, calls first; `None` once every sender is gone.
    async fn next(&mut self) -> Option<CoreMsg> {
        tokio::select! {
            biased;
            Some(msg) = self.calls.recv() => Some(msg),
            Some(msg) = self.agents.recv() => Some(msg),
            else => None,
        }
    }

    pub(crate) fn try_next(&mut self) -> Option<CoreMsg> {
        self.calls
            .try_recv()
            .or_else(|_| self.agents.try_recv())
            .ok()
    }

    /// Drops what is queued (for a term that ended: whoever waits on a
    /// reply sees it dropped); returns how many.
    pub fn discard_queued(&mut self) -> usize {
        std::iter::from_fn(|| self.try_next()).count()
    }
}

/// What began a turn of the core. Made once per turn and handled at
/// once, so its size is a move, not memory held: boxing the message would
/// cost an allocation per turn instead.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Message(CoreMsg),
    Tick,
    /// A reader asked, or a publication is due.
    Publication,
    /// A framework that waited on its stream has room in it.
    StreamRoom,
    /// The registry committed more (a registration may be waiting on it).
    Committed,
}

/// Resolves at `at`, or never.
async fn wait_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `future` does, or never if there is none.
async fn wait_for(future: Option<impl std::future::Future<Output = ()>>) {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Most messages handled between two allocation passes.
const MAX_BURST: usize = 4096;

/// A turn this long is logged (`warn`) with what took the time: every
/// message and reader waited for it, and at 10,000 tasks a second one
/// such turn holds up a percent of the tasks, the latency's whole p99.
const SLOW_TURN: std::time::Duration = std::time::Duration::from_millis(50);

/// A burst's size and its slowest message.
#[derive(Default)]
struct Burst {
    messages: usize,
    slowest: Option<(&'static str, std::time::Duration)>,
}

/// The default refusal of a decline without filters (Mesos: 5 s).
const DEFAULT_REFUSE_SECONDS: f64 = 5.0;

impl Core {
    /// A master with no agents or frameworks (before recovery).
    fn empty(
        config: MasterConfig,
        events: crate::events::EventSender,
        registry: Registry,
        clock: recovery::WallClock,
    ) -> Self {
        let mut allocator = DrfAllocator::with_policy(config.offer_policy);
        for (role, weight) in &config.role_weights {
            allocator.set_weight(role, *weight);
        }
        let now = Instant::now();
        Core {
            config,
            started: now,
            allocator: Box::new(allocator),
            agents: Tracked::new(),
            frameworks: Tracked::new(),
            offers: OfferBook::tracking_changes(),
            tasks: Tracked::new(),
            tasks_by_agent: FastMap::default(),
            read: publish::ReadModel::new(),
            completed: VecDeque::new(),
            allocation_needed: false,
            full_pass_due: true,
            last_allocation: now,
            last_heartbeat: now,
            events,
            metrics: Metrics::default(),
            awaiting_ack: FastMap::default(),
            acks_for_agents: FastMap::default(),
            agent_of_conn: FastMap::default(),
            registry,
            awaiting_registrations: Default::default(),
            gone_agents: HashSet::new(),
            clock,
            deposed: false,
            agent_http_token: String::new(),
            heartbeat_terms: Arc::default(),
        }
    }

    /// Where the core keeps the heartbeat terms current for agents'
    /// connections.
    pub fn share_heartbeat_terms(&mut self, terms: Arc<HeartbeatTerms>) {
        self.heartbeat_terms = terms;
        self.publish_heartbeat_terms();
    }

    fn publish_heartbeat_terms(&self) {
        self.heartbeat_terms
            .set(self.heartbeat_interval(), self.agent_timeout());
    }

    /// Hands `token` to agents as they register, for the master's calls to
    /// their HTTP API.
    pub fn set_agent_http_token(&mut self, token: String) {
        self.agent_http_token = token;
    }

    /// Whether `caller` may do `action` under the policy in force.
    fn allows(&self, caller: &Caller, action: Action<'_>) -> bool {
        self.config.auth.policy().allows(caller, action)
    }

    /// Publishes snapshots through `publisher` (whose readers the HTTP
    /// handlers hold).
    pub fn publish_to(&mut self, publisher: crate::snapshot::Publisher) {
        self.read.publish_to(publisher);
        self.publish();
    }

    fn now_ms(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Runs the core until every sender is gone or `shutdown` resolves —
    /// or, for a leader on etcd, until it may no longer lead (`fence`
    /// invalid, or a registry write refused): then it stops acting at once
    /// and says so. Either way every agent's and framework's session ends
    /// (they find whoever serves next). The inbox stays the caller's, for
    /// the core of this master's next term as leader.
    pub async fn run(
        mut self,
        inbox: &mut Inbox,
        shutdown: impl std::future::Future<Output = ()>,
        fence: Option<agora_store::election::Leadership>,
    ) -> CoreExit {
        let tick = (self.config.agent_timeout / 4)
            .min(self.config.allocation_interval)
            .max(Duration::from_millis(10));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let leading = |fence: &Option<agora_store::election::Leadership>| {
            fence.as_ref().is_none_or(|f| f.is_valid())
        };
        let read_requests = self.read.requests();
        loop {
            // A publication under way goes on at once, a slice a turn.
            let publish_at = if self.read.publishing() {
                Some(Instant::now())
            } else {
                self.unpublished().then(|| self.read.next_due()).flatten()
            };
            let stream_room = self.room_for_waiting_frameworks();
            let durability =
                (!self.awaiting_registrations.is_empty()).then(|| self.registry.durability());
            let woken_by = tokio::select! {
                msg = inbox.next() => match msg {
                    Some(msg) => Wake::Message(msg),
                    None => break,
                },
                _ = timer.tick() => Wake::Tick,
                () = wait_until(publish_at) => Wake::Publication,
                () = read_requests.wait() => Wake::Publication,
                () = wait_for(stream_room) => Wake::StreamRoom,
                () = wait_for(durability.as_deref().map(crate::registry::Durability::advanced)) => Wake::Committed,
                () = &mut shutdown => break,
            };
            let turn = std::time::Instant::now();
            // Checked before acting on anything: a leader that was frozen
            // past its lease wakes up deposed.
            if !leading(&fence) {
                return self.step_down();
            }
            let (woken_by, burst) = match woken_by {
                Wake::Message(msg) => ("messages", self.handle_burst(msg, inbox)),
                Wake::Tick => {
                    self.tick();
                    ("the tick", Burst::default())
                }
                Wake::Publication => ("a reader or a due publication", Burst::default()),
                Wake::StreamRoom => ("room in a framework's stream", Burst::default()),
                Wake::Committed => ("a registry commit", Burst::default()),
            };
            let handled = turn.elapsed();
            self.end_of_burst();
            let ended = turn.elapsed();
            self.publish_if_wanted();
            let took = turn.elapsed();
            self.metrics.core_turn_seconds.observe(took.as_secs_f64());
            if took >= SLOW_TURN {
                let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
                let (slowest, slowest_ms) =
                    burst.slowest.map_or(("none", 0.0), |(k, d)| (k, ms(d)));
                warn!(
                    took_ms = ms(took),
                    woken_by,
                    messages = burst.messages,
                    handling_ms = ms(handled),
                    slowest,
                    slowest_ms,
                    commit_backlogs_and_allocation_ms = ms(ended - handled),
                    publication_ms = ms(took - ended),
                    "a slow turn of the core"
                );
            }
            if self.deposed {
                return self.step_down();
            }
        }
        self.commit_registry();
        self.end_sessions(Status::unavailable("the master stopped"));
        info!("master core stopped");
        CoreExit::Stopped
    }

    /// `first` and what else is queued, before allocating: one pass per
    /// burst, and a burst no longer than MAX_BURST, so offers, commits and
    /// backlogs keep moving under load. Readers that ask meanwhile are
    /// answered within it ([`Core::reader_checkpoint`]), not at its end.
    fn handle_burst(&mut self, first: CoreMsg, inbox: &mut Inbox) -> Burst {
        self.start_reader_clock();
        let mut burst = Burst::default();
        let mut next = Some(first);
        // One clock read per message serves both its timing and the look
        // for readers; what is done for readers is no message's time.
        let mut started = std::time::Instant::now();
        while let Some(msg) = next {
            let kind = msg.kind();
            self.handle(msg);
            let now = std::time::Instant::now();
            let took = now - started;
            if burst.slowest.is_none_or(|(_, slowest)| took > slowest) {
                burst.slowest = Some((kind, took));
            }
            burst.messages += 1;
            if burst.messages == MAX_BURST {
                break;
            }
            started = self.reader_checkpoint_at(now);
            next = inbox.try_next();
        }
        burst
    }

    fn step_down(&mut self) -> CoreExit {
        warn!("this master no longer leads; it stops acting");
        self.end_sessions(Status::unavailable("this master no longer leads"));
        CoreExit::Deposed
    }

    /// Ends every agent's and framework's session with `status`. Their
    /// connections hold the streams open too (they answer heartbeats), so
    /// a core that merely went away would leave agents talking to a master
    /// that no longer listens.
    fn end_sessions(&mut self, status: Status) {
        for (_, session) in self.agent_of_conn.drain() {
            session.heard.revoke();
        }
        for agent in self.agents.values() {
            if let Some((_, tx)) = &agent.conn {
                tx.close(status.clone());
            }
        }
        for awaiting in self.awaiting_registrations.drain() {
            awaiting.admission.tx.close(status.clone());
        }
        for framework in self.frameworks.values() {
            if let Some((_, tx)) = &framework.stream {
                tx.close(status.clone());
            }
        }
    }

    /// What follows every burst of messages or tick: registrations whose
    /// records are now committed finished, the acknowledgements gathered,
    /// one registry commit, then one allocation pass.
    fn end_of_burst(&mut self) {
        self.admit_durable_registrations();
        self.send_acknowledgements();
        self.publish_heartbeat_terms();
        self.commit_registry();
        self.flush_backlogs();
        self.pause_offers_to_slow_frameworks();
        if self.allocation_needed {
            self.allocate();
        }
    }

    /// Hands the burst's registry changes to the registry's writer thread
    /// (it commits them, grouped with whatever else is queued, while the
    /// core goes on); a failed commit is retried by the writer (the agents
    /// resend what matters: their tasks and updates). A write refused
    /// because another master leads deposes this one.
    fn commit_registry(&mut self) {
        self.registry.commit_later();
        if let Some(e) = self.registry.take_failure() {
            if Registry::is_deposed(&e) {
                self.deposed = true;
            } else {
                warn!("{e}; retrying with the next change");
            }
        }
    }

    fn handle(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Agent {
                conn,
                tx,
                msg,
                may_join,
            } => self.agent_message(conn, tx, msg, may_join),
            CoreMsg::AgentUsage { conn, usage } => {
                if let Some(agent) = self.agent_by_conn(conn) {
                    self.record_usage(&agent, usage);
                }
            }
            CoreMsg::AgentClosed { conn } => self.agent_closed(conn),
            CoreMsg::Subscribe {
                info,
                secret,
                demand,
                caller,
                tx,
                reply,
            } => {
                let subscribed = self.subscribe(*info, &secret, &caller, tx);
                if let (Ok((framework_id, _)), Some(demand)) = (&subscribed, demand) {
                    self.allocator.set_demand(framework_id, Some(demand));
                }
                let _ = reply.send(subscribed);
            }
            CoreMsg::FrameworkClosed {
                framework_id,
                stream_id,
            } => self.framework_closed(&framework_id, &stream_id),
            CoreMsg::Call {
                header,
                caller,
                call,
                reply,
            } => {
                let _ = reply.send(self.call(header, &caller, call));
            }
            CoreMsg::Operator { op, reply } => {
                let _ = reply.send(self.operator(op));
            }
        }
    }

    // ---- timers ---------------------------------------------------------------

    fn tick(&mut self) {
        let now = Instant::now();
        let timeout = self.agent_timeout();
        // Agents with a session were last heard on it; the others before
        // their last session ended.
        let silent: Vec<String> = self
            .agent_of_conn
            .values()
            .filter(|session| now.duration_since(session.last_spoke()) > timeout)
            .map(|session| session.agent.clone())
            .chain(
                self.agents
                    .values()
                    .filter(|a| {
                        a.conn.is_none()
                            && a.status != AgentStatus::Unreachable
                            && now.duration_since(a.last_seen) > timeout
                    })
                    .map(|a| a.registered.id.clone()),
            )
            .collect();
        for agent in silent {
            self.mark_unreachable(&agent);
        }
        let removal = self.config.agent_removal_timeout;
        let forgotten: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                a.unreachable_since
                    .is_some_and(|t| now.duration_since(t) > removal)
            })
            .map(|a| a.registered.id.clone())
            .collect();
        for agent in forgotten {
            self.remove_agent(&agent);
        }

        let timeout = self.config.offer_timeout.as_millis() as Millis;
        for offer in self.offers.expired(self.now_ms(), timeout) {
            info!(offer = %offer, "offer timed out; rescinding");
            self.rescind_offer(&offer);
        }

        let gone: Vec<String> = self
            .frameworks
            .values()
            .filter(|f| {
                f.disconnected_at
                    .is_some_and(|t| now.duration_since(t) > f.failover_timeout)
            })
            .map(|f| f.id.clone())
            .collect();
        for framework in gone {
            info!(framework = %framework, "framework failover timeout passed; tearing down");
            self.remove_framework(&framework);
        }

        if now.duration_since(self.last_heartbeat) >= self.config.framework_heartbeat {
            self.last_heartbeat = now;
            for f in self.frameworks.values() {
                if let Some((_, tx)) = &f.stream {
                    let _ = tx.send(Event {
                        event: Some(event::Event::Heartbeat(event::Heartbeat {})),
                    });
                }
            }
        }
        // Updates whose acknowledgement never came (framework gone) are
        // not measured.
        self.awaiting_ack
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(300));
        if now.duration_since(self.last_allocation) >= self.config.allocation_interval {
            self.allocation_needed = true;
            self.full_pass_due = true;
        }
    }
}
