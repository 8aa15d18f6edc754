//! The in-memory key index: key → `KeyIndex`, the key's generations
//! (mirrors etcd `mvcc/index.go`).
//!
//! The index holds revisions only, never values; values are fetched from the
//! backend by revision. It is not synchronised itself: the store keeps it in
//! one `RwLock` together with the current and compact revisions so that a
//! reader checks its revision and looks keys up under one consistent view.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use crate::key_index::{Found, KeyIndex, RevisionNotFound};
use crate::revision::Revision;

/// A key range as the MVCC layer understands it (etcd's `range_end`
/// conventions, already interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly one key.
    Single(&'a [u8]),
    /// `[start, end)`; `end == None` means no upper bound.
    Span {
        /// First key, included.
        start: &'a [u8],
        /// End key, excluded; `None` for no upper bound.
        end: Option<&'a [u8]>,
    },
    /// Nothing (an `end <= key` request).
    Empty,
}

impl<'a> KeyRange<'a> {
    /// Interprets etcd's `(key, range_end)` pair: empty `end` is a single
    /// key, `end == [0]` means every key `>= key`, and `end <= key` selects
    /// nothing.
    pub fn new(key: &'a [u8], end: &'a [u8]) -> Self {
        if end.is_empty() {
            KeyRange::Single(key)
        } else if end == [0] {
            KeyRange::Span {
                start: key,
                end: None,
            }
        } else if end <= key {
            KeyRange::Empty
        } else {
            KeyRange::Span {
                start: key,
                end: Some(end),
            }
        }
    }
}

/// Key → generations of revisions, ordered by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TreeIndex {
    tree: BTreeMap<Vec<u8>, KeyIndex>,
    /// Keys alive at the newest revision (`etcd_debugging_mvcc_keys_total`),
    /// kept as keys are put, deleted and rolled back, so a scrape need not
    /// walk the tree.
    live: usize,
}

