//! Scenario files (TOML): the cluster, the frameworks with their decision
//! times and workloads, the master's offer settings, and what-if events.
//! Every problem names its field (`frameworks[1].t_job: …`).

use std::path::{Path, PathBuf};

use agora_master::allocator::OfferPolicy;
use agora_proto::Resources;
use toml::Value;

use crate::dist::Dist;
use crate::workload::{TraceJob, google, trace};

/// A scenario that was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ScenarioError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError {
        field: field.into(),
        message: message.into(),
    }
}

/// Milliseconds of simulated time.
pub type Ms = u64;

/// A group of identical machines.
#[derive(Clone, Debug)]
pub struct MachineClass {
    pub count: usize,
    pub resources: Resources,
    /// Machines are spread over this many racks (attribute `rack:rN`).
    pub racks: usize,
}

/// Where a framework's jobs come from.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Jobs drawn from distributions.
    Synthetic {
        interarrival_ms: Dist,
        tasks: Dist,
        duration_ms: Dist,
        cpus: Dist,
        mem: Dist,
        /// Stop after this many jobs.
        max_jobs: Option<u64>,
    },
    /// Jobs replayed from a trace, in submission order.
    Trace(Vec<TraceJob>),
}

/// A framework (scheduler) in the Omega model.
#[derive(Clone, Debug)]
pub struct FrameworkSpec {
    pub name: String,
    pub role: String,
    pub weight: f64,
    /// Decision time per job considered, plus per task placed.
    pub t_job_ms: f64,
    pub t_task_ms: f64,
    /// Attempts before a job that does not fit is abandoned.
    pub max_attempts: u32,
    /// Most jobs placed on one round of offers (the rest of the offers are
    /// declined); unlimited by default.
    pub jobs_per_offer: Option<u32>,
    pub workload: Workload,
}

/// Something that happens to the cluster at a moment.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// Machines fail (all of one rack, or `count` of them, the first ones).
    FailAgents {
        rack: Option<String>,
        count: Option<usize>,
    },
    /// New machines join.
    AddAgents { count: usize, resources: Resources },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioEvent {
    pub at_ms: Ms,
    pub kind: EventKind,
}

/// A whole scenario, checked.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub duration_ms: Ms,
    pub allocation_interval_ms: Ms,
    pub offer_timeout_ms: Ms,
    /// How long a declined agent is not offered to that framework again.
    pub refuse_ms: Ms,
    pub offer_policy: OfferPolicy,
    pub sample_interval_ms: Ms,
    pub machines: Vec<MachineClass>,
    /// Share of the cluster busy with long-running work at the start.
    pub prefill: f64,
    pub frameworks: Vec<FrameworkSpec>,
    pub events: Vec<ScenarioEvent>,
}

const TOP: &[&str] = &[
    "name",
    "seed",
    "duration",
    "allocation_interval",
    "offer_timeout",
    "refuse",
    "offer_policy",
    "sample_interval",
    "machines",
    "prefill",
    "frameworks",
    "events",
];

/// Reads the scenario at `path` (workload files relative to it).
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err("scenario", format!("reading {}: {e}", path.display())))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base)
}

/// Parses scenario text; relative file names are resolved against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    let value: Value = toml::from_str(text)
        .map_err(|e| err("scenario", format!("not valid TOML: {}", e.message())))?;
    from_value(value, base)
}

/// A parsed but unchecked scenario, to edit (sweeps) before checking.
pub fn parse_value(text: &str) -> Result<Value, ScenarioError> {
    toml::from_str(text).map_err(|e| err("scenario", format!("not valid TOML: {}", e.message())))
}

fn table<'a>(v: &'a Value, field: &str) -> Result<&'a toml::Table, ScenarioError> {
    v.as_table()
        .ok_or_else(|| err(field, format!("must be a table, got {v}")))
}

