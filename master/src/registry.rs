//! The master's registry: what the cluster could not rebuild from its agents
//! after a master restart or failover — admitted agents (with a hash of
//! their secret, drains, unreachability, operator-marked gone), frameworks
//! (info, role, failover timeout, since when they are away), role weights
//! and the tasks the master placed. Records are protobuf messages
//! (`Registry*` in `agora.proto`) in `agora-store` tables.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_proto::v1::{RegistryAgent, RegistryFramework, RegistryTask};
use agora_store::{Store, StoreError, Write};
use prost::Message;

const AGENTS: &str = "agents";
const FRAMEWORKS: &str = "frameworks";
const TASKS: &str = "tasks";
/// A task's latest state, apart from its record: a task on its way to
/// running rewrites a few bytes, not its whole `TaskInfo`.
const TASK_STATES: &str = "task_states";
const WEIGHTS: &str = "weights";

/// Background commits start at least this far apart. A commit costs a
/// transaction and a sync to disk (or a round trip to etcd) however few
/// writes it holds; under load, writes keep coming, and committing each
/// trickle at once had the writer commit 800 times a second at 10,000
/// tasks a second, a dozen tasks at a time. A registry idle for this long
/// commits a lone write at once; a waiting transaction (agent
/// registration) is never held back.
pub const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(5);

/// What went wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry: {0}")]
    Store(#[from] StoreError),
    #[error("registry: its writer has stopped")]
    Closed,
    #[error("registry: record `{table}/{key}` is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

/// Everything the registry holds, as read at start.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub agents: Vec<RegistryAgent>,
    pub frameworks: Vec<RegistryFramework>,
    pub tasks: Vec<RegistryTask>,
    pub weights: BTreeMap<String, f64>,
}

/// How far the writer has committed what it was handed: for whoever must
/// not tell anyone of a change before it is durable, without waiting for
/// the disk (or etcd) meanwhile.
#[derive(Default)]
pub struct Durability {
    /// The last batch handed to the writer ([`Registry::commit_later`])
    /// that is committed, with everything before it.
    through: AtomicU64,
    advanced: tokio::sync::Notify,
}

impl Durability {
    /// Everything handed up to and including batch `seq` is committed.
    pub fn covers(&self, seq: u64) -> bool {
        self.through.load(Ordering::Acquire) >= seq
    }

    /// Resolves after the next commit (or at once if one came since the
    /// last wait: a commit is never missed).
    pub async fn advanced(&self) {
        self.advanced.notified().await;
    }

    fn committed_through(&self, seq: u64) {
        if seq > self.through.load(Ordering::Relaxed) {
            self.through.store(seq, Ordering::Release);
            self.advanced.notify_one();
        }
    }
}

/// The registry over a store; changes are queued and committed together,
/// by a writer thread of its own, so the master's core never waits on a
/// disk (or etcd) for what it need not wait on.
pub struct Registry {
    store: Arc<Store>,
    pending: Vec<Write>,
    /// The batches handed to the writer so far.
    handed: u64,
    durability: Arc<Durability>,
    writer: Option<Writer>,
    /// The last background commit's failure, for the core to see.
    failure: Arc<Mutex<Option<RegistryError>>>,
    /// Commits made (background and waited for).
    commits: Arc<AtomicU64>,
}

/// What the writer thread is given.
enum Job {
    /// Commit when convenient (with whatever else is queued); the batch's
    /// number, for [`Durability`].
    Later(Vec<Write>, u64),
    /// Commit now, after everything before, and say how it went; on
    /// failure these writes are dropped, earlier ones kept for a retry.
    Now(Vec<Write>, mpsc::SyncSender<Result<(), RegistryError>>),
    /// Commit nothing until the sender drops (tests hold commits back).
    #[cfg(test)]
    Hold(mpsc::Receiver<()>),
}

