//! Whole-system batch benchmark through `agora dev`: jobs per second for N
//! `true` jobs (submission to all `SUCCEEDED`), next to the floor of N plain
//! fork/execs of `sh -c true` in the same run; and submit → `RUNNING` latency
//! on an idle cluster (p50, p99).
//!
//! `cargo bench --bench batch` (as root, with cgroups).
//! `AGORA_BENCH_JOBS=N` (default 10000), `AGORA_BENCH_LATENCY=M` (default 100).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Dev {
    child: Child,
    url: String,
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

fn start_dev() -> Dev {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(dev_args())
        .env("AGORA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("agora dev");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listen line");
    let url = line
        .trim()
        .split_once("listening on ")
        .map(|(_, u)| u.to_string())
        .expect("listen line");
    Dev {
        child,
        url,
        _data: data,
    }
}

/// Extra `agora dev` flags from `AGORA_BENCH_DEV_ARGS` (e.g.
/// `--containerizer process`).
fn dev_args() -> Vec<String> {
    std::env::var("AGORA_BENCH_DEV_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// N fork/execs of `sh -c true`, as many at once as there are cores.
fn floor(n: usize) -> f64 {
    let width = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    let mut running: Vec<Child> = Vec::new();
    for _ in 0..n {
        if running.len() >= width {
            let _ = running.remove(0).wait();
        }
        running.push(
            Command::new("sh")
                .args(["-c", "true"])
                .spawn()
                .expect("spawn"),
        );
    }
    for mut c in running {
        let _ = c.wait();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .get(format!("{url}/batch/v1/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "the batch API never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(client: &reqwest::Client, url: &str, spec: String) {
    let r = client
        .post(format!("{url}/batch/v1/jobs"))
        .body(spec)
        .send()
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
}

async fn counts(client: &reqwest::Client, url: &str) -> (usize, usize) {
    let jobs: Value = client
        .get(format!("{url}/batch/v1/jobs"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let list = jobs["jobs"].as_array().cloned().unwrap_or_default();
    let done = list.iter().filter(|j| j["state"] == "SUCCEEDED").count();
    let failed = list
        .iter()
        .filter(|j| j["state"] == "FAILED" || j["state"] == "KILLED")
        .count();
    (done, failed)
}

async fn throughput(n: usize) -> f64 {
    let dev = start_dev();
    let client = reqwest::Client::new();
    wait_ready(&client, &dev.url).await;
    let t = Instant::now();
    let per_request = 500;
    let mut submitted = 0;
    while submitted < n {
        let mut spec = String::new();
        for i in submitted..(submitted + per_request).min(n) {
            spec.push_str(&format!(
                "[[job]]\nid = \"bench-{i}\"\ncmd = \"true\"\ncpus = 0.01\nmem = 16\n"
            ));
        }
        submitted = (submitted + per_request).min(n);
        submit(&client, &dev.url, spec).await;
    }
    let submit_time = t.elapsed();
    eprintln!("  submitted {n} jobs in {:.1} s", submit_time.as_secs_f64());
    let mut last_report = Instant::now();
    loop {
        let (done, failed) = counts(&client, &dev.url).await;
        assert_eq!(failed, 0, "jobs failed");
        if done == n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {done}/{n} succeeded after {:.0} s",
                t.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Submit → RUNNING for `m` jobs, one at a time on an idle cluster, from the
/// job's own record (submission time and the first RUNNING update).
async fn latency(m: usize) -> (f64, f64) {
    let dev = start_dev();
    let client = reqwest::Client::new();
    wait_ready(&client, &dev.url).await;
    let mut samples = Vec::with_capacity(m);
    for i in 0..m {
        let id = format!("idle-{i}");
        submit(
            &client,
            &dev.url,
            format!("id = \"{id}\"\ncmd = \"true\"\ncpus = 0.1\nmem = 16\n"),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job: Value = client
                .get(format!("{}/batch/v1/jobs/{id}", dev.url))
                .send()
                .await
                .expect("job")
                .json()
                .await
                .expect("JSON");
            if job["state"] == "SUCCEEDED" {
                let submitted = job["submitted_at"].as_i64().expect("submitted_at");
                let running = job["runs"][0]["instances"][0]["attempts"][0]["running_at"]
                    .as_i64()
                    .expect("running_at");
                samples.push((running - submitted) as f64);
                break;
            }
            assert!(Instant::now() < deadline, "{id} did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("AGORA_BENCH_JOBS", 10_000);
    let m = env("AGORA_BENCH_LATENCY", 100);
    println!(
        "batch benchmark: {n} `true` jobs through `agora dev {}` (one agent, this machine)\n",
        dev_args().join(" ")
    );
    let _ = std::io::stdout().flush();
    let floor = floor(n);
    let rate = throughput(n).await;
    let (p50, p99) = latency(m).await;
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| floor: {n} fork/execs of `sh -c true` | {floor:.0} /s |");
    println!("| {n} `true` jobs, submit → all SUCCEEDED | {rate:.0} jobs/s |");
    println!("| submit → RUNNING on an idle cluster, p50 ({m} jobs) | {p50:.0} ms |");
    println!("| submit → RUNNING, p99 | {p99:.0} ms |");
}
