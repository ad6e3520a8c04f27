//! End-to-end tests of the whole system: one test binary, real processes.

mod containers;
mod spine;
mod support;
