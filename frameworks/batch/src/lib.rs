//! Agora's batch framework: jobs with retries, timeouts, cron schedules,
//! dependencies, parallel instances and a durable history. It talks to the
//! master only through the SDK, keeps its state in an embedded store, and
//! serves its HTTP API (`/batch/v1/…`), which the master proxies.

pub mod engine;
mod framework;
mod http;
pub mod model;
pub mod spec;
#[cfg(test)]
mod spec_proptests;
pub mod store;

pub use framework::{BatchConfig, BatchError, run};
