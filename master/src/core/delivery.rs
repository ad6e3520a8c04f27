//! What the core sends its peers, over bounded streams
//! ([`crate::outbound`]), and what happens when one is full:
//!
//! - an agent that stops reading is cut off: it reconnects, re-registers,
//!   and what it runs is reconciled then;
//! - an update an agent reported is not forwarded to a framework whose
//!   stream is full: the agent retries it until it is acknowledged;
//! - what only the master can tell a framework (its own task updates,
//!   reconciliation answers, rescinds, agent failures) waits in the
//!   framework's backlog and goes out, in order, as the stream drains;
//! - offers are made only to frameworks with room for them.

use super::*;

/// Offers go only to a framework whose stream has this part of its
/// capacity free: the rest is kept for updates.
const OFFER_HEADROOM_FRACTION: usize = 16;

impl Core {
    /// Sends to the agent's current session; a session too far behind is
    /// ended (the agent reconnects).
    pub(super) fn send_to_agent(&mut self, agent: &str, message: master_message::Message) -> bool {
        let Some((conn, tx)) = self.agents.get(agent).and_then(|a| a.conn.as_ref()) else {
            return false;
        };
        match tx.send(MasterMessage {
            message: Some(message),
        }) {
            Ok(()) => true,
            Err(Unsent::Closed) => false,
            Err(Unsent::Full(_)) => {
                warn!(
                    agent,
                    "the agent's session is full; ending it so the agent reconnects"
                );
                tx.close(Status::resource_exhausted(format!(
                    "agent {agent} fell {} messages behind; reconnect and register again",
                    tx.queued()
                )));
                let conn = *conn;
                self.metrics.peer_streams_cut += 1;
                self.agent_closed(conn);
                false
            }
        }
    }

    /// Forwards an update an agent reported (and will retry until it is
    /// acknowledged). False if it did not go out.
    pub(super) fn send_update(&mut self, framework: &str, status: TaskStatus) -> bool {
        let Some((_, tx)) = self
            .frameworks
            .get(framework)
            .and_then(|f| f.stream.as_ref())
        else {
            return false;
        };
        match tx.send(update_event(status)) {
            Ok(()) => true,
            Err(Unsent::Closed) => false,
            Err(Unsent::Full(_)) => {
                self.metrics.updates_deferred += 1;
                false
            }
        }
    }

    /// A task update the master decided: nobody would retry it.
    pub(super) fn send_master_update(&mut self, framework: &str, status: TaskStatus) {
        self.send_master_event(framework, update_event(status));
    }

    /// Sends an event nobody would retry: straight out while the stream has
    /// room and nothing waits before it, else into the backlog.
    pub(super) fn send_master_event(&mut self, framework: &str, event: Event) {
        let Some(f) = self.frameworks.get_mut(framework) else {
            return;
        };
        let Some((_, tx)) = &f.stream else {
            return;
        };
        if f.backlog.is_empty() {
            match tx.send(event) {
                Ok(()) | Err(Unsent::Closed) => {}
                Err(Unsent::Full(event)) => f.backlog.push_back(event),
            }
        } else {
            f.backlog.push_back(event);
        }
    }

    /// Moves what waits in backlogs into streams that drained.
    pub(super) fn flush_backlogs(&mut self) {
        for f in self.frameworks.values_mut() {
            let Some((_, tx)) = &f.stream else {
                f.backlog.clear();
                continue;
            };
            while let Some(event) = f.backlog.pop_front() {
                match tx.send(event) {
                    Ok(()) => {}
                    Err(Unsent::Full(event)) => {
                        f.backlog.push_front(event);
                        break;
                    }
                    Err(Unsent::Closed) => {
                        f.backlog.clear();
                        break;
                    }
                }
            }
        }
    }

    /// Offers stop to a connected framework whose stream is nearly full
    /// (it reads slower than it is sent to) and resume, with a pass, once
    /// it drained.
    pub(super) fn pause_offers_to_slow_frameworks(&mut self) {
        for f in self.frameworks.values_mut() {
            let Some((_, tx)) = &f.stream else {
                continue;
            };
            let headroom = tx.capacity() / OFFER_HEADROOM_FRACTION;
            let paused = !f.backlog.is_empty() || !tx.has_room(headroom);
            if paused != f.offers_paused {
                f.offers_paused = paused;
                self.allocator.set_framework_active(&f.id, !paused);
                if paused {
                    debug!(framework = %f.id, "stream nearly full; offers paused");
                } else {
                    self.allocation_needed = true;
                }
            }
        }
    }
}

fn update_event(status: TaskStatus) -> Event {
    Event {
        event: Some(event::Event::Update(event::Update {
            status: Some(status),
        })),
    }
}
