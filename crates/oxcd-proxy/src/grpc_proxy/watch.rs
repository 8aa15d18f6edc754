//! The Watch service of the proxy, with coalescing: client watches on the
//! same range share one upstream watch (a *broadcast*).
//!
//! - Each range has at most one *live* broadcast, started at the current
//!   revision. A client watch from "now", or from a revision the live one
//!   has not reached yet, joins it at once: 10 000 clients watching 100
//!   keys cost the cluster 100 watches.
//! - A watch from an older revision gets a *catch-up* broadcast of its own,
//!   which hands its watchers to the live one as soon as it is known to
//!   have delivered everything the live one has (its events reach the live
//!   one's position, or a periodic progress notification says it is
//!   synced), then ends.
//! - Every watcher keeps the next revision it may receive, so an event is
//!   delivered once, in order, whatever broadcast carries it — across a
//!   hand-off and across the loss of a member: a broken upstream watch is
//!   opened again on the next endpoint from the revision after the last
//!   one delivered.
//! - Each client stream has a bounded queue. A client that does not read
//!   it is cut off with `Unavailable` (etcd's clients then resume from
//!   their last revision) instead of holding up the others or growing the
//!   proxy's memory.
//! - Before a watch is created, the caller's token is checked against the
//!   range with a one-key serializable range (as etcd's proxy does), so a
//!   shared upstream watch never hands events to a caller the cluster
//!   would refuse.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::watch_client::WatchClient;
use oxcd_api::etcdserverpb::watch_create_request::FilterType;
use oxcd_api::etcdserverpb::watch_request::RequestUnion;
use oxcd_api::etcdserverpb::watch_server::Watch;
use oxcd_api::etcdserverpb::{
    RangeRequest, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse,
};
use oxcd_api::mvccpb::{event::EventType, Event};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::Metrics;
use super::namespace::Namespace;
use super::upstream::{copy_metadata, is_connection_failure, upcall, Upstream};

/// Responses a client stream may have queued before it counts as stuck.
const CLIENT_QUEUE: usize = 1024;

/// `Watch` for clients of the proxy.
#[derive(Debug)]
pub struct WatchProxy {
    hub: Arc<Hub>,
}

impl WatchProxy {
    /// The Watch service over `up`.
    pub fn new(up: Arc<Upstream>, ns: Namespace, metrics: Metrics) -> WatchProxy {
        WatchProxy {
            hub: Arc::new(Hub {
                up,
                ns,
                metrics,
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

/// What all watch streams share: the live broadcast of each range.
#[derive(Debug)]
struct Hub {
    up: Arc<Upstream>,
    ns: Namespace,
    metrics: Metrics,
    /// Live broadcasts by upstream range (`key`, `range_end`).
    live: Mutex<HashMap<(Bytes, Bytes), Handle>>,
    next_id: AtomicU64,
}

impl Hub {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<(Bytes, Bytes), Handle>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How to reach a running broadcast.
#[derive(Debug, Clone)]
struct Handle {
    id: u64,
    cmds: mpsc::UnboundedSender<Cmd>,
    /// The next revision it will deliver (everything before is delivered).
    next: Arc<AtomicI64>,
}

/// What a broadcast is told.
#[derive(Debug)]
enum Cmd {
    /// Take this watcher if it can (see [`Broadcast::join`]).
    Join(Watcher, oneshot::Sender<bool>),
    /// Take these watchers, caught up to `next`, if not past it already.
    HandOff(Vec<Watcher>, i64, oneshot::Sender<Result<(), Vec<Watcher>>>),
    /// Some watcher was cancelled: drop the cancelled ones.
    Sweep,
}

/// One client stream, as its watchers see it.
#[derive(Debug)]
struct Client {
    out: mpsc::Sender<WatchResponse>,
    /// Set once the client is gone or cut off; its watchers then end.
    closed: AtomicBool,
    cut_off: Notify,
    /// The auth token and leader requirement of the client's stream.
    metadata: MetadataMap,
}

impl Client {
    /// Queues a response; a full queue cuts the client off.
    fn deliver(&self, resp: WatchResponse) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        match self.out.try_send(resp) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.closed.store(true, Ordering::SeqCst);
                self.cut_off.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.closed.store(true, Ordering::SeqCst);
                false
            }
        }
    }
}

/// The state of one client watch that its broadcast and its client share.
#[derive(Debug)]
struct WatcherState {
    cancelled: AtomicBool,
    /// The broadcast that holds the watcher now (it moves on hand-off).
    home: Mutex<Option<mpsc::UnboundedSender<Cmd>>>,
}

impl WatcherState {
    fn set_home(&self, cmds: &mpsc::UnboundedSender<Cmd>) {
        *self.home.lock().unwrap_or_else(|p| p.into_inner()) = Some(cmds.clone());
    }

    /// Marks the watcher cancelled and tells its broadcast.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(h) = self.home.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = h.send(Cmd::Sweep);
        }
    }
}

/// One client watch.
#[derive(Debug, Clone)]
struct Watcher {
    id: i64,
    client: Arc<Client>,
    state: Arc<WatcherState>,
    /// The revision the client asked to start from (0: now).
    start: i64,
    /// The next revision this watcher may receive.
    next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress: bool,
}

impl Watcher {
    fn gone(&self) -> bool {
        self.state.cancelled.load(Ordering::Relaxed) || self.client.closed.load(Ordering::Relaxed)
    }

