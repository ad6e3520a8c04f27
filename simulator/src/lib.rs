//! Agora's simulator: a discrete-event cluster in virtual time around the
//! master's **real** allocator (`agora_master::allocator`, with its offer
//! policies), simulated agents and frameworks in the Omega paper's model,
//! and workloads from distributions or traces (our CSV, or the Google
//! cluster-data 2011 tables). `agora sim run` asks "what happens to my
//! cluster if…"; `agora sim sweep` varies one parameter across runs, as
//! the Omega authors did for Mesos. [`emulate`] is the other half: emulated
//! agents that speak the real protocol to a real master, and [`load`] a
//! framework that keeps its offers busy, for scale tests.

pub mod dist;
pub mod emulate;
pub mod engine;
pub mod latency;
pub mod load;
pub mod report;
pub mod scenario;
pub mod workload;

use std::path::Path;

pub use engine::{Progress, Sim};
pub use report::Report;
pub use scenario::{Scenario, ScenarioError};

/// Runs one scenario.
pub fn run(scenario: Scenario, progress: &mut dyn FnMut(Progress)) -> Report {
    Sim::new(scenario).run(progress)
}

/// One point of a sweep.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepPoint {
    pub policy: String,
    pub value: String,
    pub report: Report,
}

/// Runs the scenario in `text` once per policy and value of `param`
/// (e.g. `frameworks.service.t_job`); `policies` empty keeps the
/// scenario's own.
pub fn sweep(
    text: &str,
    base: &Path,
    param: &str,
    values: &[String],
    policies: &[String],
    progress: &mut dyn FnMut(&str, &str, Progress),
) -> Result<Vec<SweepPoint>, ScenarioError> {
    let own = [String::new()];
    let policies: &[String] = if policies.is_empty() { &own } else { policies };
    // Every combination is checked before any runs.
    let mut runs = Vec::new();
    for policy in policies {
        for value in values {
            let mut v = scenario::parse_value(text)?;
            scenario::set_param(&mut v, param, value)?;
            if !policy.is_empty() {
                scenario::set_param(&mut v, "offer_policy", policy)?;
            }
            runs.push((policy.clone(), value.clone(), scenario::check(v, base)?));
        }
    }
    let mut out = Vec::new();
    for (policy, value, s) in runs {
        let name = s.offer_policy.name();
        let report = run(s, &mut |p| progress(&name, &value, p));
        out.push(SweepPoint {
            policy: if policy.is_empty() { name } else { policy },
            value,
            report,
        });
    }
    Ok(out)
}

/// The sweep's charts: one per metric, a line per (policy, framework).
pub fn sweep_charts(points: &[SweepPoint], param: &str) -> Vec<(String, String)> {
    type Metric = fn(&report::FrameworkReport) -> f64;
    let metrics: [(&str, &str, Metric); 5] = [
        ("wait-mean", "mean job wait (s)", |f| f.wait_mean_s),
        ("wait-p90", "p90 job wait (s)", |f| f.wait_p90_s),
        ("abandoned", "share of jobs abandoned", |f| {
            f.abandoned_share
        }),
        ("busy", "scheduler busy fraction", |f| f.busy_fraction),
        ("conflicts", "decisions lost to a rescind", |f| {
            f.conflicts as f64
        }),
    ];
    // A number or a duration is its own x; values that are neither (e.g.
    // distributions, `exp 5s`) are placed by their position in the sweep.
    let numeric = |v: &str| -> Option<f64> {
        scenario::parse_duration_ms(v)
            .map(|ms| ms / 1000.0)
            .ok()
            .or_else(|| v.parse().ok())
    };
    let categorical = points.iter().any(|p| numeric(&p.value).is_none());
    let mut values: Vec<&str> = Vec::new();
    for p in points {
        if !values.contains(&p.value.as_str()) {
            values.push(&p.value);
        }
    }
    let x = |p: &SweepPoint| -> f64 {
        if categorical {
            values.iter().position(|v| *v == p.value).unwrap_or(0) as f64 + 1.0
        } else {
            numeric(&p.value).unwrap_or(0.0)
        }
    };
    let x_label = if categorical {
        let legend: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{} = {v}", i + 1))
            .collect();
        format!("{param} ({})", legend.join(", "))
    } else {
        param.to_string()
    };
    let mut keys: Vec<(String, String)> = Vec::new();
    for p in points {
        for f in &p.report.frameworks {
            let k = (p.policy.clone(), f.name.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let log_x = points
        .iter()
        .map(x)
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, 0.0_f64), |(a, b), v| (a.min(v), b.max(v)));
    let log_x = log_x.1 / log_x.0.max(1e-12) >= 100.0;
    let mut charts = Vec::new();
    for (file, label, metric) in metrics {
        let series: Vec<report::Series> = keys
            .iter()
            .enumerate()
            .map(|(i, (policy, fw))| report::Series {
                name: format!("{fw} ({policy})"),
                colour: report::COLOURS[i % report::COLOURS.len()],
                points: points
                    .iter()
                    .filter(|p| p.policy == *policy)
                    .filter_map(|p| p.report.framework(fw).map(|f| (x(p), metric(f))))
                    .collect(),
            })
            .collect();
        charts.push((
            format!("sweep-{file}.svg"),
            report::line_chart(
                &format!("{label} against {param}"),
                &x_label,
                label,
                &series,
                report::Scale {
                    log_x,
                    // Waits span decades (the Omega paper plots them so).
                    log_y: file.starts_with("wait"),
                },
            ),
        ));
    }
    let util: Vec<report::Series> = {
        let mut policies: Vec<String> = points.iter().map(|p| p.policy.clone()).collect();
        policies.dedup();
        policies
            .iter()
            .enumerate()
            .map(|(i, policy)| report::Series {
                name: format!("utilisation ({policy})"),
                colour: report::COLOURS[i % report::COLOURS.len()],
                points: points
                    .iter()
                    .filter(|p| p.policy == *policy)
                    .map(|p| (x(p), p.report.mean_utilisation))
                    .collect(),
            })
            .collect()
    };
    charts.push((
        "sweep-utilisation.svg".into(),
        report::line_chart(
            &format!("mean cpu utilisation against {param}"),
            &x_label,
            "share of cpus",
            &util,
            report::Scale {
                log_x,
                log_y: false,
            },
        ),
    ));
    charts
}
