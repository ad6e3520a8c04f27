//! `agora job …`: submit and manage batch jobs through the master, which
//! relays `/batch/v1/…` to the batch framework.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::JobCommand;
use super::client::{FrameworkApi, Refused, exit_on_refusal, read_spec, text, when};
use super::table::print_table;

const TERMINAL: [&str; 3] = ["SUCCEEDED", "FAILED", "KILLED"];
const POLL: Duration = Duration::from_millis(250);

/// Runs a `job` subcommand.
pub async fn run(master: &str, command: JobCommand) -> anyhow::Result<ExitCode> {
    let batch = FrameworkApi::new(master, "batch", "agora batch").await?;
    let result = match command {
        JobCommand::Submit { file, wait } => submit(&batch, &file, wait).await,
        JobCommand::Update { file } => update(&batch, &file).await,
        JobCommand::List { state } => list(&batch, state.as_deref()).await,
        JobCommand::Status { id, json } => status(&batch, &id, json).await,
        JobCommand::Logs {
            id,
            run,
            instance,
            stderr,
            follow,
        } => logs(&batch, &id, run, instance, stderr, follow).await,
        JobCommand::Kill { id, run } => {
            let path = match run {
                Some(n) => format!("/jobs/{id}/runs/{n}/kill"),
                None => format!("/jobs/{id}/kill"),
            };
            batch.post(&path).await.map(|_| {
                println!("killed {id}");
                ExitCode::SUCCESS
            })
        }
        JobCommand::Rm { id, force } => batch
            .call(
                batch
                    .client
                    .delete(format!("{}/jobs/{id}?force={force}", batch.base)),
            )
            .await
            .map(|_| {
                println!("removed {id}");
                ExitCode::SUCCESS
            }),
        JobCommand::Run { id, wait } => {
            let started = batch.post(&format!("/jobs/{id}/runs")).await;
            match started {
                Ok(v) => {
                    let run = v["run"].as_u64().unwrap_or(0) as u32;
                    println!("{id} run {run}");
                    if wait {
                        wait_for(&batch, &[id], Some(run)).await
                    } else {
                        Ok(ExitCode::SUCCESS)
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    exit_on_refusal(result)
}

/// Updates each job in the file, in turn; the framework checks each.
async fn update(batch: &FrameworkApi, file: &str) -> anyhow::Result<ExitCode> {
    let (text, _) = read_spec(file)?;
    let jobs = agora_batch::spec::split(&text).map_err(|e| Refused(e.to_string()))?;
    for job in jobs {
        let Some(id) = job["id"].as_str().map(str::to_string) else {
            return Err(Refused("id: is required".into()).into());
        };
        batch
            .call(
                batch
                    .client
                    .put(format!("{}/jobs/{id}", batch.base))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(job.to_string()),
            )
            .await?;
        println!("updated {id}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit(batch: &FrameworkApi, file: &str, wait: bool) -> anyhow::Result<ExitCode> {
    let (text, content_type) = read_spec(file)?;
    let created = batch
        .call(
            batch
                .client
                .post(format!("{}/jobs", batch.base))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(text),
        )
        .await?;
    let ids: Vec<String> = created["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        println!("{id}");
    }
    if wait {
        return wait_for(batch, &ids, None).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows jobs (or one run of one job) until they end; exit 0 only if all
/// succeeded.
async fn wait_for(
    batch: &FrameworkApi,
    ids: &[String],
    run: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let mut last: Vec<String> = vec![String::new(); ids.len()];
    loop {
        let mut all_done = true;
        let mut all_ok = true;
        for (i, id) in ids.iter().enumerate() {
            let job = batch.get(&format!("/jobs/{id}")).await?;
            let runs = job["runs"].as_array().cloned().unwrap_or_default();
            let this_run = match run {
                Some(n) => runs.iter().find(|r| r["number"].as_u64() == Some(n as u64)),
                None => runs.last(),
            };
            let state = match (run, this_run) {
                (Some(_), Some(r)) => r["state"].as_str().unwrap_or("QUEUED").to_string(),
                (Some(_), None) => "QUEUED".to_string(),
                (None, _) => job["state"].as_str().unwrap_or("UNKNOWN").to_string(),
            };
            let done = TERMINAL.contains(&state.as_str());
            // Progress: instances finished, and retries under way.
            let mut line = state.clone();
            if let Some(r) = this_run.filter(|_| !done) {
                let instances = r["instances"].as_array().cloned().unwrap_or_default();
                let succeeded = instances
                    .iter()
                    .filter(|i| i["state"] == "SUCCEEDED")
                    .count();
                if instances.len() > 1 {
                    line.push_str(&format!(
                        " ({succeeded}/{} instances succeeded)",
                        instances.len()
                    ));
                }
                let most = instances
                    .iter()
                    .map(|i| i["attempts"].as_array().map_or(0, Vec::len))
                    .max()
                    .unwrap_or(0);
                if most > 1 {
                    line.push_str(&format!(", attempt {most}"));
                }
            }
            if line != last[i] {
                eprintln!("{id}: {line}");
                if done
                    && state != "SUCCEEDED"
                    && let Some(message) = this_run
                        .and_then(|r| r["message"].as_str())
                        .filter(|m| !m.is_empty())
                {
                    eprintln!("{id}: {message}");
                }
                last[i] = line;
            }
            all_done &= done;
            all_ok &= !done || state == "SUCCEEDED";
        }
        if all_done {
            return Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn list(batch: &FrameworkApi, state: Option<&str>) -> anyhow::Result<ExitCode> {
    let path = match state {
        Some(s) => format!("/jobs?state={s}"),
        None => "/jobs".to_string(),
    };
    let jobs = batch.get(&path).await?;
    let rows: Vec<Vec<String>> = jobs["jobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|j| {
                    vec![
                        text(&j["id"]),
                        text(&j["state"]),
                        text(&j["priority"]),
                        text(&j["runs"]),
                        text(&j["schedule"]),
                        when(&j["next_fire"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(
        "",
        &["ID", "STATE", "PRIORITY", "RUNS", "SCHEDULE", "NEXT"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(batch: &FrameworkApi, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let job = batch.get(&format!("/jobs/{id}")).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&job).context("printing JSON")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let spec = &job["spec"];
    println!("job       {}", text(&job["id"]));
    println!("state     {}", text(&job["state"]));
    println!("cmd       {}", text(&spec["cmd"]));
    println!(
        "resources cpus:{} mem:{} disk:{}  instances:{}  retries:{}",
        text(&spec["cpus"]),
        text(&spec["mem"]),
        text(&spec["disk"]),
        text(&spec["instances"]),
        text(&spec["retries"])
    );
    if !spec["schedule"].is_null() {
        println!(
            "schedule  {} ({}), concurrency {}; next {}; skipped {}",
            text(&spec["schedule"]),
            text(&spec["timezone"]),
            text(&spec["concurrency"]),
            when(&job["next_fire"]),
            text(&job["skipped_runs"])
        );
    }
    let runs = job["runs"].as_array().cloned().unwrap_or_default();
    println!();
    let mut rows = Vec::new();
    for run in &runs {
        for inst in run["instances"].as_array().into_iter().flatten() {
            let attempts = inst["attempts"].as_array().cloned().unwrap_or_default();
            let last = attempts.last().cloned().unwrap_or(Value::Null);
            rows.push(vec![
                text(&run["number"]),
                text(&run["state"]),
                text(&inst["index"]),
                text(&inst["state"]),
                attempts.len().to_string(),
                if last.is_null() {
                    "-".into()
                } else {
                    text(&last["hostname"])
                },
                text(&last["exit_code"]),
                when(&last["launched_at"]),
                when(&last["ended_at"]),
            ]);
        }
    }
    print_table(
        "",
        &[
            "RUN",
            "RUN STATE",
            "INSTANCE",
            "STATE",
            "ATTEMPTS",
            "AGENT",
            "EXIT",
            "START",
            "END",
        ],
        &rows,
    );
    for run in &runs {
        if let Some(m) = run["message"].as_str().filter(|m| !m.is_empty()) {
            println!("run {}: {m}", text(&run["number"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn logs(
    batch: &FrameworkApi,
    id: &str,
    run: Option<u32>,
    instance: u32,
    stderr: bool,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut offset: u64 = 0;
    let mut out = std::io::stdout();
    // Pin the run: a follow must not jump to a newer run midway.
    let mut run = run;
    loop {
        let mut path =
            format!("/jobs/{id}/logs?instance={instance}&stream={stream}&offset={offset}");
        if let Some(n) = run {
            path.push_str(&format!("&run={n}"));
        }
        let chunk = match batch.get(&path).await {
            Ok(chunk) => chunk,
            // Following a job that has not started yet: wait for it.
            Err(e)
                if follow
                    && (e.to_string().contains("not started yet")
                        || e.to_string().contains("not run yet")) =>
            {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        run = run.or_else(|| chunk["run"].as_u64().map(|n| n as u32));
        let data = chunk["data"].as_str().unwrap_or("");
        if !data.is_empty() {
            out.write_all(data.as_bytes())
                .context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            offset = chunk["offset"].as_u64().unwrap_or(offset) + data.len() as u64;
            continue;
        }
        if !follow || chunk["instance_done"].as_bool() == Some(true) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(POLL).await;
    }
}
