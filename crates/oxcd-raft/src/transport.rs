//! The peer transport: raft messages between members over the peer URLs,
//! in etcd's protocol (`rafthttp`, see [`crate::rafthttp`]) with every
//! peer, or oxcd's own (`oxcdpeerpb.Peer`) with an oxcd member too old
//! for etcd's.
//!
//! Sending side: one task per remote member (a link) keeps a connection to
//! one of its URLs: it dials the peer's etcd stream to receive, and sends
//! over the stream the peer attached here (or the pipeline), or over one
//! long-lived `Peer/Raft` client stream. [`Transport::send`] never blocks:
//! it puts the message on that member's bounded queue and, if the queue is
//! full or the member is unknown, drops it and says so. Raft tolerates lost
//! messages (it retries), and a partitioned or slow member can therefore
//! never stall the raft loop or the other members. When the connection
//! breaks, the link reconnects with capped backoff, discarding what queued
//! up meanwhile (stale heartbeats and appends would only be rejected).
//!
//! Receiving side: etcd's handlers ([`crate::rafthttp::serve`]) and
//! [`PeerService`] check the cluster ID and the addressee, and hand
//! messages to the local [`Inbox`].
//!
//! Raft snapshots travel apart from the messages, one transfer each with
//! the backend file ([`crate::snapshot_transfer`]): `Peer/Snapshot` to an
//! oxcd member, `POST /raft/snapshot` in etcd's format to an etcd member.
//!
//! Activity: a peer is active since its link last connected (etcd's
//! `ActiveSince`), and inactive from the moment the link fails. A silently
//! dead connection (a partition that drops packets) is noticed within
//! etcd's 5 s stream read timeout (link heartbeats every 5/3 s), or by
//! HTTP/2 pings within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] on
//! oxcd's streams; the strict reconfiguration checks rely on that.

use crate::rafthttp;
pub use crate::snapshot_transfer::{BackendSource, SnapshotJob, SnapshotReport};
use crate::tls_error::{self, Side};
use oxcd_api::oxcdpeerpb::peer_client::PeerClient;
use oxcd_api::oxcdpeerpb::peer_server::Peer;
use oxcd_api::oxcdpeerpb::{
    HelloRequest, HelloResponse, MembersRequest, MembersResponse, PeerMember, RaftBatch,
    RaftStreamEnd, SnapshotAck, SnapshotChunk,
};
use prost::bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// Messages queued per remote member before new ones are dropped
/// (etcd's stream buffer is 4096 as well).
const QUEUE_DEPTH: usize = 4096;
/// Most messages sent in one batch.
const MAX_BATCH: usize = 256;
/// Backoff bounds between reconnection attempts. The cap is etcd's stream
/// retry interval (100 ms): a restarted etcd 3.4 member advances its
/// election ticks once any peer connects and campaigns (no pre-vote) if
/// the leader has not reached it two ticks later, so a leader that waited
/// up to a second to redial caused up to three elections per restart in
/// the rolling roll-back test; with 100 ms, at most one.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// How often a failing link is reported (etcd's `statusErrorInterval`).
const UNHEALTHY_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// A peer connection that received nothing for this long is pinged...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// ...and closed if the ping is not answered within this.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long the greeting of oxcd's protocol may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the round trip to a connected peer is measured.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Where received raft messages go (the raft loop's mailbox).
pub trait Inbox: Send + Sync + 'static {
    /// Takes a batch of encoded raft messages sent by member `from`.
    fn deliver(&self, from: u64, messages: Vec<Bytes>);
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No such member is known to the transport.
    #[error("unknown peer {0:x}")]
    UnknownPeer(u64),
    /// The member's queue is full: it is slow or unreachable.
    #[error("peer {0:x} is not keeping up; message dropped")]
    Full(u64),
}

struct PeerHandle {
    queue: mpsc::Sender<Bytes>,
    /// Streams an etcd member dialled to receive this member's messages.
    attached: Arc<rafthttp::Attached>,
    /// Whether the link last spoke etcd's protocol (the peer is etcd).
    etcd: Arc<AtomicBool>,
    urls: Vec<String>,
    active: Arc<Activity>,
    stop: CancellationToken,
}

/// Since when a link has been up (`None`: down), written by the link.
#[derive(Default)]
struct Activity(Mutex<Option<Instant>>);

