//! Tasks: state changes the agents report or the master decides, relaying
//! updates to frameworks, and kills.

use super::*;

impl Core {
    /// Keys of the tasks matching `pred`.
    pub(super) fn task_keys(&self, pred: impl Fn(&TaskKey, &TaskEntry) -> bool) -> Vec<TaskKey> {
        self.tasks
            .iter()
            .filter(|(k, t)| pred(k, t))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of the tasks on `agent` matching `pred`, from the index by
    /// agent (a scan of every task per agent made a reconnection storm
    /// quadratic).
    pub(super) fn task_keys_on(
        &self,
        agent: &str,
        pred: impl Fn(&TaskKey, &TaskEntry) -> bool,
    ) -> Vec<TaskKey> {
        self.tasks_by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .filter(|k| {
                self.tasks
                    .get(*k)
                    .is_some_and(|t| t.agent == agent && pred(k, t))
            })
            .cloned()
            .collect()
    }

    /// Adds (or replaces) a task, indexed by its agent.
    pub(super) fn insert_task(&mut self, key: TaskKey, entry: TaskEntry) {
        self.tasks_by_agent
            .entry(entry.agent.clone())
            .or_default()
            .insert(key.clone());
        if let Some(old) = self.tasks.insert(key.clone(), Box::new(entry))
            && self.tasks.get(&key).is_some_and(|t| t.agent != old.agent)
        {
            self.unindex(&old.agent, &key);
        }
    }

    /// Forgets a task and its index entry.
    pub(super) fn remove_task(&mut self, key: &TaskKey) -> Option<TaskEntry> {
        let entry = self.tasks.remove(key)?;
        self.unindex(&entry.agent, key);
        Some(*entry)
    }

    fn unindex(&mut self, agent: &str, key: &TaskKey) {
        if let Some(keys) = self.tasks_by_agent.get_mut(agent) {
            keys.remove(key);
            if keys.is_empty() {
                self.tasks_by_agent.remove(agent);
            }
        }
    }

    /// Moves tasks to a state the master decides (not the agent), and tells
    /// their frameworks.
    pub(super) fn master_transition(
        &mut self,
        keys: Vec<TaskKey>,
        state: TaskState,
        message: &str,
        reason: task_status::Reason,
    ) {
        for key in keys {
            let status = self.master_status(&key, state, message, reason);
            self.set_task_state(&key, &status);
            self.send_master_update(&key.0, status);
        }
    }

    pub(super) fn master_status(
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
    pub(super) fn set_task_state(&mut self, key: &TaskKey, status: &TaskStatus) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let was_state = task.state;
        let was_terminal = is_terminal(was_state);
        let changed = task.state != state || task.message != status.message;
        task.state = state;
        task.message = status.message.clone();
        if status.healthy.is_some() {
            task.healthy = status.healthy;
        }
        task.reason = task_status::Reason::try_from(status.reason).unwrap_or_default();
        let state_changed = task.state != was_state;
        if changed {
            // With the task at hand: a second lookup per event hashed and
            // compared both ids again, for every update a listener gets.
            emit_task_event(&self.events, key, &task.agent, status);
        }
        if state_changed {
            self.persist_task_state(key);
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
                    self.remove_task(&old);
                }
            }
        }
    }

    pub(super) fn status_update(&mut self, agent: &str, update: v1::StatusUpdate) {
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
        if self.is_superseded(&key, &status) {
            // A retry of an update that a later one overtook (the first was
            // not forwarded while the framework's stream was full, or its
            // acknowledgement was still on its way): taken as delivered, so
            // the task does not go back to an earlier state.
            self.acknowledge_for_framework(agent, framework, status);
            return;
        }
        self.set_task_state(&key, &status);
        self.metrics.status_updates += 1;
        if !self.frameworks.contains_key(&framework) {
            // Nobody to deliver to: acknowledge on the framework's behalf so the
            // agent stops retrying.
            self.acknowledge_for_framework(agent, framework, status);
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

    /// Tells the agent an update was delivered, which its framework will
    /// not acknowledge itself.
    fn acknowledge_for_framework(&mut self, agent: &str, framework: String, status: TaskStatus) {
        self.acknowledge_to_agent(
            agent.to_string(),
            master_message::Acknowledge {
                framework_id: Some(v1::FrameworkId { value: framework }),
                task_id: status.task_id,
                uuid: status.uuid,
            },
        );
    }

    /// Whether an agent's update would move a task back: to staging or
    /// starting once it got further, or out of a state it ended in. (A
    /// task that ended and then ran again would hold its resources in the
    /// master's books, and free them twice when it ended again.)
    fn is_superseded(&self, key: &TaskKey, status: &TaskStatus) -> bool {
        let early = |s: TaskState| matches!(s, TaskState::TaskStaging | TaskState::TaskStarting);
        let reported = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        self.tasks.get(key).is_some_and(|t| {
            (early(reported) && !early(t.state)) || (is_terminal(t.state) && !is_terminal(reported))
        })
    }

    pub(super) fn send_kill(&mut self, key: &TaskKey) {
        self.send_kill_with_grace(key, None);
    }

    /// Asks the task's agent to kill it; `grace` overrides the task's own
    /// kill grace period.
    pub(super) fn send_kill_with_grace(&mut self, key: &TaskKey, grace: Option<f64>) {
        // Unseen: no view shows a kill asked for, and a framework torn
        // down with 100,000 tasks made as many changes for the read model
        // to apply.
        let Some(task) = self.tasks.get_mut_unseen(key) else {
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
}

/// Tells `/api/v1/events` listeners of a task's new state on `agent` (made
/// only while someone follows task updates).
pub(super) fn emit_task_event(
    events: &crate::events::EventSender,
    key: &TaskKey,
    agent: &str,
    status: &TaskStatus,
) {
    if !events.task_updates_followed() {
        return;
    }
    events.send(crate::events::Event::task_updated(
        &key.0,
        &key.1,
        agent,
        TaskState::try_from(status.state)
            .unwrap_or(TaskState::TaskUnknown)
            .as_str_name(),
        &status.message,
    ));
}
