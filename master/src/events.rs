//! Cluster events, as `GET /api/v1/events` streams them (server-sent
//! events): what changed, so tools can follow the cluster without polling.

use serde::Serialize;

use crate::state::write_field;

use std::sync::Arc;

use tokio::sync::broadcast;

/// Every kind of event the stream sends (besides `lagged`, which says how
/// many a slow client missed).
pub const EVENT_NAMES: [&str; 12] = [
    "agent_added",
    "agent_reregistered",
    "agent_disconnected",
    "agent_unreachable",
    "agent_drained",
    "agent_undrained",
    "agent_removed",
    "framework_added",
    "framework_disconnected",
    "framework_removed",
    "task_updated",
    "role_weight_changed",
];

/// The one kind that comes by the ten thousand a second under load.
const TASK_UPDATED: &str = "task_updated";

/// Where the core sends events, each shared by every listener (a
/// listener's copy is a reference count): one channel with every event,
/// and one with all but task updates for listeners that want only the
/// rest (the web UI, which reads tasks a page at a time). The core makes
/// task updates only while someone follows them.
#[derive(Clone, Debug)]
pub struct EventSender {
    all: broadcast::Sender<Arc<Event>>,
    without_tasks: broadcast::Sender<Arc<Event>>,
}

impl EventSender {
    /// Channels that keep `room` events for a listener that falls behind.
    pub fn new(room: usize) -> Self {
        EventSender {
            all: broadcast::channel(room).0,
            without_tasks: broadcast::channel(room).0,
        }
    }

    /// Whether anyone follows task updates.
    pub fn task_updates_followed(&self) -> bool {
        self.all.receiver_count() > 0
    }

    /// Streams open, of either kind.
    pub fn streams(&self) -> usize {
        self.all.receiver_count() + self.without_tasks.receiver_count()
    }

    /// To whoever listens now (nobody listening is fine).
    pub fn send(&self, event: Event) {
        let event = Arc::new(event);
        if event.name != TASK_UPDATED {
            let _ = self.without_tasks.send(event.clone());
        }
        let _ = self.all.send(event);
    }

    /// Events from now on: all of them, or all but task updates.
    pub fn subscribe(&self, task_updates: bool) -> broadcast::Receiver<Arc<Event>> {
        if task_updates {
            self.all.subscribe()
        } else {
            self.without_tasks.subscribe()
        }
    }
}

/// An event as the stream sends it: its name and its JSON, made once,
/// where it happens. A task update's JSON is made by the core straight
/// from its own strings, still in cache, into one allocation: made later
/// by a stream from a copy of each string, it cost a cache miss per
/// string and a quarter of the operators' thread under a launch load.
#[derive(Debug)]
pub struct Event {
    name: &'static str,
    /// Not shrunk to fit: a copy per event, for a few bytes each of the
    /// events the channels hold.
    json: String,
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
        Event::made(TASK_UPDATED, out)
    }

    fn made(name: &'static str, json: Vec<u8>) -> Event {
        Event {
            name,
            json: String::from_utf8(json).expect("JSON made of strings is UTF-8"),
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
    fn every_kind_of_event_is_named_in_the_list() {
        let kinds = [
            ClusterEvent::AgentAdded {
                agent_id: "a".into(),
                hostname: "h".into(),
            },
            ClusterEvent::AgentReregistered {
                agent_id: "a".into(),
                hostname: "h".into(),
            },
            ClusterEvent::AgentDisconnected {
                agent_id: "a".into(),
            },
            ClusterEvent::AgentUnreachable {
                agent_id: "a".into(),
            },
            ClusterEvent::AgentDrained {
                agent_id: "a".into(),
                kill_tasks: false,
            },
            ClusterEvent::AgentUndrained {
                agent_id: "a".into(),
            },
            ClusterEvent::AgentRemoved {
                agent_id: "a".into(),
                reason: "gone".into(),
            },
            ClusterEvent::FrameworkAdded {
                framework_id: "f".into(),
                name: "n".into(),
                role: "*".into(),
            },
            ClusterEvent::FrameworkDisconnected {
                framework_id: "f".into(),
            },
            ClusterEvent::FrameworkRemoved {
                framework_id: "f".into(),
            },
            ClusterEvent::TaskUpdated {
                framework_id: "f".into(),
                task_id: "t".into(),
                agent_id: "a".into(),
                state: "TASK_RUNNING",
                message: String::new(),
            },
            ClusterEvent::RoleWeightChanged {
                role: "r".into(),
                weight: 2.0,
            },
        ];
        let names: Vec<&str> = kinds.iter().map(ClusterEvent::name).collect();
        assert_eq!(names, EVENT_NAMES);
    }

    #[test]
    fn a_listener_without_task_updates_gets_the_rest_in_order_and_task_updates_are_made_only_for_listeners_of_them()
     {
        let events = EventSender::new(16);
        let mut quiet = events.subscribe(false);
        assert!(
            !events.task_updates_followed(),
            "no listener of task updates yet"
        );
        let mut everything = events.subscribe(true);
        assert!(events.task_updates_followed());
        assert_eq!(events.streams(), 2);
        events.send(
            ClusterEvent::AgentAdded {
                agent_id: "a".into(),
                hostname: "h".into(),
            }
            .into(),
        );
        events.send(Event::task_updated("f", "t", "a", "TASK_RUNNING", ""));
        events.send(
            ClusterEvent::FrameworkRemoved {
                framework_id: "f".into(),
            }
            .into(),
        );
        let names = |rx: &mut broadcast::Receiver<Arc<Event>>| {
            let mut names = Vec::new();
            while let Ok(event) = rx.try_recv() {
                names.push(event.name());
            }
            names
        };
        assert_eq!(names(&mut quiet), ["agent_added", "framework_removed"]);
        assert_eq!(
            names(&mut everything),
            ["agent_added", "task_updated", "framework_removed"]
        );
        drop(everything);
        assert!(!events.task_updates_followed());
    }

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