impl Activity {
    fn set(&self, up: bool) -> bool {
        let mut since = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let was = since.is_some();
        *since = up.then(|| since.unwrap_or_else(Instant::now));
        was
    }

    fn since(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends raft messages to the other members. Cheap to share (`Arc`).
pub struct Transport {
    local_id: u64,
    cluster_id: u64,
    tls: PeerTls,
    peers: Mutex<HashMap<u64, PeerHandle>>,
    /// Fires when a peer says this member was removed from the cluster.
    removed: Arc<tokio::sync::Notify>,
    /// Links are spawned here, so peers can be added from any thread (the
    /// apply stage applies membership changes).
    runtime: tokio::runtime::Handle,
    /// Where links to etcd members deliver what they read (the raft loop
    /// exists only after the links are started).
    inbox: Arc<OnceLock<Arc<dyn Inbox>>>,
    /// Which peer protocol links speak (`OXCD_PEER_PROTOCOL`).
    protocol: Protocol,
}

/// Which peer protocol links speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// etcd's, and oxcd's own for a peer that does not serve etcd's (an
    /// oxcd build older than etcd's protocol). The default: etcd's is
    /// measured as fast as oxcd's own (BENCHMARKS.md, "Peer protocols")
    /// and is the one etcd members speak.
    Either,
    /// `OXCD_PEER_PROTOCOL=etcd`: etcd's only.
    Etcd,
    /// `OXCD_PEER_PROTOCOL=oxcd`: oxcd's gRPC streams only (to measure).
    Oxcd,
}

impl Protocol {
    fn from_env() -> Protocol {
        match std::env::var("OXCD_PEER_PROTOCOL").as_deref() {
            Ok("etcd") => Protocol::Etcd,
            Ok("oxcd") => Protocol::Oxcd,
            Ok(other) => {
                tracing::warn!("OXCD_PEER_PROTOCOL={other:?} is neither etcd nor oxcd; ignored");
                Protocol::Either
            }
            Err(_) => Protocol::Either,
        }
    }
}

impl Transport {
    /// Creates a transport for member `local_id` of `cluster_id`. `tls` is
    /// used for `https` peer URLs. Must be called inside a tokio runtime,
    /// which then runs the links.
    pub fn new(local_id: u64, cluster_id: u64, tls: PeerTls) -> Arc<Self> {
        Arc::new(Self {
            local_id,
            cluster_id,
            tls,
            peers: Mutex::new(HashMap::new()),
            removed: Arc::new(tokio::sync::Notify::new()),
            runtime: tokio::runtime::Handle::current(),
            inbox: Arc::new(OnceLock::new()),
            protocol: Protocol::from_env(),
        })
    }

    /// This member's ID.
    pub fn local_id(&self) -> u64 {
        self.local_id
    }

    /// The cluster's ID.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// Sets where links to etcd members deliver received messages; the
    /// first call wins.
    pub fn set_inbox(&self, inbox: Arc<dyn Inbox>) {
        let _ = self.inbox.set(inbox);
    }

    /// Whether member `id` speaks only etcd's peer protocol (an etcd
    /// member), as its link last found.
    pub fn speaks_etcd(&self, id: u64) -> bool {
        self.lock()
            .get(&id)
            .is_some_and(|p| p.etcd.load(Ordering::Relaxed))
    }

