//! A real master process for the whole-system benchmarks (release build,
//! embedded registry in a temporary directory), killed when dropped; it
//! can be killed and started again on the same port and registry.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

#[path = "dev.rs"]
pub mod dev;

pub struct Master {
    child: Child,
    pub url: String,
    data: tempfile::TempDir,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(listen: &str, data: &std::path::Path) -> (Child, String) {
    spawn_with(listen, data, &[])
}

/// A master with `security` flags (`--auth FILE`, `--tls-cert …`) in place
/// of `--no-auth`.
fn spawn_with(listen: &str, data: &std::path::Path, security: &[String]) -> (Child, String) {
    // Another build's master, to tell the master's share of a change from
    // the rest (the emulator and frameworks run in the benchmark).
    let other = std::env::var("AGORA_BENCH_MASTER").ok();
    // Builds from before authentication have no `--no-auth`: say so with
    // `AGORA_BENCH_MASTER_BEFORE_AUTH=1`.
    let before_auth = std::env::var_os("AGORA_BENCH_MASTER_BEFORE_AUTH").is_some();
    let no_auth: &[&str] = if before_auth || !security.is_empty() {
        &[]
    } else {
        &["--no-auth"]
    };
    let binary = other.unwrap_or_else(|| env!("CARGO_BIN_EXE_agora").into());
    let mut child = Command::new(binary)
        .arg("master")
        .args(no_auth)
        .args(security)
        .args(["--listen", listen, "--data-dir"])
        .arg(data)
        // Emulated agents are many connections from one address.
        .args(["--max-connections-per-ip", "100000"])
        .args(["--max-connections", "100000"])
        // `AGORA_BENCH_MASTER_LOG=warn` shows the master's slow turns.
        .env(
            "AGORA_LOG",
            std::env::var("AGORA_BENCH_MASTER_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("agora master");
    let url = dev::listen_url(&mut child);
    (child, url)
}

impl Master {
    pub fn start() -> Master {
        Master::start_with(&[])
    }

    /// A master with `security` flags instead of `--no-auth`.
    pub fn start_with(security: &[String]) -> Master {
        let data = tempfile::tempdir().expect("tempdir");
        let (child, url) = spawn_with("127.0.0.1:0", data.path(), security);
        Master { child, url, data }
    }

    /// `kill -9`, then a new master on the same address and registry.
    /// Returns when the new one listens.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let listen = self.url.trim_start_matches("http://").to_string();
        let (child, url) = spawn(&listen, self.data.path());
        self.child = child;
        self.url = url;
    }

    /// CPU seconds (user and system) the master process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_in(&format!("/proc/{}/stat", self.child.id()))
    }

    /// CPU seconds each of the master's live threads has used so far, by
    /// thread id, with the thread's name (`master-core`, `registry-writer`,
    /// `master-operator`, `tokio-rt-worker`, …).
    pub fn thread_cpu_seconds(&self) -> std::collections::BTreeMap<u32, (String, f64)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| {
                let tid = t.file_name().to_str()?.parse().ok()?;
                let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
                let cpu = cpu_seconds_in(&t.path().join("stat").to_string_lossy());
                Some((tid, (name.trim().to_string(), cpu)))
            })
            .collect()
    }

    pub fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    }
}

/// User and system CPU seconds in a `/proc/.../stat` file
/// (`/proc/thread-self/stat`: the calling thread's).
pub fn cpu_seconds_in(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime and stime are fields 14 and 15, 12 and 13 after the name.
    let ticks_per_second = 100.0;
    (ticks(11).unwrap_or(0.0) + ticks(12).unwrap_or(0.0)) / ticks_per_second
}