    /// Sends this watcher its part of an upstream response: the events at
    /// or after its next revision that its filters let through.
    fn send_events(&mut self, header: &ResponseHeader, events: &[Event]) -> bool {
        let mut out = Vec::new();
        let mut last = 0;
        for e in events {
            let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if rev < self.next {
                continue;
            }
            last = rev;
            let is_put = e.r#type == EventType::Put as i32;
            if (is_put && self.no_put) || (!is_put && self.no_delete) {
                continue;
            }
            let mut e = e.clone();
            if !self.prev_kv {
                e.prev_kv = None;
            }
            out.push(e);
        }
        if last >= self.next {
            self.next = last + 1;
        }
        if out.is_empty() {
            return true;
        }
        self.client.deliver(WatchResponse {
            header: Some(header.clone()),
            watch_id: self.id,
            events: out,
            ..Default::default()
        })
    }

    fn send(&self, resp: WatchResponse) -> bool {
        self.client.deliver(WatchResponse {
            watch_id: self.id,
            ..resp
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchProxy {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut metadata = MetadataMap::new();
        copy_metadata(req.metadata(), &mut metadata);
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let client = Arc::new(Client {
            out: tx,
            closed: AtomicBool::new(false),
            cut_off: Notify::new(),
            metadata,
        });
        let watchers: Arc<Mutex<HashMap<i64, Arc<WatcherState>>>> = Arc::default();
        let incoming = req.into_inner();
        tokio::spawn(serve_requests(
            self.hub.clone(),
            client.clone(),
            watchers.clone(),
            incoming,
        ));
        let cut = client.clone();
        Ok(Response::new(Box::pin(ClientStream {
            rx: ReceiverStream::new(rx),
            cut_off: Box::pin(async move { cut.cut_off.notified().await }),
            done: false,
            client,
            watchers,
        })))
    }
}

/// The response stream of one client; dropping it (the client went away)
/// cancels the client's watchers.
struct ClientStream {
    rx: ReceiverStream<WatchResponse>,
    cut_off: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
    client: Arc<Client>,
    watchers: Arc<Mutex<HashMap<i64, Arc<WatcherState>>>>,
}

impl Stream for ClientStream {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cut_off.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "etcd-proxy: watch stream is too slow; reconnect and resume",
            ))));
        }
        Pin::new(&mut self.rx).poll_next(cx).map(|o| o.map(Ok))
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.client.closed.store(true, Ordering::SeqCst);
        let all: Vec<_> = self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            s.cancel();
        }
    }
}

/// Reads one client's requests: creates and cancels its watches.
async fn serve_requests(
    hub: Arc<Hub>,
    client: Arc<Client>,
    watchers: Arc<Mutex<HashMap<i64, Arc<WatcherState>>>>,
    mut incoming: Streaming<WatchRequest>,
) {
    let mut next_id = 0i64;
    while let Ok(Some(req)) = incoming.message().await {
        if client.closed.load(Ordering::Relaxed) {
            return;
        }
        match req.request_union {
            Some(RequestUnion::CreateRequest(cr)) => {
                let id = {
                    let taken = watchers.lock().unwrap_or_else(|p| p.into_inner());
                    if cr.watch_id > 0 {
                        if taken.contains_key(&cr.watch_id) {
                            client.deliver(refused(cr.watch_id, "etcdserver: duplicate watch ID"));
                            continue;
                        }
                        cr.watch_id
                    } else {
                        while taken.contains_key(&next_id) {
                            next_id += 1;
                        }
                        next_id
                    }
                };
                if let Some(w) = create(&hub, &client, id, cr).await {
                    watchers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, w);
                }
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let state = watchers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&c.watch_id);
                if let Some(s) = state {
                    s.cancel();
                    client.deliver(WatchResponse {
                        header: Some(ResponseHeader::default()),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    });
                }
            }
            // etcd's proxy ignores progress requests too.
            Some(RequestUnion::ProgressRequest(_)) | None => {}
        }
    }
}

