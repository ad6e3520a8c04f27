//! Emulated agents: many agents in one process, each speaking the real
//! agent protocol over its own session (register with its id and secret,
//! heartbeat, launch, kill, status updates resent until acknowledged) and
//! running no processes — a launched task goes `STARTING` → `RUNNING` →
//! `FINISHED` after a set duration, or runs until killed. Kubernetes's
//! kubemark and the Mesos paper's emulated agents are the model; the master
//! cannot tell them from real ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use agora_proto::v1::{
    self, AgentMessage, MasterMessage, TaskState, agent_message,
    agent_service_client::AgentServiceClient, master_message, task_status,
};
use agora_proto::{MasterList, Resources};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

/// What to emulate.
#[derive(Clone, Debug)]
pub struct EmulateConfig {
    /// The masters (`http://m1:5050,http://m2:5050`).
    pub masters: String,
    pub agents: usize,
    /// Every agent's resources.
    pub resources: Resources,
    /// Every agent's attributes (`rack` gets the agent's rack, one per 40).
    pub attributes: Vec<(String, String)>,
    /// How long a task runs; `None`: until killed.
    pub task_duration: Option<Duration>,
    /// Agents sharing one HTTP/2 connection (their sessions are streams).
    pub agents_per_connection: usize,
    /// When notified, every agent drops its session at once and
    /// reconnects, as after a network blip (benchmarks use it).
    pub cut_sessions: Arc<tokio::sync::Notify>,
    /// The join token the agents present (none for a master without
    /// authentication).
    pub token: Option<String>,
    /// What the agents trust of an `https://` master.
    pub tls: agora_proto::tls::ClientTls,
    /// Where to note when each launch arrived, for a load framework in
    /// this process ([`crate::load::LoadConfig::launches`]).
    pub launches: Option<Arc<crate::latency::LaunchTimes>>,
}

/// Counts the emulator keeps, for progress and for benchmarks.
#[derive(Debug, Default)]
pub struct EmulatorStats {
    pub registered: AtomicUsize,
    pub launched: AtomicU64,
    pub finished: AtomicU64,
    pub killed: AtomicU64,
    pub updates_sent: AtomicU64,
    /// Sessions dropped on [`EmulateConfig::cut_sessions`].
    pub sessions_cut: AtomicU64,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    #[error("--master `{0}` names no master")]
    NoMaster(String),
    #[error("master URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the join token: {0}")]
    BadToken(String),
}

type TaskKey = (String, String);

/// How long an update waits for its acknowledgement before it is sent
/// again.
const RESEND_AFTER: Duration = Duration::from_secs(2);

/// A task an emulated agent runs.
struct Live {
    task: v1::TaskInfo,
    state: TaskState,
    /// Which launch of its id this is (an id may be launched again after
    /// it ended): its first update's sequence number.
    launch: u64,
}

/// One emulated agent's state.
struct Agent {
    index: usize,
    config: Arc<EmulateConfig>,
    stats: Arc<EmulatorStats>,
    id: Option<String>,
    secret: String,
    /// Live tasks.
    tasks: HashMap<TaskKey, Live>,
    /// Updates not yet acknowledged, by sequence number (resent in that
    /// order), with when each was last sent.
    unacked: std::collections::BTreeMap<u64, (tokio::time::Instant, v1::StatusUpdate)>,
    next_uuid: u64,
    heartbeat: Duration,
    /// Running tasks that finish on their own, soonest first (every task
    /// runs the same duration, so launch order is finishing order). One
    /// timer per agent, not a timer task per launch.
    finishing: VecDeque<(tokio::time::Instant, TaskKey, u64)>,
}

