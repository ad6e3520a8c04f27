//! Agents: registration and re-registration (reconciling what they run
//! with what the master knows), heartbeats, disconnection and unreachability.

use super::awaiting::AwaitingDurable;
use super::tasks::emit_task_event;
use super::*;

impl Core {
    pub(super) fn agent_message(
        &mut self,
        conn: u64,
        tx: AgentTx,
        msg: AgentMessage,
        may_join: bool,
    ) {
        match msg.message {
            Some(agent_message::Message::Register(register)) => {
                self.register_agent(conn, tx, register, may_join)
            }
            Some(agent_message::Message::StatusUpdates(batch)) => {
                if let Some(agent) = self.agent_by_conn(conn) {
                    for update in batch.updates {
                        self.status_update(&agent, update);
                    }
                } else if !self.awaiting_registrations.has_session(conn) {
                    refuse_unregistered(&tx);
                }
            }
            Some(agent_message::Message::Heartbeat(heartbeat)) => {
                // Its connection answers an admitted session's heartbeats;
                // these came before the admission was known there, or
                // while the session had no room for the answer.
                let Some(agent) = self.agent_by_conn(conn) else {
                    // Not refused while its registration waits for its
                    // commit: the agent is not told yet, but not wrong.
                    if !self.awaiting_registrations.has_session(conn) {
                        refuse_unregistered(&tx);
                    }
                    return;
                };
                // The agent learns the master still hears it (tasks that
                // must not outlive a partition depend on it).
                let _ = tx.send(MasterMessage {
                    message: Some(master_message::Message::HeartbeatAck(
                        master_message::HeartbeatAck {
                            heartbeat_interval_seconds: self.heartbeat_interval().as_secs_f64(),
                            agent_timeout_seconds: self.agent_timeout().as_secs_f64(),
                        },
                    )),
                });
                self.record_usage(&agent, heartbeat.usage);
            }
            None => warn!(conn, "empty agent message"),
        }
    }

    /// The session is no longer its agent's: its connection stops
    /// answering heartbeats for it.
    fn forget_session(&mut self, conn: u64) -> Option<AgentSession> {
        let session = self.agent_of_conn.remove(&conn)?;
        session.heard.revoke();
        Some(session)
    }

    /// What an agent's heartbeat said its tasks use.
    pub(super) fn record_usage(&mut self, agent: &str, usage: Vec<v1::TaskUsage>) {
        for u in usage {
            let key = (
                u.framework_id.map(|f| f.value).unwrap_or_default(),
                u.task_id.map(|t| t.value).unwrap_or_default(),
            );
            // A report can overtake the task's end (it was on its way): an
            // ended task uses nothing.
            if let Some(task) = self
                .tasks
                .get_mut(&key)
                .filter(|t| t.agent == agent && !is_terminal(t.state))
            {
                task.usage = u.usage;
            }
        }
    }

    /// How often agents heartbeat: a fifth of the agent timeout, or slower
    /// once the cluster is big enough that all of them would exceed
    /// `max_agent_heartbeats_per_second`.
    pub(super) fn heartbeat_interval(&self) -> Duration {
        let per_second = self.config.max_agent_heartbeats_per_second.max(1.0);
        // In whole seconds, so it changes now and then as the cluster
        // grows, not with every agent that joins.
        let spread = Duration::from_secs_f64((self.agents.len() as f64 / per_second).ceil());
        (self.config.agent_timeout / 5)
            .max(spread)
            .max(Duration::from_millis(50))
    }

    /// How long an agent may be silent: the configured timeout, or five
    /// heartbeat intervals once those grew past it.
    pub(super) fn agent_timeout(&self) -> Duration {
        self.config.agent_timeout.max(self.heartbeat_interval() * 5)
    }

    /// The agent registered on `conn` (its liveness is the session's,
    /// stamped as its messages arrive).
    pub(super) fn agent_by_conn(&self, conn: u64) -> Option<String> {
        Some(self.agent_of_conn.get(&conn)?.agent.clone())
    }

