//! Operator actions from the HTTP API: role weights, teardown, drains,
//! marking agents gone. Each is durable in the registry before it is
//! acknowledged.

use super::*;

impl Core {
    pub(super) fn emit(&self, event: ClusterEvent) {
        // No subscribers is fine: events are for whoever listens now.
        let _ = self.events.send(event);
    }

    pub(super) fn operator(&mut self, op: Operator) -> Result<(), OperatorError> {
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
                self.registry
                    .transaction(|r| r.put_weight(&role, weight))
                    .map_err(|e| OperatorError::Registry(e.to_string()))?;
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
                self.registry
                    .commit()
                    .map_err(|e| OperatorError::Registry(e.to_string()))?;
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
                agent.draining = true;
                if let Err(e) = self.persist_agent_now(&agent_id) {
                    if let Some(agent) = self.agents.get_mut(&agent_id) {
                        agent.draining = false;
                    }
                    return Err(e);
                }
                info!(agent = %agent_id, kill_tasks, "operator drained an agent");
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
                agent.draining = false;
                if let Err(e) = self.persist_agent_now(&agent_id) {
                    if let Some(agent) = self.agents.get_mut(&agent_id) {
                        agent.draining = true;
                    }
                    return Err(e);
                }
                info!(agent = %agent_id, "operator put an agent back");
                self.allocator.set_agent_active(&agent_id, true);
                self.emit(ClusterEvent::AgentUndrained { agent_id });
                self.allocation_needed = true;
            }
            Operator::MarkGone { agent_id } => self.mark_gone(&agent_id)?,
        }
        Ok(())
    }

    /// Writes the agent's record at once.
    fn persist_agent_now(&mut self, agent_id: &str) -> Result<(), OperatorError> {
        let Some(record) = self.agents.get(agent_id).map(|a| self.agent_record(a)) else {
            return Ok(());
        };
        self.registry
            .transaction(|r| r.put_agent(&record))
            .map_err(|e| OperatorError::Registry(e.to_string()))
    }
}