fn known(t: &toml::Table, fields: &[&str], prefix: &str) -> Result<(), ScenarioError> {
    match t.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(k) => Err(err(
            format!("{prefix}{k}"),
            format!("unknown field (known: {})", fields.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string(t: &toml::Table, key: &str, field: &str) -> Result<Option<String>, ScenarioError> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(field, format!("must be a string, got {other}"))),
    }
}

fn number(t: &toml::Table, key: &str, field: &str) -> Result<Option<f64>, ScenarioError> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(i)) => Ok(Some(*i as f64)),
        Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
        Some(other) => Err(err(field, format!("must be a finite number, got {other}"))),
    }
}

/// `90s`, `10m`, `1h30m`, `500ms`, `7d`, or a number of seconds, in
/// milliseconds; at most a year of simulated time.
pub fn parse_duration_ms(text: &str) -> Result<f64, String> {
    let d = agora_proto::parse_duration(text)?;
    if d > std::time::Duration::from_secs(366 * 86_400) {
        return Err(format!("`{}` is longer than a year", text.trim()));
    }
    Ok(d.as_secs_f64() * 1000.0)
}

fn duration(t: &toml::Table, key: &str, field: &str) -> Result<Option<f64>, ScenarioError> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => parse_duration_ms(s).map(Some).map_err(|m| err(field, m)),
        Some(Value::Integer(i)) if *i >= 0 => Ok(Some(*i as f64 * 1000.0)),
        Some(Value::Float(f)) if f.is_finite() && *f >= 0.0 => Ok(Some(f * 1000.0)),
        Some(other) => Err(err(
            field,
            format!("must be a duration such as \"10s\", got {other}"),
        )),
    }
}

/// A distribution: `"5"` / `"5s"` (constant), `"exp 4s"`, `"uniform 1 10"`,
/// or `"file NAME"` (one observation per line, drawn uniformly).
/// `durations` reads values as durations (milliseconds out).
pub fn parse_dist(text: &str, durations: bool, base: &Path) -> Result<Dist, String> {
    let value = |s: &str| -> Result<f64, String> {
        if durations {
            parse_duration_ms(s)
        } else {
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!("`{s}` is not a number >= 0")),
            }
        }
    };
    let parts: Vec<&str> = text.split_whitespace().collect();
    match parts.as_slice() {
        [one] => Ok(Dist::Constant(value(one)?)),
        ["exp", mean] => Ok(Dist::Exponential { mean: value(mean)? }),
        ["uniform", lo, hi] => {
            let (min, max) = (value(lo)?, value(hi)?);
            if max < min {
                return Err(format!("uniform: {hi} is less than {lo}"));
            }
            Ok(Dist::Uniform { min, max })
        }
        ["file", name] => {
            let path = base.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let values: Result<Vec<f64>, String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(value)
                .collect();
            let values = values?;
            if values.is_empty() {
                return Err(format!("{} holds no values", path.display()));
            }
            Ok(Dist::Empirical(values))
        }
        _ => Err(format!(
            "`{text}` is not a distribution (\"5\", \"exp 4s\", \"uniform 1 10\", \"file NAME\")"
        )),
    }
}

fn dist(
    t: &toml::Table,
    key: &str,
    field: &str,
    durations: bool,
    base: &Path,
) -> Result<Option<Dist>, ScenarioError> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => parse_dist(s, durations, base)
            .map(Some)
            .map_err(|m| err(field, m)),
        Some(Value::Integer(i)) if *i >= 0 => Ok(Some(Dist::Constant(
            *i as f64 * if durations { 1000.0 } else { 1.0 },
        ))),
        Some(Value::Float(f)) if f.is_finite() && *f >= 0.0 => Ok(Some(Dist::Constant(
            f * if durations { 1000.0 } else { 1.0 },
        ))),
        Some(other) => Err(err(field, format!("must be a distribution, got {other}"))),
    }
}

fn resources(t: &toml::Table, key: &str, field: &str) -> Result<Resources, ScenarioError> {
    let text = string(t, key, field)?.ok_or_else(|| err(field, "is required"))?;
    let r = Resources::parse(&text).map_err(|e| err(field, e.to_string()))?;
    if r.scalar("cpus") <= 0.0 || r.scalar("mem") <= 0.0 {
        return Err(err(field, "machines need cpus and mem"));
    }
    Ok(r)
}

