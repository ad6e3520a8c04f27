//! Keeps the read model ([`crate::snapshot`]) up to date with what changed
//! and publishes it: when a reader asks (at the end of the burst the core
//! is in), and at least every [`PUBLISH_EVERY`] so changes do not pile up
//! while nobody reads.
//!
//! What changed is known from the tracked maps (agents, frameworks, tasks)
//! and the offer book's change record; what each agent and framework holds
//! is kept as running sums, so nothing here walks the whole state.

use std::sync::Arc;

use super::*;
use crate::snapshot::{Publisher, Snapshot, TaskKey as ReadKey};

/// Publication without readers: it keeps the record of what changed from
/// growing without bound. (Readers ask for fresh snapshots themselves.)
pub(super) const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// Changed tasks a publication without readers applies after each burst:
/// five seconds of a busy cluster's changes applied at once stalled the
/// core for hundreds of milliseconds (the whole latency tail of a paced
/// load); in slices it keeps the same coalescing and no stall. A reader's
/// publication applies everything at once.
const PUBLISH_SLICE: usize = 1024;

/// Slices of changed tasks that start a publication without readers
/// before [`PUBLISH_EVERY`]: the first reader after a quiet spell gets a
/// publication of at most about this many (tens of milliseconds), not of
/// five seconds of a busy cluster's changes (100,000 tasks after a
/// teardown kept a dashboard's first page waiting half a second).
const UNPUBLISHED_SLICES: usize = 8;

/// How long after a reader's last request the core keeps its working copy
/// up to date turn by turn (each turn's changes, without publishing), so
/// the next reader's publication has only the changes since to apply: a
/// dashboard polling a busy master waited tens of milliseconds for the
/// changes of the quarter second since its last look.
pub(super) const READERS_LINGER: Duration = PUBLISH_EVERY;

/// How long after a reader last wrote the whole state (`/api/v1/state`)
/// the core makes the JSON of lasting task views as it builds them (see
/// [`crate::snapshot::Reader::will_write_whole_state`]): 3–4% of the
/// core's time under a launch load (a profile of the reads benchmark),
/// spent only while someone polls the whole state, at intervals up to
/// this.
pub(super) const WHOLE_STATE_LINGER: Duration = Duration::from_secs(30);

/// Work between two looks for readers waiting (see
/// [`Core::reader_checkpoint`]).
const READ_CHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

/// A running sum of resources and how many things hold them.
#[derive(Default)]
pub(super) struct Sum {
    pub(super) resources: Resources,
    pub(super) count: usize,
}

impl Sum {
    fn change(&mut self, resources: &Resources, add: bool) {
        if add {
            self.resources.add(resources);
            self.count += 1;
        } else {
            self.resources.subtract(resources);
            self.count = self.count.saturating_sub(1);
            if self.count == 0 {
                // No rounding dust left behind by many adds and subtracts.
                self.resources = Resources::default();
            }
        }
    }
}

/// What live tasks and open offers hold, per agent or per framework.
#[derive(Default)]
pub(super) struct Holdings {
    pub(super) used: Sum,
    pub(super) offered: Sum,
}

/// The core's working copy of the read model and where it is published.
pub(super) struct ReadModel {
    working: Snapshot,
    by_agent: FastMap<String, Holdings>,
    by_framework: FastMap<String, Holdings>,
    publisher: Publisher,
    last_published: Option<Instant>,
    /// Changes taken from the core, not yet in the working copy: tasks
    /// (applied in key order), then offers, then the agents all of them
    /// touched — each a slice at a time — and last the frameworks.
    pending_tasks: VecDeque<TaskKey>,
    pending_agents: FastSet<String>,
    pending_frameworks: FastSet<String>,
    pending_offers: Vec<String>,
    slice: usize,
    /// A publication is under way, a slice per turn.
    in_progress: bool,
    /// Changes were taken since the last publication.
    taken: bool,
    /// When a reader last asked for a publication.
    last_asked: Option<Instant>,
    /// The ids of frameworks and agents, one copy each, shared by the
    /// keys and views of their tasks.
    shared_ids: FastSet<Arc<str>>,
    /// When a reader last wrote the whole state, and room to make views'
    /// JSON in meanwhile.
    whole_state_asked: Option<Instant>,
    json_scratch: Vec<u8>,
    /// When the core last looked for readers within its work (wall time:
    /// it bounds work, not protocol timeouts), and how much work passes
    /// between two looks.
    checked: std::time::Instant,
    check_after: std::time::Duration,
}

