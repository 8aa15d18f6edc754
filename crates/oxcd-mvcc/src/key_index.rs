//! The revision history of one key (mirrors etcd `mvcc/key_index.go`).
//!
//! A key's life is a list of *generations*. A generation starts with the put
//! that creates the key and ends with the tombstone that deletes it; the
//! next put starts a new generation. The last generation is the live one
//! (or empty, right after a delete). Worked example, key `foo`:
//!
//! ```text
//! put@1.0 put@2.0 tombstone@3.0 put@4.0 tombstone@5.0
//!   generations: {1.0, 2.0, 3.0(t)}  {4.0, 5.0(t)}  {}
//! ```
//!
//! `compact(n)` drops every revision that no read at `>= n` can need: the
//! generations that ended (tombstone) at or before `n`, and inside the first
//! surviving generation all revisions older than its newest revision `<= n`.
//!
//! ```text
//! compact(2): {2.0, 3.0(t)} {4.0, 5.0(t)} {}
//! compact(4): {4.0, 5.0(t)} {}
//! compact(5): {}                        <- empty: the key leaves the index
//! ```
//!
//! `keep(n)` reports the same surviving set without modifying anything; it
//! is what `hash_kv` uses to hash exactly the data a compaction would keep.

use std::collections::HashSet;

use crate::revision::Revision;

/// One life of a key, from creation to deletion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Generation {
    /// Number of puts in this generation (the key's `version` after the
    /// newest put). Revisions removed by compaction still count.
    pub ver: i64,
    /// Revision of the put that created the generation.
    pub created: Revision,
    /// Ascending. When the generation has ended, the last one is the
    /// tombstone.
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the newest revision with `main <= at_rev`.
    fn newest_at_or_before(&self, at_rev: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at_rev)
    }
}

/// Why a [`KeyIndex`] operation could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RevisionNotFound;

/// What [`KeyIndex::get`] finds: the revision holding the key's value at the
/// asked revision, its generation's creation and the version at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

