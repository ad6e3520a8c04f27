//! The operator HTTP API (JSON), served on the same port as gRPC: cluster
//! state and its parts, operator actions, server-sent events, Prometheus
//! metrics, task sandboxes proxied from their agents, and the web UI.
//!
//! Handlers live by what they serve: `reads` (answered from snapshots),
//! `actions` (operator actions, through the core), `sse` (the event
//! stream), `files` (sandboxes relayed from agents), `proxy` (frameworks'
//! own HTTP), with `stream` for bodies written as they are made. Here: the
//! router and what the handlers share — freshness, sight, paging, errors.

// Helpers hand back a ready error response for the handler to return; its
// size on an error path does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;

use tokio::sync::{broadcast, oneshot};

use crate::auth::{Action, Caller, Policy};
use crate::core::{CoreMsg, Operator, OperatorError};
use crate::events::{Event, EventSender};
use crate::grpc::CoreHandle;
use crate::snapshot::{Reader, Snapshot, UsageSum};
use crate::state::{AgentView, TaskView};
use crate::ui;

mod actions;
mod files;
mod proxy;
mod reads;
mod sse;
mod stream;

use actions::*;
use files::*;
use proxy::*;
use reads::*;
use sse::*;
use stream::*;

/// Most tasks one page may hold.
const MAX_PAGE: usize = 1000;

#[derive(Clone)]
struct Api {
    core: CoreHandle,
    /// Snapshots of the state, fresh for each request.
    snapshots: Reader,
    events: EventSender,
    client: reqwest::Client,
    /// How long a relayed request may wait for its framework to begin to
    /// answer.
    relay_timeout: std::time::Duration,
    /// Presented to agents' HTTP APIs (empty without authentication).
    agent_http_token: Arc<str>,
}

/// The operator routes.
pub fn router(
    core: CoreHandle,
    snapshots: Reader,
    events: EventSender,
    agent_http_token: String,
    client_tls: &agora_proto::tls::ClientTls,
    relay_timeout: std::time::Duration,
) -> Router {
    agora_proto::tls::install_default_provider();
    let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = &client_tls.ca_pem {
        match reqwest::Certificate::from_pem_bundle(pem) {
            Ok(certificates) => {
                for certificate in certificates {
                    client = client.add_root_certificate(certificate);
                }
            }
            Err(e) => tracing::error!("the CA bundle for agents and frameworks: {e}"),
        }
    }
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/state", get(state))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}", get(agent))
        .route("/api/v1/agents/{id}/drain", post(drain))
        .route("/api/v1/agents/{id}/undrain", post(undrain))
        .route("/api/v1/agents/{id}/gone", post(mark_gone))
        .route("/api/v1/frameworks", get(frameworks))
        .route("/api/v1/frameworks/{id}", get(framework))
        .route("/api/v1/frameworks/{id}/teardown", post(teardown))
        .route("/api/v1/tasks", get(tasks))
        .route("/api/v1/tasks/{id}", get(task))
        .route("/api/v1/tasks/{id}/files", get(task_files))
        .route("/api/v1/tasks/{id}/files/read", get(task_file_read))
        .route("/api/v1/offers", get(offers))
        .route("/api/v1/roles", get(roles))
        .route("/api/v1/roles/{role}", put(set_weight).delete(reset_weight))
        .route("/api/v1/events", get(event_stream))
        .fallback(framework_proxy)
        .with_state(Api {
            core,
            snapshots,
            events,
            agent_http_token: Arc::from(agent_http_token),
            relay_timeout,
            // The relay hands back redirects rather than following them.
            client: client.build().unwrap_or_default(),
        })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the master is shutting down",
    )
}

async fn ask<T>(
    core: &CoreHandle,
    msg: impl FnOnce(oneshot::Sender<T>) -> CoreMsg,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    core.send(msg(reply)).await.map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())
}

/// A snapshot no older than the request (see [`crate::snapshot`]).
/// A snapshot no older than the request: it sees everything done before
/// it asked (a framework told `TASK_RUNNING` finds the task running).
async fn snapshot(api: &Api) -> Arc<Snapshot> {
    api.snapshots.fresh().await
}

/// A snapshot as fresh as the request asks for, and what `caller` may
/// see of it.
async fn look(api: &Api, freshness: Freshness, caller: Caller) -> (Arc<Snapshot>, Sight) {
    (snapshot_for(api, freshness).await, Sight::of(api, caller))
}

/// A snapshot as fresh as the request asks for (see [`Freshness`]).
async fn snapshot_for(api: &Api, freshness: Freshness) -> Arc<Snapshot> {
    match freshness.0 {
        Some(max_age) => api.snapshots.recent(max_age).await,
        None => snapshot(api).await,
    }
}

/// How old a snapshot a read accepts: by default none older than the
/// request; with `Cache-Control: max-age=N` (seconds), the latest one
/// published if it is at most that old. The web UI asks for `max-age=1`:
/// a dashboard that asked for fresh snapshots kept the core bringing its
/// read model up to date every millisecond, which took a tenth of a
/// launch load's throughput.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Freshness(Option<std::time::Duration>);

