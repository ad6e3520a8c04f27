//! App specs: TOML or JSON (one app, or several as `[[app]]` tables or a
//! JSON list) into a checked [`AppSpec`]. Every problem names its field;
//! nothing half-parsed escapes. The conventions are batch's (the SDK's
//! `spec` helpers).

use std::collections::BTreeMap;
use std::time::Duration;

use agora_sdk::placement::Constraint;
use agora_sdk::spec::{
    SpecError, boolean, check_fields, constraints, duration, integer, number, string,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How a health check reaches an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
    Command,
}

/// A health check, run by the agent next to each instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    pub protocol: Protocol,
    /// Index into the app's `ports`.
    pub port_index: usize,
    pub path: String,
    pub command: String,
    pub grace_period_ms: u64,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub max_consecutive_failures: u32,
}

/// How a deployment replaces instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeSpec {
    /// Share of the wanted instances kept healthy during a deployment.
    pub minimum_health_capacity: f64,
    /// Extra instances allowed during a deployment, as a share of the wanted.
    pub maximum_over_capacity: f64,
    /// Roll back by itself when the new version fails.
    pub auto_rollback: bool,
    /// New-version instances that may fail before the deployment fails.
    pub max_failures: u32,
    /// A deployment without progress for this long fails.
    pub progress_deadline_ms: u64,
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        UpgradeSpec {
            minimum_health_capacity: 1.0,
            maximum_over_capacity: 1.0,
            auto_rollback: true,
            max_failures: 3,
            progress_deadline_ms: 300_000,
        }
    }
}

/// The delay before an app's next launch after its instances fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackoffSpec {
    pub initial_ms: u64,
    pub factor: f64,
    pub max_ms: u64,
}

impl Default for BackoffSpec {
    fn default() -> Self {
        BackoffSpec {
            initial_ms: 1000,
            factor: 2.0,
            max_ms: 300_000,
        }
    }
}

/// Load balancing by Agora: a TCP port on the load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub port: u16,
    /// How long a leaving instance's connections may take to finish before
    /// it is stopped anyway.
    pub drain_timeout_ms: u64,
}

/// Scaling by measured cpu use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleSpec {
    pub min: u32,
    pub max: u32,
    /// Share of the requested cpus each instance should use.
    pub target_cpu: f64,
    /// Least time between two scalings (and how long use must stay low
    /// before scaling down).
    pub cooldown_ms: u64,
}

/// A checked app definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    pub id: String,
    pub cmd: String,
    pub image: String,
    /// Who the instances run as (empty: the agent's default, `nobody`).
    #[serde(default)]
    pub user: String,
    /// Host paths the instances may write besides their sandbox
    /// (`"/srv/data"`, `"/srv/data:ro"`).
    #[serde(default)]
    pub volumes: Vec<agora_sdk::spec::Volume>,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub instances: u32,
    /// Port names; each instance gets a host port per name.
    pub ports: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    pub kill_grace_period_ms: u64,
    pub health_check: Option<HealthCheckSpec>,
    pub upgrade: UpgradeSpec,
    pub backoff: BackoffSpec,
    pub service: Option<ServiceSpec>,
    pub autoscale: Option<AutoscaleSpec>,
    /// The principal that deployed the app (set by the API from who called,
    /// never by the spec): only it, or an operator, sees and changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl AppSpec {
    /// What an instance is made of: two specs equal here run the same
    /// instances (a change elsewhere — instances, upgrade, backoff, service,
    /// autoscale — replaces nothing).
    pub fn launch_fields_eq(&self, other: &AppSpec) -> bool {
        self.cmd == other.cmd
            && self.image == other.image
            && self.user == other.user
            && self.volumes == other.volumes
            && self.cpus == other.cpus
            && self.mem == other.mem
            && self.disk == other.disk
            && self.ports == other.ports
            && self.env == other.env
            && self.constraints == other.constraints
            && self.kill_grace_period_ms == other.kill_grace_period_ms
            && self.health_check == other.health_check
    }
}

