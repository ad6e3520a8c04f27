//! The agent's event loop: one task owns the agent's state (its tasks and
//! their unacknowledged status updates) and reacts to the master's messages,
//! to task supervisors, and to its timers. The master connection comes and
//! goes; tasks and pending updates do not depend on it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agora_proto::v1::{
    self, AgentMessage, MasterMessage, TaskState, TaskStatus, agent_message,
    agent_service_client::AgentServiceClient, master_message, task_status,
};
use agora_proto::{Resources, is_terminal};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::AgentConfig;
use crate::containerizer::{Container, Containerizer, LaunchSpec};

type TaskKey = (String, String);

/// What a task supervisor reports.
pub(crate) enum TaskEvent {
    Exited {
        key: TaskKey,
        state: TaskState,
        message: String,
        exit_code: Option<i32>,
    },
}

struct TaskRecord {
    info: v1::TaskInfo,
    state: TaskState,
    /// Asks the supervisor to kill the task, with the grace period.
    kill: Option<oneshot::Sender<Duration>>,
    /// Updates not yet acknowledged, oldest first; only the head is in flight.
    pending: VecDeque<v1::StatusUpdate>,
    head_sent: Option<Instant>,
}

struct Session {
    tx: mpsc::UnboundedSender<AgentMessage>,
    registered: bool,
}

