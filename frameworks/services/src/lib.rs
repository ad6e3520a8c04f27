//! Agora's services framework: long-running apps kept at their wanted
//! version and count by a reconcile loop — rolling upgrades within bounds,
//! automatic rollback, scaling by hand and by cpu use, self-healing with
//! back-off, health checks (run by the agents), service discovery and an
//! L4 load balancer that drains instances before they are stopped. It talks
//! to the master only through the SDK, keeps its state in `agora-store`,
//! and serves its HTTP API (`/services/v1/…`), which the master proxies.

pub mod engine;
mod framework;
mod http;
pub mod lb;
pub mod model;
pub mod spec;
#[cfg(test)]
mod spec_proptests;
pub mod store;

pub use framework::{ServicesConfig, ServicesError, run};