const FIELDS: &[&str] = &[
    "id",
    "cmd",
    "image",
    "user",
    "volumes",
    "cpus",
    "mem",
    "disk",
    "instances",
    "ports",
    "env",
    "constraints",
    "kill_grace_period",
    "health_checks",
    "upgrade",
    "backoff",
    "service",
    "autoscale",
];

pub const MAX_INSTANCES: u32 = 10_000;
const MAX_PORTS: usize = 16;
/// Words that follow an app id in API paths, so no id segment may be one.
pub const RESERVED: &[&str] = &[
    "versions",
    "endpoints",
    "scale",
    "rollback",
    "restart",
    "deployments",
];

/// Parses the apps of a spec file.
pub fn parse(text: &str) -> Result<Vec<AppSpec>, SpecError> {
    let items = agora_sdk::spec::split(text, "app", "app")?;
    let many = items.len() > 1;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(map) = item else {
                return Err(SpecError::new(format!("app[{i}]"), "must be a table"));
            };
            from_map(map).map_err(|e| {
                if many {
                    e.within(&format!("app[{i}]."))
                } else {
                    e
                }
            })
        })
        .collect()
}

/// App ids: segments of a-z, 0-9 and `-` separated by `/` (`shop/web`).
pub fn check_id(id: &str, field: &str) -> Result<(), SpecError> {
    let bad = |why: &str| {
        Err(SpecError::new(
            field,
            format!("`{id}` is not an app id: {why}"),
        ))
    };
    if id.is_empty() || id.len() > 100 {
        return bad("use 1-100 characters");
    }
    for segment in id.split('/') {
        let ok = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !segment.starts_with('-');
        if !ok {
            return bad(
                "use segments of a-z, 0-9 and `-` (not starting with `-`) separated by `/`",
            );
        }
        if RESERVED.contains(&segment) {
            return bad(&format!("`{segment}` is reserved for the API"));
        }
    }
    Ok(())
}

fn take_table(v: Option<Value>, field: &str) -> Result<Option<Map<String, Value>>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(SpecError::new(
            field,
            format!("must be a table, got {other}"),
        )),
    }
}

fn from_map(mut map: Map<String, Value>) -> Result<AppSpec, SpecError> {
    check_fields(&map, FIELDS)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let id = string(take("id"), "id")?.ok_or_else(|| SpecError::new("id", "is required"))?;
    check_id(&id, "id")?;
    let cmd = string(take("cmd"), "cmd")?.ok_or_else(|| SpecError::new("cmd", "is required"))?;
    if cmd.trim().is_empty() {
        return Err(SpecError::new("cmd", "must not be empty"));
    }
    let image = string(take("image"), "image")?.unwrap_or_default();
    let user = agora_sdk::spec::user(take("user"), "user")?;
    let volumes = agora_sdk::spec::volumes(take("volumes"), "volumes")?;
    let cpus = number(take("cpus"), "cpus")?.unwrap_or(0.1);
    if !(0.01..=1e6).contains(&cpus) {
        return Err(SpecError::new(
            "cpus",
            format!("must be a number from 0.01, got {cpus}"),
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
    let instances =
        integer(take("instances"), "instances", 0, MAX_INSTANCES as i64)?.unwrap_or(1) as u32;
    let ports = ports(take("ports"))?;
    let env = agora_sdk::spec::env(take("env"), "AGORA_")?;
    agora_sdk::spec::check_task_size(&cmd, &env)?;
    if let Some(name) = env.keys().find(|k| *k == "PORT" || k.starts_with("PORT")) {
        return Err(SpecError::new(
            format!("env.{name}"),
            "PORT variables are set from the instance's ports",
        ));
    }
    let constraints = constraints(take("constraints"))?;
    let kill_grace = duration(
        take("kill_grace_period"),
        "kill_grace_period",
        Duration::from_secs(3600),
    )?
    .unwrap_or(Duration::from_secs(10));
    let health_check = health_checks(take("health_checks"), &ports)?;
    let upgrade = upgrade(take_table(take("upgrade"), "upgrade")?)?;
    let backoff = backoff(take_table(take("backoff"), "backoff")?)?;
    let service = service(take_table(take("service"), "service")?)?;
    if service.is_some() && ports.is_empty() {
        return Err(SpecError::new(
            "service",
            "load balancing needs at least one port in `ports` (the first is balanced)",
        ));
    }
    let autoscale = autoscale(take_table(take("autoscale"), "autoscale")?)?;
    if let Some(a) = &autoscale
        && !(a.min..=a.max).contains(&instances)
    {
        return Err(SpecError::new(
            "instances",
            format!("{instances} is outside autoscale's {}..{}", a.min, a.max),
        ));
    }
    Ok(AppSpec {
        id,
        cmd,
        image,
        user,
        volumes,
        cpus,
        mem,
        disk,
        instances,
        ports,
        env,
        constraints,
        kill_grace_period_ms: kill_grace.as_millis() as u64,
        health_check,
        upgrade,
        backoff,
        service,
        autoscale,
        owner: None,
    })
}

fn ports(v: Option<Value>) -> Result<Vec<String>, SpecError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(SpecError::new("ports", "must be a list of port names"));
    };
    if items.len() > MAX_PORTS {
        return Err(SpecError::new(
            "ports",
            format!("at most {MAX_PORTS} ports, got {}", items.len()),
        ));
    }
    let mut names = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("ports[{i}]");
        let Value::String(name) = item else {
            return Err(SpecError::new(field, "must be a name (a string)"));
        };
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            return Err(SpecError::new(
                field,
                format!("`{name}` is not a port name: use 1-32 of a-z, 0-9, `-`, `_`"),
            ));
        }
        if names.contains(&name) {
            return Err(SpecError::new(field, format!("`{name}` is named twice")));
        }
        names.push(name);
    }
    Ok(names)
}