impl ReadModel {
    pub(super) fn new() -> Self {
        ReadModel {
            working: Snapshot::default(),
            by_agent: FastMap::default(),
            by_framework: FastMap::default(),
            publisher: crate::snapshot::channel().0,
            last_published: None,
            pending_tasks: VecDeque::new(),
            pending_agents: FastSet::default(),
            pending_frameworks: FastSet::default(),
            pending_offers: Vec::new(),
            slice: PUBLISH_SLICE,
            in_progress: false,
            taken: false,
            last_asked: None,
            shared_ids: FastSet::default(),
            whole_state_asked: None,
            json_scratch: Vec::new(),
            checked: std::time::Instant::now(),
            check_after: READ_CHECK_AFTER,
        }
    }

    /// Applies `tasks` changed tasks per slice (tests use small ones).
    #[cfg(test)]
    pub(super) fn set_slice(&mut self, tasks: usize) {
        self.slice = tasks;
    }

    /// Looks for readers at every checkpoint (tests: work takes no time
    /// worth speaking of there).
    #[cfg(test)]
    pub(super) fn check_at_every_step(&mut self) {
        self.check_after = std::time::Duration::ZERO;
    }

    /// Whether a publication is under way, a slice at a time.
    pub(super) fn publishing(&self) -> bool {
        self.in_progress
    }

    #[cfg(test)]
    pub(super) fn latest(&self) -> Arc<Snapshot> {
        self.publisher.latest()
    }

    /// Tasks in the working copy, published or not.
    #[cfg(test)]
    pub(super) fn working_tasks(&self) -> usize {
        self.working.tasks.len()
    }

    /// Publishes through `publisher` from now on (the server's readers
    /// hold its readers).
    pub(super) fn publish_to(&mut self, publisher: Publisher) {
        self.publisher = publisher;
    }

    /// What wakes the core when a reader asks for a publication.
    pub(super) fn requests(&self) -> crate::snapshot::Requests {
        self.publisher.requests()
    }

    /// When the next publication is due without readers asking.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.last_published.map(|t| t + PUBLISH_EVERY)
    }

    /// Whether a reader asked lately, so more are likely to.
    fn readers_around(&self) -> bool {
        self.last_asked
            .is_some_and(|at| at.elapsed() < READERS_LINGER)
    }

    /// The one shared copy of a framework's or agent's id.
    fn shared_id(&mut self, id: &str) -> Arc<str> {
        if let Some(shared) = self.shared_ids.get(id) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(id);
        self.shared_ids.insert(shared.clone());
        shared
    }

    /// Whether a reader wrote the whole state lately, so one is likely
    /// to again.
    fn whole_state_readers_around(&self) -> bool {
        self.whole_state_asked
            .is_some_and(|at| at.elapsed() < WHOLE_STATE_LINGER)
    }

    /// Whether a reader asks now (and forgets it).
    fn take_request(&mut self) -> bool {
        let asked = self.publisher.take_request();
        if asked {
            self.last_asked = Some(Instant::now());
            if self.publisher.take_whole_state_reader() {
                self.whole_state_asked = self.last_asked;
            }
        }
        asked
    }
}

impl Core {
    /// Publishes at once if a reader asked; otherwise goes on with (or
    /// starts, once changes have waited long enough) a publication a
    /// slice at a time — or, while readers are around, applies this
    /// turn's changes without publishing.
    pub(super) fn publish_if_wanted(&mut self) {
        if self.read.take_request() {
            self.publish();
            return;
        }
        if !self.read.publishing() {
            let due = self.read.next_due().is_none_or(|due| Instant::now() >= due)
                || self.tasks.changes() >= UNPUBLISHED_SLICES * self.read.slice;
            if due && self.unpublished() {
                self.read.in_progress = true;
            } else if !self.read.readers_around() {
                return;
            }
            self.take_changes();
        }
        // Keeping up applies the whole turn's changes: what it leaves, the
        // next reader waits for.
        let slice = if self.read.publishing() {
            self.read.slice
        } else {
            usize::MAX
        };
        if self.apply_pending(slice) && self.read.publishing() {
            self.finish_publication();
        }
    }

