//! The batch HTTP API under `/batch/v1/`: jobs (create, list, get, delete),
//! runs (start, list, get, kill) and logs. The master proxies it on its own
//! port; errors are JSON `{"error": …}` (with `field` for a bad spec).

// Handlers hand back a ready error response; its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use agora_sdk::RelayedCaller;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};

use crate::engine::EngineError;
use crate::framework::{Shared, now_ms};
use crate::model::{InstanceState, Job, Run};
use crate::spec::{self, JobSpec, Operator, SpecError};
use agora_sdk::placement::check_all;

/// The largest body accepted: specs of several jobs of the largest size a
/// task may be (`limits::MAX_TASK_BYTES`).
const MAX_BODY: usize = agora_sdk::limits::MAX_MESSAGE_BYTES;

type Api = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        // Where the master's UI links this framework to.
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/batch/v1/jobs") }),
        )
        .route(
            "/batch/v1/health",
            get(|State(shared): Api| async move { agora_sdk::relay::health(&shared.driver()) }),
        )
        .route("/batch/v1/metrics", get(metrics))
        .route("/batch/v1/jobs", get(list_jobs).post(create_jobs))
        .route(
            "/batch/v1/jobs/{id}",
            get(get_job).put(update_job).delete(delete_job),
        )
        .route("/batch/v1/jobs/{id}/kill", post(kill_job))
        .route("/batch/v1/jobs/{id}/runs", get(list_runs).post(start_run))
        .route("/batch/v1/jobs/{id}/runs/{run}", get(get_run))
        .route("/batch/v1/jobs/{id}/runs/{run}/kill", post(kill_run))
        .route("/batch/v1/jobs/{id}/logs", get(logs))
        .fallback(|uri: axum::http::Uri| async move {
            error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(too_large_as_json))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            owners_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            relayed_only,
        ))
        .with_state(shared)
}

/// A job is its submitter's: `/batch/v1/jobs/{id}/…` answers only its
/// owner (or an operator, or anyone without authentication at the master).
async fn owners_only(
    State(shared): Api,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = request
        .uri()
        .path()
        .strip_prefix("/batch/v1/jobs/")
        .and_then(|rest| rest.split('/').next())
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    if let Some(id) = id {
        let caller = request
            .extensions()
            .get::<RelayedCaller>()
            .cloned()
            .unwrap_or_default();
        let owner = shared.engine().job(&id).and_then(|j| j.spec.owner.clone());
        if let Some(owner) = owner
            && !caller.may_act_on(Some(&owner))
        {
            return caller.refusal(&format!("job `{id}`"), &owner);
        }
    }
    next.run(request).await
}

/// Only what the master relays is served (it authenticated the caller);
/// health checks excepted.
async fn relayed_only(
    State(shared): Api,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/batch/v1/health" {
        return next.run(request).await;
    }
    agora_sdk::relay::admit(&shared.driver(), request, next).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn spec_error(e: &SpecError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": e.to_string(), "field": e.field })),
    )
        .into_response()
}

fn engine_error(e: EngineError) -> Response {
    match e {
        EngineError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        EngineError::Conflict(m) => error(StatusCode::CONFLICT, m),
        EngineError::Invalid(e) => spec_error(&e),
    }
}

fn summary(job: &Job) -> Value {
    let latest = job.latest();
    json!({
        "id": job.spec.id,
        "state": job.state(),
        "priority": job.spec.priority,
        "instances": job.spec.instances,
        "schedule": job.spec.schedule,
        "next_fire": job.next_fire,
        "depends_on": job.spec.depends_on,
        "submitted_at": job.submitted_at,
        "runs": job.runs.len(),
        "latest_run": latest.map(|r| r.number),
        "latest_state": latest.map(|r| r.state.as_str()),
        "latest_message": latest.map(|r| r.message.as_str()),
        // The first instance's latest task, for its log.
        "latest_task": latest
            .and_then(|r| r.instances.first())
            .and_then(|i| i.current())
            .map(|a| a.task_id.as_str()),
    })
}

fn detail(job: &Job) -> Value {
    json!({
        "id": job.spec.id,
        "state": job.state(),
        "spec": job.spec,
        "submitted_at": job.submitted_at,
        "next_fire": job.next_fire,
        "skipped_runs": job.skipped_runs,
        "runs": job.runs,
    })
}

const JOB_STATES: [&str; 6] = [
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "KILLED",
    "SCHEDULED",
];