/// Runs `config.agents` emulated agents until `shutdown` resolves; `stats`
/// counts what they do.
pub async fn emulate(
    config: EmulateConfig,
    stats: Arc<EmulatorStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EmulateError> {
    let masters = MasterList::new(&config.masters)
        .ok_or_else(|| EmulateError::NoMaster(config.masters.clone()))?;
    let mut channels: HashMap<String, Vec<Channel>> = HashMap::new();
    let per = config.agents_per_connection.max(1);
    let connections = config.agents.div_ceil(per).max(1);
    for url in masters.all() {
        let mut list = Vec::with_capacity(connections);
        for _ in 0..connections {
            let endpoint = agora_proto::tls::endpoint(url, &config.tls).map_err(|reason| {
                EmulateError::BadUrl {
                    url: url.clone(),
                    reason,
                }
            })?;
            list.push(
                endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_lazy(),
            );
        }
        channels.insert(url.clone(), list);
    }
    let channels = Arc::new(channels);
    let token = agora_proto::auth::BearerToken::new(config.token.as_deref())
        .map_err(|e| EmulateError::BadToken(e.to_string()))?;
    let config = Arc::new(config);
    let mut running = Vec::with_capacity(config.agents);
    for index in 0..config.agents {
        let agent = Agent::new(index, config.clone(), stats.clone());
        running.push(tokio::spawn(agent.run(
            masters.clone(),
            channels.clone(),
            index / per,
            token.clone(),
        )));
    }
    shutdown.await;
    for r in running {
        r.abort();
    }
    Ok(())
}

impl Agent {
    /// An agent not yet registered.
    fn new(index: usize, config: Arc<EmulateConfig>, stats: Arc<EmulatorStats>) -> Self {
        Agent {
            index,
            config,
            stats,
            id: None,
            secret: String::new(),
            tasks: HashMap::new(),
            unacked: std::collections::BTreeMap::new(),
            next_uuid: 0,
            heartbeat: Duration::from_secs(1),
            finishing: VecDeque::new(),
        }
    }

    fn hostname(&self) -> String {
        format!("emulated-{}", self.index)
    }

    async fn run(
        mut self,
        mut masters: MasterList,
        channels: Arc<HashMap<String, Vec<Channel>>>,
        connection: usize,
        token: agora_proto::auth::BearerToken,
    ) {
        // The agent's one timer for its tasks' ends, kept across sessions;
        // set to the soonest end when a task is launched with none due, and
        // not polled while none is.
        let finish = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(finish);
        let mut backoff = Duration::from_millis(100);
        loop {
            let url = masters.current().to_string();
            let Some(channel) = channels.get(&url).and_then(|c| c.get(connection)).cloned() else {
                masters.failed(None);
                continue;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let opened = AgentServiceClient::with_interceptor(channel, token.clone())
                .max_decoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES)
                .session(UnboundedReceiverStream::new(rx))
                .await;
            let mut inbound = match opened {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    let hint = agora_proto::leader_hint(&status);
                    let pause = if hint.is_some() {
                        Duration::ZERO
                    } else {
                        backoff
                    };
                    masters.failed(hint);
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            self.register(&tx);
            let mut heartbeat = tokio::time::interval(self.heartbeat);
            // Waits for the cut from the session's start: a `notified()`
            // made afresh in each turn of the loop would take the `Notify`'s
            // lock, shared by every agent, twice per message.
            let config = self.config.clone();
            let cut = config.cut_sessions.notified();
            tokio::pin!(cut);
            loop {
                tokio::select! {
                    () = &mut cut => {
                        self.stats.sessions_cut.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(msg)) => {
                            let was_finishing = !self.finishing.is_empty();
                            if let Some(every) = self.master_message(msg, &tx) {
                                heartbeat = agora_proto::heartbeat::timer(&self.hostname(), every);
                            }
                            if !was_finishing && let Some((at, _, _)) = self.finishing.front() {
                                finish.as_mut().reset(*at);
                            }
                        }
                        _ => break,
                    },
                    () = &mut finish, if !self.finishing.is_empty() => {
                        if let Some(next) = self.finish_due(&tx, tokio::time::Instant::now()) {
                            finish.as_mut().reset(next);
                        }
                    },
                    _ = heartbeat.tick() => {
                        let _ = tx.send(AgentMessage {
                            message: Some(agent_message::Message::Heartbeat(
                                agent_message::Heartbeat::default(),
                            )),
                        });
                        // Resends ride on the heartbeat (one timer per
                        // agent, not two): only what has waited a whole
                        // interval, as an update sent just before is not
                        // lost yet.
                        let now = tokio::time::Instant::now();
                        let mut due = Vec::new();
                        for (sent, update) in self.unacked.values_mut() {
                            if now.duration_since(*sent) >= RESEND_AFTER {
                                *sent = now;
                                due.push(update.clone());
                            }
                        }
                        send_updates(&tx, due);
                    }
                }
            }
            if self.id.is_some() {
                self.stats.registered.fetch_sub(1, Ordering::Relaxed);
            }
            tokio::time::sleep(backoff).await;
        }
    }

    fn register(&self, tx: &mpsc::UnboundedSender<AgentMessage>) {
        let info = v1::AgentInfo {
            hostname: self.hostname(),
            resources: self.config.resources.to_proto(),
            attributes: self
                .config
                .attributes
                .iter()
                .map(|(name, text)| v1::Attribute {
                    name: name.clone(),
                    text: text.clone(),
                })
                .chain(std::iter::once(v1::Attribute {
                    name: "rack".into(),
                    text: format!("r{}", self.index / 40),
                }))
                .collect(),
            id: self.id.clone().map(|value| v1::AgentId { value }),
            endpoint: String::new(),
        };
        let tasks = self
            .tasks
            .iter()
            .map(|((framework, _), live)| v1::AgentTask {
                framework_id: Some(v1::FrameworkId {
                    value: framework.clone(),
                }),
                task: Some(live.task.clone()),
                state: live.state as i32,
            })
            .collect();
        let _ = tx.send(AgentMessage {
            message: Some(agent_message::Message::Register(agent_message::Register {
                agent_info: Some(info),
                tasks,
                secret: self.secret.clone(),
            })),
        });
    }

    /// Handles one message; returns a new heartbeat interval when the
    /// master sets one.
    fn master_message(
        &mut self,
        msg: MasterMessage,
        tx: &mpsc::UnboundedSender<AgentMessage>,
    ) -> Option<Duration> {
        match msg.message? {
            master_message::Message::Registered(r) => {
                self.id = r.agent_id.map(|a| a.value);
                if !r.secret.is_empty() {
                    self.secret = r.secret;
                }
                self.stats.registered.fetch_add(1, Ordering::Relaxed);
                if let Some(every) = agora_proto::heartbeat::interval(r.heartbeat_interval_seconds)
                {
                    self.heartbeat = every;
                    return Some(every);
                }
            }
            master_message::Message::Launch(launch) => {
                let framework = launch.framework_id.map(|f| f.value).unwrap_or_default();
                let arrived = std::time::Instant::now();
                let mut updates = Vec::with_capacity(2 * launch.tasks.len());
                for task in launch.tasks {
                    let id = task
                        .task_id
                        .as_ref()
                        .map(|t| t.value.clone())
                        .unwrap_or_default();
                    if let Some(launches) = &self.config.launches {
                        launches.note(&id, arrived);
                    }
                    let key = (framework.clone(), id);
                    self.stats.launched.fetch_add(1, Ordering::Relaxed);
                    let launch = self.next_uuid + 1;
                    let live = Live {
                        task,
                        state: TaskState::TaskRunning,
                        launch,
                    };
                    self.tasks.insert(key.clone(), live);
                    updates.push(self.update(&key, TaskState::TaskStarting, ""));
                    updates.push(self.update(&key, TaskState::TaskRunning, ""));
                    if let Some(d) = self.config.task_duration {
                        self.finishing
                            .push_back((tokio::time::Instant::now() + d, key, launch));
                    }
                }
                // As a real agent would if its tasks started at once: what
                // happened together is said together.
                send_updates(tx, updates);
            }
            master_message::Message::Kill(kill) => {
                let key = (
                    kill.framework_id.map(|f| f.value).unwrap_or_default(),
                    kill.task_id.map(|t| t.value).unwrap_or_default(),
                );
                let killed = self.end(key, TaskState::TaskKilled, "killed");
                send_updates(tx, killed.into_iter().collect());
            }
            master_message::Message::Acknowledgements(acks) => {
                for ack in acks.acks {
                    if let Some(seq) = std::str::from_utf8(&ack.uuid)
                        .ok()
                        .and_then(|u| u.rsplit_once('-'))
                        .and_then(|(_, seq)| seq.parse::<u64>().ok())
                    {
                        self.unacked.remove(&seq);
                    }
                }
            }
            master_message::Message::Shutdown(_)
            | master_message::Message::MarkedUnreachable(_) => {
                let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
                let ended = keys
                    .into_iter()
                    .filter_map(|key| {
                        self.end(key, TaskState::TaskKilled, "the master gave this agent up")
                    })
                    .collect();
                send_updates(tx, ended);
            }
            master_message::Message::HeartbeatAck(ack) => {
                if let Some(every) = agora_proto::heartbeat::new_interval(
                    ack.heartbeat_interval_seconds,
                    self.heartbeat,
                ) {
                    self.heartbeat = every;
                    return Some(every);
                }
            }
        }
        None
    }

    /// Finishes the tasks whose time has come by `now`; returns when the
    /// next one is due.
    fn finish_due(
        &mut self,
        tx: &mpsc::UnboundedSender<AgentMessage>,
        now: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        let mut ended = Vec::new();
        let mut next = None;
        while let Some((at, _, _)) = self.finishing.front() {
            if *at > now {
                next = Some(*at);
                break;
            }
            let (_, key, launch) = self.finishing.pop_front().expect("a front");
            // Not if it was killed meanwhile (and perhaps launched again).
            if self.tasks.get(&key).is_some_and(|t| t.launch == launch) {
                ended.extend(self.end(key, TaskState::TaskFinished, "finished"));
            }
        }
        send_updates(tx, ended);
        next
    }

    /// Ends a live task; its update, to send.
    fn end(&mut self, key: TaskKey, state: TaskState, message: &str) -> Option<v1::StatusUpdate> {
        self.tasks.remove(&key)?;
        let counter = if state == TaskState::TaskFinished {
            &self.stats.finished
        } else {
            &self.stats.killed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(self.update(&key, state, message))
    }

    /// A new update of a task, kept until acknowledged; the caller sends
    /// it.
    fn update(&mut self, key: &TaskKey, state: TaskState, message: &str) -> v1::StatusUpdate {
        self.next_uuid += 1;
        let uuid = format!("{}-{}", self.index, self.next_uuid).into_bytes();
        let update = v1::StatusUpdate {
            framework_id: Some(v1::FrameworkId {
                value: key.0.clone(),
            }),
            status: Some(v1::TaskStatus {
                task_id: Some(v1::TaskId {
                    value: key.1.clone(),
                }),
                state: state as i32,
                message: message.to_string(),
                source: task_status::Source::Agent as i32,
                uuid: uuid.clone(),
                exit_code: (state == TaskState::TaskFinished).then_some(0),
                ..Default::default()
            }),
        };
        self.unacked.insert(
            self.next_uuid,
            (tokio::time::Instant::now(), update.clone()),
        );
        self.stats.updates_sent.fetch_add(1, Ordering::Relaxed);
        update
    }
}

/// Sends updates in one message (none: nothing).
fn send_updates(tx: &mpsc::UnboundedSender<AgentMessage>, updates: Vec<v1::StatusUpdate>) {
    if updates.is_empty() {
        return;
    }
    let _ = tx.send(AgentMessage {
        message: Some(agent_message::Message::StatusUpdates(
            agent_message::StatusUpdates { updates },
        )),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(task_duration: Duration) -> Agent {
        let config = EmulateConfig {
            masters: "http://127.0.0.1:1".into(),
            agents: 1,
            resources: Resources::parse("cpus:1;mem:128").expect("resources"),
            attributes: Vec::new(),
            task_duration: Some(task_duration),
            agents_per_connection: 1,
            cut_sessions: Arc::default(),
            token: None,
            tls: agora_proto::tls::ClientTls::default(),
            launches: None,
        };
        let mut agent = Agent::new(0, Arc::new(config), Arc::default());
        agent.id = Some("agent-0".into());
        agent
    }

    fn to_agent(message: master_message::Message) -> MasterMessage {
        MasterMessage {
            message: Some(message),
        }
    }

    /// One launch message of these tasks.
    fn launch(tasks: &[&str]) -> MasterMessage {
        to_agent(master_message::Message::Launch(master_message::Launch {
            framework_id: Some(v1::FrameworkId { value: "f".into() }),
            tasks: tasks
                .iter()
                .map(|task| v1::TaskInfo {
                    task_id: Some(v1::TaskId {
                        value: task.to_string(),
                    }),
                    ..Default::default()
                })
                .collect(),
        }))
    }

    fn kill(task: &str) -> MasterMessage {
        to_agent(master_message::Message::Kill(master_message::Kill {
            framework_id: Some(v1::FrameworkId { value: "f".into() }),
            task_id: Some(v1::TaskId { value: task.into() }),
            ..Default::default()
        }))
    }

    /// The (task, state) of each status update sent, by message.
    fn sent(rx: &mut mpsc::UnboundedReceiver<AgentMessage>) -> Vec<Vec<(String, TaskState)>> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m.message? {
                agent_message::Message::StatusUpdates(batch) => Some(
                    batch
                        .updates
                        .into_iter()
                        .filter_map(|u| {
                            let status = u.status?;
                            let state = status.state();
                            Some((status.task_id?.value, state))
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    fn message(updates: &[(&str, TaskState)]) -> Vec<(String, TaskState)> {
        updates.iter().map(|(t, s)| (t.to_string(), *s)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_finish_after_their_duration_in_launch_order_and_a_killed_one_does_not() {
        let mut agent = agent(Duration::from_secs(1));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = tokio::time::Instant::now();
        agent.master_message(launch(&["a"]), &tx);
        tokio::time::advance(Duration::from_millis(100)).await;
        agent.master_message(launch(&["b", "c"]), &tx);
        agent.master_message(kill("b"), &tx);
        // "b" is launched again under the same id: its first launch's
        // time must not end the second.
        tokio::time::advance(Duration::from_millis(500)).await;
        agent.master_message(launch(&["b"]), &tx);
        use TaskState::*;
        // A launch's updates go in one message.
        assert_eq!(
            sent(&mut rx),
            [
                message(&[("a", TaskStarting), ("a", TaskRunning)]),
                message(&[
                    ("b", TaskStarting),
                    ("b", TaskRunning),
                    ("c", TaskStarting),
                    ("c", TaskRunning)
                ]),
                message(&[("b", TaskKilled)]),
                message(&[("b", TaskStarting), ("b", TaskRunning)]),
            ]
        );

        // Nothing is due before a's second; then the next is c's.
        let early = start + Duration::from_millis(999);
        assert_eq!(
            agent.finish_due(&tx, early),
            Some(start + Duration::from_secs(1))
        );
        assert!(sent(&mut rx).is_empty());
        // The ends due together go together.
        let next = agent.finish_due(&tx, start + Duration::from_millis(1100));
        assert_eq!(
            sent(&mut rx),
            [message(&[("a", TaskFinished), ("c", TaskFinished)])]
        );
        assert_eq!(next, Some(start + Duration::from_millis(1600)));
        let last = agent.finish_due(&tx, start + Duration::from_millis(1600));
        assert_eq!(sent(&mut rx), [message(&[("b", TaskFinished)])]);
        assert_eq!(last, None);
        assert!(agent.tasks.is_empty());
    }
}
