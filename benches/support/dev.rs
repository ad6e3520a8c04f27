//! `agora dev` for the whole-system benchmarks: started on an ephemeral
//! port with its data in a temporary directory, stopped (SIGTERM) when
//! dropped.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Dev {
    child: Child,
    pub url: String,
    _data: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Starts `agora dev` with `extra` flags and waits for its listen line.
pub fn start_dev(extra: &[String]) -> Dev {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(extra)
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agora dev");
    let url = listen_url(&mut child);
    Dev {
        child,
        url,
        _data: data,
    }
}

/// The URL in the `… listening on URL` line an `agora` process prints first.
pub fn listen_url(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    line.trim()
        .split_once("listening on ")
        .map(|(_, u)| u.to_string())
        .expect("listen line")
}

/// Extra `agora dev` flags from `AGORA_BENCH_DEV_ARGS` (e.g.
/// `--containerizer process`).
pub fn dev_args() -> Vec<String> {
    std::env::var("AGORA_BENCH_DEV_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The `p` quantile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
