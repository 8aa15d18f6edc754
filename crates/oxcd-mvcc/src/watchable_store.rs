//! The watchable store: watchers, their groups, and event fan-out (mirrors
//! etcd `mvcc/watchable_store.go` and `mvcc/watcher.go`'s `watchStream`).
//!
//! # Groups
//!
//! Every watcher is in exactly one of three groups (one `Mutex` guards them
//! all, together with the published revision):
//! - **synced**: has every matching event up to the published revision;
//!   [`WatchableStore::notify`] hands it new events at once;
//! - **unsynced**: behind (it asked for a past revision, or fell behind
//!   as a victim); the sync loop reads history for it from the backend,
//!   at most [`MAX_REVS_PER_SYNC`] revisions per response, and moves it to
//!   synced once it has reached the published revision;
//! - **victims**: its stream's channel was full; the response that did not
//!   fit waits here and is retried every [`VICTIM_RETRY`]. Once it fits,
//!   the watcher goes back to unsynced (or synced, if nothing happened
//!   meanwhile).
//!
//! # Back-pressure
//!
//! The store never waits on a stream: every send is a `try_send`. The
//! writer (the apply thread calling `notify`) only holds the lock for the
//! in-memory fan-out; backend reads for catch-up run outside it. A slow
//! stream costs a victim entry and later history reads, never a stalled
//! writer, a lost event or a duplicate: each watcher's `next_rev` says
//! exactly which revisions it has been given.
//!
//! # Published revision
//!
//! The store only tells watchers about writes that are applied and
//! published (committed in raft, so durable in the WAL of a quorum): the
//! revision watchers see (`rev`) is the last one handed to `notify`, which
//! the server's apply stage calls after each group is published. New
//! watchers start after it, and catch-up reads stop at it.

use crate::id_hash::IdMap;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use oxcd_api::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;

use crate::kvstore::KvStore;
use crate::txn::RangeOptions;
use crate::watch_stream::{WatchReceiver, WatchStream};
use crate::watcher::{
    revision_of, Filters, Group, PerStream, StreamTx, WatchEvent, WatchId, WatchRange,
    WatchResponse, Watcher, WatcherKey,
};
use crate::watcher_group::WatcherGroup;

/// Messages a stream's channel holds before its watchers become victims
/// (etcd's `chanBufLen`; here a message is one published group's, or one
/// catch-up pass's, responses for the stream's watchers).
pub const STREAM_CHANNEL_CAPACITY: usize = 128;
/// Most unsynced watchers caught up in one pass (etcd `maxWatchersPerSync`).
pub const MAX_WATCHERS_PER_SYNC: usize = 512;
/// Most revisions read (and sent in one response) per catch-up pass.
pub const MAX_REVS_PER_SYNC: i64 = 1000;
/// How often victims are retried (etcd's victim loop tick).
pub const VICTIM_RETRY: Duration = Duration::from_millis(10);
/// Pause of the sync loop when nothing is unsynced (etcd's sync tick).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// The watchable store: a cheap `Clone` handle over a [`KvStore`]. A
/// background thread catches unsynced watchers up and retries victims; it
/// ends once the last handle is dropped.
#[derive(Clone)]
pub struct WatchableStore {
    inner: Arc<Inner>,
}

struct Inner {
    kv: KvStore,
    state: Mutex<HubState>,
    wake: Arc<Wake>,
    next_key: AtomicU64,
    /// Set once by [`WatchableStore::close`].
    closed: tokio::sync::watch::Sender<bool>,
}

/// Everything the groups are made of, under one lock.
#[derive(Default)]
struct HubState {
    /// The last revision handed to `notify` (published).
    rev: i64,
    watchers: IdMap<WatcherKey, Watcher>,
    synced: WatcherGroup,
    unsynced: BTreeSet<WatcherKey>,
    /// Where the next sync pass starts choosing, so that with more than
    /// [`MAX_WATCHERS_PER_SYNC`] unsynced watchers every one gets a turn.
    cursor: u64,
    victims: IdMap<WatcherKey, WatchResponse>,
}

/// Wakes the background thread early (a new unsynced watcher or victim).
#[derive(Default)]
struct Wake {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn notify(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut pending, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |p| !*p)
            .unwrap_or_else(PoisonError::into_inner);
        *pending = false;
    }
}