    /// Starts the clock of [`Core::reader_checkpoint`] (work begins).
    pub(super) fn start_reader_clock(&mut self) {
        self.read.checked = std::time::Instant::now();
    }

    /// A point between two steps of a long piece of work (messages of a
    /// burst, tasks of an accept, offers of a pass) where, once
    /// [`READ_CHECK_AFTER`] of work has passed since the last look, the
    /// core publishes if a reader asked — or, while readers are around,
    /// applies what changed so far without publishing. A reader then
    /// waits for at most a step, and its publication has at most that
    /// much to apply: with looks only between messages, one accept of 800
    /// tasks kept a reader 20 ms, and with the changes applied only at a
    /// burst's end, a reader's publication of a 100 ms burst took 35 ms.
    pub(super) fn reader_checkpoint(&mut self) {
        self.reader_checkpoint_at(std::time::Instant::now());
    }

    /// [`Core::reader_checkpoint`] with the time already read (a burst
    /// reads the clock once per message); returns when the work goes on:
    /// `now`, or the clock after what was done for readers.
    pub(super) fn reader_checkpoint_at(&mut self, now: std::time::Instant) -> std::time::Instant {
        if now.duration_since(self.read.checked) < self.read.check_after {
            return now;
        }
        if self.read.take_request() {
            self.publish();
        } else if self.read.readers_around() && !self.read.publishing() {
            self.take_changes();
            self.apply_pending(usize::MAX);
        }
        self.start_reader_clock();
        self.read.checked
    }

    /// Whether anything changed since the last publication (taken into
    /// the working copy or not).
    pub(super) fn unpublished(&self) -> bool {
        self.read.taken
            || self.agents.has_changes()
            || self.frameworks.has_changes()
            || self.tasks.has_changes()
            || self.offers.has_changes()
    }

    /// Brings the read model up to date and publishes it.
    pub(super) fn publish(&mut self) {
        self.take_changes();
        self.apply_pending(usize::MAX);
        self.finish_publication();
    }

    /// Moves what changed from the core's records to the pending lists.
    fn take_changes(&mut self) {
        let agents = self.agents.take_changed();
        let mut tasks = self.tasks.take_changed();
        // An agent that moved (a new endpoint) moves its tasks' sandboxes.
        for id in &agents {
            let moved = match (
                self.read.working.agents.get(id.as_str()),
                self.agents.get(id),
            ) {
                // The same registration, the same endpoint.
                (Some(old), Some(new)) => {
                    !Arc::ptr_eq(&old.registered, &new.registered)
                        && old.registered.endpoint != new.registered.endpoint
                }
                _ => false,
            };
            if moved {
                tasks.extend(self.task_keys_on(id, |_, _| true));
            }
        }
        // In key order: consecutive inserts land in the same nodes, which
        // are copied from the last snapshot once, not once per task.
        let mut tasks: Vec<TaskKey> = tasks.into_iter().collect();
        tasks.sort_unstable();
        let read = &mut self.read;
        read.taken |= !tasks.is_empty() || !agents.is_empty();
        read.pending_tasks.extend(tasks);
        read.pending_agents.extend(agents);
        let frameworks = self.frameworks.take_changed();
        let offers = self.offers.take_changed();
        read.taken |= !frameworks.is_empty() || !offers.is_empty();
        read.pending_frameworks.extend(frameworks);
        read.pending_offers.extend(offers);
    }

