//! Views of the core's entries for readers (see `publish.rs`, which keeps
//! the published snapshot current with them).

use std::sync::Arc;

use super::publish::Holdings;
use super::*;

impl Core {
    pub(super) fn agent_view(&self, a: &AgentEntry, holds: Option<&Holdings>) -> AgentView {
        AgentView {
            registered: a.registered.clone(),
            status: a.status.name(),
            draining: a.draining,
            used: holds.map(|h| h.used.resources.clone()).unwrap_or_default(),
            offered: holds
                .map(|h| h.offered.resources.clone())
                .unwrap_or_default(),
            task_count: holds.map_or(0, |h| h.used.count),
            json: Default::default(),
        }
    }

    /// The view of task `t`, with its key in the read model and its
    /// agent's id shared.
    pub(super) fn task_view(
        &self,
        (fw, id): &crate::snapshot::TaskKey,
        agent_id: Arc<str>,
        t: &TaskEntry,
    ) -> TaskView {
        TaskView {
            id: id.clone(),
            name: t.info.name.clone(),
            framework_id: fw.clone(),
            agent_id,
            state: t.state.as_str_name(),
            resources: t.resources.clone(),
            message: t.message.clone(),
            reason: t.reason.as_str_name(),
            sandbox: self
                .agents
                .get(&t.agent)
                .filter(|a| !a.registered.endpoint.is_empty())
                .map(|a| SandboxView::new(a.registered.endpoint.clone(), fw.clone(), id.clone())),
            healthy: t.healthy,
            usage: t.usage.as_ref().map(|u| UsageView {
                cpu_seconds: u.cpu_seconds,
                memory_bytes: u.memory_bytes,
                memory_peak_bytes: u.memory_peak_bytes,
                pids: u.pids,
            }),
            json: Default::default(),
        }
    }

    /// Unix milliseconds of a time on the core's clock (`now_ms`).
    pub(super) fn wall_ms(&self, at: Millis) -> u64 {
        let instant = self.started + Duration::from_millis(at);
        (self.clock.unix_of(instant) * 1000.0) as u64
    }
}

pub(super) fn framework_view(f: &FrameworkEntry, holds: Option<&Holdings>) -> FrameworkView {
    FrameworkView {
        id: f.id.clone(),
        name: f.info.name.clone(),
        role: f.role.clone(),
        active: f.stream.is_some(),
        webui_url: f.info.webui_url.clone(),
        principal: f.info.principal.clone(),
        user: f.info.user.clone(),
        relay_token: f.relay_token.clone(),
        used: holds
            .map(|h| h.used.resources.scalar_part())
            .unwrap_or_default(),
        offered: holds
            .map(|h| h.offered.resources.scalar_part())
            .unwrap_or_default(),
        task_count: holds.map_or(0, |h| h.used.count),
    }
}