/// Jobs in submission order; `state` (one or several, comma-separated),
/// `offset` and `limit` narrow the list; `total` counts what matched.
/// Prometheus text: jobs by state, the queue, and counts since start.
async fn metrics(State(api): Api) -> Response {
    use std::fmt::Write;
    let (by_state, waiting, live, counters) = {
        let engine = api.engine();
        let mut by_state: std::collections::BTreeMap<&'static str, u64> =
            JOB_STATES.iter().map(|s| (*s, 0)).collect();
        let (mut waiting, mut live) = (0u64, 0u64);
        for job in engine.jobs() {
            *by_state.entry(job.state()).or_default() += 1;
            for run in job.runs.iter().filter(|r| r.state.is_active()) {
                for inst in &run.instances {
                    waiting += u64::from(inst.state == InstanceState::Waiting);
                    live += u64::from(inst.state.has_task());
                }
            }
        }
        (by_state, waiting, live, engine.counters())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP agora_batch_jobs Jobs by state.\n# TYPE agora_batch_jobs gauge"
    );
    for (state, n) in by_state {
        let _ = writeln!(out, "agora_batch_jobs{{state=\"{state}\"}} {n}");
    }
    let gauges = [
        (
            "agora_batch_instances_waiting",
            "Instances waiting for resources, a dependency or a retry.",
            waiting,
        ),
        (
            "agora_batch_instances_live",
            "Instances with a task launched or running.",
            live,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP agora_batch_tasks_launched_total Tasks launched since start.\n# TYPE agora_batch_tasks_launched_total counter\nagora_batch_tasks_launched_total {}",
        counters.tasks_launched
    );
    let _ = writeln!(
        out,
        "# HELP agora_batch_runs_ended_total Runs ended since start, by outcome.\n# TYPE agora_batch_runs_ended_total counter"
    );
    for (outcome, n) in [
        ("SUCCEEDED", counters.runs_succeeded),
        ("FAILED", counters.runs_failed),
        ("KILLED", counters.runs_killed),
    ] {
        let _ = writeln!(
            out,
            "agora_batch_runs_ended_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let commits = api.commits.load(std::sync::atomic::Ordering::Relaxed);
    let micros = api.commit_micros.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP agora_batch_store_commit_seconds Durable store commits (each groups many changes).\n# TYPE agora_batch_store_commit_seconds summary\nagora_batch_store_commit_seconds_count {commits}\nagora_batch_store_commit_seconds_sum {:.6}",
        micros as f64 / 1e6
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

async fn list_jobs(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let states: Option<Vec<String>> = params.get("state").map(|s| {
        s.split(',')
            .map(|x| x.trim().to_ascii_uppercase())
            .collect()
    });
    if let Some(bad) = states
        .iter()
        .flatten()
        .find(|s| !JOB_STATES.contains(&s.as_str()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "parameter `state`: `{bad}` is not one of {}",
                JOB_STATES.join(", ")
            ),
        );
    }
    let mut page = [("offset", 0usize), ("limit", usize::MAX)];
    for (key, value) in page.iter_mut() {
        if let Some(v) = params.get(*key) {
            match v.parse() {
                Ok(n) => *value = n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("parameter `{key}` must be a whole number, got `{v}`"),
                    );
                }
            }
        }
    }
    let engine = api.engine();
    let mut jobs: Vec<&Job> = engine
        .jobs()
        .filter(|j| caller.may_act_on(j.spec.owner.as_deref()))
        .filter(|j| {
            states
                .as_ref()
                .is_none_or(|s| s.iter().any(|x| x == j.state()))
        })
        .collect();
    jobs.sort_by_key(|j| j.seq);
    let total = jobs.len();
    let list: Vec<Value> = jobs
        .into_iter()
        .skip(page[0].1)
        .take(page[1].1)
        .map(summary)
        .collect();
    Json(json!({ "jobs": list, "total": total })).into_response()
}

async fn create_jobs(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
    body: String,
) -> Response {
    let mut specs = match spec::parse(&body) {
        Ok(specs) => specs,
        Err(e) => return spec_error(&e),
    };
    for spec in &mut specs {
        spec.owner = caller.principal.clone();
    }
    if let Err(e) = check_fit(&api, &specs).await {
        return spec_error(&e);
    }
    let submitted = api.engine().submit(specs, now_ms());
    match submitted {
        Ok(ids) => {
            api.persist().await;
            api.sync_interest().await;
            (StatusCode::CREATED, Json(json!({ "ids": ids }))).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn get_job(State(api): Api, Path(id): Path<String>) -> Response {
    match api.engine().job(&id) {
        Some(job) => Json(detail(job)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown job `{id}`")),
    }
}

/// Replaces one job's definition (the body holds that one job).
async fn update_job(State(api): Api, Path(id): Path<String>, body: String) -> Response {
    let mut specs = match spec::parse(&body) {
        Ok(specs) => specs,
        Err(e) => return spec_error(&e),
    };
    if specs.len() != 1 {
        return spec_error(&SpecError::new("spec", "an update holds exactly one job"));
    }
    let mut spec = specs.remove(0);
    // The job stays its submitter's (the owners-only layer let the caller in).
    spec.owner = api.engine().job(&id).and_then(|j| j.spec.owner.clone());
    if spec.id != id {
        return spec_error(&SpecError::new(
            "id",
            format!("`{}` does not match the job being updated, `{id}`", spec.id),
        ));
    }
    if let Err(e) = check_fit(&api, std::slice::from_ref(&spec)).await {
        return spec_error(&e);
    }
    let updated = api.engine().update(spec, now_ms());
    match updated {
        Ok(()) => {
            api.persist().await;
            api.sync_interest().await;
            Json(json!({ "updated": id })).into_response()
        }
        Err(e) => engine_error(e),
    }
}

/// Removes a job; `?force=true` first kills an active run.
async fn delete_job(
    State(api): Api,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let force = match params.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("parameter `force` must be true or false, got `{other}`"),
            );
        }
    };
    let removed = api.engine().remove(&id, force, now_ms());
    match removed {
        Ok(actions) => {
            api.persist().await;
            api.act(actions).await;
            api.sync_interest().await;
            Json(json!({ "removed": id })).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn kill(api: &Shared, id: &str, run: Option<u32>) -> Response {
    let killed = api.engine().kill(id, run, now_ms());
    match killed {
        Ok(actions) => {
            api.persist().await;
            api.act(actions).await;
            api.sync_interest().await;
            Json(json!({ "killed": id, "run": run })).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn kill_job(State(api): Api, Path(id): Path<String>) -> Response {
    kill(&api, &id, None).await
}

async fn kill_run(State(api): Api, Path((id, run)): Path<(String, String)>) -> Response {
    match run_number(&run) {
        Ok(n) => kill(&api, &id, Some(n)).await,
        Err(r) => r,
    }
}

async fn start_run(State(api): Api, Path(id): Path<String>) -> Response {
    let started = api.engine().run_now(&id, now_ms());
    match started {
        Ok((run, actions)) => {
            api.persist().await;
            api.act(actions).await;
            api.sync_interest().await;
            (StatusCode::CREATED, Json(json!({ "job": id, "run": run }))).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn list_runs(State(api): Api, Path(id): Path<String>) -> Response {
    match api.engine().job(&id) {
        Some(job) => Json(json!({ "runs": job.runs })).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown job `{id}`")),
    }
}

fn run_number(text: &str) -> Result<u32, Response> {
    text.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("run `{text}` is not a run number"),
        )
    })
}

fn find_run(job: &Job, n: Option<u32>) -> Result<&Run, Response> {
    match n {
        Some(n) => job.run(n).ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("job `{}` has no run {n}", job.spec.id),
            )
        }),
        None => job.latest().ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("job `{}` has not run yet", job.spec.id),
            )
        }),
    }
}

async fn get_run(State(api): Api, Path((id, run)): Path<(String, String)>) -> Response {
    let n = match run_number(&run) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let engine = api.engine();
    let Some(job) = engine.job(&id) else {
        return error(StatusCode::NOT_FOUND, format!("unknown job `{id}`"));
    };
    match find_run(job, Some(n)) {
        Ok(run) => Json(json!({ "run": run })).into_response(),
        Err(r) => r,
    }
}

/// One instance's output, read from its latest task's sandbox through the
/// master (`offset`/`length` as Mesos's `files/read`).
async fn logs(
    State(api): Api,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let parse = |key: &str| -> Result<Option<u32>, Response> {
        params
            .get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    error(
                        StatusCode::BAD_REQUEST,
                        format!("parameter `{key}` must be a whole number, got `{v}`"),
                    )
                })
            })
            .transpose()
    };
    let (run_n, instance_n) = match (parse("run"), parse("instance")) {
        (Ok(r), Ok(i)) => (r, i.unwrap_or(0)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let stream = params.get("stream").map_or("stdout", String::as_str);
    if stream != "stdout" && stream != "stderr" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("parameter `stream` must be stdout or stderr, got `{stream}`"),
        );
    }
    let (task_id, run_number, run_state, instance_state, attempt, task_live) = {
        let engine = api.engine();
        let Some(job) = engine.job(&id) else {
            return error(StatusCode::NOT_FOUND, format!("unknown job `{id}`"));
        };
        let run = match find_run(job, run_n) {
            Ok(r) => r,
            Err(r) => return r,
        };
        let Some(inst) = run.instances.get(instance_n as usize) else {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "run {} of job `{id}` has no instance {instance_n} (it has {})",
                    run.number,
                    run.instances.len()
                ),
            );
        };
        let Some(attempt) = inst.current() else {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "instance {instance_n} of run {} of job `{id}` has not started yet",
                    run.number
                ),
            );
        };
        (
            attempt.task_id.clone(),
            run.number,
            run.state.as_str(),
            inst.state,
            inst.attempts.len() - 1,
            attempt.ended_at.is_none(),
        )
    };
    let mut url = format!(
        "{}/api/v1/tasks/{task_id}/files/read?path={stream}",
        api.master
    );
    for key in ["offset", "length"] {
        if let Some(v) = params.get(key) {
            if v.parse::<i64>().is_err() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("parameter `{key}` must be a number, got `{v}`"),
                );
            }
            url.push_str(&format!("&{key}={v}"));
        }
    }
    let answer = match api.client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("reading task `{task_id}`'s {stream} from the master: {e}"),
            );
        }
    };
    let status = answer.status();
    let mut body: Value = answer.json().await.unwrap_or(Value::Null);
    if status == reqwest::StatusCode::NOT_FOUND && task_live {
        // Launched but not started on its agent yet: no output so far.
        let offset = params
            .get("offset")
            .and_then(|o| o.parse::<u64>().ok())
            .unwrap_or(0);
        body = json!({ "data": "", "offset": offset });
    } else if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("no reason given");
        let code = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        return error(code, format!("task `{task_id}`'s {stream}: {why}"));
    }
    Json(json!({
        "job": id,
        "run": run_number,
        "instance": instance_n,
        "attempt": attempt,
        "task_id": task_id,
        "run_state": run_state,
        "instance_done": instance_state.is_done(),
        "data": body["data"],
        "offset": body["offset"],
    }))
    .into_response()
}

