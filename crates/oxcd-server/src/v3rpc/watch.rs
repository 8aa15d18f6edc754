//! The `etcdserverpb.Watch` service (etcd `etcdserver/api/v3rpc/watch.go`).
//!
//! One bidi stream carries many watchers. Each stream is one [`Session`]
//! that owns everything about it: the [`WatchStream`] (its watchers in the
//! watchable store), the receiver of their responses, the per-watcher
//! options, and the queue of messages ready to go out. The response stream
//! tonic polls *is* the session, so there is no extra task and no lock:
//! - a message is produced only when tonic can send one, so a client that
//!   does not read stops the session from draining its store channel, and
//!   its watchers become victims in the store (never blocking writers);
//! - requests are handled in order with the responses, so a watcher's
//!   `created` reply always goes out before its first events (etcd buffers
//!   them for the same effect);
//! - dropping the stream (client gone) drops the `WatchStream`, which
//!   cancels every watcher.
//!
//! Events leave as the store shared them, encoded once for every watcher
//! (`watch_wire`); what queues up for a watcher while its client is slow
//! is merged into fewer responses (`watch_outbox`).
//!
//! A client half-close does not end the stream: watchers keep reporting
//! until the RPC itself ends (etcd does the same). When the member stops,
//! every stream ends with `etcdserver: server stopped` (Unavailable).

use super::watch_outbox::Outbox;
use super::watch_wire::WatchOut;
use crate::core::Core;
use crate::propose::EventSink;
use futures::Stream;
use oxcd_api::etcdserverpb::watch_request::RequestUnion;
use oxcd_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use oxcd_api::mvccpb::Event;
use oxcd_api::EtcdError;
use oxcd_mvcc::id_hash::IdMap;
use oxcd_mvcc::{Filters, WatchStream, WatchableStore};
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Interval, MissedTickBehavior};
use tonic::{Request, Status, Streaming};

/// The watch id of responses that belong to no watcher (clientv3
/// `InvalidWatchID`): failed creates and progress replies.
const INVALID_WATCH_ID: i64 = -1;
/// etcd's default progress-notify interval.
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// A session stops taking store responses while this many of its own are
/// waiting to be sent.
const DRAIN_LIMIT: usize = 4096;
/// Responses waiting on a stream from which a watcher's next events join
/// its waiting response (etcd's per-stream channel size, `chanBufLen`).
const MERGE_BACKLOG: usize = 128;
/// The shortest progress-notify interval etcd accepts.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The watchable store receives each published group's events from the
/// apply stage.
impl EventSink for WatchableStore {
    fn publish(&self, events: Vec<Event>) {
        self.notify(events);
    }
}

/// The effective progress-notify interval for the configured value
/// (`--experimental-watch-progress-notify-interval`): 0 means etcd's
/// default of 10 minutes, and values below 100 ms are raised to it.
pub fn progress_interval(configured: Duration) -> Duration {
    if configured.is_zero() {
        DEFAULT_PROGRESS_INTERVAL
    } else {
        configured.max(MIN_PROGRESS_INTERVAL)
    }
}

/// The Watch service: opens a [`Session`] per call (mounted by
/// [`super::watch_wire::WatchServer`]).
pub struct WatchService {
    core: Arc<Core>,
    fragment_bytes: usize,
    progress_interval: Duration,
}

impl WatchService {
    /// Creates the service. `fragment_bytes` is the size from which a
    /// response of a watcher that asked for fragments is split
    /// (`--max-request-bytes` + 512 KiB); `progress_interval` the
    /// effective progress-notify interval (see [`progress_interval`]).
    pub fn new(core: Arc<Core>, fragment_bytes: usize, progress_interval: Duration) -> Self {
        Self {
            core,
            fragment_bytes,
            progress_interval,
        }
    }

    /// Opens the session of one Watch call: the stream of its responses.
    pub async fn open(&self, request: Request<Streaming<WatchRequest>>) -> Session {
        // The stream's credentials are its opening metadata; a simple
        // token's entry is waited for once here, and each create checks
        // them again (a token may expire while the stream lives).
        let (meta, ext, inbound) = request.into_parts();
        let headers = meta.into_headers();
        let mut creds_ext = http::Extensions::new();
        if let Some(cn) = ext.get::<crate::auth::ClientCn>() {
            creds_ext.insert(cn.clone());
        }
        if let Err(e) = self.core.who(&headers, &creds_ext).await {
            tracing::debug!(error = %e, "watch stream opened with unusable credentials");
        }
        let mut session = Session::new(
            self.core.clone(),
            inbound,
            self.fragment_bytes,
            self.progress_interval,
        );
        session.creds = (headers, creds_ext);
        session
    }
}

