//! What a load measures of each task's way to running, and how it is
//! summed up: percentiles of accept sent → `TASK_RUNNING` received, the
//! two hops either side of the launch reaching its agent (when emulated
//! agents in the same process note it), and the latency over time, a
//! quarter of a second at a time — a tail made of a few stalls, when the
//! whole pipeline waited, looks different there from one spread evenly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When each task's launch reached its (emulated) agent, by task id: the
/// emulator notes it, the load framework takes it when the task runs.
/// Only for an emulator and a load in one process (one clock).
#[derive(Debug, Default)]
pub struct LaunchTimes(Mutex<HashMap<String, Instant>>);

impl LaunchTimes {
    pub fn note(&self, task: &str, at: Instant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.to_string(), at);
    }

    pub(crate) fn take(&self, task: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task)
    }
}

/// One task that ran.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ran {
    /// Its accept was sent.
    pub sent: Instant,
    /// Its launch reached its agent, if noted.
    pub launched: Option<Instant>,
    /// Its `TASK_RUNNING` was received.
    pub running: Instant,
}

impl Ran {
    fn latency_ms(&self) -> f64 {
        ms(self.running.saturating_duration_since(self.sent))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Accept → `TASK_RUNNING` in two hops: accept sent → launch received by
/// the agent (the framework's connection, the master's core, the agent's
/// connection), and launch received → `TASK_RUNNING` received by the
/// framework (the agent's updates through the master to the framework).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Hops {
    pub to_agent_p50_ms: f64,
    pub to_agent_p99_ms: f64,
    pub back_p50_ms: f64,
    pub back_p99_ms: f64,
    /// Of the slowest 1% of tasks (by whole latency), the mean of each hop.
    pub slowest_to_agent_mean_ms: f64,
    pub slowest_back_mean_ms: f64,
}

/// The tasks whose accepts were sent in one window of the load.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Window {
    /// The window's start, in seconds from the load's first accept.
    pub from_seconds: f64,
    pub tasks: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// How long each [`Window`] is.
pub const WINDOW: Duration = Duration::from_millis(250);

/// What a load's tasks measured, summed up.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Summary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// With every task's launch noted.
    pub hops: Option<Hops>,
    pub windows: Vec<Window>,
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

pub(crate) fn summarize(ran: &[Ran]) -> Summary {
    let Some(first) = ran.iter().map(|r| r.sent).min() else {
        return Summary::default();
    };
    let latencies = sorted(ran.iter().map(Ran::latency_ms).collect());
    Summary {
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        hops: hops(ran),
        windows: windows(ran, first),
    }
}

/// The hops, if every task's launch was noted (a partial split would
/// describe a sample no one chose).
fn hops(ran: &[Ran]) -> Option<Hops> {
    let mut split: Vec<(f64, f64)> = ran
        .iter()
        .map(|r| {
            let launched = r.launched?;
            Some((
                ms(launched.saturating_duration_since(r.sent)),
                ms(r.running.saturating_duration_since(launched)),
            ))
        })
        .collect::<Option<_>>()?;
    if split.is_empty() {
        return None;
    }
    split.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
    let slowest = &split[split.len() - split.len().div_ceil(100)..];
    let mean =
        |hop: fn(&(f64, f64)) -> f64| slowest.iter().map(hop).sum::<f64>() / slowest.len() as f64;
    let to_agent = sorted(split.iter().map(|s| s.0).collect());
    let back = sorted(split.iter().map(|s| s.1).collect());
    Some(Hops {
        to_agent_p50_ms: percentile(&to_agent, 0.5),
        to_agent_p99_ms: percentile(&to_agent, 0.99),
        back_p50_ms: percentile(&back, 0.5),
        back_p99_ms: percentile(&back, 0.99),
        slowest_to_agent_mean_ms: mean(|s| s.0),
        slowest_back_mean_ms: mean(|s| s.1),
    })
}

/// The tasks by the window their accept was sent in, from `first`.
fn windows(ran: &[Ran], first: Instant) -> Vec<Window> {
    let mut by_window: Vec<Vec<f64>> = Vec::new();
    for r in ran {
        let at = r.sent.saturating_duration_since(first).as_nanos() / WINDOW.as_nanos();
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        if at >= by_window.len() {
            by_window.resize_with(at + 1, Vec::new);
        }
        by_window[at].push(r.latency_ms());
    }
    by_window
        .into_iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(at, latencies)| {
            let latencies = sorted(latencies);
            Window {
                from_seconds: (WINDOW * at as u32).as_secs_f64(),
                tasks: latencies.len(),
                p50_ms: percentile(&latencies, 0.5),
                p99_ms: percentile(&latencies, 0.99),
                max_ms: latencies.last().copied().unwrap_or(0.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(start: Instant, sent_ms: u64, to_agent_ms: u64, back_ms: u64) -> Ran {
        let sent = start + Duration::from_millis(sent_ms);
        let launched = sent + Duration::from_millis(to_agent_ms);
        Ran {
            sent,
            launched: Some(launched),
            running: launched + Duration::from_millis(back_ms),
        }
    }

    #[test]
    fn the_slowest_hundredth_is_split_at_the_launch() {
        let start = Instant::now();
        // 198 quick tasks, and two slow ones: one slow to reach its agent,
        // one slow to come back.
        let mut tasks: Vec<Ran> = (0..198).map(|i| ran(start, i, 1, 1)).collect();
        tasks.push(ran(start, 10, 90, 2));
        tasks.push(ran(start, 20, 4, 60));
        let s = summarize(&tasks);
        assert_eq!(s.max_ms, 92.0);
        assert_eq!(s.p50_ms, 2.0);
        let hops = s.hops.expect("every launch was noted");
        assert_eq!(hops.to_agent_p50_ms, 1.0);
        assert_eq!(hops.back_p50_ms, 1.0);
        // The slowest 1% of 200 are those two.
        assert_eq!(hops.slowest_to_agent_mean_ms, 47.0);
        assert_eq!(hops.slowest_back_mean_ms, 31.0);
    }

    #[test]
    fn no_split_unless_every_launch_was_noted() {
        let start = Instant::now();
        let mut tasks = vec![ran(start, 0, 1, 1)];
        tasks.push(Ran {
            launched: None,
            ..ran(start, 1, 1, 1)
        });
        assert_eq!(summarize(&tasks).hops, None);
        assert_eq!(summarize(&[]), Summary::default());
    }

    #[test]
    fn windows_follow_the_accepts_and_show_a_stall() {
        let start = Instant::now();
        // Four tasks a millisecond for a second; those sent in the third
        // quarter waited 80 ms more.
        let tasks: Vec<Ran> = (0..4000)
            .map(|i| {
                let sent_ms = i / 4;
                let stalled = (500..750).contains(&sent_ms);
                ran(start, sent_ms, 1, if stalled { 81 } else { 1 })
            })
            .collect();
        let windows = summarize(&tasks).windows;
        assert_eq!(windows.len(), 4);
        assert_eq!(
            windows.iter().map(|w| w.from_seconds).collect::<Vec<_>>(),
            [0.0, 0.25, 0.5, 0.75]
        );
        assert!(windows.iter().all(|w| w.tasks == 1000));
        assert_eq!(
            windows.iter().map(|w| w.p99_ms).collect::<Vec<_>>(),
            [2.0, 2.0, 82.0, 2.0]
        );
        // A gap (no accepts in a window) leaves no empty window.
        let sparse = [ran(start, 0, 1, 1), ran(start, 900, 1, 1)];
        let windows = summarize(&sparse).windows;
        assert_eq!(
            windows.iter().map(|w| w.from_seconds).collect::<Vec<_>>(),
            [0.0, 0.75]
        );
    }
}
