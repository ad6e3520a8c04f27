//! A reader for the Google cluster-data 2011 (version 2) tables
//! `job_events` and `task_events` — CSV without headers, timestamps in
//! microseconds, resource requests normalised to the largest machine:
//!
//! - job_events: time, missing info, job ID, event type, user, scheduling
//!   class, job name, logical job name;
//! - task_events: time, missing info, job ID, task index, machine ID, event
//!   type, user, scheduling class, priority, CPU request, memory request,
//!   disk request, different-machines restriction.
//!
//! Event types: 0 SUBMIT, 1 SCHEDULE, 2 EVICT, 3 FAIL, 4 FINISH, 5 KILL,
//! 6 LOST, 7 UPDATE_PENDING, 8 UPDATE_RUNNING. A job becomes one simulated
//! job: submitted at its SUBMIT, with as many tasks as it submitted, each
//! task's duration its SCHEDULE to its end, and the mean of its tasks'
//! requests scaled to `machine_cpus` and `machine_mem`.

use std::collections::BTreeMap;
use std::path::Path;

use super::TraceJob;

/// Which jobs to take: batch (scheduling class 0–1), service (2–3), or all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Class {
    Batch,
    Service,
    All,
}

#[derive(Default)]
struct JobRec {
    submit_us: Option<u64>,
    class: u8,
    tasks: BTreeMap<u64, TaskRec>,
}

#[derive(Default, Clone)]
struct TaskRec {
    scheduled_us: Option<u64>,
    ended_us: Option<u64>,
    cpu: f64,
    mem: f64,
}

fn field<'a>(cols: &[&'a str], k: usize, what: &str, line: usize) -> Result<&'a str, String> {
    cols.get(k)
        .copied()
        .ok_or_else(|| format!("line {line}: no column {k} ({what})"))
}

fn int(cols: &[&str], k: usize, what: &str, line: usize) -> Result<u64, String> {
    let v = field(cols, k, what, line)?;
    v.parse()
        .map_err(|_| format!("line {line}: {what} `{v}` is not a whole number"))
}

fn float_or_zero(cols: &[&str], k: usize) -> f64 {
    cols.get(k)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(0.0)
}

/// Reads both tables into jobs of `class`, in submission order, times
/// relative to the first submission.
pub fn read(
    job_events: &Path,
    task_events: &Path,
    machine_cpus: f64,
    machine_mem: f64,
    class: Class,
) -> Result<Vec<TraceJob>, String> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let jobs = read(job_events)?;
    let tasks = read(task_events)?;
    parse(&jobs, &tasks, machine_cpus, machine_mem, class)
}

pub fn parse(
    job_events: &str,
    task_events: &str,
    machine_cpus: f64,
    machine_mem: f64,
    class: Class,
) -> Result<Vec<TraceJob>, String> {
    let mut jobs: BTreeMap<u64, JobRec> = BTreeMap::new();
    for (i, line) in job_events.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        let time = int(&cols, 0, "time", line_no).map_err(|e| format!("job_events {e}"))?;
        let job = int(&cols, 2, "job ID", line_no).map_err(|e| format!("job_events {e}"))?;
        let event = int(&cols, 3, "event type", line_no).map_err(|e| format!("job_events {e}"))?;
        let sched = cols.get(5).and_then(|c| c.parse::<u8>().ok()).unwrap_or(0);
        let rec = jobs.entry(job).or_default();
        rec.class = sched;
        if event == 0 && rec.submit_us.is_none() {
            rec.submit_us = Some(time);
        }
    }
    for (i, line) in task_events.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split(',').collect();
        let time = int(&cols, 0, "time", line_no).map_err(|e| format!("task_events {e}"))?;
        let job = int(&cols, 2, "job ID", line_no).map_err(|e| format!("task_events {e}"))?;
        let index = int(&cols, 3, "task index", line_no).map_err(|e| format!("task_events {e}"))?;
        let event = int(&cols, 5, "event type", line_no).map_err(|e| format!("task_events {e}"))?;
        let Some(rec) = jobs.get_mut(&job) else {
            continue;
        };
        let task = rec.tasks.entry(index).or_default();
        match event {
            0 => {
                task.cpu = float_or_zero(&cols, 9);
                task.mem = float_or_zero(&cols, 10);
            }
            1 => {
                task.scheduled_us.get_or_insert(time);
            }
            2..=6 if task.ended_us.is_none() && task.scheduled_us.is_some() => {
                task.ended_us = Some(time);
            }
            _ => {}
        }
    }
    let first = jobs.values().filter_map(|j| j.submit_us).min().unwrap_or(0);
    let mut out: Vec<TraceJob> = jobs
        .values()
        .filter(|j| match class {
            Class::All => true,
            Class::Batch => j.class <= 1,
            Class::Service => j.class >= 2,
        })
        .filter_map(|j| {
            let submit = j.submit_us?;
            if j.tasks.is_empty() {
                return None;
            }
            let n = j.tasks.len() as f64;
            let durations: Vec<f64> = j
                .tasks
                .values()
                .filter_map(|t| Some((t.ended_us? - t.scheduled_us?) as f64 / 1000.0))
                .collect();
            // Tasks still running at the end of the trace: as long as the
            // longest that ended (or an hour).
            let duration_ms = if durations.is_empty() {
                3_600_000.0
            } else {
                durations.iter().sum::<f64>() / durations.len() as f64
            };
            let cpu = j.tasks.values().map(|t| t.cpu).sum::<f64>() / n;
            let mem = j.tasks.values().map(|t| t.mem).sum::<f64>() / n;
            Some(TraceJob {
                submit_ms: (submit - first) / 1000,
                tasks: j.tasks.len() as u32,
                duration_ms: duration_ms.max(1.0),
                cpus: (cpu * machine_cpus).max(0.001),
                mem: (mem * machine_mem).max(1.0),
            })
        })
        .collect();
    out.sort_by_key(|j| j.submit_ms);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_made_sample_reads_as_the_schema_says() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
        let jobs = read(
            &Path::new(dir).join("google-2011-sample/job_events.csv"),
            &Path::new(dir).join("google-2011-sample/task_events.csv"),
            4.0,
            16384.0,
            Class::All,
        )
        .expect("sample reads");
        assert_eq!(jobs.len(), 3);
        // Job 1: two tasks, submitted first, 60 s and 120 s long.
        assert_eq!(jobs[0].submit_ms, 0);
        assert_eq!(jobs[0].tasks, 2);
        assert!((jobs[0].duration_ms - 90_000.0).abs() < 1e-6);
        assert!((jobs[0].cpus - 0.25 * 4.0).abs() < 1e-9);
        assert!((jobs[0].mem - 0.0625 * 16384.0).abs() < 1e-6);
        // A service job (class 3) is only in the service selection.
        let service = read(
            &Path::new(dir).join("google-2011-sample/job_events.csv"),
            &Path::new(dir).join("google-2011-sample/task_events.csv"),
            4.0,
            16384.0,
            Class::Service,
        )
        .expect("sample reads");
        assert_eq!(service.len(), 1);
        assert_eq!(service[0].tasks, 1);
        assert!(
            parse("x,y", "", 1.0, 1.0, Class::All)
                .expect_err("bad")
                .contains("line 1")
        );
    }
}
