//! Operator actions from the HTTP API: role weights, teardown, drains,
//! marking agents gone. Each is durable in the registry before it is
//! acknowledged.

use super::*;

/// Most roles with a weight of their own (each is kept for good).
const MAX_WEIGHTED_ROLES: usize = 1000;

impl Core {
    /// Whether anyone follows task updates on `/api/v1/events`: they are
    /// built (on the hot path) only then.
    pub(super) fn task_updates_followed(&self) -> bool {
        self.events.task_updates_followed()
    }

    pub(super) fn emit(&self, event: ClusterEvent) {
        self.emit_event(event.into());
    }

    pub(super) fn emit_event(&self, event: crate::events::Event) {
        self.events.send(event);
    }

    pub(super) fn operator(&mut self, op: Operator) -> Result<(), OperatorError> {
        match op {
            Operator::SetWeight { role, weight } => {
                crate::config::validate_role(&role).map_err(OperatorError::BadRequest)?;
                crate::config::validate_weight(weight).map_err(OperatorError::BadRequest)?;
                if !self.config.role_weights.contains_key(&role)
                    && self.config.role_weights.len() >= MAX_WEIGHTED_ROLES
                {
                    return Err(OperatorError::BadRequest(format!(
                        "at most {MAX_WEIGHTED_ROLES} roles may have a weight; reset one first (DELETE /api/v1/roles/NAME)"
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
            Operator::ResetWeight { role } => {
                if self.config.role_weights.remove(&role).is_none() {
                    return Err(OperatorError::NotFound(format!(
                        "role `{}` has no weight of its own",
                        role.escape_debug()
                    )));
                }
                if let Err(e) = self.registry.transaction(|r| r.delete_weight(&role)) {
                    self.config.role_weights.insert(role, 1.0);
                    return Err(OperatorError::Registry(e.to_string()));
                }
                info!(%role, "operator reset a role weight");
                self.allocator.set_weight(&role, 1.0);
                self.emit(ClusterEvent::RoleWeightChanged { role, weight: 1.0 });
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
                    for key in self.task_keys_on(&agent_id, |_, t| !is_terminal(t.state)) {
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