struct Writer {
    tx: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// The writer thread: commits in order, coalescing queued background
/// batches into one transaction (a group commit) at most once per
/// `interval`; a failed background commit is kept and retried with the
/// next, or after a second.
fn write_loop(
    store: Arc<Store>,
    rx: mpsc::Receiver<Job>,
    failure: Arc<Mutex<Option<RegistryError>>>,
    commits: Arc<AtomicU64>,
    durability: Arc<Durability>,
    interval: Duration,
) {
    let mut carry: Vec<Write> = Vec::new();
    // The last background batch in `carry` (or committed).
    let mut carry_through = 0;
    let mut next: Option<Job> = None;
    // When the last commit started.
    let mut last_commit: Option<Instant> = None;
    let commit = |writes: &[Write], last_commit: &mut Option<Instant>| {
        *last_commit = Some(Instant::now());
        commits.fetch_add(1, Ordering::Relaxed);
        store.commit(writes)
    };
    loop {
        let job = match next.take() {
            Some(job) => job,
            None if carry.is_empty() => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            None => match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => Job::Later(Vec::new(), carry_through),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // One last try at what failed before.
                    let _ = commit(&carry, &mut last_commit);
                    return;
                }
            },
        };
        match job {
            Job::Later(writes, seq) => {
                carry.extend(writes);
                carry_through = carry_through.max(seq);
                let due = last_commit.map_or_else(Instant::now, |at| at + interval);
                next = gather(&rx, &mut carry, &mut carry_through, due);
                // A transaction that came meanwhile commits this batch
                // with its own writes.
                if next.is_some() {
                    continue;
                }
                if carry.is_empty() {
                    durability.committed_through(carry_through);
                    continue;
                }
                match commit(&carry, &mut last_commit) {
                    Ok(()) => {
                        empty(&mut carry);
                        durability.committed_through(carry_through);
                    }
                    Err(e) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
                    }
                }
            }
            Job::Now(writes, done) => {
                let mark = carry.len();
                carry.extend(writes);
                let result = commit(&carry, &mut last_commit);
                match result {
                    Ok(()) => {
                        empty(&mut carry);
                        durability.committed_through(carry_through);
                    }
                    Err(_) => carry.truncate(mark),
                }
                let _ = done.send(result.map_err(RegistryError::from));
            }
            #[cfg(test)]
            Job::Hold(release) => {
                let _ = release.recv();
            }
        }
    }
}

/// Adds background writes to `carry` as they come until `due`, then those
/// already queued; stops early at a transaction, which it returns.
fn gather(
    rx: &mpsc::Receiver<Job>,
    carry: &mut Vec<Write>,
    carry_through: &mut u64,
    due: Instant,
) -> Option<Job> {
    loop {
        let left = due.saturating_duration_since(Instant::now());
        let job = if left.is_zero() {
            rx.try_recv().ok()?
        } else {
            // Disconnected: commit what there is; the next wait sees it.
            rx.recv_timeout(left).ok()?
        };
        match job {
            Job::Later(more, seq) => {
                carry.extend(more);
                *carry_through = (*carry_through).max(seq);
            }
            now => return Some(now),
        }
    }
}

/// Empties the writer's batch. Room for a batch like this one is kept (a
/// steady load reuses it), but not a burst's peak far beyond it, which had
/// held 13 MB after a run of short tasks.
fn empty(carry: &mut Vec<Write>) {
    let keep = carry.len().max(4096);
    carry.clear();
    if carry.capacity() > 4 * keep {
        carry.shrink_to(keep);
    }
}

/// A task's key in the registry: task ids never hold `/`, so the last `/`
/// splits it unambiguously.
fn task_key(framework: &str, task: &str) -> String {
    format!("{framework}/{task}")
}

impl Registry {
    /// Opens (or creates) the embedded registry file at `path`.
    pub fn open(path: &Path) -> Result<Registry, RegistryError> {
        Ok(Registry::on(Store::open(path)?))
    }

    /// The registry in `store` (e.g. etcd, fenced on leading).
    pub fn on(store: Store) -> Registry {
        Registry::with_commit_interval(store, MIN_COMMIT_INTERVAL)
    }

