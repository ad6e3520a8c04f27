//! The group-commit writer frameworks share: whatever changed since the
//! last commit goes to the store in one transaction, off the async threads;
//! waiters learn which version is on disk; a failed commit keeps its changes
//! for the next try, so nothing a waiter was promised is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// What the writer needs from its owner (an engine and its store).
pub trait Journal: Send + Sync + 'static {
    type Changes: Send + 'static;
    type Error: std::fmt::Display + Send + 'static;
    /// Everything changed since the last call, with the version it reaches.
    fn take_changes(&self) -> Option<(u64, Self::Changes)>;
    /// A commit failed: these changes go into the next one.
    fn requeue(&self, changes: Self::Changes);
    /// Writes durably; blocking (runs on a blocking thread).
    fn commit(&self, changes: &Self::Changes) -> Result<(), Self::Error>;
    /// Everything up to `version` is on disk; the commit took `took`.
    fn committed(&self, version: u64, took: Duration);
    /// Notified when there is something to write.
    fn wake(&self) -> &Notify;
}

/// Commits until `stop` turns true, then writes what is left and returns.
/// Changes made by the clock (no waiter) are picked up every half second.
pub async fn group_commits<J: Journal>(journal: Arc<J>, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = *stop.borrow();
        if let Some((version, changes)) = journal.take_changes() {
            let writer = journal.clone();
            let started = Instant::now();
            let written = tokio::task::spawn_blocking(move || {
                let result = writer.commit(&changes);
                (result, changes)
            })
            .await;
            match written {
                Ok((Ok(()), _)) => journal.committed(version, started.elapsed()),
                Ok((Err(e), changes)) => {
                    // Not marked committed: waiters hold their launches and
                    // acknowledgements until the store works again.
                    if stopping {
                        // Stopping with a store that takes nothing (gone,
                        // or this process no longer leads): nothing more
                        // can be saved here.
                        tracing::error!("{e}; stopping with changes unsaved");
                        return;
                    }
                    tracing::error!("{e}; retrying");
                    journal.requeue(changes);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => tracing::error!("store writer: {e}"),
            }
            continue;
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = journal.wake().notified() => {}
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
