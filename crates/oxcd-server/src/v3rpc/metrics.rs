//! gRPC server metrics as go-grpc-prometheus names them (etcd registers
//! it on its gRPC server): `grpc_server_started_total`,
//! `grpc_server_handled_total{grpc_code}`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`, and with `--metrics extensive`
//! `grpc_server_handling_seconds`; plus etcd's
//! `etcd_network_client_grpc_{received,sent}_bytes_total`.
//!
//! Every method's series exist from the start with the value 0, as
//! go-grpc-prometheus pre-initialises them. A call's counters are resolved
//! once, from its path, into a [`Method`]; counting then costs a few
//! atomic additions. A call ends when its `grpc-status` goes out; a stream
//! the client drops before that (an ended `etcdctl watch`) is `Canceled`.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use std::pin::Pin;
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

/// gRPC codes by number, with the names go-grpc-prometheus gives them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;

/// How a method streams (the `grpc_type` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Unary,
    ServerStream,
    BidiStream,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Unary => "unary",
            Kind::ServerStream => "server_stream",
            Kind::BidiStream => "bidi_stream",
        }
    }
}

/// The methods of etcd's client API, with their shapes.
const METHODS: &[(&str, &str, Kind)] = {
    use Kind::{BidiStream as B, ServerStream as S, Unary as U};
    &[
        ("etcdserverpb.KV", "Range", U),
        ("etcdserverpb.KV", "Put", U),
        ("etcdserverpb.KV", "DeleteRange", U),
        ("etcdserverpb.KV", "Txn", U),
        ("etcdserverpb.KV", "Compact", U),
        ("etcdserverpb.Watch", "Watch", B),
        ("etcdserverpb.Lease", "LeaseGrant", U),
        ("etcdserverpb.Lease", "LeaseRevoke", U),
        ("etcdserverpb.Lease", "LeaseKeepAlive", B),
        ("etcdserverpb.Lease", "LeaseTimeToLive", U),
        ("etcdserverpb.Lease", "LeaseLeases", U),
        ("etcdserverpb.Cluster", "MemberAdd", U),
        ("etcdserverpb.Cluster", "MemberRemove", U),
        ("etcdserverpb.Cluster", "MemberUpdate", U),
        ("etcdserverpb.Cluster", "MemberList", U),
        ("etcdserverpb.Cluster", "MemberPromote", U),
        ("etcdserverpb.Maintenance", "Alarm", U),
        ("etcdserverpb.Maintenance", "Status", U),
        ("etcdserverpb.Maintenance", "Defragment", U),
        ("etcdserverpb.Maintenance", "Hash", U),
        ("etcdserverpb.Maintenance", "HashKV", U),
        ("etcdserverpb.Maintenance", "Snapshot", S),
        ("etcdserverpb.Maintenance", "MoveLeader", U),
        ("etcdserverpb.Maintenance", "Downgrade", U),
        ("etcdserverpb.Auth", "AuthEnable", U),
        ("etcdserverpb.Auth", "AuthDisable", U),
        ("etcdserverpb.Auth", "AuthStatus", U),
        ("etcdserverpb.Auth", "Authenticate", U),
        ("etcdserverpb.Auth", "UserAdd", U),
        ("etcdserverpb.Auth", "UserGet", U),
        ("etcdserverpb.Auth", "UserList", U),
        ("etcdserverpb.Auth", "UserDelete", U),
        ("etcdserverpb.Auth", "UserChangePassword", U),
        ("etcdserverpb.Auth", "UserGrantRole", U),
        ("etcdserverpb.Auth", "UserRevokeRole", U),
        ("etcdserverpb.Auth", "RoleAdd", U),
        ("etcdserverpb.Auth", "RoleGet", U),
        ("etcdserverpb.Auth", "RoleList", U),
        ("etcdserverpb.Auth", "RoleDelete", U),
        ("etcdserverpb.Auth", "RoleGrantPermission", U),
        ("etcdserverpb.Auth", "RoleRevokePermission", U),
        ("v3lockpb.Lock", "Lock", U),
        ("v3lockpb.Lock", "Unlock", U),
        ("v3electionpb.Election", "Campaign", U),
        ("v3electionpb.Election", "Proclaim", U),
        ("v3electionpb.Election", "Leader", U),
        ("v3electionpb.Election", "Observe", S),
        ("v3electionpb.Election", "Resign", U),
        ("grpc.health.v1.Health", "Check", U),
        ("grpc.health.v1.Health", "Watch", S),
    ]
};

