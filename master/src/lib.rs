//! The Agora master: owns the cluster's authoritative state — admitted
//! agents, subscribed frameworks, outstanding offers and tasks — drives the
//! allocator, relays status updates, and serves gRPC (agents, frameworks) and
//! the operator HTTP API on one port.

pub mod allocator;