impl TreeIndex {
    /// Records a put of `key` at `rev` (the write path uses
    /// [`TreeIndex::get_and_put`]).
    #[cfg(test)]
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        self.get_and_put(key, rev);
    }

    /// Records a put of `key` at `rev` and returns what [`TreeIndex::get`]
    /// would have said at `rev.main` just before: one tree lookup instead
    /// of two on the write path.
    pub fn get_and_put(&mut self, key: &[u8], rev: Revision) -> Option<Found> {
        match self.tree.get_mut(key) {
            Some(ki) => {
                let prev = ki.get(rev.main);
                ki.put(rev);
                if prev.is_none() {
                    self.live += 1;
                }
                prev
            }
            None => {
                let mut ki = KeyIndex::default();
                ki.put(rev);
                self.tree.insert(key.to_vec(), ki);
                self.live += 1;
                None
            }
        }
    }

    /// Records a delete of `key` at `rev`.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Result<(), RevisionNotFound> {
        self.tree
            .get_mut(key)
            .ok_or(RevisionNotFound)?
            .tombstone(rev)?;
        self.live = self.live.saturating_sub(1);
        Ok(())
    }

    /// Inserts a key rebuilt by the restore scan.
    pub fn insert(&mut self, key: Vec<u8>, ki: KeyIndex) {
        self.tree.insert(key, ki);
    }

    /// The key's index entry, for the restore scan.
    pub fn key_index_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.tree.get_mut(key)
    }

    /// The state of `key` at `at_rev`.
    #[cfg(test)]
    pub fn get(&self, key: &[u8], at_rev: i64) -> Option<Found> {
        self.tree.get(key)?.get(at_rev)
    }

    /// The keys live at `at_rev` in `range`, ascending, with what
    /// [`KeyIndex::get`] says about each: at most `limit` of them (0 means
    /// all), plus the number of live keys in the whole range.
    pub fn range(
        &self,
        range: KeyRange<'_>,
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Vec<u8>, Found)>, usize) {
        let mut out = Vec::new();
        let mut count = 0;
        self.visit(range, |k, ki| {
            if let Some(f) = ki.get(at_rev) {
                count += 1;
                if limit == 0 || out.len() < limit {
                    out.push((k.to_vec(), f));
                }
            }
        });
        (out, count)
    }

    /// Number of keys live at `at_rev` in `range`, without collecting them.
    pub fn count(&self, range: KeyRange<'_>, at_rev: i64) -> usize {
        let mut n = 0;
        self.visit(range, |_, ki| {
            if ki.get(at_rev).is_some() {
                n += 1;
            }
        });
        n
    }

    fn visit(&self, range: KeyRange<'_>, mut f: impl FnMut(&[u8], &KeyIndex)) {
        match range {
            KeyRange::Empty => {}
            KeyRange::Single(k) => {
                if let Some(ki) = self.tree.get(k) {
                    f(k, ki);
                }
            }
            KeyRange::Span { start, end } => {
                let upper = match end {
                    Some(e) => Bound::Excluded(e),
                    None => Bound::Unbounded,
                };
                for (k, ki) in self.tree.range::<[u8], _>((Bound::Included(start), upper)) {
                    f(k, ki);
                }
            }
        }
    }

    /// Compacts every key at `rev`, removing keys left empty, and returns
    /// the revisions `<= rev` that must stay in the backend (in one walk:
    /// the store walks in chunks, [`TreeIndex::compact_chunk`]).
    #[cfg(test)]
    pub fn compact(&mut self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        self.tree.retain(|_, ki| {
            ki.compact(rev, &mut available);
            !ki.is_empty()
        });
        available
    }

    /// [`TreeIndex::compact`] for at most `limit` keys from `from` on
    /// (inclusive), adding what stays to `keep`; returns the key to go on
    /// from, or `None` when the end was reached. Compacting a key twice at
    /// the same revision changes nothing, so a walk in chunks with writes
    /// in between (all above `rev`) ends as one walk would.
    pub fn compact_chunk(
        &mut self,
        rev: i64,
        from: &[u8],
        limit: usize,
        keep: &mut HashSet<Revision>,
    ) -> Option<Vec<u8>> {
        let mut keys = self
            .tree
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .map(|(k, _)| k.clone())
            .take(limit + 1);
        let chunk: Vec<Vec<u8>> = keys.by_ref().take(limit).collect();
        let next = keys.next();
        for k in chunk {
            if let Some(ki) = self.tree.get_mut(k.as_slice()) {
                ki.compact(rev, keep);
                if ki.is_empty() {
                    self.tree.remove(k.as_slice());
                }
            }
        }
        next
    }

    /// What [`TreeIndex::compact`] would keep at `rev`, read-only.
    pub fn keep(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        for ki in self.tree.values() {
            ki.keep(rev, &mut available);
        }
        available
    }

    /// Undoes all changes made at main revision `main` to `keys`.
    pub fn rollback(&mut self, keys: &[Vec<u8>], main: i64) {
        for k in keys {
            if let Some(ki) = self.tree.get_mut(k.as_slice()) {
                let was_live = ki.get(i64::MAX).is_some();
                let gone = ki.rollback(main);
                let live = !gone && ki.get(i64::MAX).is_some();
                if gone {
                    self.tree.remove(k.as_slice());
                }
                match (was_live, live) {
                    (true, false) => self.live = self.live.saturating_sub(1),
                    (false, true) => self.live += 1,
                    _ => {}
                }
            }
        }
    }

    /// Counts the live keys afresh (after the index was built by
    /// [`TreeIndex::insert`] and [`TreeIndex::key_index_mut`]).
    pub fn recount_live(&mut self) {
        self.live = self
            .tree
            .values()
            .filter(|ki| ki.get(i64::MAX).is_some())
            .count();
    }

    /// Keys alive at the newest revision.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Number of keys with any history in the index.
    pub fn len(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    fn keys((v, n): (Vec<(Vec<u8>, Found)>, usize)) -> Vec<Vec<u8>> {
        assert!(v.len() <= n);
        v.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn key_range_rules() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a"));
        assert_eq!(
            KeyRange::new(b"a", b"\0"),
            KeyRange::Span {
                start: b"a",
                end: None
            }
        );
        assert_eq!(KeyRange::new(b"b", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"b", b"b"), KeyRange::Empty);
        assert_eq!(
            KeyRange::new(b"a", b"b"),
            KeyRange::Span {
                start: b"a",
                end: Some(b"b")
            }
        );
    }

    #[test]
    fn get_and_put_returns_the_state_before_the_put() {
        let mut ti = TreeIndex::default();
        assert_eq!(ti.get_and_put(b"a", r(2)), None);
        let prev = ti.get_and_put(b"a", r(3)).unwrap();
        assert_eq!((prev.modified, prev.version), (r(2), 1));
        assert_eq!(ti.get(b"a", 3).unwrap().version, 2);
        ti.tombstone(b"a", r(4)).unwrap();
        assert_eq!(ti.get_and_put(b"a", r(5)), None);
        assert_eq!(ti.get(b"a", 5).unwrap().created, r(5));
    }

    #[test]
    fn range_at_revisions() {
        let mut ti = TreeIndex::default();
        ti.put(b"a", r(2));
        ti.put(b"b", r(3));
        ti.put(b"c", r(4));
        ti.tombstone(b"b", r(5)).unwrap();
        let all = KeyRange::new(b"\0", b"\0");
        assert_eq!(keys(ti.range(all, 1, 0)), Vec::<Vec<u8>>::new());
        assert_eq!(
            keys(ti.range(all, 3, 0)),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            keys(ti.range(all, 5, 0)),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
        assert_eq!(ti.count(all, 4), 3);
        let (limited, n) = ti.range(all, 4, 2);
        assert_eq!((limited.len(), n), (2, 3));
        assert_eq!(
            keys(ti.range(KeyRange::new(b"b", b"c"), 4, 0)),
            vec![b"b".to_vec()]
        );
        assert!(ti.tombstone(b"b", r(6)).is_err());
        assert!(ti.tombstone(b"zz", r(6)).is_err());
    }

    #[test]
    fn compact_removes_dead_keys() {
        let mut ti = TreeIndex::default();
        ti.put(b"a", r(2));
        ti.put(b"b", r(3));
        ti.tombstone(b"a", r(4)).unwrap();
        ti.put(b"b", r(5));
        let kept = ti.keep(4);
        let avail = ti.compact(4);
        assert_eq!(kept, avail);
        assert_eq!(avail, [r(3)].into_iter().collect());
        assert_eq!(ti.len(), 1);
        assert!(ti.get(b"a", 4).is_none());
        assert_eq!(ti.get(b"b", 4).unwrap().modified, r(3));
    }

    proptest::proptest! {
        /// Compacting in chunks of any size, with puts above the
        /// compaction revision between the chunks, keeps what one walk
        /// keeps and leaves the same index.
        #[test]
        fn chunked_compaction_matches_one_walk(
            ops in proptest::collection::vec((0u8..12, proptest::bool::ANY), 1..80),
            at in 1usize..80,
            chunk in 1usize..6,
        ) {
            let mut whole = TreeIndex::default();
            for (i, (k, delete)) in ops.iter().enumerate() {
                let key = [b'k', *k];
                let rev = r(i as i64 + 2);
                if *delete {
                    let _ = whole.tombstone(&key, rev);
                } else {
                    whole.put(&key, rev);
                }
            }
            let rev = (at.min(ops.len()) + 1) as i64;
            let mut chunked = whole.clone();
            let kept = whole.compact(rev);
            let mut keep = HashSet::new();
            let mut from = Some(Vec::new());
            let mut next_rev = ops.len() as i64 + 2;
            while let Some(at) = from.take() {
                from = chunked.compact_chunk(rev, &at, chunk, &mut keep);
                // A write between chunks, as the applier makes them.
                whole.put(b"kz", r(next_rev));
                chunked.put(b"kz", r(next_rev));
                next_rev += 1;
            }
            proptest::prop_assert_eq!(kept, keep);
            proptest::prop_assert_eq!(whole, chunked);
        }
    }
}