impl Freshness {
    /// The first `max-age` directive of the request's `Cache-Control`; one
    /// that is not a number of seconds is ignored, as HTTP caches do.
    fn of(headers: &axum::http::HeaderMap) -> Freshness {
        Freshness(
            headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .find_map(|directive| {
                    let seconds = directive.trim().strip_prefix("max-age=")?;
                    seconds.trim_matches('"').parse::<u64>().ok()
                })
                .map(std::time::Duration::from_secs),
        )
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Freshness {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        Ok(Freshness::of(&parts.headers))
    }
}

/// What one caller may see of the cluster: everything (the fast path,
/// for operators and without ACLs), or the frameworks and tasks of the
/// principals the ACLs let it view.
struct Sight {
    policy: Arc<Policy>,
    caller: Caller,
    everything: bool,
}

impl Sight {
    fn of(api: &Api, caller: Caller) -> Sight {
        let policy = api.core.policy();
        let everything = policy.views_everything(&caller);
        Sight {
            policy,
            caller,
            everything,
        }
    }

    fn principal_of<'a>(snap: &'a Snapshot, framework_id: &str) -> &'a str {
        snap.frameworks
            .get(framework_id)
            .map_or("", |f| f.principal.as_str())
    }

    fn framework(&self, snap: &Snapshot, framework_id: &str) -> bool {
        self.everything
            || self.policy.allows(
                &self.caller,
                Action::ViewFramework {
                    framework_principal: Self::principal_of(snap, framework_id),
                },
            )
    }

    fn task(&self, snap: &Snapshot, task: &TaskView) -> bool {
        self.everything
            || self.policy.allows(
                &self.caller,
                Action::ViewTask {
                    framework_principal: Self::principal_of(snap, &task.framework_id),
                },
            )
    }
}

/// The refusal of an action the ACLs do not allow.
fn forbidden(caller: &Caller, action: Action<'_>) -> Response {
    tracing::warn!(
        principal = caller.name(),
        action = action.name(),
        "refused by the ACLs"
    );
    error(
        StatusCode::FORBIDDEN,
        format!(
            "principal `{}` is not allowed to {} here (ACL `{}`)",
            caller.name(),
            action.describe(),
            action.name()
        ),
    )
}

/// `Ok` when `caller` may do `action`, else the 403 to answer.
fn check(api: &Api, caller: &Caller, action: Action<'_>) -> Result<(), Response> {
    if api.core.policy().allows(caller, action) {
        Ok(())
    } else {
        Err(forbidden(caller, action))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// JSON built on a blocking thread: a big cluster's state takes a while to
/// serialize, and the runtime's workers also run the core.
async fn json_off_runtime<F>(build: F) -> Response
where
    F: FnOnce() -> serde_json::Result<Vec<u8>> + Send + 'static,
{
    match tokio::task::spawn_blocking(build).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn is_ended(state: &str) -> bool {
    agora_proto::v1::TaskState::from_str_name(state).is_some_and(agora_proto::is_terminal)
}

fn parse_usize(
    params: &HashMap<String, String>,
    name: &str,
    default: usize,
) -> Result<usize, Response> {
    match params.get(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("parameter `{name}`: `{v}` is not a non-negative integer"),
            )
        }),
    }
}

/// Where a page starts and how long it is.
struct Page {
    offset: usize,
    limit: usize,
}

/// A page's `offset` and `limit` (default 0 and 100), with every parameter
/// checked against those `allowed`.
fn page_of(params: &HashMap<String, String>, allowed: &[&str]) -> Result<Page, Response> {
    if let Some(key) = params.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{key}` (use {})", allowed.join(", ")),
        ));
    }
    let offset = parse_usize(params, "offset", 0)?;
    let limit = parse_usize(params, "limit", 100)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("parameter `limit`: {limit} is not between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(Page { offset, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reads_freshness_is_its_cache_control_max_age_and_fresh_without_one() {
        let of = |values: &[&str]| {
            let mut headers = axum::http::HeaderMap::new();
            for v in values {
                headers.append(header::CACHE_CONTROL, v.parse().expect("header"));
            }
            Freshness::of(&headers).0.map(|d| d.as_secs())
        };
        assert_eq!(of(&[]), None);
        assert_eq!(of(&["max-age=1"]), Some(1));
        assert_eq!(of(&["no-transform, max-age=30"]), Some(30));
        assert_eq!(of(&["no-cache", "max-age=2"]), Some(2));
        assert_eq!(of(&["max-age=0"]), Some(0));
        // Not a number of seconds: ignored, so the read is fresh.
        assert_eq!(of(&["max-age=soon"]), None);
        assert_eq!(of(&["max-age=-1"]), None);
        assert_eq!(of(&["no-cache"]), None);
    }
}
