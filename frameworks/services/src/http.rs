//! The services HTTP API under `/services/v1/`: apps (deploy, list, get,
//! update, remove), their versions, scaling, rollback, restart, endpoints,
//! deployments (list, cancel), server-sent events and Prometheus metrics.
//! The master proxies it on its own port; errors are JSON `{"error": …}`
//! (with `field` for a bad spec).

// Handlers hand back a ready error response; its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use agora_sdk::RelayedCaller;
use agora_sdk::spec::SpecError;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::engine::{EngineError, ServiceEvent};
use crate::framework::{Shared, now_ms};
use crate::model::{App, InstanceState};
use crate::spec::{self, AppSpec};

/// The largest body accepted: specs of several jobs of the largest size a
/// task may be (`limits::MAX_TASK_BYTES`).
const MAX_BODY: usize = agora_sdk::limits::MAX_MESSAGE_BYTES;

type Api = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/services/v1/apps") }),
        )
        .route(
            "/services/v1/health",
            get(|State(shared): Api| async move { agora_sdk::relay::health(&shared.driver()) }),
        )
        .route("/services/v1/metrics", get(metrics))
        .route("/services/v1/events", get(events))
        .route("/services/v1/apps", get(list_apps).post(create_apps))
        .route("/services/v1/apps/{*rest}", axum::routing::any(app_route))
        .route("/services/v1/deployments", get(list_deployments))
        .route("/services/v1/deployments/{id}", delete(cancel_deployment))
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
            relayed_only,
        ))
        .with_state(shared)
}

