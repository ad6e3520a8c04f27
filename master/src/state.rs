//! The operator's view of the cluster: the parts `GET /api/v1/state`
//! returns (see `snapshot.rs`, which holds and serializes them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

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

/// A view's JSON, kept with the view once it is likely to be asked for
/// again: views are immutable once published and shared by every snapshot
/// until they change, so a big `/state` copies what it wrote before and
/// makes only what changed since. A view in a state it will stay in (see
/// [`WriteJson::lasting`]) is kept the first time it is written, any other
/// from the second: under load most views a `/state` meets are new, and
/// one passing through (a task starting) has changed by the next `/state`,
/// so keeping it would cost an allocation and a copy for nothing.
#[derive(Debug, Default)]
pub struct KeptJson {
    kept: OnceLock<Box<[u8]>>,
    asked: AtomicBool,
}

impl Clone for KeptJson {
    fn clone(&self) -> Self {
        KeptJson {
            kept: self.kept.clone(),
            asked: AtomicBool::new(self.asked.load(Ordering::Relaxed)),
        }
    }
}

/// A view that writes its own JSON: the same bytes as its `Serialize`.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);

    /// Whether the view is in a state it is expected to stay in, so its
    /// JSON is worth keeping the first time it is written.
    fn lasting(&self) -> bool {
        false
    }
}

impl KeptJson {
    /// The view's JSON if it is kept.
    pub fn kept(&self) -> Option<&[u8]> {
        self.kept.get().map(|kept| &kept[..])
    }

    /// Makes and keeps `view`'s JSON now, if it is
    /// [`lasting`](WriteJson::lasting), with `scratch` as room to write it.
    pub fn keep_if_lasting<T: WriteJson>(&self, view: &T, scratch: &mut Vec<u8>) {
        if !view.lasting() || self.kept.get().is_some() {
            return;
        }
        scratch.clear();
        view.write_json(scratch);
        let _ = self.kept.set(scratch[..].into());
    }

    /// Appends `view`'s JSON to `out`, made (for a view whose JSON is not
    /// [`kept`](Self::kept)), and keeps it if the view is
    /// [`lasting`](WriteJson::lasting) or was asked for before.
    pub fn make<T: WriteJson>(&self, view: &T, out: &mut Vec<u8>) {
        let start = out.len();
        view.write_json(out);
        if self.asked.swap(true, Ordering::Relaxed) || view.lasting() {
            let _ = self.kept.set(out[start..].into());
        }
    }
}

/// Appends a value's JSON. Views hold only strings, numbers and maps with
/// string keys, which always serialize, and a `Vec` takes every byte.
fn write_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(&mut *out, value).expect("views serialize");
}

/// Appends `key` (with what comes before it) and `value` as a JSON string.
pub(crate) fn write_field(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    write_str(out, value);
}

/// Appends a JSON string: copied as it is when nothing in it needs
/// escaping (ids and names nearly always), escaped as serde_json does
/// otherwise.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if !plain {
        return write_value(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
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
    /// Live tasks on it.
    pub task_count: usize,
    #[serde(skip)]
    pub json: KeptJson,
}

impl WriteJson for AgentView {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_value(out, self);
    }
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
    /// The id, the framework's and the agent's are shared with the read
    /// model's key and with the other tasks of the framework and agent:
    /// building a view under load (several per task launched, while
    /// readers are around) copies no strings but the name.
    pub id: Arc<str>,
    pub name: String,
    pub framework_id: Arc<str>,
    pub agent_id: Arc<str>,
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
    pub json: KeptJson,
}

