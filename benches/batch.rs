//! Whole-system batch benchmark through `agora dev`: jobs per second for N
//! `true` jobs (submission to all `SUCCEEDED`), next to the floor of N plain
//! fork/execs of `sh -c true` in the same run; and submit → `RUNNING` latency
//! on an idle cluster (p50, p99).
//!
//! `cargo bench --bench batch` (as root, with cgroups).
//! `AGORA_BENCH_JOBS=N` (default 10000), `AGORA_BENCH_LATENCY=M` (default 100).

use std::io::Write;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/dev.rs"]
mod dev;

use dev::{Dev, dev_args, percentile};

fn start_dev() -> Dev {
    dev::start_dev(&dev_args())
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

/// (succeeded, failed or killed) job counts.
async fn counts(client: &reqwest::Client, url: &str) -> (usize, usize) {
    let total = |state: &'static str| async move {
        let page: Value = client
            .get(format!("{url}/batch/v1/jobs?state={state}&limit=0"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("JSON");
        page["total"].as_u64().unwrap_or(0) as usize
    };
    (total("SUCCEEDED").await, total("FAILED,KILLED").await)
}

/// An SVG line chart of jobs succeeded over time.
fn plot(samples: &[(f64, usize)], n: usize, title: &str) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 320.0, 60.0, 40.0, 30.0, 20.0);
    let t_max = samples.last().map_or(1.0, |s| s.0).max(1.0);
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let y = |d: usize| h - bottom - (h - bottom - top) * d as f64 / n.max(1) as f64;
    let points: Vec<String> = samples
        .iter()
        .map(|&(t, d)| format!("{:.1},{:.1}", x(t), y(d)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#444\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let d = n * i / 4;
        let t = t_max * i as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{d}</text>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t:.0} s</text>\n",
            left - 6.0,
            y(d) + 4.0,
            x(t),
            h - bottom + 18.0
        ));
    }
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#2f6fde\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">jobs succeeded</text>\n</svg>\n",
        points.join(" "),
        w - right,
        h - bottom - 6.0
    ));
    svg
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
    let mut samples = vec![(0.0, 0)];
    loop {
        let (done, failed) = counts(&client, &dev.url).await;
        assert_eq!(failed, 0, "jobs failed");
        samples.push((t.elapsed().as_secs_f64(), done));
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
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let label = dev_args().join(" ");
    let name = if label.contains("process") {
        "process"
    } else {
        "linux"
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("batch-throughput-{name}.svg"));
    let title =
        format!("{n} `true` jobs through agora dev ({name} containerizer): {rate:.0} jobs/s");
    match std::fs::write(&path, plot(&samples, n, &title)) {
        Ok(()) => eprintln!("  plot: {}", path.display()),
        Err(e) => eprintln!("  plot not written to {}: {e}", path.display()),
    }
    rate
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
    agora_proto::tls::install_default_provider();
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