    /// Applies up to `at_most` pending changes: tasks first, then offers,
    /// then the agents they touched (whose views sum them). Whether
    /// nothing but the frameworks is left. At 50,000 agents the agents a
    /// few seconds of launches touched, applied at once, made turns of
    /// half a second.
    fn apply_pending(&mut self, at_most: usize) -> bool {
        let mut agents = std::mem::take(&mut self.read.pending_agents);
        let mut frameworks = std::mem::take(&mut self.read.pending_frameworks);
        let mut budget = at_most;
        while budget > 0 {
            let Some(key) = self.read.pending_tasks.pop_front() else {
                break;
            };
            self.publish_task(&key, &mut agents, &mut frameworks);
            budget -= 1;
        }
        while budget > 0 && self.read.pending_tasks.is_empty() {
            let Some(id) = self.read.pending_offers.pop() else {
                break;
            };
            self.publish_offer(&id, &mut agents, &mut frameworks);
            budget -= 1;
        }
        if self.read.pending_tasks.is_empty() && self.read.pending_offers.is_empty() {
            let batch: Vec<String> = agents.iter().take(budget).cloned().collect();
            for id in batch {
                agents.remove(&id);
                self.publish_agent(&id);
            }
        }
        let done = self.read.pending_tasks.is_empty()
            && self.read.pending_offers.is_empty()
            && agents.is_empty();
        self.read.pending_agents = agents;
        self.read.pending_frameworks = frameworks;
        done
    }

    fn publish_agent(&mut self, id: &String) {
        let key: Arc<str> = Arc::from(id.as_str());
        let new = self
            .agents
            .get(id)
            .map(|a| Arc::new(self.agent_view(a, self.read.by_agent.get(id))));
        let read = &mut self.read;
        let old = match &new {
            Some(view) => read.working.agents.insert(key.clone(), view.clone()),
            None => {
                read.shared_ids.remove(&key);
                read.by_agent.remove(id);
                read.working.agents.remove(&key)
            }
        };
        let (was_named, named) = (
            old.as_deref().map(|v| v.registered.hostname.as_str()),
            new.as_deref().map(|v| v.registered.hostname.as_str()),
        );
        if was_named != named {
            let by_hostname = &mut read.working.agents_by_hostname;
            if let Some(was) = was_named {
                by_hostname.remove(&(was.to_string(), key.clone()));
            }
            if let Some(now) = named {
                by_hostname.insert((now.to_string(), key));
            }
        }
        let totals = &mut read.working.agent_totals;
        if let Some(old) = old {
            totals.count(&old, false);
        }
        if let Some(new) = new {
            totals.count(&new, true);
        }
    }

    /// Applies the pending frameworks (few), and publishes.
    fn finish_publication(&mut self) {
        let frameworks = std::mem::take(&mut self.read.pending_frameworks);
        for id in frameworks {
            let key: Arc<str> = Arc::from(id.as_str());
            match self.frameworks.get(&id) {
                Some(f) => {
                    let view = view::framework_view(f, self.read.by_framework.get(&id));
                    self.read.working.frameworks.insert(key, Arc::new(view));
                }
                None => {
                    self.read.working.frameworks.remove(&key);
                    self.read.shared_ids.remove(&key);
                    self.read.by_framework.remove(&id);
                }
            }
        }
        self.metrics.snapshots_published += 1;
        self.metrics.registry_commits = self.registry.commits();
        self.read.working.roles = Arc::new(self.allocator.roles());
        self.read.working.metrics = Arc::new(self.metrics.clone());
        self.read.working.seq += 1;
        self.read.working.published = Some(std::time::Instant::now());
        self.read.publisher.publish(self.read.working.clone());
        self.read.last_published = Some(Instant::now());
        self.read.in_progress = false;
        self.read.taken = false;
    }