/// What a watcher asked for beyond its range (etcd keeps these in the
/// server stream's `progress`, `prevKV` and `fragment` maps).
#[derive(Debug, Clone, Copy, Default)]
struct WatchOpts {
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// No events were sent since the last progress tick.
    quiet: bool,
}

/// One Watch RPC (etcd `serverWatchStream`), and the stream of its
/// responses.
pub struct Session {
    core: Arc<Core>,
    inbound: Streaming<WatchRequest>,
    /// False once the client half-closed.
    inbound_open: bool,
    stream: WatchStream,
    responses: oxcd_mvcc::WatchReceiver,
    opts: IdMap<i64, WatchOpts>,
    /// Messages ready to send, in order.
    out: Outbox,
    ticker: Interval,
    /// Resolves when the member stops.
    closed: Pin<Box<dyn Future<Output = ()> + Send>>,
    fragment_bytes: usize,
    finished: bool,
    /// The stream's token metadata and client-certificate CN.
    creds: (http::HeaderMap, http::Extensions),
}

impl Session {
    fn new(
        core: Arc<Core>,
        inbound: Streaming<WatchRequest>,
        fragment_bytes: usize,
        interval: Duration,
    ) -> Self {
        let (stream, responses) = core.watchable.new_watch_stream();
        // Like etcd, each stream's ticks get up to 10 % of jitter so that
        // many streams do not notify at the same moment.
        let jitter = interval.mul_f64(rand::random::<f64>() / 10.0);
        let period = interval + jitter;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let store = core.watchable.clone();
        let closed = Box::pin(async move { store.closed().await });
        Session {
            core,
            inbound,
            inbound_open: true,
            stream,
            responses,
            opts: IdMap::default(),
            out: Outbox::default(),
            ticker,
            closed,
            fragment_bytes,
            finished: false,
            creds: Default::default(),
        }
    }

    fn header(&self, revision: i64) -> Option<oxcd_api::etcdserverpb::ResponseHeader> {
        Some(self.core.header(revision))
    }

