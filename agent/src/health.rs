//! Health checks, run by the agent next to the task (as Mesos does, rather
//! than from a far-away scheduler): HTTP (`GET path`, 2xx/3xx healthy), TCP
//! (a connect) and command (exit 0), each with a grace period, an interval,
//! a timeout and a count of consecutive failures that gets the task killed.
//!
//! The checker is a small state machine ([`HealthState`]) fed by the results
//! of probes; the loop around it ([`run_checks`]) does the I/O and reports
//! changes to the agent's event loop.

use std::path::PathBuf;
use std::time::Duration;

use agora_proto::v1::{HealthCheck, health_check::Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How a check reaches its task.
#[derive(Clone, Debug)]
pub struct CheckTarget {
    /// The task's host port the check's `port_index` names, if any.
    pub port: Option<u64>,
    /// The task's sandbox and environment, for command checks.
    pub sandbox: PathBuf,
    pub env: Vec<(String, String)>,
}

/// What a checker tells the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum HealthEvent {
    /// The task's health changed (first result after the grace period, or a
    /// flip).
    Changed { healthy: bool, message: String },
    /// Too many consecutive failures: kill the task.
    Exhausted { message: String },
}

/// The pure part of a checker: counts results and decides what to report.
#[derive(Debug)]
pub struct HealthState {
    started: Instant,
    grace: Duration,
    max_failures: u32,
    failures: u32,
    healthy: Option<bool>,
    exhausted: bool,
}

impl HealthState {
    pub fn new(check: &HealthCheck, started: Instant) -> HealthState {
        HealthState {
            started,
            grace: secs(check.grace_period_seconds, 0.0),
            max_failures: check.max_consecutive_failures,
            failures: 0,
            healthy: None,
            exhausted: false,
        }
    }

    /// Records one probe's result at `now`; returns what to report, if
    /// anything. Failures inside the grace period do not count — but a
    /// success inside it ends the grace (Marathon's rule), so a task that
    /// was healthy once is judged from then on.
    pub fn record(&mut self, now: Instant, result: Result<(), String>) -> Option<HealthEvent> {
        if self.exhausted {
            return None;
        }
        match result {
            Ok(()) => {
                self.failures = 0;
                self.grace = Duration::ZERO;
                if self.healthy != Some(true) {
                    self.healthy = Some(true);
                    return Some(HealthEvent::Changed {
                        healthy: true,
                        message: "health check passed".into(),
                    });
                }
                None
            }
            Err(why) => {
                if now.duration_since(self.started) < self.grace {
                    return None;
                }
                self.failures += 1;
                if self.max_failures > 0 && self.failures >= self.max_failures {
                    self.exhausted = true;
                    self.healthy = Some(false);
                    return Some(HealthEvent::Exhausted {
                        message: format!(
                            "health check failed {} times in a row: {why}",
                            self.failures
                        ),
                    });
                }
                if self.healthy != Some(false) {
                    self.healthy = Some(false);
                    return Some(HealthEvent::Changed {
                        healthy: false,
                        message: format!("health check failed: {why}"),
                    });
                }
                None
            }
        }
    }
}

fn secs(value: f64, default: f64) -> Duration {
    let v = if value.is_finite() && value > 0.0 {
        value
    } else {
        default
    };
    Duration::from_secs_f64(v.min(86_400.0))
}

/// Probes the task every interval until `report` returns false (nobody
/// listens) or the failures are exhausted.
pub async fn run_checks(
    check: HealthCheck,
    target: CheckTarget,
    mut report: impl FnMut(HealthEvent) -> bool + Send,
) {
    let interval = secs(check.interval_seconds, 10.0);
    let timeout = secs(check.timeout_seconds, 20.0);
    let mut state = HealthState::new(&check, Instant::now());
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(timeout, probe(&check, &target)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if let Some(event) = state.record(Instant::now(), result) {
            let exhausted = matches!(event, HealthEvent::Exhausted { .. });
            if !report(event) || exhausted {
                return;
            }
        }
    }
}