fn list<'a>(v: Option<&'a Value>, field: &str) -> Result<Vec<&'a Value>, ScenarioError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items.iter().collect()),
        Some(other) => Err(err(field, format!("must be a list of tables, got {other}"))),
    }
}

fn from_value(value: Value, base: &Path) -> Result<Scenario, ScenarioError> {
    let top = table(&value, "scenario")?;
    known(top, TOP, "")?;
    let name = string(top, "name", "name")?.unwrap_or_else(|| "scenario".into());
    let seed = match top.get("seed") {
        None => 1,
        Some(Value::Integer(i)) if *i >= 0 => *i as u64,
        Some(other) => {
            return Err(err(
                "seed",
                format!("must be a whole number >= 0, got {other}"),
            ));
        }
    };
    let ms = |v: Option<f64>, default: f64| v.unwrap_or(default).round() as Ms;
    let duration_ms = ms(duration(top, "duration", "duration")?, 3_600_000.0);
    if duration_ms == 0 {
        return Err(err("duration", "must be longer than zero"));
    }
    let allocation_interval_ms = ms(
        duration(top, "allocation_interval", "allocation_interval")?,
        1000.0,
    );
    if allocation_interval_ms == 0 {
        return Err(err("allocation_interval", "must be longer than zero"));
    }
    let offer_timeout_ms = ms(duration(top, "offer_timeout", "offer_timeout")?, 30_000.0);
    let refuse_ms = ms(duration(top, "refuse", "refuse")?, 5000.0);
    let sample_interval_ms = ms(
        duration(top, "sample_interval", "sample_interval")?,
        60_000.0,
    )
    .max(1);
    let offer_policy = match string(top, "offer_policy", "offer_policy")? {
        // The master's own default unless the scenario says otherwise.
        None => agora_master::MasterConfig::default().offer_policy,
        Some(p) => OfferPolicy::parse(&p).map_err(|m| err("offer_policy", m))?,
    };
    let prefill = number(top, "prefill", "prefill")?.unwrap_or(0.0);
    if !(0.0..=0.95).contains(&prefill) {
        return Err(err(
            "prefill",
            format!("must be between 0 and 0.95, got {prefill}"),
        ));
    }

    let mut machines = Vec::new();
    for (i, v) in list(top.get("machines"), "machines")?
        .into_iter()
        .enumerate()
    {
        let p = format!("machines[{i}].");
        let t = table(v, &format!("machines[{i}]"))?;
        // `name` only labels the class, so a sweep can pick it
        // (`machines.NAME.count`).
        known(t, &["name", "count", "resources", "racks"], &p)?;
        if let Some(name) = t.get("name")
            && !name.is_str()
        {
            return Err(err(format!("{p}name"), "must be a string"));
        }
        let count = match t.get("count") {
            Some(Value::Integer(n)) if (1..=1_000_000).contains(n) => *n as usize,
            other => {
                return Err(err(
                    format!("{p}count"),
                    format!("must be a whole number from 1 to 1000000, got {other:?}"),
                ));
            }
        };
        let racks = match t.get("racks") {
            None => 1,
            Some(Value::Integer(n)) if (1..=100_000).contains(n) => *n as usize,
            Some(other) => {
                return Err(err(
                    format!("{p}racks"),
                    format!("must be a whole number >= 1, got {other}"),
                ));
            }
        };
        machines.push(MachineClass {
            count,
            resources: resources(t, "resources", &format!("{p}resources"))?,
            racks,
        });
    }
    if machines.is_empty() {
        return Err(err("machines", "at least one [[machines]] class is needed"));
    }

    let mut frameworks = Vec::new();
    for (i, v) in list(top.get("frameworks"), "frameworks")?
        .into_iter()
        .enumerate()
    {
        let p = format!("frameworks[{i}].");
        let t = table(v, &format!("frameworks[{i}]"))?;
        known(
            t,
            &[
                "name",
                "role",
                "weight",
                "t_job",
                "t_task",
                "max_attempts",
                "jobs_per_offer",
                "workload",
            ],
            &p,
        )?;
        let name = string(t, "name", &format!("{p}name"))?
            .ok_or_else(|| err(format!("{p}name"), "is required"))?;
        if frameworks.iter().any(|f: &FrameworkSpec| f.name == name) {
            return Err(err(format!("{p}name"), format!("`{name}` is named twice")));
        }
        let role = string(t, "role", &format!("{p}role"))?.unwrap_or_else(|| name.clone());
        let weight = number(t, "weight", &format!("{p}weight"))?.unwrap_or(1.0);
        if !(weight > 0.0 && weight <= 1e6) {
            return Err(err(
                format!("{p}weight"),
                format!("must be above 0, got {weight}"),
            ));
        }
        let t_job_ms = duration(t, "t_job", &format!("{p}t_job"))?.unwrap_or(100.0);
        let t_task_ms = duration(t, "t_task", &format!("{p}t_task"))?.unwrap_or(5.0);
        let max_attempts = match t.get("max_attempts") {
            None => 1000,
            Some(Value::Integer(n)) if (1..=1_000_000).contains(n) => *n as u32,
            Some(other) => {
                return Err(err(
                    format!("{p}max_attempts"),
                    format!("must be a whole number >= 1, got {other}"),
                ));
            }
        };
        let jobs_per_offer = match t.get("jobs_per_offer") {
            None => None,
            Some(Value::Integer(n)) if (1..=1_000_000).contains(n) => Some(*n as u32),
            Some(other) => {
                return Err(err(
                    format!("{p}jobs_per_offer"),
                    format!("must be a whole number >= 1, got {other}"),
                ));
            }
        };
        let w = t
            .get("workload")
            .ok_or_else(|| err(format!("{p}workload"), "is required"))?;
        let workload = workload(
            table(w, &format!("{p}workload"))?,
            &format!("{p}workload."),
            &name,
            base,
        )?;
        frameworks.push(FrameworkSpec {
            name,
            role,
            weight,
            t_job_ms,
            t_task_ms,
            max_attempts,
            jobs_per_offer,
            workload,
        });
    }
    if frameworks.is_empty() {
        return Err(err("frameworks", "at least one [[frameworks]] is needed"));
    }

    let mut events = Vec::new();
    for (i, v) in list(top.get("events"), "events")?.into_iter().enumerate() {
        let p = format!("events[{i}].");
        let t = table(v, &format!("events[{i}]"))?;
        known(t, &["at", "kind", "rack", "count", "resources"], &p)?;
        let at_ms = ms(
            Some(
                duration(t, "at", &format!("{p}at"))?
                    .ok_or_else(|| err(format!("{p}at"), "is required"))?,
            ),
            0.0,
        );
        let count = match t.get("count") {
            None => None,
            Some(Value::Integer(n)) if *n >= 1 => Some(*n as usize),
            Some(other) => {
                return Err(err(
                    format!("{p}count"),
                    format!("must be a whole number >= 1, got {other}"),
                ));
            }
        };
        let kind = match string(t, "kind", &format!("{p}kind"))?.as_deref() {
            Some("fail_agents") => {
                let rack = string(t, "rack", &format!("{p}rack"))?;
                if rack.is_none() && count.is_none() {
                    return Err(err(
                        format!("{p}rack"),
                        "fail_agents needs a rack or a count",
                    ));
                }
                EventKind::FailAgents { rack, count }
            }
            Some("add_agents") => EventKind::AddAgents {
                count: count.ok_or_else(|| err(format!("{p}count"), "add_agents needs a count"))?,
                resources: resources(t, "resources", &format!("{p}resources"))?,
            },
            other => {
                return Err(err(
                    format!("{p}kind"),
                    format!("must be fail_agents or add_agents, got {other:?}"),
                ));
            }
        };
        events.push(ScenarioEvent { at_ms, kind });
    }
    events.sort_by_key(|e| e.at_ms);

    Ok(Scenario {
        name,
        seed,
        duration_ms,
        allocation_interval_ms,
        offer_timeout_ms,
        refuse_ms,
        offer_policy,
        sample_interval_ms,
        machines,
        prefill,
        frameworks,
        events,
    })
}

