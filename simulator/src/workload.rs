//! Where jobs come from: synthetic generators (distributions of
//! inter-arrival time, tasks per job, task duration and size), a documented
//! CSV trace, and the Google cluster-data 2011 tables.

pub mod google;
pub mod trace;

use crate::dist::Rng;
use crate::scenario::{Ms, Workload};

/// One job: when it is submitted, how many tasks, how long each runs, and
/// how large each is.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceJob {
    pub submit_ms: Ms,
    pub tasks: u32,
    pub duration_ms: f64,
    pub cpus: f64,
    pub mem: f64,
}

/// A framework's stream of jobs, in submission order.
pub struct JobSource {
    workload: Workload,
    rng: Rng,
    next_at: f64,
    made: u64,
    replay: usize,
}

/// Most tasks one job may have (a guard against a wild distribution).
const MAX_TASKS: f64 = 100_000.0;

impl JobSource {
    pub fn new(workload: Workload, rng: Rng) -> JobSource {
        JobSource {
            workload,
            rng,
            next_at: 0.0,
            made: 0,
            replay: 0,
        }
    }

    /// The next job, or `None` when the workload is exhausted.
    pub fn next_job(&mut self) -> Option<TraceJob> {
        match &self.workload {
            Workload::Synthetic {
                interarrival_ms,
                tasks,
                duration_ms,
                cpus,
                mem,
                max_jobs,
            } => {
                if max_jobs.is_some_and(|m| self.made >= m) {
                    return None;
                }
                self.made += 1;
                self.next_at += interarrival_ms.sample(&mut self.rng);
                Some(TraceJob {
                    submit_ms: self.next_at.round() as Ms,
                    tasks: tasks.sample(&mut self.rng).round().clamp(1.0, MAX_TASKS) as u32,
                    duration_ms: duration_ms.sample(&mut self.rng).max(1.0),
                    cpus: cpus.sample(&mut self.rng).max(0.001),
                    mem: mem.sample(&mut self.rng).max(1.0),
                })
            }
            Workload::Trace(jobs) => {
                let job = jobs.get(self.replay)?.clone();
                self.replay += 1;
                Some(job)
            }
        }
    }
}
