//! The core as a state machine: messages in, messages out, under paused
//! time, with a real registry file — no sockets.

use agora_proto::{Demand, refusal_of};
use tokio::sync::mpsc::Receiver;

use super::*;

type AgentRx = Receiver<Result<MasterMessage, Status>>;
type FrameworkRx = Receiver<Result<Event, Status>>;

fn config() -> MasterConfig {
    MasterConfig {
        agent_timeout: Duration::from_secs(10),
        agent_removal_timeout: Duration::from_secs(600),
        offer_timeout: Duration::from_secs(30),
        allocation_interval: Duration::from_secs(1),
        framework_heartbeat: Duration::from_secs(15),
        ..MasterConfig::default()
    }
}

struct Harness {
    /// While set, the registry commits nothing (see [`Harness::hold_commits`]).
    /// First, so it drops first: the registry waits for its writer as it
    /// drops, and a held writer would wait forever.
    commits_held: Option<std::sync::mpsc::Sender<()>>,
    core: Core,
    events: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::events::Event>>,
    dir: tempfile::TempDir,
    /// One wall clock across restarts, moving with paused time.
    clock: recovery::WallClock,
    /// Capacity of the peer streams sessions open from here on.
    stream_capacity: usize,
    /// Who subscribes and calls from here on.
    caller: Caller,
    /// Whether agent sessions from here on carry a join credential.
    may_join: bool,
    /// The demand the next subscription carries.
    demand_at_subscribe: Option<Demand>,
}

struct AgentSession {
    conn: u64,
    tx: AgentTx,
    rx: AgentRx,
    id: String,
    secret: String,
}

#[derive(Debug)]
struct FrameworkSession {
    id: String,
    stream: String,
    secret: String,
    rx: FrameworkRx,
}

