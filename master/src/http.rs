//! The operator HTTP API (JSON), served on the same port as gRPC: cluster
//! state and its parts, operator actions, server-sent events, Prometheus
//! metrics, task sandboxes proxied from their agents, and the web UI.

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

/// Most tasks one page may hold.
const MAX_PAGE: usize = 1000;

#[derive(Clone)]
struct Api {
    core: CoreHandle,
    /// Snapshots of the state, fresh for each request.
    snapshots: Reader,
    events: EventSender,
    client: reqwest::Client,
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

/// Bytes of a streamed body handed to the connection at a time.
const STREAM_CHUNK: usize = 256 * 1024;

/// Chunks of a streamed body made ahead of the connection: enough that a
/// writer and a connection that are scheduled unevenly (a busy master)
/// rarely wait on each other, few enough that a slow client holds 8 MB of
/// the master's memory, not the whole body.
const STREAM_AHEAD: usize = 32;

/// Where a streamed body is written: full chunks go to the connection as
/// they are made.
struct ChunkSink {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
}

impl ChunkSink {
    fn send(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.tx
            .blocking_send(Ok(chunk.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= STREAM_CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_CHUNK));
            self.send(full)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.buf);
        self.send(last)
    }
}

/// JSON written on a blocking thread and sent as it is made. A big
/// cluster's `/api/v1/state` is tens of megabytes: made whole first, each
/// request cost a buffer of its size (faulting in its fresh pages was a
/// tenth of the HTTP workers' time under load) and its first byte waited
/// for its last.
fn streamed_json<W>(write: W) -> Response
where
    W: FnOnce(&mut ChunkSink) -> std::io::Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChunkSink {
            buf: Vec::with_capacity(STREAM_CHUNK),
            tx,
        };
        if let Err(e) = write(&mut sink).and_then(|()| std::io::Write::flush(&mut sink)) {
            // Ends the body short, so the client sees it broken (or was
            // gone already).
            let _ = sink.tx.blocking_send(Err(e));
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

async fn state(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
) -> Response {
    let sight = Sight::of(&api, caller);
    if sight.everything {
        // Written from the views' kept JSON, which the core then makes.
        api.snapshots.will_write_whole_state();
    }
    let snap = snapshot_for(&api, freshness).await;
    if sight.everything {
        return streamed_json(move |out| snap.write_state_json(unix_ms(), out));
    }
    // What this caller may see, streamed like the whole: written straight
    // from the views, not through a copy of them as a JSON tree.
    #[derive(serde::Serialize)]
    struct Visible<'a> {
        agents: Vec<&'a AgentView>,
        frameworks: Vec<&'a crate::state::FrameworkView>,
        tasks: Vec<&'a TaskView>,
        offers: Vec<crate::state::OfferView>,
    }
    streamed_json(move |out| {
        let visible = Visible {
            agents: snap.agents_sorted().collect(),
            frameworks: snap
                .frameworks_sorted()
                .into_iter()
                .filter(|f| sight.framework(&snap, &f.id))
                .collect(),
            tasks: snap
                .tasks_sorted()
                .filter(|t| sight.task(&snap, t))
                .collect(),
            offers: snap
                .offers_aged(unix_ms())
                .into_iter()
                .filter(|o| sight.framework(&snap, &o.framework_id))
                .collect(),
        };
        Ok(serde_json::to_writer(out, &visible)?)
    })
}

