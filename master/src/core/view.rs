//! The operator's snapshot of the state (`GET /api/v1/state`).

use super::*;

impl Core {
    pub(super) fn snapshot(&self) -> StateView {
        let mut used_by_agent: HashMap<&str, Resources> = HashMap::new();
        let mut used_by_framework: HashMap<&str, Resources> = HashMap::new();
        let mut count_by_framework: HashMap<&str, usize> = HashMap::new();
        for ((fw, _), t) in &self.tasks {
            if !is_terminal(t.state) {
                used_by_agent.entry(&t.agent).or_default().add(&t.resources);
                used_by_framework.entry(fw).or_default().add(&t.resources);
                *count_by_framework.entry(fw).or_default() += 1;
            }
        }
        let mut offered_by_agent: HashMap<&str, Resources> = HashMap::new();
        let mut offered_by_framework: HashMap<&str, Resources> = HashMap::new();
        for o in self.offers.values() {
            offered_by_agent
                .entry(&o.agent)
                .or_default()
                .add(&o.resources);
            offered_by_framework
                .entry(&o.framework)
                .or_default()
                .add(&o.resources);
        }
        let mut agents: Vec<AgentView> = self
            .agents
            .values()
            .map(|a| AgentView {
                id: a.id.clone(),
                hostname: a.hostname.clone(),
                endpoint: a.endpoint.clone(),
                attributes: a
                    .attributes
                    .iter()
                    .map(|x| (x.name.clone(), x.text.clone()))
                    .collect(),
                status: a.status.name(),
                draining: a.draining,
                resources: AgentResources {
                    total: a.total.clone(),
                    used: used_by_agent
                        .get(a.id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    offered: offered_by_agent
                        .get(a.id.as_str())
                        .cloned()
                        .unwrap_or_default(),
                },
            })
            .collect();
        agents.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        let mut frameworks: Vec<FrameworkView> = self
            .frameworks
            .values()
            .map(|f| FrameworkView {
                id: f.id.clone(),
                name: f.info.name.clone(),
                role: f.role.clone(),
                active: f.stream.is_some(),
                webui_url: f.info.webui_url.clone(),
                used: used_by_framework
                    .get(f.id.as_str())
                    .map(Resources::scalar_part)
                    .unwrap_or_default(),
                offered: offered_by_framework
                    .get(f.id.as_str())
                    .map(Resources::scalar_part)
                    .unwrap_or_default(),
                task_count: count_by_framework.get(f.id.as_str()).copied().unwrap_or(0),
            })
            .collect();
        frameworks.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let mut tasks: Vec<TaskView> = self
            .tasks
            .iter()
            .map(|((fw, id), t)| TaskView {
                id: id.clone(),
                name: t.info.name.clone(),
                framework_id: fw.clone(),
                agent_id: t.agent.clone(),
                state: t.state.as_str_name().to_string(),
                resources: t.resources.clone(),
                message: t.message.clone(),
                reason: t.reason.as_str_name().to_string(),
                sandbox: self
                    .agents
                    .get(&t.agent)
                    .filter(|a| !a.endpoint.is_empty())
                    .map(|a| {
                        let path = format!("{fw}/{id}");
                        SandboxView {
                            stdout: format!("{}/files/read?path={path}/stdout", a.endpoint),
                            stderr: format!("{}/files/read?path={path}/stderr", a.endpoint),
                            path,
                        }
                    }),
                healthy: t.healthy,
                usage: t.usage.as_ref().map(|u| UsageView {
                    cpu_seconds: u.cpu_seconds,
                    memory_bytes: u.memory_bytes,
                    memory_peak_bytes: u.memory_peak_bytes,
                    pids: u.pids,
                }),
            })
            .collect();
        tasks.sort_by(|a, b| a.framework_id.cmp(&b.framework_id).then(a.id.cmp(&b.id)));
        let now = self.now_ms();
        let mut offers: Vec<OfferView> = self
            .offers
            .iter()
            .map(|(id, o)| OfferView {
                id: id.clone(),
                framework_id: o.framework.clone(),
                agent_id: o.agent.clone(),
                resources: o.resources.clone(),
                age_seconds: now.saturating_sub(o.made_at) as f64 / 1000.0,
            })
            .collect();
        offers.sort_by(|a, b| a.id.cmp(&b.id));
        StateView {
            agents,
            frameworks,
            tasks,
            offers,
        }
    }
}
