//! Whole-system services benchmark through `agora dev`: time to deploy N
//! instances of an HTTP server (POST → every instance healthy), time to
//! roll all of them to a new version while clients send requests through
//! the load balancer (and how many of those requests failed: target 0),
//! then the balancer's throughput and added latency (p50/p99) against
//! direct connections to one instance, in the same run.
//!
//! `cargo bench --bench services` (as root, with cgroups and busybox).
//! `AGORA_BENCH_INSTANCES=N` (default 100), `AGORA_BENCH_CLIENTS=C`
//! (default 8), `AGORA_BENCH_REQUESTS=M` (default 2000, per latency case).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/dev.rs"]
mod dev;

use dev::{percentile, start_dev};

fn spec(version: &str, instances: usize, service_port: u16) -> String {
    format!(
        r#"id = "bench"
cmd = "mkdir -p www && echo {version} > www/index.html && exec busybox httpd -f -p $PORT_HTTP -h www"
cpus = 0.01
mem = 8
instances = {instances}
ports = ["http"]
[[health_checks]]
path = "/index.html"
interval = "1s"
grace_period = "30s"
[upgrade]
minimum_health_capacity = 0.9
maximum_over_capacity = 0.2
[service]
port = {service_port}
drain_timeout = "10s"
"#
    )
}

async fn app(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(format!("{url}/services/v1/apps/bench"))
        .send()
        .await
        .expect("app")
        .json()
        .await
        .expect("JSON")
}

