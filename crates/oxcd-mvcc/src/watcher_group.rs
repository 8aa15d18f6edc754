//! A set of watchers indexed by key, and the fan-out of events to them
//! (mirrors etcd `mvcc/watcher_group.go`: `watcherGroup`,
//! `newWatcherBatch`).
//!
//! Single-key watchers are found with one hash lookup per event. Range
//! watchers are checked one by one (etcd keeps them in an interval tree;
//! a linear scan is cheaper up to a few hundred range watchers).

use crate::id_hash::IdMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::watcher::{key_of, revision_of, WatchEvent, WatchRange, Watcher, WatcherKey};

/// The events one watcher gets from a batch, in revision order.
pub(crate) type Batches = IdMap<WatcherKey, Vec<Arc<WatchEvent>>>;

/// Watchers by key (etcd `watcherGroup`). Holds keys and ranges only; the
/// watchers themselves live in the store's watcher table.
#[derive(Debug, Default)]
pub(crate) struct WatcherGroup {
    /// Single-key watchers.
    keys: HashMap<Vec<u8>, Vec<WatcherKey>>,
    /// Range watchers.
    ranges: BTreeMap<WatcherKey, WatchRange>,
    len: usize,
}

impl WatcherGroup {
    /// Adds watcher `wk` covering `range`.
    pub fn add(&mut self, wk: WatcherKey, range: &WatchRange) {
        match range {
            WatchRange::Key(k) => self.keys.entry(k.clone()).or_default().push(wk),
            WatchRange::Span { .. } => {
                self.ranges.insert(wk, range.clone());
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
            WatchRange::Span { .. } => self.ranges.remove(&wk).is_some(),
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
        for (wk, range) in &self.ranges {
            if range.contains(key) {
                f(*wk);
            }
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