/// One method's counters.
pub(crate) struct Method {
    path: String,
    pub(crate) kind: Kind,
    started: IntCounter,
    handled: [IntCounter; 17],
    received: IntCounter,
    sent: IntCounter,
    handling: Option<Histogram>,
}

struct Table {
    methods: Vec<Method>,
    /// Path → index in `methods`.
    by_path: std::collections::HashMap<String, usize>,
    bytes_received: IntCounter,
    bytes_sent: IntCounter,
}

/// `--metrics extensive`, set once before the table is built.
static EXTENSIVE: OnceLock<bool> = OnceLock::new();

static TABLE: LazyLock<Table> = LazyLock::new(build);

/// Registers the gRPC metrics; `extensive` adds the handling-time
/// histogram. The first call decides.
pub(crate) fn init_with(extensive: bool) {
    let _ = EXTENSIVE.set(extensive);
    LazyLock::force(&TABLE);
}

/// Registers the gRPC metrics (without the histogram unless
/// [`init_with`] asked for it first).
pub(crate) fn init() {
    LazyLock::force(&TABLE);
}

fn build() -> Table {
    let r = prometheus::default_registry();
    let labels = ["grpc_type", "grpc_service", "grpc_method"];
    let vec = |name: &str, help: &str, labels: &[&str]| {
        let v = IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
        let _ = r.register(Box::new(v.clone()));
        v
    };
    let started = vec(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &labels,
    );
    let handled = vec(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    );
    let received = vec(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &labels,
    );
    let sent = vec(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &labels,
    );
    let handling = EXTENSIVE.get().copied().unwrap_or(false).then(|| {
        let h = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            ),
            &labels,
        )
        .unwrap_or_else(|e| panic!("metric grpc_server_handling_seconds: {e}"));
        let _ = r.register(Box::new(h.clone()));
        h
    });
    let methods: Vec<Method> = METHODS
        .iter()
        .map(|&(service, method, kind)| {
            let l = [kind.label(), service, method];
            Method {
                path: format!("/{service}/{method}"),
                kind,
                started: started.with_label_values(&l),
                handled: CODES.map(|code| handled.with_label_values(&[l[0], l[1], l[2], code])),
                received: received.with_label_values(&l),
                sent: sent.with_label_values(&l),
                handling: handling.as_ref().map(|h| h.with_label_values(&l)),
            }
        })
        .collect();
    let counter = |name: &str, help: &str| {
        let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
        let _ = r.register(Box::new(c.clone()));
        c
    };
    let by_path = methods
        .iter()
        .enumerate()
        .map(|(i, m): (usize, &Method)| (m.path.clone(), i))
        .collect();
    Table {
        methods,
        by_path,
        bytes_received: counter(
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
        ),
        bytes_sent: counter(
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
        ),
    }
}

/// The counters of the method at `path`, if it is one of etcd's.
pub(crate) fn method(path: &str) -> Option<&'static Method> {
    TABLE.by_path.get(path).map(|&i| &TABLE.methods[i])
}

/// A call being counted: started now.
pub(crate) struct CallMetrics {
    method: &'static Method,
    /// When it started, if the handling-time histogram is on.
    started: Option<Instant>,
    done: bool,
}

impl CallMetrics {
    /// Counts the start of a call of `method`.
    pub(crate) fn start(method: &'static Method) -> CallMetrics {
        method.started.inc();
        if method.kind == Kind::Unary {
            method.received.inc();
        }
        CallMetrics {
            method,
            started: method.handling.as_ref().map(|_| Instant::now()),
            done: false,
        }
    }

    /// Ends a unary call answered without a wrapped body (the lean KV
    /// path): its status and the bytes each way.
    pub(crate) fn finish_unary(mut self, code: usize, received: usize, sent: usize) {
        TABLE.bytes_received.inc_by(received as u64);
        if sent > 0 {
            TABLE.bytes_sent.inc_by(sent as u64);
        }
        self.finish(code);
    }

