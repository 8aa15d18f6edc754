//! The watchers of one client stream (mirrors `watchStream` in etcd
//! `mvcc/watcher.go`): id assignment, cancel, progress requests.

use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::watchable_store::WatchableStore;
use crate::watcher::{
    Filters, StreamTx, WatchError, WatchId, WatchRange, WatchResponse, WatcherKey, AUTO_WATCH_ID,
};

/// The watchers of one client stream (etcd `watchStream`): assigns ids,
/// and cancels every watcher it still has when dropped. All its watchers
/// send on one channel, received by the stream's owner.
pub struct WatchStream {
    store: WatchableStore,
    tx: StreamTx,
    watchers: HashMap<WatchId, WatcherKey>,
    next_id: WatchId,
}

impl WatchStream {
    pub(crate) fn new(store: WatchableStore, tx: StreamTx) -> Self {
        crate::metrics::get().watch_streams.inc();
        WatchStream {
            store,
            tx,
            watchers: HashMap::new(),
            next_id: 0,
        }
    }

    /// Creates a watcher on `[key, end)` (Range conventions for `end`)
    /// starting at `start_rev` (0: after the current revision). `id` is
    /// [`AUTO_WATCH_ID`] for the next free id counting from 0, or any other
    /// value (including -1) to use as given. Returns the id.
    ///
    /// # Errors
    /// [`WatchError::EmptyRange`] when `end` is set and not after `key`;
    /// [`WatchError::DuplicateId`] when `id` is in use on this stream.
    pub fn watch(
        &mut self,
        id: WatchId,
        key: &[u8],
        end: &[u8],
        start_rev: i64,
        filters: Filters,
    ) -> Result<WatchId, WatchError> {
        let range = WatchRange::new(key, end).ok_or(WatchError::EmptyRange)?;
        let id = if id == AUTO_WATCH_ID {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&id) {
            return Err(WatchError::DuplicateId);
        } else {
            id
        };
        let wk = self
            .store
            .add_watcher(id, range, start_rev, filters, self.tx.clone());
        self.watchers.insert(id, wk);
        Ok(id)
    }

    /// Cancels watcher `id`; false if this stream has no such watcher.
    pub fn cancel(&mut self, id: WatchId) -> bool {
        match self.watchers.remove(&id) {
            Some(wk) => {
                self.store.remove_watcher(wk);
                true
            }
            None => false,
        }
    }

    /// Asks for a progress notification for watcher `id`: sent only if it
    /// is synced (etcd `RequestProgress`).
    pub fn request_progress(&self, id: WatchId) {
        if let Some(wk) = self.watchers.get(&id) {
            self.store.progress(*wk);
        }
    }

    /// The revision watchers have been told about (see
    /// [`WatchableStore::rev`]).
    pub fn rev(&self) -> i64 {
        self.store.rev()
    }

    /// True if `resp` comes from the watcher this stream now has under
    /// `resp.watch_id` (not from a cancelled one whose id was reused).
    pub fn is_current(&self, resp: &WatchResponse) -> bool {
        self.watchers.get(&resp.watch_id) == Some(&resp.watcher)
    }

    /// The store this stream watches.
    pub fn store(&self) -> &WatchableStore {
        &self.store
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        crate::metrics::get().watch_streams.dec();
        for (_, wk) in self.watchers.drain() {
            self.store.remove_watcher(wk);
        }
    }
}

/// The receiving half of a watch stream's channel: the responses of the
/// stream's watchers one at a time, in the order the store queued them
/// (the channel itself carries them in per-group batches).
#[derive(Debug)]
pub struct WatchReceiver {
    rx: mpsc::Receiver<Vec<WatchResponse>>,
    pending: std::vec::IntoIter<WatchResponse>,
}

impl WatchReceiver {
    pub(crate) fn new(rx: mpsc::Receiver<Vec<WatchResponse>>) -> Self {
        WatchReceiver {
            rx,
            pending: Vec::new().into_iter(),
        }
    }

    /// The next response; `None` once the stream's senders are gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<WatchResponse>> {
        loop {
            if let Some(r) = self.pending.next() {
                return Poll::Ready(Some(r));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    count_events(&batch);
                    self.pending = batch.into_iter();
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next response (see [`WatchReceiver::poll_recv`]). Cancel-safe.
    pub async fn recv(&mut self) -> Option<WatchResponse> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next response if one is queued.
    ///
    /// # Errors
    /// Nothing is queued (`Empty`), or the senders are gone
    /// (`Disconnected`).
    pub fn try_recv(&mut self) -> Result<WatchResponse, mpsc::error::TryRecvError> {
        loop {
            if let Some(r) = self.pending.next() {
                return Ok(r);
            }
            let batch = self.rx.try_recv()?;
            count_events(&batch);
            self.pending = batch.into_iter();
        }
    }
}

/// The events of a batch of responses.
pub(crate) fn events_in(batch: &[WatchResponse]) -> i64 {
    batch.iter().map(|r| r.events.len() as i64).sum()
}

/// Counts a batch the stream took: `etcd_debugging_mvcc_events_total`
/// grows, `etcd_debugging_mvcc_pending_events_total` (counted when the
/// store queued it) shrinks.
fn count_events(batch: &[WatchResponse]) {
    let n = events_in(batch);
    if n > 0 {
        let m = crate::metrics::get();
        m.events.inc_by(n as u64);
        m.pending_events.sub(n);
    }
}

impl Drop for WatchReceiver {
    /// What was queued and never taken is no longer pending.
    fn drop(&mut self) {
        let mut left: i64 = self
            .pending
            .as_slice()
            .iter()
            .map(|r| r.events.len() as i64)
            .sum();
        self.rx.close();
        while let Ok(batch) = self.rx.try_recv() {
            left += events_in(&batch);
        }
        if left > 0 {
            crate::metrics::get().pending_events.sub(left);
        }
    }
}
