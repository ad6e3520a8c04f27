//! The agent's event loop: one task owns the agent's state (its tasks and
//! their unacknowledged status updates) and reacts to the master's messages,
//! to task supervisors, and to its timers. The master connection comes and
//! goes; tasks and pending updates do not depend on it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agora_proto::v1::{
    self, AgentMessage, MasterMessage, TaskState, TaskStatus, agent_message,
    agent_service_client::AgentServiceClient, master_message, task_status,
};
use agora_proto::{Resources, is_terminal};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::AgentConfig;
use crate::cgroups::Usage;
use crate::checkpoint::{CheckpointWriter, Checkpoints};
use crate::containerizer::{Container, Containerizer, Exit, LaunchSpec, TaskUser};
use crate::health::{CheckTarget, HealthEvent, run_checks};

type TaskKey = (String, String);

/// What a task supervisor reports.
pub(crate) enum TaskEvent {
    /// The containerizer finished starting a task (off the event loop).
    Launched {
        key: TaskKey,
        result: Result<Box<dyn Container>, String>,
    },
    Exited {
        key: TaskKey,
        state: TaskState,
        message: String,
        reason: task_status::Reason,
        exit_code: Option<i32>,
        /// The ended container, destroyed once the outcome is on disk: its
        /// record of how the task ended must outlive any restart before.
        container: Option<Box<dyn Container>>,
    },
    /// The task's health checker has news.
    Health { key: TaskKey, event: HealthEvent },
    /// A checkpoint holding the task's outcome reached the disk: its
    /// pending update may go out.
    Checkpointed { key: TaskKey },
    /// The task holds more on disk than its `disk` resource.
    OverDisk { key: TaskKey, message: String },
    /// The ended task's container is gone (after its outcome reached the
    /// disk): the outcome may go out.
    Destroyed { key: TaskKey },
}

/// One running container, as the agent's HTTP API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerView {
    pub framework_id: String,
    pub task_id: String,
    pub container_id: String,
    pub pid: u32,
    pub state: String,
    /// Relative to the agent's sandbox root: `<framework>/<task>`.
    pub sandbox: String,
    pub usage: Option<Usage>,
}

/// Questions from the agent's HTTP API.
pub(crate) enum AgentRequest {
    Containers(oneshot::Sender<Vec<ContainerView>>),
}

struct TaskRecord {
    info: v1::TaskInfo,
    state: TaskState,
    container_id: String,
    /// The container's supervisor process (0 before launch).
    pid: u32,
    /// Asks the supervisor to kill the task, with the grace period.
    kill: Option<oneshot::Sender<Duration>>,
    /// A kill that arrived while the task was still being launched.
    kill_pending: Option<Duration>,
    /// Updates not yet acknowledged, oldest first. All are in flight at once
    /// (the session stream keeps them in order); unacknowledged ones are
    /// resent together, in order.
    pending: VecDeque<v1::StatusUpdate>,
    sent_at: Option<Instant>,
    /// The latest health-check result (sent with every update).
    healthy: Option<bool>,
    /// The task's health checker, stopped when the task ends.
    checker: Option<tokio::task::AbortHandle>,
    /// Why the agent killed the task for failing its health checks.
    unhealthy: Option<String>,
    /// Why the agent killed the task for its disk use.
    over_disk: Option<String>,
    /// The ended container, kept until the outcome's checkpoint is on disk.
    ended: Option<Box<dyn Container>>,
}

impl TaskRecord {
    fn new(info: v1::TaskInfo, state: TaskState, container_id: String) -> TaskRecord {
        TaskRecord {
            info,
            state,
            container_id,
            pid: 0,
            kill: None,
            kill_pending: None,
            pending: VecDeque::new(),
            sent_at: None,
            healthy: None,
            checker: None,
            unhealthy: None,
            over_disk: None,
            ended: None,
        }
    }
}

/// Messages queued for the master before the agent drops what it would
/// send (see `Agent::send`).
const SESSION_CAPACITY: usize = 1024;
/// Task events (launched, exited, health) queued for the agent's loop;
/// past it, the tasks reporting them wait.
const TASK_EVENTS_CAPACITY: usize = 1024;
/// Requests from the agent's HTTP API queued for its loop.
pub(crate) const REQUESTS_CAPACITY: usize = 256;

struct Session {
    tx: mpsc::Sender<AgentMessage>,
    registered: bool,
}

pub(crate) struct Agent<C: Containerizer> {
    config: AgentConfig,
    resources: Resources,
    containerizer: Arc<C>,
    agent_id: Option<String>,
    /// Issued by the master with the id; presented whenever we register.
    secret: String,
    tasks: HashMap<TaskKey, TaskRecord>,
    session: Option<Session>,
    heartbeat: Duration,
    /// The last word from the master, and how long the master waits before
    /// it declares this agent unreachable (known once registered).
    master_contact: Instant,
    agent_timeout: Option<Duration>,
    events_tx: mpsc::Sender<TaskEvent>,
    /// The sandbox sweep in progress, if any.
    sweeping: Option<tokio::task::JoinHandle<()>>,
    /// The disk measurement in progress, if any.
    measuring: Option<tokio::task::JoinHandle<()>>,
    /// The token the master gave for its calls to the HTTP API.
    http_token: tokio::sync::watch::Sender<Option<String>>,
    /// The join credential presented when opening a session.
    token: agora_proto::auth::BearerToken,
    checkpoints: Checkpoints,
    /// Writes checkpoints off the event loop; reports outcomes on disk.
    writer: CheckpointWriter<TaskKey>,
}

/// Writes a file only its owner can read, atomically (write, sync, rename).
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why a session could not be opened: the message, and the leader a
/// standby master named.
struct SessionRefused {
    message: String,
    leader: Option<String>,
}

