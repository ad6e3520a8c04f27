//! The operator's view of the cluster: the parts `GET /api/v1/state`
//! returns (see `snapshot.rs`, which holds and serializes them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use agora_proto::Resources;
use serde::Serialize;

/// An outstanding offer. Served as an [`AgedOffer`]: its age counts to
/// the reader's clock.
#[derive(Clone, Debug)]
pub struct OfferView {
    pub id: String,
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
    /// When it was made (Unix ms): its age is counted from this.
    pub made_at_ms: u64,
}

impl OfferView {
    /// The offer as served at `now_ms`, borrowed from the view: `/state`
    /// writes every outstanding offer, one per agent on an idle cluster,
    /// and a copy of each to set its age was a third of the writing.
    pub fn aged(&self, now_ms: u64) -> AgedOffer<'_> {
        AgedOffer {
            id: &self.id,
            framework_id: &self.framework_id,
            agent_id: &self.agent_id,
            resources: &self.resources,
            age_seconds: now_ms.saturating_sub(self.made_at_ms) as f64 / 1000.0,
        }
    }
}

/// An outstanding offer as served: `{"id", "framework_id", "agent_id",
/// "resources", "age_seconds"}`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AgedOffer<'a> {
    pub id: &'a str,
    pub framework_id: &'a str,
    pub agent_id: &'a str,
    pub resources: &'a Resources,
    pub age_seconds: f64,
}

/// What `Serialize` writes, by hand (a unit test holds the two equal).
impl WriteJson for AgedOffer<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_field(out, b"{\"id\":", self.id);
        write_field(out, b",\"framework_id\":", self.framework_id);
        write_field(out, b",\"agent_id\":", self.agent_id);
        out.extend_from_slice(b",\"resources\":");
        self.resources.write_json(out);
        out.extend_from_slice(b",\"age_seconds\":");
        write_value(out, &self.age_seconds);
        out.push(b'}');
    }
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

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out)
    }

    fn lasting(&self) -> bool {
        (**self).lasting()
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

/// One agent: what it registered with, shared by all its views, and
/// what moves as tasks and offers come and go.
#[derive(Clone, Debug)]
pub struct AgentView {
    pub registered: Arc<AgentRegistration>,
    /// `active`, `disconnected` (connection dropped, within the timeout) or
    /// `unreachable`.
    pub status: &'static str,
    /// Drained by an operator: no new offers.
    pub draining: bool,
    pub used: Resources,
    pub offered: Resources,
    /// Live tasks on it.
    pub task_count: usize,
    pub json: KeptJson,
}

/// What an agent registered with: the part of its view that changes only
/// when it registers again. An agent's view is made again whenever a task
/// lands on it or an offer of it is made or taken, several times a second
/// under load: this part is shared by all of them, not copied into each,
/// and its JSON is made once.
#[derive(Debug)]
pub struct AgentRegistration {
    pub id: String,
    pub hostname: String,
    /// The agent's own HTTP endpoint, if it serves one; shared with the
    /// sandbox of every task view on the agent.
    pub endpoint: Arc<str>,
    pub attributes: BTreeMap<String, String>,
    pub total: Resources,
    /// Made by the first writer.
    json: OnceLock<RegistrationJson>,
}

/// An agent's registration as its view's JSON begins and holds it.
#[derive(Debug)]
struct RegistrationJson {
    /// `{"id":…,"hostname":…,"endpoint":…,"attributes":{…}`, unclosed.
    opening: Box<[u8]>,
    /// The total resources.
    total: Box<[u8]>,
}

impl AgentRegistration {
    pub fn new(
        id: String,
        hostname: String,
        endpoint: Arc<str>,
        attributes: BTreeMap<String, String>,
        total: Resources,
    ) -> Self {
        AgentRegistration {
            id,
            hostname,
            endpoint,
            attributes,
            total,
            json: OnceLock::new(),
        }
    }

    fn json(&self) -> &RegistrationJson {
        self.json.get_or_init(|| {
            let mut opening = Vec::new();
            write_field(&mut opening, b"{\"id\":", &self.id);
            write_field(&mut opening, b",\"hostname\":", &self.hostname);
            write_field(&mut opening, b",\"endpoint\":", &self.endpoint);
            opening.extend_from_slice(b",\"attributes\":");
            write_value(&mut opening, &self.attributes);
            let mut total = Vec::new();
            self.total.write_json(&mut total);
            RegistrationJson {
                opening: opening.into(),
                total: total.into(),
            }
        })
    }
}

/// An agent as served: `{"id", "hostname", "endpoint", "attributes",
/// "status", "draining", "resources": {"total", "used", "offered"},
/// "task_count"}`.
#[derive(Serialize)]
struct AgentJson<'a> {
    id: &'a str,
    hostname: &'a str,
    endpoint: &'a str,
    attributes: &'a BTreeMap<String, String>,
    status: &'a str,
    draining: bool,
    resources: AgentResourcesJson<'a>,
    task_count: usize,
}