/// Refuses jobs no agent could ever hold, asking the master what agents
/// exist. With no agents registered yet (or no master to ask) it cannot
/// know, and lets the job queue.
async fn check_fit(api: &Shared, specs: &[JobSpec]) -> Result<(), SpecError> {
    let agents =
        match agora_sdk::operator::MasterApi::new(&api.master, api.token.as_deref(), &api.tls)
            .agents()
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("could not list agents ({e}); not checking whether jobs fit");
                return Ok(());
            }
        };
    if agents.is_empty() {
        return Ok(());
    }
    let prefix = |i: usize| {
        if specs.len() > 1 {
            format!("job[{i}].")
        } else {
            String::new()
        }
    };
    for (i, spec) in specs.iter().enumerate() {
        let placeable: Vec<_> = agents
            .iter()
            .filter(|a| check_all(&spec.constraints, &a.attributes, &[]).is_ok())
            .collect();
        if placeable.is_empty() {
            return Err(SpecError::new(
                format!("{}constraints", prefix(i)),
                format!("no agent satisfies them (of {} agents)", agents.len()),
            ));
        }
        for (name, want) in [("cpus", spec.cpus), ("mem", spec.mem), ("disk", spec.disk)] {
            if want <= 0.0 {
                continue;
            }
            let largest = placeable
                .iter()
                .filter_map(|a| a.total.get(name).copied())
                .fold(0.0_f64, f64::max);
            if want > largest + 1e-9 {
                return Err(SpecError::new(
                    format!("{}{name}", prefix(i)),
                    format!("{want} is more than any agent has (the largest has {largest})"),
                ));
            }
        }
        for c in spec
            .constraints
            .iter()
            .filter(|c| c.operator == Operator::Unique)
        {
            let values: BTreeSet<Option<&str>> = placeable
                .iter()
                .map(|a| a.attributes.get(&c.attribute))
                .collect();
            if (values.len() as u32) < spec.instances {
                return Err(SpecError::new(
                    format!("{}constraints", prefix(i)),
                    format!(
                        "{} instances must each have their own `{}`, but agents have only {} values",
                        spec.instances,
                        c.attribute,
                        values.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Axum answers an oversized body with a plain-text 413; say it in JSON,
/// with the limit, like every other refusal.
async fn too_large_as_json(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        );
    }
    response
}
