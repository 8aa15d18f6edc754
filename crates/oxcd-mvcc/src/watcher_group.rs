//! A set of watchers indexed by key, and the fan-out of events to them
//! (mirrors etcd `mvcc/watcher_group.go`: `watcherGroup`,
//! `newWatcherBatch`).
//!
//! Single-key watchers are found with one hash lookup per event, range
//! watchers in an interval tree (as etcd's `adt.IntervalTree`): an event
//! costs O(log n + matches), not a test of every range watcher, so 1 000
//! prefix watchers on distinct prefixes cost an event about what one does.

use crate::id_hash::IdMap;
use rb_interval_map::{Interval, IntervalMap};
use std::collections::HashMap;
use std::sync::Arc;

use crate::watcher::{key_of, revision_of, WatchEvent, WatchRange, Watcher, WatcherKey};

/// The events one watcher gets from a batch, in revision order.
pub(crate) type Batches = IdMap<WatcherKey, Vec<Arc<WatchEvent>>>;

/// A bound of a watched range in the interval tree: a key, or past every
/// key (a range without end, `range_end == "\0"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Bound {
    Key(Vec<u8>),
    /// Sorts after every key (declared last).
    End,
}

/// The tree's interval for a range watcher: `[start, end)`.
fn interval(range: &WatchRange) -> Option<Interval<Bound>> {
    match range {
        WatchRange::Key(_) => None,
        // A span is never empty (`WatchRange::new`), so `start < end`, as
        // `Interval::new` requires.
        WatchRange::Span { start, end } => Some(Interval::new(
            Bound::Key(start.clone()),
            end.clone().map_or(Bound::End, Bound::Key),
        )),
    }
}

/// Watchers by key (etcd `watcherGroup`). Holds keys and ranges only; the
/// watchers themselves live in the store's watcher table.
#[derive(Debug, Default)]
pub(crate) struct WatcherGroup {
    /// Single-key watchers.
    keys: HashMap<Vec<u8>, Vec<WatcherKey>>,
    /// Range watchers, by range. Each range is inserted once and holds
    /// every watcher on it (the tree keeps one value per interval).
    ranges: IntervalMap<Bound, Vec<WatcherKey>>,
    len: usize,
}

impl WatcherGroup {
    /// Adds watcher `wk` covering `range`.
    pub fn add(&mut self, wk: WatcherKey, range: &WatchRange) {
        match range {
            WatchRange::Key(k) => self.keys.entry(k.clone()).or_default().push(wk),
            WatchRange::Span { .. } => {
                let Some(iv) = interval(range) else { return };
                match self.ranges.get_mut(&iv) {
                    Some(set) => set.push(wk),
                    // Only absent intervals are inserted: the tree keeps a
                    // node for each insert of one already there.
                    None => {
                        self.ranges.insert(iv, vec![wk]);
                    }
                }
            }
        }
        self.len += 1;
    }

