//! The discrete-event simulation: virtual time, an event queue, the
//! master's offer cycle around the **real** allocator (`DrfAllocator`, the
//! master's, with its offer policy), and frameworks in the Omega model —
//! each holds the offers it gets, decides for `t_job + t_task × tasks` per
//! job it considers, then launches what it placed and declines the rest
//! with a refusal filter. Offers outlive the offer timeout only at the
//! framework's risk: a rescinded offer's placements are lost (a conflict)
//! and tried again.
//!
//! Deterministic: the same scenario and seed give the same events in the
//! same order (ordered maps only, one seeded generator per framework).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Instant;

use agora_master::allocator::{Allocator, Demand, DrfAllocator};
use agora_master::offer_book::OfferBook;
use agora_proto::Resources;

use crate::dist::Rng;
use crate::report::{ClusterSample, FrameworkReport, Report, percentile};
use crate::scenario::{EventKind, Ms, Scenario};
use crate::workload::{JobSource, TraceJob};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A framework's next job arrives.
    Arrival(usize),
    /// An allocation pass.
    Allocate,
    /// The periodic allocation tick (filters expire, batch passes).
    Tick,
    /// A framework finished deciding on the offers it held.
    Decided(usize),
    TaskEnd(u64),
    /// A scenario event (index into its list).
    Scenario(usize),
    Sample,
}

/// One task of `job`.
fn job_need(job: &TraceJob) -> Resources {
    Resources::new()
        .with_scalar("cpus", job.cpus)
        .with_scalar("mem", job.mem)
}

/// What the simulator remembers of an offer: its framework and agent by
/// number.
#[derive(Clone, Copy)]
struct OfferTag {
    framework: usize,
    agent: usize,
}

struct SimTask {
    framework: usize,
    /// The framework's job it belongs to (lost tasks go back as that job).
    job: u64,
    agent: usize,
    resources: Resources,
    /// To resubmit it if its machine fails.
    duration_ms: f64,
}

struct QueuedJob {
    job: TraceJob,
    remaining: u32,
    attempts: u32,
    arrived: Ms,
}

/// A decision in progress: which offers it uses and what goes where.
struct Decision {
    offers: Vec<u64>,
    /// (offer, queue position's job id, tasks placed there).
    placements: Vec<(u64, u64, u32)>,
}

struct SimFramework {
    name: String,
    t_job_ms: f64,
    t_task_ms: f64,
    max_attempts: u32,
    jobs_per_offer: Option<u32>,
    source: JobSource,
    queue: VecDeque<(u64, QueuedJob)>,
    next_job_id: u64,
    inbox: Vec<u64>,
    deciding: Option<Decision>,
    suppressed: bool,
    /// What its arrived jobs still want placed, kept as they change (a
    /// slow scheduler's backlog can be tens of thousands of jobs).
    pending: Demand,
    /// What it last told the allocator it wants placed.
    demand: Demand,
    // Outcomes.
    submitted: u64,
    scheduled: u64,
    abandoned: u64,
    waits_ms: Vec<f64>,
    busy_ms: f64,
    tasks_launched: u64,
    conflicts: u64,
    offers_received: u64,
    tasks_lost: u64,
}

struct SimAgent {
    id: String,
    total: Resources,
    rack: String,
    alive: bool,
}

/// How far a run has got, for progress displays.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub simulated_ms: Ms,
    pub duration_ms: Ms,
    pub events: u64,
    pub wall_seconds: f64,
}

/// The simulation of one scenario.
pub struct Sim {
    scenario: Scenario,
    now: Ms,
    queue: BinaryHeap<Reverse<(Ms, u64, Ev)>>,
    seq: u64,
    allocator: DrfAllocator,
    agents: Vec<SimAgent>,
    offers: OfferBook<u64, OfferTag>,
    next_offer: u64,
    frameworks: Vec<SimFramework>,
    tasks: BTreeMap<u64, SimTask>,
    next_task: u64,
    allocate_pending: bool,
    events: u64,
    offers_made: u64,
    offers_rescinded: u64,
    samples: Vec<ClusterSample>,
    used: Resources,
    agents_failed: u64,
}

const PREFILL: &str = "__prefill";