/// Deploys `body` and waits for its deployment to succeed; returns the
/// seconds it took and (time, healthy v-new, healthy others) samples.
async fn deploy(client: &reqwest::Client, url: &str, body: String) -> (f64, Vec<(f64, u64, u64)>) {
    let started = Instant::now();
    let r = client
        .post(format!("{url}/services/v1/apps"))
        .body(body)
        .send()
        .await
        .expect("deploy");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let answer: Value = r.json().await.expect("JSON");
    let number = answer["deployments"][0]["deployment"].as_u64().expect("id");
    let version = answer["deployments"][0]["version"]
        .as_u64()
        .expect("version");
    let mut samples = Vec::new();
    let mut last_print = Instant::now();
    loop {
        let a = app(client, url).await;
        let tasks = a["tasks"].as_array().cloned().unwrap_or_default();
        let new = tasks
            .iter()
            .filter(|t| t["ready"] == true && t["version"].as_u64() == Some(version))
            .count() as u64;
        let old = tasks
            .iter()
            .filter(|t| t["ready"] == true && t["version"].as_u64() != Some(version))
            .count() as u64;
        samples.push((started.elapsed().as_secs_f64(), new, old));
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "  {:>5.1} s: {new} new healthy, {old} old healthy",
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
            last_print = Instant::now();
        }
        let d = a["deployments"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["id"].as_u64() == Some(number)).cloned())
            .unwrap_or(Value::Null);
        match d["state"].as_str() {
            Some("SUCCEEDED") => return (started.elapsed().as_secs_f64(), samples),
            Some("RUNNING") | None => {}
            Some(other) => panic!("deployment ended {other}: {}", d["message"]),
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "deployment too slow"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Clients sending GETs to `addr` until `stop`; (ok, failed) counts.
fn load(
    addr: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..clients {
            let (ok, failed, stop, addr) = (ok.clone(), failed.clone(), stop.clone(), addr.clone());
            workers.push(tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                while !stop.load(Ordering::Relaxed) {
                    let answered =
                        match client.get(format!("http://{addr}/index.html")).send().await {
                            Ok(r) if r.status().is_success() => r.text().await.is_ok(),
                            _ => false,
                        };
                    if answered {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    })
}

/// Sequential request latencies (ms, sorted) to `addr`, and requests per
/// second with `clients` concurrent clients for `seconds`.
async fn measure(addr: &str, requests: usize, clients: usize, seconds: u64) -> (Vec<f64>, f64) {
    let client = reqwest::Client::new();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let r = client
            .get(format!("http://{addr}/index.html"))
            .send()
            .await
            .expect("GET");
        let _ = r.text().await;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handle = load(addr.to_string(), clients, stop.clone());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, _) = handle.await.expect("load");
    (samples, ok as f64 / started.elapsed().as_secs_f64())
}

/// An SVG of healthy instances (new, old) over the roll.
fn plot(samples: &[(f64, u64, u64)], n: usize) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 320.0, 60.0, 40.0, 30.0, 100.0);
    let t_max = samples.last().map_or(1.0, |s| s.0).max(1.0);
    let y_max = (n as f64 * 1.25).max(1.0);
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let y = |v: f64| h - bottom - (h - top - bottom) * v / y_max;
    let line = |pick: &dyn Fn(&(f64, u64, u64)) -> u64, colour: &str| {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.0), y(pick(s) as f64)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        )
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">Rolling {n} instances to a new version: healthy instances</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    svg.push_str(&line(&|s| s.1, "#2f6fde"));
    svg.push_str(&line(&|s| s.2, "#f0a030"));
    svg.push_str(&line(&|s| s.1 + s.2, "#1a8a3a"));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" fill=\"#2f6fde\">new version</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#f0a030\">old version</text>\n\
         <text x=\"{}\" y=\"{}\" fill=\"#1a8a3a\">all serving</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">seconds ({t_max:.1} s in all)</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">{n}</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">0</text>\n</svg>\n",
        w - right + 6.0,
        y(n as f64 * 0.9),
        w - right + 6.0,
        y(n as f64 * 0.5),
        w - right + 6.0,
        y(n as f64 * 1.1),
        (left + w - right) / 2.0,
        h - 10.0,
        left - 6.0,
        y(n as f64) + 4.0,
        left - 6.0,
        y(0.0) + 4.0,
    ));
    svg
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
    let n = env("AGORA_BENCH_INSTANCES", 100);
    let clients = env("AGORA_BENCH_CLIENTS", 8);
    let requests = env("AGORA_BENCH_REQUESTS", 2000);
    let service_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    println!(
        "services benchmark: {n} busybox httpd instances through `agora dev` (one agent, this machine)\n"
    );
    let dev = start_dev(&[]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{}/services/v1/health", dev.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the services API never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("deploying {n} instances…");
    let (deploy_s, _) = deploy(&client, &dev.url, spec("v1", n, service_port)).await;
    println!("  all {n} healthy after {deploy_s:.1} s");

    let lb = format!("127.0.0.1:{service_port}");
    let stop = Arc::new(AtomicBool::new(false));
    let during = load(lb.clone(), clients, stop.clone());
    println!("rolling {n} instances to v2 with {clients} clients on the load balancer…");
    let (roll_s, samples) = deploy(&client, &dev.url, spec("v2", n, service_port)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = during.await.expect("load");
    println!("  rolled in {roll_s:.1} s; {ok} requests succeeded, {failed} failed meanwhile");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/services-roll.svg");
    match std::fs::write(&path, plot(&samples, n)) {
        Ok(()) => println!("  plot: {}", path.display()),
        Err(e) => eprintln!("  plot not written to {}: {e}", path.display()),
    }

    let a = app(&client, &dev.url).await;
    let direct = a["endpoints"][0].clone();
    let direct = format!(
        "{}:{}",
        direct["host"].as_str().expect("host"),
        direct["port"]
    );
    println!("latency and throughput: direct to {direct} and through the balancer at {lb}…");
    let (d_lat, d_rps) = measure(&direct, requests, clients, 10).await;
    let (l_lat, l_rps) = measure(&lb, requests, clients, 10).await;
    // The app goes before `agora dev` does: tasks outlive a stopped agent
    // by design, and would hold their ports.
    let _ = client
        .delete(format!("{}/services/v1/apps/bench", dev.url))
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{}/services/v1/apps/bench", dev.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| deploy {n} instances, POST → all healthy | {deploy_s:.1} s |");
    println!("| roll {n} instances to a new version | {roll_s:.1} s |");
    println!("| requests through the balancer during the roll | {ok} ok, **{failed} failed** |");
    println!(
        "| GET latency direct, p50 / p99 ({requests} sequential) | {:.2} / {:.2} ms |",
        percentile(&d_lat, 0.5),
        percentile(&d_lat, 0.99)
    );
    println!(
        "| GET latency through the balancer, p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&l_lat, 0.5),
        percentile(&l_lat, 0.99)
    );
    println!(
        "| added by the balancer, p50 / p99 | {:.2} / {:.2} ms |",
        percentile(&l_lat, 0.5) - percentile(&d_lat, 0.5),
        percentile(&l_lat, 0.99) - percentile(&d_lat, 0.99)
    );
    println!("| throughput direct to one instance ({clients} clients, 10 s) | {d_rps:.0} req/s |");
    println!(
        "| throughput through the balancer ({clients} clients, 10 s, {n} instances) | {l_rps:.0} req/s |"
    );
}