/// What the cluster adds up to, from sums the core keeps: cheap at any
/// size, for the web UI's overview and for scripts that would otherwise
/// read the whole state to count. A caller who may not see every task
/// gets the counts of those it may see.
async fn summary(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    let totals = &snap.agent_totals;
    let (tasks_by_state, frameworks, offers) = if sight.everything {
        (
            snap.tasks_by_state
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(state, n)| (*state, *n))
                .collect(),
            snap.frameworks.len(),
            snap.offers.len(),
        )
    } else {
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for t in snap.tasks_sorted().filter(|t| sight.task(&snap, t)) {
            *by_state.entry(t.state).or_default() += 1;
        }
        let frameworks = snap
            .frameworks
            .keys()
            .filter(|id| sight.framework(&snap, id))
            .count();
        let offers = snap
            .offers
            .values()
            .filter(|o| sight.framework(&snap, &o.framework_id))
            .count();
        (by_state, frameworks, offers)
    };
    Json(json!({
        "agents": { "total": snap.agents.len(), "by_status": totals.by_status },
        "resources": { "total": totals.total, "used": totals.used, "offered": totals.offered },
        "tasks": { "total": tasks_by_state.values().sum::<usize>(), "by_state": tasks_by_state },
        "frameworks": { "total": frameworks },
        "offers": { "total": offers },
    }))
    .into_response()
}

async fn metrics(State(api): State<Api>, freshness: Freshness) -> Response {
    let mut text = snapshot_for(&api, freshness).await.render_metrics();
    api.snapshots.render_metrics(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// An agent with the tasks on it.
fn agent_json(a: &AgentView, tasks: &[&TaskView]) -> Value {
    let mut value = json!(a);
    value["tasks"] = json!(tasks);
    value["usage"] = json!(UsageSum::of(tasks.iter().filter_map(|t| t.usage.as_ref())));
    value
}

/// An agent on a page: its view and its running tasks' usage, not the
/// tasks themselves (a hundred agents held 20 MB of them under a launch
/// load).
#[derive(serde::Serialize)]
struct AgentOnPage<'a> {
    #[serde(flatten)]
    agent: &'a AgentView,
    usage: UsageSum,
}

/// The usage of the live tasks, visible to `sight`, on the agents
/// `wanted`, by agent: kept in the snapshot for a caller who sees every
/// task; for one who does not, one pass over the tasks.
fn usage_by_agent<'a>(
    snap: &'a Snapshot,
    sight: &Sight,
    wanted: &[&'a AgentView],
) -> HashMap<&'a str, UsageSum> {
    if sight.everything {
        return wanted
            .iter()
            .filter_map(|a| {
                Some((
                    a.id.as_str(),
                    snap.usage_by_agent.get(a.id.as_str())?.clone(),
                ))
            })
            .collect();
    }
    let wanted: std::collections::HashSet<&str, foldhash::fast::RandomState> =
        wanted.iter().map(|a| a.id.as_str()).collect();
    let mut by_agent: HashMap<&str, UsageSum> = HashMap::new();
    for t in snap.tasks_sorted() {
        let Some(usage) = &t.usage else { continue };
        if wanted.contains(&*t.agent_id) && !is_ended(t.state) && sight.task(snap, t) {
            by_agent
                .entry(&*t.agent_id)
                .or_default()
                .change(usage, true);
        }
    }
    by_agent
}

fn is_ended(state: &str) -> bool {
    agora_proto::v1::TaskState::from_str_name(state).is_some_and(agora_proto::is_terminal)
}

/// Live tasks grouped by agent, in one pass.
fn live_tasks_by_agent<'a>(
    snap: &'a Snapshot,
    sight: &Sight,
) -> HashMap<&'a str, Vec<&'a TaskView>> {
    let mut by_agent: HashMap<&str, Vec<&TaskView>> = HashMap::new();
    for t in snap
        .tasks_sorted()
        .filter(|t| !is_ended(t.state) && sight.task(snap, t))
    {
        by_agent.entry(&*t.agent_id).or_default().push(t);
    }
    by_agent
}

