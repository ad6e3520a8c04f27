//! Counters and histograms the core keeps, and their Prometheus text
//! exposition (format 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A cumulative histogram with fixed upper bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if value <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A histogram that many threads observe into without a lock: what the
/// operators' threads measure themselves, not the core.
#[derive(Debug)]
pub struct SharedHistogram {
    bounds: &'static [f64],
    /// Per bound, observations not above it (cumulative, as rendered).
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl SharedHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        SharedHistogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// What it holds now (observations under way may be half in).
    pub fn load(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

const PASS_BOUNDS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];
const UPDATE_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// What the master counts as it works.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub offers_made: u64,
    pub offers_declined: u64,
    pub offers_rescinded: u64,
    pub tasks_launched: u64,
    pub invalid_accepts: u64,
    /// Registrations refused: a wrong secret, or an agent marked gone.
    pub registrations_refused: u64,
    pub status_updates: u64,
    /// Events that waited in a framework's backlog (its stream was full).
    pub events_backlogged: u64,
    /// Peer streams ended because the peer fell too far behind.
    pub peer_streams_cut: u64,
    /// Snapshots of the state published for readers.
    pub snapshots_published: u64,
    /// Registry commits (as of the last snapshot).
    pub registry_commits: u64,
    pub allocation_pass_seconds: Histogram,
    /// From the master relaying an agent's update to the framework's
    /// acknowledgement of it.
    pub status_update_ack_seconds: Histogram,
    /// One turn of the core: a burst of messages (or a tick) and what
    /// follows it (commit hand-off, allocation, publication). Nothing else
    /// moves meanwhile, so its tail is every message's added latency.
    pub core_turn_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            offers_made: 0,
            offers_declined: 0,
            offers_rescinded: 0,
            tasks_launched: 0,
            invalid_accepts: 0,
            registrations_refused: 0,
            status_updates: 0,
            events_backlogged: 0,
            peer_streams_cut: 0,
            snapshots_published: 0,
            registry_commits: 0,
            allocation_pass_seconds: Histogram::new(PASS_BOUNDS),
            status_update_ack_seconds: Histogram::new(UPDATE_BOUNDS),
            core_turn_seconds: Histogram::new(PASS_BOUNDS),
        }
    }
}

/// Gauges taken from the state at scrape time.
pub struct Gauges<'a> {
    /// (kind, total, used, offered) per scalar resource.
    pub resources: Vec<(&'a str, f64, f64, f64)>,
    pub agents_by_status: Vec<(&'a str, usize)>,
    pub frameworks_active: usize,
    pub frameworks_inactive: usize,
    pub tasks_by_state: Vec<(String, usize)>,
    pub offers_outstanding: usize,
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

impl Metrics {
    /// The Prometheus text exposition of counters, histograms and `gauges`.
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let mut out = String::new();
        for (metric, help, pick) in [
            (
                "agora_resources_total",
                "Resources of registered agents, by kind.",
                1,
            ),
            (
                "agora_resources_used",
                "Resources used by running tasks, by kind.",
                2,
            ),
            (
                "agora_resources_offered",
                "Resources in outstanding offers, by kind.",
                3,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
            for (kind, total, used, offered) in &gauges.resources {
                let v = match pick {
                    1 => total,
                    2 => used,
                    _ => offered,
                };
                let _ = writeln!(out, "{metric}{{resource=\"{kind}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP agora_agents Agents by status.\n# TYPE agora_agents gauge"
        );
        for (status, n) in &gauges.agents_by_status {
            let _ = writeln!(out, "agora_agents{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP agora_frameworks Frameworks by connection.\n# TYPE agora_frameworks gauge"
        );
        let _ = writeln!(
            out,
            "agora_frameworks{{active=\"true\"}} {}",
            gauges.frameworks_active
        );
        let _ = writeln!(
            out,
            "agora_frameworks{{active=\"false\"}} {}",
            gauges.frameworks_inactive
        );
        let _ = writeln!(
            out,
            "# HELP agora_tasks Known tasks by state.\n# TYPE agora_tasks gauge"
        );
        for (state, n) in &gauges.tasks_by_state {
            let _ = writeln!(out, "agora_tasks{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP agora_offers_outstanding Offers not yet answered.\n# TYPE agora_offers_outstanding gauge"
        );
        let _ = writeln!(
            out,
            "agora_offers_outstanding {}",
            gauges.offers_outstanding
        );
        counter(
            &mut out,
            "agora_offers_made_total",
            "Offers sent to frameworks.",
            self.offers_made,
        );
        counter(
            &mut out,
            "agora_offers_declined_total",
            "Offers declined by frameworks.",
            self.offers_declined,
        );
        counter(
            &mut out,
            "agora_offers_rescinded_total",
            "Offers rescinded by the master.",
            self.offers_rescinded,
        );
        counter(
            &mut out,
            "agora_registry_commits_total",
            "Transactions committed to the registry (each writes and syncs what was queued).",
            self.registry_commits,
        );
        counter(
            &mut out,
            "agora_tasks_launched_total",
            "Tasks sent to agents.",
            self.tasks_launched,
        );
        counter(
            &mut out,
            "agora_invalid_accepts_total",
            "Accepts refused as invalid.",
            self.invalid_accepts,
        );
        counter(
            &mut out,
            "agora_agent_registrations_refused_total",
            "Agent registrations refused (a wrong secret for the id, or an agent marked gone).",
            self.registrations_refused,
        );
        counter(
            &mut out,
            "agora_status_updates_total",
            "Status updates received from agents.",
            self.status_updates,
        );
        counter(
            &mut out,
            "agora_framework_events_backlogged_total",
            "Events that waited in a framework's backlog because its stream was full.",
            self.events_backlogged,
        );
        counter(
            &mut out,
            "agora_peer_streams_cut_total",
            "Agent sessions and framework streams ended because the peer fell too far behind.",
            self.peer_streams_cut,
        );
        counter(
            &mut out,
            "agora_snapshots_published_total",
            "Snapshots of the state published for readers (HTTP API, metrics, web UI).",
            self.snapshots_published,
        );
        self.allocation_pass_seconds.render(
            &mut out,
            "agora_allocation_pass_seconds",
            "Duration of allocation passes.",
        );
        self.status_update_ack_seconds.render(
            &mut out,
            "agora_status_update_ack_seconds",
            "From relaying a status update to the framework's acknowledgement.",
        );
        self.core_turn_seconds.render(
            &mut out,
            "agora_core_turn_seconds",
            "One turn of the master's core: a burst of messages or a tick, then allocation and publication.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"));
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }

    #[test]
    fn shared_histograms_count_like_owned_ones() {
        let shared = SharedHistogram::new(&[0.001, 0.01]);
        for ms in [0, 1, 5, 20] {
            shared.observe(Duration::from_millis(ms));
        }
        let h = shared.load();
        assert_eq!(h.counts, [2, 3]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 0.026).abs() < 1e-9, "{}", h.sum);
    }
}