    fn on_request(&mut self, req: WatchRequest) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c),
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => {
                // 3.4.23 answers at once; clients hand it to every watcher.
                self.out.push(WatchOut::Message(WatchResponse {
                    header: self.header(self.stream.rev()),
                    watch_id: INVALID_WATCH_ID,
                    ..Default::default()
                }));
            }
            None => {}
        }
    }

    /// Cancels watcher `id`; an unknown id gets no reply at all, as in
    /// etcd.
    fn cancel(&mut self, id: i64) {
        if self.stream.cancel(id) {
            self.opts.remove(&id);
            self.out.push(WatchOut::Message(WatchResponse {
                header: self.header(self.stream.rev()),
                watch_id: id,
                canceled: true,
                ..Default::default()
            }));
        }
    }

    fn create(&mut self, c: WatchCreateRequest) {
        let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
        let rev = self.stream.rev();
        let start = if c.start_revision == 0 {
            rev + 1
        } else {
            c.start_revision
        };
        let filters = Filters::from_wire(&c.filters);
        if let Err(e) = self.permit(&c) {
            // Refused: created and cancelled at once; no event is sent.
            self.out.push(WatchOut::Message(WatchResponse {
                header: self.header(rev),
                watch_id: INVALID_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: crate::auth::go_status_text(&e),
                ..Default::default()
            }));
            return;
        }
        let reply = match self
            .stream
            .watch(c.watch_id, key, &c.range_end, start, filters)
        {
            Ok(id) => {
                let opts = WatchOpts {
                    prev_kv: c.prev_kv,
                    fragment: c.fragment,
                    progress_notify: c.progress_notify,
                    quiet: true,
                };
                self.opts.insert(id, opts);
                WatchResponse {
                    header: self.header(rev),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                }
            }
            Err(e) => WatchResponse {
                header: self.header(rev),
                watch_id: INVALID_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: e.to_string(),
                ..Default::default()
            },
        };
        self.out.push(WatchOut::Message(reply));
    }

    /// Whether the stream's sender may watch what `c` asks for (checked at
    /// create only: a running watch keeps going after a revoke, as etcd's).
    fn permit(&self, c: &WatchCreateRequest) -> Result<(), EtcdError> {
        let view = self.core.auth_view();
        let creds = crate::auth::Credentials::of(&self.creds.0, &self.creds.1);
        if !view.enabled() && creds == crate::auth::Credentials::None {
            return Ok(());
        }
        let who = self.core.auth.resolve_now(creds)?;
        crate::auth::checks::watch_create(&view, &who, &c.key, &c.range_end)
    }

    fn on_store_response(&mut self, resp: oxcd_mvcc::WatchResponse) {
        if !self.stream.is_current(&resp) {
            return; // from a watcher cancelled since
        }
        let id = resp.watch_id;
        if resp.compact_revision != 0 {
            // The store removed the watcher; forget it here too.
            self.stream.cancel(id);
            self.opts.remove(&id);
            self.out.push(WatchOut::Message(WatchResponse {
                header: self.header(0),
                watch_id: id,
                canceled: true,
                compact_revision: resp.compact_revision,
                ..Default::default()
            }));
            return;
        }
        let Some(opts) = self.opts.get_mut(&id) else {
            return;
        };
        if !resp.events.is_empty() {
            opts.quiet = false;
        }
        let opts = *opts;
        if !opts.prev_kv && !opts.fragment {
            // The common case: events go out as the store shared them,
            // their encodings spliced in (see `watch_wire`). While the
            // client keeps up, live events go out a revision per response,
            // as etcd sends them; once it lags by a stream channel's worth
            // of responses (where etcd turns its watchers into victims and
            // catches them up many revisions at a time), what follows joins
            // the watcher's waiting response (see `watch_outbox`).
            if self.out.len() >= MERGE_BACKLOG {
                let head = WatchResponse {
                    header: self.header(resp.revision),
                    watch_id: id,
                    ..Default::default()
                };
                self.out.merge(WatchOut::Events {
                    head,
                    events: resp.events,
                });
                return;
            }
            let pieces = if resp.live {
                split_by_revision(resp.events, |e| oxcd_mvcc::revision_of(e))
            } else {
                vec![(resp.revision, resp.events)]
            };
            for (revision, events) in pieces {
                let head = WatchResponse {
                    header: self.header(revision),
                    watch_id: id,
                    ..Default::default()
                };
                self.out.push(WatchOut::Events { head, events });
            }
            return;
        }
        let mut events: Vec<Event> = resp.events.iter().map(|e| Event::clone(e)).collect();
        if opts.prev_kv {
            self.core.watchable.fill_prev_kv(&mut events);
        }
        let pieces = if resp.live {
            split_by_revision(events, oxcd_mvcc::revision_of)
        } else {
            vec![(resp.revision, events)]
        };
        for (revision, events) in pieces {
            let msg = WatchResponse {
                header: self.header(revision),
                watch_id: id,
                events,
                ..Default::default()
            };
            if opts.fragment {
                for piece in fragments(msg, self.fragment_bytes) {
                    self.out.push(WatchOut::Message(piece));
                }
            } else {
                self.out.push(WatchOut::Message(msg));
            }
        }
    }

    /// etcd's progress ticker: a watcher that asked for progress
    /// notifications and got no events since the last tick is sent one
    /// (if it is synced); then every such watcher starts a quiet period.
    fn on_progress_tick(&mut self) {
        for (id, o) in &mut self.opts {
            if !o.progress_notify {
                continue;
            }
            if o.quiet {
                self.stream.request_progress(*id);
            }
            o.quiet = true;
        }
    }
}

impl Stream for Session {
    type Item = Result<WatchOut, Status>;