/// Written by hand, field by field as `Serialize` writes them (a unit
/// test holds the two equal): `/api/v1/state` writes every task new since
/// the last one, 100,000 of them under load, and this takes about 60% of
/// serde's time.
impl WriteJson for TaskView {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_field(out, b"{\"id\":", &self.id);
        write_field(out, b",\"name\":", &self.name);
        write_field(out, b",\"framework_id\":", &self.framework_id);
        write_field(out, b",\"agent_id\":", &self.agent_id);
        write_field(out, b",\"state\":", self.state);
        out.extend_from_slice(b",\"resources\":");
        write_value(out, &self.resources);
        write_field(out, b",\"message\":", &self.message);
        write_field(out, b",\"reason\":", self.reason);
        out.extend_from_slice(b",\"sandbox\":");
        match &self.sandbox {
            None => out.extend_from_slice(b"null"),
            Some(sandbox) => sandbox.write_json(out),
        }
        match self.healthy {
            None => {}
            Some(true) => out.extend_from_slice(b",\"healthy\":true"),
            Some(false) => out.extend_from_slice(b",\"healthy\":false"),
        }
        out.extend_from_slice(b",\"usage\":");
        match &self.usage {
            None => out.extend_from_slice(b"null"),
            Some(usage) => write_value(out, usage),
        }
        out.push(b'}');
    }

    /// Running or ended: where a task spends its life, as against the
    /// moments it is staging, starting or being killed.
    fn lasting(&self) -> bool {
        !matches!(
            self.state,
            "TASK_STAGING" | "TASK_STARTING" | "TASK_KILLING"
        )
    }
}

/// A task's sandbox on its agent: its path and the URLs of its output,
/// serialized as `{"path", "stdout", "stderr"}`. It holds the agent's
/// endpoint and the ids, shared with the rest of the read model, and
/// writes the URLs only when serialized: formatted with every view, they
/// were three strings made per task change under load (several per task
/// launched) and a third of a task view's memory.
#[derive(Clone, Debug)]
pub struct SandboxView {
    endpoint: Arc<str>,
    framework_id: Arc<str>,
    task_id: Arc<str>,
}

impl SandboxView {
    pub fn new(endpoint: Arc<str>, framework_id: Arc<str>, task_id: Arc<str>) -> Self {
        SandboxView {
            endpoint,
            framework_id,
            task_id,
        }
    }

    /// `<framework>/<task>`, relative to the agent's sandbox root.
    pub fn path(&self) -> String {
        format!("{}/{}", self.framework_id, self.task_id)
    }

    /// Where the agent serves the task's `stdout`.
    pub fn stdout(&self) -> String {
        self.file_url("stdout")
    }

    /// Where the agent serves the task's `stderr`.
    pub fn stderr(&self) -> String {
        self.file_url("stderr")
    }

    fn file_url(&self, file: &str) -> String {
        format!(
            "{}/files/read?path={}/{}/{file}",
            self.endpoint, self.framework_id, self.task_id
        )
    }

    /// Appends the sandbox's JSON object, as `Serialize` writes it.
    fn write_json(&self, out: &mut Vec<u8>) {
        write_field(out, b"{\"path\":", &self.path());
        write_field(out, b",\"stdout\":", &self.stdout());
        write_field(out, b",\"stderr\":", &self.stderr());
        out.push(b'}');
    }
}

impl Serialize for SandboxView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut sandbox = serializer.serialize_struct("SandboxView", 3)?;
        sandbox.serialize_field("path", &self.path())?;
        sandbox.serialize_field("stdout", &self.stdout())?;
        sandbox.serialize_field("stderr", &self.stderr())?;
        sandbox.end()
    }
}