/// Every agent with the live tasks on it, or with `offset` or `limit` a
/// page of agents (by hostname, then id) with their live task counts and
/// usage, and how many there are in all: the web UI reads a page, not ten
/// thousand agents and every task on them.
async fn agents(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let page = match page_of(&params, &["offset", "limit"]) {
        Ok(page) => page,
        Err(r) => return r,
    };
    let paged = params.contains_key("offset") || params.contains_key("limit");
    let (snap, sight) = look(&api, freshness, caller).await;
    json_off_runtime(move || {
        let sorted = snap.agents_sorted();
        if !paged {
            let by_agent = live_tasks_by_agent(&snap, &sight);
            let list: Vec<Value> = sorted
                .map(|a| agent_json(a, by_agent.get(a.id.as_str()).map_or(&[], Vec::as_slice)))
                .collect();
            return serde_json::to_vec(&json!({ "agents": list }));
        }
        let total = snap.agents.len();
        let listed: Vec<&AgentView> = sorted.skip(page.offset).take(page.limit).collect();
        let mut usage = usage_by_agent(&snap, &sight, &listed);
        let list: Vec<AgentOnPage> = listed
            .into_iter()
            .map(|agent| AgentOnPage {
                agent,
                usage: usage.remove(agent.id.as_str()).unwrap_or_default(),
            })
            .collect();
        serde_json::to_vec(&json!({
            "agents": list, "total": total, "offset": page.offset, "limit": page.limit,
        }))
    })
    .await
}

async fn agent(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    match snap.agents.get(id.as_str()) {
        Some(a) => {
            let tasks: Vec<&TaskView> = snap
                .tasks_sorted()
                .filter(|t| *t.agent_id == *id && !is_ended(t.state) && sight.task(&snap, t))
                .collect();
            Json(agent_json(a, &tasks)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("unknown agent `{id}`")),
    }
}

async fn frameworks(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    let visible: Vec<_> = snap
        .frameworks_sorted()
        .into_iter()
        .filter(|f| sight.framework(&snap, &f.id))
        .collect();
    Json(json!({ "frameworks": visible })).into_response()
}

async fn framework(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    match snap.frameworks.get(id.as_str()) {
        Some(_) if !sight.framework(&snap, &id) => forbidden(
            &sight.caller,
            Action::ViewFramework {
                framework_principal: Sight::principal_of(&snap, &id),
            },
        ),
        Some(f) => {
            let tasks: Vec<&TaskView> = snap
                .tasks_of(&id)
                .filter(|t| sight.task(&snap, t))
                .collect();
            let mut value = json!(f.as_ref());
            value["tasks"] = json!(tasks);
            Json(value).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("unknown framework `{id}`")),
    }
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

/// Whether task `t` has `needle` in its id, name, state,
/// message or its agent's id or hostname, ignoring case: the web UI's
/// filter.
fn task_has(snap: &Snapshot, t: &TaskView, needle: &str) -> bool {
    // Case folds ASCII only, without a copy per field: a filter walks
    // every task.
    let has = |text: &str| {
        text.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    has(&t.id)
        || has(&t.name)
        || has(t.state)
        || has(&t.message)
        || has(&t.agent_id)
        || snap
            .agents
            .get(&*t.agent_id)
            .is_some_and(|a| has(&a.hostname))
}

async fn tasks(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Page { offset, limit } = match page_of(
        &params,
        &["framework", "agent", "state", "q", "offset", "limit"],
    ) {
        Ok(page) => page,
        Err(r) => return r,
    };
    if let Some(state) = params.get("state")
        && agora_proto::v1::TaskState::from_str_name(state).is_none()
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("parameter `state`: `{state}` is not a task state such as TASK_RUNNING"),
        );
    }
    let needle = params.get("q").map(|q| q.trim()).filter(|q| !q.is_empty());
    let (snap, sight) = look(&api, freshness, caller).await;
    let filtered = !sight.everything
        || needle.is_some()
        || params.contains_key("agent")
        || params.contains_key("state");
    let (page, total): (Vec<&TaskView>, usize) = match params.get("framework") {
        // Unfiltered: the page alone is read.
        None if !filtered => (
            snap.tasks_sorted().skip(offset).take(limit).collect(),
            snap.tasks.len(),
        ),
        Some(f) if !filtered => {
            let page = snap.tasks_of(f).skip(offset).take(limit).collect();
            (page, snap.tasks_of(f).count())
        }
        framework => {
            let matching: Vec<&TaskView> = match framework {
                Some(f) => Box::new(snap.tasks_of(f)) as Box<dyn Iterator<Item = &TaskView>>,
                None => Box::new(snap.tasks_sorted()),
            }
            .filter(|t| sight.task(&snap, t))
            .filter(|t| params.get("agent").is_none_or(|a| **a == *t.agent_id))
            .filter(|t| params.get("state").is_none_or(|s| *s == t.state))
            .filter(|t| needle.as_ref().is_none_or(|q| task_has(&snap, t, q)))
            .collect();
            let total = matching.len();
            (
                matching.into_iter().skip(offset).take(limit).collect(),
                total,
            )
        }
    };
    // The hostnames of the page's agents, so a reader of a page need not
    // fetch every agent to name where its tasks run.
    let hostnames: BTreeMap<&str, &str> = page
        .iter()
        .filter_map(|t| {
            let agent = snap.agents.get(&*t.agent_id)?;
            Some((&*t.agent_id, agent.hostname.as_str()))
        })
        .collect();
    Json(json!({
        "tasks": page, "total": total, "offset": offset, "limit": limit, "hostnames": hostnames,
    }))
    .into_response()
}

/// The task called `id` (live ones first, for ids reused after an end).
fn find_task<'a>(snap: &'a Snapshot, id: &str) -> Option<&'a TaskView> {
    let mut candidates: Vec<&TaskView> = snap.tasks_sorted().filter(|t| &*t.id == id).collect();
    candidates.sort_by_key(|t| is_ended(t.state));
    candidates.first().copied()
}