/// Opens the session stream to the master.
async fn open_session(
    master: String,
    token: agora_proto::auth::BearerToken,
    tls: agora_proto::tls::ClientTls,
) -> Result<(mpsc::Sender<AgentMessage>, Streaming<MasterMessage>), SessionRefused> {
    let refused = |message: String| SessionRefused {
        message,
        leader: None,
    };
    let endpoint = agora_proto::tls::endpoint(&master, &tls)
        .map_err(|e| refused(format!("master URL `{master}`: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| refused(format!("connecting to {master}: {e}")))?;
    let (tx, rx) = mpsc::channel(SESSION_CAPACITY);
    let inbound = AgentServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(agora_proto::limits::MAX_MESSAGE_BYTES)
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|status| SessionRefused {
            message: format!("opening a session with {master}: {}", status.message()),
            leader: agora_proto::leader_hint(&status),
        })?
        .into_inner();
    Ok((tx, inbound))
}

impl<C: Containerizer> Agent<C> {
    pub(crate) fn new(
        config: AgentConfig,
        resources: Resources,
        containerizer: C,
        http_token: tokio::sync::watch::Sender<Option<String>>,
    ) -> (Self, mpsc::Receiver<TaskEvent>) {
        let (events_tx, events_rx) = mpsc::channel(TASK_EVENTS_CAPACITY);
        let agent_id = std::fs::read_to_string(config.data_dir.join("agent_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let secret = std::fs::read_to_string(config.data_dir.join("agent_secret"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let checkpoints = Checkpoints::new(&config.data_dir);
        let done = events_tx.clone();
        let writer = CheckpointWriter::start(checkpoints.clone(), move |key| {
            let _ = done.blocking_send(TaskEvent::Checkpointed { key });
        });
        // Checked by `run` before the agent is built.
        let token =
            agora_proto::auth::BearerToken::new(config.token.as_deref()).unwrap_or_default();
        (
            Agent {
                config,
                resources,
                containerizer: Arc::new(containerizer),
                agent_id,
                secret,
                tasks: HashMap::new(),
                session: None,
                heartbeat: Duration::from_secs(1),
                master_contact: Instant::now(),
                agent_timeout: None,
                events_tx,
                checkpoints,
                writer,
                sweeping: None,
                measuring: None,
                http_token,
                token,
            },
            events_rx,
        )
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<TaskEvent>,
        mut requests: mpsc::Receiver<AgentRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        self.recover();
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let mut inbound: Option<Streaming<MasterMessage>> = None;
        let mut connecting = false;
        let mut backoff = Duration::from_millis(100);
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        let gc_period =
            (self.config.sandbox_gc / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let mut gc = tokio::time::interval(gc_period);
        let mut disk_watch = tokio::time::interval(
            self.config
                .disk_watch_interval
                .unwrap_or(Duration::from_secs(3600)),
        );
        let mut retry = tokio::time::interval(
            self.config
                .status_retry_interval
                .min(Duration::from_secs(1)),
        );
        // Several masters (one leads): go where a standby points, else
        // try the next.
        let mut failed_in_round = 0;
        let mut masters = agora_proto::MasterList::new(&self.config.master).unwrap_or_else(|| {
            agora_proto::MasterList::new("http://127.0.0.1:5050").expect("a list")
        });
        loop {
            // First, also after this process was frozen: tasks that must not
            // outlive a partition go before anything else happens.
            self.stop_tasks_if_master_lost();
            if inbound.is_none() && !connecting {
                connecting = true;
                let master = masters.current().to_string();
                let token = self.token.clone();
                let tls = self.config.tls.clone();
                let done = connected_tx.clone();
                // The next master at once, until a whole round failed.
                let delay = if failed_in_round + 1 < masters.all().len() {
                    Duration::ZERO
                } else {
                    backoff
                };
                tokio::spawn(async move {
                    let result = open_session(master, token, tls).await;
                    if let Err(refused) = &result
                        && refused.leader.is_none()
                    {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = done.send(result);
                });
            }
            tokio::select! {
                result = connected_rx.recv() => {
                    connecting = false;
                    match result {
                        Some(Ok((tx, stream))) => {
                            backoff = Duration::from_millis(100);
                            failed_in_round = 0;
                            inbound = Some(stream);
                            self.session = Some(Session { tx, registered: false });
                            self.register();
                        }
                        Some(Err(refused)) => {
                            warn!("{}; retrying", refused.message);
                            masters.failed(refused.leader);
                            failed_in_round = (failed_in_round + 1) % masters.all().len().max(1);
                            // With standbys to ask, a new leader is at most
                            // a lease away: keep asking often.
                            let cap = if masters.all().len() > 1 { 500 } else { 5000 };
                            backoff = (backoff * 2).min(Duration::from_millis(cap));
                        }
                        None => break,
                    }
                }
                message = next_message(&mut inbound) => match message {
                    Some(msg) => {
                        if let Some(interval) = self.master_message(msg) {
                            let key = self.agent_id.clone().unwrap_or_default();
                            heartbeat = agora_proto::heartbeat::timer(&key, interval);
                        }
                    }
                    None => {
                        warn!(master = masters.current(), "lost the master; reconnecting");
                        inbound = None;
                        self.session = None;
                        // Quickly: it may have been a leader that died,
                        // and another leads now (a failed connection
                        // moves on to the next master).
                        backoff = Duration::from_millis(100);
                    }
                },
                Some(event) = events.recv() => self.task_event(event),
                Some(request) = requests.recv() => match request {
                    AgentRequest::Containers(reply) => {
                        let _ = reply.send(self.containers());
                    }
                },
                _ = heartbeat.tick() => {
                    if self.session.as_ref().is_some_and(|s| s.registered) {
                        let usage = self.usage();
                        self.send(agent_message::Message::Heartbeat(agent_message::Heartbeat { usage }));
                    }
                }
                _ = retry.tick() => self.retry_updates(false),
                _ = gc.tick() => self.collect_sandboxes(),
                _ = disk_watch.tick(), if self.config.disk_watch_interval.is_some() => {
                    self.measure_disks();
                }
                () = &mut shutdown => break,
            }
        }
        if self.containerizer.can_recover() {
            info!("agent stopping; its tasks keep running and are re-attached on restart");
        } else {
            self.stop_tasks(&mut events).await;
        }
    }

    /// Re-attaches to the tasks a previous run of the agent checkpointed,
    /// and removes containers that no checkpoint claims.
    fn recover(&mut self) {
        let (checkpoints, errors) = self.checkpoints.load_all();
        for e in errors {
            warn!("skipping a checkpoint: {e}");
        }
        let mut keep = Vec::new();
        for cp in checkpoints {
            let framework = cp
                .framework_id
                .as_ref()
                .map(|f| f.value.clone())
                .unwrap_or_default();
            let Some(info) = cp.task.clone() else {
                continue;
            };
            let task_id = info
                .task_id
                .as_ref()
                .map(|t| t.value.clone())
                .unwrap_or_default();
            let key = (framework.clone(), task_id.clone());
            let state = TaskState::try_from(cp.state).unwrap_or(TaskState::TaskUnknown);
            keep.push(cp.container_id.clone());
            let mut record = TaskRecord::new(info.clone(), state, cp.container_id.clone());
            record.pid = cp.pid;
            record.pending = cp.pending.into_iter().collect();
            self.tasks.insert(key.clone(), record);
            if is_terminal(state) {
                info!(task = %task_id, "recovered a finished task with updates to deliver");
                continue;
            }
            // Re-attaching runs nothing: who the task runs as is settled.
            let user = self.task_user(&info).unwrap_or_default();
            let spec = self.launch_spec(&framework, &info, &cp.container_id, user);
            match self.containerizer.recover(&spec, cp.pid) {
                Ok(container) => {
                    info!(task = %task_id, pid = cp.pid, "re-attached to a running task");
                    self.supervise(key.clone(), container);
                    self.start_health_checks(&key);
                    if self.config.recover_cleanup {
                        info!(task = %task_id, "--recover=cleanup: killing it");
                        self.kill(key, None);
                    }
                }
                Err(e) => {
                    warn!(task = %task_id, "{e}");
                    self.update(
                        &key,
                        TaskState::TaskFailed,
                        &e.to_string(),
                        task_status::Reason::AgentRestarted,
                        None,
                    );
                }
            }
        }
        for id in self.containerizer.clean_up_except(&keep) {
            info!(container = %id, "removed a container no checkpoint claims");
        }
    }

    /// Removes the sandboxes of ended tasks untouched for `--sandbox-gc`,
    /// on a blocking thread (walking and deleting directories takes as long
    /// as the disk likes); one sweep at a time.
    fn collect_sandboxes(&mut self) {
        if self.sweeping.as_ref().is_some_and(|s| !s.is_finished()) {
            return;
        }
        let live: HashSet<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| !is_terminal(t.state))
            .map(|(k, _)| k.clone())
            .collect();
        let root = self.config.data_dir.join("sandboxes");
        let idle_for = self.config.sandbox_gc;
        self.sweeping = Some(tokio::task::spawn_blocking(move || {
            sweep_sandboxes(&root, &live, idle_for);
        }));
    }

    /// Measures running tasks' disk use against their `disk` resource, on a
    /// blocking thread; one measurement at a time. A task over it is
    /// reported back (`TaskEvent::OverDisk`) and killed.
    fn measure_disks(&mut self) {
        if self.measuring.as_ref().is_some_and(|m| !m.is_finished()) {
            return;
        }
        let claims: Vec<crate::disk::DiskClaim<TaskKey>> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state == TaskState::TaskRunning && t.over_disk.is_none())
            .filter_map(|(key, t)| {
                let mb = Resources::from_proto(&t.info.resources)
                    .ok()?
                    .scalar("disk");
                (mb > 0.0).then(|| {
                    let mut paths = vec![self.sandbox_of(key)];
                    paths.extend(self.containerizer.disk_paths(&t.container_id));
                    crate::disk::DiskClaim {
                        key: key.clone(),
                        paths,
                        limit_bytes: (mb * 1_000_000.0) as u64,
                    }
                })
            })
            .collect();
        if claims.is_empty() {
            return;
        }
        let events = self.events_tx.clone();
        self.measuring = Some(tokio::task::spawn_blocking(move || {
            for over in crate::disk::over_limit(&claims) {
                let message = over.message();
                let _ = events.blocking_send(TaskEvent::OverDisk {
                    key: over.key,
                    message,
                });
            }
        }));
    }

    /// Queues the task's checkpoint. With `report`, true if it holds an
    /// outcome or a task's start, which is reported
    /// (`TaskEvent::Checkpointed`) once on disk: its update must not go out
    /// before.
    fn checkpoint(&self, key: &TaskKey, report: bool) -> bool {
        let Some(t) = self.tasks.get(key) else {
            return false;
        };
        // Without re-attachment there is nothing for a restart to resume.
        if t.container_id.is_empty() || !self.containerizer.can_recover() {
            return false;
        }
        if is_terminal(t.state) && t.pending.is_empty() {
            self.writer.remove(&t.container_id);
            return false;
        }
        let cp = v1::TaskCheckpoint {
            framework_id: Some(v1::FrameworkId {
                value: key.0.clone(),
            }),
            task: Some(t.info.clone()),
            state: t.state as i32,
            container_id: t.container_id.clone(),
            pid: t.pid,
            pending: t.pending.iter().cloned().collect(),
        };
        // A task's outcome must survive even a machine crash; its
        // intermediate states are re-derived on recovery, so they skip fsync.
        let pending_outcome = t.pending.iter().any(|u| {
            u.status.as_ref().is_some_and(|s| {
                is_terminal(TaskState::try_from(s.state).unwrap_or(TaskState::TaskUnknown))
            })
        });
        // But the process a running task is cannot be re-derived: "running"
        // goes out once the checkpoint naming its pid is written (the page
        // cache is enough; a machine crash ends the task too). An agent
        // killed in between came back thinking the launch was interrupted,
        // and failed a task its framework had seen running.
        let says_running = t
            .pending
            .back()
            .and_then(|u| u.status.as_ref())
            .is_some_and(|s| s.state == TaskState::TaskRunning as i32);
        let then = (report && (pending_outcome || says_running)).then(|| key.clone());
        let reported = then.is_some();
        self.writer.save(cp, pending_outcome, then);
        reported
    }

    fn usage(&self) -> Vec<v1::TaskUsage> {
        self.tasks
            .iter()
            .filter(|(_, t)| !is_terminal(t.state) && !t.container_id.is_empty())
            .filter_map(|((framework, task), t)| {
                let u = self.containerizer.usage(&t.container_id)?;
                Some(v1::TaskUsage {
                    framework_id: Some(v1::FrameworkId {
                        value: framework.clone(),
                    }),
                    task_id: Some(v1::TaskId {
                        value: task.clone(),
                    }),
                    usage: Some(v1::ResourceUsage {
                        cpu_seconds: u.cpu_time_ns as f64 / 1e9,
                        memory_bytes: u.memory_bytes,
                        memory_peak_bytes: u.memory_peak_bytes,
                        pids: u.pids,
                    }),
                })
            })
            .collect()
    }

    fn containers(&self) -> Vec<ContainerView> {
        let mut out: Vec<ContainerView> = self
            .tasks
            .iter()
            .filter(|(_, t)| !is_terminal(t.state))
            .map(|((framework, task), t)| ContainerView {
                framework_id: framework.clone(),
                task_id: task.clone(),
                container_id: t.container_id.clone(),
                pid: t.pid,
                state: t.state.as_str_name().to_string(),
                sandbox: format!("{framework}/{task}"),
                usage: self.containerizer.usage(&t.container_id),
            })
            .collect();
        out.sort_by(|a, b| (&a.framework_id, &a.task_id).cmp(&(&b.framework_id, &b.task_id)));
        out
    }

    /// Queues a message for the master. A full session drops it: updates
    /// are retried until acknowledged, heartbeats recur.
    fn send(&self, message: agent_message::Message) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.tx.try_send(AgentMessage {
                message: Some(message),
            })
            .is_ok()
        })
    }

    fn register(&mut self) {
        let tasks = self
            .tasks
            .iter()
            .map(|((framework, _), t)| v1::AgentTask {
                framework_id: Some(v1::FrameworkId {
                    value: framework.clone(),
                }),
                task: Some(t.info.clone()),
                state: t.state as i32,
            })
            .collect();
        let info = v1::AgentInfo {
            hostname: self.config.hostname.clone(),
            resources: self.resources.to_proto(),
            attributes: self
                .config
                .attributes
                .iter()
                .map(|(name, text)| v1::Attribute {
                    name: name.clone(),
                    text: text.clone(),
                })
                .collect(),
            id: self.agent_id.clone().map(|value| v1::AgentId { value }),
            endpoint: self.config.endpoint.clone(),
        };
        info!(agent = ?self.agent_id, "registering with the master");
        self.send(agent_message::Message::Register(agent_message::Register {
            agent_info: Some(info),
            tasks,
            secret: self.secret.clone(),
        }));
    }

    /// Handles one message; returns a new heartbeat interval when the master
    /// sets one.
    fn master_message(&mut self, msg: MasterMessage) -> Option<Duration> {
        self.master_contact = Instant::now();
        match msg.message? {
            master_message::Message::HeartbeatAck(ack) => {
                // The master slows heartbeats as the cluster grows, and
                // waits longer before it gives an agent up.
                let timeout = ack.agent_timeout_seconds;
                if timeout.is_finite() && timeout > 0.0 {
                    self.agent_timeout = Some(Duration::from_secs_f64(timeout.min(86_400.0)));
                }
                if let Some(interval) = agora_proto::heartbeat::new_interval(
                    ack.heartbeat_interval_seconds,
                    self.heartbeat,
                ) {
                    self.heartbeat = interval;
                    return Some(interval);
                }
            }
            master_message::Message::MarkedUnreachable(_) => {
                warn!("the master declared this agent unreachable");
                self.stop_tasks_that_must_not_outlive_a_partition();
            }
            master_message::Message::Registered(r) => {
                let id = r.agent_id.map(|a| a.value).unwrap_or_default();
                info!(agent = %id, "registered");
                self.http_token.send_replace(Some(r.http_token));
                if !r.secret.is_empty() {
                    // Newly admitted: the id is only ours with this secret.
                    let path = self.config.data_dir.join("agent_secret");
                    if let Err(e) = write_private(&path, &r.secret) {
                        warn!("writing {}: {e}", path.display());
                    }
                    self.secret = r.secret;
                }
                if self.agent_id.as_deref() != Some(id.as_str()) {
                    let path = self.config.data_dir.join("agent_id");
                    if let Err(e) = std::fs::write(&path, &id) {
                        warn!("writing {}: {e}", path.display());
                    }
                    self.agent_id = Some(id);
                }
                if let Some(s) = self.session.as_mut() {
                    s.registered = true;
                }
                if r.agent_timeout_seconds.is_finite() && r.agent_timeout_seconds > 0.0 {
                    self.agent_timeout = Some(Duration::from_secs_f64(
                        r.agent_timeout_seconds.min(86_400.0),
                    ));
                }
                self.retry_updates(true);
                if let Some(interval) =
                    agora_proto::heartbeat::interval(r.heartbeat_interval_seconds)
                {
                    self.heartbeat = interval;
                    return Some(interval);
                }
            }
            master_message::Message::Launch(launch) => {
                let framework = launch.framework_id.map(|f| f.value).unwrap_or_default();
                for task in launch.tasks {
                    self.launch(framework.clone(), task);
                }
            }
            master_message::Message::Kill(kill) => {
                let key = (
                    kill.framework_id.map(|f| f.value).unwrap_or_default(),
                    kill.task_id.map(|t| t.value).unwrap_or_default(),
                );
                let grace = kill
                    .kill_grace_period
                    .filter(|g| g.is_finite() && *g >= 0.0)
                    .map(|g| Duration::from_secs_f64(g.min(3600.0)));
                self.kill(key, grace);
            }
            master_message::Message::Acknowledgements(acks) => {
                for ack in acks.acks {
                    let key = (
                        ack.framework_id.map(|f| f.value).unwrap_or_default(),
                        ack.task_id.map(|t| t.value).unwrap_or_default(),
                    );
                    self.acknowledge(&key, &ack.uuid);
                }
            }
            master_message::Message::Shutdown(s) => {
                warn!(reason = %s.message, "the master asked this agent to shut down; killing its tasks");
                let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
                for key in keys {
                    self.kill(key, None);
                }
            }
        }
        None
    }

    fn sandbox_of(&self, key: &TaskKey) -> PathBuf {
        self.config
            .data_dir
            .join("sandboxes")
            .join(&key.0)
            .join(&key.1)
    }

    fn launch_spec(
        &self,
        framework: &str,
        task: &v1::TaskInfo,
        container_id: &str,
        user: TaskUser,
    ) -> LaunchSpec {
        let task_id = task
            .task_id
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        let sandbox = self.sandbox_of(&(framework.to_string(), task_id.clone()));
        let resources = Resources::from_proto(&task.resources).unwrap_or_default();
        LaunchSpec {
            container_id: container_id.to_string(),
            command: task
                .command
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default(),
            env: task_env(framework, task, &sandbox),
            sandbox,
            task_id,
            cpus: resources.scalar("cpus"),
            mem_mib: resources.scalar("mem"),
            cpu_hard_limit: task.cpu_hard_limit,
            pids_limit: (task.pids_limit > 0).then_some(task.pids_limit),
            image: (!task.image.is_empty()).then(|| PathBuf::from(&task.image)),
            user,
            writable: task
                .volumes
                .iter()
                .filter(|v| !v.read_only)
                .map(|v| PathBuf::from(&v.host_path))
                .collect(),
        }
    }

    /// Who `task` runs as: its user, else the agent's default; root only
    /// where the agent allows it.
    fn task_user(&self, task: &v1::TaskInfo) -> Result<TaskUser, String> {
        let name = if task.user.is_empty() {
            self.config.default_task_user.as_str()
        } else {
            task.user.as_str()
        };
        let user = TaskUser::resolve(name)?;
        if user.uid == 0 && !self.config.allow_root_tasks {
            return Err(format!(
                "tasks may not run as root (user `{name}`) on this agent (it allows that with --allow-root-tasks)"
            ));
        }
        Ok(user)
    }

    fn launch(&mut self, framework: String, task: v1::TaskInfo) {
        let task_id = task
            .task_id
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        let key = (framework.clone(), task_id.clone());
        let span = info_span!("task", framework = %framework, task = %task_id);
        let _enter = span.enter();
        if self.tasks.get(&key).is_some_and(|t| !is_terminal(t.state)) {
            warn!("launch of a task that is already running; ignored");
            return;
        }
        let container_id = uuid::Uuid::new_v4().simple().to_string();
        self.tasks.insert(
            key.clone(),
            TaskRecord::new(task.clone(), TaskState::TaskStaging, container_id.clone()),
        );
        let invalid =
            task_id.is_empty() || task_id == "." || task_id == ".." || task_id.contains('/');
        if invalid || framework.is_empty() || framework.contains('/') || framework.starts_with('.')
        {
            let message = "invalid task or framework id for a sandbox path";
            self.update(
                &key,
                TaskState::TaskError,
                message,
                task_status::Reason::TaskInvalid,
                None,
            );
            return;
        }
        self.update(
            &key,
            TaskState::TaskStarting,
            "",
            task_status::Reason::None,
            None,
        );
        let user = match self.task_user(&task) {
            Ok(u) => u,
            Err(message) => {
                self.update(
                    &key,
                    TaskState::TaskFailed,
                    &message,
                    task_status::Reason::TaskInvalid,
                    None,
                );
                return;
            }
        };
        let spec = self.launch_spec(&framework, &task, &container_id, user);
        let created = std::fs::create_dir_all(&spec.sandbox).and_then(|()| {
            // The task's own directory is its user's.
            std::os::unix::fs::chown(&spec.sandbox, Some(spec.user.uid), Some(spec.user.gid))
        });
        if let Err(e) = created {
            let message = format!("creating sandbox {}: {e}", spec.sandbox.display());
            self.update(
                &key,
                TaskState::TaskFailed,
                &message,
                task_status::Reason::ContainerLaunchFailed,
                None,
            );
            return;
        }
        // Starting a container is blocking work (cgroup files, fork/exec)
        // that takes milliseconds: off the event loop, so launches overlap.
        let containerizer = self.containerizer.clone();
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = containerizer.launch(&spec).map_err(|e| e.to_string());
            debug!(elapsed = ?started.elapsed(), "containerizer launch");
            let _ = events.blocking_send(TaskEvent::Launched { key, result });
        });
    }

    /// A launch finished: watch the container and report it running (or
    /// failed), and carry out a kill that came in meanwhile.
    fn launched(&mut self, key: TaskKey, result: Result<Box<dyn Container>, String>) {
        let mut container = match result {
            Ok(c) => c,
            Err(message) => {
                let reason = task_status::Reason::ContainerLaunchFailed;
                self.update(&key, TaskState::TaskFailed, &message, reason, None);
                return;
            }
        };
        let Some(task) = self.tasks.get_mut(&key) else {
            // Nothing tracks it any more; it must not run untracked.
            let _ = container.kill_all();
            let _ = container.destroy();
            return;
        };
        task.pid = container.pid();
        info!(task = %key.1, pid = container.pid(), container = %task.container_id, "task running");
        self.supervise(key.clone(), container);
        self.update(
            &key,
            TaskState::TaskRunning,
            "",
            task_status::Reason::None,
            None,
        );
        self.start_health_checks(&key);
        if let Some(grace) = self.tasks.get_mut(&key).and_then(|t| t.kill_pending.take())
            && let Some(kill) = self.tasks.get_mut(&key).and_then(|t| t.kill.take())
        {
            let _ = kill.send(grace);
        }
    }

    /// Watches a container in its own task; its end comes back as an event.
    fn supervise(&mut self, key: TaskKey, container: Box<dyn Container>) {
        let (kill_tx, kill_rx) = oneshot::channel();
        if let Some(t) = self.tasks.get_mut(&key) {
            t.kill = Some(kill_tx);
        }
        let span = info_span!("task", framework = %key.0, task = %key.1);
        tokio::spawn(supervise(key, container, kill_rx, self.events_tx.clone()).instrument(span));
    }

    /// Starts the task's health checker, if it has a check.
    fn start_health_checks(&mut self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        let Some(check) = task.info.health_check.clone() else {
            return;
        };
        let ports: Vec<u64> = Resources::from_proto(&task.info.resources)
            .map(|r| r.ranges("ports").iter().collect())
            .unwrap_or_default();
        let sandbox = self.sandbox_of(key);
        let target = CheckTarget {
            port: ports.get(check.port_index as usize).copied(),
            env: task_env(&key.0, &task.info, &sandbox),
            sandbox,
        };
        let events = self.events_tx.clone();
        let event_key = key.clone();
        let span = info_span!("health", framework = %key.0, task = %key.1);
        let handle = tokio::spawn(
            run_checks(check, target, move |event| {
                let event = TaskEvent::Health {
                    key: event_key.clone(),
                    event,
                };
                match events.try_send(event) {
                    Ok(()) => true,
                    // Not dropped: health changes are reported once.
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        let events = events.clone();
                        tokio::spawn(async move { events.send(event).await });
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            })
            .instrument(span),
        );
        if let Some(task) = self.tasks.get_mut(key) {
            task.checker = Some(handle.abort_handle());
        }
    }

    /// A health checker's news: a change of health becomes a `TASK_RUNNING`
    /// update; exhausted failures kill the task.
    fn health_event(&mut self, key: TaskKey, event: HealthEvent) {
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        if is_terminal(task.state) {
            return;
        }
        match event {
            HealthEvent::Changed { healthy, message } => {
                info!(task = %key.1, healthy, %message, "health changed");
                task.healthy = Some(healthy);
                if task.state == TaskState::TaskRunning {
                    let reason = task_status::Reason::TaskHealthCheckStatusUpdated;
                    self.update(&key, TaskState::TaskRunning, &message, reason, None);
                }
            }
            HealthEvent::Exhausted { message } => {
                warn!(task = %key.1, %message, "killing an unhealthy task");
                task.healthy = Some(false);
                task.unhealthy = Some(message);
                self.kill(key, None);
            }
        }
    }

    /// Kills a task; `grace` (from the kill itself) overrides the task's
    /// own grace period and the agent's default.
    /// Out of touch with the master for longer than the agent timeout: the
    /// master has declared this agent unreachable, and a framework may be
    /// starting replacements. Tasks that asked for it are killed at once.
    fn stop_tasks_if_master_lost(&mut self) {
        let Some(timeout) = self.agent_timeout else {
            return;
        };
        if self.master_contact.elapsed() > timeout {
            self.stop_tasks_that_must_not_outlive_a_partition();
        }
    }

    /// Kills, without grace, the tasks that asked not to run once the
    /// master has given this agent up.
    fn stop_tasks_that_must_not_outlive_a_partition(&mut self) {
        let doomed: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                t.info.stop_when_master_lost && !is_terminal(t.state) && t.kill.is_some()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            warn!(task = %key.1, "lost the master for longer than the agent timeout; stopping the task");
            self.kill(key, Some(Duration::ZERO));
        }
    }

    fn kill(&mut self, key: TaskKey, grace: Option<Duration>) {
        let default = self.config.kill_grace_period;
        match self.tasks.get_mut(&key) {
            Some(t) if !is_terminal(t.state) => {
                let grace = match grace {
                    Some(g) => g,
                    None if t.info.kill_grace_period > 0.0 => {
                        Duration::from_secs_f64(t.info.kill_grace_period.min(3600.0))
                    }
                    None => default,
                };
                if let Some(kill) = t.kill.take() {
                    info!(task = %key.1, ?grace, "killing task");
                    let _ = kill.send(grace);
                } else if t.pid == 0 {
                    // Still launching: kill it as soon as it exists.
                    t.kill_pending = Some(grace);
                }
            }
            Some(_) => debug!(task = %key.1, "kill of an ended task; its update is on its way"),
            None => {
                // The master thinks it exists; tell it that it does not.
                let info = v1::TaskInfo {
                    task_id: Some(v1::TaskId {
                        value: key.1.clone(),
                    }),
                    ..Default::default()
                };
                self.tasks.insert(
                    key.clone(),
                    TaskRecord::new(info, TaskState::TaskStaging, String::new()),
                );
                self.update(
                    &key,
                    TaskState::TaskLost,
                    "the agent has no such task",
                    task_status::Reason::TaskUnknown,
                    None,
                );
            }
        }
    }

    fn task_event(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::Launched { key, result } => self.launched(key, result),
            TaskEvent::Exited {
                key,
                mut state,
                mut message,
                mut reason,
                exit_code,
                container,
            } => {
                if let Some(task) = self.tasks.get_mut(&key) {
                    if let Some(checker) = task.checker.take() {
                        checker.abort();
                    }
                    if let Some(why) = task.unhealthy.take() {
                        state = TaskState::TaskKilled;
                        reason = task_status::Reason::TaskUnhealthy;
                        message = why;
                    }
                    if let Some(why) = task.over_disk.take() {
                        state = TaskState::TaskFailed;
                        reason = task_status::Reason::ContainerLimitationDisk;
                        message = why;
                    }
                }
                info!(task = %key.1, state = state.as_str_name(), %message, "task ended");
                let awaits_disk = self.update(&key, state, &message, reason, exit_code);
                match self.tasks.get_mut(&key) {
                    Some(task) if awaits_disk => task.ended = container,
                    _ => destroy_ended(container),
                }
            }
            TaskEvent::Health { key, event } => self.health_event(key, event),
            TaskEvent::Checkpointed { key } => {
                // The outcome is on disk: what the container kept of it may
                // go, and the outcome goes out once the container is gone (a
                // framework hearing of it finds the resources released).
                match self.tasks.get_mut(&key).and_then(|t| t.ended.take()) {
                    Some(container) => {
                        let events = self.events_tx.clone();
                        destroy_then(container, move || {
                            let _ = events.blocking_send(TaskEvent::Destroyed { key });
                        });
                    }
                    None => self.send_pending(&key, true),
                }
            }
            TaskEvent::Destroyed { key } => self.send_pending(&key, true),
            TaskEvent::OverDisk { key, message } => {
                let Some(task) = self.tasks.get_mut(&key) else {
                    return;
                };
                if is_terminal(task.state) || task.over_disk.is_some() {
                    return;
                }
                warn!(task = %key.1, %message, "killing a task over its disk limit");
                task.over_disk = Some(message);
                self.kill(key, None);
            }
        }
    }

    /// Records a new state and queues its update for the master.
    fn update(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        message: &str,
        reason: task_status::Reason,
        exit_code: Option<i32>,
    ) -> bool {
        let agent_id = self.agent_id.clone().map(|value| v1::AgentId { value });
        let Some(task) = self.tasks.get_mut(key) else {
            return false;
        };
        task.state = state;
        task.pending.push_back(v1::StatusUpdate {
            framework_id: Some(v1::FrameworkId {
                value: key.0.clone(),
            }),
            status: Some(TaskStatus {
                task_id: Some(v1::TaskId {
                    value: key.1.clone(),
                }),
                state: state as i32,
                message: message.to_string(),
                source: task_status::Source::Agent as i32,
                reason: reason as i32,
                agent_id,
                timestamp: now_seconds(),
                uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
                exit_code,
                healthy: task.healthy,
            }),
        });
        // An outcome is on disk before it is sent: an update the master may
        // have seen is never forgotten by a restart. (Intermediate states
        // are re-derived on recovery; they go at once.)
        if self.checkpoint(key, true) {
            return true;
        }
        self.send_pending(key, true);
        false
    }

    /// Sends a task's pending updates: all of them, or just the newest.
    fn send_pending(&mut self, key: &TaskKey, newest_only: bool) {
        if !self.session.as_ref().is_some_and(|s| s.registered) {
            return;
        }
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let updates: Vec<v1::StatusUpdate> = if newest_only {
            task.pending.back().cloned().into_iter().collect()
        } else {
            task.pending.iter().cloned().collect()
        };
        if updates.is_empty() {
            return;
        }
        if !newest_only || task.sent_at.is_none() {
            task.sent_at = Some(Instant::now());
        }
        self.send(agent_message::Message::StatusUpdates(
            agent_message::StatusUpdates { updates },
        ));
    }

    /// Resends the pending updates of every task: all of them after a
    /// (re-)registration, else those unacknowledged for the retry interval.
    fn retry_updates(&mut self, all: bool) {
        let interval = self.config.status_retry_interval;
        let due: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.pending.is_empty())
            .filter(|(_, t)| all || t.sent_at.is_none_or(|s| s.elapsed() >= interval))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.send_pending(&key, false);
        }
    }

    fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8]) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let Some(position) = task
            .pending
            .iter()
            .position(|u| u.status.as_ref().is_some_and(|s| s.uuid == uuid))
        else {
            debug!(task = %key.1, "acknowledgement of an update that is not pending; ignored");
            return;
        };
        task.pending.remove(position);
        // Progress: the rest are in flight, not lost.
        task.sent_at = Some(Instant::now());
        self.checkpoint(key, false);
        if task_done(self.tasks.get(key)) {
            // Everything about this task has been said; the sandbox stays.
            self.tasks.remove(key);
        }
    }

    /// Kills every running task and waits (bounded) for them to end: with
    /// no recovery yet, a stopping agent must not leave untracked processes.
    async fn stop_tasks(&mut self, events: &mut mpsc::Receiver<TaskEvent>) {
        let mut running = 0;
        for t in self.tasks.values_mut() {
            if let Some(kill) = t.kill.take() {
                let _ = kill.send(Duration::from_millis(500));
                running += 1;
            }
        }
        if running > 0 {
            info!(count = running, "agent stopping; killing its tasks");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while running > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(TaskEvent::Exited { container, .. })) => {
                    running -= 1;
                    destroy_ended(container);
                }
                // Started while stopping: it goes too.
                Ok(Some(TaskEvent::Launched {
                    result: Ok(mut container),
                    ..
                })) => {
                    let _ = container.kill_all();
                    let _ = container.destroy();
                }
                Ok(Some(TaskEvent::Launched { result: Err(_), .. }))
                | Ok(Some(TaskEvent::Health { .. }))
                | Ok(Some(TaskEvent::OverDisk { .. }))
                | Ok(Some(TaskEvent::Destroyed { .. }))
                | Ok(Some(TaskEvent::Checkpointed { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

async fn next_message(inbound: &mut Option<Streaming<MasterMessage>>) -> Option<MasterMessage> {
    match inbound {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// The task's environment: its own variables, then `PORT0…` for its ports.
fn task_env(
    framework: &str,
    task: &v1::TaskInfo,
    sandbox: &std::path::Path,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let task_id = task
        .task_id
        .as_ref()
        .map(|t| t.value.clone())
        .unwrap_or_default();
    env.insert("AGORA_TASK_ID".into(), task_id);
    env.insert("AGORA_FRAMEWORK_ID".into(), framework.to_string());
    env.insert("AGORA_SANDBOX".into(), sandbox.display().to_string());
    let ports: Vec<u64> = Resources::from_proto(&task.resources)
        .map(|r| r.ranges("ports").iter().collect())
        .unwrap_or_default();
    for (i, port) in ports.iter().enumerate() {
        env.insert(format!("PORT{i}"), port.to_string());
    }
    if let Some(first) = ports.first() {
        env.insert("PORT".into(), first.to_string());
    }
    if let Some(vars) = task.command.as_ref().and_then(|c| c.environment.as_ref()) {
        for v in &vars.variables {
            env.insert(v.name.clone(), v.value.clone());
        }
    }
    env.into_iter().collect()
}

/// Waits for a task to end, killing it when asked: SIGTERM, the grace
/// period, then SIGKILL to all of its processes.
async fn supervise(
    key: TaskKey,
    mut container: Box<dyn Container>,
    kill: oneshot::Receiver<Duration>,
    events: mpsc::Sender<TaskEvent>,
) {
    let mut killed = false;
    // A dropped sender is the agent shutting down, not a kill: the task
    // outlives the agent and is re-attached by the next one.
    let kill = async {
        match kill.await {
            Ok(grace) => grace,
            Err(_) => std::future::pending().await,
        }
    };
    let status = tokio::select! {
        status = container.wait() => status,
        grace = kill => {
            killed = true;
            if let Err(e) = container.terminate() {
                warn!("{e}");
            }
            match tokio::time::timeout(grace, container.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    if let Err(e) = container.kill_all() {
                        warn!("{e}");
                    }
                    container.wait().await
                }
            }
        }
    };
    // Whatever the main process left behind goes with it. Cgroup work is
    // blocking file I/O (and may wait for a freeze): off the async threads.
    // The container itself stays until the outcome is checkpointed.
    let cleanup = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        if let Err(e) = container.kill_all() {
            warn!("{e}");
        }
        let limitation = container.limitation();
        debug!(elapsed = ?started.elapsed(), "container cleanup");
        (limitation, container)
    });
    let (limitation, container) = match cleanup.await {
        Ok((limitation, container)) => (limitation, Some(container)),
        Err(e) => {
            warn!("cleaning up a container: {e}");
            (None, None)
        }
    };
    let (state, message, reason, exit_code) = match status {
        Ok(exit) if killed => (
            TaskState::TaskKilled,
            format!("killed ({exit})"),
            task_status::Reason::None,
            code_of(exit),
        ),
        Ok(exit) => match (limitation, exit) {
            (Some(limit), _) => (
                TaskState::TaskFailed,
                limit,
                task_status::Reason::ContainerLimitationMemory,
                code_of(exit),
            ),
            (None, Exit::Code(0)) => (
                TaskState::TaskFinished,
                "command exited with code 0".into(),
                task_status::Reason::None,
                Some(0),
            ),
            (None, Exit::Code(code)) => (
                TaskState::TaskFailed,
                format!("command exited with code {code}"),
                task_status::Reason::None,
                Some(code),
            ),
            (None, exit) => (
                TaskState::TaskFailed,
                format!("command terminated by {exit}"),
                task_status::Reason::None,
                None,
            ),
        },
        Err(e) => (
            TaskState::TaskFailed,
            format!("waiting for the command: {e}"),
            task_status::Reason::None,
            None,
        ),
    };
    let _ = events
        .send(TaskEvent::Exited {
            key,
            state,
            message,
            reason,
            exit_code,
            container,
        })
        .await;
}

/// Destroys an ended container (its cgroup and runtime files), off the
/// async threads.
fn destroy_ended(container: Option<Box<dyn Container>>) {
    if let Some(container) = container {
        destroy_then(container, || {});
    }
}

/// Destroys `container` off the async threads, then runs `then`.
fn destroy_then(mut container: Box<dyn Container>, then: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        if let Err(e) = container.destroy() {
            warn!("{e}");
        }
        then();
    });
}

fn task_done(task: Option<&TaskRecord>) -> bool {
    task.is_some_and(|t| t.pending.is_empty() && is_terminal(t.state))
}

fn code_of(exit: Exit) -> Option<i32> {
    match exit {
        Exit::Code(c) => Some(c),
        Exit::Signal(_) => None,
    }
}

/// Removes the sandboxes under `root` of tasks not in `live` whose files
/// were untouched for `idle_for`. A task launched meanwhile has a fresh
/// sandbox, so it is never taken for idle.
fn sweep_sandboxes(root: &Path, live: &HashSet<TaskKey>, idle_for: Duration) {
    let Ok(frameworks) = std::fs::read_dir(root) else {
        return;
    };
    for framework in frameworks.filter_map(Result::ok) {
        let framework_id = framework.file_name().to_string_lossy().into_owned();
        let Ok(tasks) = std::fs::read_dir(framework.path()) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            let key = (
                framework_id.clone(),
                task.file_name().to_string_lossy().into_owned(),
            );
            if live.contains(&key) {
                continue;
            }
            let path = task.path();
            let newest = ["", "stdout", "stderr"]
                .iter()
                .filter_map(|f| {
                    std::fs::metadata(path.join(f))
                        .and_then(|m| m.modified())
                        .ok()
                })
                .max();
            let idle = newest.and_then(|t| t.elapsed().ok()).unwrap_or_default();
            if idle >= idle_for {
                debug!(sandbox = %path.display(), "removing an old sandbox");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    warn!("removing sandbox {}: {e}", path.display());
                }
            }
        }
        // An emptied framework directory goes too (fails harmlessly if not empty).
        let _ = std::fs::remove_dir(framework.path());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::containerizer::{ContainerizerError, LaunchSpec, WaitFuture};

    /// A container that only counts its destruction.
    struct Ended {
        destroyed: Arc<AtomicUsize>,
    }

    impl Container for Ended {
        fn pid(&self) -> u32 {
            0
        }
        fn wait(&mut self) -> WaitFuture<'_> {
            Box::pin(async { Ok(Exit::Code(0)) })
        }
        fn terminate(&self) -> Result<(), ContainerizerError> {
            Ok(())
        }
        fn kill_all(&self) -> Result<(), ContainerizerError> {
            Ok(())
        }
        fn destroy(&mut self) -> Result<(), ContainerizerError> {
            self.destroyed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A containerizer whose tasks survive restarts (so outcomes are
    /// checkpointed before they are sent); it launches nothing here.
    struct Recovering;

    impl Containerizer for Recovering {
        fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn Container>, ContainerizerError> {
            Err(ContainerizerError::Recover {
                container: spec.container_id.clone(),
                reason: "not in this test".into(),
            })
        }
        fn can_recover(&self) -> bool {
            true
        }
    }

    /// A container that runs until killed.
    struct Running;

    impl Container for Running {
        fn pid(&self) -> u32 {
            4242
        }
        fn wait(&mut self) -> WaitFuture<'_> {
            Box::pin(std::future::pending())
        }
        fn terminate(&self) -> Result<(), ContainerizerError> {
            Ok(())
        }
        fn kill_all(&self) -> Result<(), ContainerizerError> {
            Ok(())
        }
        fn destroy(&mut self) -> Result<(), ContainerizerError> {
            Ok(())
        }
    }

    /// An agent (its data in the returned directory) tracking task `t1` of
    /// framework `f1` in container `c1`, in `state`.
    fn agent_with_task(
        state: TaskState,
    ) -> (
        tempfile::TempDir,
        Agent<Recovering>,
        mpsc::Receiver<TaskEvent>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AgentConfig::new("http://127.0.0.1:1", dir.path());
        let (http_token, _) = tokio::sync::watch::channel(None);
        let (mut agent, events) = Agent::new(config, Resources::new(), Recovering, http_token);
        agent.tasks.insert(
            ("f1".into(), "t1".into()),
            TaskRecord::new(v1::TaskInfo::default(), state, "c1".into()),
        );
        (dir, agent, events)
    }

    /// An agent killed right after a launch must find the task's pid on
    /// restart: "running" goes out once the checkpoint naming it is written.
    #[tokio::test]
    async fn a_task_is_reported_running_once_its_pid_is_checkpointed() {
        let (_dir, mut agent, mut events) = agent_with_task(TaskState::TaskStarting);
        let key: TaskKey = ("f1".into(), "t1".into());
        agent.launched(key.clone(), Ok(Box::new(Running)));
        assert_eq!(agent.tasks[&key].state, TaskState::TaskRunning);
        let checkpointed = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the writer reports the start")
            .expect("an event");
        assert!(matches!(&checkpointed, TaskEvent::Checkpointed { key: k } if *k == key));
        let on_disk = agent.checkpoints.load_all().0;
        assert!(
            on_disk
                .iter()
                .any(|cp| cp.container_id == "c1" && cp.pid == 4242),
            "the pid is on disk before the update goes: {on_disk:?}"
        );
    }

    /// An agent restarted between a container's end and its outcome's
    /// checkpoint must still find the container's record of how the task
    /// ended: the container goes only once the checkpoint is on disk.
    #[tokio::test]
    async fn an_ended_container_is_destroyed_only_once_its_outcome_is_on_disk() {
        let (_dir, mut agent, mut events) = agent_with_task(TaskState::TaskRunning);
        let key: TaskKey = ("f1".into(), "t1".into());
        let destroyed = Arc::new(AtomicUsize::new(0));
        agent.task_event(TaskEvent::Exited {
            key: key.clone(),
            state: TaskState::TaskFinished,
            message: "command exited with code 0".into(),
            reason: task_status::Reason::None,
            exit_code: Some(0),
            container: Some(Box::new(Ended {
                destroyed: destroyed.clone(),
            })),
        });
        assert_eq!(destroyed.load(Ordering::SeqCst), 0, "not before the disk");
        assert!(agent.tasks[&key].ended.is_some());

        let checkpointed = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the writer reports")
            .expect("an event");
        assert!(matches!(&checkpointed, TaskEvent::Checkpointed { key: k } if *k == key));
        assert!(
            agent
                .checkpoints
                .load_all()
                .0
                .iter()
                .any(|cp| cp.container_id == "c1"),
            "the outcome is on disk"
        );
        agent.task_event(checkpointed);
        // Then the outcome goes out, once the container is gone.
        let destroyed_event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("destroyed")
            .expect("an event");
        assert!(matches!(&destroyed_event, TaskEvent::Destroyed { key: k } if *k == key));
        assert_eq!(
            destroyed.load(Ordering::SeqCst),
            1,
            "destroyed after the checkpoint"
        );
        assert!(agent.tasks[&key].ended.is_none());
    }
}
