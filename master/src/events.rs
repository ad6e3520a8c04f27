//! Cluster events, as `GET /api/v1/events` streams them (server-sent
//! events): what changed, so tools can follow the cluster without polling.

use serde::Serialize;

/// Where the core sends events, each shared by every listener (a
/// listener's copy is a reference count, not five strings).
pub type EventSender = tokio::sync::broadcast::Sender<std::sync::Arc<ClusterEvent>>;

/// One change in the cluster.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    AgentAdded {
        agent_id: String,
        hostname: String,
    },
    AgentReregistered {
        agent_id: String,
        hostname: String,
    },
    AgentDisconnected {
        agent_id: String,
    },
    AgentUnreachable {
        agent_id: String,
    },
    AgentDrained {
        agent_id: String,
        kill_tasks: bool,
    },
    AgentUndrained {
        agent_id: String,
    },
    /// Forgotten: unreachable past the removal timeout, or marked gone.
    AgentRemoved {
        agent_id: String,
        reason: String,
    },
    FrameworkAdded {
        framework_id: String,
        name: String,
        role: String,
    },
    FrameworkDisconnected {
        framework_id: String,
    },
    FrameworkRemoved {
        framework_id: String,
    },
    TaskUpdated {
        framework_id: String,
        task_id: String,
        agent_id: String,
        state: String,
        message: String,
    },
    RoleWeightChanged {
        role: String,
        weight: f64,
    },
}

impl ClusterEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterEvent::AgentAdded { .. } => "agent_added",
            ClusterEvent::AgentReregistered { .. } => "agent_reregistered",
            ClusterEvent::AgentDisconnected { .. } => "agent_disconnected",
            ClusterEvent::AgentUnreachable { .. } => "agent_unreachable",
            ClusterEvent::AgentDrained { .. } => "agent_drained",
            ClusterEvent::AgentUndrained { .. } => "agent_undrained",
            ClusterEvent::AgentRemoved { .. } => "agent_removed",
            ClusterEvent::FrameworkAdded { .. } => "framework_added",
            ClusterEvent::FrameworkDisconnected { .. } => "framework_disconnected",
            ClusterEvent::FrameworkRemoved { .. } => "framework_removed",
            ClusterEvent::TaskUpdated { .. } => "task_updated",
            ClusterEvent::RoleWeightChanged { .. } => "role_weight_changed",
        }
    }
}
