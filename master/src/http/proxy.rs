//! `/{name}/`: a framework's own HTTP API or UI, relayed from where it
//! announced it.

use super::*;

/// Largest request body relayed to a framework.
pub(super) const MAX_PROXY_BODY: usize = agora_proto::limits::MAX_MESSAGE_BYTES;

/// `/{name}/…` goes to the framework called `name` that announced a web
/// address when it subscribed (as Mesos frameworks announce a `webui_url`):
/// the batch framework's API is `/batch/v1/…` on the master's port.
pub(super) async fn framework_proxy(
    State(api): State<Api>,
    request: axum::extract::Request,
) -> Response {
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
    let Ok(answered) = tokio::time::timeout(api.relay_timeout, forward.send()).await else {
        return error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "framework `{name}` at {base} did not begin to answer within {:?}",
                api.relay_timeout
            ),
        );
    };
    match answered {
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
