//! Framework calls other than accept: decline, revive, suppress, kill,
//! acknowledge, reconcile, teardown.

use super::accept::refuse_duration;
use super::*;

impl Core {
    pub(super) fn call(
        &mut self,
        header: Option<v1::CallHeader>,
        caller: &Caller,
        call: Call,
    ) -> Result<(), Status> {
        let (framework_id, stream_id) = header_ids(&header);
        let Some(f) = self.frameworks.get(&framework_id) else {
            return Err(Status::not_found(format!(
                "unknown framework `{framework_id}`"
            )));
        };
        if f.stream.as_ref().is_none_or(|(s, _)| *s != stream_id) {
            return Err(Status::failed_precondition(format!(
                "stream `{stream_id}` is not framework `{framework_id}`'s current subscription"
            )));
        }
        // The stream id is known only to the subscriber; the principal
        // check keeps a leaked one from being used by another tenant.
        if let Some(p) = caller.principal()
            && f.info.principal != p.as_str()
        {
            return Err(Status::permission_denied(format!(
                "framework `{framework_id}` belongs to another principal than `{p}`"
            )));
        }
        let span = info_span!("framework", framework = %framework_id);
        let _enter = span.enter();
        match call {
            Call::Accept(req) => self.accept(&framework_id, caller, *req),
            Call::Decline(req) => {
                let refuse = refuse_duration(req.filters.as_ref())?;
                for id in req.offer_ids {
                    if self
                        .offers
                        .get(&id.value)
                        .is_some_and(|o| o.framework == framework_id)
                    {
                        self.take_offer(&id.value, refuse);
                        self.metrics.offers_declined += 1;
                    }
                }
                Ok(())
            }
            Call::Revive => {
                self.allocator.revive(&framework_id);
                self.allocation_needed = true;
                Ok(())
            }
            Call::Suppress => {
                self.allocator.suppress(&framework_id);
                Ok(())
            }
            Call::SetDemand(demand) => {
                self.allocator.set_demand(&framework_id, demand);
                self.allocation_needed = true;
                Ok(())
            }
            Call::Kill { task_id, grace } => {
                if grace.is_some_and(|g| !(g.is_finite() && (0.0..=3600.0).contains(&g))) {
                    return Err(Status::invalid_argument(
                        "kill_grace_period must be between 0 and 3600 seconds",
                    ));
                }
                let key = (framework_id.clone(), task_id.value.clone());
                match self.tasks.get(&key) {
                    Some(t) if !is_terminal(t.state) => {
                        self.send_kill_with_grace(&key, grace);
                        Ok(())
                    }
                    Some(_) => Err(Status::failed_precondition(format!(
                        "task `{}` has already ended",
                        task_id.value
                    ))),
                    None => Err(Status::not_found(format!(
                        "unknown task `{}`",
                        task_id.value
                    ))),
                }
            }
            Call::Acknowledge(req) => {
                let first = v1::Acknowledgement {
                    agent_id: req.agent_id,
                    task_id: req.task_id,
                    uuid: req.uuid,
                };
                let acks: Vec<v1::Acknowledgement> =
                    std::iter::once(first).chain(req.more).collect();
                if acks.iter().any(|a| a.uuid.is_empty()) {
                    return Err(Status::invalid_argument("acknowledge: uuid is required"));
                }
                // Each stands alone: one for a task the master no longer
                // knows does not hold up the rest.
                let mut unknown = Vec::new();
                for ack in acks {
                    if let Err(task) = self.acknowledge(&framework_id, ack) {
                        unknown.push(task);
                    }
                }
                match unknown.first() {
                    None => Ok(()),
                    Some(task) => Err(Status::not_found(format!(
                        "unknown task `{task}`{}",
                        if unknown.len() > 1 {
                            format!(" (and {} more)", unknown.len() - 1)
                        } else {
                            String::new()
                        }
                    ))),
                }
            }
            Call::Reconcile(task_ids) => {
                self.reconcile(&framework_id, task_ids);
                Ok(())
            }
            Call::Teardown => {
                info!("framework asked for teardown");
                self.remove_framework(&framework_id);
                Ok(())
            }
        }
    }

    pub(super) fn reconcile(&mut self, framework_id: &str, task_ids: Vec<v1::TaskId>) {
        let keys: Vec<TaskKey> = if task_ids.is_empty() {
            self.tasks
                .iter()
                .filter(|((fw, _), t)| fw == framework_id && !is_terminal(t.state))
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            task_ids
                .into_iter()
                .map(|t| (framework_id.to_string(), t.value))
                .collect()
        };
        for key in keys {
            let status = match self.tasks.get(&key) {
                Some(t) => {
                    let mut s = self.master_status(
                        &key,
                        t.state,
                        &t.message,
                        task_status::Reason::Reconciliation,
                    );
                    s.message = t.message.clone();
                    s
                }
                None => self.master_status(
                    &key,
                    TaskState::TaskUnknown,
                    "the master knows no such task",
                    task_status::Reason::Reconciliation,
                ),
            };
            self.send_master_update(framework_id, status);
        }
    }
}

impl Core {
    /// Passes one acknowledgement on to the agent; `Err(task id)` when the
    /// task is unknown and the agent not named.
    fn acknowledge(&mut self, framework_id: &str, ack: v1::Acknowledgement) -> Result<(), String> {
        let task_id = ack.task_id.map(|t| t.value).unwrap_or_default();
        let agent = match ack.agent_id.map(|a| a.value).filter(|a| !a.is_empty()) {
            Some(a) => a,
            None => match self.tasks.get(&(framework_id.to_string(), task_id.clone())) {
                Some(t) => t.agent.clone(),
                None => return Err(task_id),
            },
        };
        if let Some(relayed) = self.awaiting_ack.remove(&ack.uuid) {
            self.metrics
                .status_update_ack_seconds
                .observe(relayed.elapsed().as_secs_f64());
        }
        self.acknowledge_to_agent(
            agent,
            master_message::Acknowledge {
                framework_id: Some(v1::FrameworkId {
                    value: framework_id.to_string(),
                }),
                task_id: Some(v1::TaskId { value: task_id }),
                uuid: ack.uuid,
            },
        );
        Ok(())
    }
}
