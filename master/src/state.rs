//! The operator's view of the cluster: the parts `GET /api/v1/state`
//! returns (see `snapshot.rs`, which holds and serializes them).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use agora_proto::Resources;
use serde::Serialize;

/// An outstanding offer.
#[derive(Clone, Debug, Serialize)]
pub struct OfferView {
    pub id: String,
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
    pub age_seconds: f64,
    /// When it was made (Unix ms): its age is counted from this.
    #[serde(skip)]
    pub made_at_ms: u64,
}

/// A view's JSON, made the first time it is asked for and kept with the
/// view: views are immutable once published and shared by every snapshot
/// until they change, so a big `/state` serializes only what changed since
/// the last one and copies the rest.
#[derive(Clone, Debug, Default)]
pub struct JsonOnce(OnceLock<Box<[u8]>>);

impl JsonOnce {
    pub fn get_or_make<T: Serialize>(&self, view: &T) -> &[u8] {
        self.0.get_or_init(|| {
            // A view holds only strings, numbers and maps with string
            // keys, which always serialize.
            serde_json::to_vec(view)
                .expect("views serialize")
                .into_boxed_slice()
        })
    }
}

/// The statuses an agent can be in (see [`AgentView::status`]).
pub const AGENT_STATUSES: [&str; 3] = ["active", "disconnected", "unreachable"];

/// One agent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    /// The agent's own HTTP endpoint, if it serves one.
    pub endpoint: String,
    pub attributes: BTreeMap<String, String>,
    /// `active`, `disconnected` (connection dropped, within the timeout) or
    /// `unreachable`.
    pub status: &'static str,
    /// Drained by an operator: no new offers.
    pub draining: bool,
    pub resources: AgentResources,
    #[serde(skip)]
    pub json: JsonOnce,
}

/// An agent's resources, split by what holds them.
#[derive(Clone, Debug, Serialize)]
pub struct AgentResources {
    pub total: Resources,
    pub used: Resources,
    pub offered: Resources,
}

/// One framework.
#[derive(Clone, Debug, Serialize)]
pub struct FrameworkView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub active: bool,
    /// The framework's own HTTP API or UI, if it announced one.
    pub webui_url: String,
    /// The principal it authenticated as (empty without authentication).
    pub principal: String,
    /// The user its tasks run as unless they name one (empty: the agent's
    /// default).
    pub user: String,
    /// What the master presents on requests it relays to `webui_url`.
    #[serde(skip)]
    pub relay_token: String,
    pub used: Resources,
    pub offered: Resources,
    pub task_count: usize,
}

/// One task (live, unreachable, or recently ended).
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    pub state: &'static str,
    pub resources: Resources,
    pub message: String,
    pub reason: &'static str,
    /// Where the task's files are, on its agent's HTTP API.
    pub sandbox: Option<SandboxView>,
    /// The latest health-check result, for tasks with a health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Latest usage reported by the agent, while the task runs.
    pub usage: Option<UsageView>,
    #[serde(skip)]
    pub json: JsonOnce,
}

/// A task's sandbox on its agent.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxView {
    /// `<framework>/<task>`, relative to the agent's sandbox root.
    pub path: String,
    pub stdout: String,
    pub stderr: String,
}

/// What a running task has used.
#[derive(Clone, Debug, Serialize)]
pub struct UsageView {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
}
