//! The stream reader's XREAD arguments, kept from one read to the next.
//!
//! Every read names every live stream of the core, with its cursor. Building
//! the keys (`key_prefix + channel`, one allocation each) and the ids (one
//! `String` each, through `fmt`) afresh for every read cost 2.2 times the
//! encoding itself with 256 streams (results/benches.md, `xread_args`), and a
//! core whose many streams are quiet reads once per entry. The keys change
//! only when the set of streams does; the ids go into one reused buffer.
//!
//! No dependency on the rest of the server: the `xread_args` benches build
//! this file on its own (benches/benches/hot_path.rs).

use std::rc::Rc;

use feedgate_core::StreamId;

/// The Redis keys of the live streams, rebuilt only when the streams change.
#[derive(Default)]
pub struct Keys {
    names: Vec<Rc<str>>,
    keys: Vec<Vec<u8>>,
}

impl Keys {
    /// The key of each of `names`, in their order: the last read's keys when
    /// the names are the same, else built with `key_of`.
    pub fn of<'n>(
        &mut self,
        names: impl ExactSizeIterator<Item = &'n Rc<str>> + Clone,
        key_of: impl Fn(&str) -> Vec<u8>,
    ) -> &[Vec<u8>] {
        // One comparison of short names each (the same `Rc` almost always,
        // which `==` checks first), against an allocation each.
        let same = self.names.len() == names.len() && self.names.iter().zip(names.clone()).all(|(a, b)| a == b);
        if !same {
            self.names.clear();
            self.names.extend(names.cloned());
            self.keys.clear();
            self.keys.extend(self.names.iter().map(|name| key_of(name)));
        }
        &self.keys
    }
}

/// Stream ids as text, in one buffer reused from read to read.
#[derive(Default)]
pub struct Ids {
    text: Vec<u8>,
    ends: Vec<usize>,
}

impl Ids {
    /// Replaces the ids held with `ids`.
    pub fn fill(&mut self, ids: impl Iterator<Item = StreamId>) {
        self.text.clear();
        self.ends.clear();
        for id in ids {
            id.write_to(&mut self.text);
            self.ends.push(self.text.len());
        }
    }

    /// Each id held, as text, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.text[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(name: &str) -> Vec<u8> {
        [b"fg:", name.as_bytes()].concat()
    }

    #[test]
    fn keys_follow_the_streams() {
        let mut keys = Keys::default();
        let a: Vec<Rc<str>> = vec![Rc::from("a"), Rc::from("b")];
        assert_eq!(keys.of(a.iter(), key_of), [b"fg:a".to_vec(), b"fg:b".to_vec()]);
        // The same names, as other `Rc`s: the same keys.
        let again: Vec<Rc<str>> = vec![Rc::from("a"), Rc::from("b")];
        assert_eq!(keys.of(again.iter(), |_| unreachable!("kept")).len(), 2);
        let fewer: Vec<Rc<str>> = vec![Rc::from("b")];
        assert_eq!(keys.of(fewer.iter(), key_of), [b"fg:b".to_vec()]);
        let other: Vec<Rc<str>> = vec![Rc::from("c")];
        assert_eq!(keys.of(other.iter(), key_of), [b"fg:c".to_vec()]);
        assert!(keys.of([].iter(), key_of).is_empty());
    }

    #[test]
    fn ids_are_written_as_redis_reads_them() {
        let mut ids = Ids::default();
        ids.fill(
            [
                StreamId::new(1732700000000, 0),
                StreamId::ZERO,
                StreamId::new(5, u64::MAX),
            ]
            .into_iter(),
        );
        let text: Vec<&[u8]> = ids.iter().collect();
        assert_eq!(text, [&b"1732700000000-0"[..], b"0-0", b"5-18446744073709551615"]);
        ids.fill(std::iter::empty());
        assert_eq!(ids.iter().count(), 0);
    }
}
