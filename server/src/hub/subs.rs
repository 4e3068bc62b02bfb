//! The subscribers of one channel: a contiguous list that fan-out walks in
//! one pass, and an index by connection id, so that finding or removing one
//! subscriber costs O(1) instead of a scan of the list.
//!
//! Removal moves the last subscriber into the hole (`swap_remove`): the order
//! of subscribers is not kept, and nothing depends on it (each subscriber's
//! own deliveries stay in order). Without the index, 10,000 clients of one
//! channel leaving together cost 50 million comparisons, each through a
//! pointer to another connection (results/benches.md, `hub/leave_10000`).
//!
//! No dependency on the rest of the server: the `hub` benches build this file
//! on its own (benches/benches/hub.rs).

use std::collections::HashMap;

/// A subscriber known by the id of its connection.
pub trait Keyed {
    /// The id of the subscriber's connection, unique in its channel.
    fn key(&self) -> u64;
}

/// The subscribers of one channel, at most one per connection.
pub struct Subs<T> {
    /// Fan-out's scan: contiguous, as it was when this was a plain `Vec`.
    list: Vec<T>,
    /// Connection id -> position in `list`.
    at: HashMap<u64, usize>,
}

impl<T> Default for Subs<T> {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            at: HashMap::new(),
        }
    }
}

impl<T: Keyed> Subs<T> {
    /// Adds `sub`; one already there for the same connection is replaced.
    pub fn insert(&mut self, sub: T) {
        match self.at.get(&sub.key()) {
            Some(&i) => self.list[i] = sub,
            None => {
                self.at.insert(sub.key(), self.list.len());
                self.list.push(sub);
            }
        }
    }

    /// The subscriber of connection `key`.
    pub fn get(&self, key: u64) -> Option<&T> {
        self.at.get(&key).map(|&i| &self.list[i])
    }

    /// The subscriber of connection `key`, to change it.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        self.at.get(&key).map(|&i| &mut self.list[i])
    }

    /// Removes and returns the subscriber of connection `key`: O(1), the last
    /// subscriber takes its place.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let i = self.at.remove(&key)?;
        let sub = self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.at.insert(moved.key(), i);
        }
        Some(sub)
    }
}

impl<T> Subs<T> {
    /// Whether no subscriber is left.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every subscriber, for fan-out: one contiguous slice.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.list
    }

    /// Takes every subscriber out.
    pub fn into_vec(self) -> Vec<T> {
        self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct S(u64, &'static str);

    impl Keyed for S {
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn removal_keeps_every_other_subscriber_findable() {
        let mut subs = Subs::default();
        for k in 0..100 {
            subs.insert(S(k, "a"));
        }
        // From the front, the middle and the back, and one twice.
        for k in [0, 50, 99, 7] {
            assert_eq!(subs.remove(k).map(|s| s.0), Some(k));
        }
        assert_eq!(subs.remove(50), None);
        for k in 0..100 {
            let gone = [0, 50, 99, 7].contains(&k);
            assert_eq!(subs.get(k).is_none(), gone, "{k}");
            if !gone {
                assert_eq!(subs.get(k).map(|s| s.0), Some(k));
            }
        }
        assert_eq!(subs.as_mut_slice().len(), 96);
        for k in 0..100 {
            subs.remove(k);
        }
        assert!(subs.is_empty());
    }

    #[test]
    fn a_second_insert_for_one_connection_replaces_the_first() {
        let mut subs = Subs::default();
        subs.insert(S(1, "a"));
        subs.insert(S(2, "b"));
        subs.insert(S(1, "c"));
        assert_eq!(subs.as_mut_slice().len(), 2);
        assert_eq!(subs.get(1), Some(&S(1, "c")));
        subs.get_mut(2).unwrap().1 = "d";
        assert_eq!(subs.remove(2), Some(S(2, "d")));
        assert_eq!(subs.into_vec(), vec![S(1, "c")]);
    }
}
