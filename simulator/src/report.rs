//! What a run found: per framework (jobs submitted, scheduled, abandoned;
//! wait time mean/p50/p90/p99; scheduler busy fraction; conflicts), the
//! cluster's utilisation over time, and plots of both as SVG.

use serde::Serialize;

/// One framework's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct FrameworkReport {
    pub name: String,
    pub jobs_submitted: u64,
    pub jobs_scheduled: u64,
    pub jobs_abandoned: u64,
    /// Still queued when the run ended.
    pub jobs_pending: u64,
    pub abandoned_share: f64,
    /// From a job's submission until all its tasks were launched.
    pub wait_mean_s: f64,
    pub wait_p50_s: f64,
    pub wait_p90_s: f64,
    pub wait_p99_s: f64,
    /// Share of the run the scheduler spent deciding.
    pub busy_fraction: f64,
    pub tasks_launched: u64,
    /// Tasks lost with failed machines (and placed again).
    pub tasks_lost: u64,
    /// Decisions whose offers were rescinded before they answered.
    pub conflicts: u64,
    pub offers_received: u64,
}

/// The cluster at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterSample {
    pub t_seconds: f64,
    /// Share of the live cpus running tasks.
    pub used_cpus: f64,
    /// Share of the live cpus held in outstanding offers.
    pub offered_cpus: f64,
    /// The same, by framework.
    pub offered_by: std::collections::BTreeMap<String, f64>,
    pub agents: u64,
    pub pending_jobs: u64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub offer_policy: String,
    pub simulated_seconds: f64,
    pub agents: u64,
    pub agents_failed: u64,
    pub events: u64,
    pub offers_made: u64,
    pub offers_rescinded: u64,
    pub rescind_rate: f64,
    pub mean_utilisation: f64,
    pub frameworks: Vec<FrameworkReport>,
    pub samples: Vec<ClusterSample>,
    /// Not part of the summary: it differs from run to run.
    #[serde(skip)]
    pub wall_seconds: f64,
}

impl Report {
    pub fn framework(&self, name: &str) -> Option<&FrameworkReport> {
        self.frameworks.iter().find(|f| f.name == name)
    }
}

/// The `p` quantile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One named line of a chart.
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
}

pub const COLOURS: [&str; 6] = [
    "#2f6fde", "#f0a030", "#1a8a3a", "#c03030", "#8a4ad0", "#555555",
];

/// A line chart; `log_x` for sweeps over orders of magnitude.
/// Which axes of a [`line_chart`] are logarithmic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scale {
    pub log_x: bool,
    pub log_y: bool,
}

pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scale: Scale,
) -> String {
    let Scale { log_x, log_y } = scale;
    let (w, h, left, bottom, top, right) = (720.0, 360.0, 70.0, 50.0, 36.0, 150.0);
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(tx(p.0)), b.max(tx(p.0)))
    });
    if !(x0.is_finite() && x1.is_finite()) || x1 <= x0 {
        x0 = 0.0;
        x1 = 1.0;
    }
    let y1 = all.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    // On a log scale: whole decades from the smallest positive value (at
    // most 0.1) to the largest; zero sits on the bottom line.
    let (d0, d1) = {
        let low = all
            .iter()
            .map(|p| p.1)
            .filter(|v| *v > 0.0)
            .fold(0.1_f64, f64::min);
        let high = all.iter().map(|p| p.1).fold(1.0_f64, f64::max);
        (
            low.log10().floor(),
            high.log10().ceil().max(low.log10().floor() + 1.0),
        )
    };
    let x = |v: f64| left + (w - left - right) * (tx(v) - x0) / (x1 - x0);
    let y = |v: f64| {
        let frac = if log_y {
            (v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0)
        } else {
            v / y1
        };
        h - bottom - (h - top - bottom) * frac
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\" stroke=\"#999\"/>\n\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\" fill=\"#555\">{x_label}</text>\n\
         <text x=\"14\" y=\"{cy}\" fill=\"#555\" transform=\"rotate(-90 14 {cy})\" text-anchor=\"middle\">{y_label}</text>\n",
        b = h - bottom,
        r = w - right,
        cx = (left + w - right) / 2.0,
        xl = h - 12.0,
        cy = (top + h - bottom) / 2.0,
    );
    let y_ticks: Vec<f64> = if log_y {
        (d0 as i32..=d1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|k| y1 / 1.1 * f64::from(k) / 4.0).collect()
    };
    for v in y_ticks {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#777\">{}</text>\n",
            left - 6.0,
            y(v) + 4.0,
            tick(v)
        ));
    }
    let xs: Vec<f64> = {
        let mut v: Vec<f64> = all.iter().map(|p| p.0).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let step = (xs.len() / 8).max(1);
    for v in xs.iter().step_by(step) {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#777\">{}</text>\n",
            x(*v),
            h - bottom + 16.0,
            tick(*v)
        ));
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            s.colour,
            points.join(" ")
        ));
        for p in &s.points {
            if s.points.len() <= 20 {
                svg.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>\n",
                    x(p.0),
                    y(p.1),
                    s.colour
                ));
            }
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n",
            w - right + 10.0,
            top + 16.0 + 18.0 * i as f64,
            s.colour,
            s.name
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The time axis of the over-time charts: hours for runs of two hours or
/// more, else seconds.
fn time_axis(report: &Report) -> (&'static str, impl Fn(&ClusterSample) -> f64) {
    let hours = report.simulated_seconds >= 7200.0;
    let unit = if hours { "hours" } else { "seconds" };
    (unit, move |s: &ClusterSample| {
        if hours {
            s.t_seconds / 3600.0
        } else {
            s.t_seconds
        }
    })
}

/// Utilisation (used and offered cpus) over time.
pub fn utilisation_chart(report: &Report) -> String {
    let (unit, t) = time_axis(report);
    line_chart(
        &format!(
            "{}: cluster over time ({})",
            report.scenario, report.offer_policy
        ),
        unit,
        "share of cpus",
        &[
            Series {
                name: "used".into(),
                colour: COLOURS[0],
                points: report.samples.iter().map(|s| (t(s), s.used_cpus)).collect(),
            },
            Series {
                name: "offered".into(),
                colour: COLOURS[1],
                points: report
                    .samples
                    .iter()
                    .map(|s| (t(s), s.offered_cpus))
                    .collect(),
            },
        ],
        Scale::default(),
    )
}

/// Jobs waiting to be placed over time (a failure's tasks coming back and
/// being placed again show here).
pub fn waiting_chart(report: &Report) -> String {
    let (unit, t) = time_axis(report);
    line_chart(
        &format!(
            "{}: jobs waiting ({})",
            report.scenario, report.offer_policy
        ),
        unit,
        "jobs waiting",
        &[Series {
            name: "waiting".into(),
            colour: COLOURS[0],
            points: report
                .samples
                .iter()
                .map(|s| (t(s), s.pending_jobs as f64))
                .collect(),
        }],
        Scale::default(),
    )
}
