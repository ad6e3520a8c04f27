//! Helpers for frameworks' spec files (TOML or JSON, one item or several):
//! reading fields with a [`SpecError`] that names the field at fault,
//! durations, environments and placement constraints. Batch jobs and
//! services apps share these conventions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::placement::Constraint;

/// A spec that was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error about `prefix` + field (e.g. `job[1].` or `upgrade.`).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}{}", self.field);
        self
    }
}

/// The items of a spec file as JSON objects, unchecked. JSON when the text
/// opens with `{` or a JSON list, else TOML; a TOML file may hold several
/// items as `[[list_key]]` tables (`what` names an item in errors).
pub fn split(text: &str, list_key: &str, what: &str) -> Result<Vec<Value>, SpecError> {
    let trimmed = text.trim_start();
    // `[[job]]` and `[table]` open TOML; `[{` and `[]` open a JSON list.
    let json_list = trimmed
        .strip_prefix('[')
        .is_some_and(|rest| rest.trim_start().starts_with(['{', ']']));
    let value: Value = if trimmed.starts_with('{') || json_list {
        serde_json::from_str(text)
            .map_err(|e| SpecError::new("spec", format!("not valid JSON: {e}")))?
    } else {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| SpecError::new("spec", format!("not valid TOML: {}", e.message())))?;
        // JSON has no NaN or infinity: they would silently turn into nulls
        // (and then into defaults).
        if let Some(field) = non_finite(&toml::Value::Table(table.clone()), "") {
            return Err(SpecError::new(field, "must be a finite number"));
        }
        serde_json::to_value(table).map_err(|e| SpecError::new("spec", e.to_string()))?
    };
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if map.len() == 1 && map.contains_key(list_key) => {
            match map.remove(list_key) {
                Some(Value::Array(items)) => items,
                Some(one @ Value::Object(_)) => vec![one],
                _ => {
                    return Err(SpecError::new(
                        list_key,
                        "must be a table or a list of tables",
                    ));
                }
            }
        }
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(SpecError::new(
                "spec",
                format!("must be a {what}, or a list of them"),
            ));
        }
    };
    if items.is_empty() {
        return Err(SpecError::new("spec", format!("holds no {what}")));
    }
    Ok(items)
}

/// The path of the first NaN or infinite float in a TOML value.
fn non_finite(value: &toml::Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(path.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, v)| non_finite(v, &join(k))),
        toml::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| non_finite(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Refuses fields not in `known`.
pub fn check_fields(map: &Map<String, Value>, known: &[&str]) -> Result<(), SpecError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(SpecError::new(
            unknown.clone(),
            format!("unknown field (known fields: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

pub fn string(v: Option<Value>, field: &str) -> Result<Option<String>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(SpecError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

pub fn number(v: Option<Value>, field: &str) -> Result<Option<f64>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(SpecError::new(field, "must be a finite number")),
        },
        Some(other) => Err(SpecError::new(
            field,
            format!("must be a number, got {other}"),
        )),
    }
}

pub fn integer(
    v: Option<Value>,
    field: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
            _ => Err(SpecError::new(
                field,
                format!("must be a whole number from {min} to {max}, got {n}"),
            )),
        },
        Some(other) => Err(SpecError::new(
            field,
            format!("must be a whole number, got {other}"),
        )),
    }
}

pub fn boolean(v: Option<Value>, field: &str) -> Result<Option<bool>, SpecError> {
    match v {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(SpecError::new(
            field,
            format!("must be true or false, got {other}"),
        )),
    }
}

/// A duration field (`"10s"`, `"1h30m"`), at most `max`.
pub fn duration(
    v: Option<Value>,
    field: &str,
    max: Duration,
) -> Result<Option<Duration>, SpecError> {
    let Some(text) = string(v, field)? else {
        return Ok(None);
    };
    let d = parse_duration(&text).map_err(|m| SpecError::new(field, m))?;
    if d > max {
        return Err(SpecError::new(
            field,
            format!("may be at most {}", format_duration(max)),
        ));
    }
    Ok(Some(d))
}

/// `90s`, `5m`, `2h`: the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

pub use agora_proto::parse_duration;

/// An environment table (`NAME = "value"`); names starting with
/// `reserved_prefix` are refused (the framework sets those).
pub fn env(v: Option<Value>, reserved_prefix: &str) -> Result<BTreeMap<String, String>, SpecError> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err(SpecError::new("env", "must be a table of NAME = \"value\""));
    };
    let mut env = BTreeMap::new();
    for (name, value) in map {
        let field = format!("env.{name}");
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SpecError::new(field, "is not a valid variable name"));
        }
        if name.starts_with(reserved_prefix) {
            return Err(SpecError::new(
                field,
                format!("{reserved_prefix} variables are set by the framework"),
            ));
        }
        let value = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(SpecError::new(
                    field,
                    format!("must be a string, got {other}"),
                ));
            }
        };
        env.insert(name, value);
    }
    Ok(env)
}

