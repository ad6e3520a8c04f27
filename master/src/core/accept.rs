//! Accepting offers: validating every task against the offers before
//! anything launches, then launching.

use super::*;

/// Most volumes one task may declare.
const MAX_VOLUMES: usize = 16;

/// Splits an accept's tasks, in order, into launch messages of at most
/// [`MAX_ACCEPT_TASK_BYTES`] of tasks (or one task, if it alone is more):
/// with a task at most [`MAX_TASK_BYTES`], every message stays under the
/// limit both ends hold to, though the master adds to each task.
///
/// [`MAX_ACCEPT_TASK_BYTES`]: agora_proto::limits::MAX_ACCEPT_TASK_BYTES
/// [`MAX_TASK_BYTES`]: agora_proto::limits::MAX_TASK_BYTES
pub(super) fn launch_batches(tasks: Vec<v1::TaskInfo>) -> Vec<Vec<v1::TaskInfo>> {
    use prost::Message as _;
    let mut batches: Vec<Vec<v1::TaskInfo>> = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let size = task.encoded_len();
        match batches.last_mut() {
            Some(batch) if bytes + size <= agora_proto::limits::MAX_ACCEPT_TASK_BYTES => {
                bytes += size;
                batch.push(task);
            }
            _ => {
                bytes = size;
                batches.push(vec![task]);
            }
        }
    }
    batches
}

impl Core {
    /// Validates and applies an accept. Invalid accepts launch nothing and
    /// return every named offer's resources.
    pub(super) fn accept(
        &mut self,
        framework_id: &str,
        caller: &Caller,
        req: v1::AcceptRequest,
    ) -> Result<(), Status> {
        let refuse = refuse_duration(req.filters.as_ref())
            .map_err(|s| refusal_status(Refusal::InvalidFilters, s.message(), ""))?;
        let mut offer_ids: Vec<String> = Vec::new();
        let mut problem: Option<(Refusal, String, String)> = None;
        let offers_problem = |reason, message: String| (reason, message, String::new());
        for id in &req.offer_ids {
            if offer_ids.contains(&id.value) {
                problem.get_or_insert(offers_problem(
                    Refusal::InvalidOffers,
                    format!("offer `{}` is named twice", id.value),
                ));
                continue;
            }
            match self.offers.get(&id.value) {
                Some(o) if o.framework == framework_id => offer_ids.push(id.value.clone()),
                Some(_) => {
                    problem.get_or_insert(offers_problem(
                        Refusal::OfferNotOwned,
                        format!("offer `{}` belongs to another framework", id.value),
                    ));
                }
                None => {
                    problem.get_or_insert(offers_problem(
                        Refusal::OfferNotOutstanding,
                        format!(
                            "offer `{}` is not outstanding (already used, declined, rescinded or unknown)",
                            id.value
                        ),
                    ));
                }
            }
        }
        if req.offer_ids.is_empty() {
            problem.get_or_insert(offers_problem(
                Refusal::InvalidOffers,
                "accept names no offer".into(),
            ));
        }
        let agents: HashSet<&str> = offer_ids
            .iter()
            .filter_map(|id| self.offers.get(id).map(|o| o.agent.as_str()))
            .collect();
        if agents.len() > 1 {
            problem.get_or_insert(offers_problem(
                Refusal::InvalidOffers,
                "offers from different agents cannot be accepted together".into(),
            ));
        }
        let agent = agents
            .iter()
            .next()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut offered = Resources::new();
        for id in &offer_ids {
            if let Some(o) = self.offers.get(id) {
                offered.add(&o.resources);
            }
        }

        let mut launches: Vec<(v1::TaskInfo, Resources)> = Vec::new();
        if problem.is_none() {
            match self
                .validate_tasks(framework_id, &agent, &offered, &req.tasks)
                .and_then(|resources| {
                    self.authorize_users(framework_id, caller, &req.tasks)?;
                    Ok(resources)
                }) {
                // The tasks move into the launches: no copy of each.
                Ok(resources) => launches = req.tasks.into_iter().zip(resources).collect(),
                Err(e) => problem = Some(e),
            }
        }

        if let Some((reason, problem, task)) = problem {
            warn!(%problem, "invalid accept; nothing launched");
            self.metrics.invalid_accepts += 1;
            for id in &offer_ids {
                self.take_offer(id, refuse);
            }
            return Err(refusal_status(reason, problem, &task));
        }

        let mut used = Resources::new();
        for id in &offer_ids {
            self.offers.take(id, self.allocator.as_mut());
        }
        let framework_user = self
            .frameworks
            .get(framework_id)
            .map(|f| f.info.user.clone())
            .unwrap_or_default();
        let mut to_launch = Vec::with_capacity(launches.len());
        for (mut task, resources) in launches {
            self.reader_checkpoint();
            task.agent_id = Some(v1::AgentId {
                value: agent.clone(),
            });
            if task.user.is_empty() {
                task.user.clone_from(&framework_user);
            }
            let task_id = task
                .task_id
                .as_ref()
                .map(|t| t.value.clone())
                .unwrap_or_default();
            used.add(&resources);
            // At debug: one line per task was a tenth of the core's time
            // at 10,000 launches a second (`/api/v1/events` has them all).
            debug!(task = %task_id, agent = %agent, resources = %resources, "launching task");
            self.metrics.tasks_launched += 1;
            if self.task_updates_followed() {
                self.emit_event(crate::events::Event::task_updated(
                    framework_id,
                    &task_id,
                    &agent,
                    TaskState::TaskStaging.as_str_name(),
                    "",
                ));
            }
            let key = (framework_id.to_string(), task_id);
            self.insert_task(
                key.clone(),
                TaskEntry {
                    info: task.clone(),
                    agent: agent.clone(),
                    resources,
                    state: TaskState::TaskStaging,
                    message: String::new(),
                    reason: task_status::Reason::None,
                    kill_requested: false,
                    usage: None,
                    healthy: None,
                },
            );
            self.persist_task(&key);
            to_launch.push(task);
        }
        // The accept's tasks go to the agent together: one message, not
        // one per task, unless they outgrow one.
        for tasks in launch_batches(to_launch) {
            self.send_to_agent(
                &agent,
                master_message::Message::Launch(master_message::Launch {
                    framework_id: Some(v1::FrameworkId {
                        value: framework_id.to_string(),
                    }),
                    tasks,
                }),
            );
        }
        let unused = offered.minus(&used);
        let until = refuse.map(|d| self.now_ms().saturating_add(d.as_millis() as Millis));
        self.allocator.recover(framework_id, &agent, &unused, until);
        self.allocation_needed = true;
        Ok(())
    }

