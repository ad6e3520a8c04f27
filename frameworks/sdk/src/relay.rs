//! A framework's own HTTP API answers the master only: the master
//! authenticates the caller, then relays the request with the relay token
//! of the framework's subscription, the caller's principal, and whether the
//! caller may act on everything of this framework (the master's ACLs let it
//! tear the framework down). [`admit`] is the middleware that checks the
//! token and hands handlers the [`RelayedCaller`] (a request extension).
//!
//! What a principal submits (a job, an app) is its own: others may neither
//! see nor change it, unless the master calls them operators of this
//! framework ([`RelayedCaller::may_act_on`]).

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Driver;

/// Who called a framework's HTTP API through the master.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayedCaller {
    /// The principal the master authenticated; `None` when the master runs
    /// without authentication (anyone may do anything).
    pub principal: Option<String>,
    /// The master's ACLs let the caller tear this framework down: it may
    /// act on everything the framework holds.
    pub operator: bool,
}

/// Why a request to a framework's HTTP API is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefusal {
    #[error("the framework has not subscribed to a master yet")]
    NotSubscribed,
    #[error(
        "this API answers requests relayed by the master only (use the master's /{{name}}/… path)"
    )]
    NotFromTheMaster,
}

impl RelayedCaller {
    /// The caller of a request with `headers`, given the relay token the
    /// master issued (empty: the master runs without authentication).
    pub fn from_headers(
        headers: &reqwest::header::HeaderMap,
        relay_token: &str,
    ) -> Result<RelayedCaller, RelayRefusal> {
        if relay_token.is_empty() {
            return Ok(RelayedCaller::default());
        }
        let presented = headers
            .get(reqwest::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !agora_proto::auth::tokens_match(presented, relay_token) {
            return Err(RelayRefusal::NotFromTheMaster);
        }
        let principal = headers
            .get(agora_proto::PRINCIPAL_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|p| !p.is_empty())
            .ok_or(RelayRefusal::NotFromTheMaster)?;
        let operator = headers
            .get(agora_proto::OPERATOR_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        Ok(RelayedCaller {
            principal: Some(principal.to_string()),
            operator,
        })
    }

    /// Whether the caller may see and change what `owner` submitted:
    /// its own, what nobody owns (submitted without authentication), or
    /// anything for an operator or without authentication.
    pub fn may_act_on(&self, owner: Option<&str>) -> bool {
        match (&self.principal, owner) {
            (None, _) | (_, None) => true,
            (Some(me), Some(owner)) => self.operator || me == owner,
        }
    }

    /// The refusal of acting on what `owner` submitted (`what`: "job `x`").
    pub fn refusal(&self, what: &str, owner: &str) -> Response {
        (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": format!(
                    "{what} belongs to principal `{owner}`, not `{}`",
                    self.principal.as_deref().unwrap_or("")
                )
            })),
        )
            .into_response()
    }
}

/// A framework's health answer, which is its readiness: 200 once it has
/// subscribed and so can check what the master relays; before that 503,
/// so whoever waits for it (an operator, a test, a load balancer) does not
/// send work a moment too early.
pub fn health(driver: &Driver) -> Response {
    if driver.has_subscribed() {
        axum::Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "subscribing",
                "error": RelayRefusal::NotSubscribed.to_string(),
            })),
        )
            .into_response()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_the_relay_token_is_trusted_and_owners_keep_their_own() {
        let relayed = headers(&[
            ("authorization", "Bearer relay-1"),
            ("x-agora-principal", "team-a"),
            ("x-agora-operator", "false"),
        ]);
        let a = RelayedCaller::from_headers(&relayed, "relay-1").expect("relayed");
        assert_eq!(a.principal.as_deref(), Some("team-a"));
        assert!(a.may_act_on(Some("team-a")) && a.may_act_on(None));
        assert!(!a.may_act_on(Some("team-b")));
        assert_eq!(
            RelayedCaller::from_headers(&relayed, "relay-2"),
            Err(RelayRefusal::NotFromTheMaster)
        );
        let forged = headers(&[("x-agora-principal", "ops"), ("x-agora-operator", "true")]);
        assert_eq!(
            RelayedCaller::from_headers(&forged, "relay-1"),
            Err(RelayRefusal::NotFromTheMaster),
            "no token, no trust in the headers"
        );
        let ops = headers(&[
            ("authorization", "Bearer relay-1"),
            ("x-agora-principal", "ops"),
            ("x-agora-operator", "true"),
        ]);
        let ops = RelayedCaller::from_headers(&ops, "relay-1").expect("relayed");
        assert!(ops.may_act_on(Some("team-b")));
        let open = RelayedCaller::from_headers(&headers(&[]), "").expect("no auth");
        assert!(open.may_act_on(Some("team-b")));
    }

    #[tokio::test]
    async fn not_ready_before_the_first_subscription() {
        // Nothing listens there: the driver never subscribes.
        let config = crate::FrameworkConfig::new("http://127.0.0.1:9", "waiting");
        let driver = Driver::new(config).expect("driver");
        assert!(!driver.has_subscribed());
        assert_eq!(health(&driver).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            driver.relayed_caller(&headers(&[])),
            Err(RelayRefusal::NotSubscribed)
        );
    }
}