    pub(super) fn register_agent(
        &mut self,
        conn: u64,
        tx: AgentTx,
        register: agent_message::Register,
        may_join: bool,
    ) {
        let Some(info) = register.agent_info else {
            tx.close(Status::invalid_argument("register: agent_info is required"));
            return;
        };
        let total = match Resources::from_proto(&info.resources) {
            Ok(r) => r,
            Err(e) => {
                tx.close(Status::invalid_argument(format!(
                    "register: agent_info.resources: {e}"
                )));
                return;
            }
        };
        let id = id_or_new(info.id.as_ref().map(|i| i.value.as_str()));
        let span = info_span!("agent", agent = %id);
        let _enter = span.enter();
        if self.gone_agents.contains(&id) {
            warn!("an agent marked gone tried to register; telling it to kill its tasks");
            self.metrics.registrations_refused += 1;
            let _ = tx.send(MasterMessage {
                message: Some(master_message::Message::Shutdown(
                    master_message::Shutdown {
                        message: "an operator marked this agent gone".into(),
                    },
                )),
            });
            tx.close(Status::permission_denied(format!(
                "agent `{id}` was marked gone by an operator; wipe its data directory to join as a new agent"
            )));
            return;
        }
        // A new agent, or one whose record is gone, is issued a secret; a
        // known one must present the one it was issued.
        let known = self.agents.get(&id).map(|a| a.secret_sha256.as_slice());
        if known.is_none_or(<[u8]>::is_empty) && !may_join {
            warn!(hostname = %info.hostname, "registration refused: a new agent without a join credential");
            self.metrics.registrations_refused += 1;
            tx.close(Status::unauthenticated(format!(
                "agent `{id}` is not known to this master: joining needs a join token (a principal allowed to register agents)"
            )));
            return;
        }
        let Some((issued, secret_sha256)) = check_or_issue_secret(known, &register.secret) else {
            warn!("registration refused: wrong secret for this agent id");
            self.metrics.registrations_refused += 1;
            tx.close(Status::permission_denied(format!(
                "agent `{id}`: the secret does not match the one issued with this id"
            )));
            return;
        };
        let admission = Admission {
            conn,
            tx,
            id,
            info,
            total,
            tasks: register.tasks,
            secret_sha256,
        };
        match issued {
            None => self.admit_agent(admission, None),
            Some(secret) => self.admit_when_durable(admission, secret),
        }
    }

    /// Records the agent with the secret it was just issued and finishes
    /// its registration once the record is committed: a new secret is
    /// durable before the agent hears of it (a secret the registry lost
    /// would lock the agent out). The core goes on meanwhile: agents
    /// joining by the thousand are a few group commits, not a commit each
    /// with the core waiting on the disk (or etcd) for every one.
    fn admit_when_durable(&mut self, admission: Admission, secret: String) {
        let record = self.agent_record(&self.new_agent_entry(&admission));
        self.registry.put_agent(&record);
        let through = self.registry.commit_later();
        let id = admission.id.clone();
        // A newer session for the same agent replaces one still waiting.
        if let Some(older) = self.awaiting_registrations.push(AwaitingDurable {
            through,
            admission,
            secret,
        }) {
            older.admission.tx.close(Status::aborted(format!(
                "agent `{id}` registered again on another session"
            )));
        }
    }

    /// Finishes the registrations whose records are now committed.
    pub(super) fn admit_durable_registrations(&mut self) {
        let durability = self.registry.durability();
        while let Some(AwaitingDurable {
            admission, secret, ..
        }) = self.awaiting_registrations.next_durable(&durability)
        {
            if self.gone_agents.contains(&admission.id) {
                // Marked gone meanwhile (it was known, without a secret).
                admission.tx.close(Status::permission_denied(format!(
                    "agent `{}` was marked gone by an operator",
                    admission.id
                )));
                continue;
            }
            let span = info_span!("agent", agent = %admission.id);
            let _enter = span.enter();
            self.admit_agent(admission, Some(secret));
        }
    }

    /// A session whose registration waited for its record closed first:
    /// the record goes back to what it was (none, for a new agent), and
    /// the agent, told nothing, registers afresh when it returns.
    fn abandon_awaiting_registration(&mut self, conn: u64) -> bool {
        let Some(abandoned) = self.awaiting_registrations.take(conn) else {
            return false;
        };
        let id = abandoned.admission.id;
        if self.agents.contains_key(&id) {
            self.persist_agent(&id);
        } else {
            self.registry.delete_agent(&id);
        }
        true
    }