fn workload(
    t: &toml::Table,
    p: &str,
    framework: &str,
    base: &Path,
) -> Result<Workload, ScenarioError> {
    let kind = string(t, "kind", &format!("{p}kind"))?.unwrap_or_else(|| "synthetic".into());
    match kind.as_str() {
        "synthetic" => {
            known(
                t,
                &[
                    "kind",
                    "interarrival",
                    "tasks",
                    "duration",
                    "cpus",
                    "mem",
                    "max_jobs",
                ],
                p,
            )?;
            let need = |key: &str, durations: bool| -> Result<Dist, ScenarioError> {
                dist(t, key, &format!("{p}{key}"), durations, base)?
                    .ok_or_else(|| err(format!("{p}{key}"), "is required"))
            };
            let interarrival_ms = need("interarrival", true)?;
            if interarrival_ms.mean() <= 0.0 {
                return Err(err(
                    format!("{p}interarrival"),
                    "must have a mean above zero",
                ));
            }
            let max_jobs = match t.get("max_jobs") {
                None => None,
                Some(Value::Integer(n)) if *n >= 0 => Some(*n as u64),
                Some(other) => {
                    return Err(err(
                        format!("{p}max_jobs"),
                        format!("must be a whole number, got {other}"),
                    ));
                }
            };
            Ok(Workload::Synthetic {
                interarrival_ms,
                tasks: need("tasks", false)?,
                duration_ms: need("duration", true)?,
                cpus: need("cpus", false)?,
                mem: need("mem", false)?,
                max_jobs,
            })
        }
        "trace" => {
            known(t, &["kind", "file"], p)?;
            let file = string(t, "file", &format!("{p}file"))?
                .ok_or_else(|| err(format!("{p}file"), "is required"))?;
            let path: PathBuf = base.join(&file);
            let jobs = trace::read(&path, framework).map_err(|m| err(format!("{p}file"), m))?;
            Ok(Workload::Trace(jobs))
        }
        "google" => {
            known(
                t,
                &[
                    "kind",
                    "job_events",
                    "task_events",
                    "machine_cpus",
                    "machine_mem",
                    "class",
                ],
                p,
            )?;
            let file = |key: &str| -> Result<PathBuf, ScenarioError> {
                Ok(base.join(
                    string(t, key, &format!("{p}{key}"))?
                        .ok_or_else(|| err(format!("{p}{key}"), "is required"))?,
                ))
            };
            let cpus = number(t, "machine_cpus", &format!("{p}machine_cpus"))?.unwrap_or(1.0);
            let mem = number(t, "machine_mem", &format!("{p}machine_mem"))?.unwrap_or(1024.0);
            let class = match string(t, "class", &format!("{p}class"))?.as_deref() {
                None | Some("all") => google::Class::All,
                Some("batch") => google::Class::Batch,
                Some("service") => google::Class::Service,
                Some(other) => {
                    return Err(err(
                        format!("{p}class"),
                        format!("must be batch, service or all, got `{other}`"),
                    ));
                }
            };
            let jobs = google::read(
                &file("job_events")?,
                &file("task_events")?,
                cpus,
                mem,
                class,
            )
            .map_err(|m| err(format!("{p}job_events"), m))?;
            Ok(Workload::Trace(jobs))
        }
        other => Err(err(
            format!("{p}kind"),
            format!("must be synthetic, trace or google, got `{other}`"),
        )),
    }
}

