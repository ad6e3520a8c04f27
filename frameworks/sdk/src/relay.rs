//! A framework's own HTTP API answers the master only: the master
//! authenticates the caller, then relays the request with the relay token
//! of the framework's subscription and the caller's principal. [`admit`]
//! is the middleware that checks both and hands handlers the
//! [`RelayedCaller`] (as a request extension).

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{Driver, RelayRefusal, RelayedCaller};

/// Runs `request` if the master relayed it; else answers 401 (or 503
/// before the framework has subscribed) in JSON.
pub async fn admit(driver: &Driver, mut request: Request, next: Next) -> Response {
    match driver.relayed_caller(request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            let status = match refusal {
                RelayRefusal::NotSubscribed => StatusCode::SERVICE_UNAVAILABLE,
                RelayRefusal::NotFromTheMaster => StatusCode::UNAUTHORIZED,
            };
            tracing::warn!(path = %request.uri().path(), "HTTP API: {refusal}");
            (
                status,
                axum::Json(serde_json::json!({ "error": refusal.to_string() })),
            )
                .into_response()
        }
    }
}

/// The caller a handler serves (anyone, for requests that were not
/// checked).
pub fn caller_of(request_extensions: &axum::http::Extensions) -> RelayedCaller {
    request_extensions
        .get::<RelayedCaller>()
        .cloned()
        .unwrap_or(RelayedCaller::Anyone)
}