    /// Sends `method path` with `body` (of `content_type`) to a peer URL
    /// over etcd's HTTP/1.1 peer protocol (lease forwarding, promotion,
    /// HashKV toward etcd members); the answer's status and body.
    ///
    /// # Errors
    /// The request could not be made or the answer not read.
    pub async fn call(
        &self,
        url: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(http::StatusCode, Bytes), String> {
        use http_body_util::BodyExt;
        let id = rafthttp::dial::Identity {
            from: self.local_id,
            to: 0,
            cluster_id: self.cluster_id,
        };
        let mut req = rafthttp::dial::request(method, path, &id, body);
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        let resp = rafthttp::dial::send(url, &self.tls, req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// The stream slots of member `id`, for etcd's stream handler; `None`
    /// for a member this transport does not know.
    pub fn attached(&self, id: u64) -> Option<Arc<rafthttp::Attached>> {
        self.lock().get(&id).map(|p| p.attached.clone())
    }

    /// Starts talking to member `id` at `urls` (replacing an earlier entry).
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let active = Arc::new(Activity::default());
        let stop = CancellationToken::new();
        let attached = Arc::new(rafthttp::Attached::default());
        let etcd = Arc::new(AtomicBool::new(false));
        let link = Link {
            protocol: self.protocol,
            attached: attached.clone(),
            etcd: etcd.clone(),
            inbox: self.inbox.clone(),
            from: self.local_id,
            to: id,
            cluster_id: self.cluster_id,
            urls: urls.clone(),
            tls: self.tls.clone(),
            active: active.clone(),
            removed: self.removed.clone(),
        };
        self.runtime.spawn(link.run(rx, stop.clone()));
        let old = self.lock().insert(
            id,
            PeerHandle {
                queue,
                attached,
                etcd,
                urls,
                active,
                stop,
            },
        );
        if let Some(old) = old {
            old.stop.cancel();
        }
    }

    /// Stops talking to member `id` after `delay`, so that messages already
    /// queued for it (such as the commit of its own removal) still go out.
    pub fn remove_peer_later(self: &Arc<Self>, id: u64, delay: Duration) {
        let this = self.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            this.remove_peer(id);
        });
    }

    /// Stops talking to member `id`.
    pub fn remove_peer(&self, id: u64) {
        if let Some(p) = self.lock().remove(&id) {
            p.stop.cancel();
            p.attached.detach_all();
        }
    }

    /// Queues one encoded raft message for member `to`; never blocks.
    pub fn send(&self, to: u64, message: Bytes) -> Result<(), SendError> {
        let peers = self.lock();
        let p = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        p.queue.try_send(message).map_err(|_| {
            crate::metrics::get()
                .peer_sent_failures
                .with_label_values(&[format!("{to:x}").as_str()])
                .inc();
            SendError::Full(to)
        })
    }

    /// Starts sending a raft snapshot with the backend to `job.to` on its
    /// own task (etcd's snapshot sender); the outcome goes to `job.report`.
    /// Never blocks.
    ///
    /// # Errors
    /// [`SendError::UnknownPeer`]; nothing is sent or reported then.
    pub fn send_snapshot(&self, job: SnapshotJob) -> Result<(), SendError> {
        let urls = self
            .lock()
            .get(&job.to)
            .map(|p| p.urls.clone())
            .ok_or(SendError::UnknownPeer(job.to))?;
        let route = crate::snapshot_transfer::Route {
            etcd: self.speaks_etcd(job.to),
            from: self.local_id,
            cluster_id: self.cluster_id,
            urls,
            tls: self.tls.clone(),
        };
        self.runtime
            .spawn(crate::snapshot_transfer::send(route, job));
        Ok(())
    }

    /// Whether member `id` is known to the transport.
    pub fn has_peer(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Whether a stream to member `id` is currently established.
    pub fn is_active(&self, id: u64) -> bool {
        self.active_since(id).is_some()
    }

    /// Since when the stream to member `id` has been up without a break
    /// (etcd's `Transporter.ActiveSince`); `None` if it is down or `id` is
    /// unknown.
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.lock().get(&id).and_then(|p| p.active.since())
    }

    /// A channel to a peer URL with this transport's TLS settings, for
    /// requests other than raft messages (e.g. forwarding to the leader).
    /// The channel reconnects by itself after a failure.
    pub async fn channel(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        connect(url, &self.tls).await
    }

    /// Resolves once a peer reports this member removed from the cluster.
    pub async fn removed(&self) {
        self.removed.notified().await;
    }

