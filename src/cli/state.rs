//! `agora state`: the master's `/api/v1/state`, as tables or raw JSON.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `cpus:2 mem:1024 ports:[31000-31005]` from a resources object.
fn resources(v: &Value) -> String {
    match v.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}:{}", text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    }
}

fn table(title: &str, header: &[&str], rows: Vec<Vec<String>>) {
    println!("{title} ({})", rows.len());
    super::table::print_table("  ", header, &rows);
    println!();
}

pub async fn show(master: &str, json: bool) -> anyhow::Result<ExitCode> {
    let master = super::client::leading_master(master).await?;
    let url = format!("{}/api/v1/state", master.trim_end_matches('/'));
    let response = super::client::authenticated_client(std::time::Duration::from_secs(60))?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", text(&body["error"]));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = |key: &str| body[key].as_array().cloned().unwrap_or_default();
    table(
        "agents",
        &["ID", "HOSTNAME", "STATUS", "TOTAL", "USED", "OFFERED"],
        list("agents")
            .iter()
            .map(|a| {
                vec![
                    text(&a["id"]),
                    text(&a["hostname"]),
                    text(&a["status"]),
                    resources(&a["resources"]["total"]),
                    resources(&a["resources"]["used"]),
                    resources(&a["resources"]["offered"]),
                ]
            })
            .collect(),
    );
    table(
        "frameworks",
        &["ID", "NAME", "ROLE", "ACTIVE", "TASKS", "USED"],
        list("frameworks")
            .iter()
            .map(|f| {
                vec![
                    text(&f["id"]),
                    text(&f["name"]),
                    text(&f["role"]),
                    text(&f["active"]),
                    text(&f["task_count"]),
                    resources(&f["used"]),
                ]
            })
            .collect(),
    );
    table(
        "tasks",
        &["ID", "FRAMEWORK", "AGENT", "STATE", "RESOURCES", "MESSAGE"],
        list("tasks")
            .iter()
            .map(|t| {
                vec![
                    text(&t["id"]),
                    text(&t["framework_id"]),
                    text(&t["agent_id"]),
                    text(&t["state"]),
                    resources(&t["resources"]),
                    text(&t["message"]),
                ]
            })
            .collect(),
    );
    Ok(ExitCode::SUCCESS)
}