async fn task(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    match find_task(&snap, &id) {
        Some(t) if !sight.task(&snap, t) => forbidden(
            &sight.caller,
            Action::ViewTask {
                framework_principal: Sight::principal_of(&snap, &t.framework_id),
            },
        ),
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown task `{id}`")),
    }
}

/// The agent endpoint and sandbox path of a task, or an error response
/// (also when `caller` may not read the task's sandbox).
async fn sandbox_of(api: &Api, caller: &Caller, id: &str) -> Result<(String, String), Response> {
    let snap = snapshot(api).await;
    let task = find_task(&snap, id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("unknown task `{id}`")))?;
    check(
        api,
        caller,
        Action::AccessSandbox {
            framework_principal: Sight::principal_of(&snap, &task.framework_id),
        },
    )?;
    let agent = snap.agents.get(&*task.agent_id).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("task `{id}`'s agent is gone"),
        )
    })?;
    if agent.endpoint.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("agent `{}` serves no HTTP API", agent.id),
        ));
    }
    Ok((
        agent.endpoint.clone(),
        format!("{}/{}", task.framework_id, task.id),
    ))
}

/// Relays an agent's answer (status and JSON body) to the caller.
async fn relay(api: &Api, url: String) -> Response {
    let mut request = api.client.get(&url);
    if !api.agent_http_token.is_empty() {
        request = request.bearer_auth(&*api.agent_http_token);
    }
    match request.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match r.json::<Value>().await {
                Ok(body) => (status, Json(body)).into_response(),
                Err(e) => error(
                    StatusCode::BAD_GATEWAY,
                    format!("the agent answered garbage: {e}"),
                ),
            }
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("the task's agent did not answer: {e}"),
        ),
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn task_files(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match sandbox_of(&api, &caller, &id).await {
        Ok((endpoint, sandbox)) => {
            relay(
                &api,
                format!("{endpoint}/files/browse?path={}", query_escape(&sandbox)),
            )
            .await
        }
        Err(r) => r,
    }
}

async fn task_file_read(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(path) = params.get("path") else {
        return error(
            StatusCode::BAD_REQUEST,
            "parameter `path` is required (e.g. stdout)",
        );
    };
    let (endpoint, sandbox) = match sandbox_of(&api, &caller, &id).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let mut url = format!(
        "{endpoint}/files/read?path={}",
        query_escape(&format!("{sandbox}/{path}"))
    );
    for key in ["offset", "length"] {
        if let Some(v) = params.get(key) {
            // Checked here, so a bad one is a 400 naming it, not the
            // agent's refusal relayed as a bad gateway.
            let number = if key == "offset" {
                v.parse::<i64>().is_ok()
            } else {
                v.parse::<u64>().is_ok()
            };
            if !number {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "parameter `{key}` must be a whole number, got `{}`",
                        v.escape_debug()
                    ),
                );
            }
            url.push_str(&format!("&{key}={}", query_escape(v)));
        }
    }
    relay(&api, url).await
}

