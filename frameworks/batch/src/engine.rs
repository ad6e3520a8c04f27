//! The batch scheduler's state machine: no I/O, no clock of its own. Every
//! entry point takes `now`, changes the jobs, marks what changed for the
//! store, and returns the calls the framework must make (kills,
//! reconciliations). Offers go in, a placement comes out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use agora_sdk::{Demand, Offer, TaskInfo, TaskState, TaskStatus, v1};

use crate::model::{Attempt, Instance, InstanceState, Job, Millis, Run, RunState, Trigger};
use crate::spec::{self, Concurrency, JobSpec, SpecError};
use placement::{Slot, needs, occupied, task_info};

/// Terminal runs kept per job; older ones are dropped from history.
pub const RUN_HISTORY: usize = 50;
const MAX_BACKOFF_MS: Millis = 5 * 60 * 1000;
/// An attempt's state until the master or an agent reports on it.
const LAUNCHED_STATE: &str = "TASK_STAGING";
/// While the master does not know a task, ask again this often.
const RECONCILE_EVERY_MS: Millis = 3000;

/// A request the engine refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] SpecError),
}

/// A call for the framework to make to the master.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Kill(String),
    Reconcile(Vec<String>),
}

/// Tasks to launch on each used offer, and the offers nothing fitted.
#[derive(Debug, Default)]
pub struct Placement {
    pub launches: Vec<(String, Vec<TaskInfo>)>,
    pub unused: Vec<String>,
}

#[derive(Debug, Clone)]
struct TaskRef {
    job: String,
    run: u32,
    instance: usize,
    attempt: usize,
}

/// Whether a queued run's dependencies allow it to start.
enum Deps {
    Ready,
    Waiting,
    Failed(String),
}

/// All jobs, and what changed since the store last saved.
pub struct Engine {
    jobs: BTreeMap<String, Job>,
    tasks: HashMap<String, TaskRef>,
    /// Job → the jobs that depend on it.
    dependents: HashMap<String, Vec<String>>,
    next_seq: u64,
    framework_id: Option<String>,
    dirty: BTreeSet<String>,
    removed: BTreeSet<String>,
    meta_dirty: bool,
    /// Bumped on every change; the store reports the version it has saved.
    version: u64,
    /// How long a task the master does not know may stay unaccounted for
    /// (its agent may still re-register) before it counts as lost.
    reconcile_grace_ms: Millis,
    last_reconcile: Millis,
    /// Work became launchable since the framework last looked: it revives
    /// offers even if it never suppressed them, to clear decline filters.
    new_work: bool,
    last_tick: Millis,
    counters: Counters,
}

/// Counts since the framework started, for `/batch/v1/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub tasks_launched: u64,
    pub runs_succeeded: u64,
    pub runs_failed: u64,
    pub runs_killed: u64,
}

/// What the store must write: changed jobs (`None` = deleted) and metadata.
pub struct Changes {
    pub version: u64,
    pub jobs: Vec<(String, Option<Job>)>,
    pub next_seq: u64,
    pub framework_id: Option<String>,
}

impl Engine {
    pub fn new(reconcile_grace_ms: Millis) -> Engine {
        Engine {
            jobs: BTreeMap::new(),
            tasks: HashMap::new(),
            dependents: HashMap::new(),
            next_seq: 1,
            framework_id: None,
            dirty: BTreeSet::new(),
            removed: BTreeSet::new(),
            meta_dirty: false,
            version: 0,
            reconcile_grace_ms,
            last_reconcile: 0,
            new_work: false,
            last_tick: 0,
            counters: Counters::default(),
        }
    }

    /// Rebuilds the engine from what the store holds.
    pub fn restore(
        jobs: Vec<Job>,
        next_seq: u64,
        framework_id: Option<String>,
        reconcile_grace_ms: Millis,
    ) -> Engine {
        let mut engine = Engine::new(reconcile_grace_ms);
        engine.next_seq = next_seq.max(1);
        engine.framework_id = framework_id;
        for job in jobs {
            engine.next_seq = engine.next_seq.max(job.seq + 1);
            engine.jobs.insert(job.spec.id.clone(), job);
        }
        let ids: Vec<String> = engine.jobs.keys().cloned().collect();
        for id in ids {
            engine.index_tasks(&id);
        }
        engine.rebuild_dependents();
        engine
    }

