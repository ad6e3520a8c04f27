//! The registry side of the core: rebuilding the state from the registry
//! when a master starts (after a restart or as a new leader), and turning
//! entries into the records that persist them.

use agora_proto::v1::{RegistryAgent, RegistryFramework, RegistryTask};

use super::*;

/// Wall-clock time as the registry records it: the monotonic clock,
/// anchored to the system clock once. Deadlines recorded by one master
/// (since when an agent is unreachable, a framework away) keep running in
/// the next, and tests under paused time see them move with the clock.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    origin: Instant,
    unix_at_origin: f64,
}

impl WallClock {
    pub fn start() -> WallClock {
        WallClock {
            origin: Instant::now(),
            unix_at_origin: now_seconds(),
        }
    }

    /// Unix seconds of a monotonic instant.
    pub(super) fn unix_of(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.origin) {
            Some(after) => self.unix_at_origin + after.as_secs_f64(),
            None => self.unix_at_origin - self.origin.duration_since(at).as_secs_f64(),
        }
    }

    /// The monotonic instant of a moment in unix seconds; never later than
    /// now (a clock that jumped back does not postpone deadlines forever).
    pub(super) fn instant_of(&self, unix: f64) -> Instant {
        let now = Instant::now();
        if !unix.is_finite() {
            return now;
        }
        let offset = unix - self.unix_at_origin;
        let at = if offset >= 0.0 {
            self.origin + Duration::from_secs_f64(offset.min(1e9))
        } else {
            self.origin
                .checked_sub(Duration::from_secs_f64((-offset).min(1e9)))
                .unwrap_or(self.origin)
        };
        at.min(now)
    }
}

impl Core {
    /// A master with the state its registry holds. Known agents get one
    /// agent timeout to re-register before they count as unreachable;
    /// tasks on agents the registry does not know are `TASK_LOST`.
    pub fn recover(
        config: MasterConfig,
        events: crate::events::EventSender,
        registry: Registry,
    ) -> Result<Core, RegistryError> {
        Core::recover_with_clock(config, events, registry, WallClock::start())
    }

    pub(super) fn recover_with_clock(
        config: MasterConfig,
        events: crate::events::EventSender,
        registry: Registry,
        clock: WallClock,
    ) -> Result<Core, RegistryError> {
        let recovered = registry.load()?;
        let mut core = Core::empty(config, events, registry, clock);
        let now = Instant::now();
        for (role, weight) in recovered.weights {
            core.allocator.set_weight(&role, weight);
            core.config.role_weights.insert(role, weight);
        }
        for record in recovered.agents {
            let Some(id) = record.id.map(|i| i.value) else {
                continue;
            };
            if record.gone {
                core.gone_agents.insert(id);
                continue;
            }
            let unreachable_since = record.unreachable_since.map(|u| clock.instant_of(u));
            core.agents.insert(
                id.clone(),
                AgentEntry {
                    registered: Arc::new(AgentRegistration::new(
                        id.clone(),
                        record.hostname,
                        record.endpoint.into(),
                        BTreeMap::new(),
                        Resources::new(),
                    )),
                    attributes: Vec::new(),
                    status: if unreachable_since.is_some() {
                        AgentStatus::Unreachable
                    } else {
                        AgentStatus::Disconnected
                    },
                    conn: None,
                    last_seen: now,
                    draining: record.draining,
                    secret_sha256: record.secret_sha256,
                    unreachable_since,
                },
            );
        }
        for record in recovered.frameworks {
            let Some(info) = record.info else { continue };
            let Some(id) = info.id.as_ref().map(|i| i.value.clone()) else {
                continue;
            };
            let role = role_of(&info);
            core.allocator.add_framework(&id, &role, false);
            core.frameworks.insert(
                id.clone(),
                FrameworkEntry {
                    backlog: VecDeque::new(),
                    backlog_uuids: HashSet::new(),
                    offers_paused: false,
                    id,
                    failover_timeout: failover_timeout_of(&info),
                    info,
                    role,
                    stream: None,
                    // Away since the registry says, else since the old
                    // master lost it (about now).
                    disconnected_at: Some(
                        record
                            .disconnected_since
                            .map_or(now, |u| clock.instant_of(u)),
                    ),
                    secret_sha256: record.secret_sha256,
                    relay_token: String::new(),
                },
            );
        }
        let mut lost = Vec::new();
        for record in recovered.tasks {
            let framework = record.framework_id.map(|f| f.value).unwrap_or_default();
            let agent = record.agent_id.map(|a| a.value).unwrap_or_default();
            let Some(task) = record.task else { continue };
            let task_id = task.task_id.as_ref().map(|t| t.value.clone());
            let Some(task_id) = task_id else { continue };
            let key = (framework.clone(), task_id);
            if !core.frameworks.contains_key(&framework) {
                core.add_placeholder_framework(&framework);
            }
            if !core.agents.contains_key(&agent) {
                lost.push(key.clone());
            }
            let state = TaskState::try_from(record.state).unwrap_or(TaskState::TaskStaging);
            core.insert_task(
                key,
                TaskEntry {
                    resources: Resources::from_proto(&task.resources).unwrap_or_default(),
                    info: task,
                    agent,
                    state,
                    message: String::new(),
                    reason: task_status::Reason::None,
                    kill_requested: false,
                    usage: None,
                    healthy: None,
                },
            );
        }
        core.master_transition(
            lost,
            TaskState::TaskLost,
            "the task's agent is not in the registry",
            task_status::Reason::AgentRemoved,
        );
        info!(
            agents = core.agents.len(),
            frameworks = core.frameworks.len(),
            tasks = core.tasks.len(),
            weights = core.config.role_weights.len(),
            "master state recovered from the registry"
        );
        core.registry.commit()?;
        Ok(core)
    }