/// Only what the master relays is served (it authenticated the caller);
/// health checks excepted.
async fn relayed_only(
    State(shared): Api,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/services/v1/health" {
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

/// Counts of an app's instances.
fn counts(app: &App) -> Value {
    let running = app
        .live
        .iter()
        .filter(|i| i.state == InstanceState::Running && !i.leaving())
        .count();
    let healthy = app.live.iter().filter(|i| app.is_ready(i)).count();
    let staged = app
        .live
        .iter()
        .filter(|i| matches!(i.state, InstanceState::Staging | InstanceState::Starting))
        .count();
    let unreachable = app
        .live
        .iter()
        .filter(|i| i.state == InstanceState::Unreachable)
        .count();
    json!({
        "wanted": app.instances,
        "running": running,
        "healthy": healthy,
        "staged": staged,
        "unreachable": unreachable,
        "leaving": app.live.iter().filter(|i| i.leaving()).count(),
    })
}

fn summary(shared: &Shared, app: &App) -> Value {
    let engine = shared.engine();
    let d = app.deployments.last();
    json!({
        "id": app.id,
        "status": app.status(),
        "version": app.target,
        "instances": counts(app),
        "service_port": app.spec().service.as_ref().map(|s| s.port),
        "deployment": d.map(|d| json!({
            "id": d.id, "kind": d.kind, "state": d.state, "message": d.message,
            "to_version": d.to_version,
        })),
        "waiting": engine.waiting(&app.id),
        "endpoints": engine.endpoints(&app.id).len(),
    })
}

fn detail(shared: &Shared, app: &App) -> Value {
    let engine = shared.engine();
    let instances: Vec<Value> = app
        .live
        .iter()
        .map(|i| {
            json!({
                "task_id": i.task_id,
                "version": i.version,
                "current": app.is_current(i),
                "state": i.state,
                "healthy": i.healthy,
                "ready": app.is_ready(i),
                "host": i.agent.hostname,
                "agent_id": i.agent.agent_id,
                "ports": i.ports,
                "launched_at": i.launched_at,
                "running_at": i.running_at,
                "draining_since": i.draining_since,
                "killing": i.kill_sent_at.is_some(),
                "message": i.message,
                "cpu_use": i.cpu_rate,
            })
        })
        .collect();
    json!({
        "id": app.id,
        "status": app.status(),
        "version": app.target,
        "spec": app.spec(),
        "instances": counts(app),
        "tasks": instances,
        "deployment": app.deployments.last(),
        "deployments": app.deployments.iter().rev().map(|d| json!({
            "id": d.id, "kind": d.kind, "state": d.state, "from_version": d.from_version,
            "to_version": d.to_version, "started_at": d.started_at, "ended_at": d.ended_at,
            "message": d.message,
        })).collect::<Vec<_>>(),
        "waiting": engine.waiting(&app.id),
        "endpoints": engine.endpoints(&app.id),
        "backoff": app.backoff,
        "crash_looping": app.backoff.failures >= 3,
        "cpu_use": engine.cpu_use(&app.id),
        "created_at": app.created_at,
    })
}

/// The owner of app `id`, if the app exists and has one.
fn owner_of(api: &Shared, id: &str) -> Option<String> {
    api.engine()
        .app(id)
        .ok()
        .and_then(|a| a.spec().owner.clone())
}

/// `Ok` when `caller` may see and change app `id` (or there is no such
/// app), else the 403 to answer.
fn check_owner(api: &Shared, caller: &RelayedCaller, id: &str) -> Result<(), Response> {
    match owner_of(api, id) {
        Some(owner) if !caller.may_act_on(Some(&owner)) => {
            Err(caller.refusal(&format!("app `{id}`"), &owner))
        }
        _ => Ok(()),
    }
}

async fn list_apps(State(api): Api, Extension(caller): Extension<RelayedCaller>) -> Response {
    let apps: Vec<App> = api
        .engine()
        .apps()
        .filter(|a| caller.may_act_on(a.spec().owner.as_deref()))
        .cloned()
        .collect();
    let list: Vec<Value> = apps.iter().map(|a| summary(&api, a)).collect();
    Json(json!({ "apps": list })).into_response()
}

/// Refuses an app no agent could ever run (too large, or constraints no
/// agent meets), when the master can tell.
async fn check_fits(api: &Shared, specs: &[AppSpec]) -> Result<(), SpecError> {
    let Ok(agents) = api.master.agents().await else {
        tracing::warn!("could not list agents; not checking whether apps fit");
        return Ok(());
    };
    if agents.is_empty() {
        return Ok(());
    }
    for (i, s) in specs.iter().enumerate() {
        let prefix = if specs.len() > 1 {
            format!("app[{i}].")
        } else {
            String::new()
        };
        let placeable: Vec<_> = agents
            .iter()
            .filter(|a| agora_sdk::placement::check_all(&s.constraints, &a.attributes, &[]).is_ok())
            .collect();
        if placeable.is_empty() && s.instances > 0 {
            return Err(SpecError::new(
                format!("{prefix}constraints"),
                format!("no agent satisfies them (of {} agents)", agents.len()),
            ));
        }
        for (name, want) in [("cpus", s.cpus), ("mem", s.mem), ("disk", s.disk)] {
            if want <= 0.0 || placeable.is_empty() {
                continue;
            }
            let largest = placeable
                .iter()
                .filter_map(|a| a.total.get(name).copied())
                .fold(0.0_f64, f64::max);
            if want > largest + 1e-9 {
                return Err(SpecError::new(
                    format!("{prefix}{name}"),
                    format!("{want} is more than any agent has (the largest has {largest})"),
                ));
            }
        }
    }
    Ok(())
}

async fn deploy_specs(api: &Shared, caller: &RelayedCaller, mut specs: Vec<AppSpec>) -> Response {
    // A new app is the caller's; a new version keeps its app's owner, and
    // only the owner (or an operator) may make one.
    for s in &mut specs {
        if let Err(refusal) = check_owner(api, caller, &s.id) {
            return refusal;
        }
        s.owner = match api.engine().app(&s.id) {
            Ok(app) => app.spec().owner.clone(),
            Err(_) => caller.principal.clone(),
        };
    }
    if let Err(e) = check_fits(api, &specs).await {
        return spec_error(&e);
    }
    // All or nothing: check every app first (service ports), then deploy.
    {
        let mut seen = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(port) = s.service.as_ref().map(|s| s.port)
                && let Some(other) = seen.insert(port, s.id.clone())
            {
                return spec_error(&SpecError::new(
                    format!("app[{i}].service.port"),
                    format!("port {port} is also the service port of `{other}`"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut engine = api.engine();
        let now = now_ms();
        for s in specs {
            let id = s.id.clone();
            match engine.deploy(s, now) {
                Ok((version, deployment)) => {
                    out.push(json!({"id": id, "version": version, "deployment": deployment}));
                }
                Err(e) => return engine_error(e),
            }
        }
    }
    api.settle(Vec::new()).await;
    (StatusCode::CREATED, Json(json!({ "deployments": out }))).into_response()
}

async fn create_apps(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
    body: String,
) -> Response {
    let specs = match spec::parse(&body) {
        Ok(s) => s,
        Err(e) => return spec_error(&e),
    };
    deploy_specs(&api, &caller, specs).await
}

/// `/services/v1/apps/{id}[/action]`: app ids hold `/`, so the action is
/// told apart by its (reserved) last segment.
async fn app_route(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
    method: Method,
    Path(rest): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    body: String,
) -> Response {
    let rest = rest.trim_end_matches('/');
    let (id, action) = match rest.rsplit_once('/') {
        Some((id, last)) if spec::RESERVED.contains(&last) => (id, Some(last)),
        _ => (rest, None),
    };
    let id = id.to_string();
    if let Err(refusal) = check_owner(&api, &caller, &id) {
        return refusal;
    }
    match (method.clone(), action) {
        (Method::GET, None) => with_app(&api, &id, |app| Json(detail(&api, app)).into_response()),
        (Method::PUT, None) => {
            let specs = match spec::parse(&body) {
                Ok(s) => s,
                Err(e) => return spec_error(&e),
            };
            if specs.len() != 1 || specs[0].id != id {
                return spec_error(&SpecError::new(
                    "id",
                    format!("the body must be one app whose id is `{id}`"),
                ));
            }
            deploy_specs(&api, &caller, specs).await
        }
        (Method::DELETE, None) => {
            let result = api.engine().remove(&id, now_ms());
            match result {
                Ok(()) => {
                    api.settle(Vec::new()).await;
                    (StatusCode::ACCEPTED, Json(json!({"removing": id}))).into_response()
                }
                Err(e) => engine_error(e),
            }
        }
        (Method::GET, Some("versions")) => with_app(&api, &id, |app| {
            let versions: Vec<Value> = app
                .versions
                .iter()
                .rev()
                .map(|v| {
                    json!({
                        "version": v.number, "created_at": v.created_at, "origin": v.origin,
                        "current": v.number == app.target, "spec": v.spec,
                    })
                })
                .collect();
            Json(json!({ "versions": versions })).into_response()
        }),
        (Method::GET, Some("endpoints")) => with_app(&api, &id, |app| {
            let endpoints = api.engine().endpoints(&app.id);
            Json(json!({
                "app": app.id,
                "service_port": app.spec().service.as_ref().map(|s| s.port),
                "endpoints": endpoints,
            }))
            .into_response()
        }),
        (Method::POST, Some("scale")) => {
            let n = match json_body(&body).and_then(|v| {
                let n = &v["instances"];
                n.as_u64()
                    .filter(|n| *n <= u64::from(spec::MAX_INSTANCES))
                    .ok_or_else(|| {
                        SpecError::new(
                            "instances",
                            format!(
                                "must be a whole number from 0 to {}, got {n}",
                                spec::MAX_INSTANCES
                            ),
                        )
                    })
            }) {
                Ok(n) => n as u32,
                Err(e) => return spec_error(&e),
            };
            let result = api.engine().scale(&id, n, now_ms());
            finish(&api, result.map(|d| json!({"deployment": d}))).await
        }
        (Method::POST, Some("rollback")) => {
            let to = match json_body(&body).and_then(|v| match &v["to"] {
                Value::Null => Ok(None),
                n => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        SpecError::new("to", format!("must be a version number, got {n}"))
                    }),
            }) {
                Ok(to) => to,
                Err(e) => return spec_error(&e),
            };
            let result = api.engine().rollback(&id, to, now_ms());
            finish(
                &api,
                result.map(|(v, d)| json!({"version": v, "deployment": d})),
            )
            .await
        }
        (Method::POST, Some("restart")) => {
            let result = api.engine().restart(&id, now_ms());
            finish(&api, result.map(|d| json!({"deployment": d}))).await
        }
        (Method::GET, Some("deployments")) => with_app(&api, &id, |app| {
            Json(json!({ "deployments": app.deployments.iter().rev().collect::<Vec<_>>() }))
                .into_response()
        }),
        _ => {
            let _ = params;
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not allowed on /services/v1/apps/{rest} (apps: GET, PUT, DELETE; /versions, /endpoints, /deployments: GET; /scale, /rollback, /restart: POST)"
                ),
            )
        }
    }
}

/// An empty body reads as `{}`; anything else must be a JSON object with
/// known fields only.
fn json_body(body: &str) -> Result<Value, SpecError> {
    if body.trim().is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_str(body)
        .map_err(|e| SpecError::new("body", format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(SpecError::new("body", "must be a JSON object"));
    }
    if let Some(map) = v.as_object() {
        agora_sdk::spec::check_fields(map, &["instances", "to"])?;
    }
    Ok(v)
}

fn with_app(api: &Shared, id: &str, f: impl FnOnce(&App) -> Response) -> Response {
    let app = api.engine().app(id).cloned();
    match app {
        Ok(app) => f(&app),
        Err(e) => engine_error(e),
    }
}

async fn finish(api: &Shared, result: Result<Value, EngineError>) -> Response {
    match result {
        Ok(v) => {
            api.settle(Vec::new()).await;
            (StatusCode::ACCEPTED, Json(v)).into_response()
        }
        Err(e) => engine_error(e),
    }
}

async fn list_deployments(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
) -> Response {
    let engine = api.engine();
    let list: Vec<Value> = engine
        .apps()
        .filter(|a| caller.may_act_on(a.spec().owner.as_deref()))
        .filter_map(|a| a.active_deployment().map(|d| (a, d)))
        .map(|(a, d)| json!({"app": a.id, "deployment": d}))
        .collect();
    Json(json!({ "deployments": list })).into_response()
}

async fn cancel_deployment(
    State(api): Api,
    Extension(caller): Extension<RelayedCaller>,
    Path(id): Path<String>,
) -> Response {
    let Ok(number) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a deployment id (a number)"),
        );
    };
    let app = api
        .engine()
        .apps()
        .find(|a| a.active_deployment().is_some_and(|d| d.id == number))
        .map(|a| a.id.clone());
    let Some(app) = app else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no running deployment {number}"),
        );
    };
    if let Err(refusal) = check_owner(&api, &caller, &app) {
        return refusal;
    }
    let result = api.engine().cancel(&app, now_ms());
    finish(&api, result.map(|d| json!({"app": app, "rollback": d}))).await
}