/// The environment variable that carries port `name`: `PORT_HTTP`.
pub fn port_variable(name: &str) -> String {
    format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_"))
}

fn health_checks(v: Option<Value>, ports: &[String]) -> Result<Option<HealthCheckSpec>, SpecError> {
    let items = match v {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(one @ Value::Object(_)) => vec![one],
        Some(_) => {
            return Err(SpecError::new(
                "health_checks",
                "must be a list of [[health_checks]] tables",
            ));
        }
    };
    if items.len() > 1 {
        return Err(SpecError::new(
            "health_checks",
            "one health check per app is supported",
        ));
    }
    let Some(item) = items.into_iter().next() else {
        return Ok(None);
    };
    let field = "health_checks[0]";
    let Value::Object(mut map) = item else {
        return Err(SpecError::new(field, "must be a table"));
    };
    let within = |e: SpecError| e.within(&format!("{field}."));
    check_fields(
        &map,
        &[
            "protocol",
            "port",
            "path",
            "command",
            "grace_period",
            "interval",
            "timeout",
            "max_consecutive_failures",
        ],
    )
    .map_err(within)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let protocol = match string(take("protocol"), "protocol")
        .map_err(within)?
        .as_deref()
    {
        None | Some("http") => Protocol::Http,
        Some("tcp") => Protocol::Tcp,
        Some("command") => Protocol::Command,
        Some(other) => {
            return Err(within(SpecError::new(
                "protocol",
                format!("must be http, tcp or command, got `{other}`"),
            )));
        }
    };
    let port_index = match take("port") {
        None => 0,
        Some(Value::String(name)) => ports.iter().position(|p| *p == name).ok_or_else(|| {
            within(SpecError::new(
                "port",
                format!("`{name}` is not one of the app's ports {ports:?}"),
            ))
        })?,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(i) if (i as usize) < ports.len() => i as usize,
            _ => {
                return Err(within(SpecError::new(
                    "port",
                    format!("index {n} but the app has {} port(s)", ports.len()),
                )));
            }
        },
        Some(other) => {
            return Err(within(SpecError::new(
                "port",
                format!("must be a port name or index, got {other}"),
            )));
        }
    };
    if protocol != Protocol::Command && ports.is_empty() {
        return Err(within(SpecError::new(
            "protocol",
            "http and tcp checks need a port in the app's `ports`",
        )));
    }
    let path = string(take("path"), "path")
        .map_err(within)?
        .unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(within(SpecError::new(
            "path",
            format!("`{path}` must start with `/` and hold no spaces"),
        )));
    }
    let command = string(take("command"), "command")
        .map_err(within)?
        .unwrap_or_default();
    if protocol == Protocol::Command && command.trim().is_empty() {
        return Err(within(SpecError::new(
            "command",
            "a command check needs a command",
        )));
    }
    let hour = Duration::from_secs(3600);
    let ms = |d: Duration| d.as_millis() as u64;
    let grace = duration(take("grace_period"), "grace_period", hour).map_err(within)?;
    let interval = duration(take("interval"), "interval", hour).map_err(within)?;
    let timeout = duration(take("timeout"), "timeout", hour).map_err(within)?;
    let interval = interval.unwrap_or(Duration::from_secs(5));
    if interval < Duration::from_millis(100) {
        return Err(within(SpecError::new("interval", "must be at least 100ms")));
    }
    let timeout = timeout.unwrap_or(Duration::from_secs(2));
    if timeout.is_zero() {
        return Err(within(SpecError::new(
            "timeout",
            "must be longer than zero",
        )));
    }
    let max = integer(
        take("max_consecutive_failures"),
        "max_consecutive_failures",
        0,
        1000,
    )
    .map_err(within)?
    .unwrap_or(3) as u32;
    Ok(Some(HealthCheckSpec {
        protocol,
        port_index,
        path,
        command,
        grace_period_ms: ms(grace.unwrap_or(Duration::from_secs(30))),
        interval_ms: ms(interval),
        timeout_ms: ms(timeout),
        max_consecutive_failures: max,
    }))
}

