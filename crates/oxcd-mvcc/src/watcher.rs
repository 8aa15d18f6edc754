//! One watcher, and what the store sends to a watch stream (mirrors etcd
//! `mvcc/watcher.go`).
//!
//! A watcher is a key range, the next revision it still has to see
//! (`next_rev`, etcd's `minRev`), its filters and the sending half of its
//! stream's channel. The store never waits on that channel: a full channel
//! turns the watcher into a victim (see `watchable_store`).

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use oxcd_api::mvccpb::{event::EventType, Event};
use prost::Message;
use tokio::sync::mpsc;

use crate::id_hash::IdMap;
use crate::index::KeyRange;

/// The id a watch stream gives each of its watchers (etcd `WatchID`).
pub type WatchId = i64;

/// Passing this id asks the stream to pick the next free one (clientv3
/// `AutoWatchID`).
pub const AUTO_WATCH_ID: WatchId = 0;

/// Why a watcher could not be created. The messages are etcd's
/// `cancel_reason` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The stream already has a watcher with the requested id.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    /// `range_end` is not after `key` (and is not `"\0"`).
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
}

/// Events a watcher does not want (etcd's `FilterFunc`s built from
/// `WatchCreateRequest.filters`). A response whose events are all filtered
/// out is not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filters {
    /// Drop PUT events (`NOPUT`).
    pub no_put: bool,
    /// Drop DELETE events (`NODELETE`).
    pub no_delete: bool,
}

impl Filters {
    /// Builds filters from the wire values of `WatchCreateRequest.filters`
    /// (`NOPUT = 0`, `NODELETE = 1`); unknown values are ignored, as etcd
    /// does.
    pub fn from_wire(values: &[i32]) -> Self {
        let mut f = Filters::default();
        for v in values {
            match *v {
                0 => f.no_put = true,
                1 => f.no_delete = true,
                _ => {}
            }
        }
        f
    }

    /// True if `ev` passes the filters.
    pub fn keeps(&self, ev: &Event) -> bool {
        if ev.r#type == EventType::Delete as i32 {
            !self.no_delete
        } else {
            !self.no_put
        }
    }
}

/// Store-wide identity of a watcher, never reused; it tells the responses
/// of a cancelled watcher apart from those of a newer watcher that reuses
/// its [`WatchId`] on the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatcherKey(pub(crate) u64);

/// An event as the store hands it to watchers: shared by every watcher
/// that gets it, and encoded at most once, however many watch streams
/// send it (a write watched by 1 000 watchers costs one encoding, not
/// 1 000).
#[derive(Debug, PartialEq)]
pub struct WatchEvent {
    event: Event,
    wire: OnceLock<Bytes>,
}

impl WatchEvent {
    /// Wraps `event`; nothing is encoded yet.
    pub fn new(event: Event) -> Self {
        WatchEvent {
            event,
            wire: OnceLock::new(),
        }
    }

    /// The event's protobuf encoding (the body of a `WatchResponse.events`
    /// entry), computed by the first caller and shared afterwards.
    pub fn encoded(&self) -> &Bytes {
        self.wire
            .get_or_init(|| Bytes::from(self.event.encode_to_vec()))
    }
}

impl Deref for WatchEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

impl From<Event> for WatchEvent {
    fn from(event: Event) -> Self {
        WatchEvent::new(event)
    }
}

/// What the store puts on a watch stream's channel.
///
/// Exactly one of these holds: `compact_revision != 0` (a compaction
/// notice: the watcher has been removed), `events` is empty (a progress
/// notification), or `events` holds the watcher's next events, in revision
/// order, never splitting one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchResponse {
    /// The watcher's id on its stream.
    pub watch_id: WatchId,
    /// The watcher that produced this response (see
    /// [`crate::WatchStream::is_current`]).
    pub watcher: WatcherKey,
    /// The events, shared with every other watcher that got them.
    pub events: Vec<Arc<WatchEvent>>,
    /// The header revision: for history catch-up, the store revision the
    /// batch was read at (it may be above the last event); for live events,
    /// the revision of the last event; for a progress notification, the
    /// current revision; 0 for a compaction notice.
    pub revision: i64,
    /// Non-zero: the watcher's next revision was compacted at this
    /// revision, and the watcher has been removed from the store.
    pub compact_revision: i64,
    /// The events came straight from one group of writes and may span
    /// several revisions. etcd sends live events one revision per
    /// message, with that revision in the header; the stream splits them
    /// (see [`revision_of`]).
    pub live: bool,
}

/// The revision of an event: its kv's `mod_revision` (set for DELETE
/// events too), 0 if it has no kv.
pub fn revision_of(ev: &Event) -> i64 {
    ev.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// The key of an event (empty if it has no kv).
pub(crate) fn key_of(ev: &Event) -> &[u8] {
    ev.kv.as_ref().map_or(&[][..], |kv| &kv.key[..])
}

/// The keys a watcher covers, etcd's `range_end` conventions already
/// applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchRange {
    /// Exactly one key.
    Key(Vec<u8>),
    /// `[start, end)`; `None` is no upper bound (`range_end == "\0"`).
    Span {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
}

impl WatchRange {
    /// Interprets `(key, range_end)` like a Range request; `None` if the
    /// range is empty.
    pub fn new(key: &[u8], end: &[u8]) -> Option<Self> {
        match KeyRange::new(key, end) {
            KeyRange::Single(k) => Some(WatchRange::Key(k.to_vec())),
            KeyRange::Span { start, end } => Some(WatchRange::Span {
                start: start.to_vec(),
                end: end.map(<[u8]>::to_vec),
            }),
            KeyRange::Empty => None,
        }
    }

    /// True if `key` is in the range (the definition the watcher group's
    /// interval tree is tested against).
    #[cfg(test)]
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            WatchRange::Key(k) => k.as_slice() == key,
            WatchRange::Span { start, end } => {
                key >= start.as_slice() && end.as_deref().is_none_or(|e| key < e)
            }
        }
    }
}

