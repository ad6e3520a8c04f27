//! What readers of the master's state see: an immutable snapshot the core
//! publishes, taken by HTTP handlers, the metrics page and the web UI.
//!
//! A reader asks for a snapshot no older than its request ([`Reader::fresh`]),
//! so it sees everything the core did before it asked (a framework that got
//! `TASK_RUNNING` finds the task running). The core answers between two
//! steps of its work — every millisecond or so of a long burst,
//! accept or allocation pass, and at each turn's end — once for every
//! reader that asked meanwhile (`core/publish.rs`). Reads cost the core one
//! publication per such point at most, never a copy of the state per
//! request.
//!
//! The maps are persistent (`imbl`): the core brings its working copy up to
//! date with what changed, and publishing shares every unchanged node with
//! the previous snapshot, so neither publishing nor a reader holding an old
//! snapshot costs a copy of the state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agora_proto::Resources;
use imbl::{OrdMap, OrdSet};
use tokio::sync::{Notify, watch};

use crate::allocator::RoleShare;
use crate::metrics::{Gauges, Metrics, SharedHistogram};
use crate::state::{
    AgedOffer, AgentView, FrameworkView, KeptJson, OfferView, TaskView, UsageView, WriteJson,
};

/// A task's key: its framework's id, then its own.
pub type TaskKey = (Arc<str>, Arc<str>);

/// The cluster at one instant, as readers see it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub agents: OrdMap<Arc<str>, Arc<AgentView>>,
    /// The agents' (hostname, id), in order: pages of agents by hostname
    /// without sorting them all per request (tens of milliseconds at
    /// 50,000 agents).
    pub agents_by_hostname: OrdSet<(String, Arc<str>)>,
    pub frameworks: OrdMap<Arc<str>, Arc<FrameworkView>>,
    pub tasks: OrdMap<TaskKey, Arc<TaskView>>,
    pub offers: OrdMap<Arc<str>, Arc<OfferView>>,
    /// Known tasks by state name.
    pub tasks_by_state: BTreeMap<&'static str, usize>,
    /// What the agents' views add up to.
    pub agent_totals: AgentTotals,
    /// What each agent's live tasks use now, summed from their latest
    /// reports (agents with none reported are left out): a page of agents
    /// shows it without walking every task.
    pub usage_by_agent: OrdMap<Arc<str>, UsageSum>,
    /// Roles with their weights and shares.
    pub roles: Arc<Vec<RoleShare>>,
    /// The core's counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Publications before this one.
    pub seq: u64,
    /// When it was published (none: never, the empty first one).
    pub published: Option<std::time::Instant>,
}

/// What the agents' views add up to, kept as views change so that the
/// metrics page does not walk every agent: that walk took 3–12 ms of the
/// operators' thread per scrape at 10,000 agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentTotals {
    /// The scalars of reachable agents (an unreachable agent's resources
    /// cannot be used): theirs in all, used by live tasks, in offers.
    pub total: Resources,
    pub used: Resources,
    pub offered: Resources,
    /// Agents by status; statuses with none are left out.
    pub by_status: BTreeMap<&'static str, usize>,
}

impl AgentTotals {
    /// Counts `view` in (`add`) or out.
    pub fn count(&mut self, view: &AgentView, add: bool) {
        let n = self.by_status.entry(view.status).or_default();
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if *n == 0 {
            self.by_status.remove(view.status);
        }
        if view.status == "unreachable" {
            return;
        }
        // Scalars only: ports on two agents are not twice the ports, and
        // one agent's ranges taken out would take the other's with them.
        for (sum, part) in [
            (&mut self.total, &view.registered.total),
            (&mut self.used, &view.used),
            (&mut self.offered, &view.offered),
        ] {
            if add {
                sum.add(&part.scalar_part());
            } else {
                sum.subtract(&part.scalar_part());
            }
        }
    }

    /// Counted from scratch.
    pub fn of<'a>(views: impl Iterator<Item = &'a AgentView>) -> Self {
        let mut totals = AgentTotals::default();
        for view in views {
            totals.count(view, true);
        }
        totals
    }
}

/// What some tasks use now, summed from their latest usage reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct UsageSum {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Tasks summed.
    #[serde(skip)]
    pub tasks: usize,
}

