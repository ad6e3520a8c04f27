//! Task sandboxes: file listings and reads relayed from the task's agent.

use super::*;

/// The agent endpoint and sandbox path of a task, or an error response
/// (also when `caller` may not read the task's sandbox).
pub(super) async fn sandbox_of(
    api: &Api,
    caller: &Caller,
    id: &str,
) -> Result<(String, String), Response> {
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
    if agent.registered.endpoint.is_empty() {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("agent `{}` serves no HTTP API", agent.registered.id),
        ));
    }
    Ok((
        agent.registered.endpoint.to_string(),
        format!("{}/{}", task.framework_id, task.id),
    ))
}

/// Relays an agent's answer (status and JSON body) to the caller.
pub(super) async fn relay(api: &Api, url: String) -> Response {
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

pub(super) fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) async fn task_files(
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

pub(super) async fn task_file_read(
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