    // ---- reading -------------------------------------------------------------------

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Tasks that may be alive: what to reconcile after (re)subscribing.
    pub fn live_task_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for job in self.jobs.values() {
            for run in &job.runs {
                for inst in &run.instances {
                    if inst.state.has_task()
                        && let Some(a) = inst.current()
                    {
                        ids.push(a.task_id.clone());
                    }
                }
            }
        }
        ids
    }

    /// Whether some instance could launch now if resources were offered.
    pub fn wants_offers(&self, now: Millis) -> bool {
        !self.demand(now).is_empty()
    }

    /// What could launch now: instances waiting (and not backing off) in
    /// runs whose dependencies allow them — what the master's demand
    /// policy sizes this framework's offers to.
    pub fn demand(&self, now: Millis) -> Demand {
        let mut demand = Demand::default();
        for job in self.jobs.values() {
            let mut ready = None;
            for run in job.runs.iter().filter(|r| r.state.is_active()) {
                let waiting = run
                    .instances
                    .iter()
                    .filter(|i| i.state == InstanceState::Waiting && i.not_before <= now)
                    .count() as u32;
                if waiting == 0 {
                    continue;
                }
                let may_run = run.state == RunState::Running
                    || *ready.get_or_insert_with(|| matches!(self.deps(job), Deps::Ready));
                if may_run {
                    demand.add(&needs(&job.spec), waiting);
                }
            }
        }
        demand
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn has_new_work(&self) -> bool {
        self.new_work
    }

    /// Whether work became launchable since the last call.
    pub fn take_new_work(&mut self) -> bool {
        std::mem::take(&mut self.new_work)
    }

    // ---- changes for the store ------------------------------------------------

    fn touch(&mut self, id: &str) {
        self.dirty.insert(id.to_string());
        self.version += 1;
    }

    pub fn set_framework_id(&mut self, id: &str) {
        if self.framework_id.as_deref() != Some(id) {
            self.framework_id = Some(id.to_string());
            self.meta_dirty = true;
            self.version += 1;
        }
    }

    /// Takes what changed since the last call, for the store to write.
    pub fn take_changes(&mut self) -> Option<Changes> {
        if self.dirty.is_empty() && self.removed.is_empty() && !self.meta_dirty {
            return None;
        }
        let mut jobs: Vec<(String, Option<Job>)> = std::mem::take(&mut self.removed)
            .into_iter()
            .map(|id| (id, None))
            .collect();
        for id in std::mem::take(&mut self.dirty) {
            if let Some(job) = self.jobs.get(&id) {
                jobs.push((id, Some(job.clone())));
            }
        }
        self.meta_dirty = false;
        Some(Changes {
            version: self.version,
            jobs,
            next_seq: self.next_seq,
            framework_id: self.framework_id.clone(),
        })
    }

    /// Puts back changes the store failed to write, to be tried again.
    pub fn requeue(&mut self, changes: Changes) {
        for (id, job) in changes.jobs {
            match job {
                Some(_) => {
                    self.dirty.insert(id);
                }
                None if !self.jobs.contains_key(&id) => {
                    self.removed.insert(id);
                }
                None => {}
            }
        }
        self.meta_dirty = true;
    }

    // ---- requests ------------------------------------------------------------------

    /// Adds jobs (all or none). Jobs without a schedule are queued at once.
    pub fn submit(&mut self, specs: Vec<JobSpec>, now: Millis) -> Result<Vec<String>, EngineError> {
        let mut incoming: BTreeMap<String, &JobSpec> = BTreeMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let field = if specs.len() > 1 {
                format!("job[{i}].id")
            } else {
                "id".into()
            };
            if self.jobs.contains_key(&spec.id) {
                return Err(
                    SpecError::new(field, format!("job `{}` already exists", spec.id)).into(),
                );
            }
            if incoming.insert(spec.id.clone(), spec).is_some() {
                return Err(
                    SpecError::new(field, format!("job `{}` is defined twice", spec.id)).into(),
                );
            }
        }
        for (i, spec) in specs.iter().enumerate() {
            for (d, dep) in spec.depends_on.iter().enumerate() {
                if !self.jobs.contains_key(dep) && !incoming.contains_key(dep) {
                    let field = if specs.len() > 1 {
                        format!("job[{i}].depends_on[{d}]")
                    } else {
                        format!("depends_on[{d}]")
                    };
                    return Err(SpecError::new(field, format!("unknown job `{dep}`")).into());
                }
            }
        }
        let deps_of = |id: &str| -> Vec<String> {
            incoming
                .get(id)
                .map(|s| s.depends_on.clone())
                .or_else(|| self.jobs.get(id).map(|j| j.spec.depends_on.clone()))
                .unwrap_or_default()
        };
        for spec in &specs {
            if let Some(cycle) = find_cycle(&spec.id, &deps_of) {
                return Err(SpecError::new(
                    "depends_on",
                    format!("dependency cycle: {}", cycle.join(" → ")),
                )
                .into());
            }
        }
        let mut ids = Vec::new();
        for spec in specs {
            let id = spec.id.clone();
            let mut job = Job {
                seq: self.next_seq,
                submitted_at: now,
                next_run: 1,
                runs: Vec::new(),
                next_fire: None,
                skipped_runs: 0,
                spec,
            };
            self.next_seq += 1;
            self.meta_dirty = true;
            match job.spec.schedule.clone() {
                Some(cron) => job.next_fire = next_fire(&cron, &job.spec.timezone, now),
                None => {
                    new_run(&mut job, Trigger::Submit, now);
                    self.new_work = true;
                }
            }
            self.jobs.insert(id.clone(), job);
            self.touch(&id);
            ids.push(id);
        }
        self.rebuild_dependents();
        // A dependency that already failed stops the new job's run at once.
        for id in &ids {
            self.fail_if_blocked(id, now);
        }
        Ok(ids)
    }

    /// Replaces a job's definition, keeping its history. Active runs carry
    /// on as they were; new runs (and retries) follow the new spec. A new
    /// schedule takes effect from now; nothing is started.
    pub fn update(&mut self, spec: JobSpec, now: Millis) -> Result<(), EngineError> {
        let id = spec.id.clone();
        if !self.jobs.contains_key(&id) {
            return Err(unknown(&id));
        }
        for (d, dep) in spec.depends_on.iter().enumerate() {
            if !self.jobs.contains_key(dep) {
                return Err(SpecError::new(
                    format!("depends_on[{d}]"),
                    format!("unknown job `{dep}`"),
                )
                .into());
            }
        }
        let deps_of = |job: &str| -> Vec<String> {
            if job == id {
                spec.depends_on.clone()
            } else {
                self.jobs
                    .get(job)
                    .map(|j| j.spec.depends_on.clone())
                    .unwrap_or_default()
            }
        };
        if let Some(cycle) = find_cycle(&id, &deps_of) {
            return Err(SpecError::new(
                "depends_on",
                format!("dependency cycle: {}", cycle.join(" → ")),
            )
            .into());
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(unknown(&id));
        };
        let timing_changed =
            job.spec.schedule != spec.schedule || job.spec.timezone != spec.timezone;
        job.spec = spec;
        if timing_changed {
            job.next_fire = job
                .spec
                .schedule
                .as_deref()
                .and_then(|cron| next_fire(cron, &job.spec.timezone, now));
        }
        self.touch(&id);
        self.rebuild_dependents();
        self.new_work = true;
        Ok(())
    }

    /// Deletes a job and its history. Refused while another job depends on
    /// it, and while it has an active run unless `force` (which kills it).
    pub fn remove(
        &mut self,
        id: &str,
        force: bool,
        now: Millis,
    ) -> Result<Vec<Action>, EngineError> {
        let job = self.jobs.get(id).ok_or_else(|| unknown(id))?;
        if job.has_active_run() && !force {
            return Err(EngineError::Conflict(format!(
                "job `{id}` has an active run; kill it first (`agora job kill {id}`), or remove with force"
            )));
        }
        if let Some(users) = self.dependents.get(id).filter(|u| !u.is_empty()) {
            return Err(EngineError::Conflict(format!(
                "job `{id}` is a dependency of {}; remove those first",
                users
                    .iter()
                    .map(|u| format!("`{u}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Forced: its live tasks are killed; their last words find no job.
        let actions = self.kill_runs(id, None, "removed", RunState::Killed, now);
        if let Some(job) = self.jobs.remove(id) {
            for run in &job.runs {
                for inst in &run.instances {
                    for a in &inst.attempts {
                        self.tasks.remove(&a.task_id);
                    }
                }
            }
        }
        self.dirty.remove(id);
        self.removed.insert(id.to_string());
        self.version += 1;
        self.rebuild_dependents();
        Ok(actions)
    }

    /// Starts a run now (`agora job run`), following the job's concurrency.
    pub fn run_now(&mut self, id: &str, now: Millis) -> Result<(u32, Vec<Action>), EngineError> {
        let job = self.jobs.get(id).ok_or_else(|| unknown(id))?;
        let mut actions = Vec::new();
        if job.has_active_run() {
            match job.spec.concurrency {
                Concurrency::Allow => {}
                Concurrency::Forbid => {
                    return Err(EngineError::Conflict(format!(
                        "job `{id}` has an active run and its concurrency is `forbid`"
                    )));
                }
                Concurrency::Replace => {
                    actions =
                        self.kill_runs(id, None, "replaced by a new run", RunState::Killed, now);
                }
            }
        }
        let job = self.jobs.get_mut(id).ok_or_else(|| unknown(id))?;
        let number = new_run(job, Trigger::Manual, now);
        self.new_work = true;
        self.touch(id);
        self.fail_if_blocked(id, now);
        Ok((number, actions))
    }

    /// Kills a job's active runs (or one run): not retried.
    pub fn kill(
        &mut self,
        id: &str,
        run: Option<u32>,
        now: Millis,
    ) -> Result<Vec<Action>, EngineError> {
        let job = self.jobs.get(id).ok_or_else(|| unknown(id))?;
        match run {
            Some(n) => match job.run(n) {
                None => return Err(EngineError::NotFound(format!("job `{id}` has no run {n}"))),
                Some(r) if !r.state.is_active() => {
                    return Err(EngineError::Conflict(format!(
                        "run {n} of job `{id}` already ended ({})",
                        r.state.as_str()
                    )));
                }
                Some(_) => {}
            },
            None if !job.has_active_run() => {
                return Err(EngineError::Conflict(format!(
                    "job `{id}` has no active run"
                )));
            }
            None => {}
        }
        Ok(self.kill_runs(id, run, "killed by user", RunState::Killed, now))
    }

    /// Ends active runs (all, or `only`) in `state`, killing their tasks.
    fn kill_runs(
        &mut self,
        id: &str,
        only: Option<u32>,
        why: &str,
        state: RunState,
        now: Millis,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut ended = Vec::new();
        if let Some(job) = self.jobs.get_mut(id) {
            for run in job.runs.iter_mut() {
                if !run.state.is_active() || only.is_some_and(|n| n != run.number) {
                    continue;
                }
                end_run(run, state, why, now, &mut actions);
                ended.push(run.number);
            }
        }
        if !ended.is_empty() {
            self.touch(id);
        }
        for n in ended {
            self.run_ended(id, n, now, &mut actions);
        }
        actions
    }

    // ---- offers ----------------------------------------------------------------------

    /// Packs launchable instances onto `offers`: highest priority first, then
    /// oldest job; each onto the offer it fits tightest (best fit).
    pub fn place(&mut self, offers: &[Offer], now: Millis) -> Placement {
        let mut slots: Vec<Slot> = offers.iter().map(Slot::new).collect();
        let mut wanted: Vec<(i64, u64, String, u32, usize)> = Vec::new();
        for job in self.jobs.values() {
            for run in &job.runs {
                if !run.state.is_active() {
                    continue;
                }
                if run.state == RunState::Queued && !matches!(self.deps(job), Deps::Ready) {
                    continue;
                }
                for (i, inst) in run.instances.iter().enumerate() {
                    if inst.state == InstanceState::Waiting && inst.not_before <= now {
                        wanted.push((
                            -job.spec.priority,
                            job.seq,
                            job.spec.id.clone(),
                            run.number,
                            i,
                        ));
                    }
                }
            }
        }
        wanted.sort();
        for (_, _, id, number, index) in wanted {
            if slots.iter().all(|s| s.exhausted) {
                break;
            }
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            let need = needs(&job.spec);
            let Some(run) = job.run(number) else { continue };
            // The run's live instances, those placed earlier in this pass
            // included (they are Launching already).
            let taken = occupied(run);
            let taken: Vec<&agora_sdk::placement::AgentAttributes> = taken.iter().collect();
            let attempt_no = run.instances.get(index).map_or(0, |i| i.attempts.len());
            let task_id = format!("{id}.{}.{number}.{index}.{attempt_no}", job.seq);
            let info = task_info(&job.spec, &task_id, number, index, attempt_no, &need);
            // One accept carries a bounded amount: big tasks spill over to
            // the next accept (the offer's remainder comes back).
            let bytes = agora_sdk::task_bytes(&info);
            let best = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.exhausted && s.free.contains(&need))
                .filter(|(_, s)| {
                    s.tasks.is_empty()
                        || s.bytes + bytes <= agora_sdk::limits::MAX_ACCEPT_TASK_BYTES
                })
                .filter(|(_, s)| s.admits(&job.spec, &taken))
                .min_by(|(_, a), (_, b)| a.leftover(&need).total_cmp(&b.leftover(&need)))
                .map(|(i, _)| i);
            let Some(slot) = best else { continue };
            let slot = &mut slots[slot];
            slot.free.subtract(&need);
            slot.bytes += bytes;
            // Nothing smaller than the smallest job will fit now: stop early.
            if slot.free.scalar("cpus") < 0.001 || slot.free.scalar("mem") < 1.0 {
                slot.exhausted = true;
            }
            let agent = slot.agent.clone();
            slot.tasks.push(info);
            let timeout = job.spec.timeout_ms;
            if let Some(job) = self.jobs.get_mut(&id)
                && let Some(run) = job.run_mut(number)
            {
                if run.state == RunState::Queued {
                    run.state = RunState::Running;
                    run.started_at = Some(now);
                    run.deadline = timeout.map(|t| now + t as Millis);
                }
                if let Some(inst) = run.instances.get_mut(index) {
                    inst.state = InstanceState::Launching;
                    inst.attempts.push(Attempt {
                        task_id: task_id.clone(),
                        agent_id: agent.agent_id,
                        hostname: agent.hostname,
                        attributes: agent.attributes,
                        state: LAUNCHED_STATE.into(),
                        launched_at: now,
                        running_at: None,
                        ended_at: None,
                        exit_code: None,
                        message: String::new(),
                        unknown_since: None,
                    });
                }
                self.counters.tasks_launched += 1;
                self.tasks.insert(
                    task_id,
                    TaskRef {
                        job: id.clone(),
                        run: number,
                        instance: index,
                        attempt: attempt_no,
                    },
                );
                self.touch(&id);
            }
        }
        let mut placement = Placement::default();
        for slot in slots {
            if slot.tasks.is_empty() {
                placement.unused.push(slot.offer_id);
            } else {
                placement.launches.push((slot.offer_id, slot.tasks));
            }
        }
        placement
    }

    /// Takes back launches the master refused because the offer was gone:
    /// the attempts end `TASK_DROPPED` (not counted against `retries`) and
    /// their instances wait for the next offer. Task ids are never reused.
    pub fn unlaunch(&mut self, task_ids: &[String], now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        for task_id in task_ids {
            let status = TaskStatus {
                task_id: Some(v1::TaskId {
                    value: task_id.clone(),
                }),
                state: TaskState::TaskDropped as i32,
                message: "not launched: the offer was gone".into(),
                ..Default::default()
            };
            actions.extend(self.on_status(&status, now));
        }
        actions
    }

    // ---- status updates ----------------------------------------------------------------

    /// Applies a task's status update.
    pub fn on_status(&mut self, status: &TaskStatus, now: Millis) -> Vec<Action> {
        let task_id = status
            .task_id
            .as_ref()
            .map_or("", |t| t.value.as_str())
            .to_string();
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        let mut actions = Vec::new();
        let Some(r) = self.tasks.get(&task_id).cloned() else {
            // A task of a job since removed, or from before a lost store: it
            // has no job to serve.
            if !agora_sdk::is_terminal(state) && state != TaskState::TaskUnknown {
                actions.push(Action::Kill(task_id));
            }
            return actions;
        };
        let Some(job) = self.jobs.get_mut(&r.job) else {
            return actions;
        };
        let retries = job.spec.retries;
        let backoff = job.spec.backoff_ms as Millis;
        let Some(run) = job.run_mut(r.run) else {
            return actions;
        };
        let run_active = run.state.is_active();
        let Some(inst) = run.instances.get_mut(r.instance) else {
            return actions;
        };
        let current = inst.attempts.len() == r.attempt + 1;
        let Some(attempt) = inst.attempts.get_mut(r.attempt) else {
            return actions;
        };
        if attempt.ended_at.is_some() {
            // Already given up on. A task that comes back (its agent was
            // unreachable) must not run beside its replacement.
            if !agora_sdk::is_terminal(state) && state != TaskState::TaskUnknown {
                actions.push(Action::Kill(task_id));
            } else if agora_sdk::is_terminal(state) && attempt.state != state.as_str_name() {
                attempt.state = state.as_str_name().to_string();
                self.touch(&r.job);
            }
            return actions;
        }
        if state == TaskState::TaskUnknown {
            // The master has not heard of it (yet): its agent may still come
            // back. Decided in `tick` once the grace period is over.
            attempt.unknown_since.get_or_insert(now);
            return actions;
        }
        attempt.unknown_since = None;
        let name = state.as_str_name().to_string();
        let changed = attempt.state != name;
        attempt.state = name;
        if let Some(agent) = status.agent_id.as_ref().filter(|a| !a.value.is_empty()) {
            attempt.agent_id = agent.value.clone();
        }
        if !status.message.is_empty() {
            attempt.message = status.message.clone();
        }
        // An unreachable agent may never return: the attempt counts as lost
        // and the instance is retried elsewhere.
        let ended = agora_sdk::is_terminal(state) || state == TaskState::TaskUnreachable;
        if !ended {
            if !current || !run_active {
                // A task we have given up on came back (e.g. its agent
                // returned after being unreachable): it must not run twice.
                actions.push(Action::Kill(task_id));
            } else if matches!(state, TaskState::TaskRunning | TaskState::TaskStarting) {
                inst.state = InstanceState::Running;
            }
            if state == TaskState::TaskRunning {
                attempt.running_at.get_or_insert(now);
            }
            if changed {
                self.touch(&r.job);
            }
            return actions;
        }
        attempt.ended_at = Some(now);
        attempt.exit_code = status.exit_code;
        let exit_code = status.exit_code;
        let message = attempt.message.clone();
        if !current || !inst.state.has_task() {
            self.touch(&r.job);
            return actions;
        }
        let mut run_outcome: Option<(RunState, String)> = None;
        if state == TaskState::TaskFinished {
            inst.state = InstanceState::Succeeded;
            if run
                .instances
                .iter()
                .all(|i| i.state == InstanceState::Succeeded)
            {
                run_outcome = Some((RunState::Succeeded, String::new()));
            }
        } else if !run_active {
            // The run already ended (killed, timed out, replaced).
            inst.state = if run.state == RunState::Killed {
                InstanceState::Killed
            } else {
                InstanceState::Failed
            };
        } else if state == TaskState::TaskDropped {
            // Never reached an agent: try again at once, uncounted.
            inst.state = InstanceState::Waiting;
            inst.not_before = now;
            self.new_work = true;
        } else if counted_attempts(inst) <= retries as usize {
            let exp = (counted_attempts(inst) as u32).saturating_sub(1).min(20);
            inst.state = InstanceState::Waiting;
            inst.not_before = now + (backoff.saturating_mul(1 << exp)).min(MAX_BACKOFF_MS);
            self.new_work |= inst.not_before <= now;
        } else {
            inst.state = InstanceState::Failed;
            let what = match exit_code {
                Some(code) => format!("exit code {code}"),
                None if message.is_empty() => name_of(state),
                None => format!("{}: {message}", name_of(state)),
            };
            run_outcome = Some((
                RunState::Failed,
                format!(
                    "instance {} failed after {} attempt(s): {what}",
                    r.instance,
                    counted_attempts(inst)
                ),
            ));
        }
        if let Some((outcome, why)) = run_outcome {
            end_run(run, outcome, &why, now, &mut actions);
            self.touch(&r.job);
            self.run_ended(&r.job.clone(), r.run, now, &mut actions);
        } else {
            self.touch(&r.job);
        }
        actions
    }

    // ---- time ------------------------------------------------------------------------

    /// Fires schedules, enforces timeouts, and gives up on tasks the master
    /// has not known for the grace period.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let since = std::mem::replace(&mut self.last_tick, now);
        let backoff_over = self.jobs.values().any(|j| {
            j.runs.iter().filter(|r| r.state.is_active()).any(|r| {
                r.instances.iter().any(|i| {
                    i.state == InstanceState::Waiting && i.not_before > since && i.not_before <= now
                })
            })
        });
        self.new_work |= backoff_over;
        let due: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.next_fire.is_some_and(|t| t <= now))
            .map(|j| j.spec.id.clone())
            .collect();
        for id in due {
            self.fire(&id, now, &mut actions);
        }
        let timed_out: Vec<(String, u32, u64)> = self
            .jobs
            .values()
            .flat_map(|j| {
                j.runs
                    .iter()
                    .filter(move |r| r.state.is_active() && r.deadline.is_some_and(|d| d <= now))
                    .map(move |r| (j.spec.id.clone(), r.number, j.spec.timeout_ms.unwrap_or(0)))
            })
            .collect();
        for (id, number, timeout) in timed_out {
            let why = format!("timed out after {}", show_ms(timeout));
            actions.extend(self.kill_runs(&id, Some(number), &why, RunState::Failed, now));
        }
        let mut unknown = Vec::new();
        let mut lost = Vec::new();
        for job in self.jobs.values() {
            for run in &job.runs {
                for inst in &run.instances {
                    if let Some(a) = inst.current().filter(|a| a.ended_at.is_none())
                        && let Some(since) = a.unknown_since
                    {
                        if now - since >= self.reconcile_grace_ms {
                            lost.push((a.task_id.clone(), a.state != LAUNCHED_STATE));
                        } else {
                            unknown.push(a.task_id.clone());
                        }
                    }
                }
            }
        }
        for (task_id, heard_of) in lost {
            // A task no agent ever reported was most likely never launched
            // (the framework stopped between storing and sending it): it is
            // dropped, not counted. One that ran is lost, and counts.
            let (state, message) = if heard_of {
                (TaskState::TaskLost, "the master does not know this task")
            } else {
                (
                    TaskState::TaskDropped,
                    "never launched: the master does not know this task",
                )
            };
            let status = TaskStatus {
                task_id: Some(v1::TaskId { value: task_id }),
                state: state as i32,
                message: message.into(),
                ..Default::default()
            };
            actions.extend(self.on_status(&status, now));
        }
        if !unknown.is_empty() && now - self.last_reconcile >= RECONCILE_EVERY_MS {
            self.last_reconcile = now;
            actions.push(Action::Reconcile(unknown));
        }
        actions
    }

    fn fire(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.next_fire = job
            .spec
            .schedule
            .as_deref()
            .and_then(|cron| next_fire(cron, &job.spec.timezone, now));
        let mut start = true;
        if job.has_active_run() {
            match job.spec.concurrency {
                Concurrency::Allow => {}
                Concurrency::Forbid => {
                    job.skipped_runs += 1;
                    start = false;
                    tracing::info!(job = %id, "schedule fired while a run is active; skipped (concurrency = forbid)");
                }
                Concurrency::Replace => {
                    actions.extend(self.kill_runs(
                        id,
                        None,
                        "replaced by a scheduled run",
                        RunState::Killed,
                        now,
                    ));
                }
            }
        }
        if start && let Some(job) = self.jobs.get_mut(id) {
            new_run(job, Trigger::Schedule, now);
            self.new_work = true;
        }
        self.touch(id);
        self.fail_if_blocked(id, now);
    }

    // ---- dependencies ------------------------------------------------------------------

    fn rebuild_dependents(&mut self) {
        self.dependents.clear();
        for job in self.jobs.values() {
            for dep in &job.spec.depends_on {
                self.dependents
                    .entry(dep.clone())
                    .or_default()
                    .push(job.spec.id.clone());
            }
        }
    }

    fn deps(&self, job: &Job) -> Deps {
        for dep in &job.spec.depends_on {
            let Some(d) = self.jobs.get(dep) else {
                return Deps::Failed(format!("dependency `{dep}` no longer exists"));
            };
            match d.latest().map(|r| (r.number, r.state)) {
                Some((_, RunState::Succeeded)) => {}
                Some((n, s @ (RunState::Failed | RunState::Killed))) if !d.has_active_run() => {
                    return Deps::Failed(format!("dependency `{dep}` run {n} {}", s.as_str()));
                }
                _ => return Deps::Waiting,
            }
        }
        Deps::Ready
    }

    /// If `id`'s dependencies have already failed, fails its waiting runs
    /// (which have no tasks to kill).
    fn fail_if_blocked(&mut self, id: &str, now: Millis) {
        let mut no_tasks = Vec::new();
        self.fail_blocked(id, now, &mut no_tasks);
    }

    fn fail_blocked(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(job) = self.jobs.get(id) else { return };
        let Deps::Failed(why) = self.deps(job) else {
            return;
        };
        let waiting: Vec<u32> = job
            .runs
            .iter()
            .filter(|r| r.state == RunState::Queued)
            .map(|r| r.number)
            .collect();
        if waiting.is_empty() {
            return;
        }
        for n in waiting {
            if let Some(run) = self.jobs.get_mut(id).and_then(|j| j.run_mut(n)) {
                end_run(run, RunState::Failed, &why, now, actions);
            }
            self.touch(id);
            self.run_ended(id, n, now, actions);
        }
    }

    /// After run `number` of `id` ended: wake, start or stop its dependents,
    /// and trim history.
    fn run_ended(&mut self, id: &str, number: u32, now: Millis, actions: &mut Vec<Action>) {
        let Some(job) = self.jobs.get(id) else { return };
        match job.run(number).map(|r| r.state) {
            Some(RunState::Succeeded) => self.counters.runs_succeeded += 1,
            Some(RunState::Failed) => self.counters.runs_failed += 1,
            Some(RunState::Killed) => self.counters.runs_killed += 1,
            _ => {}
        }
        let succeeded = job
            .run(number)
            .is_some_and(|r| r.state == RunState::Succeeded);
        let users = self.dependents.get(id).cloned().unwrap_or_default();
        // A waiting dependent may be ready now.
        self.new_work |= succeeded && !users.is_empty();
        for user in users {
            if succeeded {
                // A dependency that succeeds again re-runs an unscheduled
                // dependent that is idle, once all its dependencies are good.
                let start = self.jobs.get(&user).is_some_and(|u| {
                    u.spec.schedule.is_none()
                        && !u.has_active_run()
                        && !u.runs.is_empty()
                        && matches!(self.deps(u), Deps::Ready)
                });
                if start && let Some(u) = self.jobs.get_mut(&user) {
                    new_run(u, Trigger::Dependency, now);
                    self.touch(&user);
                }
            } else {
                self.fail_blocked(&user, now, actions);
            }
        }
        self.trim_history(id);
    }

    fn trim_history(&mut self, id: &str) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let ended = job.runs.iter().filter(|r| !r.state.is_active()).count();
        if ended <= RUN_HISTORY {
            return;
        }
        let mut drop = ended - RUN_HISTORY;
        let mut gone = Vec::new();
        job.runs.retain(|r| {
            let still_live = r.instances.iter().any(|i| i.state.has_task());
            if drop > 0 && !r.state.is_active() && !still_live {
                drop -= 1;
                gone.extend(
                    r.instances
                        .iter()
                        .flat_map(|i| i.attempts.iter().map(|a| a.task_id.clone())),
                );
                false
            } else {
                true
            }
        });
        for t in gone {
            self.tasks.remove(&t);
        }
    }

    fn index_tasks(&mut self, id: &str) {
        let Some(job) = self.jobs.get(id) else { return };
        for run in &job.runs {
            for (i, inst) in run.instances.iter().enumerate() {
                for (a, attempt) in inst.attempts.iter().enumerate() {
                    self.tasks.insert(
                        attempt.task_id.clone(),
                        TaskRef {
                            job: id.to_string(),
                            run: run.number,
                            instance: i,
                            attempt: a,
                        },
                    );
                }
            }
        }
    }
}

/// Attempts that count against `retries`: all but those never launched.
fn counted_attempts(inst: &Instance) -> usize {
    inst.attempts
        .iter()
        .filter(|a| a.state != TaskState::TaskDropped.as_str_name())
        .count()
}

fn unknown(id: &str) -> EngineError {
    EngineError::NotFound(format!("unknown job `{id}`"))
}

fn name_of(state: TaskState) -> String {
    state.as_str_name().to_string()
}

fn show_ms(ms: u64) -> String {
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn new_run(job: &mut Job, trigger: Trigger, now: Millis) -> u32 {
    let number = job.next_run;
    job.next_run += 1;
    job.runs.push(Run {
        number,
        trigger,
        state: RunState::Queued,
        message: String::new(),
        queued_at: now,
        started_at: None,
        ended_at: None,
        deadline: None,
        instances: (0..job.spec.instances)
            .map(|index| Instance {
                index,
                state: InstanceState::Waiting,
                not_before: now,
                attempts: Vec::new(),
            })
            .collect(),
    });
    number
}

/// Ends `run` in `state`: kills its live tasks, cancels its waiting instances.
fn end_run(run: &mut Run, state: RunState, why: &str, now: Millis, actions: &mut Vec<Action>) {
    run.state = state;
    run.message = why.to_string();
    run.ended_at = Some(now);
    run.deadline = None;
    for inst in run.instances.iter_mut() {
        match inst.state {
            InstanceState::Waiting => {
                inst.state = if state == RunState::Failed {
                    InstanceState::Failed
                } else {
                    InstanceState::Killed
                };
            }
            InstanceState::Launching | InstanceState::Running => {
                if let Some(a) = inst.current() {
                    actions.push(Action::Kill(a.task_id.clone()));
                }
            }
            _ => {}
        }
    }
}

/// The schedule's next firing strictly after `now`.
pub fn next_fire(cron: &str, timezone: &str, now: Millis) -> Option<Millis> {
    let cron = spec::parse_cron(cron).ok()?;
    let tz = chrono_tz::Tz::from_str(timezone).ok()?;
    let now = chrono::DateTime::from_timestamp_millis(now)?.with_timezone(&tz);
    cron.find_next_occurrence(&now, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Finds a cycle through `start` in the dependency graph, as a path.
fn find_cycle(start: &str, deps_of: &dyn Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
    fn walk(
        node: &str,
        start: &str,
        deps_of: &dyn Fn(&str) -> Vec<String>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for dep in deps_of(node) {
            if dep == start {
                path.push(dep);
                return true;
            }
            if seen.insert(dep.clone()) {
                path.push(dep.clone());
                if walk(&dep, start, deps_of, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    let mut seen = BTreeSet::new();
    walk(start, start, deps_of, &mut path, &mut seen).then_some(path)
}

mod placement;
#[cfg(test)]
mod tests;