/// What one sync pass achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyncOutcome {
    /// Unsynced watchers left.
    pub remaining: usize,
    /// False if the pass could not read history (it will be retried).
    pub progressed: bool,
}

impl WatchableStore {
    /// Wraps `kv` and starts the background sync thread. The published
    /// revision starts at `kv.rev()`.
    ///
    /// # Errors
    /// The OS refused to start the thread.
    pub fn new(kv: KvStore) -> std::io::Result<Self> {
        let store = Self::without_loop(kv);
        let weak = Arc::downgrade(&store.inner);
        let wake = store.inner.wake.clone();
        std::thread::Builder::new()
            .name("oxcd-watch-sync".into())
            .spawn(move || sync_loop(&weak, &wake))?;
        Ok(store)
    }

    /// A store whose sync and victim passes only run when called (tests).
    pub(crate) fn without_loop(kv: KvStore) -> Self {
        let rev = kv.rev();
        WatchableStore {
            inner: Arc::new(Inner {
                kv,
                state: Mutex::new(HubState {
                    rev,
                    ..HubState::default()
                }),
                wake: Arc::default(),
                next_key: AtomicU64::new(1),
                closed: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        // Every critical section leaves the groups consistent before any
        // call that could panic, so a poisoned lock is used as is.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The revision watchers have been told about: the last published
    /// revision handed to [`WatchableStore::notify`].
    pub fn rev(&self) -> i64 {
        self.state().rev
    }

    /// Tells every watch stream that the member is stopping (see
    /// [`WatchableStore::closed`]). Watchers stay registered until their
    /// streams drop them.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// Resolves once [`WatchableStore::close`] has been called (at once if
    /// it already was). Cancel-safe.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        // The sender lives in `inner`, which `self` keeps alive.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// The key space this store watches.
    pub fn kv(&self) -> &KvStore {
        &self.inner.kv
    }

    /// Opens a watch stream: the handle that creates and cancels watchers,
    /// and the receiver of their responses (a channel of
    /// [`STREAM_CHANNEL_CAPACITY`] batches).
    pub fn new_watch_stream(&self) -> (WatchStream, WatchReceiver) {
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        let id = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        (
            WatchStream::new(self.clone(), StreamTx { id, tx }),
            WatchReceiver::new(rx),
        )
    }

    /// Number of watchers in the synced, unsynced and victim groups (for
    /// metrics and tests).
    pub fn group_sizes(&self) -> (usize, usize, usize) {
        let st = self.state();
        (st.synced.len(), st.unsynced.len(), st.victims.len())
    }

    /// Publishes the events of one published group of writes, in revision
    /// order (etcd `notify`, once per group rather than per revision).
    /// Synced watchers get their share at once; a watcher whose channel is
    /// full becomes a victim. Never blocks on a stream.
    pub fn notify(&self, events: Vec<Event>) {
        let Some(last) = events.last().map(revision_of) else {
            return;
        };
        let events: Vec<Arc<WatchEvent>> = events
            .into_iter()
            .map(|e| Arc::new(WatchEvent::new(e)))
            .collect();
        let mut st = self.state();
        let new_rev = st.rev.max(last);
        let batches = st.synced.batch(&events, &st.watchers);
        // One message per stream: its watchers' responses, in one batch
        // (sized first: growing it watcher by watcher cost a copy each
        // time it doubled).
        let mut sizes: IdMap<u64, usize> = IdMap::default();
        for wk in batches.keys() {
            if let Some(w) = st.watchers.get(wk) {
                *sizes.entry(w.tx.id).or_default() += 1;
            }
        }
        let mut streams = PerStream::default();
        for (wk, evs) in batches {
            let Some(w) = st.watchers.get_mut(&wk) else {
                continue;
            };
            let resp = WatchResponse {
                watch_id: w.id,
                watcher: wk,
                revision: evs.last().map_or(new_rev, |e| revision_of(e)),
                events: evs,
                compact_revision: 0,
                live: true,
            };
            w.next_rev = new_rev + 1;
            let hint = sizes.get(&w.tx.id).copied().unwrap_or(1);
            streams.push(&w.tx, resp, hint);
        }
        let mut victims = false;
        for (tx, batch) in streams.into_batches() {
            let Err(batch) = tx.send(batch) else {
                continue;
            };
            // The stream is full: each of its watchers keeps its response
            // as a victim, retried on its own.
            let HubState {
                watchers,
                synced,
                victims: victim_list,
                ..
            } = &mut *st;
            for resp in batch {
                let wk = resp.watcher;
                if let Some(w) = watchers.get_mut(&wk) {
                    synced.remove(wk, &w.range);
                    w.group = Group::Victim;
                    victim_list.insert(wk, resp);
                    victims = true;
                }
            }
        }
        st.rev = new_rev;
        drop(st);
        if victims {
            self.inner.wake.notify();
        }
    }

    /// Fills `prev_kv` of each event by reading its key at
    /// `mod_revision - 1`. Skipped for creations (a PUT with
    /// `create_revision == mod_revision`); left empty if that revision was
    /// compacted or cannot be read.
    pub fn fill_prev_kv(&self, events: &mut [Event]) {
        let Ok(txn) = self.inner.kv.read() else {
            return;
        };
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let created =
                ev.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
            if created || kv.mod_revision <= 1 {
                continue;
            }
            let opts = RangeOptions {
                rev: kv.mod_revision - 1,
                ..RangeOptions::default()
            };
            if let Ok(r) = txn.range(&kv.key, b"", opts) {
                ev.prev_kv = r.kvs.into_iter().next();
            }
        }
    }

    /// Registers a watcher (etcd `watchableStore.watch`): synced if
    /// `start_rev` is 0 or in the future, unsynced otherwise.
    pub(crate) fn add_watcher(
        &self,
        id: WatchId,
        range: WatchRange,
        start_rev: i64,
        filters: Filters,
        tx: StreamTx,
    ) -> WatcherKey {
        let wk = WatcherKey(self.inner.next_key.fetch_add(1, Ordering::Relaxed));
        let mut st = self.state();
        let synced = start_rev == 0 || start_rev > st.rev;
        let mut w = Watcher {
            id,
            range,
            next_rev: if synced {
                start_rev.max(st.rev + 1)
            } else {
                start_rev.max(1)
            },
            filters,
            group: Group::Synced,
            tx,
        };
        if synced {
            st.synced.add(wk, &w.range);
        } else {
            w.group = Group::Unsynced;
            st.unsynced.insert(wk);
        }
        st.watchers.insert(wk, w);
        drop(st);
        if !synced {
            self.inner.wake.notify();
        }
        wk
    }

    /// Re-syncs every watcher after the backend was replaced by a raft
    /// snapshot (etcd `watchableStore.Restore`): synced watchers move to
    /// unsynced, so the sync loop reads whatever they miss from the new
    /// contents (or tells them it was compacted), and the published
    /// revision becomes the new store's current revision.
    pub fn restore(&self) {
        let mut st = self.state();
        let HubState {
            watchers,
            synced,
            unsynced,
            rev,
            ..
        } = &mut *st;
        for (wk, w) in watchers.iter_mut() {
            if w.group == Group::Synced {
                synced.remove(*wk, &w.range);
                w.group = Group::Unsynced;
                unsynced.insert(*wk);
            }
        }
        *rev = self.inner.kv.rev();
        drop(st);
        self.inner.wake.notify();
    }

    /// Removes a watcher from whichever group it is in; false if it is
    /// already gone (cancelled, or removed after a compaction notice).
    pub(crate) fn remove_watcher(&self, wk: WatcherKey) -> bool {
        let mut st = self.state();
        let Some(w) = st.watchers.remove(&wk) else {
            return false;
        };
        match w.group {
            Group::Synced => {
                st.synced.remove(wk, &w.range);
            }
            Group::Unsynced => {
                st.unsynced.remove(&wk);
            }
            Group::Victim => {
                st.victims.remove(&wk);
            }
        }
        true
    }

    /// Sends a progress notification (no events, the current revision) to
    /// a synced watcher; does nothing for others or when its channel is
    /// full (etcd `progress`).
    pub(crate) fn progress(&self, wk: WatcherKey) {
        let st = self.state();
        if let Some(w) = st.watchers.get(&wk) {
            if w.group == Group::Synced {
                let _ = w.send(WatchResponse {
                    watch_id: w.id,
                    watcher: wk,
                    events: Vec::new(),
                    revision: st.rev,
                    compact_revision: 0,
                    live: false,
                });
            }
        }
    }

    /// Puts a watcher whose pending response has been delivered back into
    /// synced or unsynced, depending on whether it missed anything.
    fn regroup(st: &mut HubState, wk: WatcherKey) {
        let rev = st.rev;
        let Some(w) = st.watchers.get_mut(&wk) else {
            return;
        };
        if w.next_rev > rev {
            w.group = Group::Synced;
            st.synced.add(wk, &w.range);
        } else {
            w.group = Group::Unsynced;
            st.unsynced.insert(wk);
        }
    }

    /// Retries every victim once (etcd `moveVictims`); returns how many
    /// were delivered.
    pub(crate) fn move_victims(&self) -> usize {
        let mut st = self.state();
        // As in `notify`, one batch per stream.
        let mut streams = PerStream::default();
        for (wk, resp) in std::mem::take(&mut st.victims) {
            let Some(w) = st.watchers.get(&wk) else {
                continue;
            };
            streams.push(&w.tx, resp, 1);
        }
        let mut moved = 0;
        for (tx, batch) in streams.into_batches() {
            let done: Vec<(WatcherKey, bool)> = batch
                .iter()
                .map(|r| (r.watcher, r.compact_revision != 0))
                .collect();
            if let Err(batch) = tx.send(batch) {
                for resp in batch {
                    st.victims.insert(resp.watcher, resp);
                }
                continue;
            }
            for (wk, compacted) in done {
                moved += 1;
                if compacted {
                    st.watchers.remove(&wk);
                } else {
                    Self::regroup(&mut st, wk);
                }
            }
        }
        moved
    }

    /// One catch-up pass over up to [`MAX_WATCHERS_PER_SYNC`] unsynced
    /// watchers (etcd `syncWatchers`):
    /// 1. under the lock: send compaction notices to watchers whose next
    ///    revision was compacted, and note the others' ranges and the
    ///    lowest next revision;
    /// 2. without the lock: read the history from that revision, at most
    ///    [`MAX_REVS_PER_SYNC`] revisions, up to the published revision;
    /// 3. under the lock: give each watcher its share in one response;
    ///    those that reached the published revision join synced, those
    ///    whose channel is full become victims.
    pub(crate) fn sync_watchers(&self) -> SyncOutcome {
        let Some(chosen) = self.choose_unsynced() else {
            return SyncOutcome {
                remaining: 0,
                progressed: true,
            };
        };
        let end = (chosen.read_rev + 1).min(chosen.min_rev + MAX_REVS_PER_SYNC);
        let events = match self.read_history(chosen.min_rev, end) {
            Ok(evs) => evs,
            Err(e) => {
                if let Some(e) = e {
                    tracing::warn!(error = %e, "watch: cannot read history for unsynced watchers");
                }
                return SyncOutcome {
                    remaining: self.state().unsynced.len(),
                    progressed: false,
                };
            }
        };
        let mut st = self.state();
        let batches = chosen.group.batch(&events, &st.watchers);
        // One batch per stream, as in `notify`; a watcher with nothing in
        // the range read only moves on.
        let mut streams = PerStream::default();
        let mut quiet = Vec::new();
        for wk in chosen.keys {
            if !st.unsynced.contains(&wk) {
                continue; // cancelled meanwhile
            }
            let Some(w) = st.watchers.get_mut(&wk) else {
                continue;
            };
            w.next_rev = w.next_rev.max(end);
            match batches.get(&wk) {
                Some(evs) => {
                    let resp = WatchResponse {
                        watch_id: w.id,
                        watcher: wk,
                        events: evs.clone(),
                        revision: chosen.read_rev,
                        compact_revision: 0,
                        live: false,
                    };
                    streams.push(&w.tx, resp, 1);
                }
                None => quiet.push(wk),
            }
        }
        let mut victims = false;
        for (tx, batch) in streams.into_batches() {
            let sent: Vec<WatcherKey> = batch.iter().map(|r| r.watcher).collect();
            match tx.send(batch) {
                Ok(()) => quiet.extend(sent),
                Err(batch) => {
                    for resp in batch {
                        let wk = resp.watcher;
                        st.unsynced.remove(&wk);
                        if let Some(w) = st.watchers.get_mut(&wk) {
                            w.group = Group::Victim;
                        }
                        st.victims.insert(wk, resp);
                        victims = true;
                    }
                }
            }
        }
        for wk in quiet {
            let caught_up = st.watchers.get(&wk).is_some_and(|w| w.next_rev > st.rev);
            if caught_up {
                st.unsynced.remove(&wk);
                Self::regroup(&mut st, wk);
            }
        }
        let remaining = st.unsynced.len();
        drop(st);
        if victims {
            self.inner.wake.notify();
        }
        SyncOutcome {
            remaining,
            progressed: true,
        }
    }

    /// Step 1 of [`WatchableStore::sync_watchers`]; `None` if nothing is
    /// left to read for.
    fn choose_unsynced(&self) -> Option<Chosen> {
        let compact_rev = self.inner.kv.compact_rev();
        let mut st = self.state();
        if st.unsynced.is_empty() {
            return None;
        }
        let cursor = WatcherKey(st.cursor);
        let picked: Vec<WatcherKey> = st
            .unsynced
            .range(cursor..)
            .chain(st.unsynced.range(..cursor))
            .take(MAX_WATCHERS_PER_SYNC)
            .copied()
            .collect();
        st.cursor = picked.last().map_or(0, |wk| wk.0 + 1);
        let mut chosen = Chosen {
            keys: Vec::with_capacity(picked.len()),
            group: WatcherGroup::default(),
            min_rev: i64::MAX,
            read_rev: st.rev,
        };
        let mut victims = false;
        for wk in picked {
            let Some(w) = st.watchers.get(&wk) else {
                continue;
            };
            if w.next_rev < compact_rev {
                let notice = WatchResponse {
                    watch_id: w.id,
                    watcher: wk,
                    events: Vec::new(),
                    revision: 0,
                    compact_revision: compact_rev,
                    live: false,
                };
                let sent = w.send(notice);
                st.unsynced.remove(&wk);
                match sent {
                    Ok(()) => {
                        st.watchers.remove(&wk);
                    }
                    Err(notice) => {
                        if let Some(w) = st.watchers.get_mut(&wk) {
                            w.group = Group::Victim;
                        }
                        st.victims.insert(wk, notice);
                        victims = true;
                    }
                }
                continue;
            }
            chosen.min_rev = chosen.min_rev.min(w.next_rev);
            chosen.group.add(wk, &w.range);
            chosen.keys.push(wk);
        }
        drop(st);
        if victims {
            self.inner.wake.notify();
        }
        (!chosen.keys.is_empty()).then_some(chosen)
    }

    /// Step 2 of [`WatchableStore::sync_watchers`]: events of revisions
    /// `[start, end)`. `Err(None)` if a compaction overtook `start` since
    /// step 1 (the next pass sends the notices).
    fn read_history(
        &self,
        start: i64,
        end: i64,
    ) -> Result<Vec<Arc<WatchEvent>>, Option<crate::MvccError>> {
        let txn = self.inner.kv.read().map_err(Some)?;
        // Deletion of compacted revisions starts only after the compact
        // revision is published, so if it is still <= start now, this
        // snapshot holds every revision >= start.
        if txn.compact_rev() > start {
            return Err(None);
        }
        let events = txn.scan_events(start, end, 0).map_err(Some)?;
        Ok(events
            .into_iter()
            .map(|e| Arc::new(WatchEvent::new(e)))
            .collect())
    }

    /// One round of the background thread: retry victims until none moves,
    /// then one sync pass. Returns how long to pause before the next round.
    fn run_once(&self) -> Duration {
        while self.move_victims() > 0 {}
        let outcome = self.sync_watchers();
        if outcome.remaining > 0 && outcome.progressed {
            return Duration::ZERO;
        }
        if !self.state().victims.is_empty() || outcome.remaining > 0 {
            VICTIM_RETRY
        } else {
            IDLE_TICK
        }
    }
}

/// The unsynced watchers one sync pass works on.
struct Chosen {
    keys: Vec<WatcherKey>,
    /// The same watchers, indexed by key for the fan-out.
    group: WatcherGroup,
    min_rev: i64,
    /// The published revision when they were chosen: the pass reads up to
    /// it, and it is the header revision of the responses.
    read_rev: i64,
}

/// The background thread: holds the store only while working, so that
/// dropping the last handle ends it.
fn sync_loop(store: &Weak<Inner>, wake: &Wake) {
    loop {
        let pause = match store.upgrade() {
            Some(inner) => WatchableStore { inner }.run_once(),
            None => return,
        };
        if !pause.is_zero() {
            wake.wait(pause);
        }
    }
}

#[cfg(test)]
#[path = "watchable_store_tests.rs"]
mod tests;
