//! `agora sim …`: the simulator. `run` plays one scenario; `sweep` plays it
//! across the values of one parameter (and offer policies), as the Omega
//! authors swept the service scheduler's decision time for Mesos.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::SimCommand;

/// A line of progress on a terminal (nothing when stderr is not one).
fn show(label: &str, p: agora_sim::Progress) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let rate = if p.wall_seconds > 0.0 {
        p.events as f64 / p.wall_seconds
    } else {
        0.0
    };
    let speed = if p.wall_seconds > 0.0 {
        p.simulated_ms as f64 / 1000.0 / p.wall_seconds
    } else {
        0.0
    };
    eprint!(
        "\r{label}simulated {} of {} ({:.0}%), {} events, {:.0} events/s, {:.0}x real time   ",
        hms(p.simulated_ms),
        hms(p.duration_ms),
        100.0 * p.simulated_ms as f64 / p.duration_ms.max(1) as f64,
        p.events,
        rate,
        speed
    );
    let _ = std::io::stderr().flush();
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

fn write_out(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn refused(e: agora_sim::ScenarioError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e}");
    Ok(ExitCode::FAILURE)
}

pub fn run(command: SimCommand, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    match command {
        SimCommand::Emulate {
            master,
            agents,
            resources,
            attributes,
            task_duration,
            agents_per_connection,
        } => runtime.block_on(emulate(
            master,
            agents,
            &resources,
            &attributes,
            &task_duration,
            agents_per_connection,
        )),
        SimCommand::Load {
            master,
            tasks,
            rate,
            task_size,
            cmd,
            json,
        } => runtime.block_on(load(master, tasks, rate, &task_size, cmd, json)),
        SimCommand::Run {
            scenario,
            seed,
            out,
            json,
            offer_policy,
        } => {
            let base = scenario.parent().map(Path::to_path_buf).unwrap_or_default();
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let mut value = match agora_sim::scenario::parse_value(&text) {
                Ok(v) => v,
                Err(e) => return refused(e),
            };
            if let Some(p) = &offer_policy
                && let Err(e) = agora_sim::scenario::set_param(&mut value, "offer_policy", p)
            {
                return refused(e);
            }
            if let (Some(seed), Some(t)) = (seed, value.as_table_mut()) {
                t.insert(
                    "seed".into(),
                    toml::Value::Integer(seed.min(i64::MAX as u64) as i64),
                );
            }
            let s = match agora_sim::scenario::check(value, &base) {
                Ok(s) => s,
                Err(e) => return refused(e),
            };
            let report = agora_sim::run(s, &mut |p| show("", p));
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
            let summary = serde_json::to_string_pretty(&report)?;
            if let Some(dir) = &out {
                write_out(dir, "summary.json", &summary)?;
                write_out(
                    dir,
                    "utilisation.svg",
                    &agora_sim::report::utilisation_chart(&report),
                )?;
                write_out(
                    dir,
                    "waiting.svg",
                    &agora_sim::report::waiting_chart(&report),
                )?;
            }
            if json {
                println!("{summary}");
            } else {
                print_report(&report);
                if let Some(dir) = &out {
                    println!(
                        "wrote {0}/summary.json, {0}/utilisation.svg and {0}/waiting.svg",
                        dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Sweep {
            scenario,
            param,
            values,
            policy,
            out,
            json,
        } => {
            let base = scenario.parent().map(Path::to_path_buf).unwrap_or_default();
            let text = std::fs::read_to_string(&scenario)
                .with_context(|| format!("reading {}", scenario.display()))?;
            let values: Vec<String> = values
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            let policies: Vec<String> = policy
                .map(|p| {
                    p.split(',')
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let points = match agora_sim::sweep(
                &text,
                &base,
                &param,
                &values,
                &policies,
                &mut |policy, value, p| show(&format!("{policy} {param}={value}: "), p),
            ) {
                Ok(p) => p,
                Err(e) => return refused(e),
            };
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
            let out = out.unwrap_or_else(|| PathBuf::from("sim-out"));
            let summary = serde_json::to_string_pretty(&points)?;
            write_out(&out, "sweep.json", &summary)?;
            for (name, svg) in agora_sim::sweep_charts(&points, &param) {
                write_out(&out, &name, &svg)?;
            }
            if json {
                println!("{summary}");
            } else {
                println!(
                    "| policy | {param} | framework | scheduled | abandoned | wait mean | wait p90 | busy | conflicts | utilisation |"
                );
                println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
                for p in &points {
                    for f in &p.report.frameworks {
                        println!(
                            "| {} | {} | {} | {} | {:.1}% | {:.1} s | {:.1} s | {:.0}% | {} | {:.0}% |",
                            p.policy,
                            p.value,
                            f.name,
                            f.jobs_scheduled,
                            f.abandoned_share * 100.0,
                            f.wait_mean_s,
                            f.wait_p90_s,
                            f.busy_fraction * 100.0,
                            f.conflicts,
                            p.report.mean_utilisation * 100.0
                        );
                    }
                }
                println!(
                    "wrote {}/sweep.json and one plot per metric (sweep-*.svg)",
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_report(r: &agora_sim::Report) {
    println!(
        "{}: {} agents, {:.0} simulated s, policy {}, {} events in {:.1} s ({:.0} events/s, {:.0}x real time)",
        r.scenario,
        r.agents,
        r.simulated_seconds,
        r.offer_policy,
        r.events,
        r.wall_seconds,
        r.events as f64 / r.wall_seconds.max(1e-9),
        r.simulated_seconds / r.wall_seconds.max(1e-9)
    );
    println!(
        "cluster: mean cpu utilisation {:.1}%, {} offers, {} rescinded ({:.2}%), {} agents failed",
        r.mean_utilisation * 100.0,
        r.offers_made,
        r.offers_rescinded,
        r.rescind_rate * 100.0,
        r.agents_failed
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
        "framework",
        "submitted",
        "scheduled",
        "abandoned",
        "pending",
        "wait mean",
        "p50",
        "p90",
        "p99",
        "busy",
        "conflicts"
    );
    for f in &r.frameworks {
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>8} {:>8.1}s {:>8.1}s {:>8.1}s {:>8.1}s {:>5.0}% {:>9}",
            f.name,
            f.jobs_submitted,
            f.jobs_scheduled,
            f.jobs_abandoned,
            f.jobs_pending,
            f.wait_mean_s,
            f.wait_p50_s,
            f.wait_p90_s,
            f.wait_p99_s,
            f.busy_fraction * 100.0,
            f.conflicts
        );
    }
}

/// `agora sim emulate`: emulated agents until Ctrl-C, with a line of
/// progress every two seconds.
async fn emulate(
    master: String,
    agents: usize,
    resources: &str,
    attributes: &str,
    task_duration: &str,
    agents_per_connection: usize,
) -> anyhow::Result<ExitCode> {
    let resources = agora_proto::Resources::parse(resources)
        .map_err(|e| anyhow::anyhow!("--resources: {e}"))?;
    let attributes = agora_agent::parse_attributes(attributes)?
        .into_iter()
        .collect();
    let task_duration = match task_duration {
        "forever" => None,
        d => Some(super::parse_duration(d).map_err(|e| anyhow::anyhow!("--task-duration: {e}"))?),
    };
    let stats = std::sync::Arc::new(agora_sim::emulate::EmulatorStats::default());
    let config = agora_sim::emulate::EmulateConfig {
        masters: master,
        agents,
        resources,
        attributes,
        task_duration,
        agents_per_connection,
        cut_sessions: Default::default(),
        token: super::credentials::client_token(None)?,
        tls: super::credentials::client_tls()?,
        launches: None,
    };
    let progress = stats.clone();
    let report = every_two_seconds(move || {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "emulated agents: {} of {agents} registered; tasks {} launched, {} finished, {} killed; {} status updates sent",
            progress.registered.load(Relaxed),
            progress.launched.load(Relaxed),
            progress.finished.load(Relaxed),
            progress.killed.load(Relaxed),
            progress.updates_sent.load(Relaxed),
        )
    });
    let result = agora_sim::emulate::emulate(config, stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    report.abort();
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn load(
    master: String,
    tasks: u64,
    rate: Option<f64>,
    task_size: &str,
    cmd: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let task = agora_proto::Resources::parse(task_size)
        .map_err(|e| anyhow::anyhow!("--task-size: {e}"))?;
    if task.is_empty() {
        anyhow::bail!("--task-size: a task needs some resources, e.g. cpus:0.01;mem:1");
    }
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        anyhow::bail!("--rate: must be a positive number of tasks per second");
    }
    let stats = std::sync::Arc::new(agora_sim::load::LoadStats::default());
    let config = agora_sim::load::LoadConfig {
        masters: master,
        tasks,
        rate,
        task,
        command: cmd,
        name: "load".into(),
        hold: None,
        token: super::credentials::client_token(None)?,
        tls: super::credentials::client_tls()?,
        launches: None,
    };
    let progress = stats.clone();
    let report = every_two_seconds(move || {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "load: {} of {tasks} launched, {} running, {} ended ({} failed)",
            progress.launched.load(Relaxed),
            progress.running.load(Relaxed),
            progress.ended.load(Relaxed),
            progress.failed.load(Relaxed),
        )
    });
    let result = agora_sim::load::run(config, stats).await;
    report.abort();
    let r = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} of {} tasks running in {:.2} s: {:.0} tasks/s; accept -> TASK_RUNNING p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} failed",
            r.running,
            r.tasks,
            r.seconds,
            r.tasks_per_second,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.latency_max_ms,
            r.failed
        );
    }
    Ok(if r.failed == 0 && r.running == r.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints `line()` on stderr every two seconds until the task is aborted:
/// the progress of a long-running command.
fn every_two_seconds(line: impl Fn() -> String + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            every.tick().await;
            eprintln!("{}", line());
        }
    })
}