/// Server-sent events: first every app's endpoints as they are, then each
/// change as it happens.
async fn events(State(api): Api) -> Response {
    let receiver = api.events.subscribe();
    let snapshot: Vec<ServiceEvent> = {
        let engine = api.engine();
        engine
            .apps()
            .map(|a| ServiceEvent::Endpoints {
                app: a.id.clone(),
                service_port: a.spec().service.as_ref().map(|s| s.port),
                endpoints: engine.endpoints(&a.id),
            })
            .collect()
    };
    let to_sse = |event: &ServiceEvent| {
        let name = match event {
            ServiceEvent::Endpoints { .. } => "endpoints",
            ServiceEvent::Deployment { .. } => "deployment",
            ServiceEvent::Removed { .. } => "removed",
        };
        Event::default()
            .event(name)
            .json_data(event)
            .unwrap_or_else(|_| Event::default().event("error"))
    };
    let first = tokio_stream::iter(
        snapshot
            .iter()
            .map(to_sse)
            .map(Ok::<Event, Infallible>)
            .collect::<Vec<_>>(),
    );
    let live = BroadcastStream::new(receiver).map(move |item| {
        Ok::<Event, Infallible>(match item {
            Ok(event) => to_sse(&event),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(format!(
                    "{n} events were dropped; re-read /services/v1/apps"
                ))
            }
        })
    });
    Sse::new(first.chain(live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn metrics(State(api): Api) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let (apps, counters) = {
        let engine = api.engine();
        let apps: Vec<(String, &'static str, u32, usize, usize)> = engine
            .apps()
            .map(|a| {
                (
                    a.id.clone(),
                    a.status(),
                    a.instances,
                    a.live
                        .iter()
                        .filter(|i| i.state == InstanceState::Running)
                        .count(),
                    a.live.iter().filter(|i| a.is_ready(i)).count(),
                )
            })
            .collect();
        (apps, engine.counters.clone())
    };
    let _ = writeln!(out, "# HELP agora_services_apps Apps by status.");
    let _ = writeln!(out, "# TYPE agora_services_apps gauge");
    let mut by_status: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, status, ..) in &apps {
        *by_status.entry(status).or_default() += 1;
    }
    for (status, n) in by_status {
        let _ = writeln!(out, "agora_services_apps{{status=\"{status}\"}} {n}");
    }
    for (name, help, pick) in [
        ("wanted", "Instances wanted.", 0usize),
        ("running", "Instances running.", 1),
        (
            "healthy",
            "Instances serving (running, healthy if checked).",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP agora_services_instances_{name} {help}");
        let _ = writeln!(out, "# TYPE agora_services_instances_{name} gauge");
        for (id, _, wanted, running, healthy) in &apps {
            let v = match pick {
                0 => *wanted as usize,
                1 => *running,
                _ => *healthy,
            };
            let _ = writeln!(out, "agora_services_instances_{name}{{app=\"{id}\"}} {v}");
        }
    }
    for (name, value) in [
        ("tasks_launched_total", counters.tasks_launched),
        ("instances_failed_total", counters.instances_failed),
        ("instances_lost_total", counters.instances_lost),
        ("deployments_started_total", counters.deployments_started),
        (
            "deployments_succeeded_total",
            counters.deployments_succeeded,
        ),
        (
            "deployments_rolled_back_total",
            counters.deployments_rolled_back,
        ),
        ("deployments_paused_total", counters.deployments_paused),
        ("autoscale_events_total", counters.autoscale_events),
        (
            "store_commits_total",
            api.commits.load(std::sync::atomic::Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(out, "# TYPE agora_services_{name} counter");
        let _ = writeln!(out, "agora_services_{name} {value}");
    }
    if let Some(lb) = &api.lb {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, value) in [
            ("lb_connections_total", lb.stats.connections.load(Relaxed)),
            (
                "lb_connect_failures_total",
                lb.stats.connect_failures.load(Relaxed),
            ),
            ("lb_no_backend_total", lb.stats.no_backend.load(Relaxed)),
        ] {
            let _ = writeln!(out, "# TYPE agora_services_{name} counter");
            let _ = writeln!(out, "agora_services_{name} {value}");
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
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