    /// The next message for the client; `None` ends the stream. Sources
    /// are polled in a fixed order: the member stopping, the client's
    /// requests (so a create is answered before the events that follow
    /// it), the store's responses, the progress ticker.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let s = &mut *self;
        loop {
            if let Some(m) = s.out.pop() {
                return Poll::Ready(Some(Ok(m)));
            }
            if s.finished {
                return Poll::Ready(None);
            }
            if s.closed.as_mut().poll(cx).is_ready() {
                // The member is stopping: end the stream so that the
                // connection can close.
                s.finished = true;
                return Poll::Ready(Some(Err(EtcdError::Stopped.into())));
            }
            if s.inbound_open {
                match Pin::new(&mut s.inbound).poll_next(cx) {
                    Poll::Ready(Some(Ok(r))) => {
                        s.on_request(r);
                        continue;
                    }
                    Poll::Ready(None) => {
                        s.inbound_open = false;
                        continue;
                    }
                    Poll::Ready(Some(Err(status))) => {
                        super::metrics::stream_receive_failed(&status, "watch");
                        s.finished = true;
                        return Poll::Ready(Some(Err(EtcdError::WatchCanceled.into())));
                    }
                    Poll::Pending => {}
                }
            }
            // Take everything the store has queued (within bounds), so
            // that what piled up while the client was slow is merged.
            let mut got = false;
            while s.out.len() < DRAIN_LIMIT {
                let Poll::Ready(Some(resp)) = s.responses.poll_recv(cx) else {
                    break;
                };
                s.on_store_response(resp);
                got = true;
            }
            if got {
                continue;
            }
            if s.ticker.poll_tick(cx).is_ready() {
                s.on_progress_tick();
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// Live events in one message per revision, each headed by its revision.
fn split_by_revision<E>(events: Vec<E>, revision: impl Fn(&E) -> i64) -> Vec<(i64, Vec<E>)> {
    let first = events.first().map_or(0, &revision);
    let last = events.last().map_or(0, &revision);
    if first == last {
        // One revision (the usual case): no copy.
        return vec![(first, events)];
    }
    let mut out: Vec<(i64, Vec<E>)> = Vec::new();
    for ev in events {
        let rev = revision(&ev);
        match out.last_mut() {
            Some((r, evs)) if *r == rev => evs.push(ev),
            _ => out.push((rev, vec![ev])),
        }
    }
    out
}

/// Splits `msg` like etcd's `sendFragments`: a response of at least
/// `limit` bytes with two or more events goes out in pieces of fewer than
/// `limit` bytes (a single event may exceed it), every piece but the last
/// marked `fragment`.
fn fragments(msg: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if msg.events.len() < 2 || msg.encoded_len() < limit {
        return vec![msg];
    }
    let mut base = msg;
    let events = std::mem::take(&mut base.events);
    base.fragment = true;
    let base_len = base.encoded_len();
    let mut out = Vec::new();
    let mut cur = base.clone();
    let mut cur_len = base_len;
    for ev in events {
        let len = prost::encoding::message::encoded_len(11, &ev);
        if !cur.events.is_empty() && cur_len + len >= limit {
            out.push(std::mem::replace(&mut cur, base.clone()));
            cur_len = base_len;
        }
        cur.events.push(ev);
        cur_len += len;
    }
    cur.fragment = false;
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::mvccpb::KeyValue;

    fn ev(rev: i64, value_len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec().into(),
                value: vec![b'x'; value_len].into(),
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn live_events_split_per_revision() {
        let pieces = split_by_revision(
            vec![ev(3, 0), ev(3, 0), ev(4, 0), ev(6, 0)],
            oxcd_mvcc::revision_of,
        );
        let shape: Vec<(i64, usize)> = pieces.iter().map(|(r, e)| (*r, e.len())).collect();
        assert_eq!(shape, [(3, 2), (4, 1), (6, 1)]);
    }

    #[test]
    fn fragments_follow_etcd() {
        let msg = WatchResponse {
            watch_id: 1,
            events: (0..10).map(|i| ev(i, 100)).collect(),
            ..Default::default()
        };
        assert_eq!(fragments(msg.clone(), usize::MAX).len(), 1);
        let pieces = fragments(msg.clone(), 350);
        assert!(pieces.len() > 1);
        let (last, rest) = pieces.split_last().unwrap();
        assert!(!last.fragment && rest.iter().all(|p| p.fragment));
        assert!(pieces
            .iter()
            .all(|p| p.encoded_len() < 350 || p.events.len() == 1));
        let total: usize = pieces.iter().map(|p| p.events.len()).sum();
        assert_eq!(total, 10);
        // One event is never split, whatever its size.
        let one = WatchResponse {
            events: vec![ev(1, 1000)],
            ..Default::default()
        };
        assert_eq!(fragments(one, 10).len(), 1);
    }

    #[test]
    fn progress_interval_defaults_and_minimum() {
        assert_eq!(progress_interval(Duration::ZERO), DEFAULT_PROGRESS_INTERVAL);
        assert_eq!(
            progress_interval(Duration::from_millis(5)),
            MIN_PROGRESS_INTERVAL
        );
        assert_eq!(
            progress_interval(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }
}