    /// A framework known only from tasks an agent reports (its registry
    /// record is gone): kept until it subscribes again.
    pub(super) fn add_placeholder_framework(&mut self, framework: &str) {
        self.frameworks.insert(
            framework.to_string(),
            FrameworkEntry {
                backlog: VecDeque::new(),
                backlog_uuids: HashSet::new(),
                offers_paused: false,
                id: framework.to_string(),
                info: v1::FrameworkInfo::default(),
                role: "*".into(),
                stream: None,
                disconnected_at: Some(Instant::now()),
                failover_timeout: Duration::from_secs(7 * 24 * 3600),
                secret_sha256: Vec::new(),
                relay_token: String::new(),
            },
        );
        self.allocator.add_framework(framework, "*", false);
    }

    pub(super) fn agent_record(&self, agent: &AgentEntry) -> RegistryAgent {
        RegistryAgent {
            id: Some(v1::AgentId {
                value: agent.registered.id.clone(),
            }),
            hostname: agent.registered.hostname.clone(),
            endpoint: agent.registered.endpoint.to_string(),
            secret_sha256: agent.secret_sha256.clone(),
            draining: agent.draining,
            unreachable_since: agent.unreachable_since.map(|at| self.clock.unix_of(at)),
            gone: false,
        }
    }

    /// Queues the agent's current record.
    pub(super) fn persist_agent(&mut self, agent_id: &str) {
        if let Some(record) = self.agents.get(agent_id).map(|a| self.agent_record(a)) {
            self.registry.put_agent(&record);
        }
    }

    /// Queues the framework's current record (placeholders have none).
    pub(super) fn persist_framework(&mut self, framework_id: &str) {
        let Some(f) = self.frameworks.get(framework_id) else {
            return;
        };
        if f.info.id.is_none() {
            return;
        }
        let record = RegistryFramework {
            info: Some(f.info.clone()),
            disconnected_since: f.disconnected_at.map(|at| self.clock.unix_of(at)),
            secret_sha256: f.secret_sha256.clone(),
        };
        self.registry.put_framework(&record);
    }

    /// Queues the task's new state: a few bytes while it may run (its
    /// record was written at launch), its record deleted once it ended.
    pub(super) fn persist_task_state(&mut self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        if is_terminal(task.state) {
            self.registry.delete_task(&key.0, &key.1);
        } else {
            self.registry
                .put_task_state(&key.0, &key.1, task.state as i32);
        }
    }

    /// Queues the task's record: kept while it may run, deleted once it ended.
    pub(super) fn persist_task(&mut self, key: &TaskKey) {
        let Some(task) = self.tasks.get(key) else {
            return;
        };
        if is_terminal(task.state) {
            self.registry.delete_task(&key.0, &key.1);
            return;
        }
        let record = RegistryTask {
            framework_id: Some(v1::FrameworkId {
                value: key.0.clone(),
            }),
            task: Some(task.info.clone()),
            agent_id: Some(v1::AgentId {
                value: task.agent.clone(),
            }),
            state: task.state as i32,
        };
        self.registry.put_task(&key.0, &key.1, &record);
        // The state entry, if any, must not override the record with an
        // older state.
        self.registry
            .put_task_state(&key.0, &key.1, task.state as i32);
    }
}

/// A framework's role (`*` when it names none).
pub(super) fn role_of(info: &v1::FrameworkInfo) -> String {
    if info.role.is_empty() {
        "*".to_string()
    } else {
        info.role.clone()
    }
}

pub(super) fn failover_timeout_of(info: &v1::FrameworkInfo) -> Duration {
    Duration::from_secs_f64(info.failover_timeout.clamp(0.0, 1e9))
}
