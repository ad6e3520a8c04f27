//! The master core: one task that owns the authoritative cluster state and is
//! driven by messages from the connection tasks (gRPC streams, HTTP
//! handlers) and by its own timer. Nothing else mutates the state, so no lock
//! is ever held across an `.await`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use agora_proto::v1::accept_refusal::Reason as Refusal;
use agora_proto::v1::{
    self, AgentMessage, Event, MasterMessage, TaskState, TaskStatus, agent_message, event,
    master_message, task_status,
};
use agora_proto::{Resources, is_terminal, refusal_status};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, info_span, warn};

use crate::allocator::{Allocator, DrfAllocator, Millis, RoleShare};
use crate::config::MasterConfig;
use crate::events::ClusterEvent;
use crate::metrics::{Gauges, Metrics};
use crate::state::{
    AgentResources, AgentView, FrameworkView, OfferView, SandboxView, StateView, TaskView,
    UsageView,
};

/// Outbound half of an agent's session stream.
pub type AgentTx = mpsc::UnboundedSender<Result<MasterMessage, Status>>;
/// Outbound half of a framework's event stream.
pub type FrameworkTx = mpsc::UnboundedSender<Result<Event, Status>>;
/// The reply to a framework call.
pub type CallReply = oneshot::Sender<Result<(), Status>>;

/// A framework call, after the gRPC layer unpacked it.
#[derive(Debug)]
pub enum Call {
    Accept(v1::AcceptRequest),
    Decline(v1::DeclineRequest),
    Revive,
    Suppress,
    Kill {
        task_id: v1::TaskId,
        grace: Option<f64>,
    },
    Acknowledge(v1::AcknowledgeRequest),
    Reconcile(Vec<v1::TaskId>),
    Teardown,
}

/// What the core is told.
pub enum CoreMsg {
    Agent {
        conn: u64,
        tx: AgentTx,
        msg: AgentMessage,
    },
    AgentClosed {
        conn: u64,
    },
    Subscribe {
        info: v1::FrameworkInfo,
        tx: FrameworkTx,
        reply: oneshot::Sender<Result<(String, String), Status>>,
    },
    FrameworkClosed {
        framework_id: String,
        stream_id: String,
    },
    Call {
        header: Option<v1::CallHeader>,
        call: Call,
        reply: CallReply,
    },
    Snapshot {
        reply: oneshot::Sender<StateView>,
    },
    Roles {
        reply: oneshot::Sender<Vec<RoleShare>>,
    },
    /// The announced web UI / API address of the connected framework named
    /// `name`, if there is one.
    FrameworkUrl {
        name: String,
        reply: oneshot::Sender<Option<String>>,
    },
    Metrics {
        reply: oneshot::Sender<String>,
    },
    Operator {
        op: Operator,
        reply: oneshot::Sender<Result<(), OperatorError>>,
    },
}

/// An operator's action through the HTTP API.
#[derive(Debug)]
pub enum Operator {
    SetWeight {
        role: String,
        weight: f64,
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
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OperatorError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
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

struct AgentEntry {
    id: String,
    hostname: String,
    endpoint: String,
    attributes: Vec<v1::Attribute>,
    total: Resources,
    status: AgentStatus,
    conn: Option<(u64, AgentTx)>,
    last_seen: Instant,
    /// No new offers (an operator drain); survives re-registration.
    draining: bool,
}

struct FrameworkEntry {
    id: String,
    info: v1::FrameworkInfo,
    role: String,
    stream: Option<(String, FrameworkTx)>,
    disconnected_at: Option<Instant>,
    failover_timeout: Duration,
}

struct OfferEntry {
    framework: String,
    agent: String,
    resources: Resources,
    created: Instant,
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
    agents: HashMap<String, AgentEntry>,
    frameworks: HashMap<String, FrameworkEntry>,
    offers: HashMap<String, OfferEntry>,
    tasks: HashMap<TaskKey, TaskEntry>,
    completed: VecDeque<TaskKey>,
    allocation_needed: bool,
    /// The periodic pass over every agent is due (refusal filters that
    /// expired are only seen there); other passes cover what changed.
    full_pass_due: bool,
    last_allocation: Instant,
    last_heartbeat: Instant,
    events: broadcast::Sender<ClusterEvent>,
    metrics: Metrics,
    /// Relayed updates awaiting the framework's acknowledgement, by uuid.
    awaiting_ack: HashMap<Vec<u8>, Instant>,
    /// Which agent each open session belongs to: every heartbeat and update
    /// is looked up here, so no scan over all agents.
    agent_of_conn: HashMap<u64, String>,
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

/// The id a peer asked to resume, or a fresh one.
fn id_or_new(requested: Option<&str>) -> String {
    requested
        .filter(|r| !r.is_empty())
        .map_or_else(new_id, str::to_string)
}

/// The default refusal of a decline without filters (Mesos: 5 s).
const DEFAULT_REFUSE_SECONDS: f64 = 5.0;

impl Core {
    /// A master with no agents or frameworks.
    pub fn new(config: MasterConfig, events: broadcast::Sender<ClusterEvent>) -> Self {
        let mut allocator = DrfAllocator::with_policy(config.offer_policy);
        for (role, weight) in &config.role_weights {
            allocator.set_weight(role, *weight);
        }
        let now = Instant::now();
        Core {
            config,
            started: now,
            allocator: Box::new(allocator),
            agents: HashMap::new(),
            frameworks: HashMap::new(),
            offers: HashMap::new(),
            tasks: HashMap::new(),
            completed: VecDeque::new(),
            allocation_needed: false,
            full_pass_due: true,
            last_allocation: now,
            last_heartbeat: now,
            events,
            metrics: Metrics::default(),
            awaiting_ack: HashMap::new(),
            agent_of_conn: HashMap::new(),
        }
    }

    fn now_ms(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// Runs the core until every sender is gone or `shutdown` resolves.
    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<CoreMsg>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let tick = (self.config.agent_timeout / 4)
            .min(self.config.allocation_interval)
            .max(Duration::from_millis(10));
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    // Take what else is queued before allocating: one pass per burst.
                    while let Ok(msg) = rx.try_recv() {
                        self.handle(msg);
                    }
                }
                _ = timer.tick() => self.tick(),
                () = &mut shutdown => break,
            }
            if self.allocation_needed {
                self.allocate();
            }
        }
        info!("master core stopped");
    }

