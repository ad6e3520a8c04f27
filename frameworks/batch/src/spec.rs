//! Job specs: parsing TOML or JSON into a checked [`JobSpec`]. Every problem
//! is reported with the field it is about, and nothing half-parsed escapes.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What happens when a run is due while another run of the job is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Start the new run beside the old one.
    Allow,
    /// Skip the new run.
    Forbid,
    /// Kill the old run, then start the new one.
    Replace,
}

pub use agora_sdk::placement::{Constraint, Operator};
pub use agora_sdk::spec::{SpecError, parse_duration};
use agora_sdk::spec::{boolean, check_fields, constraints, integer, number, string};

/// A checked job definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub id: String,
    pub cmd: String,
    pub cpus: f64,
    /// MiB.
    pub mem: f64,
    /// MiB.
    pub disk: f64,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub retries: u32,
    /// First retry delay; doubles with each further retry (capped at 5 min).
    pub backoff_ms: u64,
    pub timeout_ms: Option<u64>,
    pub priority: i64,
    pub depends_on: Vec<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub concurrency: Concurrency,
    pub constraints: Vec<Constraint>,
    /// Killed by its agent once the agent has lost the master for longer
    /// than the agent timeout, so a replacement never runs beside it.
    #[serde(default = "yes")]
    pub stop_when_master_lost: bool,
    /// Who the tasks run as (empty: the agent's default, `nobody`).
    #[serde(default)]
    pub user: String,
    /// Host paths the tasks may write besides their sandbox.
    #[serde(default)]
    pub volumes: Vec<agora_sdk::spec::Volume>,
    /// The principal that submitted the job (set by the API from who
    /// called, never by the spec): only it, or an operator, sees and
    /// changes the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

fn yes() -> bool {
    true
}

const FIELDS: &[&str] = &[
    "id",
    "cmd",
    "cpus",
    "mem",
    "disk",
    "image",
    "env",
    "instances",
    "retries",
    "backoff",
    "timeout",
    "priority",
    "depends_on",
    "schedule",
    "timezone",
    "concurrency",
    "constraints",
    "stop_when_master_lost",
    "user",
    "volumes",
];

pub const MAX_INSTANCES: u32 = 1000;
pub const MAX_RETRIES: u32 = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Parses one job or several (a TOML file of `[[job]]` tables, or a JSON
/// array) from `text`; JSON when it starts with `{` or `[`, else TOML.
pub fn parse(text: &str) -> Result<Vec<JobSpec>, SpecError> {
    let items = split(text)?;
    let many = items.len() > 1;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(map) = item else {
                return Err(SpecError::new(format!("job[{i}]"), "must be a table"));
            };
            from_map(map).map_err(|mut e| {
                if many {
                    e.field = format!("job[{i}].{}", e.field);
                }
                e
            })
        })
        .collect()
}

/// The jobs of a spec file as JSON values, unchecked: what a client sends
/// one by one (e.g. to update each job).
pub fn split(text: &str) -> Result<Vec<Value>, SpecError> {
    agora_sdk::spec::split(text, "job", "job")
}