    fn publish_task(
        &mut self,
        key: &TaskKey,
        agents: &mut FastSet<String>,
        frameworks: &mut FastSet<String>,
    ) {
        let read_key: ReadKey = (self.read.shared_id(&key.0), Arc::from(key.1.as_str()));
        let new = match self.tasks.get(key) {
            Some(t) => {
                let agent_id = self.read.shared_id(&t.agent);
                Some(self.task_view(&read_key, agent_id, t))
            }
            None => None,
        };
        let read = &mut self.read;
        let new = new.map(|view| {
            if read.whole_state_readers_around() {
                view.json.keep_if_lasting(&view, &mut read.json_scratch);
            }
            Arc::new(view)
        });
        let old = match &new {
            Some(view) => read.working.tasks.insert(read_key, view.clone()),
            None => read.working.tasks.remove(&read_key),
        };
        let (old, new) = (old.as_deref(), new.as_deref());
        if old.map(|v| v.state) != new.map(|v| v.state) {
            for (view, add) in [(old, false), (new, true)] {
                let Some(view) = view else { continue };
                let count = read.working.tasks_by_state.entry(view.state).or_default();
                *count = if add {
                    *count + 1
                } else {
                    count.saturating_sub(1)
                };
            }
        }
        let (was_using, using) = (live_usage(old), live_usage(new));
        if was_using != using {
            let usage_by_agent = &mut read.working.usage_by_agent;
            for (used, add) in [(was_using, false), (using, true)] {
                let Some((agent, usage)) = used else { continue };
                let sum = usage_by_agent.entry(agent.clone()).or_default();
                sum.change(usage, add);
                if sum.tasks == 0 {
                    usage_by_agent.remove(agent);
                }
            }
        }
        // What the task holds, and where: most changes (starting to
        // running, usage, health) change nothing there, and its agent's
        // and framework's views are not rebuilt for them.
        if holding(old) == holding(new) {
            return;
        }
        for (held, add) in [(holding(old), false), (holding(new), true)] {
            let Some((agent, framework, resources)) = held else {
                continue;
            };
            holdings_of(&mut read.by_agent, agent)
                .used
                .change(resources, add);
            holdings_of(&mut read.by_framework, framework)
                .used
                .change(resources, add);
            mark(agents, agent);
            mark(frameworks, framework);
        }
    }

    fn publish_offer(
        &mut self,
        id: &String,
        agents: &mut FastSet<String>,
        frameworks: &mut FastSet<String>,
    ) {
        let key: Arc<str> = Arc::from(id.as_str());
        let new = self.offers.get(id).map(|o| {
            Arc::new(OfferView {
                id: id.clone(),
                framework_id: o.framework.clone(),
                agent_id: o.agent.clone(),
                resources: o.resources.clone(),
                made_at_ms: self.wall_ms(o.made_at),
            })
        });
        let read = &mut self.read;
        let old = match &new {
            Some(view) => read.working.offers.insert(key, view.clone()),
            None => read.working.offers.remove(&key),
        };
        for (view, add) in [(old.as_deref(), false), (new.as_deref(), true)] {
            let Some(view) = view else { continue };
            holdings_of(&mut read.by_agent, &view.agent_id)
                .offered
                .change(&view.resources, add);
            holdings_of(&mut read.by_framework, &view.framework_id)
                .offered
                .change(&view.resources, add);
            mark(agents, &view.agent_id);
            mark(frameworks, &view.framework_id);
        }
    }
}

/// `id`'s holdings, made on first sight (the key is copied then only:
/// applying a change looks them up twice per task).
fn holdings_of<'a>(map: &'a mut FastMap<String, Holdings>, id: &str) -> &'a mut Holdings {
    if !map.contains_key(id) {
        map.insert(id.to_string(), Holdings::default());
    }
    map.get_mut(id).expect("inserted above")
}

/// Marks `id` changed, copying it only the first time.
fn mark(changed: &mut FastSet<String>, id: &str) {
    if !changed.contains(id) {
        changed.insert(id.to_string());
    }
}

/// What a live task uses now, and on which agent: nothing once it ended
/// or before its first report.
fn live_usage(view: Option<&TaskView>) -> Option<(&Arc<str>, &UsageView)> {
    holding(view)?;
    let view = view?;
    Some((&view.agent_id, view.usage.as_ref()?))
}

/// Where a task holds resources, and what: nothing once it ended.
fn holding(view: Option<&TaskView>) -> Option<(&str, &str, &Resources)> {
    view.filter(|v| {
        !is_terminal(TaskState::from_str_name(v.state).unwrap_or(TaskState::TaskUnknown))
    })
    .map(|v| (&*v.agent_id, &*v.framework_id, &v.resources))
}