/// Sets `path` (e.g. `frameworks.service.t_job`, `offer_policy`) in an
/// unchecked scenario: list entries are picked by their `name`.
pub fn set_param(value: &mut Value, path: &str, to: &str) -> Result<(), ScenarioError> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut at = value;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        at = match at {
            Value::Table(t) if last => {
                let new = match t.get(*part) {
                    Some(Value::Integer(_)) => to
                        .parse::<i64>()
                        .map(Value::Integer)
                        .or_else(|_| to.parse::<f64>().map(Value::Float))
                        .map_err(|_| err(path, format!("`{to}` is not a number")))?,
                    Some(Value::Float(_)) => to
                        .parse::<f64>()
                        .map(Value::Float)
                        .map_err(|_| err(path, format!("`{to}` is not a number")))?,
                    _ => Value::String(to.to_string()),
                };
                t.insert(part.to_string(), new);
                return Ok(());
            }
            Value::Table(t) => t
                .get_mut(*part)
                .ok_or_else(|| err(path, format!("the scenario has no `{part}`")))?,
            Value::Array(items) => items
                .iter_mut()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(part))
                .ok_or_else(|| err(path, format!("no entry named `{part}`")))?,
            _ => return Err(err(path, format!("`{part}` is not inside a table"))),
        };
    }
    Err(err(path, "is empty"))
}