/// A create answered with created + canceled and a reason.
fn refused(id: i64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: Some(ResponseHeader::default()),
        watch_id: id,
        created: true,
        canceled: true,
        cancel_reason: reason.to_string(),
        ..Default::default()
    }
}

/// Checks the caller may read the range, then puts the watcher on a
/// broadcast. `None` when the watch was refused.
async fn create(
    hub: &Arc<Hub>,
    client: &Arc<Client>,
    id: i64,
    mut cr: WatchCreateRequest,
) -> Option<Arc<WatcherState>> {
    let valid = cr.range_end.is_empty() || cr.range_end.as_ref() == [0] || cr.range_end > cr.key;
    // Refusals carry etcd's invalid watch ID (-1), as etcd's proxy and
    // members answer; the ID is not used up.
    if !valid {
        client.deliver(refused(-1, ""));
        return None;
    }
    hub.ns.watch_create(&mut cr);
    if let Err(e) = check_permission(hub, client, &cr).await {
        client.deliver(refused(-1, e.message()));
        return None;
    }
    let state = Arc::new(WatcherState {
        cancelled: AtomicBool::new(false),
        home: Mutex::new(None),
    });
    let w = Watcher {
        id,
        client: client.clone(),
        state: state.clone(),
        start: cr.start_revision.max(0),
        next: cr.start_revision.max(0),
        no_put: cr.filters.contains(&(FilterType::Noput as i32)),
        no_delete: cr.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: cr.prev_kv,
        progress: cr.progress_notify,
    };
    let range = (cr.key.clone(), cr.range_end.clone());
    // A live broadcast may end between looking it up and joining it; then
    // look again (bounded: the third miss starts a broadcast of its own).
    for _ in 0..3 {
        let live = hub.live().get(&range).cloned();
        if let Some(h) = live {
            if w.start == 0 || w.start >= h.next.load(Ordering::SeqCst) {
                let (tx, rx) = oneshot::channel();
                if h.cmds.send(Cmd::Join(w.clone(), tx)).is_ok() && rx.await == Ok(true) {
                    return Some(state);
                }
            }
            if w.start != 0 {
                break;
            }
            continue;
        }
        if w.start != 0 {
            break;
        }
        let mut live = hub.live();
        if live.contains_key(&range) {
            continue;
        }
        let h = Broadcast::spawn(hub.clone(), range.clone(), 0, true, w.clone());
        live.insert(range, h);
        return Some(state);
    }
    Broadcast::spawn(hub.clone(), range, w.start, false, w);
    Some(state)
}

/// etcd's proxy check: a one-key, count-only serializable range over the
/// watched range, with the caller's token.
async fn check_permission(
    hub: &Hub,
    client: &Client,
    cr: &WatchCreateRequest,
) -> Result<(), Status> {
    let (key, range_end) = if cr.key.is_empty() {
        (Bytes::from_static(&[0]), Bytes::from_static(&[0]))
    } else {
        (cr.key.clone(), cr.range_end.clone())
    };
    let r = RangeRequest {
        key,
        range_end,
        serializable: true,
        count_only: true,
        limit: 1,
        ..Default::default()
    };
    let mut from = Request::new(());
    *from.metadata_mut() = client.metadata.clone();
    hub.up
        .unary(true, upcall!(KvClient, range, &from, r))
        .await
        .map(|_| ())
}

/// One upstream watch and the client watchers it feeds.
struct Broadcast {
    hub: Arc<Hub>,
    id: u64,
    range: (Bytes, Bytes),
    live: bool,
    cmds_tx: mpsc::UnboundedSender<Cmd>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    next: Arc<AtomicI64>,
    /// Whether upstream answered the create (watchers before it wait in
    /// `pending`).
    created: bool,
    last_header: ResponseHeader,
    watchers: Vec<Watcher>,
    pending: Vec<Watcher>,
    /// The metadata (token) the upstream watch is opened with: its first
    /// watcher's.
    metadata: MetadataMap,
    /// What this broadcast adds to `watchers_coalescing` now.
    counted: i64,
}

/// Why a broadcast's upstream stream ended.
enum Ended {
    /// Every watcher is gone.
    Empty,
    /// Upstream cancelled the watch (compaction, permission): told to the
    /// watchers.
    Cancelled,
    /// The stream broke: open it again (after a connection failure on the
    /// endpoint given).
    Broken(Option<usize>),
    /// Handed every watcher to the live broadcast.
    HandedOff,
}

