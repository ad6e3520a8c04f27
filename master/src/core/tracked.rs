//! A map that remembers which keys changed since it was last asked: the
//! core's agents, frameworks and tasks live in these, so the read model is
//! brought up to date with what changed, not rebuilt.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};

/// The core's maps: keyed by ids and looked up on every message, they
/// spent a tenth of the core's time in SipHash; foldhash is randomly
/// seeded per process, as SipHash's keys are.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;
use std::hash::Hash;
use std::ops::Deref;

/// Tables this small are never shrunk.
const MIN_SHRINK: usize = 1024;

/// A `HashMap` whose every mutation is recorded. Reads go through `Deref`;
/// there is no `DerefMut`, so a mutation cannot bypass the record.
pub(super) struct Tracked<K, V> {
    map: FastMap<K, V>,
    changed: FastSet<K>,
}

impl<K: Hash + Eq + Clone, V> Tracked<K, V> {
    pub(super) fn new() -> Self {
        Tracked {
            map: FastMap::default(),
            changed: FastSet::default(),
        }
    }

    pub(super) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (stored, _) = self.map.get_key_value(key)?;
        if !self.changed.contains(key) {
            self.changed.insert(stored.clone());
        }
        self.map.get_mut(key)
    }

    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.insert(key.clone());
        self.map.insert(key, value)
    }

    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, value) = self.map.remove_entry(key)?;
        self.changed.insert(key);
        // A table keeps its peak size: after a burst of short tasks that
        // was most of the master's memory. Shrinking to twice what is
        // left costs a rehash, paid for by the removals that led here.
        if self.map.capacity() > MIN_SHRINK && self.map.len() * 4 < self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2);
        }
        Some(value)
    }

    /// One value, for a change no reader sees (an agent's liveness on every
    /// heartbeat and update): not recorded, so its view is not rebuilt.
    pub(super) fn get_mut_unseen<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(key)
    }

    /// Every value, for changes to what no reader sees (a framework's
    /// backlog, its offer pause): not recorded. Marking every framework
    /// changed after every burst made the read model republish them all.
    pub(super) fn values_mut_unseen(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut()
    }

    pub(super) fn has_changes(&self) -> bool {
        !self.changed.is_empty()
    }

    /// How many keys changed since the last [`Tracked::take_changed`].
    pub(super) fn changes(&self) -> usize {
        self.changed.len()
    }

    /// The keys changed since the last call (inserted, modified or removed).
    pub(super) fn take_changed(&mut self) -> FastSet<K> {
        // The next round likely changes as many: no regrowing from empty.
        let room = FastSet::with_capacity_and_hasher(self.changed.len(), Default::default());
        std::mem::replace(&mut self.changed, room)
    }
}

impl<K, V> Deref for Tracked<K, V> {
    type Target = FastMap<K, V>;
    fn deref(&self) -> &FastMap<K, V> {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_change_is_recorded_once_and_reads_are_not() {
        let mut map: Tracked<String, u32> = Tracked::new();
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        assert_eq!(map.take_changed().len(), 2);
        assert_eq!(map.get("a"), Some(&1));
        assert!(map.take_changed().is_empty(), "reads change nothing");
        if let Some(v) = map.get_mut_unseen("a") {
            *v = 10;
        }
        assert!(
            map.take_changed().is_empty(),
            "a change no reader sees is not recorded"
        );
        assert_eq!(map.get("a"), Some(&10));
        if let Some(v) = map.get_mut_unseen("a") {
            *v = 1;
        }
        *map.get_mut("a").expect("a") += 1;
        *map.get_mut("a").expect("a") += 1;
        map.remove("b");
        assert!(map.get_mut("nobody").is_none());
        let changed = map.take_changed();
        assert_eq!(
            changed,
            FastSet::from_iter(["a".to_string(), "b".to_string()])
        );
        assert_eq!(map["a"], 3);
    }

    #[test]
    fn a_table_emptied_after_a_peak_gives_its_room_back() {
        let mut map: Tracked<u32, [u8; 64]> = Tracked::new();
        for i in 0..100_000 {
            map.insert(i, [0; 64]);
        }
        let peak = map.capacity();
        for i in 0..99_900 {
            map.remove(&i);
        }
        assert_eq!(map.len(), 100);
        assert!(
            map.capacity() <= MIN_SHRINK.max(peak / 16),
            "{} slots kept for 100 entries (peak {peak})",
            map.capacity()
        );
        assert!((99_900..100_000).all(|i| map.contains_key(&i)));
    }
}