fn share(v: Option<Value>, field: &str) -> Result<Option<f64>, SpecError> {
    match number(v, field)? {
        Some(x) if !(0.0..=1.0).contains(&x) => Err(SpecError::new(
            field,
            format!("must be between 0 and 1, got {x}"),
        )),
        other => Ok(other),
    }
}

fn upgrade(map: Option<Map<String, Value>>) -> Result<UpgradeSpec, SpecError> {
    let mut spec = UpgradeSpec::default();
    let Some(mut map) = map else {
        return Ok(spec);
    };
    let within = |e: SpecError| e.within("upgrade.");
    check_fields(
        &map,
        &[
            "minimum_health_capacity",
            "maximum_over_capacity",
            "auto_rollback",
            "max_failures",
            "progress_deadline",
        ],
    )
    .map_err(within)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    if let Some(x) =
        share(take("minimum_health_capacity"), "minimum_health_capacity").map_err(within)?
    {
        spec.minimum_health_capacity = x;
    }
    if let Some(x) =
        share(take("maximum_over_capacity"), "maximum_over_capacity").map_err(within)?
    {
        spec.maximum_over_capacity = x;
    }
    if let Some(b) = boolean(take("auto_rollback"), "auto_rollback").map_err(within)? {
        spec.auto_rollback = b;
    }
    if let Some(n) = integer(take("max_failures"), "max_failures", 1, 1000).map_err(within)? {
        spec.max_failures = n as u32;
    }
    if let Some(d) = duration(
        take("progress_deadline"),
        "progress_deadline",
        Duration::from_secs(86_400),
    )
    .map_err(within)?
    {
        if d < Duration::from_secs(1) {
            return Err(within(SpecError::new(
                "progress_deadline",
                "must be at least 1s",
            )));
        }
        spec.progress_deadline_ms = d.as_millis() as u64;
    }
    Ok(spec)
}