/// What a running task has used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageView {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub pids: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, message: &str) -> TaskView {
        TaskView {
            id: id.into(),
            name: format!("{id} name"),
            framework_id: "fw-1".into(),
            agent_id: "agent-1".into(),
            state: "TASK_RUNNING",
            resources: Resources::parse("cpus:0.01;mem:1;ports:[31000-31002];zones:{a,b}")
                .expect("resources"),
            message: message.into(),
            reason: "REASON_UNKNOWN",
            sandbox: None,
            healthy: None,
            usage: None,
            json: KeptJson::default(),
        }
    }

    fn written(view: &impl WriteJson) -> String {
        let mut out = Vec::new();
        view.write_json(&mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn a_tasks_hand_written_json_is_what_serde_writes() {
        let plain = task("web-1", "");
        let escaped = task(
            "we\"b\\2",
            "line one\nline two\ttab \u{1} bell \u{7f} é ✓ \"quoted\" /slash",
        );
        let mut full = task("web-3", "running");
        full.sandbox = Some(SandboxView::new(
            "http://agent:5051".into(),
            "fw-1".into(),
            "web-3".into(),
        ));
        full.healthy = Some(false);
        full.usage = Some(UsageView {
            cpu_seconds: 12.5,
            memory_bytes: 1 << 30,
            memory_peak_bytes: (1 << 30) + 7,
            pids: 3,
        });
        let mut healthy = task("web-4", "");
        healthy.healthy = Some(true);
        healthy.resources = Resources::new();
        for view in [plain, escaped, full, healthy] {
            let serde = serde_json::to_string(&view).expect("serde");
            assert_eq!(written(&view), serde);
            // And it is JSON that reads back as the same value.
            let back: serde_json::Value = serde_json::from_str(&written(&view)).expect("JSON");
            assert_eq!(back, serde_json::to_value(&view).expect("value"));
        }
    }

    #[test]
    fn a_sandbox_is_its_path_and_the_agents_urls_of_its_output() {
        let sandbox = SandboxView::new("http://agent:5051".into(), "fw-1".into(), "web-3".into());
        assert_eq!(
            serde_json::to_value(&sandbox).expect("serializes"),
            serde_json::json!({
                "path": "fw-1/web-3",
                "stdout": "http://agent:5051/files/read?path=fw-1/web-3/stdout",
                "stderr": "http://agent:5051/files/read?path=fw-1/web-3/stderr",
            })
        );
        let mut by_hand = Vec::new();
        sandbox.write_json(&mut by_hand);
        assert_eq!(
            by_hand,
            serde_json::to_vec(&sandbox).expect("serializes"),
            "written by hand as serde writes it"
        );
    }

    #[test]
    fn a_passing_views_json_is_kept_from_its_second_asking() {
        for state in ["TASK_STAGING", "TASK_STARTING", "TASK_KILLING"] {
            let mut view = task("web-1", "");
            view.state = state;
            let mut out = Vec::new();
            view.json.make(&view, &mut out);
            assert!(view.json.kept().is_none(), "{state}: kept the first time");
            view.json.make(&view, &mut out);
            assert_eq!(
                view.json.kept().map(<[u8]>::to_vec),
                Some(serde_json::to_vec(&view).expect("serde")),
                "{state}"
            );
            // What is kept is what was written each time.
            assert_eq!(out.len(), 2 * view.json.kept().expect("kept").len());
        }
    }

    #[test]
    fn a_lasting_views_json_is_kept_the_first_time() {
        for state in ["TASK_RUNNING", "TASK_FINISHED", "TASK_FAILED", "TASK_LOST"] {
            let mut view = task("web-1", "");
            view.state = state;
            let mut out = Vec::new();
            view.json.make(&view, &mut out);
            assert_eq!(view.json.kept(), Some(&out[..]), "{state}");
        }
        // An agent's view is kept from the second time, whatever it is.
        let agent = AgentView {
            id: "agent-1".into(),
            hostname: "host-1".into(),
            endpoint: String::new(),
            attributes: BTreeMap::new(),
            status: "active",
            draining: false,
            resources: AgentResources {
                total: Resources::parse("cpus:1").expect("resources"),
                used: Resources::new(),
                offered: Resources::new(),
            },
            task_count: 0,
            json: KeptJson::default(),
        };
        agent.json.make(&agent, &mut Vec::new());
        assert!(agent.json.kept().is_none());
    }
}