    /// The agent's entry as of a registration on a new session.
    fn new_agent_entry(&self, admission: &Admission) -> AgentEntry {
        let info = &admission.info;
        AgentEntry {
            draining: self.agents.get(&admission.id).is_some_and(|a| a.draining),
            attributes: info.attributes.clone(),
            registered: Arc::new(AgentRegistration::new(
                admission.id.clone(),
                info.hostname.clone(),
                info.endpoint.as_str().into(),
                info.attributes
                    .iter()
                    .map(|x| (x.name.clone(), x.text.clone()))
                    .collect(),
                admission.total.clone(),
            )),
            status: AgentStatus::Active,
            conn: Some((admission.conn, admission.tx.clone())),
            last_seen: Instant::now(),
            secret_sha256: admission.secret_sha256.clone(),
            unreachable_since: None,
        }
    }

    /// Admits an agent whose credentials checked out: its session becomes
    /// the agent's, its tasks are reconciled with the master's, and it is
    /// told it is registered (with `issued`, a new secret, already durable).
    fn admit_agent(&mut self, admission: Admission, issued: Option<String>) {
        let entry = self.new_agent_entry(&admission);
        let Admission {
            conn,
            tx,
            id,
            info,
            total,
            tasks,
            ..
        } = admission;
        let returning = self.agents.contains_key(&id);
        info!(hostname = %info.hostname, resources = %total, returning, "agent registered");

        // Offers made before (re-)registration describe a stale view of the agent.
        self.rescind_where(|o| o.agent == id);
        self.allocator.remove_agent(&id);

        let draining = entry.draining;
        // A session the agent left behind is no longer its own.
        if let Some(old) = self
            .agents
            .get(&id)
            .and_then(|a| a.conn.as_ref())
            .map(|(conn, _)| *conn)
        {
            self.forget_session(old);
        }
        // A returning agent is told nothing new, so its record goes with
        // the burst's commit; one issued a secret is recorded already.
        if issued.is_none() {
            let record = self.agent_record(&entry);
            self.registry.put_agent(&record);
        }
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
        // Admitted before the agent is told: its connection answers the
        // heartbeats that follow.
        tx.heard().admit();
        self.agent_of_conn
            .insert(conn, AgentSession::new(id.clone(), tx.heard().clone()));
        self.agents.insert(id.clone(), entry);

        let (reported, declared_ended) = self.reconcile_reported_tasks(&id, tasks);

        // Tasks the master placed on this agent that it does not run: one
        // the agent never said a word of (still staging) never reached it
        // — its launch died with a master or a session — and is dropped,
        // for its framework to launch again; one it had is gone.
        let missing = self.task_keys_on(&id, |k, t| !is_terminal(t.state) && !reported.contains(k));
        let (dropped, gone): (Vec<TaskKey>, Vec<TaskKey>) = missing.into_iter().partition(|k| {
            self.tasks
                .get(k)
                .is_some_and(|t| t.state == TaskState::TaskStaging)
        });
        self.master_transition(
            dropped,
            TaskState::TaskDropped,
            "never reached its agent: the agent re-registered without it",
            task_status::Reason::AgentReregistered,
        );
        self.master_transition(
            gone,
            TaskState::TaskGone,
            "the agent re-registered without this task",
            task_status::Reason::AgentReregistered,
        );

        let used = self.used_on_agent(&id);
        self.allocator.add_agent(&id, total, &used);
        if draining {
            self.allocator.set_agent_active(&id, false);
        }

        let _ = tx.send(MasterMessage {
            message: Some(master_message::Message::Registered(
                master_message::Registered {
                    agent_id: Some(v1::AgentId { value: id.clone() }),
                    heartbeat_interval_seconds: self.heartbeat_interval().as_secs_f64(),
                    secret: issued.unwrap_or_default(),
                    http_token: self.agent_http_token.clone(),
                    agent_timeout_seconds: self.agent_timeout().as_secs_f64(),
                },
            )),
        });

        // Kills asked for while the agent was away, and of tasks the master
        // had declared ended (their frameworks may have replaced them).
        let pending = self.task_keys_on(&id, |_, t| t.kill_requested && !is_terminal(t.state));
        for key in pending.iter().chain(&declared_ended) {
            self.send_kill(key);
        }
        self.allocation_needed = true;
    }