fn backoff(map: Option<Map<String, Value>>) -> Result<BackoffSpec, SpecError> {
    let mut spec = BackoffSpec::default();
    let Some(mut map) = map else {
        return Ok(spec);
    };
    let within = |e: SpecError| e.within("backoff.");
    check_fields(&map, &["initial", "factor", "max"]).map_err(within)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let hour = Duration::from_secs(3600);
    if let Some(d) = duration(take("initial"), "initial", hour).map_err(within)? {
        spec.initial_ms = d.as_millis() as u64;
    }
    if let Some(f) = number(take("factor"), "factor").map_err(within)? {
        if !(1.0..=10.0).contains(&f) {
            return Err(within(SpecError::new(
                "factor",
                format!("must be from 1 to 10, got {f}"),
            )));
        }
        spec.factor = f;
    }
    if let Some(d) = duration(take("max"), "max", hour).map_err(within)? {
        spec.max_ms = d.as_millis() as u64;
    }
    if spec.max_ms < spec.initial_ms {
        return Err(within(SpecError::new(
            "max",
            "must not be less than `initial`",
        )));
    }
    Ok(spec)
}

fn service(map: Option<Map<String, Value>>) -> Result<Option<ServiceSpec>, SpecError> {
    let Some(mut map) = map else {
        return Ok(None);
    };
    let within = |e: SpecError| e.within("service.");
    check_fields(&map, &["port", "drain_timeout"]).map_err(within)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let port = integer(take("port"), "port", 1, 65535)
        .map_err(within)?
        .ok_or_else(|| within(SpecError::new("port", "is required")))? as u16;
    let drain = duration(
        take("drain_timeout"),
        "drain_timeout",
        Duration::from_secs(3600),
    )
    .map_err(within)?
    .unwrap_or(Duration::from_secs(30));
    Ok(Some(ServiceSpec {
        port,
        drain_timeout_ms: drain.as_millis() as u64,
    }))
}