/// An agent's resources, split by what holds them.
#[derive(Serialize)]
struct AgentResourcesJson<'a> {
    total: &'a Resources,
    used: &'a Resources,
    offered: &'a Resources,
}

impl Serialize for AgentView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = &*self.registered;
        AgentJson {
            id: &r.id,
            hostname: &r.hostname,
            endpoint: &r.endpoint,
            attributes: &r.attributes,
            status: self.status,
            draining: self.draining,
            resources: AgentResourcesJson {
                total: &r.total,
                used: &self.used,
                offered: &self.offered,
            },
            task_count: self.task_count,
        }
        .serialize(serializer)
    }
}

/// What `Serialize` writes, from the registration's JSON and the rest
/// made (a unit test holds the two equal).
impl WriteJson for AgentView {
    fn write_json(&self, out: &mut Vec<u8>) {
        let RegistrationJson { opening, total } = self.registered.json();
        out.extend_from_slice(opening);
        write_field(out, b",\"status\":", self.status);
        out.extend_from_slice(if self.draining {
            b",\"draining\":true"
        } else {
            b",\"draining\":false"
        });
        out.extend_from_slice(b",\"resources\":{\"total\":");
        out.extend_from_slice(total);
        out.extend_from_slice(b",\"used\":");
        self.used.write_json(out);
        out.extend_from_slice(b",\"offered\":");
        self.offered.write_json(out);
        out.extend_from_slice(b"},\"task_count\":");
        write_value(out, &self.task_count);
        out.push(b'}');
    }
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
        self.resources.write_json(out);
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
    fn an_offers_hand_written_json_is_what_serde_writes() {
        let offer = OfferView {
            id: "o-\"1\"".into(),
            framework_id: "fw-1".into(),
            agent_id: "agent\n1".into(),
            resources: Resources::parse("cpus:7.5;mem:100;ports:[31000-31009]").expect("resources"),
            made_at_ms: 1_000,
        };
        for now_ms in [0, 1_000, 3_250, 86_400_123] {
            let aged = offer.aged(now_ms);
            assert_eq!(
                written(&aged),
                serde_json::to_string(&aged).expect("serde"),
                "{now_ms}"
            );
        }
    }

    fn agent(id: &str, hostname: &str, total: &str, used: &str, offered: &str) -> AgentView {
        let resources = |r: &str| Resources::parse(r).expect("resources");
        AgentView {
            registered: Arc::new(AgentRegistration::new(
                id.into(),
                hostname.into(),
                "".into(),
                BTreeMap::new(),
                resources(total),
            )),
            status: "active",
            draining: false,
            used: resources(used),
            offered: resources(offered),
            task_count: 0,
            json: KeptJson::default(),
        }
    }

    #[test]
    fn an_agents_json_from_its_registration_is_what_serde_writes() {
        let plain = agent("a-1", "host-1", "cpus:8;mem:16384", "", "");
        let mut busy = agent(
            "a-2",
            "host-\"2\"\n",
            "cpus:8;mem:16384;disk:100000;ports:[31000-32000]",
            "cpus:0.5;mem:64;ports:[31000-31001]",
            "cpus:7.5;mem:16320;disk:100000;ports:[31002-32000]",
        );
        busy.registered = Arc::new(AgentRegistration::new(
            "a-2".into(),
            "host-\"2\"\n".into(),
            "http://10.0.0.2:5051".into(),
            [
                ("rack".to_string(), "r1".to_string()),
                ("zone".into(), "é\t".into()),
            ]
            .into(),
            busy.registered.total.clone(),
        ));
        busy.status = "unreachable";
        busy.draining = true;
        busy.task_count = 12;
        for view in [plain, busy] {
            let serde = serde_json::to_string(&view).expect("serde");
            assert_eq!(written(&view), serde);
            // Written twice from the registration's kept pieces, the same.
            assert_eq!(written(&view), serde);
        }
        let view = agent("a-3", "host-3", "cpus:2", "cpus:1", "");
        let value: serde_json::Value = serde_json::from_str(&written(&view)).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({
                "id": "a-3", "hostname": "host-3", "endpoint": "", "attributes": {},
                "status": "active", "draining": false,
                "resources": {"total": {"cpus": 2.0}, "used": {"cpus": 1.0}, "offered": {}},
                "task_count": 0,
            })
        );
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
        let agent = agent("agent-1", "host-1", "cpus:1", "", "");
        agent.json.make(&agent, &mut Vec::new());
        assert!(agent.json.kept().is_none());
    }
}