    /// Reconciles the tasks a (re-)registering agent runs with what the
    /// master knows; returns their keys, and those of the tasks to kill.
    /// Nothing is adopted silently: a task whose state the master did not
    /// know is reported to its framework (which may have replaced it), and
    /// one the master already declared ended is killed.
    fn reconcile_reported_tasks(
        &mut self,
        agent: &str,
        tasks: Vec<v1::AgentTask>,
    ) -> (HashSet<TaskKey>, Vec<TaskKey>) {
        let mut reported: HashSet<TaskKey> = HashSet::new();
        let mut to_kill = Vec::new();
        for t in tasks {
            let framework = t.framework_id.map(|f| f.value).unwrap_or_default();
            let Some(task) = t.task else { continue };
            let task_id = task
                .task_id
                .as_ref()
                .map(|i| i.value.clone())
                .unwrap_or_default();
            let state = TaskState::try_from(t.state).unwrap_or(TaskState::TaskUnknown);
            let key = (framework.clone(), task_id);
            reported.insert(key.clone());
            if !self.frameworks.contains_key(&framework) {
                // Its registry record is gone: keep its place until it subscribes.
                self.add_placeholder_framework(&framework);
            }
            let resources = Resources::from_proto(&task.resources).unwrap_or_default();
            let known = self.tasks.get(&key).map(|t| (t.state, t.agent.clone()));
            match known {
                Some((was, _)) if is_terminal(was) => {
                    if !is_terminal(state) {
                        // Declared lost or gone while away: its framework
                        // may have replaced it already.
                        info!(task = %key.1, was = was.as_str_name(), "killing a task the master had declared ended");
                        if let Some(entry) = self.tasks.get_mut(&key) {
                            entry.agent = agent.to_string();
                        }
                        to_kill.push(key);
                    }
                }
                Some((was, on)) => {
                    if let Some(entry) = self.tasks.get_mut(&key) {
                        entry.agent = agent.to_string();
                    }
                    if !is_terminal(state) && (was != state || on != agent) {
                        self.master_transition(
                            vec![key],
                            state,
                            "agent re-registered",
                            task_status::Reason::AgentReregistered,
                        );
                    }
                    // A terminal state: the agent's own update follows.
                }
                None => {
                    self.insert_task(
                        key.clone(),
                        TaskEntry {
                            info: task,
                            agent: agent.to_string(),
                            resources,
                            state,
                            message: String::new(),
                            reason: task_status::Reason::None,
                            kill_requested: false,
                            usage: None,
                            healthy: None,
                        },
                    );
                    if is_terminal(state) {
                        // Ended while the master was away; its update follows.
                        self.completed.push_back(key);
                    } else {
                        self.persist_task(&key);
                        let status = self.master_status(
                            &key,
                            state,
                            "the master did not know this task; its agent reported it",
                            task_status::Reason::AgentReregistered,
                        );
                        emit_task_event(&self.events, &key, agent, &status);
                        self.send_master_update(&framework, status);
                    }
                }
            }
        }
        (reported, to_kill)
    }

    pub(super) fn used_on_agent(&self, agent: &str) -> Vec<(String, Resources)> {
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for key in self.task_keys_on(agent, |_, t| !is_terminal(t.state)) {
            if let Some(t) = self.tasks.get(&key) {
                used.entry(key.0).or_default().add(&t.resources);
            }
        }
        used.into_iter().collect()
    }