    /// Whether the framework's principal may run each task as its user
    /// (the task's, else the framework's; none: the agent's unprivileged
    /// default, which needs no rule).
    fn authorize_users(
        &self,
        framework_id: &str,
        caller: &Caller,
        tasks: &[v1::TaskInfo],
    ) -> Result<(), (Refusal, String, String)> {
        let framework_user = self
            .frameworks
            .get(framework_id)
            .map_or("", |f| f.info.user.as_str());
        for task in tasks {
            let user = if task.user.is_empty() {
                framework_user
            } else {
                task.user.as_str()
            };
            if !user.is_empty() && !self.allows(caller, Action::RunTask { user }) {
                let id = task.task_id.as_ref().map_or("", |t| t.value.as_str());
                return Err((
                    Refusal::NotAuthorized,
                    format!(
                        "task `{id}`: principal `{}` may not run tasks as user `{}`",
                        caller.name(),
                        user.escape_debug()
                    ),
                    id.to_string(),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn validate_tasks(
        &self,
        framework_id: &str,
        agent: &str,
        offered: &Resources,
        tasks: &[v1::TaskInfo],
    ) -> Result<Vec<Resources>, (Refusal, String, String)> {
        let bad = |id: &str, message: String| (Refusal::InvalidTask, message, id.to_string());
        let mut seen: HashSet<&str> = HashSet::new();
        let mut total = Resources::new();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            let id = task
                .task_id
                .as_ref()
                .map(|t| t.value.as_str())
                .unwrap_or("");
            if id.is_empty() {
                return Err(bad(id, "task_id must not be empty".into()));
            }
            if id.len() > 256
                || id == "."
                || id == ".."
                || id.chars().any(|c| c.is_control() || c == '/')
            {
                return Err(bad(
                    id,
                    format!(
                        "task `{id}`: task_id must be at most 256 characters, not `.` or `..`, without `/` or control characters"
                    ),
                ));
            }
            if !seen.insert(id) {
                return Err(bad(
                    id,
                    format!("task id `{id}` appears twice in one accept"),
                ));
            }
            if self
                .tasks
                .get(&(framework_id.to_string(), id.to_string()))
                .is_some_and(|t| !is_terminal(t.state))
            {
                return Err(bad(
                    id,
                    format!("task id `{id}` is already in use by a live task of this framework"),
                ));
            }
            if let Some(a) = task.agent_id.as_ref().filter(|a| !a.value.is_empty())
                && a.value != agent
            {
                return Err(bad(
                    id,
                    format!(
                        "task `{id}`: agent_id `{}` is not the offer's agent `{agent}`",
                        a.value
                    ),
                ));
            }
            let bytes = prost::Message::encoded_len(task);
            if bytes > agora_proto::limits::MAX_TASK_BYTES {
                return Err(bad(
                    id,
                    format!(
                        "task `{id}` is {bytes} bytes; a task may be at most {} bytes",
                        agora_proto::limits::MAX_TASK_BYTES
                    ),
                ));
            }
            if task.volumes.len() > MAX_VOLUMES {
                return Err(bad(
                    id,
                    format!("task `{id}`: at most {MAX_VOLUMES} volumes"),
                ));
            }
            for v in &task.volumes {
                let path = std::path::Path::new(&v.host_path);
                let plain = path.is_absolute()
                    && path
                        .components()
                        .all(|c| !matches!(c, std::path::Component::ParentDir))
                    && !v.host_path.contains('\0');
                if !plain || v.host_path == "/" {
                    return Err(bad(
                        id,
                        format!(
                            "task `{id}`: volume `{}` must be an absolute path other than `/`, without `..`",
                            v.host_path.escape_debug()
                        ),
                    ));
                }
            }
            if task
                .command
                .as_ref()
                .is_none_or(|c| c.value.trim().is_empty())
            {
                return Err(bad(
                    id,
                    format!("task `{id}`: command.value must not be empty"),
                ));
            }
            let resources = Resources::from_proto(&task.resources)
                .map_err(|e| bad(id, format!("task `{id}`: {e}")))?;
            if resources.scalar("cpus") < 0.01 {
                return Err(bad(
                    id,
                    format!("task `{id}`: resources.cpus must be at least 0.01"),
                ));
            }
            if resources.scalar("mem") < 1.0 {
                return Err(bad(
                    id,
                    format!("task `{id}`: resources.mem must be at least 1 MiB"),
                ));
            }
            if !(task.kill_grace_period.is_finite() && task.kill_grace_period >= 0.0) {
                return Err(bad(
                    id,
                    format!("task `{id}`: kill_grace_period must be a finite number >= 0"),
                ));
            }
            if let Some(check) = &task.health_check {
                validate_health_check(check, resources.ranges("ports").len())
                    .map_err(|e| bad(id, format!("task `{id}`: health_check: {e}")))?;
            }
            total.add(&resources);
            if !offered.contains(&total) {
                return Err((
                    Refusal::InsufficientResources,
                    format!(
                        "task `{id}`: resources {resources} are not within the offer (offered {offered}; tasks so far need {total})"
                    ),
                    id.to_string(),
                ));
            }
            out.push(resources);
        }
        Ok(out)
    }
}

/// Checks a task's health check against the task (its ports).
fn validate_health_check(check: &v1::HealthCheck, ports: u64) -> Result<(), String> {
    use v1::health_check::Protocol;
    let protocol =
        Protocol::try_from(check.protocol).map_err(|_| "unknown protocol".to_string())?;
    for (name, value) in [
        ("grace_period_seconds", check.grace_period_seconds),
        ("interval_seconds", check.interval_seconds),
        ("timeout_seconds", check.timeout_seconds),
    ] {
        if !(value.is_finite() && (0.0..=86_400.0).contains(&value)) {
            return Err(format!("{name} must be between 0 and 86400"));
        }
    }
    match protocol {
        Protocol::None => Ok(()),
        Protocol::Http | Protocol::Tcp if u64::from(check.port_index) >= ports => Err(format!(
            "port_index {} but the task has {ports} port(s)",
            check.port_index
        )),
        Protocol::Command if check.command.trim().is_empty() => {
            Err("a command check needs a command".into())
        }
        _ => Ok(()),
    }
}

pub(super) fn refuse_duration(filters: Option<&v1::Filters>) -> Result<Option<Duration>, Status> {
    let seconds = filters
        .and_then(|f| f.refuse_seconds)
        .unwrap_or(DEFAULT_REFUSE_SECONDS);
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(Status::invalid_argument(
            "filters.refuse_seconds must be a finite number >= 0",
        ));
    }
    Ok((seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_of(id: &str, command_bytes: usize) -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: Some(v1::TaskId { value: id.into() }),
            command: Some(v1::CommandInfo {
                value: "x".repeat(command_bytes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ids(batches: &[Vec<v1::TaskInfo>]) -> Vec<Vec<String>> {
        batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|t| {
                        t.task_id
                            .as_ref()
                            .map(|t| t.value.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn an_accepts_tasks_launch_together_until_they_would_outgrow_a_message() {
        let small: Vec<_> = (0..100).map(|i| task_of(&format!("s{i}"), 100)).collect();
        assert_eq!(launch_batches(small).len(), 1);
        // Five 3-MiB tasks: two fit under the accept's task bytes, a third
        // would not.
        let big: Vec<_> = (0..5).map(|i| task_of(&format!("b{i}"), 3 << 20)).collect();
        let batches = launch_batches(big);
        assert_eq!(
            ids(&batches),
            [vec!["b0", "b1"], vec!["b2", "b3"], vec!["b4"]]
        );
        for batch in &batches {
            let message = master_message::Launch {
                framework_id: Some(v1::FrameworkId { value: "f".into() }),
                tasks: batch.clone(),
            };
            use prost::Message as _;
            assert!(message.encoded_len() < agora_proto::limits::MAX_MESSAGE_BYTES);
        }
        assert!(launch_batches(Vec::new()).is_empty());
    }
}
