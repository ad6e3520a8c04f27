//! One master or several: the embedded registry serves a lone master; with
//! etcd, masters campaign for a leader key and the others stand by. A
//! standby answers `GET /api/v1/leader`, redirects operator HTTP to the
//! leader (307) and refuses gRPC with a status naming it.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use crate::registry::Registry;

/// Where the registry lives, and so whether masters stand by.
pub enum Backing {
    /// One master, its registry in a file.
    Embedded(Registry),
    /// Several masters on etcd: one leads.
    Etcd(HaConfig),
}

/// A highly available master.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// `http://h1:2379,http://h2:2379`.
    pub etcd: String,
    /// The URL other masters send clients to when this one leads.
    pub advertise: String,
    /// The leader's lease: how long a dead leader keeps the others waiting.
    pub lease_ttl: Duration,
}

/// Where etcd keeps the masters' leader key and registry.
pub const LEADER_KEY: &str = "/agora/master/leader";
pub const REGISTRY_PREFIX: &str = "/agora/master/registry";

/// What this master is now.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    Leading,
    Standby { leader: Option<String> },
}

/// `GET /api/v1/leader`: who leads (this master's own URL when it does).
pub fn leader_answer(role: &Role, me: &str) -> Response {
    let leader = match role {
        Role::Leading => Some(me.to_string()),
        Role::Standby { leader } => leader.clone(),
    };
    let standby = matches!(role, Role::Standby { .. });
    with_any_origin(axum::Json(json!({ "leader": leader, "standby": standby })).into_response())
}

/// `GET /api/v1/masters`: every master, and who leads. Readable from any
/// origin, like `/api/v1/leader`: a page served by a master that died asks
/// the others where to go.
pub fn masters_answer(role: &Role, me: &str, masters: Vec<String>) -> Response {
    let leader = match role {
        Role::Leading => Some(me.to_string()),
        Role::Standby { leader } => leader.clone(),
    };
    with_any_origin(axum::Json(json!({ "masters": masters, "leader": leader })).into_response())
}

fn with_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// Keeps the list of masters current (every second) while the process runs.
pub async fn follow_members(
    election: std::sync::Arc<agora_store::election::Election>,
    members: watch::Sender<Vec<String>>,
) {
    loop {
        match election.members().await {
            Ok(mut list) if !list.is_empty() => {
                list.sort();
                members.send_if_modified(|current| {
                    let changed = *current != list;
                    *current = list;
                    changed
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("listing the masters: {e}"),
        }
        if members.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A standby's answer to anything but `/api/v1/leader`.
pub fn standby_answer(leader: Option<&str>, is_grpc: bool, path_and_query: &str) -> Response {
    if is_grpc {
        return agora_proto::not_leader(leader).into_http();
    }
    if path_and_query == "/health" {
        return axum::Json(json!({ "status": "standby", "leader": leader })).into_response();
    }
    match leader {
        Some(l) => {
            let location = format!("{l}{path_and_query}");
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(l) {
                response
                    .headers_mut()
                    .insert(agora_proto::masters::LEADER_METADATA, v);
            }
            response
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "this master is a standby and no leader is elected yet" })),
        )
            .into_response(),
    }
}

/// Mirrors who the election saw leading into the master's role. A
/// standby that sees itself named (its own key from a term that ended,
/// until its lease runs out) names no leader rather than send clients to
/// itself.
pub async fn follow_observed(
    mut observed: watch::Receiver<Option<String>>,
    role: watch::Sender<Role>,
    me: String,
) {
    loop {
        let leader = observed
            .borrow_and_update()
            .clone()
            .filter(|leader| *leader != me);
        role.send_if_modified(|r| match r {
            Role::Standby { leader: current } if *current != leader => {
                *current = leader;
                true
            }
            _ => false,
        });
        if observed.changed().await.is_err() {
            return;
        }
    }
}