impl Sim {
    pub fn new(scenario: Scenario) -> Sim {
        let mut allocator = DrfAllocator::with_policy(scenario.offer_policy);
        let root = Rng::new(scenario.seed);
        let mut agents = Vec::new();
        for class in &scenario.machines {
            for k in 0..class.count {
                let n = agents.len();
                agents.push(SimAgent {
                    id: format!("a{n}"),
                    total: class.resources.clone(),
                    rack: format!("r{}", k % class.racks),
                    alive: true,
                });
            }
        }
        if scenario.prefill > 0.0 {
            allocator.add_framework(PREFILL, PREFILL, false);
        }
        let mut used = Resources::new();
        for a in &agents {
            allocator.add_agent(&a.id, a.total.clone(), &[]);
            if scenario.prefill > 0.0 {
                let fill = Resources::new()
                    .with_scalar("cpus", a.total.scalar("cpus") * scenario.prefill)
                    .with_scalar("mem", a.total.scalar("mem") * scenario.prefill);
                allocator.allocate_used(PREFILL, &a.id, &fill);
                used.add(&fill);
            }
        }
        let mut frameworks = Vec::new();
        for (i, f) in scenario.frameworks.iter().enumerate() {
            allocator.set_weight(&f.role, f.weight);
            allocator.add_framework(&f.name, &f.role, true);
            // Nothing to do yet: no offers until the first job.
            allocator.suppress(&f.name);
            frameworks.push(SimFramework {
                name: f.name.clone(),
                t_job_ms: f.t_job_ms,
                t_task_ms: f.t_task_ms,
                max_attempts: f.max_attempts,
                jobs_per_offer: f.jobs_per_offer,
                source: JobSource::new(f.workload.clone(), root.fork(i as u64 + 1)),
                queue: VecDeque::new(),
                next_job_id: 0,
                inbox: Vec::new(),
                deciding: None,
                suppressed: true,
                pending: Demand::default(),
                demand: Demand::default(),
                submitted: 0,
                scheduled: 0,
                abandoned: 0,
                waits_ms: Vec::new(),
                busy_ms: 0.0,
                tasks_launched: 0,
                conflicts: 0,
                offers_received: 0,
                tasks_lost: 0,
            });
        }
        let mut sim = Sim {
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            allocator,
            agents,
            offers: OfferBook::new(),
            next_offer: 0,
            frameworks,
            tasks: BTreeMap::new(),
            next_task: 0,
            allocate_pending: false,
            events: 0,
            offers_made: 0,
            offers_rescinded: 0,
            samples: Vec::new(),
            used,
            agents_failed: 0,
            scenario,
        };
        for fw in 0..sim.frameworks.len() {
            sim.schedule_next_arrival(fw);
        }
        for i in 0..sim.scenario.events.len() {
            let at = sim.scenario.events[i].at_ms;
            sim.at(at, Ev::Scenario(i));
        }
        sim.at(0, Ev::Sample);
        sim.at(sim.scenario.allocation_interval_ms, Ev::Tick);
        sim
    }

