//! Agora's wire protocol: the generated types and gRPC services of
//! `proto/agora.proto` (Mesos v1 vocabulary), and the conversions and resource
//! arithmetic that master, agent and frameworks share.

pub mod auth;
pub mod duration;
pub mod heartbeat;
pub mod limits;
pub mod masters;
#[cfg(test)]
mod proptests;
pub mod refusal;
pub mod resources;
mod task_state;
pub mod tls;

/// Generated protocol types and services (`agora.v1`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("agora.v1");
}

pub use duration::parse_duration;
pub use masters::{MasterList, leader_hint, not_leader};
pub use refusal::{refusal_of, refusal_status};
pub use resources::{Demand, RangeSet, ResourceError, Resources};
pub use task_state::is_terminal;

/// The header in which the master names the caller on requests it relays
/// to a framework's `webui_url` (trusted only with the relay token).
pub const PRINCIPAL_HEADER: &str = "x-agora-principal";

/// The header in which the master says whether that caller may act on
/// everything the framework holds (`true`: its ACLs let it tear the
/// framework down).
pub const OPERATOR_HEADER: &str = "x-agora-operator";