fn from_map(mut map: Map<String, Value>) -> Result<JobSpec, SpecError> {
    check_fields(&map, FIELDS)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let id = string(take("id"), "id")?.ok_or_else(|| SpecError::new("id", "is required"))?;
    check_id(&id, "id")?;
    let cmd = string(take("cmd"), "cmd")?.ok_or_else(|| SpecError::new("cmd", "is required"))?;
    if cmd.trim().is_empty() {
        return Err(SpecError::new("cmd", "must not be empty"));
    }
    let cpus = number(take("cpus"), "cpus")?.unwrap_or(0.1);
    if !(cpus > 0.0 && cpus <= 1e6) {
        return Err(SpecError::new(
            "cpus",
            format!("must be a positive number, got {cpus}"),
        ));
    }
    let mem = number(take("mem"), "mem")?.unwrap_or(32.0);
    if !(1.0..=1e9).contains(&mem) {
        return Err(SpecError::new(
            "mem",
            format!("must be at least 1 (MiB), got {mem}"),
        ));
    }
    let disk = number(take("disk"), "disk")?.unwrap_or(0.0);
    if !(0.0..=1e12).contains(&disk) {
        return Err(SpecError::new(
            "disk",
            format!("must be 0 or more (MiB), got {disk}"),
        ));
    }
    let image = string(take("image"), "image")?.unwrap_or_default();
    let env = agora_sdk::spec::env(take("env"), "AGORA_")?;
    agora_sdk::spec::check_task_size(&cmd, &env)?;
    let instances =
        integer(take("instances"), "instances", 1, MAX_INSTANCES as i64)?.unwrap_or(1) as u32;
    let retries = integer(take("retries"), "retries", 0, MAX_RETRIES as i64)?.unwrap_or(0) as u32;
    let backoff = match string(take("backoff"), "backoff")? {
        Some(text) => parse_duration(&text).map_err(|m| SpecError::new("backoff", m))?,
        None => Duration::from_secs(1),
    };
    if backoff > MAX_BACKOFF {
        return Err(SpecError::new("backoff", "may be at most 5m"));
    }
    let timeout = match string(take("timeout"), "timeout")? {
        Some(text) => {
            let d = parse_duration(&text).map_err(|m| SpecError::new("timeout", m))?;
            if d.is_zero() {
                return Err(SpecError::new("timeout", "must be longer than zero"));
            }
            Some(d.as_millis() as u64)
        }
        None => None,
    };
    let priority = integer(take("priority"), "priority", -1_000_000, 1_000_000)?.unwrap_or(0);
    let depends_on = match take("depends_on") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut deps = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let field = format!("depends_on[{i}]");
                let Value::String(dep) = item else {
                    return Err(SpecError::new(field, "must be a job id (a string)"));
                };
                check_id(&dep, &field)?;
                if !deps.contains(&dep) {
                    deps.push(dep);
                }
            }
            deps
        }
        Some(_) => return Err(SpecError::new("depends_on", "must be a list of job ids")),
    };
    let schedule = string(take("schedule"), "schedule")?;
    let timezone = string(take("timezone"), "timezone")?.unwrap_or_else(|| "UTC".into());
    let tz = chrono_tz::Tz::from_str(&timezone).map_err(|_| {
        SpecError::new(
            "timezone",
            format!("unknown time zone `{timezone}` (e.g. UTC, Europe/Berlin)"),
        )
    })?;
    if let Some(cron) = &schedule {
        let parsed = parse_cron(cron).map_err(|m| SpecError::new("schedule", m))?;
        if parsed
            .find_next_occurrence(&chrono::Utc::now().with_timezone(&tz), false)
            .is_err()
        {
            return Err(SpecError::new("schedule", format!("`{cron}` never fires")));
        }
    }
    let concurrency = match string(take("concurrency"), "concurrency")?.as_deref() {
        None | Some("allow") => Concurrency::Allow,
        Some("forbid") => Concurrency::Forbid,
        Some("replace") => Concurrency::Replace,
        Some(other) => {
            return Err(SpecError::new(
                "concurrency",
                format!("must be allow, forbid or replace, got `{other}`"),
            ));
        }
    };
    let constraints = constraints(take("constraints"))?;
    let stop_when_master_lost =
        boolean(take("stop_when_master_lost"), "stop_when_master_lost")?.unwrap_or(true);
    let user = agora_sdk::spec::user(take("user"), "user")?;
    let volumes = agora_sdk::spec::volumes(take("volumes"), "volumes")?;
    Ok(JobSpec {
        id,
        cmd,
        cpus,
        mem,
        disk,
        image,
        env,
        instances,
        retries,
        backoff_ms: backoff.as_millis() as u64,
        timeout_ms: timeout,
        priority,
        depends_on,
        schedule,
        timezone,
        concurrency,
        constraints,
        stop_when_master_lost,
        user,
        volumes,
        owner: None,
    })
}

/// Job ids: lowercase letters, digits and `-`, starting with a letter or
/// digit, at most 63 characters (they become part of task ids and hostnames).
pub fn check_id(id: &str, field: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("`{id}` is not a job id: use 1-63 of a-z, 0-9 and `-`, not starting with `-`"),
        ))
    }
}