    /// [`Registry::on`], background commits at least `interval` apart.
    pub(crate) fn with_commit_interval(store: Store, interval: Duration) -> Registry {
        let store = Arc::new(store);
        let failure = Arc::new(Mutex::new(None));
        let commits = Arc::new(AtomicU64::new(0));
        let durability = Arc::new(Durability::default());
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (store, failure, commits, durability) = (
                store.clone(),
                failure.clone(),
                commits.clone(),
                durability.clone(),
            );
            std::thread::Builder::new()
                .name("registry-writer".into())
                .spawn(move || write_loop(store, rx, failure, commits, durability, interval))
                .expect("spawning the registry writer")
        };
        Registry {
            store,
            pending: Vec::new(),
            handed: 0,
            durability,
            writer: Some(Writer { tx, thread }),
            failure,
            commits,
        }
    }

    /// Commits made so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Whether an error means this master no longer leads (and must stop).
    pub fn is_deposed(error: &RegistryError) -> bool {
        matches!(error, RegistryError::Store(StoreError::Fenced(_)))
    }

    /// Reads every record.
    pub fn load(&self) -> Result<Recovered, RegistryError> {
        fn decode<M: Message + Default>(
            table: &'static str,
            rows: Vec<(String, Vec<u8>)>,
        ) -> Result<Vec<M>, RegistryError> {
            rows.into_iter()
                .map(|(key, bytes)| {
                    M::decode(bytes.as_slice()).map_err(|e| RegistryError::Corrupt {
                        table,
                        key,
                        reason: e.to_string(),
                    })
                })
                .collect()
        }
        let mut weights = BTreeMap::new();
        for (role, bytes) in self.store.load(WEIGHTS)? {
            let weight = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| RegistryError::Corrupt {
                    table: WEIGHTS,
                    key: role.clone(),
                    reason: "not a weight > 0".into(),
                })?;
            weights.insert(role, weight);
        }
        let states: BTreeMap<String, Vec<u8>> = self.store.load(TASK_STATES)?.into_iter().collect();
        let mut tasks = Vec::new();
        for (key, bytes) in self.store.load(TASKS)? {
            let mut task =
                RegistryTask::decode(bytes.as_slice()).map_err(|e| RegistryError::Corrupt {
                    table: TASKS,
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(state) = states.get(&key) {
                task.state = std::str::from_utf8(state)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| RegistryError::Corrupt {
                        table: TASK_STATES,
                        key: key.clone(),
                        reason: "not a task state".into(),
                    })?;
            }
            tasks.push(task);
        }
        Ok(Recovered {
            agents: decode(AGENTS, self.store.load(AGENTS)?)?,
            frameworks: decode(FRAMEWORKS, self.store.load(FRAMEWORKS)?)?,
            tasks,
            weights,
        })
    }

    pub fn put_agent(&mut self, agent: &RegistryAgent) {
        let id = agent.id.as_ref().map_or("", |i| i.value.as_str());
        self.pending
            .push(Write::put(AGENTS, id, agent.encode_to_vec()));
    }

    pub fn delete_agent(&mut self, id: &str) {
        self.pending.push(Write::delete(AGENTS, id));
    }

    pub fn put_framework(&mut self, framework: &RegistryFramework) {
        let id = framework
            .info
            .as_ref()
            .and_then(|i| i.id.as_ref())
            .map_or("", |i| i.value.as_str());
        self.pending
            .push(Write::put(FRAMEWORKS, id, framework.encode_to_vec()));
    }

    pub fn delete_framework(&mut self, id: &str) {
        self.pending.push(Write::delete(FRAMEWORKS, id));
    }

    pub fn put_task(&mut self, framework: &str, task_id: &str, task: &RegistryTask) {
        self.pending.push(Write::put(
            TASKS,
            task_key(framework, task_id),
            task.encode_to_vec(),
        ));
    }

    /// Records a task's new state without rewriting its record.
    pub fn put_task_state(&mut self, framework: &str, task_id: &str, state: i32) {
        self.pending.push(Write::put(
            TASK_STATES,
            task_key(framework, task_id),
            state.to_string().into_bytes(),
        ));
    }

    pub fn delete_task(&mut self, framework: &str, task_id: &str) {
        let key = task_key(framework, task_id);
        self.pending.push(Write::delete(TASK_STATES, key.clone()));
        self.pending.push(Write::delete(TASKS, key));
    }

    pub fn put_weight(&mut self, role: &str, weight: f64) {
        self.pending
            .push(Write::put(WEIGHTS, role, weight.to_string().into_bytes()));
    }

    pub fn delete_weight(&mut self, role: &str) {
        self.pending.push(Write::delete(WEIGHTS, role));
    }

    /// Whether changes wait to be committed.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Queues what `build` writes and commits it with everything queued
    /// before, at once, waiting for the commit; on failure what `build`
    /// wrote is dropped (the caller refuses the change), and earlier
    /// changes stay queued.
    pub fn transaction(&mut self, build: impl FnOnce(&mut Registry)) -> Result<(), RegistryError> {
        let mark = self.pending.len();
        build(self);
        let writes: Vec<Write> = self.pending.drain(mark..).collect();
        self.commit_later();
        self.commit_now(writes)
    }

    /// Commits every queued change and waits for it.
    pub fn commit(&mut self) -> Result<(), RegistryError> {
        let writes = std::mem::take(&mut self.pending);
        self.commit_now(writes)
    }

    fn commit_now(&mut self, writes: Vec<Write>) -> Result<(), RegistryError> {
        let Some(writer) = &self.writer else {
            return Err(RegistryError::Closed);
        };
        let (done, answer) = mpsc::sync_channel(1);
        writer
            .tx
            .send(Job::Now(writes, done))
            .map_err(|_| RegistryError::Closed)?;
        answer.recv().unwrap_or(Err(RegistryError::Closed))
    }

    /// Hands every queued change to the writer, which commits it soon —
    /// in order with everything else, with whatever else is queued — and
    /// returns at once: the number of the last batch handed, which
    /// [`Registry::durability`] covers once it is committed. A failure
    /// shows in [`Registry::take_failure`] (the writer retries).
    pub fn commit_later(&mut self) -> u64 {
        if self.pending.is_empty() {
            return self.handed;
        }
        let writes = std::mem::take(&mut self.pending);
        if let Some(writer) = &self.writer {
            self.handed += 1;
            let _ = writer.tx.send(Job::Later(writes, self.handed));
        }
        self.handed
    }

    /// How far what was handed to the writer is committed.
    pub fn durability(&self) -> Arc<Durability> {
        self.durability.clone()
    }

    /// Holds every commit back until the returned sender drops.
    #[cfg(test)]
    pub(crate) fn hold_commits(&self) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel();
        if let Some(writer) = &self.writer {
            let _ = writer.tx.send(Job::Hold(held));
        }
        release
    }

    /// The last background commit's failure, if one failed since asked.
    pub fn take_failure(&self) -> Option<RegistryError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for Registry {
    /// Everything queued is committed before the registry goes (a master
    /// that stops loses nothing it had decided).
    fn drop(&mut self) {
        self.commit_later();
        if let Some(writer) = self.writer.take() {
            drop(writer.tx);
            let _ = writer.thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::v1;

    #[test]
    fn background_commits_keep_their_order_and_land_before_the_registry_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.redb");
        {
            let mut registry = Registry::open(&path).expect("open");
            registry.put_weight("a", 1.5);
            registry.commit_later();
            // A transaction after it commits after it: the later value wins.
            registry
                .transaction(|r| r.put_weight("a", 2.5))
                .expect("transaction");
            for i in 0..100 {
                registry.put_weight(&format!("r{i}"), 1.0 + f64::from(i));
                registry.commit_later();
            }
            registry.delete_weight("r0");
            registry.commit_later();
            assert!(registry.take_failure().is_none());
            // Dropped with commits still on their way.
        }
        let recovered = Registry::open(&path).expect("reopen").load().expect("load");
        assert_eq!(recovered.weights.get("a"), Some(&2.5));
        assert_eq!(recovered.weights.get("r99"), Some(&100.0));
        assert!(!recovered.weights.contains_key("r0"));
        assert_eq!(recovered.weights.len(), 100);
    }

    #[test]
    fn background_commits_gather_for_the_interval_and_a_transaction_takes_them_along() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("registry.redb")).expect("open");
        let hour = Duration::from_secs(3600);
        let mut registry = Registry::with_commit_interval(store, hour);
        let weight = |registry: &Registry, role: &str| {
            registry.store.get(WEIGHTS, role).expect("get").is_some()
        };
        // An idle registry commits a lone background write without waiting
        // out the interval.
        registry.put_weight("first", 1.0);
        registry.commit_later();
        let started = Instant::now();
        while !weight(&registry, "first") {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never committed"
            );
            std::thread::yield_now();
        }
        assert_eq!(registry.commits(), 1);
        // Within the interval, background writes wait for one another...
        for role in ["a", "b"] {
            registry.put_weight(role, 2.0);
            registry.commit_later();
        }
        assert!(!weight(&registry, "a") && !weight(&registry, "b"));
        assert_eq!(registry.commits(), 1);
        // ...but not for a transaction, which commits them with its own.
        registry
            .transaction(|r| r.put_weight("c", 3.0))
            .expect("transaction");
        assert!(["a", "b", "c"].iter().all(|r| weight(&registry, r)));
        assert_eq!(registry.commits(), 2);
    }

    #[test]
    fn records_survive_a_reopen_and_deletes_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.redb");
        let agent = RegistryAgent {
            id: Some(v1::AgentId { value: "a1".into() }),
            hostname: "h1".into(),
            secret_sha256: vec![1, 2, 3],
            draining: true,
            ..Default::default()
        };
        let task = RegistryTask {
            framework_id: Some(v1::FrameworkId { value: "f1".into() }),
            agent_id: Some(v1::AgentId { value: "a1".into() }),
            state: v1::TaskState::TaskRunning as i32,
            ..Default::default()
        };
        {
            let mut registry = Registry::open(&path).expect("open");
            registry.put_agent(&agent);
            registry.put_weight("prod", 2.5);
            registry.put_task("f1", "t1", &task);
            registry.put_task("f1", "t2", &task);
            registry.delete_task("f1", "t2");
            assert!(registry.dirty());
            registry.commit().expect("commit");
            assert!(!registry.dirty());
        }
        let recovered = Registry::open(&path).expect("reopen").load().expect("load");
        assert_eq!(recovered.agents, vec![agent]);
        assert_eq!(recovered.tasks, vec![task.clone()]);
        assert_eq!(recovered.weights.get("prod"), Some(&2.5));
        assert!(recovered.frameworks.is_empty());
        // A state written on its own overrides the record's; a delete
        // takes both.
        {
            let mut registry = Registry::open(&path).expect("open");
            registry.put_task_state("f1", "t1", v1::TaskState::TaskUnreachable as i32);
            registry.put_task("f1", "t3", &task);
            registry.put_task_state("f1", "t3", v1::TaskState::TaskStarting as i32);
            registry.delete_task("f1", "t3");
            registry.commit().expect("commit");
        }
        let recovered = Registry::open(&path).expect("reopen").load().expect("load");
        let unreachable = RegistryTask {
            state: v1::TaskState::TaskUnreachable as i32,
            ..task
        };
        assert_eq!(recovered.tasks, vec![unreachable]);
    }

    #[tokio::test]
    async fn a_handed_batch_is_covered_once_committed_and_its_commit_wakes_a_waiter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = Registry::open(&dir.path().join("registry.redb")).expect("open");
        let durability = registry.durability();
        assert!(
            durability.covers(registry.commit_later()),
            "nothing handed yet"
        );

        let held = registry.hold_commits();
        registry.put_weight("a", 2.0);
        let first = registry.commit_later();
        registry.put_weight("b", 3.0);
        let second = registry.commit_later();
        assert!(second > first);
        let waiter = {
            let durability = durability.clone();
            tokio::spawn(async move {
                while !durability.covers(second) {
                    durability.advanced().await;
                }
            })
        };
        assert!(!durability.covers(first), "covered while commits were held");

        drop(held);
        tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("the commit woke the waiter")
            .expect("waiter");
        assert!(durability.covers(first) && durability.covers(second));
        assert!(registry.store.get(WEIGHTS, "b").expect("get").is_some());
    }
}