    /// Stops every link.
    pub fn stop(&self) {
        for (_, p) in self.lock().drain() {
            p.stop.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PeerHandle>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One outgoing link: reconnects and streams until stopped.
struct Link {
    from: u64,
    to: u64,
    cluster_id: u64,
    urls: Vec<String>,
    tls: PeerTls,
    active: Arc<Activity>,
    removed: Arc<tokio::sync::Notify>,
    attached: Arc<rafthttp::Attached>,
    etcd: Arc<AtomicBool>,
    inbox: Arc<OnceLock<Arc<dyn Inbox>>>,
    protocol: Protocol,
}

impl Link {
    /// `{Local, Remote}` labels of the peer network metrics.
    fn link_labels(&self) -> [String; 2] {
        [format!("{:x}", self.from), format!("{:x}", self.to)]
    }

    /// The link went down after it had been up (etcd's
    /// `etcd_network_disconnected_peers_total`).
    fn count_disconnect(&self) {
        let m = crate::metrics::get();
        let labels = self.link_labels();
        m.active_peers.with_label_values(&labels).set(0);
        m.disconnected_peers.with_label_values(&labels).inc();
    }

    async fn run(self, mut rx: mpsc::Receiver<Bytes>, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0usize;
        // Like etcd's prober: while the link keeps failing, warn every
        // UNHEALTHY_LOG_INTERVAL (`health check for peer .. could not connect`).
        let mut last_warned: Option<std::time::Instant> = None;
        // The last TLS failure of this streak: when the server refuses the
        // handshake, a request may only see "connection closed".
        let mut tls_cause: Option<String> = None;
        // Whether oxcd's gRPC streams worked last rather than etcd's.
        let mut grpc = false;
        loop {
            let url = &self.urls[attempt % self.urls.len().max(1)];
            attempt += 1;
            let streamed = tokio::select! {
                _ = stop.cancelled() => {
                    if self.active.set(false) {
                        self.count_disconnect();
                    }
                    return;
                }
                r = self.session(url, &mut rx, &mut grpc) => r,
            };
            if self.active.set(false) {
                self.count_disconnect();
                // The link worked for a while: a new failure streak starts.
                last_warned = None;
                tls_cause = None;
            }
            match streamed {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    last_warned = None;
                    tls_cause = None;
                }
                Err(e) if e.message() == REMOVED_MESSAGE => self.removed.notify_one(),
                Err(e) => {
                    if let Some(t) = tls_error::describe_tls(&e, Side::Client) {
                        tls_cause = Some(t);
                    }
                    let error = tls_cause.clone().unwrap_or_else(|| e.message().to_string());
                    tracing::debug!(to = %format!("{:x}", self.to), %url, %error, "peer stream failed");
                    let now = std::time::Instant::now();
                    let last = last_warned.get_or_insert(now);
                    if now.duration_since(*last) >= UNHEALTHY_LOG_INTERVAL {
                        *last = now;
                        tracing::warn!(
                            "health check for peer {:x} could not connect: {error}",
                            self.to
                        );
                    }
                }
            }
            // Whatever queued while disconnected is stale by now.
            while rx.try_recv().is_ok() {}
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection to the peer at `url`: etcd's protocol, or oxcd's
    /// gRPC streams for a peer that answers etcd's stream path with a
    /// plain 404 (see [`Protocol`]); `grpc` keeps that finding.
    async fn session(
        &self,
        url: &str,
        rx: &mut mpsc::Receiver<Bytes>,
        grpc: &mut bool,
    ) -> Result<(), Status> {
        match self.protocol {
            Protocol::Etcd => return self.etcd_once(url, rx).await,
            Protocol::Oxcd => return self.stream_once(url, rx).await,
            Protocol::Either => {}
        }
        if !*grpc {
            let r = self.etcd_once(url, rx).await;
            if !matches!(&r, Err(e) if e.code() == tonic::Code::Unimplemented) {
                return r;
            }
            // An oxcd peer too old to serve etcd's protocol: from now on,
            // oxcd's gRPC streams (a peer that is merely down is retried
            // the etcd way, so both sides keep to one protocol).
            *grpc = true;
        }
        let r = self.stream_once(url, rx).await;
        if r.is_err() && self.active.since().is_none() {
            // Maybe upgraded since: etcd's protocol next time.
            *grpc = false;
        }
        r
    }

    /// etcd's protocol: dials the peer's message stream to receive, and
    /// sends over what the peer attached here (or the pipeline) until the
    /// stream it sends on fails.
    async fn etcd_once(&self, url: &str, rx: &mut mpsc::Receiver<Bytes>) -> Result<(), Status> {
        let id = rafthttp::dial::Identity {
            from: self.from,
            to: self.to,
            cluster_id: self.cluster_id,
        };
        let status = |e: rafthttp::link::LinkError| match e {
            rafthttp::link::LinkError::Removed => Status::permission_denied(REMOVED_MESSAGE),
            e @ rafthttp::link::LinkError::Unsupported(_) => Status::unimplemented(e.to_string()),
            other => Status::unavailable(other.to_string()),
        };
        let (body, oxcd) = rafthttp::link::dial_stream(url, &self.tls, &id)
            .await
            .map_err(status)?;
        let Some(inbox) = self.inbox.get().cloned() else {
            return Err(Status::unavailable("raft loop not started"));
        };
        // An oxcd peer says so; lease forwarding, promotions, HashKV and
        // snapshots then use oxcd's services with it.
        self.etcd.store(!oxcd, Ordering::Relaxed);
        if !self.active.set(true) {
            tracing::info!(
                local = %format!("{:x}", self.from),
                remote = %format!("{:x}", self.to),
                peer = if oxcd { "oxcd" } else { "etcd" },
                "established a TCP streaming connection with remote peer (etcd's peer protocol)"
            );
        }
        // etcd's prober: the round trip to the peer every few seconds.
        let rtt = crate::metrics::get()
            .peer_round_trip
            .with_label_values(&[format!("{:x}", self.to).as_str()]);
        let (probe_url, probe_tls) = (url.to_string(), self.tls.clone());
        let _probe = AbortOnDrop(tokio::spawn(async move {
            loop {
                let started = Instant::now();
                if rafthttp::dial::get(&probe_url, &probe_tls, "/raft/probing")
                    .await
                    .is_ok()
                {
                    rtt.observe(started.elapsed().as_secs_f64());
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        }));
        crate::metrics::get()
            .active_peers
            .with_label_values(&self.link_labels())
            .set(1);
        tokio::select! {
            e = rafthttp::link::receive(body, self.to, inbox.as_ref()) => Err(status(e)),
            () = rafthttp::link::send(url, &self.tls, &id, &self.attached, rx) => Ok(()),
        }
    }

    /// Connects to `url` and forwards queued messages until the stream or
    /// the queue ends.
    async fn stream_once(&self, url: &str, rx: &mut mpsc::Receiver<Bytes>) -> Result<(), Status> {
        let channel = connect(url, &self.tls)
            .await
            .map_err(|e| Status::unavailable(tls_error::describe(&e, Side::Client)))?;
        let mut client = PeerClient::new(channel);
        let hello = HelloRequest {
            cluster_id: self.cluster_id,
            from: self.from,
            to: self.to,
            server_version: String::new(),
        };
        // The failure count exists from the first connection, at 0, so
        // that an alert on its rate sees the peer before it fails.
        crate::metrics::get()
            .peer_sent_failures
            .with_label_values(&[format!("{:x}", self.to).as_str()]);
        let rtt = crate::metrics::get()
            .peer_round_trip
            .with_label_values(&[format!("{:x}", self.to).as_str()]);
        let started = Instant::now();
        // An etcd member may never answer oxcd's greeting.
        tokio::time::timeout(HELLO_TIMEOUT, client.hello(hello.clone()))
            .await
            .map_err(|_| Status::unavailable("peer did not answer oxcd's greeting"))??;
        self.etcd.store(false, Ordering::Relaxed);
        rtt.observe(started.elapsed().as_secs_f64());
        // etcd's prober: the round trip to the peer, measured every few
        // seconds while the link is up (`etcd_network_peer_round_trip_time_seconds`).
        let mut prober = client.clone();
        let probe = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let started = Instant::now();
                if prober.hello(hello.clone()).await.is_err() {
                    return;
                }
                rtt.observe(started.elapsed().as_secs_f64());
            }
        });
        let _probe = AbortOnDrop(probe);
        let (tx, crx) = mpsc::channel::<RaftBatch>(8);
        let mut call = tokio::spawn(async move { client.raft(ReceiverStream::new(crx)).await });
        self.active.set(true);
        crate::metrics::get()
            .active_peers
            .with_label_values(&self.link_labels())
            .set(1);
        let sent_bytes = crate::metrics::get()
            .peer_sent_bytes
            .with_label_values(&[format!("{:x}", self.to).as_str()]);
        loop {
            // Watching the call while idle marks a dead peer inactive at
            // once, not only when the next message fails to go out.
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return Ok(()),
                },
                ended = &mut call => return stream_end(ended),
            };
            let mut messages = vec![first];
            while messages.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => messages.push(m),
                    Err(_) => break,
                }
            }
            sent_bytes.inc_by(messages.iter().map(|m| m.len() as u64).sum());
            let batch = RaftBatch {
                cluster_id: self.cluster_id,
                from: self.from,
                to: self.to,
                messages,
            };
            if tx.send(batch).await.is_err() || call.is_finished() {
                return stream_end(call.await);
            }
        }
    }
}