/// A cron pattern with an optional seconds field (5 or 6 fields).
pub fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    let fields = pattern.split_whitespace().count();
    if !pattern.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "`{pattern}` has {fields} fields; want 5 (min hour day month weekday) or 6 (with seconds first)"
        ));
    }
    croner::Cron::from_str(pattern).map_err(|e| format!("`{pattern}` does not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<JobSpec, SpecError> {
        parse(text).map(|mut v| v.remove(0))
    }

    fn field_of(text: &str) -> String {
        match one(text) {
            Ok(spec) => panic!("accepted: {spec:?}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let spec = one(r#"
            id = "nightly-report"
            cmd = "python3 report.py"
            cpus = 0.5
            mem = 256
            disk = 0
            image = ""
            env = { LEVEL = "info" }
            instances = 1
            retries = 2
            timeout = "10m"
            priority = 0
            depends_on = ["extract"]
            schedule = "0 */5 * * * *"
            timezone = "UTC"
            concurrency = "forbid"
            constraints = [["zone", "LIKE", "a"]]
        "#)
        .expect("valid");
        assert_eq!(spec.id, "nightly-report");
        assert_eq!(spec.timeout_ms, Some(600_000));
        assert_eq!(spec.concurrency, Concurrency::Forbid);
        assert_eq!(spec.env["LEVEL"], "info");
        assert_eq!(spec.constraints[0].operator, Operator::Like);
        let on = |zone: &str| agora_sdk::placement::AgentAttributes {
            attributes: [("zone".to_string(), zone.to_string())].into(),
            ..Default::default()
        };
        assert!(spec.constraints[0].check(&on("a"), &[]).is_ok());
        assert!(spec.constraints[0].check(&on("ab"), &[]).is_err());
    }

    #[test]
    fn json_and_toml_say_the_same() {
        let t = one("id = \"a\"\ncmd = \"true\"\ncpus = 1\nmem = 64\n").expect("toml");
        let j = one(r#"{"id": "a", "cmd": "true", "cpus": 1, "mem": 64}"#).expect("json");
        assert_eq!(t, j);
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = "id = \"a\"\ncmd = \"true\"\n";
        assert_eq!(field_of(&format!("{base}cpus = -1")), "cpus");
        assert_eq!(field_of(&format!("{base}mem = \"lots\"")), "mem");
        assert_eq!(
            field_of(&format!("{base}schedule = \"every tuesday\"")),
            "schedule"
        );
        assert_eq!(
            field_of(&format!("{base}schedule = \"99 * * * *\"")),
            "schedule"
        );
        assert_eq!(field_of(&format!("{base}colour = \"red\"")), "colour");
        assert_eq!(field_of(&format!("{base}timeout = \"soon\"")), "timeout");
        assert_eq!(
            field_of(&format!("{base}timezone = \"Mars/Olympus\"")),
            "timezone"
        );
        assert_eq!(
            field_of(&format!("{base}concurrency = \"sometimes\"")),
            "concurrency"
        );
        assert_eq!(field_of(&format!("{base}instances = 0")), "instances");
        assert_eq!(
            field_of(&format!(
                "{base}constraints = [[\"zone\", \"NEAR\", \"a\"]]"
            )),
            "constraints[0]"
        );
        assert_eq!(
            field_of(&format!("{base}depends_on = [\"Bad_Id\"]")),
            "depends_on[0]"
        );
        assert_eq!(field_of("id = \"Nope!\"\ncmd = \"true\""), "id");
        assert_eq!(field_of("id = \"a\""), "cmd");
        assert_eq!(
            field_of(r#"{"id": "a", "cmd": "true", "mem": "lots"}"#),
            "mem"
        );
    }

    #[test]
    fn several_jobs_in_one_file() {
        let jobs = parse("[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncmd = \"true\"\ndepends_on = [\"a\"]\n")
            .expect("valid");
        assert_eq!(jobs.len(), 2);
        let err = parse(
            "[[job]]\nid = \"a\"\ncmd = \"true\"\n[[job]]\nid = \"b\"\ncpus = -2\ncmd = \"x\"\n",
        )
        .expect_err("invalid");
        assert_eq!(err.field, "job[1].cpus");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn cron_with_and_without_seconds() {
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("0 3 * * MON").is_ok());
        assert!(parse_cron("* * *").is_err());
    }

    #[test]
    fn a_job_may_name_its_user_and_a_bad_name_is_refused() {
        let jobs = parse("id = \"a\"\ncmd = \"true\"\nuser = \"daemon\"\n").expect("valid");
        assert_eq!(jobs[0].user, "daemon");
        assert_eq!(
            parse("id = \"a\"\ncmd = \"true\"\n").expect("valid")[0].user,
            ""
        );
        let refused = parse("id = \"a\"\ncmd = \"true\"\nuser = \"a b\"\n").expect_err("bad");
        assert_eq!(refused.field, "user");
    }
}