impl Broadcast {
    fn spawn(
        hub: Arc<Hub>,
        range: (Bytes, Bytes),
        start: i64,
        live: bool,
        first: Watcher,
    ) -> Handle {
        let (cmds_tx, cmds) = mpsc::unbounded_channel();
        let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(AtomicI64::new(start));
        first.state.set_home(&cmds_tx);
        let b = Broadcast {
            metadata: first.client.metadata.clone(),
            hub,
            id,
            range,
            live,
            cmds_tx: cmds_tx.clone(),
            cmds,
            next: next.clone(),
            created: false,
            last_header: ResponseHeader::default(),
            watchers: Vec::new(),
            pending: vec![first],
            counted: 0,
        };
        tokio::spawn(b.run());
        Handle {
            id,
            cmds: cmds_tx,
            next,
        }
    }

    fn next(&self) -> i64 {
        self.next.load(Ordering::SeqCst)
    }

    fn advance(&self, to: i64) {
        self.next.fetch_max(to, Ordering::SeqCst);
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.stream().await {
                Ended::Empty | Ended::Cancelled | Ended::HandedOff => break,
                Ended::Broken(endpoint) => {
                    if let Some(i) = endpoint {
                        self.hub.up.failed(i);
                    }
                    if self.all_gone() {
                        break;
                    }
                    // Keep serving commands while waiting to reconnect.
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            c = self.cmds.recv() => match c {
                                Some(c) => self.command(c),
                                None => break,
                            },
                        }
                    }
                    if self.all_gone() {
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        self.finish();
    }

    fn all_gone(&mut self) -> bool {
        self.sweep();
        self.watchers.is_empty() && self.pending.is_empty()
    }

    /// Leaves the hub and refuses whatever still arrives.
    fn finish(mut self) {
        if self.live {
            let mut live = self.hub.live();
            if live.get(&self.range).is_some_and(|h| h.id == self.id) {
                live.remove(&self.range);
            }
        }
        self.cmds.close();
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                Cmd::Join(_, reply) => {
                    let _ = reply.send(false);
                }
                Cmd::HandOff(ws, _, reply) => {
                    let _ = reply.send(Err(ws));
                }
                Cmd::Sweep => {}
            }
        }
        self.watchers.clear();
        self.recount();
    }

    /// Brings `watchers_coalescing` up to date: every watcher beyond the
    /// first of a broadcast is one coalesced.
    fn recount(&mut self) {
        let now = self.watchers.len().saturating_sub(1) as i64;
        self.hub.metrics.watchers_coalescing.add(now - self.counted);
        self.counted = now;
    }

    /// One upstream watch stream, until it ends.
    async fn stream(&mut self) -> Ended {
        let (i, ch) = self.hub.up.channel();
        let start = if self.live && !self.created {
            0
        } else {
            self.next()
        };
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.range.0.clone(),
                range_end: self.range.1.clone(),
                start_revision: start,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            })),
        };
        // The sender stays open for the stream's life: dropping it would
        // half-close the upstream stream.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(create);
        let mut req = Request::new(ReceiverStream::new(rx));
        *req.metadata_mut() = self.metadata.clone();
        let mut upstream = match WatchClient::new(ch)
            .max_decoding_message_size(usize::MAX)
            .watch(req)
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => return self.failure(i, e),
        };
        loop {
            tokio::select! {
                c = self.cmds.recv() => {
                    let Some(c) = c else { return Ended::Empty };
                    self.command(c);
                    if self.all_gone() {
                        return Ended::Empty;
                    }
                }
                m = upstream.message() => match m {
                    Ok(Some(resp)) => {
                        if let Some(end) = self.response(resp) {
                            return end;
                        }
                        if !self.live {
                            if let Some(end) = self.try_hand_off().await {
                                return end;
                            }
                        }
                        if self.all_gone() {
                            return Ended::Empty;
                        }
                    }
                    Ok(None) => return Ended::Broken(None),
                    Err(e) => return self.failure(i, e),
                }
            }
        }
    }

    fn failure(&mut self, endpoint: usize, e: Status) -> Ended {
        if is_connection_failure(&e) {
            return Ended::Broken(Some(endpoint));
        }
        // An answer, not a broken connection (permission, no leader…):
        // the watchers end with it.
        let reason = e.message().to_string();
        for w in self.pending.drain(..).chain(self.watchers.drain(..)) {
            w.send(refused(w.id, &reason));
        }
        Ended::Cancelled
    }

    fn command(&mut self, c: Cmd) {
        match c {
            Cmd::Join(w, reply) => {
                let ok = self.join(w);
                let _ = reply.send(ok);
            }
            Cmd::HandOff(ws, next, reply) => {
                if self.created && !self.all_gone() && self.next() <= next {
                    for w in ws {
                        w.state.set_home(&self.cmds_tx);
                        if !w.gone() {
                            self.add(w);
                        }
                    }
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(ws));
                }
            }
            Cmd::Sweep => self.sweep(),
        }
    }

    /// A live broadcast takes watchers from now, and from revisions it has
    /// not delivered yet.
    fn join(&mut self, mut w: Watcher) -> bool {
        if !self.live || (w.start != 0 && w.start < self.next()) {
            return false;
        }
        w.state.set_home(&self.cmds_tx);
        if !self.created {
            self.pending.push(w);
            return true;
        }
        let mut header = self.last_header.clone();
        header.revision = self.next() - 1;
        if w.start == 0 {
            w.next = self.next();
        }
        w.send(WatchResponse {
            header: Some(header),
            created: true,
            ..Default::default()
        });
        self.add(w);
        true
    }

    fn add(&mut self, w: Watcher) {
        self.watchers.push(w);
        self.recount();
    }

    fn sweep(&mut self) {
        self.watchers.retain(|w| !w.gone());
        self.pending.retain(|w| !w.gone());
        self.recount();
    }

    /// Handles one upstream response; `Some` when the broadcast ends.
    fn response(&mut self, mut resp: WatchResponse) -> Option<Ended> {
        let header = resp.header.clone().unwrap_or_default();
        if resp.canceled {
            for w in self.pending.drain(..).chain(self.watchers.drain(..)) {
                w.send(WatchResponse {
                    header: Some(header.clone()),
                    created: !self.created,
                    canceled: true,
                    compact_revision: resp.compact_revision,
                    cancel_reason: resp.cancel_reason.clone(),
                    ..Default::default()
                });
            }
            return Some(Ended::Cancelled);
        }
        if resp.compact_revision > 0 {
            for w in self.pending.drain(..).chain(self.watchers.drain(..)) {
                w.send(WatchResponse {
                    header: Some(header.clone()),
                    compact_revision: resp.compact_revision,
                    canceled: true,
                    ..Default::default()
                });
            }
            return Some(Ended::Cancelled);
        }
        if resp.created {
            if !self.created {
                self.created = true;
                if self.live {
                    self.advance(header.revision + 1);
                }
                self.last_header = header.clone();
                for mut w in std::mem::take(&mut self.pending) {
                    w.next = if w.start > 0 { w.start } else { self.next() };
                    w.send(WatchResponse {
                        header: Some(header.clone()),
                        created: true,
                        ..Default::default()
                    });
                    self.add(w);
                }
            }
            return None;
        }
        self.last_header = header.clone();
        if resp.events.is_empty() {
            // A progress notification. Only the periodic ones (carrying the
            // watch's own ID) say the watch is synced — the server sends
            // them to no other — so nothing at or below the header
            // revision is still to come. The answer to a progress *request*
            // (ID -1) says no such thing: etcd 3.4 answers at once, even
            // while the watch still catches up. The proxy asks none.
            if resp.watch_id < 0 {
                return None;
            }
            self.advance(header.revision + 1);
            for w in &mut self.watchers {
                w.next = w.next.max(header.revision + 1);
                if w.progress && !w.gone() {
                    w.send(WatchResponse {
                        header: Some(header.clone()),
                        ..Default::default()
                    });
                }
            }
            return None;
        }
        for e in &mut resp.events {
            self.hub.ns.event(e);
        }
        if let Some(last) = resp
            .events
            .iter()
            .filter_map(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            .max()
        {
            self.advance(last + 1);
        }
        let mut delivered = 0u64;
        for w in &mut self.watchers {
            if !w.gone() && w.send_events(&header, &resp.events) {
                delivered += 1;
            }
        }
        if delivered > 1 {
            self.hub.metrics.events_coalescing.inc_by(delivered - 1);
        }
        None
    }

    /// A catch-up broadcast hands its watchers to the live one once it is
    /// no further behind.
    async fn try_hand_off(&mut self) -> Option<Ended> {
        let live = self.hub.live().get(&self.range).cloned()?;
        if live.next.load(Ordering::SeqCst) > self.next()
            || self.watchers.is_empty()
            || !self.pending.is_empty()
        {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        // Copies go; the originals stay here until the live broadcast
        // says it took them.
        let ws = self.watchers.clone();
        if live.cmds.send(Cmd::HandOff(ws, self.next(), tx)).is_err() {
            return None;
        }
        match rx.await {
            Ok(Ok(())) => {
                self.watchers.clear();
                self.recount();
                Some(Ended::HandedOff)
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }
}