/// Checks an edited scenario value.
pub fn check(value: Value, base: &Path) -> Result<Scenario, ScenarioError> {
    from_value(value, base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
duration = "1h"
[[machines]]
count = 10
resources = "cpus:4;mem:16384"
racks = 2
[[frameworks]]
name = "batch"
t_job = "0.1s"
[frameworks.workload]
interarrival = "exp 10s"
tasks = "exp 5"
duration = "exp 60s"
cpus = "0.5"
mem = "512"
"#;

    #[test]
    fn a_minimal_scenario_parses() {
        let s = parse(MINIMAL, Path::new(".")).expect("valid");
        assert_eq!(s.duration_ms, 3_600_000);
        assert_eq!(s.frameworks[0].t_job_ms, 100.0);
        assert_eq!(s.frameworks[0].role, "batch");
        assert_eq!(s.machines[0].racks, 2);
        assert_eq!(
            s.offer_policy,
            agora_master::MasterConfig::default().offer_policy
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("duration = \"1h\"", "duration = \"forever\"", "duration"),
            ("count = 10", "count = 0", "machines[0].count"),
            (
                "resources = \"cpus:4;mem:16384\"",
                "resources = \"cpus:x\"",
                "machines[0].resources",
            ),
            (
                "t_job = \"0.1s\"",
                "t_job = \"fast\"",
                "frameworks[0].t_job",
            ),
            (
                "interarrival = \"exp 10s\"",
                "interarrival = \"poisson 3\"",
                "frameworks[0].workload.interarrival",
            ),
            (
                "tasks = \"exp 5\"",
                "tasks = \"exp -1\"",
                "frameworks[0].workload.tasks",
            ),
            (
                "name = \"t\"",
                "name = \"t\"\noffer_policy = \"greedy\"",
                "offer_policy",
            ),
            ("racks = 2", "racks = 2\ncolour = 1", "machines[0].colour"),
        ];
        for (from, to, field) in cases {
            let text = MINIMAL.replace(from, to);
            let e = parse(&text, Path::new(".")).expect_err(to);
            assert_eq!(e.field, field, "{to}: {e}");
        }
        let text = format!("{MINIMAL}[[events]]\nat = \"1h\"\nkind = \"explode\"\n");
        assert_eq!(
            parse(&text, Path::new(".")).expect_err("kind").field,
            "events[0].kind"
        );
    }

    #[test]
    fn sweeps_set_a_framework_field_by_name() {
        let mut v = parse_value(MINIMAL).expect("toml");
        set_param(&mut v, "frameworks.batch.t_job", "10").expect("set");
        set_param(&mut v, "offer_policy", "capped:0.5").expect("set");
        let s = check(v, Path::new(".")).expect("valid");
        assert_eq!(s.frameworks[0].t_job_ms, 10_000.0);
        assert!(matches!(s.offer_policy, OfferPolicy::Capped { .. }));
        let mut v = parse_value(MINIMAL).expect("toml");
        assert!(set_param(&mut v, "frameworks.nobody.t_job", "1").is_err());
        // A machine class is picked by its `name` ("add 10% machines").
        let named = MINIMAL.replace("count = 10", "name = \"main\"\ncount = 10");
        let mut v = parse_value(&named).expect("toml");
        set_param(&mut v, "machines.main.count", "11").expect("set");
        assert_eq!(
            check(v, Path::new(".")).expect("valid").machines[0].count,
            11
        );
        let bad = MINIMAL.replace("count = 10", "name = 3\ncount = 10");
        assert_eq!(
            parse(&bad, Path::new(".")).expect_err("name").field,
            "machines[0].name"
        );
    }
}
