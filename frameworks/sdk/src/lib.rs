//! The Agora framework SDK: the one way a framework talks to a master.
//!
//! Implement [`Scheduler`] (react to offers and status updates), make a
//! [`Driver`] for a master, and [`Driver::run`] your scheduler. The driver
//! subscribes, reconnects with backoff and re-subscribes under the same
//! framework id when the connection drops, and acknowledges status updates
//! once your `status_update` returns. `examples/hello.rs` is a whole
//! framework in one file.

mod driver;
mod interest;
pub mod operator;
pub mod placement;
pub mod relay;
pub mod serve;
pub mod spec;

use std::future::Future;

pub use agora_proto::tls::ClientTls;
pub use agora_proto::v1::accept_refusal::Reason as RefusalReason;
pub use agora_proto::v1::{Offer, TaskInfo, TaskState, TaskStatus};
pub use agora_proto::{Demand, RangeSet, Resources, is_terminal, limits, v1};
pub use driver::{Driver, FrameworkConfig, SdkError, run_until};
pub use interest::OfferInterest;
pub use relay::{RelayRefusal, RelayedCaller};
/// gRPC status codes, as [`SdkError::code`] reports them.
pub use tonic::Code;

/// A framework's scheduling logic. Every callback gets the driver, to answer
/// offers and manage tasks from inside it.
pub trait Scheduler: Send {
    /// The master accepted the subscription (also after every reconnect).
    fn subscribed(
        &mut self,
        driver: &Driver,
        framework_id: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, framework_id);
        async {}
    }

    /// New offers. Answer each with [`Driver::accept`] or [`Driver::decline`];
    /// an offer left alone is rescinded after the master's offer timeout.
    fn offers(&mut self, driver: &Driver, offers: Vec<Offer>) -> impl Future<Output = ()> + Send;

    /// An offer is no longer valid (its agent went away, or it timed out).
    fn rescinded(&mut self, driver: &Driver, offer_id: &str) -> impl Future<Output = ()> + Send {
        let _ = (driver, offer_id);
        async {}
    }

    /// A task changed state. Acknowledged when this returns.
    fn status_update(
        &mut self,
        driver: &Driver,
        status: TaskStatus,
    ) -> impl Future<Output = ()> + Send;

    /// An agent was lost.
    fn failure(
        &mut self,
        driver: &Driver,
        agent_id: &str,
        message: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (driver, agent_id, message);
        async {}
    }

    /// The master reported an error (for example: another subscription took
    /// over this framework).
    fn error(&mut self, driver: &Driver, message: &str) -> impl Future<Output = ()> + Send {
        let _ = driver;
        tracing::warn!(%message, "master reported an error");
        async {}
    }

    /// The connection to the master dropped; the driver is reconnecting.
    fn disconnected(&mut self, driver: &Driver) -> impl Future<Output = ()> + Send {
        let _ = driver;
        async {}
    }
}

/// The resources of an offer (invalid entries are dropped).
pub fn offer_resources(offer: &Offer) -> Resources {
    Resources::from_proto(&offer.resources).unwrap_or_default()
}

/// The offer's id.
pub fn offer_id(offer: &Offer) -> &str {
    offer.id.as_ref().map_or("", |i| i.value.as_str())
}

/// The task id a status is about.
pub fn status_task_id(status: &TaskStatus) -> &str {
    status.task_id.as_ref().map_or("", |t| t.value.as_str())
}

/// The state a status reports.
pub fn status_state(status: &TaskStatus) -> TaskState {
    TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown)
}

/// A task running `command` with `sh -c` on `resources`.
pub fn task(id: &str, command: &str, resources: &Resources) -> TaskInfo {
    TaskInfo {
        name: id.to_string(),
        task_id: Some(v1::TaskId {
            value: id.to_string(),
        }),
        resources: resources.to_proto(),
        command: Some(v1::CommandInfo {
            value: command.to_string(),
            environment: None,
        }),
        ..Default::default()
    }
}

/// Takes `count` ports from `available` into `wanted`: returns `None` when
/// the offer has too few.
pub fn with_ports(wanted: Resources, available: &Resources, count: u64) -> Option<Resources> {
    if count == 0 {
        return Some(wanted);
    }
    let ports = available.ranges("ports").take_first(count)?;
    Some(wanted.with_ranges("ports", ports))
}

/// How many bytes `task` takes in an accept (to keep one within
/// [`limits::MAX_ACCEPT_TASK_BYTES`]).
pub fn task_bytes(task: &TaskInfo) -> usize {
    prost::Message::encoded_len(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_offer() {
        let offer = Resources::parse("cpus:1;ports:[31000-31001,31005-31009]").expect("valid");
        let want = Resources::new().with_scalar("cpus", 0.5);
        let got = with_ports(want.clone(), &offer, 3).expect("enough ports");
        assert_eq!(got.ranges("ports").to_string(), "[31000-31001,31005-31005]");
        assert!(offer.contains(&got));
        assert!(with_ports(want, &offer, 8).is_none());
    }
}