impl UsageSum {
    /// Counts `usage` in (`add`) or out.
    pub fn change(&mut self, usage: &UsageView, add: bool) {
        if add {
            self.cpu_seconds += usage.cpu_seconds;
            self.memory_bytes += usage.memory_bytes;
            self.pids += usage.pids;
            self.tasks += 1;
        } else {
            self.cpu_seconds -= usage.cpu_seconds;
            self.memory_bytes = self.memory_bytes.saturating_sub(usage.memory_bytes);
            self.pids = self.pids.saturating_sub(usage.pids);
            self.tasks = self.tasks.saturating_sub(1);
        }
    }

    /// Summed from scratch.
    pub fn of<'a>(usages: impl Iterator<Item = &'a UsageView>) -> Self {
        let mut sum = UsageSum::default();
        for usage in usages {
            sum.change(usage, true);
        }
        sum
    }
}

/// The core's end: where snapshots go and readers' requests come from.
#[derive(Clone)]
pub struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    requested: Requests,
}

/// A reader's end, cloned into every handler.
#[derive(Clone)]
pub struct Reader {
    rx: watch::Receiver<Arc<Snapshot>>,
    requested: Requests,
}

/// Readers waiting for a publication: a flag the core checks after every
/// burst, and a wake-up for a core that is idle.
#[derive(Clone, Default)]
pub struct Requests(Arc<RequestState>);

struct RequestState {
    wanted: AtomicBool,
    /// A reader is about to write the whole state (see
    /// [`Reader::will_write_whole_state`]).
    whole_state: AtomicBool,
    wake: Notify,
    /// How long readers waited for a fresh snapshot: most of what a small
    /// read (a page of tasks) takes on a busy master.
    waits: SharedHistogram,
}

/// Bounds of readers' waits, in seconds.
const WAIT_BOUNDS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];

impl Default for RequestState {
    fn default() -> Self {
        RequestState {
            wanted: AtomicBool::new(false),
            whole_state: AtomicBool::new(false),
            wake: Notify::new(),
            waits: SharedHistogram::new(WAIT_BOUNDS),
        }
    }
}

impl Requests {
    /// Resolves when a reader asks (the core idles on this).
    pub async fn wait(&self) {
        self.0.wake.notified().await;
    }

    /// Whether a reader waits for a publication (and forgets it).
    fn take(&self) -> bool {
        self.0.wanted.swap(false, Ordering::AcqRel)
    }

    fn ask(&self) {
        self.0.wanted.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// How long a reader waits for a fresh snapshot before it settles for the
/// latest one (a core that is stuck should not take the API with it).
const FRESH_WAIT: Duration = Duration::from_secs(2);

/// A publisher and its first reader.
pub fn channel() -> (Publisher, Reader) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let requested = Requests::default();
    (
        Publisher {
            tx,
            requested: requested.clone(),
        },
        Reader { rx, requested },
    )
}

impl Publisher {
    pub fn publish(&self, snapshot: Snapshot) {
        let replaced = self.tx.send_replace(Arc::new(snapshot));
        // The last reference to a replaced snapshot frees every node that
        // changed since: work for a blocking thread, not the core.
        if Arc::strong_count(&replaced) == 1
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(replaced));
        }
    }

    /// Readers' requests for a publication.
    pub fn requests(&self) -> Requests {
        self.requested.clone()
    }

    /// Whether a reader waits for a publication (and forgets it).
    pub fn take_request(&self) -> bool {
        self.requested.take()
    }

    /// Whether a reader wrote the whole state since the last call (and
    /// forgets it).
    pub fn take_whole_state_reader(&self) -> bool {
        self.requested.0.whole_state.swap(false, Ordering::AcqRel)
    }

    /// A reader of what this publisher publishes.
    pub fn reader(&self) -> Reader {
        Reader {
            rx: self.tx.subscribe(),
            requested: self.requested.clone(),
        }
    }

    /// The last published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }
}

impl Reader {
    /// Tells the core that this reader writes the whole state
    /// (`/api/v1/state`): while such readers are around, the core makes
    /// the JSON of task views that will last as it builds them, while
    /// what they are made from is still in its cache. Written by the
    /// reader instead, tens of thousands of views new since the last
    /// `/state` cost a cache miss for every string in them.
    pub fn will_write_whole_state(&self) {
        self.requested.0.whole_state.store(true, Ordering::Release);
    }

    /// Adds readers' own measures to a Prometheus page.
    pub fn render_metrics(&self, out: &mut String) {
        self.requested.0.waits.load().render(
            out,
            "agora_read_wait_seconds",
            "How long reads (HTTP API, metrics, web UI) waited for the core to publish a snapshot as fresh as the request.",
        );
    }

