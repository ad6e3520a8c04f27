//! Agents: registration and re-registration (reconciling what they run
//! with what the master knows), heartbeats, disconnection and unreachability.

use super::*;

impl Core {
    pub(super) fn agent_message(&mut self, conn: u64, tx: AgentTx, msg: AgentMessage) {
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
    pub(super) fn agent_by_conn(&mut self, conn: u64) -> Option<String> {
        let id = self.agent_of_conn.get(&conn)?;
        let agent = self.agents.get_mut(id)?;
        agent.last_seen = Instant::now();
        Some(agent.id.clone())
    }

    pub(super) fn register_agent(
        &mut self,
        conn: u64,
        tx: AgentTx,
        register: agent_message::Register,
    ) {
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

    pub(super) fn used_on_agent(&self, agent: &str) -> Vec<(String, Resources)> {
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for ((framework, _), t) in &self.tasks {
            if t.agent == agent && !is_terminal(t.state) {
                used.entry(framework.clone()).or_default().add(&t.resources);
            }
        }
        used.into_iter().collect()
    }

    pub(super) fn agent_closed(&mut self, conn: u64) {
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

    pub(super) fn mark_unreachable(&mut self, agent_id: &str) {
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
}

/// Ends a session that talks before registering: the agent reconnects and
/// registers first.
fn refuse_unregistered(tx: &AgentTx) {
    let _ = tx.send(Err(Status::failed_precondition(
        "this session is not registered; register first",
    )));
}