pub(crate) struct Agent<C: Containerizer> {
    config: AgentConfig,
    resources: Resources,
    containerizer: Arc<C>,
    agent_id: Option<String>,
    tasks: HashMap<TaskKey, TaskRecord>,
    session: Option<Session>,
    heartbeat: Duration,
    events_tx: mpsc::UnboundedSender<TaskEvent>,
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Opens the session stream to the master.
async fn open_session(
    master: String,
) -> Result<
    (
        mpsc::UnboundedSender<AgentMessage>,
        Streaming<MasterMessage>,
    ),
    String,
> {
    let endpoint = tonic::transport::Endpoint::from_shared(master.clone())
        .map_err(|e| format!("master URL `{master}`: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting to {master}: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let inbound = AgentServiceClient::new(channel)
        .session(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("opening a session with {master}: {e}"))?
        .into_inner();
    Ok((tx, inbound))
}

impl<C: Containerizer> Agent<C> {
    pub(crate) fn new(
        config: AgentConfig,
        resources: Resources,
        containerizer: C,
    ) -> (Self, mpsc::UnboundedReceiver<TaskEvent>) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let agent_id = std::fs::read_to_string(config.data_dir.join("agent_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        (
            Agent {
                config,
                resources,
                containerizer: Arc::new(containerizer),
                agent_id,
                tasks: HashMap::new(),
                session: None,
                heartbeat: Duration::from_secs(1),
                events_tx,
            },
            events_rx,
        )
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<TaskEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let mut inbound: Option<Streaming<MasterMessage>> = None;
        let mut connecting = false;
        let mut backoff = Duration::from_millis(100);
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        let mut retry = tokio::time::interval(
            self.config
                .status_retry_interval
                .min(Duration::from_secs(1)),
        );
        loop {
            if inbound.is_none() && !connecting {
                connecting = true;
                let master = self.config.master.clone();
                let done = connected_tx.clone();
                let delay = backoff;
                tokio::spawn(async move {
                    let result = open_session(master).await;
                    if result.is_err() {
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
                            inbound = Some(stream);
                            self.session = Some(Session { tx, registered: false });
                            self.register();
                        }
                        Some(Err(e)) => {
                            warn!("{e}; retrying");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        None => break,
                    }
                }
                message = next_message(&mut inbound) => match message {
                    Some(msg) => {
                        if let Some(interval) = self.master_message(msg) {
                            heartbeat = tokio::time::interval(interval);
                        }
                    }
                    None => {
                        warn!("lost the master; reconnecting");
                        inbound = None;
                        self.session = None;
                    }
                },
                Some(event) = events.recv() => self.task_event(event),
                _ = heartbeat.tick() => {
                    if let Some(s) = self.session.as_ref().filter(|s| s.registered) {
                        let _ = s.tx.send(AgentMessage {
                            message: Some(agent_message::Message::Heartbeat(agent_message::Heartbeat {})),
                        });
                    }
                }
                _ = retry.tick() => self.retry_updates(false),
                () = &mut shutdown => break,
            }
        }
        self.stop_tasks(&mut events).await;
    }

    fn send(&self, message: agent_message::Message) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.tx.send(AgentMessage {
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
            endpoint: String::new(),
        };
        info!(agent = ?self.agent_id, "registering with the master");
        self.send(agent_message::Message::Register(agent_message::Register {
            agent_info: Some(info),
            tasks,
        }));
    }

    /// Handles one message; returns a new heartbeat interval when the master
    /// sets one.
    fn master_message(&mut self, msg: MasterMessage) -> Option<Duration> {
        match msg.message? {
            master_message::Message::Registered(r) => {
                let id = r.agent_id.map(|a| a.value).unwrap_or_default();
                info!(agent = %id, "registered");
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
                self.retry_updates(true);
                let interval = r.heartbeat_interval_seconds;
                if interval.is_finite() && interval > 0.0 {
                    self.heartbeat = Duration::from_secs_f64(interval);
                    return Some(self.heartbeat);
                }
            }
            master_message::Message::Launch(launch) => {
                let framework = launch.framework_id.map(|f| f.value).unwrap_or_default();
                if let Some(task) = launch.task {
                    self.launch(framework, task);
                }
            }
            master_message::Message::Kill(kill) => {
                let key = (
                    kill.framework_id.map(|f| f.value).unwrap_or_default(),
                    kill.task_id.map(|t| t.value).unwrap_or_default(),
                );
                self.kill(key);
            }
            master_message::Message::Acknowledge(ack) => {
                let key = (
                    ack.framework_id.map(|f| f.value).unwrap_or_default(),
                    ack.task_id.map(|t| t.value).unwrap_or_default(),
                );
                self.acknowledge(&key, &ack.uuid);
            }
            master_message::Message::Shutdown(s) => {
                warn!(reason = %s.message, "the master asked this agent to shut down; killing its tasks");
                let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
                for key in keys {
                    self.kill(key);
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
        self.tasks.insert(
            key.clone(),
            TaskRecord {
                info: task.clone(),
                state: TaskState::TaskStaging,
                kill: None,
                pending: VecDeque::new(),
                head_sent: None,
            },
        );
        if task_id.is_empty()
            || task_id == "."
            || task_id == ".."
            || task_id.contains('/')
            || framework.contains('/')
        {
            self.update(
                &key,
                TaskState::TaskError,
                "invalid task or framework id for a sandbox path",
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
        let sandbox = self.sandbox_of(&key);
        if let Err(e) = std::fs::create_dir_all(&sandbox) {
            let message = format!("creating sandbox {}: {e}", sandbox.display());
            self.update(
                &key,
                TaskState::TaskFailed,
                &message,
                task_status::Reason::ContainerLaunchFailed,
                None,
            );
            return;
        }
        let spec = LaunchSpec {
            task_id: task_id.clone(),
            command: task
                .command
                .as_ref()
                .map(|c| c.value.clone())
                .unwrap_or_default(),
            env: task_env(&framework, &task, &sandbox),
            sandbox,
        };
        let container = match self.containerizer.launch(&spec) {
            Ok(c) => c,
            Err(e) => {
                self.update(
                    &key,
                    TaskState::TaskFailed,
                    &e.to_string(),
                    task_status::Reason::ContainerLaunchFailed,
                    None,
                );
                return;
            }
        };
        info!(pid = container.pid(), "task running");
        let (kill_tx, kill_rx) = oneshot::channel();
        if let Some(t) = self.tasks.get_mut(&key) {
            t.kill = Some(kill_tx);
        }
        self.update(
            &key,
            TaskState::TaskRunning,
            "",
            task_status::Reason::None,
            None,
        );
        tokio::spawn(
            supervise(key, container, kill_rx, self.events_tx.clone()).instrument(span.clone()),
        );
    }

    fn kill(&mut self, key: TaskKey) {
        let grace = self.config.kill_grace_period;
        match self.tasks.get_mut(&key) {
            Some(t) if !is_terminal(t.state) => {
                let grace = if t.info.kill_grace_period > 0.0 {
                    Duration::from_secs_f64(t.info.kill_grace_period.min(3600.0))
                } else {
                    grace
                };
                if let Some(kill) = t.kill.take() {
                    info!(task = %key.1, ?grace, "killing task");
                    let _ = kill.send(grace);
                }
            }
            Some(_) => debug!(task = %key.1, "kill of an ended task; its update is on its way"),
            None => {
                // The master thinks it exists; tell it that it does not.
                self.tasks.insert(
                    key.clone(),
                    TaskRecord {
                        info: v1::TaskInfo {
                            task_id: Some(v1::TaskId {
                                value: key.1.clone(),
                            }),
                            ..Default::default()
                        },
                        state: TaskState::TaskStaging,
                        kill: None,
                        pending: VecDeque::new(),
                        head_sent: None,
                    },
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
            TaskEvent::Exited {
                key,
                state,
                message,
                exit_code,
            } => {
                info!(task = %key.1, state = state.as_str_name(), %message, "task ended");
                self.update(&key, state, &message, task_status::Reason::None, exit_code);
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
    ) {
        let agent_id = self.agent_id.clone().map(|value| v1::AgentId { value });
        let Some(task) = self.tasks.get_mut(key) else {
            return;
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
            }),
        });
        if task.pending.len() == 1 {
            self.send_head(key);
        }
    }

    fn send_head(&mut self, key: &TaskKey) {
        let registered = self.session.as_ref().is_some_and(|s| s.registered);
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let Some(head) = task.pending.front().cloned() else {
            return;
        };
        if !registered {
            return;
        }
        task.head_sent = Some(Instant::now());
        self.send(agent_message::Message::StatusUpdate(head));
    }

    /// Resends the head update of every task: all of them after a
    /// (re-)registration, else those unacknowledged for the retry interval.
    fn retry_updates(&mut self, all: bool) {
        let interval = self.config.status_retry_interval;
        let due: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.pending.is_empty())
            .filter(|(_, t)| all || t.head_sent.is_none_or(|s| s.elapsed() >= interval))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.send_head(&key);
        }
    }

    fn acknowledge(&mut self, key: &TaskKey, uuid: &[u8]) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let matches = task
            .pending
            .front()
            .and_then(|u| u.status.as_ref())
            .is_some_and(|s| s.uuid == uuid);
        if !matches {
            debug!(task = %key.1, "acknowledgement of an update that is not in flight; ignored");
            return;
        }
        task.pending.pop_front();
        task.head_sent = None;
        if task.pending.is_empty() && is_terminal(task.state) {
            // Everything about this task has been said; the sandbox stays.
            self.tasks.remove(key);
            return;
        }
        self.send_head(key);
    }

    /// Kills every running task and waits (bounded) for them to end: with
    /// no recovery yet, a stopping agent must not leave untracked processes.
    async fn stop_tasks(&mut self, events: &mut mpsc::UnboundedReceiver<TaskEvent>) {
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
                Ok(Some(TaskEvent::Exited { .. })) => running -= 1,
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
    events: mpsc::UnboundedSender<TaskEvent>,
) {
    let mut killed = false;
    let status = tokio::select! {
        status = container.wait() => status,
        grace = kill => {
            killed = true;
            let grace = grace.unwrap_or(Duration::from_secs(3));
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
    // Whatever the main process left behind goes with it.
    let _ = container.kill_all();
    let (state, message, exit_code) = match status {
        Ok(s) if killed => (TaskState::TaskKilled, format!("killed ({s})"), s.code()),
        Ok(s) => match s.code() {
            Some(0) => (
                TaskState::TaskFinished,
                "command exited with code 0".to_string(),
                Some(0),
            ),
            Some(code) => (
                TaskState::TaskFailed,
                format!("command exited with code {code}"),
                Some(code),
            ),
            None => (
                TaskState::TaskFailed,
                format!("command terminated: {s}"),
                None,
            ),
        },
        Err(e) => (
            TaskState::TaskFailed,
            format!("waiting for the command: {e}"),
            None,
        ),
    };
    let _ = events.send(TaskEvent::Exited {
        key,
        state,
        message,
        exit_code,
    });
}
