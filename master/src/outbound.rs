//! The core's end of a peer's stream (an agent's session, a framework's
//! events): bounded, so a peer that stops reading costs the master a fixed
//! amount of memory, not whatever the cluster sends it meanwhile.
//!
//! The last slot is kept for the error that ends the stream: a stream that
//! is full can still be closed with a reason the peer sees.

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tonic::Status;

/// Messages an agent's session holds before the agent is cut off (it
/// reconnects and re-registers; what it runs is reconciled then).
pub const AGENT_STREAM_CAPACITY: usize = 4096;
/// Events a framework's stream holds. Past it, updates that agents retry are
/// not forwarded (the agent sends them again), offers are not made, and
/// what only the master knows waits in the framework's backlog.
pub const FRAMEWORK_STREAM_CAPACITY: usize = 16_384;
/// Messages each lane of the core's inbox holds: past it, connection tasks wait (and
/// HTTP/2 flow control slows their peers) instead of the queue growing.
pub const CORE_INBOX_CAPACITY: usize = 16_384;

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsent<T> {
    /// The stream is full (the peer reads slower than it is sent to); the
    /// message comes back.
    Full(T),
    /// The peer has gone.
    Closed,
}

/// The sending half of a bounded peer stream.
#[derive(Debug)]
pub struct Outbound<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

impl<T> Clone for Outbound<T> {
    fn clone(&self) -> Self {
        Outbound {
            tx: self.tx.clone(),
        }
    }
}

impl<T> Outbound<T> {
    /// A stream holding at most `capacity` messages (at least 2: one
    /// message and the closing error).
    pub fn channel(capacity: usize) -> (Outbound<T>, mpsc::Receiver<Result<T, Status>>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        (Outbound { tx }, rx)
    }

    /// Queues `message` if there is room besides the closing slot.
    pub fn send(&self, message: T) -> Result<(), Unsent<T>> {
        if self.tx.is_closed() {
            return Err(Unsent::Closed);
        }
        if self.tx.capacity() <= 1 {
            return Err(Unsent::Full(message));
        }
        self.tx.try_send(Ok(message)).map_err(|e| match e {
            TrySendError::Full(Ok(message)) => Unsent::Full(message),
            TrySendError::Full(Err(_)) | TrySendError::Closed(_) => Unsent::Closed,
        })
    }

    /// Ends the stream with `status` after what is queued. Later sends are
    /// refused as if the peer had gone.
    pub fn close(&self, status: Status) {
        // The reserved slot: only fails if another close took it first.
        let _ = self.tx.try_send(Err(status));
    }

    /// Room for `n` more messages.
    pub fn has_room(&self, n: usize) -> bool {
        !self.tx.is_closed() && self.tx.capacity() > n
    }

    /// The most messages the stream holds.
    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Messages queued and not yet taken by the peer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_stream_refuses_messages_but_still_closes_with_its_reason() {
        let (out, mut rx) = Outbound::<u32>::channel(3);
        assert_eq!(out.send(1), Ok(()));
        assert_eq!(out.send(2), Ok(()));
        assert_eq!(out.send(3), Err(Unsent::Full(3)));
        assert!(!out.has_room(1));
        assert_eq!(out.queued(), 2);
        out.close(Status::resource_exhausted("too slow"));
        let mut next = || rx.try_recv().expect("queued");
        assert_eq!(next().expect("a message"), 1);
        assert_eq!(next().expect("a message"), 2);
        let end = next().expect_err("the closing error");
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert_eq!(end.message(), "too slow");
    }

    #[test]
    fn a_dropped_receiver_reads_as_closed() {
        let (out, rx) = Outbound::<u32>::channel(8);
        drop(rx);
        assert_eq!(out.send(1), Err(Unsent::Closed));
        assert!(!out.has_room(0));
    }
}
