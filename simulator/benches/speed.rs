//! How fast the simulator runs: simulated seconds per wall second and
//! events per second for a Google-like load (the Omega experiment's batch
//! and service workloads, scaled with the cluster) on 10,000 agents, and
//! whether 50,000 agents run at all, with the memory each agent costs.
//!
//! `cargo bench -p agora-sim --bench speed`
//! `AGORA_SIM_HOURS=H` (default 1) simulated hours at 10,000 agents;
//! `AGORA_SIM_BIG_MINUTES=M` (default 10) simulated minutes at 50,000;
//! `AGORA_SIM_POLICY` (default `demand`) the allocator's offer policy.

use std::path::Path;
use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The Omega workload on `agents` machines: arrival rates scaled so the
/// load per machine stays the paper's.
fn scenario(agents: usize, duration: &str, policy: &str) -> agora_sim::Scenario {
    let scale = agents as f64 / 10_000.0;
    let text = format!(
        r#"
name = "speed-{agents}"
duration = "{duration}"
offer_policy = "{policy}"
offer_timeout = "1d"
sample_interval = "5m"
prefill = 0.5
[[machines]]
count = {agents}
resources = "cpus:4;mem:16384"
racks = {racks}
[[frameworks]]
name = "batch"
t_job = "0.1s"
[frameworks.workload]
interarrival = "exp {batch}s"
tasks = "exp 100"
duration = "exp 100s"
cpus = "1"
mem = "2048"
[[frameworks]]
name = "service"
t_job = "0.1s"
[frameworks.workload]
interarrival = "exp {service}s"
tasks = "exp 10"
duration = "exp 500s"
cpus = "1"
mem = "2048"
"#,
        racks = (agents / 40).max(1),
        batch = 10.0 / scale,
        service = 20.0 / scale,
    );
    agora_sim::scenario::parse(&text, Path::new(".")).expect("valid scenario")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let hours = env("AGORA_SIM_HOURS", 1.0);
    let minutes = env("AGORA_SIM_BIG_MINUTES", 10.0);
    let policy = std::env::var("AGORA_SIM_POLICY").unwrap_or_else(|_| "demand".into());
    println!(
        "| case | simulated | wall | simulated s / wall s | events/s | offers | RSS per agent |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (agents, duration) in [
        (10_000usize, format!("{}s", hours * 3600.0)),
        (50_000, format!("{}s", minutes * 60.0)),
    ] {
        let before = rss_kib();
        let s = scenario(agents, &duration, &policy);
        let simulated = s.duration_ms as f64 / 1000.0;
        let started = Instant::now();
        let mut peak = before;
        let report = agora_sim::run(s, &mut |_| peak = peak.max(rss_kib()));
        let wall = started.elapsed().as_secs_f64();
        let peak = peak.max(rss_kib());
        println!(
            "| {agents} agents, Omega load, {policy} | {simulated:.0} s | {wall:.1} s | {:.0} | {:.0} | {} | {:.1} KiB |",
            simulated / wall,
            report.events as f64 / wall,
            report.offers_made,
            peak.saturating_sub(before) as f64 / agents as f64
        );
    }
}
