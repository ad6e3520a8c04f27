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
    /// Connection bounds on the master's port.
    pub serve: crate::serve::ServeLimits,
    /// Heartbeats per second the agents may send in all: a big cluster's
    /// agents heartbeat less often (and are given longer before they count
    /// as unreachable) rather than swamp the master, as Nomad does.
    pub max_agent_heartbeats_per_second: f64,
    /// Who may call, and what each principal may do.
    pub auth: std::sync::Arc<crate::auth::Authority>,
    /// Where mutating operator calls are recorded (JSON lines), if anywhere.
    pub audit_log: Option<std::path::PathBuf>,
    /// The master's certificate and key (and the CA of accepted client
    /// certificates): without them the port speaks plaintext.
    pub tls: Option<agora_proto::tls::ServerTlsFiles>,
    /// What the master trusts when it calls agents' and frameworks' HTTP
    /// APIs over https.
    pub client_tls: agora_proto::tls::ClientTls,
    /// A framework's API must begin to answer a request the master relays
    /// within this (the body may stream as long as it likes); else the
    /// caller is answered 504, not held by a framework that froze.
    pub relay_timeout: Duration,
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
            // Wins the simulated contention experiment without narrowing what
            // a lone framework sees (simulator/README.md).
            offer_policy: crate::allocator::OfferPolicy::Demand,
            serve: crate::serve::ServeLimits::default(),
            max_agent_heartbeats_per_second: 5000.0,
            relay_timeout: Duration::from_secs(60),
            auth: crate::auth::Authority::disabled(),
            audit_log: None,
            tls: None,
            client_tls: agora_proto::tls::ClientTls::default(),
        }
    }
}

/// A flag value the master cannot use.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("--weights: `{0}` is not `role=weight` with a weight between 1e-6 and 1e6")]
    BadWeight(String),
    #[error("--weights: {0}")]
    BadRole(String),
}

/// Longest role name.
pub const MAX_ROLE_LENGTH: usize = 128;
/// Smallest and largest role weight: beyond them shares stop being numbers.
pub const WEIGHT_RANGE: std::ops::RangeInclusive<f64> = 1e-6..=1e6;
/// Longest failover timeout a framework may ask for: a year.
pub const MAX_FAILOVER_TIMEOUT_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Whether `role` is a role name: `*`, or `/`-separated parts of letters,
/// digits, `.`, `_` and `-` (not `.` or `..`, not starting with `-`), at
/// most 128 characters (Mesos's rules, short of its length).
pub fn validate_role(role: &str) -> Result<(), String> {
    if role == "*" {
        return Ok(());
    }
    let shown: String = role
        .chars()
        .take(40)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if role.is_empty() || role.len() > MAX_ROLE_LENGTH {
        return Err(format!(
            "role `{shown}`: must be 1 to {MAX_ROLE_LENGTH} characters"
        ));
    }
    for part in role.split('/') {
        let ok = !part.is_empty()
            && part != "."
            && part != ".."
            && !part.starts_with('-')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(format!(
                "role `{shown}`: use `/`-separated parts of letters, digits, `.`, `_` and `-` (not `.`, `..` or a leading `-`)"
            ));
        }
    }
    Ok(())
}

/// Whether `weight` is a usable role weight.
pub fn validate_weight(weight: f64) -> Result<(), String> {
    if weight.is_finite() && WEIGHT_RANGE.contains(&weight) {
        Ok(())
    } else {
        Err(format!(
            "weight must be a number between {} and {}, not {weight}",
            WEIGHT_RANGE.start(),
            WEIGHT_RANGE.end()
        ))
    }
}

/// Parses `--weights 'prod=2,dev=1'`.
pub fn parse_weights(text: &str) -> Result<BTreeMap<String, f64>, ConfigError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || ConfigError::BadWeight(item.to_string());
        let (role, weight) = item.split_once('=').ok_or_else(bad)?;
        let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
        validate_role(role.trim()).map_err(ConfigError::BadRole)?;
        validate_weight(weight).map_err(|_| bad())?;
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
        assert_eq!(
            parse_weights("tiny=5e-324"),
            Err(ConfigError::BadWeight("tiny=5e-324".into()))
        );
        assert!(matches!(
            parse_weights("a\u{1}b=2"),
            Err(ConfigError::BadRole(_))
        ));
    }

    #[test]
    fn role_names_follow_the_rules() {
        for good in ["*", "prod", "eng/backend", "team-a.v2", "a_b"] {
            assert_eq!(validate_role(good), Ok(()), "{good}");
        }
        let long = "r".repeat(MAX_ROLE_LENGTH + 1);
        for bad in [
            "", "a\u{1}b", "..", "a/../b", "/a", "a/", "-a", "a b", &long,
        ] {
            assert!(validate_role(bad).is_err(), "{bad:?}");
        }
    }
}
