//! `agora app …`: deploy and manage long-running apps through the master,
//! which relays `/services/v1/…` to the services framework.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use super::AppCommand;
use super::client::{FrameworkApi, Refused, exit_on_refusal, read_spec, text, when};
use super::table::print_table;

const POLL: Duration = Duration::from_millis(300);

/// Runs an `app` subcommand.
pub async fn run(master: &str, command: AppCommand) -> anyhow::Result<ExitCode> {
    let api = FrameworkApi::new(master, "services", "agora services").await?;
    let result = match command {
        AppCommand::Deploy { file, wait } => deploy(&api, &file, wait).await,
        AppCommand::List => list(&api).await,
        AppCommand::Status { id, json } => status(&api, &id, json).await,
        AppCommand::Versions { id } => versions(&api, &id).await,
        AppCommand::Scale {
            id,
            instances,
            wait,
        } => {
            let v = api
                .post_json(
                    &format!("/apps/{id}/scale"),
                    json!({ "instances": instances }),
                )
                .await;
            started(&api, &id, v, wait, &format!("scaling {id} to {instances}")).await
        }
        AppCommand::Rollback { id, to, wait } => {
            let v = api
                .post_json(&format!("/apps/{id}/rollback"), json!({ "to": to }))
                .await;
            started(&api, &id, v, wait, &format!("rolling back {id}")).await
        }
        AppCommand::Restart { id, wait } => {
            let v = api.post(&format!("/apps/{id}/restart")).await;
            started(&api, &id, v, wait, &format!("restarting {id}")).await
        }
        AppCommand::Cancel { id } => cancel(&api, &id).await,
        AppCommand::Endpoints { id, json } => endpoints(&api, &id, json).await,
        AppCommand::Rm { id } => api
            .call(api.client.delete(format!("{}/apps/{id}", api.base)))
            .await
            .map(|_| {
                println!("removing {id}");
                ExitCode::SUCCESS
            }),
    };
    exit_on_refusal(result)
}