fn registry(dir: &tempfile::TempDir) -> Registry {
    Registry::open(&dir.path().join("registry.redb")).expect("registry")
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::start(dir, recovery::WallClock::start())
    }

    fn start(dir: tempfile::TempDir, clock: recovery::WallClock) -> Harness {
        Harness::start_with(dir, clock, config())
    }

    fn start_with(
        dir: tempfile::TempDir,
        clock: recovery::WallClock,
        config: MasterConfig,
    ) -> Harness {
        let events = crate::events::EventSender::new(4096);
        let rx = events.subscribe(true);
        let core =
            Core::recover_with_clock(config, events, registry(&dir), clock).expect("recover");
        Harness {
            core,
            events: rx,
            dir,
            clock,
            stream_capacity: 1 << 16,
            caller: Caller::Anyone,
            may_join: true,
            demand_at_subscribe: None,
            commits_held: None,
        }
    }

    /// A master that authenticates with `auth_file` (the text of one).
    fn with_auth(auth_file: &str) -> Harness {
        let policy = crate::auth::Policy::parse(auth_file, std::path::Path::new("auth.toml"))
            .expect("auth file");
        let config = MasterConfig {
            auth: crate::auth::Authority::with_policy(policy),
            ..config()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        Harness::start_with(dir, recovery::WallClock::start(), config)
    }

    /// A new master on the same registry (the old one is gone: `kill -9`
    /// loses nothing but what was never committed).
    fn restart(self) -> Harness {
        let Harness {
            commits_held,
            core,
            dir,
            clock,
            ..
        } = self;
        drop(commits_held);
        drop(core);
        Harness::start(dir, clock)
    }

    fn send(&mut self, msg: CoreMsg) {
        self.burst(vec![msg]);
    }

    /// Messages handled in one burst, as the core takes what is queued.
    fn burst(&mut self, msgs: Vec<CoreMsg>) {
        for msg in msgs {
            // As an agent's connection does, on the message's arrival.
            if let CoreMsg::Agent { tx, .. } = &msg {
                tx.heard().now();
            }
            self.core.handle(msg);
        }
        self.core.end_of_burst();
        self.settle_registrations();
    }

    async fn advance(&mut self, by: Duration) {
        tokio::time::advance(by).await;
        self.core.tick();
        self.core.end_of_burst();
        self.settle_registrations();
    }

    /// As the core's loop does when the registry commits: registrations
    /// waiting on a commit finish (unless commits are held).
    fn settle_registrations(&mut self) {
        if self.commits_held.is_some() || self.core.awaiting_registrations.is_empty() {
            return;
        }
        self.core.registry.commit().expect("commit");
        self.core.end_of_burst();
    }

    /// The registry commits nothing until [`Harness::release_commits`]
    /// (a slow disk, a slow etcd).
    fn hold_commits(&mut self) {
        self.commits_held = Some(self.core.registry.hold_commits());
    }

    fn release_commits(&mut self) {
        self.commits_held = None;
        self.settle_registrations();
    }

    fn heartbeat(&mut self, agent: &AgentSession) {
        self.heartbeat_with_usage(agent, Vec::new());
    }

    /// A heartbeat reporting what the agent's tasks use.
    fn heartbeat_with_usage(&mut self, agent: &AgentSession, usage: Vec<v1::TaskUsage>) {
        self.send(CoreMsg::Agent {
            conn: agent.conn,
            tx: agent.tx.clone(),
            msg: AgentMessage {
                message: Some(agent_message::Message::Heartbeat(
                    agent_message::Heartbeat { usage },
                )),
            },
            may_join: self.may_join,
        });
    }

    /// Advances time in steps, with `agent` heartbeating all along.
    async fn advance_alive(&mut self, agent: &AgentSession, by: Duration) {
        let step = Duration::from_secs(1);
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            self.heartbeat(agent);
            self.advance(d).await;
            left -= d;
        }
    }

    fn register(
        &mut self,
        conn: u64,
        id: Option<&str>,
        secret: &str,
        tasks: Vec<v1::AgentTask>,
    ) -> (AgentTx, AgentRx) {
        let (tx, rx) = Outbound::channel(self.stream_capacity);
        let info = v1::AgentInfo {
            hostname: format!("host{conn}"),
            // Each connection another host: an agent back on another one
            // moves its tasks' sandboxes.
            endpoint: format!("http://host{conn}:5051"),
            resources: Resources::parse("cpus:4;mem:4096;ports:[31000-31010]")
                .expect("resources")
                .to_proto(),
            id: id.map(|value| v1::AgentId {
                value: value.into(),
            }),
            ..Default::default()
        };
        self.send(CoreMsg::Agent {
            conn,
            tx: tx.clone(),
            msg: AgentMessage {
                message: Some(agent_message::Message::Register(agent_message::Register {
                    agent_info: Some(info),
                    tasks,
                    secret: secret.into(),
                })),
            },
            may_join: self.may_join,
        });
        (tx, rx)
    }

    /// A new agent, admitted.
    fn admit(&mut self, conn: u64) -> AgentSession {
        let (tx, mut rx) = self.register(conn, None, "", Vec::new());
        let registered = registered(&mut rx).expect("registered");
        AgentSession {
            conn,
            tx,
            rx,
            id: registered.agent_id.expect("id").value,
            secret: registered.secret,
        }
    }

    /// The same agent on a new session, reporting `tasks`.
    fn reregister(
        &mut self,
        agent: &AgentSession,
        conn: u64,
        tasks: Vec<v1::AgentTask>,
    ) -> AgentSession {
        let (tx, mut rx) = self.register(conn, Some(&agent.id), &agent.secret, tasks);
        let registered = registered(&mut rx).expect("re-registered");
        assert!(
            registered.secret.is_empty(),
            "no new secret for a known agent"
        );
        AgentSession {
            conn,
            tx,
            rx,
            id: agent.id.clone(),
            secret: agent.secret.clone(),
        }
    }

    /// Subscribes, resuming `(id, secret)` if given; the session keeps the
    /// secret the master issued (the `SUBSCRIBED` event is consumed).
    fn try_subscribe(
        &mut self,
        name: &str,
        role: &str,
        failover: f64,
        resume: Option<(&str, &str)>,
    ) -> Result<FrameworkSession, Status> {
        let (tx, mut rx) = Outbound::channel(self.stream_capacity);
        let (reply, mut answer) = oneshot::channel();
        let demand = self.demand_at_subscribe.take();
        self.send(CoreMsg::Subscribe {
            info: Box::new(v1::FrameworkInfo {
                name: name.into(),
                role: role.into(),
                failover_timeout: failover,
                id: resume.map(|(value, _)| v1::FrameworkId {
                    value: value.into(),
                }),
                ..Default::default()
            }),
            secret: resume.map(|(_, s)| s.to_string()).unwrap_or_default(),
            demand,
            caller: self.caller.clone(),
            tx,
            reply,
        });
        let (id, stream) = answer.try_recv().expect("reply")?;
        let issued = match rx.try_recv() {
            Ok(Ok(Event {
                event: Some(event::Event::Subscribed(s)),
            })) => s.secret,
            other => panic!("expected SUBSCRIBED first, got {other:?}"),
        };
        let secret = if issued.is_empty() {
            resume.map(|(_, s)| s.to_string()).unwrap_or_default()
        } else {
            issued
        };
        Ok(FrameworkSession {
            id,
            stream,
            secret,
            rx,
        })
    }

    fn subscribe(
        &mut self,
        name: &str,
        role: &str,
        failover: f64,
        resume: Option<&FrameworkSession>,
    ) -> FrameworkSession {
        self.try_subscribe(
            name,
            role,
            failover,
            resume.map(|f| (f.id.as_str(), f.secret.as_str())),
        )
        .expect("subscribed")
    }

    fn call(&mut self, framework: &FrameworkSession, call: Call) -> Result<(), Status> {
        let (msg, mut answer) = self.call_msg(framework, call);
        self.send(msg);
        answer.try_recv().expect("reply")
    }

    /// A call as the core receives it, and where its answer arrives.
    fn call_msg(
        &self,
        framework: &FrameworkSession,
        call: Call,
    ) -> (CoreMsg, oneshot::Receiver<Result<(), Status>>) {
        let (reply, answer) = oneshot::channel();
        let msg = CoreMsg::Call {
            header: Some(v1::CallHeader {
                framework_id: Some(v1::FrameworkId {
                    value: framework.id.clone(),
                }),
                stream_id: framework.stream.clone(),
            }),
            caller: self.caller.clone(),
            call,
            reply,
        };
        (msg, answer)
    }

    fn operator(&mut self, op: Operator) -> Result<(), OperatorError> {
        let (reply, mut answer) = oneshot::channel();
        self.send(CoreMsg::Operator { op, reply });
        answer.try_recv().expect("reply")
    }

    fn update(
        &mut self,
        agent: &AgentSession,
        framework: &str,
        task: &str,
        state: TaskState,
        uuid: &[u8],
    ) {
        let msg = self.update_msg(agent, framework, task, state, uuid);
        self.send(msg);
    }

    fn update_msg(
        &self,
        agent: &AgentSession,
        framework: &str,
        task: &str,
        state: TaskState,
        uuid: &[u8],
    ) -> CoreMsg {
        CoreMsg::Agent {
            conn: agent.conn,
            tx: agent.tx.clone(),
            msg: AgentMessage {
                message: Some(agent_message::Message::StatusUpdates(
                    agent_message::StatusUpdates {
                        updates: vec![status_update(framework, task, state, uuid)],
                    },
                )),
            },
            may_join: self.may_join,
        }
    }

    /// The events sent since the last look, as (name, JSON).
    fn events(&mut self) -> Vec<(&'static str, serde_json::Value)> {
        std::iter::from_fn(|| self.events.try_recv().ok())
            .map(|e| (e.name(), serde_json::from_str(e.json()).expect("JSON")))
            .collect()
    }

    fn task_state(&self, framework: &str, task: &str) -> Option<TaskState> {
        self.core
            .tasks
            .get(&(framework.to_string(), task.to_string()))
            .map(|t| t.state)
    }
}