    /// The latest snapshot if it was published at most `max_age` ago
    /// (without a word to the core), or else a fresh one: for readers that
    /// need not see what happened a moment before they asked (the web
    /// UI), so their looks cost the core nothing while it publishes anyway
    /// — a busy core publishes every few tens of milliseconds.
    pub async fn recent(&self, max_age: Duration) -> Arc<Snapshot> {
        let latest = self.rx.borrow().clone();
        if latest.published.is_some_and(|at| at.elapsed() <= max_age) {
            self.requested.0.waits.observe(Duration::ZERO);
            return latest;
        }
        self.fresh().await
    }

    /// A snapshot published after this call began.
    pub async fn fresh(&self) -> Arc<Snapshot> {
        let asked = std::time::Instant::now();
        let mut rx = self.rx.clone();
        let seen = rx.borrow_and_update().seq;
        self.requested.ask();
        let newer = tokio::time::timeout(FRESH_WAIT, rx.wait_for(|s| s.seq > seen)).await;
        self.requested.0.waits.observe(asked.elapsed());
        match newer {
            Ok(Ok(snapshot)) => snapshot.clone(),
            _ => {
                tracing::warn!(
                    "the master's core did not publish in time; serving the last snapshot"
                );
                self.rx.borrow().clone()
            }
        }
    }
}

/// A JSON array of views: each copied from its kept JSON where it has
/// one, or made ([`KeptJson`]) into a piece handed to `out` a few tens of
/// KB at a time.
fn write_json_array<'a, T: WriteJson>(
    out: &mut impl std::io::Write,
    views: impl Iterator<Item = (T, Option<&'a KeptJson>)>,
) -> std::io::Result<()> {
    const PIECE: usize = 64 * 1024;
    let mut made = Vec::with_capacity(PIECE + 4096);
    made.push(b'[');
    for (i, (view, json)) in views.enumerate() {
        if i > 0 {
            made.push(b',');
        }
        match json {
            Some(json) => match json.kept() {
                Some(kept) => {
                    out.write_all(&made)?;
                    made.clear();
                    out.write_all(kept)?;
                }
                None => json.make(&view, &mut made),
            },
            None => view.write_json(&mut made),
        }
        if made.len() >= PIECE {
            out.write_all(&made)?;
            made.clear();
        }
    }
    made.push(b']');
    out.write_all(&made)
}

impl Snapshot {
    /// Agents by hostname, then id.
    pub fn agents_sorted(&self) -> impl Iterator<Item = &AgentView> {
        self.agents_by_hostname
            .iter()
            .filter_map(|(_, id)| self.agents.get(id).map(Arc::as_ref))
    }

    /// Frameworks by name, then id.
    pub fn frameworks_sorted(&self) -> Vec<&FrameworkView> {
        let mut frameworks: Vec<&FrameworkView> =
            self.frameworks.values().map(Arc::as_ref).collect();
        frameworks.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        frameworks
    }

    /// Tasks by framework id, then task id.
    pub fn tasks_sorted(&self) -> impl Iterator<Item = &TaskView> {
        self.tasks.values().map(Arc::as_ref)
    }

    /// A framework's tasks, in id order.
    pub fn tasks_of(&self, framework: &str) -> impl Iterator<Item = &TaskView> {
        let from: TaskKey = (Arc::from(framework), Arc::from(""));
        self.tasks
            .range(from..)
            .take_while(move |((fw, _), _)| fw.as_ref() == framework)
            .map(|(_, t)| t.as_ref())
    }