/// A `constraints` list of `[attribute, operator, value]`.
pub fn constraints(v: Option<Value>) -> Result<Vec<Constraint>, SpecError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(SpecError::new(
            "constraints",
            "must be a list of [attribute, operator, value]",
        ));
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let field = format!("constraints[{i}]");
        let parts: Vec<String> = match item {
            Value::Array(parts) => parts
                .into_iter()
                .map(|p| match p {
                    Value::String(s) => Ok(s),
                    other => Err(SpecError::new(
                        &field,
                        format!("parts must be strings, got {other}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(SpecError::new(
                    field,
                    "must be [attribute, operator, value]",
                ));
            }
        };
        out.push(Constraint::parse(&parts).map_err(|message| SpecError::new(&field, message))?);
    }
    Ok(out)
}

/// Room left in a task for what the framework adds (ids, resources,
/// variables like `AGORA_JOB`, a health check).
const TASK_OVERHEAD_BYTES: usize = 64 * 1024;

/// Refuses a command and environment too big for one task (see
/// `agora_proto::limits::MAX_TASK_BYTES`): refused at submission, named,
/// rather than failing at launch.
pub fn check_task_size(cmd: &str, env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    let bytes = cmd.len()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>();
    let max = agora_proto::limits::MAX_TASK_BYTES - TASK_OVERHEAD_BYTES;
    if bytes > max {
        return Err(SpecError::new(
            "cmd",
            format!(
                "the command and environment take {bytes} bytes; a task may hold at most {max}"
            ),
        ));
    }
    Ok(())
}

/// A spec's `user`: who its tasks run as (empty: the agent's default). A
/// POSIX user name, so it can be looked up on the agents.
pub fn user(v: Option<Value>, field: &str) -> Result<String, SpecError> {
    let name = string(v, field)?.unwrap_or_default();
    let ok = name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('-');
    if ok {
        Ok(name)
    } else {
        Err(SpecError::new(
            field,
            format!("`{}` is not a user name", name.escape_debug()),
        ))
    }
}

/// A host path a spec's tasks may write besides their sandbox (or read
/// only).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub host_path: String,
    #[serde(default)]
    pub read_only: bool,
}

impl Volume {
    /// As a task carries them.
    pub fn to_proto(volumes: &[Volume]) -> Vec<agora_proto::v1::Volume> {
        volumes
            .iter()
            .map(|v| agora_proto::v1::Volume {
                host_path: v.host_path.clone(),
                read_only: v.read_only,
            })
            .collect()
    }
}

/// A spec's `volumes`: `"/srv/data"`, or `"/srv/data:ro"` to read only.
pub fn volumes(v: Option<Value>, field: &str) -> Result<Vec<Volume>, SpecError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(SpecError::new(field, "must be a list of paths"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Value::String(text) = item else {
            return Err(SpecError::new(at, "must be a path"));
        };
        let (path, read_only) = match text.strip_suffix(":ro") {
            Some(p) => (p.to_string(), true),
            None => (text.strip_suffix(":rw").unwrap_or(&text).to_string(), false),
        };
        if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "..") {
            return Err(SpecError::new(
                at,
                format!("`{path}` must be an absolute path other than `/`, without `..`"),
            ));
        }
        out.push(Volume {
            host_path: path,
            read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_in_their_largest_unit() {
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }

    #[test]
    fn toml_nan_and_infinity_are_refused_with_their_field() {
        let err = split("id = \"a\"\ncpus = nan\n", "job", "job").expect_err("nan");
        assert_eq!(err.field, "cpus");
        let err = split("id = \"a\"\n[upgrade]\nfactor = inf\n", "job", "job").expect_err("inf");
        assert_eq!(err.field, "upgrade.factor");
    }

    #[test]
    fn several_items_and_errors() {
        let items = split("[[app]]\nid = \"a\"\n[[app]]\nid = \"b\"\n", "app", "app").expect("two");
        assert_eq!(items.len(), 2);
        assert_eq!(
            split("[]", "app", "app").expect_err("empty").message,
            "holds no app"
        );
        let map = serde_json::json!({"id": "a", "kil": 1});
        let Value::Object(map) = map else {
            unreachable!()
        };
        assert_eq!(
            check_fields(&map, &["id"]).expect_err("unknown").field,
            "kil"
        );
    }
}