async fn probe(check: &HealthCheck, target: &CheckTarget) -> Result<(), String> {
    let protocol = Protocol::try_from(check.protocol).unwrap_or(Protocol::None);
    let addr = || {
        target
            .port
            .map(|p| format!("127.0.0.1:{p}"))
            .ok_or_else(|| "the task has no port for the check".to_string())
    };
    match protocol {
        Protocol::None => Ok(()),
        Protocol::Tcp => {
            let addr = addr()?;
            tokio::net::TcpStream::connect(&addr)
                .await
                .map(drop)
                .map_err(|e| format!("connecting to {addr}: {e}"))
        }
        Protocol::Http => {
            let addr = addr()?;
            let path = if check.path.is_empty() {
                "/"
            } else {
                check.path.as_str()
            };
            http_get(&addr, path).await
        }
        Protocol::Command => {
            let mut child = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&check.command)
                .current_dir(&target.sandbox)
                .env_clear()
                .envs(target.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting the check command: {e}"))?;
            let status = child
                .wait()
                .await
                .map_err(|e| format!("waiting for the check command: {e}"))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("the check command ended with {status}"))
            }
        }
    }
}

/// A minimal HTTP/1.1 GET: healthy on 2xx and 3xx.
async fn http_get(addr: &str, path: &str) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: agora-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response: `{line}`"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET {path} answered {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(grace: f64, max: u32) -> HealthCheck {
        HealthCheck {
            protocol: Protocol::Tcp as i32,
            grace_period_seconds: grace,
            interval_seconds: 1.0,
            timeout_seconds: 1.0,
            max_consecutive_failures: max,
            ..Default::default()
        }
    }

    #[test]
    fn failures_in_the_grace_period_do_not_count() {
        let t0 = Instant::now();
        let mut s = HealthState::new(&check(10.0, 2), t0);
        assert_eq!(s.record(t0 + Duration::from_secs(1), Err("x".into())), None);
        assert_eq!(s.record(t0 + Duration::from_secs(9), Err("x".into())), None);
        assert!(matches!(
            s.record(t0 + Duration::from_secs(11), Err("x".into())),
            Some(HealthEvent::Changed { healthy: false, .. })
        ));
        assert!(matches!(
            s.record(t0 + Duration::from_secs(12), Err("x".into())),
            Some(HealthEvent::Exhausted { .. })
        ));
        // Nothing after the verdict.
        assert_eq!(s.record(t0 + Duration::from_secs(13), Ok(())), None);
    }

    #[test]
    fn a_success_ends_the_grace_and_resets_failures() {
        let t0 = Instant::now();
        let mut s = HealthState::new(&check(60.0, 3), t0);
        assert!(matches!(
            s.record(t0, Ok(())),
            Some(HealthEvent::Changed { healthy: true, .. })
        ));
        assert_eq!(s.record(t0, Ok(())), None, "no change, no report");
        let t = t0 + Duration::from_secs(1);
        assert!(matches!(
            s.record(t, Err("down".into())),
            Some(HealthEvent::Changed { healthy: false, .. })
        ));
        assert_eq!(s.record(t, Err("down".into())), None);
        assert!(matches!(
            s.record(t, Ok(())),
            Some(HealthEvent::Changed { healthy: true, .. })
        ));
        // The count restarted: two more failures are not yet three.
        s.record(t, Err("down".into()));
        assert_eq!(s.record(t, Err("down".into())), None);
        assert!(matches!(
            s.record(t, Err("down".into())),
            Some(HealthEvent::Exhausted { .. })
        ));
    }

    #[test]
    fn zero_max_failures_never_kills() {
        let t0 = Instant::now();
        let mut s = HealthState::new(&check(0.0, 0), t0);
        for _ in 0..100 {
            assert!(!matches!(
                s.record(t0, Err("x".into())),
                Some(HealthEvent::Exhausted { .. })
            ));
        }
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("GET /ok ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let target = CheckTarget {
            port: Some(u64::from(port)),
            sandbox: std::env::temp_dir(),
            env: Vec::new(),
        };
        let mut c = check(0.0, 1);
        c.protocol = Protocol::Http as i32;
        c.path = "/ok".into();
        assert_eq!(probe(&c, &target).await, Ok(()));
        c.path = "/broken".into();
        let err = probe(&c, &target).await.expect_err("503 is unhealthy");
        assert!(err.contains("503"), "{err}");
        c.protocol = Protocol::Tcp as i32;
        assert_eq!(probe(&c, &target).await, Ok(()));
        c.protocol = Protocol::Command as i32;
        c.command = "test \"$CHECK\" = yes".into();
        let with_env = CheckTarget {
            env: vec![("CHECK".into(), "yes".into())],
            ..target.clone()
        };
        assert_eq!(probe(&c, &with_env).await, Ok(()));
        assert!(probe(&c, &target).await.is_err());
    }
}
