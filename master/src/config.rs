//! Master configuration: plain data, parsed by the binary, validated here.

use std::collections::BTreeMap;
use std::time::Duration;

/// How the master behaves; every field has an operator-facing flag.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// An agent silent for longer than this is unreachable. Also how long a
    /// master that recovers waits for known agents to re-register.
    pub agent_timeout: Duration,
    /// An agent unreachable for longer than this is removed from the
    /// registry; its tasks are `TASK_LOST`.
    pub agent_removal_timeout: Duration,
    /// Offers not answered within this are rescinded.
    pub offer_timeout: Duration,
    /// Period of the batch allocation pass (events also trigger passes).
    pub allocation_interval: Duration,
    /// Period of heartbeat events to frameworks.
    pub framework_heartbeat: Duration,
    /// Role weights for DRF (absent roles weigh 1).
    pub role_weights: BTreeMap<String, f64>,
    /// Terminal tasks kept for the state endpoint.
    pub completed_task_history: usize,
    /// How allocation passes spread free resources over frameworks.
    pub offer_policy: crate::allocator::OfferPolicy,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            agent_timeout: Duration::from_secs(15),
            agent_removal_timeout: Duration::from_secs(3600),
            offer_timeout: Duration::from_secs(30),
            allocation_interval: Duration::from_secs(1),
            framework_heartbeat: Duration::from_secs(15),
            role_weights: BTreeMap::new(),
            completed_task_history: 1000,
            // `capped` wins the simulated contention experiment but narrows
            // what a lone framework sees at once (simulator/README.md); the
            // default stays Mesos's until that is solved.
            offer_policy: crate::allocator::OfferPolicy::Mesos,
        }
    }
}

/// A flag value the master cannot use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--weights: `{0}` is not `role=weight` with a weight > 0")]
    BadWeight(String),
}

/// Parses `--weights 'prod=2,dev=1'`.
pub fn parse_weights(text: &str) -> Result<BTreeMap<String, f64>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || ConfigError::BadWeight(item.to_string());
        let (role, weight) = item.split_once('=').ok_or_else(bad)?;
        let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
        if role.trim().is_empty() || !weight.is_finite() || weight <= 0.0 {
            return Err(bad());
        }
        out.insert(role.trim().to_string(), weight);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_refuse_nonsense() {
        let w = parse_weights("prod=2, dev=1").expect("valid");
        assert_eq!(w.get("prod"), Some(&2.0));
        assert_eq!(
            parse_weights("prod"),
            Err(ConfigError::BadWeight("prod".into()))
        );
        assert_eq!(
            parse_weights("prod=-1"),
            Err(ConfigError::BadWeight("prod=-1".into()))
        );
    }
}