/// Why a raft stream call ended: always a failure, since a healthy stream
/// only ends when this side stops sending.
fn stream_end(
    ended: Result<Result<Response<RaftStreamEnd>, Status>, tokio::task::JoinError>,
) -> Result<(), Status> {
    match ended {
        Ok(Ok(_)) => Err(Status::unavailable("peer closed the stream")),
        Ok(Err(s)) => Err(s),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// How this member authenticates peers it dials over `https`.
#[derive(Clone, Default)]
pub enum PeerTls {
    /// No TLS settings: `https` peer URLs use tonic's defaults.
    #[default]
    Plain,
    /// Verify the peer against the given CA, present the given identity:
    /// tonic's form for oxcd's protocol, rustls's (when a CA is given) for
    /// etcd's HTTP/1.1 protocol.
    Verified(ClientTlsConfig, Option<Arc<rustls::ClientConfig>>),
    /// `--peer-auto-tls`: the peers' certificates are self-signed, so they
    /// are not verified (etcd sets `InsecureSkipVerify` likewise); the
    /// given rustls config carries this member's own certificate if any.
    SkipVerify(Arc<rustls::ClientConfig>),
}

/// A rustls client config that accepts any server certificate, for
/// `--peer-auto-tls` (self-signed peers), optionally presenting a client
/// certificate chain and key (PEM).
pub fn skip_verify_config(
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)));
    let mut cfg = with_identity(builder, identity)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A rustls client config that verifies peers against the CA in `ca_pem`