    fn handle(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Agent { conn, tx, msg } => self.agent_message(conn, tx, msg),
            CoreMsg::AgentClosed { conn } => self.agent_closed(conn),
            CoreMsg::Subscribe { info, tx, reply } => {
                let _ = reply.send(self.subscribe(info, tx));
            }
            CoreMsg::FrameworkClosed {
                framework_id,
                stream_id,
            } => self.framework_closed(&framework_id, &stream_id),
            CoreMsg::Call {
                header,
                call,
                reply,
            } => {
                let _ = reply.send(self.call(header, call));
            }
            CoreMsg::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            CoreMsg::Roles { reply } => {
                let _ = reply.send(self.allocator.roles());
            }
            CoreMsg::FrameworkUrl { name, reply } => {
                let url = self
                    .frameworks
                    .values()
                    .filter(|f| f.info.name == name && !f.info.webui_url.is_empty())
                    // A connected one before one that is away.
                    .max_by_key(|f| f.stream.is_some())
                    .map(|f| f.info.webui_url.clone());
                let _ = reply.send(url);
            }
            CoreMsg::Metrics { reply } => {
                let _ = reply.send(self.render_metrics());
            }
            CoreMsg::Operator { op, reply } => {
                let _ = reply.send(self.operator(op));
            }
        }
    }

    // ---- timers ---------------------------------------------------------------

    fn tick(&mut self) {
        let now = Instant::now();
        let silent: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                a.status != AgentStatus::Unreachable
                    && now.duration_since(a.last_seen) > self.config.agent_timeout
            })
            .map(|a| a.id.clone())
            .collect();
        for agent in silent {
            self.mark_unreachable(&agent);
        }

        let expired: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| now.duration_since(o.created) > self.config.offer_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for offer in expired {
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
                    let _ = tx.send(Ok(Event {
                        event: Some(event::Event::Heartbeat(event::Heartbeat {})),
                    }));
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

    // ---- allocation and offers -----------------------------------------------------

    fn allocate(&mut self) {
        self.allocation_needed = false;
        self.last_allocation = Instant::now();
        let pass = std::time::Instant::now();
        let allocations = if std::mem::take(&mut self.full_pass_due) {
            self.allocator.allocate(self.now_ms())
        } else {
            self.allocator.allocate_changed(self.now_ms())
        };
        self.metrics
            .allocation_pass_seconds
            .observe(pass.elapsed().as_secs_f64());
        let mut by_framework: BTreeMap<String, Vec<v1::Offer>> = BTreeMap::new();
        for a in allocations {
            let (Some(agent), Some(framework)) =
                (self.agents.get(&a.agent), self.frameworks.get(&a.framework))
            else {
                self.allocator
                    .recover(&a.framework, &a.agent, &a.resources, None);
                continue;
            };
            if framework.stream.is_none() || agent.status != AgentStatus::Active {
                self.allocator
                    .recover(&a.framework, &a.agent, &a.resources, None);
                continue;
            }
            let id = new_id();
            let offer = v1::Offer {
                id: Some(v1::OfferId { value: id.clone() }),
                framework_id: Some(v1::FrameworkId {
                    value: a.framework.clone(),
                }),
                agent_id: Some(v1::AgentId {
                    value: a.agent.clone(),
                }),
                hostname: agent.hostname.clone(),
                resources: a.resources.to_proto(),
                attributes: agent.attributes.clone(),
                address: task_address(&agent.endpoint, &agent.hostname),
            };
            self.offers.insert(
                id,
                OfferEntry {
                    framework: a.framework.clone(),
                    agent: a.agent,
                    resources: a.resources,
                    created: Instant::now(),
                },
            );
            self.metrics.offers_made += 1;
            by_framework.entry(a.framework).or_default().push(offer);
        }
        for (framework, offers) in by_framework {
            debug!(framework = %framework, count = offers.len(), "sending offers");
            let sent = self
                .frameworks
                .get(&framework)
                .and_then(|f| f.stream.as_ref())
                .is_some_and(|(_, tx)| {
                    tx.send(Ok(Event {
                        event: Some(event::Event::Offers(event::Offers {
                            offers: offers.clone(),
                        })),
                    }))
                    .is_ok()
                });
            if !sent {
                for offer in offers {
                    if let Some(id) = offer.id {
                        self.take_offer(&id.value, None);
                    }
                }
            }
        }
    }

    /// Removes an offer and returns its resources to the allocator.
    fn take_offer(&mut self, offer_id: &str, refuse: Option<Duration>) -> Option<OfferEntry> {
        let offer = self.offers.remove(offer_id)?;
        self.allocator
            .offer_ended(&offer.framework, &offer.resources);
        let until = refuse.map(|d| self.now_ms().saturating_add(d.as_millis() as Millis));
        self.allocator
            .recover(&offer.framework, &offer.agent, &offer.resources, until);
        self.allocation_needed = true;
        Some(offer)
    }

    fn rescind_offer(&mut self, offer_id: &str) {
        let Some(offer) = self.take_offer(offer_id, None) else {
            return;
        };
        self.metrics.offers_rescinded += 1;
        if let Some((_, tx)) = self
            .frameworks
            .get(&offer.framework)
            .and_then(|f| f.stream.as_ref())
        {
            let _ = tx.send(Ok(Event {
                event: Some(event::Event::Rescind(event::Rescind {
                    offer_id: Some(v1::OfferId {
                        value: offer_id.to_string(),
                    }),
                })),
            }));
        }
    }

    fn rescind_where(&mut self, pred: impl Fn(&OfferEntry) -> bool) {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.rescind_offer(&id);
        }
    }

    // ---- agents -----------------------------------------------------------------------

    fn agent_message(&mut self, conn: u64, tx: AgentTx, msg: AgentMessage) {
        match msg.message {
            Some(agent_message::Message::Register(register)) => {
                self.register_agent(conn, tx, register)
            }
            Some(agent_message::Message::StatusUpdate(update)) => {
                if let Some(agent) = self.agent_by_conn(conn) {
                    self.status_update(&agent, update);
                } else {
                    refuse_unregistered(&tx);
                }
            }
            Some(agent_message::Message::Heartbeat(heartbeat)) => {
                let Some(agent) = self.agent_by_conn(conn) else {
                    refuse_unregistered(&tx);
                    return;
                };
                for u in heartbeat.usage {
                    let key = (
                        u.framework_id.map(|f| f.value).unwrap_or_default(),
                        u.task_id.map(|t| t.value).unwrap_or_default(),
                    );
                    if let Some(task) = self.tasks.get_mut(&key).filter(|t| t.agent == agent) {
                        task.usage = u.usage;
                    }
                }
            }
            None => warn!(conn, "empty agent message"),
        }
    }

    /// The agent registered on `conn`, refreshing its liveness.
    fn agent_by_conn(&mut self, conn: u64) -> Option<String> {
        let id = self.agent_of_conn.get(&conn)?;
        let agent = self.agents.get_mut(id)?;
        agent.last_seen = Instant::now();
        Some(agent.id.clone())
    }

    fn register_agent(&mut self, conn: u64, tx: AgentTx, register: agent_message::Register) {
        let Some(info) = register.agent_info else {
            let _ = tx.send(Err(Status::invalid_argument(
                "register: agent_info is required",
            )));
            return;
        };
        let total = match Resources::from_proto(&info.resources) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(Status::invalid_argument(format!(
                    "register: agent_info.resources: {e}"
                ))));
                return;
            }
        };
        let id = id_or_new(info.id.as_ref().map(|i| i.value.as_str()));
        let span = info_span!("agent", agent = %id);
        let _enter = span.enter();
        let returning = self.agents.contains_key(&id);
        info!(hostname = %info.hostname, resources = %total, returning, "agent registered");

        // Offers made before (re-)registration describe a stale view of the agent.
        self.rescind_where(|o| o.agent == id);
        self.allocator.remove_agent(&id);

        let draining = self.agents.get(&id).is_some_and(|a| a.draining);
        self.emit(if returning {
            ClusterEvent::AgentReregistered {
                agent_id: id.clone(),
                hostname: info.hostname.clone(),
            }
        } else {
            ClusterEvent::AgentAdded {
                agent_id: id.clone(),
                hostname: info.hostname.clone(),
            }
        });
        // A session the agent left behind is no longer its own.
        if let Some((old, _)) = self.agents.get(&id).and_then(|a| a.conn.as_ref()) {
            self.agent_of_conn.remove(old);
        }
        self.agent_of_conn.insert(conn, id.clone());
        self.agents.insert(
            id.clone(),
            AgentEntry {
                draining,
                id: id.clone(),
                hostname: info.hostname.clone(),
                endpoint: info.endpoint.clone(),
                attributes: info.attributes.clone(),
                total: total.clone(),
                status: AgentStatus::Active,
                conn: Some((conn, tx.clone())),
                last_seen: Instant::now(),
            },
        );

        // Reconcile the tasks the agent reports with what the master knows.
        let mut reported: HashSet<TaskKey> = HashSet::new();
        for t in register.tasks {
            let framework = t.framework_id.map(|f| f.value).unwrap_or_default();
            let Some(task) = t.task else { continue };
            let task_id = task
                .task_id
                .as_ref()
                .map(|i| i.value.clone())
                .unwrap_or_default();
            let state = TaskState::try_from(t.state).unwrap_or(TaskState::TaskUnknown);
            let key = (framework.clone(), task_id.clone());
            reported.insert(key.clone());
            if !self.frameworks.contains_key(&framework) {
                // The master restarted: keep the framework's place until it resubscribes.
                self.frameworks.insert(
                    framework.clone(),
                    FrameworkEntry {
                        id: framework.clone(),
                        info: v1::FrameworkInfo::default(),
                        role: "*".into(),
                        stream: None,
                        disconnected_at: Some(Instant::now()),
                        failover_timeout: Duration::from_secs(7 * 24 * 3600),
                    },
                );
                self.allocator.add_framework(&framework, "*", false);
            }
            let resources = Resources::from_proto(&task.resources).unwrap_or_default();
            match self.tasks.get_mut(&key) {
                Some(entry) => {
                    let was = entry.state;
                    entry.agent = id.clone();
                    if was == TaskState::TaskUnreachable && !is_terminal(state) {
                        entry.state = state;
                        entry.message = "agent re-registered".into();
                        entry.reason = task_status::Reason::AgentReregistered;
                        let status = self.master_status(
                            &key,
                            state,
                            "agent re-registered",
                            task_status::Reason::AgentReregistered,
                        );
                        self.send_update(&framework, status);
                    }
                }
                None => {
                    if is_terminal(state) {
                        // Ended while the master was away; its update follows.
                        self.completed.push_back(key.clone());
                    }
                    self.tasks.insert(
                        key,
                        TaskEntry {
                            info: task,
                            agent: id.clone(),
                            resources,
                            state,
                            message: String::new(),
                            reason: task_status::Reason::None,
                            kill_requested: false,
                            usage: None,
                            healthy: None,
                        },
                    );
                }
            }
        }

        // Tasks the master placed on this agent that it no longer runs are gone.
        let lost =
            self.task_keys(|k, t| t.agent == id && !is_terminal(t.state) && !reported.contains(k));
        self.master_transition(
            lost,
            TaskState::TaskGone,
            "the agent re-registered without this task",
            task_status::Reason::AgentReregistered,
        );

        let used = self.used_on_agent(&id);
        self.allocator.add_agent(&id, total, &used);
        if draining {
            self.allocator.set_agent_active(&id, false);
        }

        let _ = tx.send(Ok(MasterMessage {
            message: Some(master_message::Message::Registered(
                master_message::Registered {
                    agent_id: Some(v1::AgentId { value: id.clone() }),
                    heartbeat_interval_seconds: (self.config.agent_timeout / 5)
                        .as_secs_f64()
                        .max(0.05),
                },
            )),
        }));

        // Kills asked for while the agent was away.
        let pending =
            self.task_keys(|_, t| t.agent == id && t.kill_requested && !is_terminal(t.state));
        for key in pending {
            self.send_kill(&key);
        }
        self.allocation_needed = true;
    }

    fn used_on_agent(&self, agent: &str) -> Vec<(String, Resources)> {
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for ((framework, _), t) in &self.tasks {
            if t.agent == agent && !is_terminal(t.state) {
                used.entry(framework.clone()).or_default().add(&t.resources);
            }
        }
        used.into_iter().collect()
    }

    fn agent_closed(&mut self, conn: u64) {
        let Some(id) = self.agent_of_conn.remove(&conn) else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        agent.conn = None;
        if agent.status == AgentStatus::Active {
            agent.status = AgentStatus::Disconnected;
        }
        let id = agent.id.clone();
        info!(agent = %id, "agent disconnected; unreachable unless it returns within the timeout");
        self.emit(ClusterEvent::AgentDisconnected {
            agent_id: id.clone(),
        });
        self.rescind_where(|o| o.agent == id);
        self.allocator.remove_agent(&id);
    }

    fn mark_unreachable(&mut self, agent_id: &str) {
        let Some(agent) = self.agents.get_mut(agent_id) else {
            return;
        };
        warn!(agent = %agent_id, "agent missed its heartbeats; marking it unreachable");
        agent.status = AgentStatus::Unreachable;
        // End the stream, so an agent that was only slow reconnects and
        // re-registers rather than talking into a dead session.
        if let Some((conn, tx)) = agent.conn.take() {
            self.agent_of_conn.remove(&conn);
            let _ = tx.send(Err(Status::unavailable(
                "agent marked unreachable; register again",
            )));
        }
        self.rescind_where(|o| o.agent == agent_id);
        self.allocator.remove_agent(agent_id);
        self.emit(ClusterEvent::AgentUnreachable {
            agent_id: agent_id.to_string(),
        });
        // Every framework hears of it (Mesos's `FAILURE` event), before the
        // task updates that follow.
        for f in self.frameworks.values() {
            if let Some((_, tx)) = &f.stream {
                let _ = tx.send(Ok(Event {
                    event: Some(event::Event::Failure(event::Failure {
                        agent_id: Some(v1::AgentId {
                            value: agent_id.to_string(),
                        }),
                        message: "the agent is unreachable: it missed its heartbeats".into(),
                    })),
                }));
            }
        }
        let keys = self.task_keys(|_, t| t.agent == agent_id && !is_terminal(t.state));
        self.master_transition(
            keys,
            TaskState::TaskUnreachable,
            "agent is unreachable",
            task_status::Reason::AgentDisconnected,
        );
    }

    // ---- tasks and status updates -----------------------------------------------------

    /// Keys of the tasks matching `pred`.
    fn task_keys(&self, pred: impl Fn(&TaskKey, &TaskEntry) -> bool) -> Vec<TaskKey> {
        self.tasks
            .iter()
            .filter(|(k, t)| pred(k, t))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Moves tasks to a state the master decides (not the agent), and tells
    /// their frameworks.
    fn master_transition(
        &mut self,
        keys: Vec<TaskKey>,
        state: TaskState,
        message: &str,
        reason: task_status::Reason,
    ) {
        for key in keys {
            let status = self.master_status(&key, state, message, reason);
            self.set_task_state(&key, &status);
            self.send_update(&key.0, status);
        }
    }

    fn master_status(
        &self,
        key: &TaskKey,
        state: TaskState,
        message: &str,
        reason: task_status::Reason,
    ) -> TaskStatus {
        TaskStatus {
            task_id: Some(v1::TaskId {
                value: key.1.clone(),
            }),
            state: state as i32,
            message: message.to_string(),
            source: task_status::Source::Master as i32,
            reason: reason as i32,
            agent_id: self.tasks.get(key).map(|t| v1::AgentId {
                value: t.agent.clone(),
            }),
            timestamp: now_seconds(),
            uuid: Vec::new(),
            exit_code: None,
            healthy: self.tasks.get(key).and_then(|t| t.healthy),
        }
    }

    /// Records a task's new state; frees its resources when it ends.
    fn set_task_state(&mut self, key: &TaskKey, status: &TaskStatus) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let was_terminal = is_terminal(task.state);
        let changed = task.state != state || task.message != status.message;
        task.state = state;
        task.message = status.message.clone();
        if status.healthy.is_some() {
            task.healthy = status.healthy;
        }
        task.reason = task_status::Reason::try_from(status.reason).unwrap_or_default();
        let event = ClusterEvent::TaskUpdated {
            framework_id: key.0.clone(),
            task_id: key.1.clone(),
            agent_id: task.agent.clone(),
            state: state.as_str_name().to_string(),
            message: status.message.clone(),
        };
        if changed {
            self.emit(event);
        }
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        if is_terminal(state) && !was_terminal {
            task.usage = None;
            let (agent, resources) = (task.agent.clone(), task.resources.clone());
            self.allocator.recover(&key.0, &agent, &resources, None);
            self.allocation_needed = true;
            self.completed.push_back(key.clone());
            while self.completed.len() > self.config.completed_task_history {
                if let Some(old) = self.completed.pop_front()
                    && self.tasks.get(&old).is_some_and(|t| is_terminal(t.state))
                {
                    self.tasks.remove(&old);
                }
            }
        }
    }

    fn send_update(&self, framework: &str, status: TaskStatus) -> bool {
        self.frameworks
            .get(framework)
            .and_then(|f| f.stream.as_ref())
            .is_some_and(|(_, tx)| {
                tx.send(Ok(Event {
                    event: Some(event::Event::Update(event::Update {
                        status: Some(status),
                    })),
                }))
                .is_ok()
            })
    }

    fn status_update(&mut self, agent: &str, update: v1::StatusUpdate) {
        let framework = update.framework_id.map(|f| f.value).unwrap_or_default();
        let Some(mut status) = update.status else {
            return;
        };
        let task_id = status
            .task_id
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        let key = (framework.clone(), task_id.clone());
        status.agent_id = Some(v1::AgentId {
            value: agent.to_string(),
        });
        debug!(framework = %framework, task = %task_id, state = status.state, "status update");
        self.set_task_state(&key, &status);
        self.metrics.status_updates += 1;
        if !self.frameworks.contains_key(&framework) {
            // Nobody to deliver to: acknowledge on the framework's behalf so the
            // agent stops retrying.
            self.send_to_agent(
                agent,
                master_message::Message::Acknowledge(master_message::Acknowledge {
                    framework_id: Some(v1::FrameworkId { value: framework }),
                    task_id: status.task_id,
                    uuid: status.uuid,
                }),
            );
            return;
        }
        // If the framework is disconnected the agent retries later.
        let uuid = status.uuid.clone();
        if self.send_update(&framework, status)
            && !uuid.is_empty()
            && self.awaiting_ack.len() < 100_000
        {
            self.awaiting_ack.entry(uuid).or_insert_with(Instant::now);
        }
    }

    fn send_to_agent(&self, agent: &str, message: master_message::Message) -> bool {
        self.agents
            .get(agent)
            .and_then(|a| a.conn.as_ref())
            .is_some_and(|(_, tx)| {
                tx.send(Ok(MasterMessage {
                    message: Some(message),
                }))
                .is_ok()
            })
    }

    fn send_kill(&mut self, key: &TaskKey) {
        self.send_kill_with_grace(key, None);
    }

    /// Asks the task's agent to kill it; `grace` overrides the task's own
    /// kill grace period.
    fn send_kill_with_grace(&mut self, key: &TaskKey, grace: Option<f64>) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        task.kill_requested = true;
        let agent = task.agent.clone();
        self.send_to_agent(
            &agent,
            master_message::Message::Kill(master_message::Kill {
                framework_id: Some(v1::FrameworkId {
                    value: key.0.clone(),
                }),
                task_id: Some(v1::TaskId {
                    value: key.1.clone(),
                }),
                kill_grace_period: grace,
            }),
        );
    }

    // ---- frameworks ----------------------------------------------------------------------

    fn subscribe(
        &mut self,
        info: v1::FrameworkInfo,
        tx: FrameworkTx,
    ) -> Result<(String, String), Status> {
        if info.name.trim().is_empty() {
            return Err(Status::invalid_argument(
                "framework_info.name must not be empty",
            ));
        }
        if !(info.failover_timeout.is_finite() && info.failover_timeout >= 0.0) {
            return Err(Status::invalid_argument(
                "framework_info.failover_timeout must be a finite number >= 0",
            ));
        }
        let role = if info.role.is_empty() {
            "*".to_string()
        } else {
            info.role.clone()
        };
        let id = id_or_new(info.id.as_ref().map(|i| i.value.as_str()));
        let stream_id = new_id();
        if let Some((_, old)) = self.frameworks.get_mut(&id).and_then(|f| f.stream.take()) {
            let _ = old.send(Ok(Event {
                event: Some(event::Event::Error(event::Error {
                    message: "framework failed over to a new subscription".into(),
                })),
            }));
        }
        // A new subscription starts from a clean slate of offers.
        self.rescind_where(|o| o.framework == id);
        let mut info = info;
        info.id = Some(v1::FrameworkId { value: id.clone() });
        info!(framework = %id, name = %info.name, role = %role, "framework subscribed");
        self.emit(ClusterEvent::FrameworkAdded {
            framework_id: id.clone(),
            name: info.name.clone(),
            role: role.clone(),
        });
        self.frameworks.insert(
            id.clone(),
            FrameworkEntry {
                id: id.clone(),
                failover_timeout: Duration::from_secs_f64(info.failover_timeout.min(1e9)),
                info,
                role: role.clone(),
                stream: Some((stream_id.clone(), tx.clone())),
                disconnected_at: None,
            },
        );
        self.allocator.add_framework(&id, &role, true);
        let _ = tx.send(Ok(Event {
            event: Some(event::Event::Subscribed(event::Subscribed {
                framework_id: Some(v1::FrameworkId { value: id.clone() }),
                stream_id: stream_id.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat.as_secs_f64(),
            })),
        }));
        self.allocation_needed = true;
        Ok((id, stream_id))
    }

    fn framework_closed(&mut self, framework_id: &str, stream_id: &str) {
        let Some(f) = self.frameworks.get_mut(framework_id) else {
            return;
        };
        if f.stream.as_ref().is_none_or(|(s, _)| s != stream_id) {
            return;
        }
        info!(framework = %framework_id, "framework disconnected");
        let _ = self.events.send(ClusterEvent::FrameworkDisconnected {
            framework_id: framework_id.to_string(),
        });
        f.stream = None;
        f.disconnected_at = Some(Instant::now());
        self.allocator.set_framework_active(framework_id, false);
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.framework == framework_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.take_offer(&id, None);
        }
    }

    fn remove_framework(&mut self, framework_id: &str) {
        let Some(mut f) = self.frameworks.remove(framework_id) else {
            return;
        };
        self.emit(ClusterEvent::FrameworkRemoved {
            framework_id: framework_id.to_string(),
        });
        if let Some((_, tx)) = f.stream.take() {
            let _ = tx.send(Err(Status::aborted("framework torn down")));
        }
        let offers: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.framework == framework_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in offers {
            self.offers.remove(&id);
        }
        let live = self.task_keys(|(fw, _), t| fw == framework_id && !is_terminal(t.state));
        for key in live {
            self.send_kill(&key);
        }
        self.allocator.remove_framework(framework_id);
        self.allocation_needed = true;
    }

    fn call(&mut self, header: Option<v1::CallHeader>, call: Call) -> Result<(), Status> {
        let (framework_id, stream_id) = header_ids(&header);
        let Some(f) = self.frameworks.get(&framework_id) else {
            return Err(Status::not_found(format!(
                "unknown framework `{framework_id}`"
            )));
        };
        if f.stream.as_ref().is_none_or(|(s, _)| *s != stream_id) {
            return Err(Status::failed_precondition(format!(
                "stream `{stream_id}` is not framework `{framework_id}`'s current subscription"
            )));
        }
        let span = info_span!("framework", framework = %framework_id);
        let _enter = span.enter();
        match call {
            Call::Accept(req) => self.accept(&framework_id, req),
            Call::Decline(req) => {
                let refuse = refuse_duration(req.filters.as_ref())?;
                for id in req.offer_ids {
                    if self
                        .offers
                        .get(&id.value)
                        .is_some_and(|o| o.framework == framework_id)
                    {
                        self.take_offer(&id.value, refuse);
                        self.metrics.offers_declined += 1;
                    }
                }
                Ok(())
            }
            Call::Revive => {
                self.allocator.revive(&framework_id);
                self.allocation_needed = true;
                Ok(())
            }
            Call::Suppress => {
                self.allocator.suppress(&framework_id);
                Ok(())
            }
            Call::Kill { task_id, grace } => {
                if grace.is_some_and(|g| !(g.is_finite() && (0.0..=3600.0).contains(&g))) {
                    return Err(Status::invalid_argument(
                        "kill_grace_period must be between 0 and 3600 seconds",
                    ));
                }
                let key = (framework_id.clone(), task_id.value.clone());
                match self.tasks.get(&key) {
                    Some(t) if !is_terminal(t.state) => {
                        self.send_kill_with_grace(&key, grace);
                        Ok(())
                    }
                    Some(_) => Err(Status::failed_precondition(format!(
                        "task `{}` has already ended",
                        task_id.value
                    ))),
                    None => Err(Status::not_found(format!(
                        "unknown task `{}`",
                        task_id.value
                    ))),
                }
            }
            Call::Acknowledge(req) => {
                let task_id = req.task_id.map(|t| t.value).unwrap_or_default();
                let agent = match req.agent_id.map(|a| a.value).filter(|a| !a.is_empty()) {
                    Some(a) => a,
                    None => self
                        .tasks
                        .get(&(framework_id.clone(), task_id.clone()))
                        .map(|t| t.agent.clone())
                        .ok_or_else(|| Status::not_found(format!("unknown task `{task_id}`")))?,
                };
                if req.uuid.is_empty() {
                    return Err(Status::invalid_argument("acknowledge: uuid is required"));
                }
                if let Some(relayed) = self.awaiting_ack.remove(&req.uuid) {
                    self.metrics
                        .status_update_ack_seconds
                        .observe(relayed.elapsed().as_secs_f64());
                }
                // An agent that is away resends the update when it returns.
                self.send_to_agent(
                    &agent,
                    master_message::Message::Acknowledge(master_message::Acknowledge {
                        framework_id: Some(v1::FrameworkId {
                            value: framework_id,
                        }),
                        task_id: Some(v1::TaskId { value: task_id }),
                        uuid: req.uuid,
                    }),
                );
                Ok(())
            }
            Call::Reconcile(task_ids) => {
                self.reconcile(&framework_id, task_ids);
                Ok(())
            }
            Call::Teardown => {
                info!("framework asked for teardown");
                self.remove_framework(&framework_id);
                Ok(())
            }
        }
    }

    fn reconcile(&mut self, framework_id: &str, task_ids: Vec<v1::TaskId>) {
        let keys: Vec<TaskKey> = if task_ids.is_empty() {
            self.tasks
                .iter()
                .filter(|((fw, _), t)| fw == framework_id && !is_terminal(t.state))
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            task_ids
                .into_iter()
                .map(|t| (framework_id.to_string(), t.value))
                .collect()
        };
        for key in keys {
            let status = match self.tasks.get(&key) {
                Some(t) => {
                    let mut s = self.master_status(
                        &key,
                        t.state,
                        &t.message,
                        task_status::Reason::Reconciliation,
                    );
                    s.message = t.message.clone();
                    s
                }
                None => self.master_status(
                    &key,
                    TaskState::TaskUnknown,
                    "the master knows no such task",
                    task_status::Reason::Reconciliation,
                ),
            };
            self.send_update(framework_id, status);
        }
    }

    /// Validates and applies an accept. Invalid accepts launch nothing and
    /// return every named offer's resources.
    fn accept(&mut self, framework_id: &str, req: v1::AcceptRequest) -> Result<(), Status> {
        let refuse = refuse_duration(req.filters.as_ref())
            .map_err(|s| refusal_status(Refusal::InvalidFilters, s.message(), ""))?;
        let mut offer_ids: Vec<String> = Vec::new();
        let mut problem: Option<(Refusal, String, String)> = None;
        let offers_problem = |reason, message: String| (reason, message, String::new());
        for id in &req.offer_ids {
            if offer_ids.contains(&id.value) {
                problem.get_or_insert(offers_problem(
                    Refusal::InvalidOffers,
                    format!("offer `{}` is named twice", id.value),
                ));
                continue;
            }
            match self.offers.get(&id.value) {
                Some(o) if o.framework == framework_id => offer_ids.push(id.value.clone()),
                Some(_) => {
                    problem.get_or_insert(offers_problem(
                        Refusal::OfferNotOwned,
                        format!("offer `{}` belongs to another framework", id.value),
                    ));
                }
                None => {
                    problem.get_or_insert(offers_problem(
                        Refusal::OfferNotOutstanding,
                        format!(
                            "offer `{}` is not outstanding (already used, declined, rescinded or unknown)",
                            id.value
                        ),
                    ));
                }
            }
        }
        if req.offer_ids.is_empty() {
            problem.get_or_insert(offers_problem(
                Refusal::InvalidOffers,
                "accept names no offer".into(),
            ));
        }
        let agents: HashSet<&str> = offer_ids
            .iter()
            .filter_map(|id| self.offers.get(id).map(|o| o.agent.as_str()))
            .collect();
        if agents.len() > 1 {
            problem.get_or_insert(offers_problem(
                Refusal::InvalidOffers,
                "offers from different agents cannot be accepted together".into(),
            ));
        }
        let agent = agents
            .iter()
            .next()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut offered = Resources::new();
        for id in &offer_ids {
            if let Some(o) = self.offers.get(id) {
                offered.add(&o.resources);
            }
        }

        let mut launches: Vec<(v1::TaskInfo, Resources)> = Vec::new();
        if problem.is_none() {
            match self.validate_tasks(framework_id, &agent, &offered, &req.tasks) {
                Ok(l) => launches = l,
                Err(e) => problem = Some(e),
            }
        }

        if let Some((reason, problem, task)) = problem {
            warn!(%problem, "invalid accept; nothing launched");
            self.metrics.invalid_accepts += 1;
            for id in &offer_ids {
                self.take_offer(id, refuse);
            }
            return Err(refusal_status(reason, problem, &task));
        }

        let mut used = Resources::new();
        for id in &offer_ids {
            if let Some(offer) = self.offers.remove(id) {
                self.allocator.offer_ended(framework_id, &offer.resources);
            }
        }
        for (mut task, resources) in launches {
            task.agent_id = Some(v1::AgentId {
                value: agent.clone(),
            });
            let task_id = task
                .task_id
                .as_ref()
                .map(|t| t.value.clone())
                .unwrap_or_default();
            used.add(&resources);
            info!(task = %task_id, agent = %agent, resources = %resources, "launching task");
            self.metrics.tasks_launched += 1;
            self.emit(ClusterEvent::TaskUpdated {
                framework_id: framework_id.to_string(),
                task_id: task_id.clone(),
                agent_id: agent.clone(),
                state: TaskState::TaskStaging.as_str_name().to_string(),
                message: String::new(),
            });
            self.tasks.insert(
                (framework_id.to_string(), task_id),
                TaskEntry {
                    info: task.clone(),
                    agent: agent.clone(),
                    resources,
                    state: TaskState::TaskStaging,
                    message: String::new(),
                    reason: task_status::Reason::None,
                    kill_requested: false,
                    usage: None,
                    healthy: None,
                },
            );
            self.send_to_agent(
                &agent,
                master_message::Message::Launch(master_message::Launch {
                    framework_id: Some(v1::FrameworkId {
                        value: framework_id.to_string(),
                    }),
                    task: Some(task),
                }),
            );
        }
        let unused = offered.minus(&used);
        let until = refuse.map(|d| self.now_ms().saturating_add(d.as_millis() as Millis));
        self.allocator.recover(framework_id, &agent, &unused, until);
        self.allocation_needed = true;
        Ok(())
    }

    fn validate_tasks(
        &self,
        framework_id: &str,
        agent: &str,
        offered: &Resources,
        tasks: &[v1::TaskInfo],
    ) -> Result<Vec<(v1::TaskInfo, Resources)>, (Refusal, String, String)> {
        let bad = |id: &str, message: String| (Refusal::InvalidTask, message, id.to_string());
        let mut seen: HashSet<&str> = HashSet::new();
        let mut total = Resources::new();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            let id = task
                .task_id
                .as_ref()
                .map(|t| t.value.as_str())
                .unwrap_or("");
            if id.is_empty() {
                return Err(bad(id, "task_id must not be empty".into()));
            }
            if id.len() > 256
                || id == "."
                || id == ".."
                || id.chars().any(|c| c.is_control() || c == '/')
            {
                return Err(bad(
                    id,
                    format!(
                        "task `{id}`: task_id must be at most 256 characters, not `.` or `..`, without `/` or control characters"
                    ),
                ));
            }
            if !seen.insert(id) {
                return Err(bad(
                    id,
                    format!("task id `{id}` appears twice in one accept"),
                ));
            }
            if self
                .tasks
                .get(&(framework_id.to_string(), id.to_string()))
                .is_some_and(|t| !is_terminal(t.state))
            {
                return Err(bad(
                    id,
                    format!("task id `{id}` is already in use by a live task of this framework"),
                ));
            }
            if let Some(a) = task.agent_id.as_ref().filter(|a| !a.value.is_empty())
                && a.value != agent
            {
                return Err(bad(
                    id,
                    format!(
                        "task `{id}`: agent_id `{}` is not the offer's agent `{agent}`",
                        a.value
                    ),
                ));
            }
            if task
                .command
                .as_ref()
                .is_none_or(|c| c.value.trim().is_empty())
            {
                return Err(bad(
                    id,
                    format!("task `{id}`: command.value must not be empty"),
                ));
            }
            let resources = Resources::from_proto(&task.resources)
                .map_err(|e| bad(id, format!("task `{id}`: {e}")))?;
            if resources.scalar("cpus") < 0.01 {
                return Err(bad(
                    id,
                    format!("task `{id}`: resources.cpus must be at least 0.01"),
                ));
            }
            if resources.scalar("mem") < 1.0 {
                return Err(bad(
                    id,
                    format!("task `{id}`: resources.mem must be at least 1 MiB"),
                ));
            }
            if !(task.kill_grace_period.is_finite() && task.kill_grace_period >= 0.0) {
                return Err(bad(
                    id,
                    format!("task `{id}`: kill_grace_period must be a finite number >= 0"),
                ));
            }
            if let Some(check) = &task.health_check {
                validate_health_check(check, resources.ranges("ports").len())
                    .map_err(|e| bad(id, format!("task `{id}`: health_check: {e}")))?;
            }
            total.add(&resources);
            if !offered.contains(&total) {
                return Err((
                    Refusal::InsufficientResources,
                    format!(
                        "task `{id}`: resources {resources} are not within the offer (offered {offered}; tasks so far need {total})"
                    ),
                    id.to_string(),
                ));
            }
            out.push((task.clone(), resources));
        }
        Ok(out)
    }

    // ---- operator actions ------------------------------------------------------------------

    fn emit(&self, event: ClusterEvent) {
        // No subscribers is fine: events are for whoever listens now.
        let _ = self.events.send(event);
    }

    fn operator(&mut self, op: Operator) -> Result<(), OperatorError> {
        match op {
            Operator::SetWeight { role, weight } => {
                if role.is_empty() {
                    return Err(OperatorError::BadRequest("role must not be empty".into()));
                }
                if !weight.is_finite() || weight <= 0.0 {
                    return Err(OperatorError::BadRequest(format!(
                        "weight must be a finite number > 0, not {weight}"
                    )));
                }
                info!(%role, weight, "operator set a role weight");
                self.allocator.set_weight(&role, weight);
                self.config.role_weights.insert(role.clone(), weight);
                self.emit(ClusterEvent::RoleWeightChanged { role, weight });
                self.allocation_needed = true;
            }
            Operator::Teardown { framework_id } => {
                if !self.frameworks.contains_key(&framework_id) {
                    return Err(OperatorError::NotFound(format!(
                        "unknown framework `{framework_id}`"
                    )));
                }
                info!(framework = %framework_id, "operator tore down a framework");
                self.remove_framework(&framework_id);
            }
            Operator::Drain {
                agent_id,
                kill_tasks,
            } => {
                let Some(agent) = self.agents.get_mut(&agent_id) else {
                    return Err(OperatorError::NotFound(format!(
                        "unknown agent `{agent_id}`"
                    )));
                };
                info!(agent = %agent_id, kill_tasks, "operator drained an agent");
                agent.draining = true;
                self.allocator.set_agent_active(&agent_id, false);
                self.rescind_where(|o| o.agent == agent_id);
                if kill_tasks {
                    for key in self.task_keys(|_, t| t.agent == agent_id && !is_terminal(t.state)) {
                        self.send_kill(&key);
                    }
                }
                self.emit(ClusterEvent::AgentDrained {
                    agent_id,
                    kill_tasks,
                });
            }
            Operator::Undrain { agent_id } => {
                let Some(agent) = self.agents.get_mut(&agent_id) else {
                    return Err(OperatorError::NotFound(format!(
                        "unknown agent `{agent_id}`"
                    )));
                };
                info!(agent = %agent_id, "operator put an agent back");
                agent.draining = false;
                self.allocator.set_agent_active(&agent_id, true);
                self.emit(ClusterEvent::AgentUndrained { agent_id });
                self.allocation_needed = true;
            }
        }
        Ok(())
    }

    fn render_metrics(&self) -> String {
        let view = self.snapshot();
        let mut kinds: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
        for a in view
            .agents
            .iter()
            .filter(|a| a.status != AgentStatus::Unreachable.name())
        {
            for (kind, v) in a.resources.total.scalars() {
                kinds.entry(kind.to_string()).or_default().0 += v;
            }
            for (kind, v) in a.resources.used.scalars() {
                kinds.entry(kind.to_string()).or_default().1 += v;
            }
            for (kind, v) in a.resources.offered.scalars() {
                kinds.entry(kind.to_string()).or_default().2 += v;
            }
        }
        let mut agents_by_status: BTreeMap<&str, usize> = [
            AgentStatus::Active,
            AgentStatus::Disconnected,
            AgentStatus::Unreachable,
        ]
        .iter()
        .map(|s| (s.name(), 0))
        .collect();
        for a in &view.agents {
            *agents_by_status.entry(a.status).or_default() += 1;
        }
        let mut tasks_by_state: BTreeMap<String, usize> = BTreeMap::new();
        for t in &view.tasks {
            *tasks_by_state.entry(t.state.clone()).or_default() += 1;
        }
        let active = view.frameworks.iter().filter(|f| f.active).count();
        self.metrics.render(&Gauges {
            resources: kinds
                .iter()
                .map(|(k, (t, u, o))| (k.as_str(), *t, *u, *o))
                .collect(),
            agents_by_status: agents_by_status.into_iter().collect(),
            frameworks_active: active,
            frameworks_inactive: view.frameworks.len() - active,
            tasks_by_state: tasks_by_state.into_iter().collect(),
            offers_outstanding: view.offers.len(),
        })
    }

    // ---- views ----------------------------------------------------------------------------

    fn snapshot(&self) -> StateView {
        let mut used_by_agent: HashMap<&str, Resources> = HashMap::new();
        let mut used_by_framework: HashMap<&str, Resources> = HashMap::new();
        let mut count_by_framework: HashMap<&str, usize> = HashMap::new();
        for ((fw, _), t) in &self.tasks {
            if !is_terminal(t.state) {
                used_by_agent.entry(&t.agent).or_default().add(&t.resources);
                used_by_framework.entry(fw).or_default().add(&t.resources);
                *count_by_framework.entry(fw).or_default() += 1;
            }
        }
        let mut offered_by_agent: HashMap<&str, Resources> = HashMap::new();
        let mut offered_by_framework: HashMap<&str, Resources> = HashMap::new();
        for o in self.offers.values() {
            offered_by_agent
                .entry(&o.agent)
                .or_default()
                .add(&o.resources);
            offered_by_framework
                .entry(&o.framework)
                .or_default()
                .add(&o.resources);
        }
        let mut agents: Vec<AgentView> = self
            .agents
            .values()
            .map(|a| AgentView {
                id: a.id.clone(),
                hostname: a.hostname.clone(),
                endpoint: a.endpoint.clone(),
                attributes: a
                    .attributes
                    .iter()
                    .map(|x| (x.name.clone(), x.text.clone()))
                    .collect(),
                status: a.status.name(),
                draining: a.draining,
                resources: AgentResources {
                    total: a.total.clone(),
                    used: used_by_agent
                        .get(a.id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    offered: offered_by_agent
                        .get(a.id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                },
            })
            .collect();
        agents.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        let mut frameworks: Vec<FrameworkView> = self
            .frameworks
            .values()
            .map(|f| FrameworkView {
                id: f.id.clone(),
                name: f.info.name.clone(),
                role: f.role.clone(),
                active: f.stream.is_some(),
                webui_url: f.info.webui_url.clone(),
                used: used_by_framework
                    .get(f.id.as_str())
                    .map(Resources::scalar_part)
                    .unwrap_or_default(),
                offered: offered_by_framework
                    .get(f.id.as_str())
                    .map(Resources::scalar_part)
                    .unwrap_or_default(),
                task_count: count_by_framework.get(f.id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        frameworks.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let mut tasks: Vec<TaskView> = self
            .tasks
            .iter()
            .map(|((fw, id), t)| TaskView {
                id: id.clone(),
                name: t.info.name.clone(),
                framework_id: fw.clone(),
                agent_id: t.agent.clone(),
                state: t.state.as_str_name().to_string(),
                resources: t.resources.clone(),
                message: t.message.clone(),
                reason: t.reason.as_str_name().to_string(),
                sandbox: self
                    .agents
                    .get(&t.agent)
                    .filter(|a| !a.endpoint.is_empty())
                    .map(|a| {
                        let path = format!("{fw}/{id}");
                        SandboxView {
                            stdout: format!("{}/files/read?path={path}/stdout", a.endpoint),
                            stderr: format!("{}/files/read?path={path}/stderr", a.endpoint),
                            path,
                        }
                    }),
                healthy: t.healthy,
                usage: t.usage.as_ref().map(|u| UsageView {
                    cpu_seconds: u.cpu_seconds,
                    memory_bytes: u.memory_bytes,
                    memory_peak_bytes: u.memory_peak_bytes,
                    pids: u.pids,
                }),
            })
            .collect();
        tasks.sort_by(|a, b| a.framework_id.cmp(&b.framework_id).then(a.id.cmp(&b.id)));
        let mut offers: Vec<OfferView> = self
            .offers
            .iter()
            .map(|(id, o)| OfferView {
                id: id.clone(),
                framework_id: o.framework.clone(),
                agent_id: o.agent.clone(),
                resources: o.resources.clone(),
                age_seconds: o.created.elapsed().as_secs_f64(),
            })
            .collect();
        offers.sort_by(|a, b| a.id.cmp(&b.id));
        StateView {
            agents,
            frameworks,
            tasks,
            offers,
        }
    }
}

/// Ends a session that talks before registering: the agent reconnects and
/// registers first.
/// Where an agent's tasks are reached: the host of its endpoint URL
/// (`http://10.0.0.5:5051` → `10.0.0.5`), else its hostname.
fn task_address(endpoint: &str, hostname: &str) -> String {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    // `[::1]:5051` or `host:5051`.
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    if host.is_empty() {
        hostname.to_string()
    } else {
        host.to_string()
    }
}

/// Checks a task's health check against the task (its ports).
fn validate_health_check(check: &v1::HealthCheck, ports: u64) -> Result<(), String> {
    use v1::health_check::Protocol;
    let protocol =
        Protocol::try_from(check.protocol).map_err(|_| "unknown protocol".to_string())?;
    for (name, value) in [
        ("grace_period_seconds", check.grace_period_seconds),
        ("interval_seconds", check.interval_seconds),
        ("timeout_seconds", check.timeout_seconds),
    ] {
        if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
            return Err(format!("{name} must be between 0 and 86400"));
        }
    }
    match protocol {
        Protocol::None => Ok(()),
        Protocol::Http | Protocol::Tcp if u64::from(check.port_index) >= ports => Err(format!(
            "port_index {} but the task has {ports} port(s)",
            check.port_index
        )),
        Protocol::Command if check.command.trim().is_empty() => {
            Err("a command check needs a command".into())
        }
        _ => Ok(()),
    }
}

fn refuse_unregistered(tx: &AgentTx) {
    let _ = tx.send(Err(Status::failed_precondition(
        "this session is not registered; register first",
    )));
}

fn refuse_duration(filters: Option<&v1::Filters>) -> Result<Option<Duration>, Status> {
    let seconds = filters
        .and_then(|f| f.refuse_seconds)
        .unwrap_or(DEFAULT_REFUSE_SECONDS);
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Status::invalid_argument(
            "filters.refuse_seconds must be a finite number >= 0",
        ));
    }
    Ok((seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9))))
}
