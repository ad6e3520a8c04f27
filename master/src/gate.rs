//! The door of the master's port: every request (gRPC and HTTP alike) is
//! authenticated before it is routed. A wrong credential is refused and
//! logged (never the credential itself); no credential is refused except
//! where nothing secret lies behind (the UI's static files, `/health`) or
//! where the caller's own secret stands in (an agent's session: a known
//! agent re-registers with the secret it was issued).

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{Caller, Policy};

/// The agent session: the core checks the agent's own secret, or the join
/// right of the caller for a new agent.
const AGENT_SESSION: &str = "/agora.v1.AgentService/Session";

fn open_to_anonymous(is_grpc: bool, path: &str) -> bool {
    if is_grpc {
        return path == AGENT_SESSION;
    }
    path == "/" || path == "/health" || path == "/favicon.ico" || path.starts_with("/ui/")
}

/// Who is calling, or the refusal to send back.
#[allow(clippy::result_large_err)]
pub fn authenticate(
    policy: &Policy,
    request: &Request,
    is_grpc: bool,
    peer: &str,
) -> Result<Caller, Response> {
    let path = request.uri().path();
    let certificate = request
        .extensions()
        .get::<crate::ClientCertificate>()
        .map(|c| c.0.as_str());
    match policy.authenticate_with(request.headers(), certificate) {
        Ok(Caller::Anonymous) if !open_to_anonymous(is_grpc, path) => {
            tracing::warn!(%peer, %path, "refused: no credential");
            Err(refusal(
                is_grpc,
                "this call needs a credential (Authorization: Bearer <token>)",
            ))
        }
        Ok(caller) => Ok(caller),
        // A stale cookie must not keep a browser from the sign-in page.
        Err(_) if open_to_anonymous(is_grpc, path) => Ok(Caller::Anonymous),
        Err(e) => {
            tracing::warn!(%peer, %path, "refused: {e}");
            Err(refusal(is_grpc, "the credential is not valid"))
        }
    }
}

fn refusal(is_grpc: bool, message: &str) -> Response {
    if is_grpc {
        tonic::Status::unauthenticated(message).into_http::<axum::body::Body>()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": message })),
        )
            .into_response()
    }
}

/// Records a call refused at the door, if it would have changed something.
pub fn record(log: &AuditLog, caller: &Caller, peer: &str, request: &Request, status: StatusCode) {
    if !crate::audit::is_mutating(request.method()) {
        return;
    }
    log.record(&AuditEntry {
        time: chrono::Utc::now().to_rfc3339(),
        principal: caller.name(),
        peer: peer.to_string(),
        method: request.method().as_str(),
        path: request.uri().path(),
        status: status.as_u16(),
    });
}