/// and presents `identity` (PEM chain and key) if given, for etcd's peer
/// protocol (HTTP/1.1, no ALPN needed).
pub fn verified_config(
    ca_pem: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| rustls::Error::General(e.to_string()))?;
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(Arc::new(with_identity(builder, identity)?))
}

/// Finishes a client config, presenting `identity` (PEM chain and key).
fn with_identity(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    match identity {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_auth_cert(certs, key)
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts every server certificate, as etcd's `InsecureSkipVerify` for
/// auto-TLS peers. Handshake signatures are checked where ring can; etcd's
/// own auto-TLS certificates are ECDSA P-521, which ring cannot verify, and
/// those are taken unchecked: the certificate itself is unverified, so
/// proving possession of its key would prove nothing.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAny {
    fn verify(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
        tls13: bool,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        if dss.scheme == rustls::SignatureScheme::ECDSA_NISTP521_SHA512 {
            return Ok(rustls::client::danger::HandshakeSignatureValid::assertion());
        }
        let algs = &self.0.signature_verification_algorithms;
        if tls13 {
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        } else {
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify(message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        let mut schemes = self.0.signature_verification_algorithms.supported_schemes();
        schemes.push(rustls::SignatureScheme::ECDSA_NISTP521_SHA512);
        schemes
    }
}

/// Opens a channel to a peer URL (`http`, `https`, `unix`, `unixs`).
pub(crate) async fn connect(url: &str, tls: &PeerTls) -> Result<Channel, tonic::transport::Error> {
    if let Some(path) = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("unixs://"))
    {
        let path = path.to_string();
        return Endpoint::from_static("http://unix.socket")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await;
    }
    let https = url.starts_with("https://");
    if let (true, PeerTls::SkipVerify(cfg)) = (https, tls) {
        let plain = format!("http://{}", &url["https://".len()..]);
        let cfg = cfg.clone();
        return endpoint(&plain)?
            .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
                let cfg = cfg.clone();
                async move { tls_dial(uri, cfg).await }
            }))
            .await;
    }
    let mut ep = endpoint(url)?;
    if let (true, PeerTls::Verified(t, _)) = (https, tls) {
        ep = ep.tls_config(t.clone())?;
    }
    ep.connect().await
}

fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

async fn tls_dial(
    uri: http::Uri,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    let host = uri.host().unwrap_or("localhost").to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

/// The receiving side of the peer protocol.
pub struct PeerService {
    local_id: u64,
    cluster_id: u64,
    inbox: Arc<dyn Inbox>,
    directory: Option<Arc<dyn Directory>>,
    /// Where received backend snapshots are saved (`member/snap`); without
    /// it snapshots are refused.
    snap_dir: Option<std::path::PathBuf>,
}

/// Who is in the cluster, as served to joining members.
pub trait Directory: Send + Sync + 'static {
    /// The current members.
    fn members(&self) -> Vec<PeerMember>;
    /// Whether `id` was removed from the cluster.
    fn is_removed(&self, _id: u64) -> bool {
        false
    }
}