async fn offers(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    let offers: Vec<Value> = snap
        .offers_aged(unix_ms())
        .into_iter()
        .map(|o| json!(o))
        .filter(|o| sight.framework(&snap, o["framework_id"].as_str().unwrap_or("")))
        .collect();
    Json(json!({ "offers": offers })).into_response()
}

async fn roles(State(api): State<Api>, freshness: Freshness) -> Response {
    let snap = snapshot_for(&api, freshness).await;
    Json(json!({ "roles": snap.roles.as_ref() })).into_response()
}

async fn act(api: &Api, op: Operator) -> Response {
    match ask(&api.core, |reply| CoreMsg::Operator { op, reply }).await {
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
        Ok(Err(OperatorError::NotFound(m))) => error(StatusCode::NOT_FOUND, m),
        Ok(Err(OperatorError::BadRequest(m))) => error(StatusCode::BAD_REQUEST, m),
        Ok(Err(OperatorError::Registry(m))) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        Err(r) => r,
    }
}

/// A JSON object body with only the `known` fields, or a 400 naming what
/// is wrong with it (a misspelt field is not silently ignored).
fn body_json(body: &str, known: &[&str]) -> Result<Value, Response> {
    if body.trim().is_empty() {
        return Ok(json!({}));
    }
    let value: Value = serde_json::from_str(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(error(StatusCode::BAD_REQUEST, "body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        let expected = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown field `{unknown}` (known: {expected})"),
        ));
    }
    Ok(value)
}

async fn set_weight(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(role): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::UpdateWeight { role: &role }) {
        return r;
    }
    let body = match body_json(&body, &["weight"]) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(weight) = body.get("weight").and_then(Value::as_f64) else {
        return error(
            StatusCode::BAD_REQUEST,
            "field `weight`: a number > 0 is required",
        );
    };
    act(&api, Operator::SetWeight { role, weight }).await
}

async fn teardown(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = body_json(&body, &[]) {
        return r;
    }
    let snap = snapshot(&api).await;
    if snap.frameworks.contains_key(id.as_str())
        && let Err(r) = check(
            &api,
            &caller,
            Action::TeardownFramework {
                framework_principal: Sight::principal_of(&snap, &id),
            },
        )
    {
        return r;
    }
    act(&api, Operator::Teardown { framework_id: id }).await
}

async fn reset_weight(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(role): Path<String>,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::UpdateWeight { role: &role }) {
        return r;
    }
    act(&api, Operator::ResetWeight { role }).await
}

async fn drain(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::DrainAgent) {
        return r;
    }
    let body = match body_json(&body, &["kill_tasks"]) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let kill_tasks = match body.get("kill_tasks") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("field `kill_tasks`: expected true or false, got {other}"),
            );
        }
    };
    act(
        &api,
        Operator::Drain {
            agent_id: id,
            kill_tasks,
        },
    )
    .await
}

async fn undrain(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::DrainAgent) {
        return r;
    }
    if let Err(r) = body_json(&body, &[]) {
        return r;
    }
    act(&api, Operator::Undrain { agent_id: id }).await
}

async fn mark_gone(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::MarkAgentGone) {
        return r;
    }
    if let Err(r) = body_json(&body, &[]) {
        return r;
    }
    act(&api, Operator::MarkGone { agent_id: id }).await
}

/// Most event streams open at once: each holds a connection and a share of
/// every event.
const MAX_EVENT_STREAMS: usize = 1024;