    pub(super) fn agent_closed(&mut self, conn: u64) {
        if self.abandon_awaiting_registration(conn) {
            return;
        }
        let Some(session) = self.forget_session(conn) else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&session.agent) else {
            return;
        };
        // The agent's silence counts from its last word on the session.
        agent.last_seen = session.last_spoke();
        agent.conn = None;
        if agent.status == AgentStatus::Active {
            agent.status = AgentStatus::Disconnected;
        }
        let id = agent.registered.id.clone();
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
        agent.unreachable_since.get_or_insert_with(Instant::now);
        // End the stream, so an agent that was only slow reconnects and
        // re-registers rather than talking into a dead session.
        if let Some((conn, tx)) = agent.conn.take() {
            self.forget_session(conn);
            let _ = tx.send(MasterMessage {
                message: Some(master_message::Message::MarkedUnreachable(
                    master_message::MarkedUnreachable {},
                )),
            });
            tx.close(Status::unavailable(
                "agent marked unreachable; register again",
            ));
        }
        self.rescind_where(|o| o.agent == agent_id);
        self.allocator.remove_agent(agent_id);
        self.emit(ClusterEvent::AgentUnreachable {
            agent_id: agent_id.to_string(),
        });
        // Every framework hears of it (Mesos's `FAILURE` event), before the
        // task updates that follow.
        let connected: Vec<String> = self
            .frameworks
            .values()
            .filter(|f| f.stream.is_some())
            .map(|f| f.id.clone())
            .collect();
        for framework in connected {
            self.send_master_event(
                &framework,
                Event {
                    event: Some(event::Event::Failure(event::Failure {
                        agent_id: Some(v1::AgentId {
                            value: agent_id.to_string(),
                        }),
                        message: "the agent is unreachable: it missed its heartbeats".into(),
                    })),
                },
            );
        }
        let keys = self.task_keys_on(agent_id, |_, t| !is_terminal(t.state));
        self.master_transition(
            keys,
            TaskState::TaskUnreachable,
            "agent is unreachable",
            task_status::Reason::AgentDisconnected,
        );
        self.persist_agent(agent_id);
    }

    /// Forgets an agent unreachable past the removal timeout: its tasks are
    /// `TASK_LOST`. Should it come back, it joins as if new, and whatever
    /// it still runs is reported to the frameworks.
    pub(super) fn remove_agent(&mut self, agent_id: &str) {
        warn!(agent = %agent_id, timeout = ?self.config.agent_removal_timeout, "agent unreachable past the removal timeout; removing it");
        let keys = self.task_keys_on(agent_id, |_, t| !is_terminal(t.state));
        self.master_transition(
            keys,
            TaskState::TaskLost,
            "the agent was unreachable past the removal timeout and was removed",
            task_status::Reason::AgentRemoved,
        );
        self.forget_agent(agent_id);
        self.registry.delete_agent(agent_id);
        self.emit(ClusterEvent::AgentRemoved {
            agent_id: agent_id.to_string(),
            reason: "unreachable past the removal timeout".into(),
        });
    }

    /// An operator declared the agent gone for good: its tasks are
    /// `TASK_GONE_BY_OPERATOR`, and it is told to kill them and refused
    /// from now on. Durable before it takes effect.
    pub(super) fn mark_gone(&mut self, agent_id: &str) -> Result<(), OperatorError> {
        let Some(agent) = self.agents.get(agent_id) else {
            return Err(OperatorError::NotFound(format!(
                "unknown agent `{agent_id}`"
            )));
        };
        let mut record = self.agent_record(agent);
        record.gone = true;
        record.unreachable_since = None;
        self.registry
            .transaction(|r| r.put_agent(&record))
            .map_err(|e| OperatorError::Registry(e.to_string()))?;
        warn!(agent = %agent_id, "operator marked the agent gone");
        if let Some((conn, tx)) = self.agents.get_mut(agent_id).and_then(|a| a.conn.take()) {
            self.forget_session(conn);
            let _ = tx.send(MasterMessage {
                message: Some(master_message::Message::Shutdown(
                    master_message::Shutdown {
                        message: "an operator marked this agent gone".into(),
                    },
                )),
            });
            tx.close(Status::permission_denied(format!(
                "agent `{agent_id}` was marked gone by an operator"
            )));
        }
        let keys = self.task_keys_on(agent_id, |_, t| !is_terminal(t.state));
        self.master_transition(
            keys,
            TaskState::TaskGoneByOperator,
            "an operator marked the task's agent gone",
            task_status::Reason::AgentRemoved,
        );
        self.forget_agent(agent_id);
        self.gone_agents.insert(agent_id.to_string());
        self.emit(ClusterEvent::AgentRemoved {
            agent_id: agent_id.to_string(),
            reason: "marked gone by an operator".into(),
        });
        Ok(())
    }

    /// Drops the agent from memory, its offers and the allocator.
    fn forget_agent(&mut self, agent_id: &str) {
        self.rescind_where(|o| o.agent == agent_id);
        self.allocator.remove_agent(agent_id);
        if let Some(agent) = self.agents.remove(agent_id)
            && let Some((conn, _)) = agent.conn
        {
            self.forget_session(conn);
        }
        self.allocation_needed = true;
    }
}

/// Ends a session that talks before registering: the agent reconnects and
/// registers first.
fn refuse_unregistered(tx: &AgentTx) {
    tx.close(Status::failed_precondition(
        "this session is not registered; register first",
    ));
}

/// A registration whose credentials checked out.
pub(super) struct Admission {
    pub(super) conn: u64,
    pub(super) tx: AgentTx,
    pub(super) id: String,
    info: v1::AgentInfo,
    total: Resources,
    /// What the agent said it runs.
    tasks: Vec<v1::AgentTask>,
    secret_sha256: Vec<u8>,
}
