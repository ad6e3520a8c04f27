//! Reads of the cluster's state, answered from snapshots: the whole state,
//! the summary, metrics, and agents, frameworks, tasks, offers and roles,
//! whole or a page at a time.

use super::*;

pub(super) async fn state(
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
        offers: Vec<crate::state::AgedOffer<'a>>,
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
                .filter(|o| sight.framework(&snap, o.framework_id))
                .collect(),
        };
        Ok(serde_json::to_writer(out, &visible)?)
    })
}

/// What the cluster adds up to, from sums the core keeps: cheap at any
/// size, for the web UI's overview and for scripts that would otherwise
/// read the whole state to count. A caller who may not see every task
/// gets the counts of those it may see.
pub(super) async fn summary(
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

pub(super) async fn metrics(State(api): State<Api>, freshness: Freshness) -> Response {
    let mut text = snapshot_for(&api, freshness).await.render_metrics();
    api.snapshots.render_metrics(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// An agent with the tasks on it.
pub(super) fn agent_json(a: &AgentView, tasks: &[&TaskView]) -> Value {
    let mut value = json!(a);
    value["tasks"] = json!(tasks);
    value["usage"] = json!(UsageSum::of(tasks.iter().filter_map(|t| t.usage.as_ref())));
    value
}

/// An agent on a page: its view and its running tasks' usage, not the
/// tasks themselves (a hundred agents held 20 MB of them under a launch
/// load).
#[derive(serde::Serialize)]
pub(super) struct AgentOnPage<'a> {
    #[serde(flatten)]
    agent: &'a AgentView,
    usage: UsageSum,
}

/// The usage of the live tasks, visible to `sight`, on the agents
/// `wanted`, by agent: kept in the snapshot for a caller who sees every
/// task; for one who does not, one pass over the tasks.
pub(super) fn usage_by_agent<'a>(
    snap: &'a Snapshot,
    sight: &Sight,
    wanted: &[&'a AgentView],
) -> HashMap<&'a str, UsageSum> {
    if sight.everything {
        return wanted
            .iter()
            .filter_map(|a| {
                Some((
                    a.registered.id.as_str(),
                    snap.usage_by_agent.get(a.registered.id.as_str())?.clone(),
                ))
            })
            .collect();
    }
    let wanted: std::collections::HashSet<&str, foldhash::fast::RandomState> =
        wanted.iter().map(|a| a.registered.id.as_str()).collect();
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

/// Live tasks grouped by agent, in one pass.
pub(super) fn live_tasks_by_agent<'a>(
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
pub(super) async fn agents(
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
                .map(|a| {
                    agent_json(
                        a,
                        by_agent
                            .get(a.registered.id.as_str())
                            .map_or(&[], Vec::as_slice),
                    )
                })
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
                usage: usage
                    .remove(agent.registered.id.as_str())
                    .unwrap_or_default(),
            })
            .collect();
        serde_json::to_vec(&json!({
            "agents": list, "total": total, "offset": page.offset, "limit": page.limit,
        }))
    })
    .await
}

pub(super) async fn agent(
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

pub(super) async fn frameworks(
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

pub(super) async fn framework(
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

/// Whether task `t` has `needle` in its id, name, state,
/// message or its agent's id or hostname, ignoring case: the web UI's
/// filter.
pub(super) fn task_has(snap: &Snapshot, t: &TaskView, needle: &str) -> bool {
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
            .is_some_and(|a| has(&a.registered.hostname))
}

pub(super) async fn tasks(
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
            Some((&*t.agent_id, agent.registered.hostname.as_str()))
        })
        .collect();
    Json(json!({
        "tasks": page, "total": total, "offset": offset, "limit": limit, "hostnames": hostnames,
    }))
    .into_response()
}

/// The task called `id` (live ones first, for ids reused after an end).
pub(super) fn find_task<'a>(snap: &'a Snapshot, id: &str) -> Option<&'a TaskView> {
    let mut candidates: Vec<&TaskView> = snap.tasks_with_id(id).collect();
    candidates.sort_by_key(|t| is_ended(t.state));
    candidates.first().copied()
}

pub(super) async fn task(
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

pub(super) async fn offers(
    State(api): State<Api>,
    freshness: Freshness,
    Extension(caller): Extension<Caller>,
) -> Response {
    let (snap, sight) = look(&api, freshness, caller).await;
    let offers: Vec<_> = snap
        .offers_aged(unix_ms())
        .filter(|o| sight.framework(&snap, o.framework_id))
        .collect();
    Json(json!({ "offers": offers })).into_response()
}

pub(super) async fn roles(State(api): State<Api>, freshness: Freshness) -> Response {
    let snap = snapshot_for(&api, freshness).await;
    Json(json!({ "roles": snap.roles.as_ref() })).into_response()
}
