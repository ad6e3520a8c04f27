//! Cluster events, as `GET /api/v1/events` streams them (server-sent
//! events): what changed, so tools can follow the cluster without polling.

use serde::Serialize;

use crate::state::write_field;

/// Where the core sends events, each shared by every listener (a
/// listener's copy is a reference count).
pub type EventSender = tokio::sync::broadcast::Sender<std::sync::Arc<Event>>;

/// An event as the stream sends it: its name and its JSON, made once,
/// where it happens. A task update's JSON is made by the core straight
/// from its own strings, still in cache, into one allocation: made later
/// by a stream from a copy of each string, it cost a cache miss per
/// string and a quarter of the operators' thread under a launch load.
#[derive(Debug)]
pub struct Event {
    name: &'static str,
    json: Box<str>,
}

impl Event {
    /// A task's new state (`state` its protobuf name, `TASK_RUNNING`).
    pub fn task_updated(
        framework_id: &str,
        task_id: &str,
        agent_id: &str,
        state: &'static str,
        message: &str,
    ) -> Event {
        let mut out = Vec::with_capacity(
            100 + framework_id.len() + task_id.len() + agent_id.len() + state.len() + message.len(),
        );
        write_task_updated(&mut out, framework_id, task_id, agent_id, state, message);
        Event::made("task_updated", out)
    }

    fn made(name: &'static str, json: Vec<u8>) -> Event {
        Event {
            name,
            json: String::from_utf8(json)
                .expect("JSON made of strings is UTF-8")
                .into_boxed_str(),
        }
    }

    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The event's JSON, on one line.
    pub fn json(&self) -> &str {
        &self.json
    }
}

impl From<ClusterEvent> for Event {
    fn from(event: ClusterEvent) -> Event {
        let mut out = Vec::new();
        event.write_json(&mut out);
        Event::made(event.name(), out)
    }
}

/// A task update's JSON, the same bytes as [`ClusterEvent::TaskUpdated`]'s
/// `Serialize`.
fn write_task_updated(
    out: &mut Vec<u8>,
    framework_id: &str,
    task_id: &str,
    agent_id: &str,
    state: &str,
    message: &str,
) {
    write_field(
        out,
        b"{\"type\":\"task_updated\",\"framework_id\":",
        framework_id,
    );
    write_field(out, b",\"task_id\":", task_id);
    write_field(out, b",\"agent_id\":", agent_id);
    write_field(out, b",\"state\":", state);
    write_field(out, b",\"message\":", message);
    out.push(b'}');
}

/// One change in the cluster.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    AgentAdded {
        agent_id: String,
        hostname: String,
    },
    AgentReregistered {
        agent_id: String,
        hostname: String,
    },
    AgentDisconnected {
        agent_id: String,
    },
    AgentUnreachable {
        agent_id: String,
    },
    AgentDrained {
        agent_id: String,
        kill_tasks: bool,
    },
    AgentUndrained {
        agent_id: String,
    },
    /// Forgotten: unreachable past the removal timeout, or marked gone.
    AgentRemoved {
        agent_id: String,
        reason: String,
    },
    FrameworkAdded {
        framework_id: String,
        name: String,
        role: String,
    },
    FrameworkDisconnected {
        framework_id: String,
    },
    FrameworkRemoved {
        framework_id: String,
    },
    TaskUpdated {
        framework_id: String,
        task_id: String,
        agent_id: String,
        /// The state's protobuf name (`TASK_RUNNING`).
        state: &'static str,
        message: String,
    },
    RoleWeightChanged {
        role: String,
        weight: f64,
    },
}

impl ClusterEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            ClusterEvent::AgentAdded { .. } => "agent_added",
            ClusterEvent::AgentReregistered { .. } => "agent_reregistered",
            ClusterEvent::AgentDisconnected { .. } => "agent_disconnected",
            ClusterEvent::AgentUnreachable { .. } => "agent_unreachable",
            ClusterEvent::AgentDrained { .. } => "agent_drained",
            ClusterEvent::AgentUndrained { .. } => "agent_undrained",
            ClusterEvent::AgentRemoved { .. } => "agent_removed",
            ClusterEvent::FrameworkAdded { .. } => "framework_added",
            ClusterEvent::FrameworkDisconnected { .. } => "framework_disconnected",
            ClusterEvent::FrameworkRemoved { .. } => "framework_removed",
            ClusterEvent::TaskUpdated { .. } => "task_updated",
            ClusterEvent::RoleWeightChanged { .. } => "role_weight_changed",
        }
    }

    /// Appends the event's JSON, the same bytes as its `Serialize`: task
    /// updates (nearly every event) by hand, in two thirds of serde's time
    /// (`events_json`), the rest through serde.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            ClusterEvent::TaskUpdated {
                framework_id,
                task_id,
                agent_id,
                state,
                message,
            } => write_task_updated(out, framework_id, task_id, agent_id, state, message),
            // Only strings, numbers and booleans, which always serialize.
            other => serde_json::to_writer(&mut *out, other).expect("events serialize"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_updates_hand_written_json_is_what_serde_writes() {
        for message in [
            "",
            "plain",
            "a \"quoted\"\nline\twith\\escapes\u{1}",
            "ünïcode ✓",
        ] {
            let event = ClusterEvent::TaskUpdated {
                framework_id: "frame\"work".into(),
                task_id: "t-1".into(),
                agent_id: "agent\n1".into(),
                state: "TASK_RUNNING",
                message: message.into(),
            };
            let mut by_hand = Vec::new();
            event.write_json(&mut by_hand);
            let by_serde = serde_json::to_vec(&event).expect("serializes");
            assert_eq!(
                String::from_utf8(by_hand).expect("utf-8"),
                String::from_utf8(by_serde).expect("utf-8"),
                "message {message:?}"
            );
        }
    }

    #[test]
    fn a_task_update_made_by_the_core_is_the_events_json() {
        let made = Event::task_updated("f", "t\"1", "a", "TASK_FAILED", "exit 1\n");
        let described = Event::from(ClusterEvent::TaskUpdated {
            framework_id: "f".into(),
            task_id: "t\"1".into(),
            agent_id: "a".into(),
            state: "TASK_FAILED",
            message: "exit 1\n".into(),
        });
        assert_eq!(made.name(), "task_updated");
        assert_eq!(
            (made.name(), made.json()),
            (described.name(), described.json())
        );
        let value: serde_json::Value = serde_json::from_str(made.json()).expect("JSON");
        assert_eq!(value["task_id"], "t\"1");
        assert_eq!(value["message"], "exit 1\n");
    }

    #[test]
    fn other_events_are_written_through_serde() {
        let event = ClusterEvent::AgentRemoved {
            agent_id: "a1".into(),
            reason: "gone".into(),
        };
        let mut out = Vec::new();
        event.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            r#"{"type":"agent_removed","agent_id":"a1","reason":"gone"}"#
        );
    }
}