    /// Removes watcher `wk` (added with `range`); false if it was not here.
    pub fn remove(&mut self, wk: WatcherKey, range: &WatchRange) -> bool {
        let removed = match range {
            WatchRange::Key(k) => match self.keys.get_mut(k.as_slice()) {
                Some(set) => {
                    let before = set.len();
                    set.retain(|w| *w != wk);
                    let removed = set.len() < before;
                    if set.is_empty() {
                        self.keys.remove(k.as_slice());
                    }
                    removed
                }
                None => false,
            },
            WatchRange::Span { .. } => {
                let Some(iv) = interval(range) else {
                    return false;
                };
                match self.ranges.get_mut(&iv) {
                    Some(set) => {
                        let before = set.len();
                        set.retain(|w| *w != wk);
                        let removed = set.len() < before;
                        if set.is_empty() {
                            self.ranges.remove(&iv);
                        }
                        removed
                    }
                    None => false,
                }
            }
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Number of watchers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` for every watcher whose range holds `key`.
    fn for_each_match(&self, key: &[u8], mut f: impl FnMut(WatcherKey)) {
        if let Some(set) = self.keys.get(key) {
            set.iter().copied().for_each(&mut f);
        }
        if self.ranges.is_empty() {
            return;
        }
        // The ranges that overlap [key, key\0): those holding `key`.
        let mut next = key.to_vec();
        next.push(0);
        let point = Interval::new(Bound::Key(key.to_vec()), Bound::Key(next));
        for (_, set) in self.ranges.find_all_overlap(&point) {
            set.iter().copied().for_each(&mut f);
        }
    }

    /// Splits `events` (in revision order) by watcher (etcd
    /// `newWatcherBatch`): each watcher gets the events on its keys at or
    /// above its `next_rev` that pass its filters. Watchers that get
    /// nothing are absent from the result.
    pub fn batch(
        &self,
        events: &[Arc<WatchEvent>],
        watchers: &IdMap<WatcherKey, Watcher>,
    ) -> Batches {
        let mut out = Batches::default();
        if self.len == 0 {
            return out;
        }
        for ev in events {
            let rev = revision_of(ev);
            self.for_each_match(key_of(ev), |wk| {
                let Some(w) = watchers.get(&wk) else { return };
                if rev >= w.next_rev && w.filters.keeps(ev) {
                    out.entry(wk).or_default().push(ev.clone());
                }
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watcher::{Filters, Group};
    use oxcd_api::mvccpb::{event::EventType, Event, KeyValue};
    use tokio::sync::mpsc;

    fn put(key: &str, rev: i64) -> Arc<WatchEvent> {
        Arc::new(WatchEvent::new(Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec().into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }))
    }

    #[test]
    fn batch_by_key_range_and_next_rev() {
        let (tx, _rx) = mpsc::channel(1);
        let mut watchers = IdMap::default();
        let mut g = WatcherGroup::default();
        let specs: [(&[u8], &[u8], i64); 3] = [(b"a", b"", 1), (b"a", b"c", 3), (b"b", b"\0", 1)];
        for (i, (k, e, next)) in specs.into_iter().enumerate() {
            let wk = WatcherKey(i as u64);
            let range = WatchRange::new(k, e).unwrap();
            g.add(wk, &range);
            watchers.insert(
                wk,
                Watcher {
                    id: i as i64,
                    range,
                    next_rev: next,
                    filters: Filters::default(),
                    group: Group::Synced,
                    tx: crate::watcher::StreamTx {
                        id: 1,
                        tx: tx.clone(),
                    },
                },
            );
        }
        let evs = [put("a", 2), put("b", 3), put("a", 4), put("z", 5)];
        let b = g.batch(&evs, &watchers);
        let revs = |i: u64| -> Vec<i64> {
            b.get(&WatcherKey(i))
                .map(|v| v.iter().map(|e| revision_of(e)).collect())
                .unwrap_or_default()
        };
        assert_eq!(revs(0), [2, 4]);
        assert_eq!(revs(1), [3, 4], "below next_rev is skipped");
        assert_eq!(revs(2), [3, 5]);

        assert!(g.remove(WatcherKey(0), &watchers[&WatcherKey(0)].range));
        assert!(!g.remove(WatcherKey(0), &watchers[&WatcherKey(0)].range));
        assert!(g.remove(WatcherKey(1), &watchers[&WatcherKey(1)].range));
        assert_eq!(g.len(), 1);
        assert!(!g.batch(&evs, &watchers).contains_key(&WatcherKey(0)));
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys over a small alphabet, so that ranges overlap and nest.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(b'a'..=b'd', 1..4)
    }

    proptest! {
        /// Whatever ranges come and go (the same range several times
        /// included), the tree finds exactly the watchers a scan of every
        /// range finds.
        #[test]
        fn the_tree_finds_what_a_scan_finds(
            ops in proptest::collection::vec((key(), key(), any::<bool>(), any::<bool>()), 1..60),
            probes in proptest::collection::vec(key(), 1..20),
        ) {
            let mut g = WatcherGroup::default();
            let mut live: Vec<(WatcherKey, WatchRange)> = Vec::new();
            for (i, (a, b, open_end, remove)) in ops.into_iter().enumerate() {
                if remove && !live.is_empty() {
                    let (wk, range) = live.remove(i % live.len());
                    prop_assert!(g.remove(wk, &range));
                    prop_assert!(!g.remove(wk, &range));
                    continue;
                }
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let end: &[u8] = if open_end { b"\0" } else { &hi };
                let Some(range) = WatchRange::new(&lo, end) else { continue };
                let wk = WatcherKey(i as u64);
                g.add(wk, &range);
                live.push((wk, range));
            }
            prop_assert_eq!(g.len(), live.len());
            for k in probes {
                let mut found = Vec::new();
                g.for_each_match(&k, |wk| found.push(wk));
                found.sort();
                let mut want: Vec<WatcherKey> = live
                    .iter()
                    .filter(|(_, r)| r.contains(&k))
                    .map(|(wk, _)| *wk)
                    .collect();
                want.sort();
                prop_assert_eq!(found, want, "key {:?}", k);
            }
        }
    }
}
