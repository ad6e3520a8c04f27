//! The operator HTTP API (JSON), served on the same port as gRPC.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;

use crate::core::CoreMsg;
use crate::grpc::CoreHandle;

/// The operator routes.
pub fn router(core: CoreHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/state", get(state))
        .fallback(not_found)
        .with_state(core)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn state(State(core): State<CoreHandle>) -> Response {
    let (reply, answer) = oneshot::channel();
    if core.send(CoreMsg::Snapshot { reply }).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        );
    }
    match answer.await {
        Ok(view) => Json(view).into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the master is shutting down",
        ),
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}