/// Which of the store's groups a watcher is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Has every event up to the store's published revision; gets new
    /// events from `notify`.
    Synced,
    /// Behind: caught up from history by the sync loop.
    Unsynced,
    /// Its channel was full; a response waits in the victim list.
    Victim,
}

/// One watcher (etcd `watcher`).
#[derive(Debug)]
pub(crate) struct Watcher {
    /// Its id on its stream.
    pub id: WatchId,
    pub range: WatchRange,
    /// The next revision this watcher must see: every matching event
    /// below it has been queued (or waits as its victim response), none
    /// at or above it has.
    pub next_rev: i64,
    pub filters: Filters,
    pub group: Group,
    /// The stream's channel (shared by all watchers of the stream).
    pub tx: StreamTx,
}

impl Watcher {
    /// Queues `resp` without waiting. A full channel gives the response
    /// back; a closed one (the stream is going away and will cancel its
    /// watchers) counts as delivered.
    pub fn send(&self, resp: WatchResponse) -> Result<(), WatchResponse> {
        match self.tx.send(vec![resp]) {
            Ok(()) => Ok(()),
            Err(batch) => batch.into_iter().next().map_or(Ok(()), Err),
        }
    }
}

/// The sending half of a watch stream's channel. The channel carries
/// batches: everything one published group gives the watchers of one
/// stream travels as one message, so its capacity counts groups, not
/// watchers (100 watchers on a stream would otherwise fill etcd's 128
/// slots with about one write).
#[derive(Debug, Clone)]
pub(crate) struct StreamTx {
    /// Tells streams apart, to batch per stream.
    pub id: u64,
    pub tx: mpsc::Sender<Vec<WatchResponse>>,
}

/// Responses gathered per stream, so that each stream gets one batch.
#[derive(Default)]
pub(crate) struct PerStream(IdMap<u64, (StreamTx, Vec<WatchResponse>)>);

impl PerStream {
    /// Adds `resp` to the batch of `tx`'s stream; a stream's first
    /// response allocates room for `hint` (growing a batch watcher by
    /// watcher copied it each time it doubled).
    pub fn push(&mut self, tx: &StreamTx, resp: WatchResponse, hint: usize) {
        self.0
            .entry(tx.id)
            .or_insert_with(|| (tx.clone(), Vec::with_capacity(hint)))
            .1
            .push(resp);
    }

    /// Each stream's sender with its batch.
    pub fn into_batches(self) -> impl Iterator<Item = (StreamTx, Vec<WatchResponse>)> {
        self.0.into_values()
    }
}

impl StreamTx {
    /// Queues `batch` without waiting; a full channel gives it back, a
    /// closed one counts as delivered (see [`Watcher::send`]).
    pub fn send(&self, batch: Vec<WatchResponse>) -> Result<(), Vec<WatchResponse>> {
        let events = crate::watch_stream::events_in(&batch);
        match self.tx.try_send(batch) {
            Ok(()) => {
                if events > 0 {
                    crate::metrics::get().pending_events.add(events);
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b)) => Err(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::mvccpb::KeyValue;

    fn ev(ty: EventType) -> Event {
        Event {
            r#type: ty as i32,
            kv: Some(KeyValue::default()),
            prev_kv: None,
        }
    }

    #[test]
    fn filters_from_wire_values() {
        let f = Filters::from_wire(&[0, 7]);
        assert!(!f.keeps(&ev(EventType::Put)));
        assert!(f.keeps(&ev(EventType::Delete)));
        let f = Filters::from_wire(&[1]);
        assert!(f.keeps(&ev(EventType::Put)));
        assert!(!f.keeps(&ev(EventType::Delete)));
    }

    #[test]
    fn ranges_follow_range_end_conventions() {
        let single = WatchRange::new(b"foo", b"").unwrap();
        assert!(single.contains(b"foo") && !single.contains(b"foo1"));
        let prefix = WatchRange::new(b"foo", b"fop").unwrap();
        assert!(prefix.contains(b"foo") && prefix.contains(b"foo/x") && !prefix.contains(b"fop"));
        let from = WatchRange::new(b"b", b"\0").unwrap();
        assert!(from.contains(b"b") && from.contains(b"zzz") && !from.contains(b"a"));
        let all = WatchRange::new(b"\0", b"\0").unwrap();
        assert!(all.contains(b"\0") && all.contains(b"a"));
        assert_eq!(WatchRange::new(b"b", b"a"), None);
        assert_eq!(WatchRange::new(b"b", b"b"), None);
    }
}
