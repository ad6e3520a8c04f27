//! End-to-end tests of the whole system: one test binary, real processes.

mod agent_protocol;
mod batch;
mod containers;
mod ha;
mod operator;
mod registry;
mod security;
mod services;
mod spine;
mod support;