fn autoscale(map: Option<Map<String, Value>>) -> Result<Option<AutoscaleSpec>, SpecError> {
    let Some(mut map) = map else {
        return Ok(None);
    };
    let within = |e: SpecError| e.within("autoscale.");
    check_fields(&map, &["min", "max", "target_cpu", "cooldown"]).map_err(within)?;
    let mut take = |k: &str| map.remove(k).filter(|v| !v.is_null());
    let min = integer(take("min"), "min", 0, MAX_INSTANCES as i64)
        .map_err(within)?
        .unwrap_or(1) as u32;
    let max = integer(take("max"), "max", 1, MAX_INSTANCES as i64)
        .map_err(within)?
        .ok_or_else(|| within(SpecError::new("max", "is required")))? as u32;
    if max < min {
        return Err(within(SpecError::new(
            "max",
            format!("{max} is less than min {min}"),
        )));
    }
    let target = number(take("target_cpu"), "target_cpu")
        .map_err(within)?
        .ok_or_else(|| within(SpecError::new("target_cpu", "is required")))?;
    if !(target > 0.0 && target <= 10.0) {
        return Err(within(SpecError::new(
            "target_cpu",
            format!("must be above 0 (a share of the requested cpus), got {target}"),
        )));
    }
    let cooldown = duration(take("cooldown"), "cooldown", Duration::from_secs(3600))
        .map_err(within)?
        .unwrap_or(Duration::from_secs(30));
    Ok(Some(AutoscaleSpec {
        min,
        max,
        target_cpu: target,
        cooldown_ms: cooldown.as_millis() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
id = "shop/web"
cmd = "python3 -m http.server $PORT0"
cpus = 0.25
mem = 64
instances = 3
ports = ["http"]
env = { GREETING = "hi" }
constraints = [["hostname", "UNIQUE"], ["zone", "MAX_PER", "2"]]
kill_grace_period = "10s"
[[health_checks]]
protocol = "http"
port = "http"
path = "/"
grace_period = "10s"
interval = "2s"
timeout = "1s"
max_consecutive_failures = 3
[upgrade]
minimum_health_capacity = 0.5
maximum_over_capacity = 0.25
auto_rollback = true
[backoff]
initial = "1s"
factor = 2.0
max = "5m"
[service]
port = 18080
[autoscale]
min = 1
max = 10
target_cpu = 0.6
"#;

    #[test]
    fn the_full_example_parses() {
        let apps = parse(FULL).expect("valid");
        let app = &apps[0];
        assert_eq!(app.id, "shop/web");
        assert_eq!(app.instances, 3);
        assert_eq!(app.ports, vec!["http"]);
        let check = app.health_check.as_ref().expect("a check");
        assert_eq!(check.protocol, Protocol::Http);
        assert_eq!(check.interval_ms, 2000);
        assert_eq!(app.upgrade.minimum_health_capacity, 0.5);
        assert_eq!(app.service.as_ref().map(|s| s.port), Some(18080));
        assert_eq!(app.autoscale.as_ref().map(|a| a.max), Some(10));
        assert_eq!(app.constraints.len(), 2);
        assert_eq!(port_variable("http-alt"), "PORT_HTTP_ALT");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: &[(&str, &str)] = &[
            ("id = \"Web\"\ncmd = \"x\"", "id"),
            ("id = \"a/versions\"\ncmd = \"x\"", "id"),
            ("id = \"a\"", "cmd"),
            ("id = \"a\"\ncmd = \"x\"\ncpus = -1", "cpus"),
            ("id = \"a\"\ncmd = \"x\"\ncpus = nan", "cpus"),
            ("id = \"a\"\ncmd = \"x\"\nmem = \"lots\"", "mem"),
            ("id = \"a\"\ncmd = \"x\"\ninstances = -2", "instances"),
            (
                "id = \"a\"\ncmd = \"x\"\nports = [\"http\", \"http\"]",
                "ports[1]",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\nenv = { PORT0 = \"1\" }",
                "env.PORT0",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\nkill_grace_period = \"1e20\"",
                "kill_grace_period",
            ),
            ("id = \"a\"\ncmd = \"x\"\ncolour = \"red\"", "colour"),
            (
                "id = \"a\"\ncmd = \"x\"\nconstraints = [[\"zone\", \"NEAR\", \"a\"]]",
                "constraints[0]",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\n[[health_checks]]\nprotocol = \"http\"",
                "health_checks[0].protocol",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\nports = [\"p\"]\n[[health_checks]]\nport = \"q\"",
                "health_checks[0].port",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\nports = [\"p\"]\n[[health_checks]]\ninterval = \"1ms\"",
                "health_checks[0].interval",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\n[upgrade]\nminimum_health_capacity = 2",
                "upgrade.minimum_health_capacity",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\n[upgrade]\nauto_rollback = \"yes\"",
                "upgrade.auto_rollback",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\n[backoff]\nfactor = 0.5",
                "backoff.factor",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\nports = [\"p\"]\n[service]\nport = 70000",
                "service.port",
            ),
            ("id = \"a\"\ncmd = \"x\"\n[service]\nport = 8080", "service"),
            (
                "id = \"a\"\ncmd = \"x\"\n[autoscale]\nmin = 3\nmax = 2\ntarget_cpu = 0.5",
                "autoscale.max",
            ),
            (
                "id = \"a\"\ncmd = \"x\"\ninstances = 20\n[autoscale]\nmax = 5\ntarget_cpu = 0.5",
                "instances",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(&err.field, field, "{text}: {err}");
        }
    }

    #[test]
    fn several_apps_and_json() {
        let apps = parse("[[app]]\nid = \"a\"\ncmd = \"x\"\n[[app]]\nid = \"b\"\ncmd = \"y\"\n")
            .expect("two");
        assert_eq!(apps.len(), 2);
        let err =
            parse("[[app]]\nid = \"a\"\ncmd = \"x\"\n[[app]]\nid = \"b\"\n").expect_err("cmd");
        assert_eq!(err.field, "app[1].cmd");
        let json = parse(r#"{"id": "j", "cmd": "true", "instances": 2}"#).expect("json");
        assert_eq!(json[0].instances, 2);
    }

    #[test]
    fn what_changes_instances() {
        let a = &parse("id = \"a\"\ncmd = \"x\"\ninstances = 2").expect("a")[0];
        let b = &parse("id = \"a\"\ncmd = \"x\"\ninstances = 5").expect("b")[0];
        let c = &parse("id = \"a\"\ncmd = \"y\"\ninstances = 2").expect("c")[0];
        assert!(a.launch_fields_eq(b), "scaling is not a new instance");
        assert!(!a.launch_fields_eq(c));
    }
}
