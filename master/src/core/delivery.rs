//! What the core sends its peers, over bounded streams
//! ([`crate::outbound`]), and what happens when one is full:
//!
//! - an agent that stops reading is cut off: it reconnects, re-registers,
//!   and what it runs is reconciled then;
//! - what a framework's full stream cannot take (task updates, the
//!   master's own, reconciliation answers, rescinds, agent failures) waits
//!   in the framework's backlog and goes out, in order, as the stream
//!   drains. An update an agent retries is queued once: the backlog holds
//!   at most what is unacknowledged, which the state bounds, not the rate
//!   of messages. Dropping them instead (the agent retries) turned a
//!   framework that was briefly slow into seconds of retries;
//! - offers are made only to frameworks whose stream has room and whose
//!   backlog is empty: a framework that cannot keep up is not given more
//!   to launch;
//! - a backlog past [`MAX_BACKLOG`] ends the stream: the framework
//!   resubscribes and reconciles.

use super::*;

/// Offers go only to a framework whose stream has this part of its
/// capacity free: the rest is kept for updates.
const OFFER_HEADROOM_FRACTION: usize = 16;

/// Events a framework's backlog may hold before its stream is ended.
pub(super) const MAX_BACKLOG: usize = 1_000_000;

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

    /// Forwards an update an agent reported (and retries until it is
    /// acknowledged). False if the framework is not connected.
    pub(super) fn send_update(&mut self, framework: &str, status: TaskStatus) -> bool {
        let uuid = status.uuid.clone();
        let Some(f) = self.frameworks.get_mut(framework) else {
            return false;
        };
        if f.stream.is_none() {
            return false;
        }
        if !uuid.is_empty() && f.backlog_uuids.contains(&uuid) {
            // A retry of an update still waiting its turn.
            return true;
        }
        self.send_event(framework, update_event(status), uuid)
    }

    /// A task update the master decided: nobody would retry it.
    pub(super) fn send_master_update(&mut self, framework: &str, status: TaskStatus) {
        self.send_master_event(framework, update_event(status));
    }

    /// Sends an event nobody would retry.
    pub(super) fn send_master_event(&mut self, framework: &str, event: Event) {
        self.send_event(framework, event, Vec::new());
    }

    /// Straight out while the stream has room and nothing waits before it,
    /// else into the backlog (`uuid`: the update's, to queue it once).
    fn send_event(&mut self, framework: &str, event: Event, uuid: Vec<u8>) -> bool {
        let Some(f) = self.frameworks.get_mut(framework) else {
            return false;
        };
        let Some((_, tx)) = &f.stream else {
            return false;
        };
        let event = if f.backlog.is_empty() {
            match tx.send(event) {
                Ok(()) => return true,
                Err(Unsent::Closed) => return false,
                Err(Unsent::Full(event)) => event,
            }
        } else {
            event
        };
        if f.backlog.len() >= MAX_BACKLOG {
            warn!(
                framework,
                "the framework's backlog is full; ending its stream"
            );
            tx.close(Status::resource_exhausted(format!(
                "framework {framework} fell {MAX_BACKLOG} events behind; subscribe again and reconcile"
            )));
            f.backlog.clear();
            f.backlog_uuids.clear();
            self.metrics.peer_streams_cut += 1;
            return false;
        }
        self.metrics.events_backlogged += 1;
        if !uuid.is_empty() {
            f.backlog_uuids.insert(uuid.clone());
        }
        f.backlog.push_back((event, uuid));
        true
    }

    /// Queues an acknowledgement for the agent; it goes at the burst's end
    /// ([`Core::send_acknowledgements`]).
    pub(super) fn acknowledge_to_agent(&mut self, agent: String, ack: master_message::Acknowledge) {
        self.acks_for_agents.entry(agent).or_default().push(ack);
    }

    /// Sends each agent the acknowledgements gathered for it, in one
    /// message. An agent that is away resends its updates when it returns.
    pub(super) fn send_acknowledgements(&mut self) {
        if self.acks_for_agents.is_empty() {
            return;
        }
        // Taken and put back, drained: the map keeps its room for the next
        // burst.
        let mut due = std::mem::take(&mut self.acks_for_agents);
        for (agent, acks) in due.drain() {
            self.send_to_agent(
                &agent,
                master_message::Message::Acknowledgements(master_message::Acknowledgements {
                    acks,
                }),
            );
        }
        self.acks_for_agents = due;
    }

    /// Moves what waits in backlogs into streams that drained.
    pub(super) fn flush_backlogs(&mut self) {
        for f in self.frameworks.values_mut_unseen() {
            if f.backlog.is_empty() {
                continue;
            }
            let Some((_, tx)) = &f.stream else {
                f.backlog.clear();
                f.backlog_uuids.clear();
                continue;
            };
            while let Some((event, uuid)) = f.backlog.pop_front() {
                match tx.send(event) {
                    Ok(()) => {
                        if !uuid.is_empty() {
                            f.backlog_uuids.remove(&uuid);
                        }
                    }
                    Err(Unsent::Full(event)) => {
                        f.backlog.push_front((event, uuid));
                        break;
                    }
                    Err(Unsent::Closed) => {
                        f.backlog.clear();
                        f.backlog_uuids.clear();
                        break;
                    }
                }
            }
        }
    }

    /// Resolves once a framework that waits on its stream (events in its
    /// backlog, or offers paused while the stream was nearly full) has the
    /// room that lets it go on, so the core moves it on then, not at its
    /// next wake for something else. (With heartbeats answered off the
    /// core, those wakes came seldom enough that reconciling 100,000 tasks
    /// took a second, not a third of one.) `None`: nobody waits.
    pub(super) fn room_for_waiting_frameworks(
        &self,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut rooms: Vec<_> = self
            .frameworks
            .values()
            .filter(|f| f.offers_paused || !f.backlog.is_empty())
            .filter_map(|f| f.stream.as_ref())
            .map(|(_, tx)| Box::pin(tx.room(tx.capacity() / OFFER_HEADROOM_FRACTION + 1)))
            .collect();
        if rooms.is_empty() {
            return None;
        }
        Some(std::future::poll_fn(move |cx| {
            if rooms
                .iter_mut()
                .any(|room| room.as_mut().poll(cx).is_ready())
            {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }))
    }

    /// Offers stop to a connected framework whose stream is nearly full
    /// (it reads slower than it is sent to) and resume, with a pass, once
    /// it drained.
    pub(super) fn pause_offers_to_slow_frameworks(&mut self) {
        for f in self.frameworks.values_mut_unseen() {
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