    fn at(&mut self, time: Ms, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq, ev)));
    }

    fn request_allocation(&mut self) {
        if !self.allocate_pending {
            self.allocate_pending = true;
            self.at(self.now, Ev::Allocate);
        }
    }

    fn schedule_next_arrival(&mut self, fw: usize) {
        if let Some(job) = self.frameworks[fw].source.next_job()
            && job.submit_ms <= self.scenario.duration_ms
        {
            let f = &mut self.frameworks[fw];
            let id = f.next_job_id;
            f.next_job_id += 1;
            // Parked at the back of the queue only when it arrives.
            f.queue.push_back((
                id,
                QueuedJob {
                    remaining: job.tasks,
                    job: job.clone(),
                    attempts: 0,
                    arrived: u64::MAX,
                },
            ));
            self.at(job.submit_ms.max(self.now), Ev::Arrival(fw));
        }
    }

    /// Runs to the scenario's end; `progress` is called now and then.
    pub fn run(mut self, progress: &mut dyn FnMut(Progress)) -> Report {
        let started = Instant::now();
        let mut last_report = Instant::now();
        while let Some(Reverse((time, _, ev))) = self.queue.pop() {
            if time > self.scenario.duration_ms {
                break;
            }
            self.now = time;
            self.events += 1;
            self.handle(ev);
            if self.events.is_multiple_of(4096) && last_report.elapsed().as_millis() >= 500 {
                last_report = Instant::now();
                progress(Progress {
                    simulated_ms: self.now,
                    duration_ms: self.scenario.duration_ms,
                    events: self.events,
                    wall_seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        self.now = self.scenario.duration_ms;
        self.sample();
        let wall = started.elapsed().as_secs_f64();
        progress(Progress {
            simulated_ms: self.now,
            duration_ms: self.scenario.duration_ms,
            events: self.events,
            wall_seconds: wall,
        });
        self.report(wall)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival(fw) => self.arrival(fw),
            Ev::Allocate => {
                self.allocate_pending = false;
                self.allocate(false);
            }
            Ev::Tick => {
                // As the master's tick: offers out longer than the timeout
                // are rescinded (to the tick, not the millisecond).
                let expired = self
                    .offers
                    .expired(self.now, self.scenario.offer_timeout_ms);
                let rescinded = !expired.is_empty();
                for offer in expired {
                    self.rescind(offer);
                }
                if rescinded || self.frameworks.iter().any(|f| !f.suppressed) {
                    self.allocate(true);
                }
                let next = self.now + self.scenario.allocation_interval_ms;
                self.at(next, Ev::Tick);
            }
            Ev::Decided(fw) => self.decided(fw),
            Ev::TaskEnd(task) => {
                if let Some(t) = self.tasks.remove(&task) {
                    let agent = &self.agents[t.agent];
                    if agent.alive {
                        self.allocator.recover(
                            &self.frameworks[t.framework].name,
                            &agent.id,
                            &t.resources,
                            None,
                        );
                        self.used.subtract(&t.resources);
                        self.request_allocation();
                    }
                }
            }
            Ev::Scenario(i) => self.scenario_event(i),
            Ev::Sample => {
                self.sample();
                let next = self.now + self.scenario.sample_interval_ms;
                self.at(next, Ev::Sample);
            }
        }
    }

    fn arrival(&mut self, fw: usize) {
        let now = self.now;
        let f = &mut self.frameworks[fw];
        // The job that arrives is the one parked (at the back) with no
        // arrival time.
        if let Some((_, job)) = f
            .queue
            .iter_mut()
            .rev()
            .find(|(_, j)| j.arrived == u64::MAX)
        {
            job.arrived = now;
            f.submitted += 1;
            f.pending.add(&job_need(&job.job), job.remaining);
        }
        if f.suppressed {
            f.suppressed = false;
            let name = f.name.clone();
            self.allocator.revive(&name);
            self.request_allocation();
        }
        self.schedule_next_arrival(fw);
        self.declare_demand(fw);
        self.maybe_decide(fw);
    }

    /// Tells the allocator what the framework's arrived jobs still want
    /// placed, when that changed (policies that do not size offers
    /// ignore it).
    fn declare_demand(&mut self, fw: usize) {
        let f = &mut self.frameworks[fw];
        let demand = f.pending.clone();
        if demand != f.demand {
            f.demand = demand.clone();
            let name = f.name.clone();
            self.allocator.set_demand(&name, Some(demand));
            // As the master does after a call that changes allocation.
            self.request_allocation();
        }
    }

    /// A pass over every agent (`full`, as the master's periodic pass), or
    /// over what changed (as its event-driven ones).
    fn allocate(&mut self, full: bool) {
        let allocations = if full {
            self.allocator.allocate(self.now)
        } else {
            self.allocator.allocate_changed(self.now)
        };
        let mut touched = BTreeSet::new();
        for a in allocations {
            let Some(fw) = self.frameworks.iter().position(|f| f.name == a.framework) else {
                continue;
            };
            let Some(agent) = a.agent[1..].parse::<usize>().ok() else {
                continue;
            };
            let id = self.next_offer;
            self.next_offer += 1;
            self.offers_made += 1;
            self.offers.open(
                id,
                a,
                self.now,
                OfferTag {
                    framework: fw,
                    agent,
                },
            );
            self.frameworks[fw].inbox.push(id);
            self.frameworks[fw].offers_received += 1;
            touched.insert(fw);
        }
        for fw in touched {
            self.maybe_decide(fw);
        }
    }

    /// Declines an outstanding offer: the framework is not offered the
    /// agent again for the refusal period.
    fn decline(&mut self, offer: u64, refuse: bool) {
        let until = refuse.then_some(self.now + self.scenario.refuse_ms);
        self.offers.give_back(&offer, until, &mut self.allocator);
    }

    fn rescind(&mut self, offer: u64) {
        if let Some(o) = self.offers.get(&offer) {
            let fw = o.tag.framework;
            self.frameworks[fw].inbox.retain(|x| *x != offer);
        }
        self.offers_rescinded += 1;
        self.decline(offer, false);
    }

    /// Starts a decision if the framework is idle, holds offers and has
    /// work; declines (and suppresses) when it has none.
    fn maybe_decide(&mut self, fw: usize) {
        let f = &self.frameworks[fw];
        if f.deciding.is_some() || f.inbox.is_empty() {
            return;
        }
        let waiting = f.queue.iter().any(|(_, j)| j.arrived != u64::MAX);
        if !waiting {
            let inbox = std::mem::take(&mut self.frameworks[fw].inbox);
            for offer in inbox {
                self.decline(offer, true);
            }
            let f = &mut self.frameworks[fw];
            if !f.suppressed {
                f.suppressed = true;
                let name = f.name.clone();
                self.allocator.suppress(&name);
            }
            return;
        }
        let offers = std::mem::take(&mut self.frameworks[fw].inbox);
        let mut free: Vec<(u64, Resources)> = offers
            .iter()
            .filter_map(|id| self.offers.get(id).map(|o| (*id, o.resources.clone())))
            .collect();
        let f = &mut self.frameworks[fw];
        let mut placements = Vec::new();
        let mut time_ms = 0.0;
        let now = self.now;
        let mut considered = 0u32;
        for (job_id, job) in f.queue.iter_mut() {
            if job.arrived == u64::MAX || job.arrived > now {
                continue;
            }
            if f.jobs_per_offer.is_some_and(|n| considered >= n) {
                break;
            }
            considered += 1;
            let need = Resources::new()
                .with_scalar("cpus", job.job.cpus)
                .with_scalar("mem", job.job.mem);
            let mut placed = 0u32;
            for (offer, room) in free.iter_mut() {
                let mut here = 0u32;
                while placed < job.remaining && room.contains(&need) {
                    room.subtract(&need);
                    here += 1;
                    placed += 1;
                }
                if here > 0 {
                    placements.push((*offer, *job_id, here));
                }
                if placed == job.remaining {
                    break;
                }
            }
            job.attempts += 1;
            time_ms += f.t_job_ms + f.t_task_ms * f64::from(placed);
            if placed == 0 {
                // Head of line: what is left does not fit this job.
                break;
            }
        }
        let time = time_ms.max(1.0).round() as Ms;
        // Only the part of the decision inside the run counts as busy.
        let end = self.scenario.duration_ms;
        f.busy_ms += (now + time).min(end).saturating_sub(now) as f64;
        f.deciding = Some(Decision { offers, placements });
        self.at(now + time, Ev::Decided(fw));
    }

    fn decided(&mut self, fw: usize) {
        let Some(decision) = self.frameworks[fw].deciding.take() else {
            return;
        };
        let now = self.now;
        // What each offer's placements take; a rescinded offer's are lost.
        let mut launched_per_job: BTreeMap<u64, u32> = BTreeMap::new();
        for offer in &decision.offers {
            let Some(o) = self.offers.get(offer) else {
                let lost = decision.placements.iter().any(|(x, _, _)| x == offer);
                if lost {
                    self.frameworks[fw].conflicts += 1;
                }
                continue;
            };
            let agent = o.tag.agent;
            let mut used = Resources::new();
            for (_, job_id, n) in decision.placements.iter().filter(|(x, _, _)| x == offer) {
                let Some((_, job)) = self.frameworks[fw]
                    .queue
                    .iter()
                    .find(|(id, _)| id == job_id)
                else {
                    continue;
                };
                let need = Resources::new()
                    .with_scalar("cpus", job.job.cpus)
                    .with_scalar("mem", job.job.mem);
                let duration = job.job.duration_ms;
                for _ in 0..*n {
                    used.add(&need);
                    let id = self.next_task;
                    self.next_task += 1;
                    self.tasks.insert(
                        id,
                        SimTask {
                            framework: fw,
                            job: *job_id,
                            agent,
                            resources: need.clone(),
                            duration_ms: duration,
                        },
                    );
                    let end = now + duration.round().max(1.0) as Ms;
                    self.at(end, Ev::TaskEnd(id));
                }
                *launched_per_job.entry(*job_id).or_default() += n;
            }
            self.used.add(&used);
            self.frameworks[fw].tasks_launched += decision
                .placements
                .iter()
                .filter(|(x, _, _)| x == offer)
                .map(|(_, _, n)| u64::from(*n))
                .sum::<u64>();
            // The offer ends: what was used stays allocated, the rest is
            // declined with the refusal filter.
            if let Some(o) = self.offers.take(offer, &mut self.allocator) {
                let unused = o.resources.minus(&used);
                let until = Some(now + self.scenario.refuse_ms);
                self.allocator
                    .recover(&o.framework, &o.agent, &unused, until);
            }
        }
        let f = &mut self.frameworks[fw];
        for (job_id, n) in launched_per_job {
            if let Some((_, job)) = f.queue.iter_mut().find(|(id, _)| *id == job_id) {
                let placed = n.min(job.remaining);
                job.remaining -= placed;
                f.pending.remove(&job_need(&job.job), placed);
            }
        }
        let max_attempts = f.max_attempts;
        let mut kept = VecDeque::with_capacity(f.queue.len());
        for (id, job) in f.queue.drain(..) {
            if job.arrived != u64::MAX && job.remaining == 0 {
                f.scheduled += 1;
                f.waits_ms.push(now.saturating_sub(job.arrived) as f64);
            } else if job.arrived != u64::MAX && job.attempts >= max_attempts {
                f.abandoned += 1;
                f.pending.remove(&job_need(&job.job), job.remaining);
            } else {
                kept.push_back((id, job));
            }
        }
        f.queue = kept;
        self.declare_demand(fw);
        self.request_allocation();
        self.maybe_decide(fw);
    }

    fn scenario_event(&mut self, i: usize) {
        match self.scenario.events[i].kind.clone() {
            EventKind::FailAgents { rack, count } => {
                let mut chosen: Vec<usize> = (0..self.agents.len())
                    .filter(|&a| self.agents[a].alive)
                    .filter(|&a| rack.as_ref().is_none_or(|r| self.agents[a].rack == *r))
                    .collect();
                if let Some(n) = count {
                    chosen.truncate(n);
                }
                let mut lost = Vec::new();
                for a in chosen {
                    lost.extend(self.fail_agent(a));
                }
                self.resubmit(lost);
                self.request_allocation();
            }
            EventKind::AddAgents { count, resources } => {
                for _ in 0..count {
                    let n = self.agents.len();
                    let id = format!("a{n}");
                    self.allocator.add_agent(&id, resources.clone(), &[]);
                    self.agents.push(SimAgent {
                        id,
                        total: resources.clone(),
                        rack: "added".into(),
                        alive: true,
                    });
                }
                self.request_allocation();
            }
        }
    }

    /// A machine fails: its offers go and its tasks are lost (returned, for
    /// [`Sim::resubmit`]).
    fn fail_agent(&mut self, agent: usize) -> Vec<SimTask> {
        self.agents[agent].alive = false;
        self.agents_failed += 1;
        // Its offers vanish with it (the allocator drops the agent below).
        for offer in self.offers.ids_where(|o| o.tag.agent == agent) {
            if let Some(o) = self.offers.take(&offer, &mut self.allocator) {
                self.frameworks[o.tag.framework]
                    .inbox
                    .retain(|x| *x != offer);
                self.offers_rescinded += 1;
            }
        }
        let lost: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.agent == agent)
            .map(|(id, _)| *id)
            .collect();
        let mut lost_tasks = Vec::new();
        for id in lost {
            if let Some(t) = self.tasks.remove(&id) {
                self.used.subtract(&t.resources);
                lost_tasks.push(t);
            }
        }
        if self.scenario.prefill > 0.0 {
            let fill = Resources::new()
                .with_scalar(
                    "cpus",
                    self.agents[agent].total.scalar("cpus") * self.scenario.prefill,
                )
                .with_scalar(
                    "mem",
                    self.agents[agent].total.scalar("mem") * self.scenario.prefill,
                );
            self.used.subtract(&fill);
        }
        self.allocator.remove_agent(&self.agents[agent].id);
        lost_tasks
    }

    /// Lost tasks come back to their frameworks to be placed again (the
    /// recovery is measured): those of one job as one job, as a framework
    /// would relaunch a job's lost instances together.
    fn resubmit(&mut self, lost: Vec<SimTask>) {
        let now = self.now;
        let mut per_job: BTreeMap<(usize, u64), (u32, SimTask)> = BTreeMap::new();
        for t in lost {
            per_job
                .entry((t.framework, t.job))
                .and_modify(|(n, _)| *n += 1)
                .or_insert((1, t));
        }
        let mut touched = BTreeSet::new();
        for ((fw, _), (count, t)) in per_job {
            let f = &mut self.frameworks[fw];
            f.tasks_lost += u64::from(count);
            let id = f.next_job_id;
            f.next_job_id += 1;
            f.submitted += 1;
            // A lost task's resources are one task of its job's.
            f.pending.add(&t.resources, count);
            f.queue.push_back((
                id,
                QueuedJob {
                    job: TraceJob {
                        submit_ms: now,
                        tasks: count,
                        duration_ms: t.duration_ms,
                        cpus: t.resources.scalar("cpus"),
                        mem: t.resources.scalar("mem"),
                    },
                    remaining: count,
                    attempts: 0,
                    arrived: now,
                },
            ));
            touched.insert(fw);
        }
        for fw in touched {
            let f = &mut self.frameworks[fw];
            if f.suppressed {
                f.suppressed = false;
                let name = f.name.clone();
                self.allocator.revive(&name);
            }
            self.declare_demand(fw);
        }
    }

    fn sample(&mut self) {
        let (mut total_cpus, mut alive) = (0.0, 0u64);
        for a in self.agents.iter().filter(|a| a.alive) {
            total_cpus += a.total.scalar("cpus");
            alive += 1;
        }
        let offered: f64 = self
            .offers
            .values()
            .map(|o| o.resources.scalar("cpus"))
            .sum();
        let pending: u64 = self
            .frameworks
            .iter()
            .map(|f| {
                f.queue
                    .iter()
                    .filter(|(_, j)| j.arrived != u64::MAX)
                    .count() as u64
            })
            .sum();
        let share = |x: f64| {
            if total_cpus > 0.0 {
                x / total_cpus
            } else {
                0.0
            }
        };
        let mut offered_by: BTreeMap<String, f64> = BTreeMap::new();
        for o in self.offers.values() {
            *offered_by
                .entry(self.frameworks[o.tag.framework].name.clone())
                .or_default() += share(o.resources.scalar("cpus"));
        }
        self.samples.push(ClusterSample {
            offered_by,
            t_seconds: self.now as f64 / 1000.0,
            used_cpus: share(self.used.scalar("cpus")),
            offered_cpus: share(offered),
            agents: alive,
            pending_jobs: pending,
        });
    }

    fn report(self, wall_seconds: f64) -> Report {
        let duration = self.scenario.duration_ms as f64;
        let frameworks = self
            .frameworks
            .iter()
            .map(|f| {
                let mut waits: Vec<f64> = f.waits_ms.iter().map(|w| w / 1000.0).collect();
                waits.sort_by(f64::total_cmp);
                let pending = f
                    .queue
                    .iter()
                    .filter(|(_, j)| j.arrived != u64::MAX)
                    .count() as u64;
                FrameworkReport {
                    name: f.name.clone(),
                    jobs_submitted: f.submitted,
                    jobs_scheduled: f.scheduled,
                    jobs_abandoned: f.abandoned,
                    jobs_pending: pending,
                    abandoned_share: if f.submitted > 0 {
                        f.abandoned as f64 / f.submitted as f64
                    } else {
                        0.0
                    },
                    wait_mean_s: if waits.is_empty() {
                        0.0
                    } else {
                        waits.iter().sum::<f64>() / waits.len() as f64
                    },
                    wait_p50_s: percentile(&waits, 0.5),
                    wait_p90_s: percentile(&waits, 0.9),
                    wait_p99_s: percentile(&waits, 0.99),
                    busy_fraction: f.busy_ms / duration,
                    tasks_launched: f.tasks_launched,
                    tasks_lost: f.tasks_lost,
                    conflicts: f.conflicts,
                    offers_received: f.offers_received,
                }
            })
            .collect();
        let utilisation = if self.samples.is_empty() {
            0.0
        } else {
            self.samples.iter().map(|s| s.used_cpus).sum::<f64>() / self.samples.len() as f64
        };
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            offer_policy: self.scenario.offer_policy.name(),
            simulated_seconds: duration / 1000.0,
            agents: self.agents.len() as u64,
            agents_failed: self.agents_failed,
            events: self.events,
            offers_made: self.offers_made,
            offers_rescinded: self.offers_rescinded,
            rescind_rate: if self.offers_made > 0 {
                self.offers_rescinded as f64 / self.offers_made as f64
            } else {
                0.0
            },
            mean_utilisation: utilisation,
            frameworks,
            samples: self.samples,
            wall_seconds,
        }
    }
}