fn drain<T>(rx: &mut Receiver<Result<T, Status>>) -> Vec<Result<T, Status>> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// How the stream was closed, if it was.
fn closed_with<T>(rx: &mut Receiver<Result<T, Status>>) -> Option<tonic::Code> {
    drain(rx)
        .into_iter()
        .find_map(|m| m.err().map(|s| s.code()))
}

fn registered(rx: &mut AgentRx) -> Option<master_message::Registered> {
    drain(rx).into_iter().find_map(|m| match m.ok()?.message? {
        master_message::Message::Registered(r) => Some(r),
        _ => None,
    })
}

fn offers(rx: &mut FrameworkRx) -> Vec<v1::Offer> {
    drain(rx)
        .into_iter()
        .filter_map(|e| match e.ok()?.event? {
            event::Event::Offers(o) => Some(o.offers),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The framework's events, by kind, in order: `offers`, `update:STATE`,
/// `rescind`, `failure`, ….
fn event_kinds(rx: &mut FrameworkRx) -> Vec<String> {
    drain(rx)
        .into_iter()
        .filter_map(|e| {
            Some(match e.ok()?.event? {
                event::Event::Offers(_) => "offers".to_string(),
                event::Event::Update(u) => format!(
                    "update:{}",
                    TaskState::try_from(u.status?.state).ok()?.as_str_name()
                ),
                event::Event::Rescind(_) => "rescind".into(),
                event::Event::Failure(_) => "failure".into(),
                event::Event::Subscribed(_) => "subscribed".into(),
                event::Event::Heartbeat(_) => "heartbeat".into(),
                event::Event::Error(_) => "error".into(),
            })
        })
        .collect()
}

/// The framework's task updates, as `update:STATE`, in order (other
/// events left out).
fn update_kinds(rx: &mut FrameworkRx) -> Vec<String> {
    event_kinds(rx)
        .into_iter()
        .filter(|k| k.starts_with("update"))
        .collect()
}

/// What the agent was told, one entry per message, by kind:
/// `launch:TASK,TASK…`, `kill:TASK`, `ack:UUID,UUID…`, `shutdown`,
/// `registered`, `closed:CODE` (heartbeat acknowledgements left out).
fn agent_kinds(rx: &mut AgentRx) -> Vec<String> {
    drain(rx)
        .into_iter()
        .filter(|m| {
            !matches!(
                m,
                Ok(MasterMessage {
                    message: Some(master_message::Message::HeartbeatAck(_))
                })
            )
        })
        .map(|m| match m {
            Err(status) => format!("closed:{:?}", status.code()),
            Ok(m) => match m.message {
                Some(master_message::Message::Launch(l)) => format!(
                    "launch:{}",
                    l.tasks
                        .into_iter()
                        .map(|t| t.task_id.map(|t| t.value).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Some(master_message::Message::Kill(k)) => {
                    format!("kill:{}", k.task_id.map(|t| t.value).unwrap_or_default())
                }
                Some(master_message::Message::Acknowledgements(a)) => format!(
                    "ack:{}",
                    a.acks
                        .iter()
                        .map(|a| String::from_utf8_lossy(&a.uuid))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Some(master_message::Message::Shutdown(_)) => "shutdown".into(),
                Some(master_message::Message::Registered(_)) => "registered".into(),
                Some(master_message::Message::MarkedUnreachable(_)) => "unreachable".into(),
                Some(master_message::Message::HeartbeatAck(_)) | None => "empty".into(),
            },
        })
        .collect()
}

/// An agent's update of a task.
fn status_update(framework: &str, task: &str, state: TaskState, uuid: &[u8]) -> v1::StatusUpdate {
    v1::StatusUpdate {
        framework_id: Some(v1::FrameworkId {
            value: framework.into(),
        }),
        status: Some(TaskStatus {
            task_id: Some(v1::TaskId { value: task.into() }),
            state: state as i32,
            source: task_status::Source::Agent as i32,
            uuid: uuid.to_vec(),
            ..Default::default()
        }),
    }
}

fn task_info(id: &str, resources: &str) -> v1::TaskInfo {
    v1::TaskInfo {
        name: id.into(),
        task_id: Some(v1::TaskId { value: id.into() }),
        resources: Resources::parse(resources).expect("resources").to_proto(),
        command: Some(v1::CommandInfo {
            value: "sleep 100".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn reported(framework: &str, id: &str, state: TaskState) -> v1::AgentTask {
    v1::AgentTask {
        framework_id: Some(v1::FrameworkId {
            value: framework.into(),
        }),
        task: Some(task_info(id, "cpus:1;mem:128")),
        state: state as i32,
    }
}

/// Acknowledges `task`'s update `uuid` (and `more`) in one call.
fn acknowledge(task: &str, uuid: &[u8], more: Vec<v1::Acknowledgement>) -> Call {
    Call::Acknowledge(Box::new(v1::AcknowledgeRequest {
        header: None,
        agent_id: None,
        task_id: Some(v1::TaskId { value: task.into() }),
        uuid: uuid.to_vec(),
        more,
    }))
}

fn accept(offer: &v1::Offer, tasks: Vec<v1::TaskInfo>) -> Call {
    Call::Accept(Box::new(v1::AcceptRequest {
        offer_ids: vec![offer.id.clone().expect("offer id")],
        tasks,
        filters: None,
        header: None,
    }))
}

/// An agent, and a framework `name` that accepted its first offer for
/// `tasks` (1 CPU and 128 MB each).
fn launched(
    h: &mut Harness,
    name: &str,
    failover: f64,
    tasks: &[&str],
) -> (AgentSession, FrameworkSession) {
    let agent = h.admit(1);
    let mut framework = h.subscribe(name, "*", failover, None);
    let offer = offers(&mut framework.rx).pop().expect("an offer");
    let tasks = tasks
        .iter()
        .map(|t| task_info(t, "cpus:1;mem:128"))
        .collect();
    h.call(&framework, accept(&offer, tasks)).expect("accept");
    (agent, framework)
}

/// An agent and a framework with one task running on it.
fn running_task(h: &mut Harness, failover: f64) -> (AgentSession, FrameworkSession) {
    let (mut agent, mut framework) = launched(h, "batch", failover, &["t1"]);
    assert_eq!(agent_kinds(&mut agent.rx), ["launch:t1"]);
    h.update(&agent, &framework.id, "t1", TaskState::TaskRunning, b"u1");
    let fid = framework.id.clone();
    h.call(&framework, acknowledge("t1", b"u1", Vec::new()))
        .expect("ack");
    assert_eq!(h.task_state(&fid, "t1"), Some(TaskState::TaskRunning));
    drain(&mut agent.rx);
    drain(&mut framework.rx);
    (agent, framework)
}

#[tokio::test(start_paused = true)]
async fn an_agent_id_is_only_accepted_with_its_secret() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    assert!(!agent.secret.is_empty(), "a new agent is issued a secret");

    let (_, mut rx) = h.register(2, Some(&agent.id), "not-the-secret", Vec::new());
    let refused = drain(&mut rx);
    assert!(
        matches!(refused.as_slice(), [Err(s)] if s.code() == tonic::Code::PermissionDenied),
        "an impostor is refused: {refused:?}"
    );
    let (_, mut rx) = h.register(3, Some(&agent.id), "", Vec::new());
    assert!(registered(&mut rx).is_none(), "no secret, no admission");

    // The real agent still may, also after a master restart.
    let mut h = h.restart();
    h.reregister(&agent, 4, Vec::new());
}

#[tokio::test(start_paused = true)]
async fn offers_are_made_and_rescinded_after_the_offer_timeout() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 0.0, None);
    let offer = offers(&mut framework.rx).pop().expect("offer");
    assert_eq!(
        Resources::from_proto(&offer.resources)
            .expect("resources")
            .scalar("cpus"),
        4.0
    );
    h.advance_alive(&agent, Duration::from_secs(29)).await;
    assert!(!event_kinds(&mut framework.rx).contains(&"rescind".to_string()));
    h.advance_alive(&agent, Duration::from_secs(2)).await;
    let kinds = event_kinds(&mut framework.rx);
    assert!(kinds.contains(&"rescind".to_string()), "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_accept_launches_nothing_and_returns_the_offer() {
    let mut h = Harness::new();
    let mut agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 0.0, None);
    let offer = offers(&mut framework.rx).pop().expect("offer");
    let refused = h
        .call(
            &framework,
            accept(
                &offer,
                vec![
                    task_info("small", "cpus:1;mem:128"),
                    task_info("huge", "cpus:8;mem:128"),
                ],
            ),
        )
        .expect_err("too big");
    let refusal = refusal_of(&refused).expect("typed refusal");
    assert_eq!(refusal.reason(), Refusal::InsufficientResources);
    assert_eq!(refusal.task_id, "huge");
    assert!(agent_kinds(&mut agent.rx).is_empty(), "nothing launched");
    assert_eq!(h.task_state(&framework.id, "small"), None);

    // The offer is spent; the resources come back after the refusal (5 s).
    let again = h.call(
        &framework,
        accept(&offer, vec![task_info("small", "cpus:1;mem:128")]),
    );
    assert_eq!(
        refusal_of(&again.expect_err("spent")).map(|r| r.reason()),
        Some(Refusal::OfferNotOutstanding)
    );
    h.advance(Duration::from_secs(6)).await;
    assert_eq!(offers(&mut framework.rx).len(), 1, "offered again");
}

#[tokio::test(start_paused = true)]
async fn updates_are_relayed_in_order_and_acknowledgements_reach_the_agent() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = launched(&mut h, "f", 0.0, &["t1"]);
    agent_kinds(&mut agent.rx);
    h.update(&agent, &framework.id, "t1", TaskState::TaskStarting, b"u1");
    h.update(&agent, &framework.id, "t1", TaskState::TaskRunning, b"u2");
    h.update(&agent, &framework.id, "t1", TaskState::TaskFinished, b"u3");
    assert_eq!(
        update_kinds(&mut framework.rx),
        [
            "update:TASK_STARTING",
            "update:TASK_RUNNING",
            "update:TASK_FINISHED"
        ]
    );
    // Three acknowledgements in one call, one of them for a task nobody
    // knows: the known ones still reach the agent, and the call names it.
    let ack = |task: &str, uuid: &[u8]| v1::Acknowledgement {
        agent_id: None,
        task_id: Some(v1::TaskId { value: task.into() }),
        uuid: uuid.to_vec(),
    };
    let more = vec![ack("ghost", b"g1"), ack("t1", b"u2"), ack("t1", b"u3")];
    let refused = h
        .call(&framework, acknowledge("t1", b"u1", more))
        .expect_err("a ghost");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert!(refused.message().contains("ghost"), "{refused:?}");
    // In one message, in the order acknowledged.
    assert_eq!(agent_kinds(&mut agent.rx), ["ack:u1,u2,u3"]);
    // A finished task's resources are free again.
    assert!(h.core.used_on_agent(&agent.id).is_empty());
}

#[tokio::test(start_paused = true)]
async fn updates_sent_together_are_each_relayed_and_their_acknowledgements_go_back_together() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = launched(&mut h, "f", 0.0, &["t1", "t2"]);
    assert_eq!(
        agent_kinds(&mut agent.rx),
        ["launch:t1,t2"],
        "one accept's tasks in one message"
    );
    let fid = framework.id.clone();
    let together = CoreMsg::Agent {
        conn: agent.conn,
        tx: agent.tx.clone(),
        msg: AgentMessage {
            message: Some(agent_message::Message::StatusUpdates(
                agent_message::StatusUpdates {
                    updates: vec![
                        status_update(&fid, "t1", TaskState::TaskStarting, b"u1"),
                        status_update(&fid, "t1", TaskState::TaskRunning, b"u2"),
                        status_update(&fid, "t2", TaskState::TaskStarting, b"u3"),
                        status_update(&fid, "t2", TaskState::TaskRunning, b"u4"),
                    ],
                },
            )),
        },
        may_join: h.may_join,
    };
    h.send(together);
    assert_eq!(
        update_kinds(&mut framework.rx),
        [
            "update:TASK_STARTING",
            "update:TASK_RUNNING",
            "update:TASK_STARTING",
            "update:TASK_RUNNING"
        ]
    );
    assert_eq!(h.task_state(&fid, "t1"), Some(TaskState::TaskRunning));
    assert_eq!(h.task_state(&fid, "t2"), Some(TaskState::TaskRunning));
    // Two calls in one burst: the agent hears of all four in one message.
    let ack = |task: &str, uuid: &[u8]| v1::Acknowledgement {
        agent_id: None,
        task_id: Some(v1::TaskId { value: task.into() }),
        uuid: uuid.to_vec(),
    };
    let (first, mut first_answer) =
        h.call_msg(&framework, acknowledge("t1", b"u1", vec![ack("t1", b"u2")]));
    let (second, mut second_answer) =
        h.call_msg(&framework, acknowledge("t2", b"u3", vec![ack("t2", b"u4")]));
    h.burst(vec![first, second]);
    assert!(matches!(first_answer.try_recv(), Ok(Ok(()))));
    assert!(matches!(second_answer.try_recv(), Ok(Ok(()))));
    assert_eq!(agent_kinds(&mut agent.rx), ["ack:u1,u2,u3,u4"]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_turns_unreachable_and_its_return_is_reported_and_evented() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = running_task(&mut h, 3600.0);
    h.events();
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(
        event_kinds(&mut framework.rx),
        ["failure", "update:TASK_UNREACHABLE"],
        "the framework hears of the agent before its tasks"
    );
    assert_eq!(
        agent_kinds(&mut agent.rx),
        ["unreachable", "closed:Unavailable"],
        "the agent hears it was given up on (its careful tasks stop)"
    );
    h.reregister(
        &agent,
        2,
        vec![reported(&framework.id, "t1", TaskState::TaskRunning)],
    );
    assert_eq!(update_kinds(&mut framework.rx), ["update:TASK_RUNNING"]);
    let running_again = h
        .events()
        .into_iter()
        .any(|(name, e)| name == "task_updated" && e["state"] == "TASK_RUNNING");
    assert!(
        running_again,
        "UNREACHABLE → RUNNING appears on the event stream"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agents_silence_counts_from_its_last_word_on_its_session_or_before_the_session_closed() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let status = |h: &Harness| h.core.agents.get(&agent.id).map(|a| a.status.name());
    // Heartbeating, it outlives the agent timeout (10 s) many times over.
    h.advance_alive(&agent, Duration::from_secs(35)).await;
    assert_eq!(status(&h), Some("active"));
    // Its last word, six seconds of silence, and its session closes.
    h.heartbeat(&agent);
    h.advance(Duration::from_secs(6)).await;
    h.send(CoreMsg::AgentClosed { conn: agent.conn });
    assert_eq!(status(&h), Some("disconnected"));
    h.advance(Duration::from_secs(3)).await;
    assert_eq!(
        status(&h),
        Some("disconnected"),
        "nine seconds after its last word"
    );
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(
        status(&h),
        Some("unreachable"),
        "eleven seconds after its last word, five after the close"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_whose_messages_arrive_is_not_silent_while_they_wait_for_the_core() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let status = |h: &Harness| h.core.agents.get(&agent.id).map(|a| a.status.name());
    // Its connection receives a heartbeat every second, but the core, far
    // behind on its queue (a registration storm), reads none of them.
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        agent.tx.heard().now();
        h.core.tick();
    }
    assert_eq!(status(&h), Some("active"), "heard on time, read late");
    // Heard no more: silent from its last message's arrival.
    given_up_one_timeout_from_now(&mut h, &agent.id).await;
}

/// The agent, silent from now on, is still active 9 s later and
/// unreachable at 11 (the timeout is 10 s).
async fn given_up_one_timeout_from_now(h: &mut Harness, agent: &str) {
    let status = |h: &Harness| h.core.agents.get(agent).map(|a| a.status.name());
    h.advance(Duration::from_secs(9)).await;
    assert_eq!(status(h), Some("active"));
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(status(h), Some("unreachable"));
}

#[tokio::test(start_paused = true)]
async fn an_agent_whose_connection_waits_for_room_in_the_core_is_not_silent() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let status = |h: &Harness| h.core.agents.get(&agent.id).map(|a| a.status.name());
    // Its connection holds a message the core's full queue cannot take for
    // 30 s, and reads none of the heartbeats behind it meanwhile.
    let holding = agent.tx.heard().hold();
    for _ in 0..30 {
        h.advance(Duration::from_secs(1)).await;
    }
    assert_eq!(status(&h), Some("active"), "unread is not unheard");
    // Reading again, it hears nothing more: silent from then on.
    drop(holding);
    given_up_one_timeout_from_now(&mut h, &agent.id).await;
}

#[tokio::test(start_paused = true)]
async fn a_sessions_connection_answers_heartbeats_only_while_the_core_counts_it_its_agents() {
    let mut h = Harness::new();
    let first = h.admit(1);
    assert!(first.tx.heard().is_admitted(), "admitted as it registers");
    // It answers with the core's terms, which grow with the cluster.
    let terms = |h: &Harness| {
        let ack = h.core.heartbeat_terms.ack();
        (ack.heartbeat_interval_seconds, ack.agent_timeout_seconds)
    };
    let core_terms = |h: &Harness| {
        (
            h.core.heartbeat_interval().as_secs_f64(),
            h.core.agent_timeout().as_secs_f64(),
        )
    };
    assert_eq!(terms(&h), core_terms(&h));
    h.core.config.max_agent_heartbeats_per_second = 1.0;
    let second = h.reregister(&first, 2, Vec::new());
    h.admit(3);
    h.admit(4);
    assert_eq!(terms(&h), core_terms(&h));
    assert_eq!(
        terms(&h),
        (3.0, 15.0),
        "three agents at one heartbeat a second"
    );
    // The session it left is no longer its.
    assert!(!first.tx.heard().is_admitted());
    assert!(second.tx.heard().is_admitted());
    // Given up after its silence: nor is this one.
    h.advance(Duration::from_secs(16)).await;
    assert_eq!(
        h.core.agents.get(&second.id).map(|a| a.status.name()),
        Some("unreachable")
    );
    assert!(!second.tx.heard().is_admitted());
}

#[tokio::test(start_paused = true)]
async fn a_task_declared_lost_is_killed_when_its_agent_comes_back() {
    let mut h = Harness::new();
    let (agent, mut framework) = running_task(&mut h, 3600.0);
    h.advance(Duration::from_secs(11)).await; // unreachable
    h.advance(Duration::from_secs(601)).await; // removed: TASK_LOST
    assert!(
        event_kinds(&mut framework.rx).contains(&"update:TASK_LOST".to_string()),
        "removal is reported"
    );
    assert_eq!(h.task_state(&framework.id, "t1"), Some(TaskState::TaskLost));
    // It returns with the task still running; the master no longer knows
    // the agent, so it is admitted anew (with a new secret) …
    let (_, mut rx) = h.register(
        2,
        Some(&agent.id),
        &agent.secret,
        vec![reported(&framework.id, "t1", TaskState::TaskRunning)],
    );
    let kinds = agent_kinds(&mut rx);
    // … and the task the framework has replaced is killed, not adopted.
    assert_eq!(kinds, ["registered", "kill:t1"]);
}

#[tokio::test(start_paused = true)]
async fn a_task_the_master_never_knew_is_reported_to_its_framework() {
    let mut h = Harness::new();
    let agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 3600.0, None);
    drain(&mut framework.rx);
    h.reregister(
        &agent,
        2,
        vec![reported(&framework.id, "stray", TaskState::TaskRunning)],
    );
    assert!(
        event_kinds(&mut framework.rx).contains(&"update:TASK_RUNNING".to_string()),
        "never adopted silently"
    );
}

#[tokio::test(start_paused = true)]
async fn an_agent_back_without_a_task_drops_it_if_it_never_reached_the_agent_and_else_it_is_gone() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = launched(&mut h, "f", 3600.0, &["ran", "never-arrived"]);
    assert_eq!(agent_kinds(&mut agent.rx), ["launch:ran,never-arrived"]);
    h.update(&agent, &framework.id, "ran", TaskState::TaskRunning, b"u1");
    drain(&mut framework.rx);
    // The agent comes back knowing neither (the second's launch died with
    // the old session; the first ended while the agent was away).
    h.reregister(&agent, 2, Vec::new());
    let fid = framework.id.clone();
    assert_eq!(
        h.task_state(&fid, "never-arrived"),
        Some(TaskState::TaskDropped)
    );
    assert_eq!(h.task_state(&fid, "ran"), Some(TaskState::TaskGone));
    let mut updates: Vec<String> = event_kinds(&mut framework.rx)
        .into_iter()
        .filter(|k| k.starts_with("update:"))
        .collect();
    updates.sort();
    assert_eq!(updates, ["update:TASK_DROPPED", "update:TASK_GONE"]);
}

#[tokio::test(start_paused = true)]
async fn a_framework_away_past_its_failover_timeout_loses_its_tasks_even_across_a_restart() {
    let mut h = Harness::new();
    let (agent, framework) = running_task(&mut h, 60.0);
    h.send(CoreMsg::FrameworkClosed {
        framework_id: framework.id.clone(),
        stream_id: framework.stream.clone(),
    });
    h.advance(Duration::from_secs(30)).await;
    assert!(h.core.frameworks.contains_key(&framework.id));

    // The master restarts half-way through the timeout; the agent returns.
    let mut h = h.restart();
    let mut agent = h.reregister(
        &agent,
        2,
        vec![reported(&framework.id, "t1", TaskState::TaskRunning)],
    );
    h.advance_alive(&agent, Duration::from_secs(29)).await;
    assert!(agent_kinds(&mut agent.rx).is_empty(), "not yet");
    h.advance_alive(&agent, Duration::from_secs(2)).await;
    assert_eq!(agent_kinds(&mut agent.rx), ["kill:t1"]);
    assert!(!h.core.frameworks.contains_key(&framework.id));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_master_keeps_weights_drains_frameworks_and_tasks() {
    let mut h = Harness::new();
    let (agent, framework) = running_task(&mut h, 7200.0);
    h.operator(Operator::SetWeight {
        role: "prod".into(),
        weight: 3.0,
    })
    .expect("weight");
    h.operator(Operator::Drain {
        agent_id: agent.id.clone(),
        kill_tasks: false,
    })
    .expect("drain");

    let mut h = h.restart();
    assert_eq!(h.core.config.role_weights.get("prod"), Some(&3.0));
    let recovered = h.core.frameworks.get(&framework.id).expect("framework");
    assert_eq!(recovered.info.name, "batch");
    assert_eq!(recovered.failover_timeout, Duration::from_secs(7200));
    assert_eq!(
        h.task_state(&framework.id, "t1"),
        Some(TaskState::TaskRunning)
    );
    assert!(h.core.agents.get(&agent.id).expect("agent").draining);

    // The framework resubscribes with its id; reconciliation is truthful.
    let mut framework = h.subscribe("batch", "*", 7200.0, Some(&framework));
    h.call(&framework, Call::Reconcile(Vec::new()))
        .expect("reconcile");
    assert_eq!(event_kinds(&mut framework.rx), ["update:TASK_RUNNING"]);

    // The drained agent returns and still gets no offers.
    h.reregister(
        &agent,
        2,
        vec![reported(&framework.id, "t1", TaskState::TaskRunning)],
    );
    h.advance(Duration::from_secs(2)).await;
    assert!(
        offers(&mut framework.rx).is_empty(),
        "drained across the restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_known_agent_that_does_not_return_after_a_restart_is_unreachable_then_lost() {
    let mut h = Harness::new();
    let (_agent, framework) = running_task(&mut h, 7200.0);
    let mut h = h.restart();
    let mut framework = h.subscribe("batch", "*", 7200.0, Some(&framework));
    drain(&mut framework.rx);
    h.advance(Duration::from_secs(11)).await;
    assert_eq!(
        event_kinds(&mut framework.rx),
        ["failure", "update:TASK_UNREACHABLE"]
    );
    // Unreachability, too, survives a restart: the removal clock keeps running.
    let mut h = h.restart();
    let mut framework = h.subscribe("batch", "*", 7200.0, Some(&framework));
    h.advance(Duration::from_secs(601)).await;
    assert!(event_kinds(&mut framework.rx).contains(&"update:TASK_LOST".to_string()));
    assert!(h.core.agents.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_agent_marked_gone_is_told_to_shut_down_and_refused_for_good() {
    let mut h = Harness::new();
    let (mut agent, mut framework) = running_task(&mut h, 3600.0);
    h.operator(Operator::MarkGone {
        agent_id: agent.id.clone(),
    })
    .expect("gone");
    assert_eq!(
        agent_kinds(&mut agent.rx),
        ["shutdown", "closed:PermissionDenied"]
    );
    assert_eq!(
        event_kinds(&mut framework.rx),
        ["update:TASK_GONE_BY_OPERATOR"]
    );
    let mut h = h.restart();
    let (_, mut rx) = h.register(
        2,
        Some(&agent.id),
        &agent.secret,
        vec![reported(&framework.id, "t1", TaskState::TaskRunning)],
    );
    assert_eq!(
        agent_kinds(&mut rx),
        ["shutdown", "closed:PermissionDenied"]
    );
    assert_eq!(
        h.operator(Operator::MarkGone {
            agent_id: "nobody".into()
        }),
        Err(OperatorError::NotFound("unknown agent `nobody`".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn weighted_roles_are_bounded_and_a_reset_weight_stays_reset() {
    let mut h = Harness::new();
    for i in 0..1000 {
        h.operator(Operator::SetWeight {
            role: format!("r{i}"),
            weight: 2.0,
        })
        .expect("within the bound");
    }
    assert!(matches!(
        h.operator(Operator::SetWeight {
            role: "one-too-many".into(),
            weight: 2.0,
        }),
        Err(OperatorError::BadRequest(_))
    ));
    h.operator(Operator::ResetWeight { role: "r7".into() })
        .expect("reset");
    h.operator(Operator::SetWeight {
        role: "one-too-many".into(),
        weight: 2.0,
    })
    .expect("room again");
    let h = h.restart();
    assert!(!h.core.config.role_weights.contains_key("r7"));
    assert_eq!(h.core.config.role_weights.get("one-too-many"), Some(&2.0));
    assert_eq!(h.core.config.role_weights.len(), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_framework_id_is_only_resumed_with_its_secret() {
    let mut h = Harness::new();
    let (mut agent, framework) = running_task(&mut h, 3600.0);
    assert!(
        !framework.secret.is_empty(),
        "a new framework is issued a secret"
    );
    // Someone who read the (public) id tries to take the framework over.
    let stolen = h.try_subscribe("batch", "*", 5.0, Some((&framework.id, "guess")));
    assert_eq!(
        stolen.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    let stolen = h.try_subscribe("batch", "*", 5.0, Some((&framework.id, "")));
    assert_eq!(
        stolen.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    // Nothing changed for the owner: same subscription, same timeout.
    let entry = h.core.frameworks.get(&framework.id).expect("framework");
    assert_eq!(entry.failover_timeout, Duration::from_secs(3600));
    assert!(
        entry
            .stream
            .as_ref()
            .is_some_and(|(s, _)| *s == framework.stream)
    );
    assert!(agent_kinds(&mut agent.rx).is_empty(), "no kill");
    // The owner resumes with it, also after a master restart.
    let mut h = h.restart();
    h.subscribe("batch", "*", 3600.0, Some(&framework));
}

#[tokio::test(start_paused = true)]
async fn offers_are_sized_to_the_demand_a_framework_declares() {
    let mut h = Harness::new();
    let agents: Vec<AgentSession> = (1..=4).map(|conn| h.admit(conn)).collect();
    let mut framework = h.subscribe("f", "*", 0.0, None);
    // Alone and silent about its demand: everything is offered.
    let first = offers(&mut framework.rx);
    assert_eq!(first.len(), agents.len());
    let one_task = Demand {
        resources: Resources::parse("cpus:1;mem:128").expect("resources"),
        tasks: 1,
    };
    h.call(&framework, Call::SetDemand(Some(one_task)))
        .expect("demand");
    let decline = v1::DeclineRequest {
        header: None,
        offer_ids: first.iter().filter_map(|o| o.id.clone()).collect(),
        filters: Some(v1::Filters {
            refuse_seconds: Some(0.0),
        }),
    };
    h.call(&framework, Call::Decline(decline)).expect("decline");
    h.advance(Duration::from_secs(1)).await;
    // One agent's 4 cpus cover twice one task.
    assert_eq!(offers(&mut framework.rx).len(), 1);
    // Forgetting the demand offers the rest.
    h.call(&framework, Call::SetDemand(None)).expect("forget");
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(offers(&mut framework.rx).len(), agents.len() - 1);
}

#[tokio::test(start_paused = true)]
async fn a_demand_that_comes_with_the_subscription_sizes_the_first_offers() {
    let mut h = Harness::new();
    let agents: Vec<AgentSession> = (1..=4).map(|conn| h.admit(conn)).collect();
    h.demand_at_subscribe = Some(Demand {
        resources: Resources::parse("cpus:1;mem:128").expect("resources"),
        tasks: 1,
    });
    let mut framework = h.subscribe("f", "*", 0.0, None);
    assert_eq!(
        offers(&mut framework.rx).len(),
        1,
        "one agent of {} covers one task",
        agents.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_big_cluster_heartbeats_less_often_and_waits_longer_for_silent_agents() {
    let mut h = Harness::new();
    // Ten agents at two heartbeats a second in all: one every 5 s each, and
    // silence counts after five of them (25 s), not the configured 10 s.
    h.core.config.max_agent_heartbeats_per_second = 2.0;
    let agents: Vec<AgentSession> = (1..=9).map(|conn| h.admit(conn)).collect();
    let (tx, mut rx) = h.register(10, None, "", Vec::new());
    let r = registered(&mut rx).expect("registered");
    assert_eq!(r.heartbeat_interval_seconds, 5.0);
    assert_eq!(r.agent_timeout_seconds, 25.0);
    // Agents that registered while the cluster was small are told on
    // their next heartbeat.
    h.heartbeat(&agents[0]);
    let mut first_rx = drain(&mut agents.into_iter().next().expect("first").rx);
    let ack = first_rx
        .drain(..)
        .find_map(|m| match m.ok()?.message? {
            master_message::Message::HeartbeatAck(a) => Some(a),
            _ => None,
        })
        .expect("heartbeat ack");
    assert_eq!(ack.heartbeat_interval_seconds, 5.0);
    assert_eq!(ack.agent_timeout_seconds, 25.0);
    // Silent for 20 s: still reachable; past 25 s: not.
    h.advance(Duration::from_secs(20)).await;
    assert!(
        h.core
            .agents
            .values()
            .all(|a| a.status != AgentStatus::Unreachable)
    );
    h.advance(Duration::from_secs(6)).await;
    assert!(
        h.core
            .agents
            .values()
            .all(|a| a.status == AgentStatus::Unreachable)
    );
    drop(tx);
}
#[tokio::test(start_paused = true)]
async fn a_core_that_stops_leading_ends_every_session() {
    let mut h = Harness::new();
    let mut agent = h.admit(1);
    let mut framework = h.subscribe("f", "*", 0.0, None);
    h.hold_commits();
    let (_tx, mut waiting) = h.register(2, None, "", Vec::new());
    drain(&mut agent.rx);
    drain(&mut framework.rx);

    assert_eq!(h.core.step_down(), CoreExit::Deposed);
    assert_eq!(closed_with(&mut agent.rx), Some(tonic::Code::Unavailable));
    assert_eq!(closed_with(&mut waiting), Some(tonic::Code::Unavailable));
    assert_eq!(
        closed_with(&mut framework.rx),
        Some(tonic::Code::Unavailable)
    );
    // Its connection no longer answers the agent's heartbeats.
    assert!(!agent.tx.heard().is_admitted());
    h.release_commits();
}

mod auth;
mod read_model;
mod registration;
mod streams;