async fn started(
    api: &FrameworkApi,
    id: &str,
    answer: anyhow::Result<Value>,
    wait: bool,
    what: &str,
) -> anyhow::Result<ExitCode> {
    let v = answer?;
    let deployment = v["deployment"].as_u64().unwrap_or(0);
    println!("{what} (deployment {deployment})");
    if wait {
        return wait_for(api, &[(id.to_string(), deployment)]).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn deploy(api: &FrameworkApi, file: &str, wait: bool) -> anyhow::Result<ExitCode> {
    let (body, content_type) = read_spec(file)?;
    let created = api
        .call(
            api.client
                .post(format!("{}/apps", api.base))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await?;
    let mut waiting = Vec::new();
    for d in created["deployments"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let id = d["id"].as_str().unwrap_or_default().to_string();
        let deployment = d["deployment"].as_u64().unwrap_or(0);
        println!("{id} v{} (deployment {deployment})", d["version"]);
        waiting.push((id, deployment));
    }
    if wait {
        return wait_for(api, &waiting).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows deployments to their end, printing progress; exit 0 only if
/// every one succeeded.
async fn wait_for(api: &FrameworkApi, deployments: &[(String, u64)]) -> anyhow::Result<ExitCode> {
    let mut last = vec![String::new(); deployments.len()];
    let mut outcome = vec![None::<bool>; deployments.len()];
    loop {
        for (k, (id, number)) in deployments.iter().enumerate() {
            if outcome[k].is_some() {
                continue;
            }
            let app = match api.get(&format!("/apps/{id}")).await {
                Ok(app) => app,
                Err(e) if e.is::<Refused>() && e.to_string().starts_with("no app") => {
                    // Removed: a removal deployment's success.
                    println!("{id}: removed");
                    outcome[k] = Some(true);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let list = app["deployments"].as_array().cloned().unwrap_or_default();
            let Some(d) = list.iter().find(|d| d["id"].as_u64() == Some(*number)) else {
                println!("{id}: deployment {number} is no longer listed");
                outcome[k] = Some(false);
                continue;
            };
            let state = d["state"].as_str().unwrap_or("?");
            let counts = &app["instances"];
            let line = format!(
                "{id}: {} v{} — {}/{} healthy, {} running, {} starting, {} leaving",
                state.to_lowercase(),
                d["to_version"],
                counts["healthy"],
                counts["wanted"],
                counts["running"],
                counts["staged"],
                counts["leaving"],
            );
            if line != last[k] {
                println!("{line}");
                if let Some(w) = app["waiting"].as_object()
                    && let Some(reasons) = w.get("reasons").and_then(Value::as_object)
                    && !reasons.is_empty()
                {
                    let why: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{r} ({n})")).collect();
                    println!("  waiting: {}", why.join(", "));
                }
                last[k] = line;
            }
            match state {
                "RUNNING" => {}
                "SUCCEEDED" => outcome[k] = Some(true),
                _ => {
                    println!("{id}: {}", text(&d["message"]));
                    outcome[k] = Some(false);
                }
            }
        }
        if outcome.iter().all(Option::is_some) {
            let ok = outcome.iter().all(|o| *o == Some(true));
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn list(api: &FrameworkApi) -> anyhow::Result<ExitCode> {
    let apps = api.get("/apps").await?;
    let rows: Vec<Vec<String>> = apps["apps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let c = &a["instances"];
            vec![
                text(&a["id"]),
                text(&a["status"]),
                format!("v{}", a["version"]),
                format!("{}/{}", c["healthy"], c["wanted"]),
                text(&c["running"]),
                a["deployment"]["state"].as_str().map_or("-".into(), |s| {
                    format!("{} {}", text(&a["deployment"]["kind"]), s.to_lowercase())
                }),
                text(&a["service_port"]),
            ]
        })
        .collect();
    print_table(
        "",
        &[
            "ID",
            "STATUS",
            "VERSION",
            "HEALTHY",
            "RUNNING",
            "DEPLOYMENT",
            "SERVICE",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(api: &FrameworkApi, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let app = api.get(&format!("/apps/{id}")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&app)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &app["instances"];
    println!("app        {}", text(&app["id"]));
    println!("status     {}", text(&app["status"]));
    println!("version    v{}", app["version"]);
    println!(
        "instances  {} wanted, {} healthy, {} running, {} starting, {} unreachable, {} leaving",
        c["wanted"], c["healthy"], c["running"], c["staged"], c["unreachable"], c["leaving"]
    );
    if let Some(port) = app["spec"]["service"]["port"].as_u64() {
        println!("service    port {port}");
    }
    if let Some(use_) = app["cpu_use"].as_f64() {
        println!("cpu use    {:.0}% of requested", use_ * 100.0);
    }
    if app["crash_looping"].as_bool() == Some(true) {
        println!(
            "CRASH LOOP {} failures; last: {}",
            app["backoff"]["failures"],
            text(&app["backoff"]["last_failure"])
        );
    }
    let d = &app["deployment"];
    if d.is_object() {
        println!(
            "deployment {} ({}, v{} → v{}): {} — {}",
            d["id"],
            text(&d["kind"]),
            d["from_version"],
            d["to_version"],
            text(&d["state"]),
            text(&d["message"])
        );
        let steps = d["steps"].as_array().cloned().unwrap_or_default();
        for s in steps.iter().rev().take(8).rev() {
            println!("  {}  {}", when(&s["at"]), text(&s["text"]));
        }
    }
    if let Some(w) = app["waiting"].as_object() {
        println!(
            "waiting    {} instance(s) not placed, over {} recent offers:",
            w.get("unplaced").cloned().unwrap_or(Value::Null),
            w.get("offers").cloned().unwrap_or(Value::Null)
        );
        if let Some(reasons) = w.get("reasons").and_then(Value::as_object) {
            for (r, n) in reasons {
                println!("  {n:>6}  {r}");
            }
        }
    }
    let rows: Vec<Vec<String>> = app["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let state = if t["killing"].as_bool() == Some(true) {
                "KILLING".to_string()
            } else if !t["draining_since"].is_null() {
                "DRAINING".to_string()
            } else {
                text(&t["state"])
            };
            vec![
                text(&t["task_id"]),
                format!("v{}", t["version"]),
                state,
                match t["healthy"].as_bool() {
                    Some(true) => "healthy".into(),
                    Some(false) => "unhealthy".into(),
                    None => "-".into(),
                },
                text(&t["host"]),
                t["ports"]
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print_table(
            "",
            &["TASK", "VERSION", "STATE", "HEALTH", "HOST", "PORTS"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn versions(api: &FrameworkApi, id: &str) -> anyhow::Result<ExitCode> {
    let v = api.get(&format!("/apps/{id}/versions")).await?;
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            vec![
                format!("v{}", v["version"]),
                when(&v["created_at"]),
                text(&v["origin"]),
                if v["current"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                text(&v["spec"]["instances"]),
                text(&v["spec"]["cmd"]),
            ]
        })
        .collect();
    print_table(
        "",
        &[
            "VERSION",
            "CREATED",
            "ORIGIN",
            "CURRENT",
            "INSTANCES",
            "CMD",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn endpoints(api: &FrameworkApi, id: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let v = api.get(&format!("/apps/{id}/endpoints")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for e in v["endpoints"].as_array().cloned().unwrap_or_default() {
        println!("{}:{}", text(&e["host"]), e["port"]);
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(api: &FrameworkApi, id: &str) -> anyhow::Result<ExitCode> {
    let app = api.get(&format!("/apps/{id}")).await?;
    let d = &app["deployment"];
    if d["state"] != "RUNNING" {
        return Err(Refused(format!("app `{id}` has no running deployment")).into());
    }
    let number = d["id"].as_u64().unwrap_or(0);
    api.call(
        api.client
            .delete(format!("{}/deployments/{number}", api.base)),
    )
    .await?;
    println!("cancelled deployment {number} of {id}; rolling back");
    Ok(ExitCode::SUCCESS)
}
