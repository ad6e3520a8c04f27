//! Outstanding offers and how they end: the bookkeeping between an
//! allocation pass and the allocator getting its resources back. Pure, like
//! the allocator — the master's core and the simulator both keep their
//! offers here, so an offer made, accepted, declined, rescinded or timed out
//! charges the allocator the same way in both.

use std::collections::{BTreeMap, BTreeSet};

use agora_proto::Resources;

use crate::allocator::{Allocation, Allocator, Millis};

/// One outstanding offer, with what its keeper wants to remember (`tag`:
/// the simulator's framework and agent numbers; nothing for the master).
#[derive(Clone, Debug, PartialEq)]
pub struct OpenOffer<T = ()> {
    pub framework: String,
    pub agent: String,
    pub resources: Resources,
    /// When it was made, on the caller's clock.
    pub made_at: Millis,
    pub tag: T,
}

/// Outstanding offers by id, in id order (so the simulator's runs repeat).
#[derive(Debug)]
pub struct OfferBook<K: Ord + Clone, T = ()> {
    offers: BTreeMap<K, OpenOffer<T>>,
    /// Ids opened or ended since last asked, when the keeper follows them.
    changed: Option<BTreeSet<K>>,
}

impl<K: Ord + Clone, T> Default for OfferBook<K, T> {
    fn default() -> Self {
        OfferBook {
            offers: BTreeMap::new(),
            changed: None,
        }
    }
}

impl<K: Ord + Clone, T> OfferBook<K, T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A book that records which offers opened or ended, for
    /// [`OfferBook::take_changed`].
    pub fn tracking_changes() -> Self {
        OfferBook {
            offers: BTreeMap::new(),
            changed: Some(BTreeSet::new()),
        }
    }

    /// Whether offers opened or ended since the last `take_changed`.
    pub fn has_changes(&self) -> bool {
        self.changed.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Offers opened or ended since the last call (none unless tracking).
    pub fn take_changed(&mut self) -> BTreeSet<K> {
        self.changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, id: &K) {
        if let Some(changed) = &mut self.changed {
            changed.insert(id.clone());
        }
    }

    /// Records what a pass allocated as an outstanding offer `id`.
    pub fn open(&mut self, id: K, allocation: Allocation, now: Millis, tag: T) {
        self.record(&id);
        self.offers.insert(
            id,
            OpenOffer {
                framework: allocation.framework,
                agent: allocation.agent,
                resources: allocation.resources,
                made_at: now,
                tag,
            },
        );
    }

    pub fn get(&self, id: &K) -> Option<&OpenOffer<T>> {
        self.offers.get(id)
    }

    pub fn len(&self) -> usize {
        self.offers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &OpenOffer<T>> {
        self.offers.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &OpenOffer<T>)> {
        self.offers.iter()
    }

    /// Ends an offer that is being used: its resources stay allocated to
    /// the framework, and the caller returns what the launch left over
    /// (with [`Allocator::recover`]).
    pub fn take(&mut self, id: &K, allocator: &mut dyn Allocator) -> Option<OpenOffer<T>> {
        let offer = self.offers.remove(id)?;
        self.record(id);
        allocator.offer_ended(&offer.framework, &offer.agent, &offer.resources);
        Some(offer)
    }

    /// Ends an offer unused (declined, rescinded, timed out): everything
    /// goes back to the allocator, refused by the framework until
    /// `refuse_until` if given.
    pub fn give_back(
        &mut self,
        id: &K,
        refuse_until: Option<Millis>,
        allocator: &mut dyn Allocator,
    ) -> Option<OpenOffer<T>> {
        let offer = self.take(id, allocator)?;
        allocator.recover(
            &offer.framework,
            &offer.agent,
            &offer.resources,
            refuse_until,
        );
        Some(offer)
    }

    /// Drops a framework's offers without telling the allocator (which is
    /// removing the framework with everything it held).
    pub fn forget_framework(&mut self, framework: &str) {
        let changed = &mut self.changed;
        self.offers.retain(|id, o| {
            let keep = o.framework != framework;
            if !keep && let Some(changed) = changed.as_mut() {
                changed.insert(id.clone());
            }
            keep
        });
    }

    /// The ids of the offers that match `pred`.
    pub fn ids_where(&self, pred: impl Fn(&OpenOffer<T>) -> bool) -> Vec<K> {
        self.offers
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Offers outstanding for longer than `timeout` at `now`.
    pub fn expired(&self, now: Millis, timeout: Millis) -> Vec<K> {
        self.ids_where(|o| now.saturating_sub(o.made_at) > timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::DrfAllocator;

    fn agent() -> Resources {
        Resources::parse("cpus:4;mem:4096").expect("valid")
    }

    #[test]
    fn offers_end_by_use_or_give_back_and_the_allocator_follows() {
        let mut alloc = DrfAllocator::new();
        alloc.add_agent("a0", agent(), &[]);
        alloc.add_agent("a1", agent(), &[]);
        alloc.add_framework("f", "*", true);
        let mut book = OfferBook::new();
        for (i, a) in alloc.allocate(0).into_iter().enumerate() {
            book.open(i as u64, a, 0, ());
        }
        assert_eq!(book.len(), 2);
        assert!(alloc.allocate(1).is_empty(), "both are on offer");
        // One is used in part: the rest comes back through recover.
        let used = Resources::parse("cpus:1;mem:1024").expect("valid");
        let taken = book.take(&0, &mut alloc).expect("outstanding");
        alloc.recover("f", &taken.agent, &taken.resources.minus(&used), None);
        // The other is declined with a filter: not offered again until then.
        let declined = book
            .give_back(&1, Some(10), &mut alloc)
            .expect("outstanding");
        assert!(book.is_empty());
        assert!(book.take(&1, &mut alloc).is_none(), "ended once");
        let again = alloc.allocate(2);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].agent, taken.agent);
        assert_eq!(again[0].resources.scalar("cpus"), 3.0);
        assert!(again.iter().all(|a| a.agent != declined.agent));
        assert_eq!(alloc.allocate(11).len(), 1, "the filter expired");
    }

    #[test]
    fn expiry_and_selection_follow_the_callers_clock() {
        let mut book = OfferBook::new();
        let allocation = |agent: &str| Allocation {
            framework: "f".into(),
            agent: agent.into(),
            resources: agent_resources(),
        };
        fn agent_resources() -> Resources {
            Resources::parse("cpus:1").expect("valid")
        }
        book.open("x".to_string(), allocation("a0"), 0, ());
        book.open("y".to_string(), allocation("a1"), 500, ());
        assert_eq!(book.expired(1_000, 1_000), Vec::<String>::new());
        assert_eq!(book.expired(1_001, 1_000), ["x"]);
        assert_eq!(book.ids_where(|o| o.agent == "a1"), ["y"]);
        book.forget_framework("f");
        assert!(book.is_empty());
    }
}
