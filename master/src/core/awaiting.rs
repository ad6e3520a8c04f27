//! Registrations waiting for their records to be committed: in the order
//! they were recorded (commits make them durable in that order), and found
//! by session and by agent in constant time — tens of thousands of agents
//! may join at once, and every message or close of any session asks
//! whether it is one of these.

use std::collections::VecDeque;

use super::FastMap;
use super::agents::Admission;
use crate::registry::Durability;

/// A registration that issued a secret, waiting for the registry to commit
/// its record (batch `through`) before the agent is told.
pub(super) struct AwaitingDurable {
    pub(super) through: u64,
    pub(super) admission: Admission,
    pub(super) secret: String,
}

#[derive(Default)]
pub(super) struct AwaitingRegistrations {
    by_conn: FastMap<u64, AwaitingDurable>,
    /// Batch and session, in the order recorded; a session no longer in
    /// `by_conn` (closed, or replaced) is skipped when its turn comes.
    order: VecDeque<(u64, u64)>,
    /// The session each waiting agent registered on.
    conn_of_agent: FastMap<String, u64>,
}

impl AwaitingRegistrations {
    pub(super) fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }

    /// Whether the session's registration waits for its commit.
    pub(super) fn has_session(&self, conn: u64) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Queues a registration; hands back the one it replaces (the same
    /// agent on an older session still waiting).
    pub(super) fn push(&mut self, awaiting: AwaitingDurable) -> Option<AwaitingDurable> {
        let conn = awaiting.admission.conn;
        let replaced = self
            .conn_of_agent
            .insert(awaiting.admission.id.clone(), conn)
            .and_then(|older| self.by_conn.remove(&older));
        self.order.push_back((awaiting.through, conn));
        self.by_conn.insert(conn, awaiting);
        replaced
    }

    /// The next registration whose batch `durability` covers.
    pub(super) fn next_durable(&mut self, durability: &Durability) -> Option<AwaitingDurable> {
        while let Some(&(through, conn)) = self.order.front() {
            if !durability.covers(through) {
                return None;
            }
            self.order.pop_front();
            if let Some(awaiting) = self.take(conn) {
                return Some(awaiting);
            }
        }
        None
    }

    /// Takes the session's registration out of the queue.
    pub(super) fn take(&mut self, conn: u64) -> Option<AwaitingDurable> {
        let awaiting = self.by_conn.remove(&conn)?;
        if self.conn_of_agent.get(&awaiting.admission.id) == Some(&conn) {
            self.conn_of_agent.remove(&awaiting.admission.id);
        }
        if self.by_conn.is_empty() {
            self.order.clear();
        }
        Some(awaiting)
    }

    /// Takes every registration out of the queue.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = AwaitingDurable> + '_ {
        self.order.clear();
        self.conn_of_agent.clear();
        self.by_conn.drain().map(|(_, awaiting)| awaiting)
    }
}
