//! The core's end of a peer's stream (an agent's session, a framework's
//! events): bounded, so a peer that stops reading costs the master a fixed
//! amount of memory, not whatever the cluster sends it meanwhile.
//!
//! The last slot is kept for the error that ends the stream: a stream that
//! is full can still be closed with a reason the peer sees.
//!
//! It also carries when the peer last spoke ([`Heard`]), as the peer's
//! connection saw it: a core behind on its queue must not take an agent
//! whose messages wait in that queue, or wait unread behind one, for a
//! silent one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
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

/// When a peer last spoke on its stream, stamped by its connection as each
/// message arrives, before the message waits for the core; and whether the
/// core admitted the peer as an agent on it.
#[derive(Clone, Debug)]
pub struct Heard(Arc<HeardAt>);

#[derive(Debug)]
struct HeardAt {
    opened: Instant,
    /// Milliseconds from `opened` to the last message.
    last_ms: AtomicU64,
    /// The connection holds a message the core's full queue has not yet
    /// taken, and reads no more of the peer's meanwhile.
    holding: AtomicBool,
    /// The core registered an agent on this session: its connection may
    /// answer its heartbeats.
    admitted: AtomicBool,
}

impl Heard {
    fn new() -> Self {
        Heard(Arc::new(HeardAt {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            holding: AtomicBool::new(false),
            admitted: AtomicBool::new(false),
        }))
    }

    /// The peer spoke just now.
    pub fn now(&self) {
        let ms = self.0.opened.elapsed().as_millis();
        self.0
            .last_ms
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The connection stops reading until the returned guard drops (it
    /// waits for the core to take a message). The peer's later messages
    /// wait unread meanwhile, so that time is not its silence: it counts
    /// as heard throughout, and again when reading resumes. (A
    /// registration storm kept agents' sessions waiting on a full queue
    /// longer than the agent timeout while they heartbeated on time.)
    pub fn hold(&self) -> Holding<'_> {
        self.0.holding.store(true, Ordering::Relaxed);
        Holding(self)
    }

    /// The core registered an agent on this session (before it tells the
    /// agent so).
    pub fn admit(&self) {
        self.0.admitted.store(true, Ordering::Release);
    }

    /// The core no longer counts this session as its agent's.
    pub fn revoke(&self) {
        self.0.admitted.store(false, Ordering::Release);
    }

    /// Whether the core registered an agent on this session.
    pub fn is_admitted(&self) -> bool {
        self.0.admitted.load(Ordering::Acquire)
    }

    /// When the peer last spoke (the stream's opening if it has not yet);
    /// now while the connection is not reading.
    pub fn last(&self) -> Instant {
        if self.0.holding.load(Ordering::Relaxed) {
            return Instant::now();
        }
        self.0.opened + std::time::Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed))
    }
}

/// While alive, the connection is not reading its peer ([`Heard::hold`]).
#[must_use = "the connection counts as not reading only while this lives"]
pub struct Holding<'a>(&'a Heard);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        // Stamped before the flag clears: a look in between sees the peer
        // heard, not silent since before the wait.
        self.0.now();
        self.0.0.holding.store(false, Ordering::Relaxed);
    }
}

/// The sending half of a bounded peer stream.
#[derive(Debug)]
pub struct Outbound<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    heard: Heard,
}

impl<T> Clone for Outbound<T> {
    fn clone(&self) -> Self {
        Outbound {
            tx: self.tx.clone(),
            heard: self.heard.clone(),
        }
    }
}

impl<T> Outbound<T> {
    /// A stream holding at most `capacity` messages (at least 2: one
    /// message and the closing error).
    pub fn channel(capacity: usize) -> (Outbound<T>, mpsc::Receiver<Result<T, Status>>) {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let heard = Heard::new();
        (Outbound { tx, heard }, rx)
    }

    /// When the peer last spoke on this stream.
    pub fn heard(&self) -> &Heard {
        &self.heard
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

    /// Resolves once the stream has room for `n` more messages (at most
    /// all but its closing slot), or the peer has gone. Holds nothing: what
    /// it waited for is free for the sender.
    pub fn room(&self, n: usize) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        T: Send + 'static,
    {
        let tx = self.tx.clone();
        let n = n.clamp(1, tx.max_capacity().saturating_sub(1).max(1));
        async move {
            let _ = tx.reserve_many(n).await;
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_stream_remembers_when_its_peer_last_spoke() {
        let (out, _rx) = Outbound::<u32>::channel(8);
        let opened = Instant::now();
        assert_eq!(out.heard().last(), opened, "not yet: since its opening");
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        out.clone().heard().now();
        tokio::time::advance(std::time::Duration::from_secs(4)).await;
        assert_eq!(
            out.heard().last(),
            opened + std::time::Duration::from_secs(3),
            "its clones share it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_not_silent_while_its_connection_is_not_reading() {
        let (out, _rx) = Outbound::<u32>::channel(8);
        let heard = out.heard();
        heard.now();
        let spoke = Instant::now();
        let holding = heard.hold();
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_eq!(heard.last(), Instant::now(), "heard throughout the wait");
        drop(holding);
        let resumed = Instant::now();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(heard.last(), resumed, "silent from when reading resumed");
        assert!(heard.last() > spoke);
    }

    #[test]
    fn a_dropped_receiver_reads_as_closed() {
        let (out, rx) = Outbound::<u32>::channel(8);
        drop(rx);
        assert_eq!(out.send(1), Err(Unsent::Closed));
        assert!(!out.has_room(0));
    }
}
