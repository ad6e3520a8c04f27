//! Offer interest: what a framework wants placed (its demand, which the
//! master's `demand` offer policy sizes offers to), revive offers while
//! there is any, suppress them when there is none, and tell the master only
//! when that changes — except that new work always revives, which also
//! lifts the filters of earlier declines.

use std::sync::Mutex;

use crate::{Demand, Driver, SdkError};

/// What a framework last told the master.
#[derive(Debug, Default)]
pub struct OfferInterest {
    // A std mutex: held only to read or set, never across an `.await`.
    last: Mutex<Option<bool>>,
    demand: Mutex<Option<Demand>>,
}

impl OfferInterest {
    pub fn new() -> OfferInterest {
        OfferInterest::default()
    }

    /// Tells the master `demand` if it changed, then revives when there is
    /// any and suppresses when there is none; `new_work` revives even if
    /// offers were never suppressed.
    pub async fn sync(&self, driver: &Driver, demand: Demand, new_work: bool) {
        let want = !demand.is_empty();
        let told = self
            .demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if told.as_ref() != Some(&demand) {
            // Before the revive, so the pass it starts is sized to it.
            match driver.set_demand(Some(&demand)).await {
                Ok(()) => *self.demand.lock().unwrap_or_else(|p| p.into_inner()) = Some(demand),
                Err(SdkError::NotSubscribed) => {}
                Err(e) => tracing::warn!("telling the master our demand: {e}"),
            }
        }
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
        *self.demand.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