    fn finish(&mut self, code: usize) {
        if self.done {
            return;
        }
        self.done = true;
        let m = self.method;
        // A code gRPC does not define counts as Unknown.
        m.handled[if code < CODES.len() { code } else { 2 }].inc();
        if m.kind == Kind::Unary && code == 0 {
            m.sent.inc();
        }
        if let (Some(h), Some(t)) = (&m.handling, self.started) {
            h.observe(t.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallMetrics {
    fn drop(&mut self) {
        // The answer was dropped before its status went out: the client
        // went away (go-grpc-prometheus sees the handler's Canceled).
        self.finish(CANCELED);
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()
}

/// Counts the answer of a call: its status if it is in the headers
/// (trailers-only), else its messages and the trailers' status.
pub(crate) fn count_response(
    mut call: CallMetrics,
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = status_code(resp.headers()) {
        call.finish(code);
        return resp;
    }
    resp.map(|inner| {
        tonic::body::Body::new(CountedResponse {
            inner,
            call,
            messages: Messages::default(),
        })
    })
}

/// Counts the gRPC messages in a byte stream by their 5-byte prefixes,
/// however the messages are cut into or packed in chunks.
#[derive(Debug, Default)]
struct Messages {
    /// Bytes of the current message's body still to come.
    remaining: u64,
    /// Prefix bytes of the next message seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
}

impl Messages {
    /// Feeds `data`; returns how many messages started in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                started += 1;
                self.prefix_len = 0;
                let p = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
            }
        }
        started
    }
}

struct CountedResponse {
    inner: tonic::body::Body,
    call: CallMetrics,
    messages: Messages,
}

impl Body for CountedResponse {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                TABLE.bytes_sent.inc_by(data.len() as u64);
                let method = self.call.method;
                if method.kind != Kind::Unary {
                    let n = self.messages.feed(data);
                    if n > 0 {
                        method.sent.inc_by(n);
                    }
                }
            } else if let Some(code) = frame.trailers_ref().and_then(status_code) {
                self.call.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that counts the bytes (and, for streams, the messages)
/// it delivers.
pub(crate) struct CountedRequest<B> {
    inner: B,
    /// The method, when its messages are counted one by one (streams);
    /// a unary call's one message is counted when it starts.
    stream: Option<&'static Method>,
    messages: Messages,
}

impl<B> CountedRequest<B> {
    pub(crate) fn new(inner: B, method: &'static Method) -> Self {
        CountedRequest {
            inner,
            stream: (method.kind != Kind::Unary).then_some(method),
            messages: Messages::default(),
        }
    }
}

impl<B> Body for CountedRequest<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                TABLE.bytes_received.inc_by(data.len() as u64);
                if let Some(m) = self.stream {
                    let n = self.messages.feed(data);
                    if n > 0 {
                        m.received.inc_by(n);
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A watch or keep-alive stream could not receive. A client that went
/// away is logged quietly, as etcd's `isClientCtxErr` does (Go's gRPC
/// cancels the stream's context when its connection goes, tonic reports
/// the broken connection as such); a message the server could not take
/// (undecodable, too large) is a warning and counts in
/// `etcd_network_server_stream_failures_total`.
pub(crate) fn stream_receive_failed(status: &tonic::Status, api: &str) {
    use tonic::Code;
    let client_gone = !matches!(
        status.code(),
        Code::Internal
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::InvalidArgument
            | Code::DataLoss
    );
    let what = if api == "watch" {
        "failed to receive watch request from gRPC stream"
    } else {
        "failed to receive lease keepalive request from gRPC stream"
    };
    if client_gone {
        tracing::debug!(error = %status, "{what}");
        return;
    }
    tracing::warn!(error = %status, "{what}");
    crate::metrics::counters()
        .stream_failures
        .with_label_values(&["receive", api])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::Messages;

    fn msg(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn messages_are_counted_by_prefix_however_chunked() {
        let stream: Vec<u8> = [msg(3), msg(0), msg(40000), msg(1)].concat();
        assert_eq!(Messages::default().feed(&stream), 4);
        let mut m = Messages::default();
        let byte_by_byte: u64 = stream.iter().map(|b| m.feed(std::slice::from_ref(b))).sum();
        assert_eq!(byte_by_byte, 4);
        let mut m = Messages::default();
        assert_eq!(m.feed(&stream[..2]), 0);
        assert_eq!(m.feed(&stream[2..]), 4);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Any stream, cut anywhere: the same count as in one piece, and
        /// never more messages than 5-byte prefixes fit.
        #[test]
        fn any_stream_counts_the_same_however_cut(
            stream in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let whole = Messages::default().feed(&stream);
            prop_assert!(whole <= stream.len() as u64 / 5 + 1);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.extend([0, stream.len()]);
            points.sort_unstable();
            let mut m = Messages::default();
            let pieces: u64 = points.windows(2).map(|w| m.feed(&stream[w[0]..w[1]])).sum();
            prop_assert_eq!(pieces, whole);
        }
    }
}
