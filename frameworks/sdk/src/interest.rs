//! Offer interest: revive offers while there is work, suppress them when
//! there is none, and tell the master only when that changes — except that
//! new work always revives, which also lifts the filters of earlier
//! declines.

use std::sync::Mutex;

use crate::{Driver, SdkError};

/// What a framework last told the master about wanting offers.
#[derive(Debug, Default)]
pub struct OfferInterest {
    // A std mutex: held only to read or set, never across an `.await`.
    last: Mutex<Option<bool>>,
}

impl OfferInterest {
    pub fn new() -> OfferInterest {
        OfferInterest::default()
    }

    /// Revives when `want`, suppresses when not; `new_work` revives even
    /// if offers were never suppressed.
    pub async fn sync(&self, driver: &Driver, want: bool, new_work: bool) {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last == Some(want) && !(want && new_work) {
            return;
        }
        let result = if want {
            driver.revive().await
        } else {
            driver.suppress().await
        };
        match result {
            Ok(()) => *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(want),
            // Before the first subscription: the next `subscribed` syncs.
            Err(SdkError::NotSubscribed) => {}
            Err(e) => tracing::warn!(want, "changing offer interest: {e}"),
        }
    }

    /// The master may no longer know what was said (a new subscription):
    /// the next [`OfferInterest::sync`] tells it again.
    pub fn forget(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