    /// The tasks with id `id`, one per framework that has one, in
    /// framework order: a point lookup per framework (a framework's tasks
    /// lie together in key order), not a walk over every task (tens of
    /// milliseconds at 200,000 tasks, for each task page opened).
    pub fn tasks_with_id<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a TaskView> + use<'a> {
        let id: Arc<str> = Arc::from(id);
        let mut from: Option<TaskKey> = Some((Arc::from(""), Arc::from("")));
        std::iter::from_fn(move || {
            loop {
                let (framework, _) = self.tasks.range(from.take()?..).next()?.0;
                // Past every key of `framework`: its id followed by the
                // smallest character sorts after it and before any other.
                from = Some((Arc::from(format!("{framework}\0")), Arc::from("")));
                if let Some(task) = self.tasks.get(&(framework.clone(), id.clone())) {
                    return Some(task.as_ref());
                }
            }
        })
    }

    /// Outstanding offers by id, aged as of `now_ms` (ages count to the
    /// caller's clock, not the publication: a snapshot may be older than
    /// the reader).
    pub fn offers_aged(&self, now_ms: u64) -> impl Iterator<Item = AgedOffer<'_>> {
        self.offers.values().map(move |o| o.aged(now_ms))
    }

    /// `GET /api/v1/state`: `{"agents", "frameworks", "tasks", "offers"}`,
    /// written to `out` as it is made. Agents and tasks are copied from
    /// their views' kept JSON where they have it ([`KeptJson`]); the rest
    /// are made.
    pub fn write_state_json(
        &self,
        now_ms: u64,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        out.write_all(b"{\"agents\":")?;
        write_json_array(out, self.agents_sorted().map(|a| (a, Some(&a.json))))?;
        out.write_all(b",\"frameworks\":")?;
        serde_json::to_writer(&mut *out, &self.frameworks_sorted())?;
        out.write_all(b",\"tasks\":")?;
        write_json_array(out, self.tasks_sorted().map(|t| (t, Some(&t.json))))?;
        out.write_all(b",\"offers\":")?;
        write_json_array(out, self.offers_aged(now_ms).map(|o| (o, None)))?;
        out.write_all(b"}")
    }

    /// The Prometheus page: the core's counters, and gauges from the
    /// snapshot.
    pub fn render_metrics(&self) -> String {
        let totals = &self.agent_totals;
        let mut kinds: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
        for (kind, v) in totals.total.scalars() {
            kinds.entry(kind).or_default().0 = v;
        }
        for (kind, v) in totals.used.scalars() {
            kinds.entry(kind).or_default().1 = v;
        }
        for (kind, v) in totals.offered.scalars() {
            kinds.entry(kind).or_default().2 = v;
        }
        let agents_by_status = crate::state::AGENT_STATUSES
            .iter()
            .map(|s| (*s, totals.by_status.get(s).copied().unwrap_or(0)))
            .collect();
        let active = self.frameworks.values().filter(|f| f.active).count();
        self.metrics.render(&Gauges {
            resources: kinds
                .into_iter()
                .map(|(k, (t, u, o))| (k, t, u, o))
                .collect(),
            agents_by_status,
            frameworks_active: active,
            frameworks_inactive: self.frameworks.len() - active,
            tasks_by_state: self
                .tasks_by_state
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            offers_outstanding: self.offers.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::KeptJson;

    fn task(id: &str) -> Arc<TaskView> {
        Arc::new(TaskView {
            id: id.into(),
            name: id.into(),
            framework_id: "fw-1".into(),
            agent_id: "agent-1".into(),
            state: "TASK_RUNNING",
            resources: agora_proto::Resources::parse("cpus:0.01;mem:1").expect("resources"),
            message: String::new(),
            reason: "REASON_UNKNOWN",
            sandbox: None,
            healthy: None,
            usage: None,
            json: KeptJson::default(),
        })
    }

    fn state_json(snap: &Snapshot) -> serde_json::Value {
        let mut out = Vec::new();
        snap.write_state_json(0, &mut out).expect("written");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn a_task_is_found_by_id_in_every_framework_that_has_one_in_framework_order() {
        let mut snap = Snapshot::default();
        // Framework ids that are prefixes of each other, and one with
        // the smallest character after such a prefix.
        let frameworks = ["fw", "fw\u{0}", "fw\u{1}", "fw-2", "fw2", "g", "h"];
        for (n, fw) in frameworks.iter().enumerate() {
            for i in 0..300 {
                // Every framework has `t-0`; every second one `shared`.
                let id = format!("t-{i}");
                let mut view = TaskView::clone(&task(&id));
                view.framework_id = (*fw).into();
                snap.tasks
                    .insert(((*fw).into(), id.as_str().into()), Arc::new(view));
            }
            if n % 2 == 0 {
                let mut view = TaskView::clone(&task("shared"));
                view.framework_id = (*fw).into();
                snap.tasks
                    .insert(((*fw).into(), "shared".into()), Arc::new(view));
            }
        }
        let found = |id: &str| -> Vec<String> {
            snap.tasks_with_id(id)
                .map(|t| format!("{:?}/{}", t.framework_id, t.id))
                .collect()
        };
        let walked = |id: &str| -> Vec<String> {
            snap.tasks_sorted()
                .filter(|t| &*t.id == id)
                .map(|t| format!("{:?}/{}", t.framework_id, t.id))
                .collect()
        };
        for id in ["t-0", "t-299", "shared", "t-300", "", "t"] {
            assert_eq!(found(id), walked(id), "{id:?}");
        }
        assert_eq!(
            found("shared"),
            [
                r#""fw"/shared"#,
                r#""fw\u{1}"/shared"#,
                r#""fw2"/shared"#,
                r#""h"/shared"#
            ]
        );
        assert_eq!(found("t-7").len(), frameworks.len());
        assert!(found("nobody").is_empty());
        assert!(Snapshot::default().tasks_with_id("t-0").next().is_none());
    }

    #[test]
    fn state_is_the_same_json_whether_views_are_kept_made_or_both() {
        let mut snap = Snapshot::default();
        // Enough tasks to fill several pieces.
        for i in 0..2_000 {
            let id = format!("task-{i:05}");
            snap.tasks
                .insert(("fw-1".into(), id.as_str().into()), task(&id));
        }
        let first = state_json(&snap);
        assert_eq!(first["tasks"].as_array().map(Vec::len), Some(2_000));
        assert_eq!(first["tasks"][1999]["id"], "task-01999");
        // Kept from the second writing; then every other view is new.
        assert_eq!(state_json(&snap), first);
        assert!(snap.tasks.values().all(|t| t.json.kept().is_some()));
        for i in (0..2_000).step_by(2) {
            let id = format!("task-{i:05}");
            snap.tasks
                .insert(("fw-1".into(), id.as_str().into()), task(&id));
        }
        assert_eq!(state_json(&snap), first);
        assert_eq!(state_json(&snap), first);
    }

    fn published(seq: u64, at: std::time::Instant) -> Snapshot {
        Snapshot {
            seq,
            published: Some(at),
            ..Snapshot::default()
        }
    }

    #[test]
    fn offers_in_state_are_aged_to_the_readers_clock() {
        let mut snap = Snapshot::default();
        for (id, made_at_ms) in [("o-1", 10_000), ("o-2", 12_500), ("o-3", 99_000)] {
            let view = OfferView {
                id: id.into(),
                framework_id: "fw-1".into(),
                agent_id: "agent-1".into(),
                resources: agora_proto::Resources::parse("cpus:2;ports:[31000-31009]")
                    .expect("resources"),
                made_at_ms,
            };
            snap.offers.insert(id.into(), Arc::new(view));
        }
        let mut out = Vec::new();
        snap.write_state_json(20_000, &mut out).expect("written");
        let state: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            state["offers"],
            serde_json::json!([
                {"id": "o-1", "framework_id": "fw-1", "agent_id": "agent-1",
                 "resources": {"cpus": 2.0, "ports": "[31000-31009]"}, "age_seconds": 10.0},
                {"id": "o-2", "framework_id": "fw-1", "agent_id": "agent-1",
                 "resources": {"cpus": 2.0, "ports": "[31000-31009]"}, "age_seconds": 7.5},
                // Made after the reader's clock (another host's): no age,
                // not a negative one.
                {"id": "o-3", "framework_id": "fw-1", "agent_id": "agent-1",
                 "resources": {"cpus": 2.0, "ports": "[31000-31009]"}, "age_seconds": 0.0},
            ])
        );
    }

    /// Waits for a reader to ask `publisher` for a publication.
    async fn asked(publisher: &Publisher) {
        let asking = async {
            while !publisher.take_request() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), asking)
            .await
            .expect("the reader asked the core");
    }

    #[tokio::test]
    async fn a_recent_enough_snapshot_is_served_without_asking_the_core_and_an_older_one_is_not() {
        let (publisher, reader) = channel();
        let now = std::time::Instant::now();
        publisher.publish(published(1, now));
        let served = reader.recent(Duration::from_secs(1)).await;
        assert_eq!(served.seq, 1);
        assert!(!publisher.take_request(), "the core was asked");

        // Published two seconds ago: too old for a second's grace, so the
        // reader asks and waits for the next publication.
        publisher.publish(published(2, now - Duration::from_secs(2)));
        let waiting = tokio::spawn({
            let reader = reader.clone();
            async move { reader.recent(Duration::from_secs(1)).await.seq }
        });
        asked(&publisher).await;
        publisher.publish(published(3, std::time::Instant::now()));
        assert_eq!(waiting.await.expect("reader"), 3);

        // The empty snapshot before any publication is never recent.
        let (publisher, reader) = channel();
        let waiting =
            tokio::spawn(async move { reader.recent(Duration::from_secs(3600)).await.seq });
        asked(&publisher).await;
        publisher.publish(published(1, std::time::Instant::now()));
        assert_eq!(waiting.await.expect("reader"), 1);
    }
}
