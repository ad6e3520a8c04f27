//! Operator actions: role weights, teardowns, draining and marking agents
//! gone, each checked against the caller's ACLs and handed to the core.

use super::*;

pub(super) async fn act(api: &Api, op: Operator) -> Response {
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
pub(super) fn body_json(body: &str, known: &[&str]) -> Result<Value, Response> {
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

pub(super) async fn set_weight(
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

pub(super) async fn teardown(
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

pub(super) async fn reset_weight(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(role): Path<String>,
) -> Response {
    if let Err(r) = check(&api, &caller, Action::UpdateWeight { role: &role }) {
        return r;
    }
    act(&api, Operator::ResetWeight { role }).await
}

pub(super) async fn drain(
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

pub(super) async fn undrain(
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

pub(super) async fn mark_gone(
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