/// All generations of one key.
///
/// Invariant: never has zero generations; revisions increase strictly
/// across all generations; only the last generation can lack a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// The newest revision recorded (put or tombstone).
    pub modified: Revision,
    pub generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`, starting a generation if the key is absent.
    pub fn put(&mut self, rev: Revision) {
        debug_assert!(rev > self.modified, "put {rev} not after {}", self.modified);
        let g = self.last_mut();
        if g.revs.is_empty() {
            // Most keys hold one or two revisions between compactions;
            // Vec's default first allocation (four) would be mostly empty.
            g.revs.reserve_exact(1);
            g.created = rev;
        }
        g.revs.push(rev);
        // Saturating: a version read back from a damaged backend may
        // start anywhere (it never gets near the limit otherwise).
        g.ver = g.ver.saturating_add(1);
        self.modified = rev;
    }

    /// Rebuilds a key found by a backend scan whose oldest surviving
    /// revision is `modified` (earlier ones may have been compacted away),
    /// using the `create_revision` and `version` stored with it.
    pub fn restore(created: Revision, modified: Revision, ver: i64) -> Self {
        KeyIndex {
            modified,
            generations: vec![Generation {
                ver,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// Records a delete at `rev`: the tombstone ends the live generation.
    ///
    /// # Errors
    /// `RevisionNotFound` when the key is not live.
    pub fn tombstone(&mut self, rev: Revision) -> Result<(), RevisionNotFound> {
        if self.last_mut().is_empty() {
            return Err(RevisionNotFound);
        }
        self.put(rev);
        self.generations.reserve_exact(1);
        self.generations.push(Generation::default());
        Ok(())
    }

    /// The key's state as of `at_rev`, or `None` when it did not exist
    /// then (never created yet, deleted, or compacted away).
    pub fn get(&self, at_rev: i64) -> Option<Found> {
        let g = self.find_generation(at_rev)?;
        let n = g.newest_at_or_before(at_rev)?;
        let newer = (g.revs.len() - n - 1) as i64;
        Some(Found {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - newer,
        })
    }

    /// Every revision with `main >= rev`, keeping only the last change of
    /// each main revision (what a watcher starting at `rev` must see).
    /// Kept from etcd for the watch layer, which may resolve per-key
    /// history through the index.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        let since = Revision::new(rev, 0);
        // Start at the newest generation created at or before `since`.
        let mut gi = self.generations.len() - 1;
        while gi > 0 {
            let g = &self.generations[gi];
            if !g.is_empty() && since > g.created {
                break;
            }
            gi -= 1;
        }
        let mut out: Vec<Revision> = Vec::new();
        for g in &self.generations[gi..] {
            for &r in &g.revs {
                if since > r {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.main == r.main => *last = r,
                    _ => out.push(r),
                }
            }
        }
        out
    }

    /// Drops what compaction at `at_rev` makes unreachable; inserts the
    /// revisions that must stay on disk into `available`. Afterwards the
    /// caller removes the key from the index if [`KeyIndex::is_empty`].
    pub fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        let (gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let last = self.generations.len() - 1;
        let mut gen_idx = gen_idx;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(i) = rev_idx {
                g.revs.drain(..i);
            }
            // Only a tombstone left: the whole generation is gone.
            if g.revs.len() == 1 && gen_idx != last {
                available.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }

    /// Reports into `available` what `compact(at_rev)` would keep, without
    /// changing the index.
    pub fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let g = &self.generations[gen_idx];
        if let Some(i) = rev_idx {
            // A tombstone as the newest kept revision is not kept.
            if i == g.revs.len() - 1 && gen_idx != self.generations.len() - 1 {
                available.remove(&g.revs[i]);
            }
        }
    }

    /// Finds the first generation that survives compaction at `at_rev` and
    /// the index of its newest revision `<= at_rev`, which is added to
    /// `available`.
    fn do_compact(&self, at_rev: i64, available: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            match g.revs.last() {
                Some(tomb) if tomb.main > at_rev => break,
                _ => gen_idx += 1,
            }
        }
        let rev_idx = self.generations[gen_idx].newest_at_or_before(at_rev);
        if let Some(i) = rev_idx {
            available.insert(self.generations[gen_idx].revs[i]);
        }
        (gen_idx, rev_idx)
    }

    /// Undoes every change made at main revision `main` (a write
    /// transaction dropped without committing). Returns true when the key
    /// has no history left and must leave the index.
    pub fn rollback(&mut self, main: i64) -> bool {
        loop {
            let n = self.generations.len();
            let g = &mut self.generations[n - 1];
            if let Some(r) = g.revs.last() {
                if r.main != main {
                    break;
                }
                g.revs.pop();
                g.ver -= 1;
                if g.revs.is_empty() {
                    *g = Generation::default();
                }
                continue;
            }
            // An empty last generation: undo the tombstone that opened it.
            let prev_is_ours = n >= 2
                && self.generations[n - 2]
                    .revs
                    .last()
                    .is_some_and(|r| r.main == main);
            if !prev_is_ours {
                break;
            }
            self.generations.pop();
        }
        self.modified = self.newest().unwrap_or_default();
        self.is_empty()
    }

    /// True when the key has no revisions at all.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation that holds the key's value at `rev`, if it was live.
    fn find_generation(&self, rev: i64) -> Option<&Generation> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (Some(first), Some(newest)) = (g.revs.first(), g.revs.last()) else {
                continue;
            };
            // An ended generation whose tombstone is at or before `rev`
            // means the key was deleted at `rev`.
            if i != last && newest.main <= rev {
                return None;
            }
            if first.main <= rev {
                return Some(g);
            }
        }
        None
    }

    fn newest(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    fn last_mut(&mut self) -> &mut Generation {
        self.generations
            .last_mut()
            .expect("KeyIndex invariant: at least one generation")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// The example of etcd's key_index_test: puts at 2,4 / tomb 6 /
    /// puts 8,10 / tomb 12 / puts 14,14.1 / tomb 16.
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        ki.tombstone(r(6)).unwrap();
        ki.put(r(8));
        ki.put(r(10));
        ki.tombstone(r(12)).unwrap();
        ki.put(r(14));
        ki.put(Revision::new(14, 1));
        ki.tombstone(r(16)).unwrap();
        ki
    }

    #[test]
    fn generations_and_versions() {
        let mut ki = KeyIndex::default();
        assert!(ki.is_empty());
        ki.put(r(5));
        ki.put(r(7));
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.generations[0].ver, 2);
        assert_eq!(ki.generations[0].created, r(5));
        ki.tombstone(r(9)).unwrap();
        assert_eq!(ki.generations.len(), 2);
        assert!(ki.generations[1].is_empty());
        assert_eq!(ki.modified, r(9));
        assert_eq!(ki.tombstone(r(10)), Err(RevisionNotFound));
        ki.put(r(11));
        assert_eq!(ki.generations[1].created, r(11));
        assert_eq!(ki.generations[1].ver, 1);
    }

    #[test]
    fn get_at_revision() {
        let ki = sample();
        // (at, expected (modified, created, version))
        type Case = (i64, Option<(Revision, Revision, i64)>);
        let cases: &[Case] = &[
            (1, None),
            (2, Some((r(2), r(2), 1))),
            (3, Some((r(2), r(2), 1))),
            (4, Some((r(4), r(2), 2))),
            (5, Some((r(4), r(2), 2))),
            (6, None),
            (7, None),
            (8, Some((r(8), r(8), 1))),
            (11, Some((r(10), r(8), 2))),
            (12, None),
            (14, Some((Revision::new(14, 1), r(14), 2))),
            (15, Some((Revision::new(14, 1), r(14), 2))),
            (16, None),
            (100, None),
        ];
        for &(at, want) in cases {
            let got = ki.get(at).map(|f| (f.modified, f.created, f.version));
            assert_eq!(got, want, "get({at})");
        }
    }

    #[test]
    fn since_keeps_last_change_per_main() {
        let ki = sample();
        let all = vec![
            r(2),
            r(4),
            r(6),
            r(8),
            r(10),
            r(12),
            Revision::new(14, 1),
            r(16),
        ];
        assert_eq!(ki.since(0), all);
        assert_eq!(ki.since(1), all);
        assert_eq!(ki.since(4), all[1..].to_vec());
        assert_eq!(ki.since(7), all[3..].to_vec());
        assert_eq!(ki.since(14), all[6..].to_vec());
        assert_eq!(ki.since(17), Vec::<Revision>::new());
    }

    fn set(revs: &[Revision]) -> HashSet<Revision> {
        revs.iter().copied().collect()
    }

    #[test]
    fn compact_and_keep_agree() {
        // (at, surviving generations' revs, kept set)
        let cases: Vec<(i64, Vec<Vec<Revision>>, HashSet<Revision>)> = vec![
            (1, sample_revs(0), set(&[])),
            (2, sample_revs(0), set(&[r(2)])),
            (3, sample_revs(0), set(&[r(2)])),
            (
                4,
                [vec![vec![r(4), r(6)]], sample_revs(1)].concat(),
                set(&[r(4)]),
            ),
            (
                5,
                [vec![vec![r(4), r(6)]], sample_revs(1)].concat(),
                set(&[r(4)]),
            ),
            (6, sample_revs(1), set(&[])),
            (7, sample_revs(1), set(&[])),
            (8, sample_revs(1), set(&[r(8)])),
            (
                10,
                [vec![vec![r(10), r(12)]], sample_revs(2)].concat(),
                set(&[r(10)]),
            ),
            (12, sample_revs(2), set(&[])),
            (
                14,
                vec![vec![Revision::new(14, 1), r(16)], vec![]],
                set(&[Revision::new(14, 1)]),
            ),
            (16, vec![vec![]], set(&[])),
        ];
        for (at, want_gens, want_keep) in cases {
            let mut ki = sample();
            let mut kept = HashSet::new();
            ki.keep(at, &mut kept);
            assert_eq!(kept, want_keep, "keep({at})");
            let mut avail = HashSet::new();
            ki.compact(at, &mut avail);
            assert_eq!(avail, want_keep, "compact({at}) available");
            let gens: Vec<Vec<Revision>> = ki.generations.iter().map(|g| g.revs.clone()).collect();
            assert_eq!(gens, want_gens, "compact({at}) generations");
            // Reads at or after the compaction point are unchanged.
            let full = sample();
            for rev in at..18 {
                assert_eq!(ki.get(rev), full.get(rev), "get({rev}) after compact({at})");
            }
        }
    }

    /// The sample's generations starting at generation `from`.
    fn sample_revs(from: usize) -> Vec<Vec<Revision>> {
        sample().generations[from..]
            .iter()
            .map(|g| g.revs.clone())
            .collect()
    }

    #[test]
    fn compact_fully_deleted_key_is_empty() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.tombstone(r(3)).unwrap();
        let mut avail = HashSet::new();
        ki.compact(3, &mut avail);
        assert!(ki.is_empty());
        assert!(avail.is_empty());
    }

    #[test]
    fn rollback_undoes_one_main_revision() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        let before = ki.clone();
        ki.put(Revision::new(3, 0));
        ki.tombstone(Revision::new(3, 1)).unwrap();
        ki.put(Revision::new(3, 2));
        assert!(!ki.rollback(3));
        assert_eq!(ki, before);

        let mut fresh = KeyIndex::default();
        fresh.put(r(4));
        fresh.tombstone(Revision::new(4, 1)).unwrap();
        assert!(fresh.rollback(4));
        assert!(fresh.is_empty());
    }

    #[test]
    fn restore_uses_stored_create_and_version() {
        let ki = KeyIndex::restore(r(3), r(9), 4);
        let f = ki.get(9).unwrap();
        assert_eq!((f.modified, f.created, f.version), (r(9), r(3), 4));
        assert!(ki.get(8).is_none());
    }
}