/// What a member that was removed from the cluster is told by the others
/// (etcd answers its removed peers with HTTP 410 Gone).
pub const REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// Asks the members at `urls`, in turn, for the cluster they are part of
/// (etcd's `GetClusterFromRemotePeers`).
pub async fn fetch_members(urls: &[String], tls: &PeerTls) -> Result<MembersResponse, Status> {
    let mut last = Status::unavailable("no peer URL to ask");
    for url in urls {
        let channel = match connect(url, tls).await {
            Ok(c) => c,
            Err(e) => {
                last = Status::unavailable(format!("{url}: {e}"));
                continue;
            }
        };
        match PeerClient::new(channel).members(MembersRequest {}).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl PeerService {
    /// Serves member `local_id` of `cluster_id`, delivering into `inbox`.
    pub fn new(local_id: u64, cluster_id: u64, inbox: Arc<dyn Inbox>) -> Self {
        Self {
            local_id,
            cluster_id,
            inbox,
            directory: None,
            snap_dir: None,
        }
    }

    /// Also accepts backend snapshots, saving them in `dir`.
    pub fn with_snap_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.snap_dir = Some(dir);
        self
    }

    /// Also answers `Members` from `directory`.
    pub fn with_directory(mut self, directory: Arc<dyn Directory>) -> Self {
        self.directory = Some(directory);
        self
    }

    fn check_from(&self, from: u64) -> Result<(), Status> {
        if self.directory.as_ref().is_some_and(|d| d.is_removed(from)) {
            return Err(Status::permission_denied(REMOVED_MESSAGE));
        }
        Ok(())
    }

    fn check(&self, cluster_id: u64, to: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: local {:x}, remote {:x}",
                self.cluster_id, cluster_id
            )));
        }
        if to != self.local_id {
            return Err(Status::failed_precondition(format!(
                "message for member {to:x} reached member {:x}",
                self.local_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(&self, r: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let r = r.into_inner();
        self.check(r.cluster_id, r.to)?;
        self.check_from(r.from)?;
        Ok(Response::new(HelloResponse {
            cluster_id: self.cluster_id,
            member_id: self.local_id,
            server_version: String::new(),
        }))
    }

    async fn raft(
        &self,
        r: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftStreamEnd>, Status> {
        let mut stream = r.into_inner();
        let mut received: Option<(u64, prometheus::IntCounter)> = None;
        while let Some(batch) = stream.next().await {
            let batch = batch.inspect_err(|_| {
                if let Some((from, _)) = &received {
                    crate::metrics::get()
                        .peer_received_failures
                        .with_label_values(&[format!("{from:x}").as_str()])
                        .inc();
                }
            })?;
            self.check(batch.cluster_id, batch.to)?;
            self.check_from(batch.from)?;
            let counter = match &received {
                Some((from, c)) if *from == batch.from => c,
                _ => {
                    let c = crate::metrics::get()
                        .peer_received_bytes
                        .with_label_values(&[format!("{:x}", batch.from).as_str()]);
                    &received.insert((batch.from, c)).1
                }
            };
            counter.inc_by(batch.messages.iter().map(|m| m.len() as u64).sum());
            self.inbox.deliver(batch.from, batch.messages);
        }
        Ok(Response::new(RaftStreamEnd {}))
    }

    async fn members(
        &self,
        _r: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            members: self
                .directory
                .as_ref()
                .map(|d| d.members())
                .unwrap_or_default(),
        }))
    }

    async fn snapshot(
        &self,
        r: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let Some(dir) = &self.snap_dir else {
            return Err(Status::unimplemented("this member does not take snapshots"));
        };
        let mut stream = r.into_inner();
        let got = crate::snapshot_transfer::receive(dir, &mut stream, |c| {
            self.check(c.cluster_id, c.to)?;
            self.check_from(c.from)
        })
        .await?;
        self.inbox.deliver(got.from, vec![got.message]);
        Ok(Response::new(SnapshotAck {
            accepted: true,
            reason: String::new(),
        }))
    }
}

/// Ends a helper task when the link it serves ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
