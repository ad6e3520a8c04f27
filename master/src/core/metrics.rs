//! The Prometheus metrics page, built from a state snapshot.

use super::*;

impl Core {
    pub(super) fn render_metrics(&self) -> String {
        let view = self.snapshot();
        let mut kinds: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
        for a in view
            .agents
            .iter()
            .filter(|a| a.status != AgentStatus::Unreachable.name())
        {
            for (kind, v) in a.resources.total.scalars() {
                kinds.entry(kind.to_string()).or_default().0 += v;
            }
            for (kind, v) in a.resources.used.scalars() {
                kinds.entry(kind.to_string()).or_default().1 += v;
            }
            for (kind, v) in a.resources.offered.scalars() {
                kinds.entry(kind.to_string()).or_default().2 += v;
            }
        }
        let mut agents_by_status: BTreeMap<&str, usize> = [
            AgentStatus::Active,
            AgentStatus::Disconnected,
            AgentStatus::Unreachable,
        ]
        .iter()
        .map(|s| (s.name(), 0))
        .collect();
        for a in &view.agents {
            *agents_by_status.entry(a.status).or_default() += 1;
        }
        let mut tasks_by_state: BTreeMap<String, usize> = BTreeMap::new();
        for t in &view.tasks {
            *tasks_by_state.entry(t.state.clone()).or_default() += 1;
        }
        let active = view.frameworks.iter().filter(|f| f.active).count();
        self.metrics.render(&Gauges {
            resources: kinds
                .iter()
                .map(|(k, (t, u, o))| (k.as_str(), *t, *u, *o))
                .collect(),
            agents_by_status: agents_by_status.into_iter().collect(),
            frameworks_active: active,
            frameworks_inactive: view.frameworks.len() - active,
            tasks_by_state: tasks_by_state.into_iter().collect(),
            offers_outstanding: view.offers.len(),
        })
    }
}
