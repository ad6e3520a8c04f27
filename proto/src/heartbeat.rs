//! Heartbeat timing shared by agents and emulated agents.

use std::time::Duration;

/// Where in each `period` the heartbeats keyed by `key` (an agent's
/// hostname or id) fall: a fixed fraction of the period from a hash of the
/// key. Agents whose interval changes at the same moment (a master telling
/// every agent of a grown cluster) would otherwise all beat in step, and the
/// master would get every heartbeat of the cluster at once.
pub fn phase(key: &str, period: Duration) -> Duration {
    // FNV-1a: stable across runs and platforms.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    period.mul_f64((hash % 10_000) as f64 / 10_000.0)
}

/// The interval a master's message asks for (`seconds`; `0` or nonsense:
/// none), at most an hour.
pub fn interval(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// [`interval`], if it differs from `current`.
pub fn new_interval(seconds: f64, current: Duration) -> Option<Duration> {
    interval(seconds).filter(|d| *d != current)
}

/// A heartbeat timer of `period` whose first tick comes at the key's phase.
pub fn timer(key: &str, period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut timer =
        tokio::time::interval_at(tokio::time::Instant::now() + phase(key, period), period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_stable_within_the_period_and_spread() {
        let period = Duration::from_secs(10);
        assert_eq!(phase("agent-1", period), phase("agent-1", period));
        let phases: Vec<Duration> = (0..1000)
            .map(|i| phase(&format!("emulated-{i}"), period))
            .collect();
        assert!(phases.iter().all(|p| *p < period));
        // Spread over the period: every tenth of it is hit.
        for tenth in 0..10 {
            let (lo, hi) = (period * tenth / 10, period * (tenth + 1) / 10);
            assert!(phases.iter().any(|p| *p >= lo && *p < hi), "{tenth}");
        }
    }
}