/// The kinds of event a stream asked for (`?types=a,b`): all of them
/// without the parameter.
fn event_types(
    params: &HashMap<String, String>,
) -> Result<Option<std::collections::HashSet<&'static str>>, Response> {
    if let Some(key) = params.keys().find(|k| k.as_str() != "types") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{key}` (use types)"),
        ));
    }
    let Some(types) = params.get("types") else {
        return Ok(None);
    };
    let mut wanted = std::collections::HashSet::new();
    for name in types.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match crate::events::EVENT_NAMES
            .iter()
            .find(|known| **known == name)
        {
            Some(known) => wanted.insert(*known),
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "parameter `types`: `{name}` is not an event type (use {})",
                        crate::events::EVENT_NAMES.join(", ")
                    ),
                ));
            }
        };
    }
    if wanted.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "parameter `types`: name at least one event type".to_string(),
        ));
    }
    Ok(Some(wanted))
}

/// Server-sent events, every kind or those `?types=` names. A stream
/// without `task_updated` (the web UI's) costs the master nothing per
/// task.
async fn event_stream(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let types = match event_types(&params) {
        Ok(types) => types,
        Err(response) => return response,
    };
    if !Sight::of(&api, caller.clone()).everything {
        // Events are not filtered per reader: they are for those who may
        // see every framework and task.
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "principal `{}` may not follow the event stream: it needs view_frameworks and view_tasks on every framework principal",
                caller.name()
            ),
        );
    }
    if api.events.streams() >= MAX_EVENT_STREAMS {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} event streams are open already; try again later"),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let task_updates = types.as_ref().is_none_or(|t| t.contains("task_updated"));
    tokio::spawn(forward_events(
        api.events.subscribe(task_updates),
        types,
        tx,
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Most bytes of events handed to a connection at once.
const EVENT_BATCH: usize = 64 * 1024;

/// How long a stream gathers events after writing some before it writes
/// again: a launch burst is tens of thousands of events a second, and a
/// stream that woke for each few of them cost the master a write and a
/// wake-up each (and its client as many reads). Events wait at most this
/// much longer.
const EVENT_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A comment goes out after this long without events, so clients and
/// proxies keep the connection.
const EVENT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Writes server-sent events from `events` to a client, the events
/// waiting as one piece: written one by one, as their own frames, a
/// client fell behind a launch burst and lost half of it. After a piece
/// that took all that waited, the stream gathers for [`EVENT_GATHER`].
/// Ends when the client goes away.
async fn forward_events(
    mut events: broadcast::Receiver<Arc<Event>>,
    types: Option<std::collections::HashSet<&'static str>>,
    client: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, Infallible>>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let wanted = |event: &Event| types.as_ref().is_none_or(|t| t.contains(event.name()));
    loop {
        let mut out = Vec::new();
        match tokio::time::timeout(EVENT_KEEP_ALIVE, events.recv()).await {
            Err(_) => out.extend_from_slice(b":\n\n"),
            Ok(Err(RecvError::Closed)) => return,
            Ok(Err(RecvError::Lagged(n))) => write_lagged(&mut out, n),
            Ok(Ok(event)) if wanted(&event) => write_event(&mut out, &event),
            Ok(Ok(_)) => continue,
        }
        let mut drained = false;
        while out.len() < EVENT_BATCH {
            match events.try_recv() {
                Ok(event) if wanted(&event) => write_event(&mut out, &event),
                Ok(_) => {}
                Err(TryRecvError::Lagged(n)) => write_lagged(&mut out, n),
                // Closed shows at the next wait.
                Err(TryRecvError::Empty | TryRecvError::Closed) => {
                    drained = true;
                    break;
                }
            }
        }
        if client.send(Ok(out.into())).await.is_err() {
            return;
        }
        if drained {
            tokio::time::sleep(EVENT_GATHER).await;
        }
    }
}

/// One event in the SSE format: its name, then its JSON on one line
/// (compact JSON escapes every newline).
fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(event.json().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Tells a client how many events it missed by falling behind.
fn write_lagged(out: &mut Vec<u8>, missed: u64) {
    out.extend_from_slice(
        format!("event: lagged\ndata: {missed} events were dropped; re-read /api/v1/state\n\n")
            .as_bytes(),
    );
}

/// Largest request body relayed to a framework.
const MAX_PROXY_BODY: usize = agora_proto::limits::MAX_MESSAGE_BYTES;

/// `/{name}/…` goes to the framework called `name` that announced a web
/// address when it subscribed (as Mesos frameworks announce a `webui_url`):
/// the batch framework's API is `/batch/v1/…` on the master's port.
async fn framework_proxy(State(api): State<Api>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let not_found = || error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    let Some(name) = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|n| !n.is_empty())
    else {
        return not_found();
    };
    let name = name.to_string();
    let announced = snapshot(&api)
        .await
        .frameworks
        .values()
        .filter(|f| f.name == name && !f.webui_url.is_empty())
        // A connected one before one that is away.
        .max_by_key(|f| f.active)
        .map(|f| {
            (
                f.webui_url.clone(),
                f.relay_token.clone(),
                f.principal.clone(),
            )
        });
    let Some((base, relay_token, framework_principal)) = announced else {
        return not_found();
    };
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        request
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
    );
    let method = request.method().clone();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    let body = match axum::body::to_bytes(request.into_body(), MAX_PROXY_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_PROXY_BODY} bytes"),
            );
        }
    };
    let mut forward = api.client.request(method, &target).body(body);
    if let Some(ct) = content_type {
        forward = forward.header(header::CONTENT_TYPE, ct);
    }
    // The caller's own credential stays here; the framework learns who
    // called from the master, which proves itself with the relay token.
    if !relay_token.is_empty() {
        // Whoever may tear the framework down may act on all it holds.
        let operator = api.core.policy().allows(
            &caller,
            Action::TeardownFramework {
                framework_principal: &framework_principal,
            },
        );
        forward = forward
            .bearer_auth(relay_token)
            .header(agora_proto::PRINCIPAL_HEADER, caller.name())
            .header(agora_proto::OPERATOR_HEADER, operator.to_string());
    }
    match forward.send().await {
        Ok(mut answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            // Streamed, not buffered: event streams (`text/event-stream`)
            // pass through as they happen.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, String>>(16);
            tokio::spawn(async move {
                loop {
                    match answer.chunk().await {
                        Ok(Some(chunk)) => {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string())).await;
                            return;
                        }
                    }
                }
            });
            let body =
                axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
            let mut response = (status, body).into_response();
            if let Some(ct) = content_type {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("framework `{name}` at {base} did not answer: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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

    #[tokio::test]
    async fn a_streamed_body_of_many_chunks_arrives_whole_and_in_order() {
        let body: Vec<u8> = (0..STREAM_CHUNK * 5 + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = body.clone();
        let response = streamed_json(move |out| {
            // Written in uneven pieces, as views are.
            for piece in body.chunks(1000) {
                out.write_all(piece)?;
            }
            Ok(())
        });
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let got = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the body as written");
    }

    #[tokio::test]
    async fn a_client_that_goes_away_stops_the_writer() {
        let (done, result) = oneshot::channel();
        let response = streamed_json(move |out| {
            let mut written = 0usize;
            let outcome = loop {
                if let Err(e) = out.write_all(&[b' '; 1000]) {
                    break e;
                }
                written += 1000;
                if written > 1 << 30 {
                    panic!("wrote a gigabyte to a client that was gone");
                }
            };
            let _ = done.send((outcome.kind(), written));
            Ok(())
        });
        drop(response);
        let (kind, written) = result.await.expect("the writer ended");
        assert_eq!(kind, std::io::ErrorKind::BrokenPipe);
        assert!(
            written <= STREAM_CHUNK * (STREAM_AHEAD + 2),
            "{written} bytes made for nobody"
        );
    }

    fn task_event(n: usize) -> Event {
        Event::task_updated(
            "f",
            &format!("t{n}"),
            "a",
            "TASK_RUNNING",
            "line one\nline two",
        )
    }

    /// The events in an SSE text, as (name, JSON).
    fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty() && !e.starts_with(':'))
            .map(|e| {
                let lines: Vec<&str> = e.lines().collect();
                assert_eq!(lines.len(), 2, "an event and one data line: {e:?}");
                let name = lines[0].strip_prefix("event: ").expect("event line");
                let data = lines[1].strip_prefix("data: ").expect("data line");
                let value = serde_json::from_str(data).unwrap_or_else(|_| json!(data));
                (name.to_string(), value)
            })
            .collect()
    }

    /// What a client following a stream with room for `room` events gets
    /// first, when `sent` events were sent before it started reading.
    async fn first_piece_after(room: usize, sent: usize) -> Vec<(String, serde_json::Value)> {
        let (events, listener) = broadcast::channel(room);
        for n in 0..sent {
            events.send(Arc::new(task_event(n))).expect("a listener");
        }
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        tokio::spawn(forward_events(listener, None, tx));
        let piece = client.recv().await.expect("a piece").expect("bytes");
        parse_sse(std::str::from_utf8(&piece).expect("text"))
    }

    #[tokio::test]
    async fn events_waiting_go_out_together_one_line_of_json_each() {
        let got = first_piece_after(16, 3).await;
        assert_eq!(got.len(), 3, "all three in one piece");
        for (n, (name, data)) in got.iter().enumerate() {
            assert_eq!(name, "task_updated");
            assert_eq!(data["task_id"], format!("t{n}"));
            assert_eq!(data["message"], "line one\nline two");
        }
    }

    #[tokio::test]
    async fn a_client_that_fell_behind_is_told_how_many_events_it_missed() {
        let got = first_piece_after(4, 10).await;
        assert_eq!(got[0].0, "lagged");
        assert!(
            got[0]
                .1
                .as_str()
                .expect("text")
                .starts_with("6 events were dropped"),
            "{:?}",
            got[0].1
        );
        let kept: Vec<&serde_json::Value> = got[1..].iter().map(|(_, d)| &d["task_id"]).collect();
        assert_eq!(kept, ["t6", "t7", "t8", "t9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_piece_a_stream_gathers_events_before_writing_again() {
        let (events, listener) = broadcast::channel(16);
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        tokio::spawn(forward_events(listener, None, tx));
        events.send(Arc::new(task_event(0))).expect("a listener");
        let first = client.recv().await.expect("a piece").expect("bytes");
        assert_eq!(
            parse_sse(std::str::from_utf8(&first).expect("text")).len(),
            1
        );
        // An event, time for the stream to run (it would write this one
        // alone if it did not gather), then another.
        events.send(Arc::new(task_event(1))).expect("a listener");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        events.send(Arc::new(task_event(2))).expect("a listener");
        let started = tokio::time::Instant::now();
        let second = client.recv().await.expect("a piece").expect("bytes");
        let got = parse_sse(std::str::from_utf8(&second).expect("text"));
        let ids: Vec<&serde_json::Value> = got.iter().map(|(_, d)| &d["task_id"]).collect();
        assert_eq!(ids, ["t1", "t2"], "both in one piece");
        assert!(started.elapsed() <= EVENT_GATHER, "written once gathered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_sends_keep_alives_and_ends_with_its_client() {
        let (events, listener) = broadcast::channel(4);
        let (tx, mut client) = tokio::sync::mpsc::channel(2);
        let forwarding = tokio::spawn(forward_events(listener, None, tx));
        let piece = client.recv().await.expect("a piece").expect("bytes");
        assert_eq!(&piece[..], b":\n\n", "a comment after {EVENT_KEEP_ALIVE:?}");
        drop(client);
        events.send(Arc::new(task_event(0))).expect("a listener");
        forwarding.await.expect("the forwarder ended");
    }

    #[tokio::test]
    async fn a_writer_that_fails_ends_the_body_short() {
        let response = streamed_json(|out| {
            out.write_all(b"{\"agents\":[")?;
            Err(std::io::Error::other("a view would not serialize"))
        });
        let got = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        assert!(
            got.is_err(),
            "a broken body, not a short one that looks whole"
        );
    }
}
