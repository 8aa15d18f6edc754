//! The receiving side of etcd's peer protocol on the peer listener:
//! etcd members dial streams here to receive this member's messages, and
//! post messages through the pipeline.

use super::codec::{self, LINK_HEARTBEAT};
use super::{headers, StreamKind, CONN_READ_TIMEOUT};
use crate::transport::{Directory, Inbox, Transport};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use std::sync::Arc;

/// A pipeline request's largest body (etcd's `connReadLimitByte`).
const PIPELINE_LIMIT: usize = 64 * 1024;

/// What the handlers need.
#[derive(Clone)]
struct Peers {
    local_id: u64,
    cluster_id: u64,
    transport: Arc<Transport>,
    inbox: Arc<dyn Inbox>,
    directory: Arc<dyn Directory>,
    /// Where received backend snapshots are saved (`member/snap`).
    snap_dir: Option<std::path::PathBuf>,
}

/// The routes of etcd's peer protocol, for the peer listener's router.
pub fn routes(
    transport: Arc<Transport>,
    inbox: Arc<dyn Inbox>,
    directory: Arc<dyn Directory>,
    snap_dir: Option<std::path::PathBuf>,
) -> Router {
    let state = Peers {
        local_id: transport.local_id(),
        cluster_id: transport.cluster_id(),
        transport,
        inbox,
        directory,
        snap_dir,
    };
    Router::new()
        .route("/raft", any(pipeline))
        .route("/raft/stream/{kind}/{from}", any(stream))
        .route("/raft/probing", get(probing))
        .route("/raft/snapshot", any(snapshot))
        .with_state(state)
}

/// etcd's `http.Error`: the text and a newline, as plain text.
fn error(status: StatusCode, text: &str) -> Response {
    let mut r = (status, format!("{text}\n")).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut()
        .insert(axum::http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// A request refused by [`Peers::check`]: 412 with this text.
struct Refusal(&'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(StatusCode::PRECONDITION_FAILED, self.0)
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Peers {
    /// etcd's `checkClusterCompatibilityFromHeader`: versions, then the
    /// cluster ID; a failure is 412 with etcd's text.
    fn check(&self, h: &HeaderMap) -> Result<(), Refusal> {
        if !super::versions_compatible(
            header(h, headers::SERVER_VERSION),
            header(h, headers::MIN_CLUSTER_VERSION),
        ) {
            tracing::warn!(
                remote = header(h, headers::FROM).unwrap_or_default(),
                remote_version = header(h, headers::SERVER_VERSION).unwrap_or_default(),
                "failed to check version compatibility"
            );
            return Err(Refusal("incompatible version"));
        }
        if header(h, headers::CLUSTER_ID) != Some(format!("{:x}", self.cluster_id).as_str()) {
            tracing::warn!(
                remote = header(h, headers::FROM).unwrap_or_default(),
                remote_cluster_id = header(h, headers::CLUSTER_ID).unwrap_or_default(),
                local_cluster_id = %format!("{:x}", self.cluster_id),
                "request cluster ID mismatch"
            );
            return Err(Refusal("cluster ID mismatch"));
        }
        Ok(())
    }

    fn cluster_header(&self, r: &mut Response) {
        if let Ok(v) = HeaderValue::from_str(&format!("{:x}", self.cluster_id)) {
            r.headers_mut().insert(headers::CLUSTER_ID, v);
        }
    }
}

/// `POST /raft`: one message.
async fn pipeline(State(p): State<Peers>, method: Method, h: HeaderMap, body: Body) -> Response {
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let mut r = match p.check(&h) {
        Err(r) => r.into_response(),
        Ok(()) => match axum::body::to_bytes(body, PIPELINE_LIMIT).await {
            Err(_) => error(StatusCode::BAD_REQUEST, "error reading raft message"),
            Ok(b) => {
                use protobuf::Message as _;
                match raft::eraftpb::Message::parse_from_bytes(&b) {
                    Err(_) => error(StatusCode::BAD_REQUEST, "error unmarshalling raft message"),
                    Ok(m) => {
                        crate::metrics::get()
                            .peer_received_bytes
                            .with_label_values(&[format!("{:x}", m.from).as_str()])
                            .inc_by(b.len() as u64);
                        p.inbox.deliver(m.from, vec![b]);
                        StatusCode::NO_CONTENT.into_response()
                    }
                }
            }
        },
    };
    p.cluster_header(&mut r);
    r
}

/// `GET /raft/stream/{message,msgapp}/<from>`: member `from` wants this
/// member's messages; they are written into the response until a newer
/// stream of the same kind replaces this one or the peer goes away.
async fn stream(
    State(p): State<Peers>,
    method: Method,
    h: HeaderMap,
    Path((kind, from)): Path<(String, String)>,
) -> Response {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let kind = match kind.as_str() {
        "message" => StreamKind::Message,
        "msgapp" => StreamKind::MsgApp,
        _ => return error(StatusCode::NOT_FOUND, "invalid path"),
    };
    let mut r = stream_checked(&p, &h, &from, kind);
    r.headers_mut().insert(
        headers::SERVER_VERSION,
        HeaderValue::from_static(super::SERVER_VERSION),
    );
    r.headers_mut().insert(
        headers::OXCD_VERSION,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    p.cluster_header(&mut r);
    r
}

fn stream_checked(p: &Peers, h: &HeaderMap, from: &str, kind: StreamKind) -> Response {
    if let Err(r) = p.check(h) {
        return r.into_response();
    }
    let Ok(from) = u64::from_str_radix(from, 16) else {
        return error(StatusCode::NOT_FOUND, "invalid from");
    };
    if p.directory.is_removed(from) {
        return error(StatusCode::GONE, "removed member");
    }
    let Some(attached) = p.transport.attached(from) else {
        return error(StatusCode::NOT_FOUND, "error sender not found");
    };
    if header(h, headers::TO) != Some(format!("{:x}", p.local_id).as_str()) {
        return error(StatusCode::PRECONDITION_FAILED, "to field mismatch");
    }
    tracing::info!(
        local = %format!("{:x}", p.local_id),
        remote = %format!("{from:x}"),
        stream = ?kind,
        "established TCP streaming connection with remote peer"
    );
    let rx = attached.attach(kind);
    let mut ticks = tokio::time::interval(CONN_READ_TIMEOUT / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Ends when the queue ends (a newer stream replaced this one, or the
    // link stopped); the link heartbeats alone never keep it open.
    let body = futures::stream::unfold((rx, ticks), move |(mut rx, mut ticks)| async move {
        let chunk = tokio::select! {
            biased;
            m = rx.recv() => {
                let m = m?;
                // Whatever else is queued goes out in the same write.
                let mut out = frame(kind, &m).to_vec();
                while out.len() < 1024 * 1024 {
                    match rx.try_recv() {
                        Ok(m) => out.extend_from_slice(&frame(kind, &m)),
                        Err(_) => break,
                    }
                }
                Bytes::from(out)
            }
            _ = ticks.tick() => beat_frame(kind),
        };
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), (rx, ticks)))
    });
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = StatusCode::OK;
    r
}

fn frame(kind: StreamKind, m: &[u8]) -> Bytes {
    match kind {
        StreamKind::Message => codec::message_frame(m),
        StreamKind::MsgApp => codec::msgapp_frame(m),
    }
}

fn beat_frame(kind: StreamKind) -> Bytes {
    match kind {
        StreamKind::Message => codec::message_frame(LINK_HEARTBEAT),
        StreamKind::MsgApp => codec::msgapp_heartbeat(),
    }
}

/// `GET /raft/probing`: etcd's prober reads `{"OK":true,"Now":...}`.
async fn probing() -> Response {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut r = format!("{{\"OK\":true,\"Now\":\"{now}\"}}\n").into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The largest snapshot message head accepted (its data is etcd's v2
/// store: members and cluster version, small).
const SNAPSHOT_HEAD_LIMIT: u64 = 64 * 1024 * 1024;

/// `POST /raft/snapshot`: a `MsgSnap` head (a `message` frame), then the
/// leader's backend file (etcd's bbolt) to the end of the body. The file
/// is saved as `member/snap/<index>.snap.db` (synced, renamed into place)
/// before raft sees the message, as for oxcd's own transfers; the apply
/// stage converts it when it installs the snapshot.
async fn snapshot(State(p): State<Peers>, method: Method, h: HeaderMap, body: Body) -> Response {
    if method != Method::POST {
        return method_not_allowed("POST");
    }
    let mut r = match p.check(&h) {
        Err(r) => r.into_response(),
        Ok(()) => match &p.snap_dir {
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to save KV snapshot (this member does not take snapshots)",
            ),
            Some(dir) => match receive_snapshot(dir, body).await {
                Ok((from, message)) => {
                    p.inbox.deliver(from, vec![message]);
                    StatusCode::NO_CONTENT.into_response()
                }
                Err((status, text)) => error(status, &text),
            },
        },
    };
    p.cluster_header(&mut r);
    r
}

/// Reads the head and saves the file; the sender and the encoded message.
async fn receive_snapshot(
    dir: &std::path::Path,
    body: Body,
) -> Result<(u64, Bytes), (StatusCode, String)> {
    use futures::StreamExt;
    use protobuf::Message as _;
    use tokio::io::AsyncWriteExt;
    let bad = |t: String| (StatusCode::BAD_REQUEST, t);
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let head = loop {
        if buf.len() >= 8 {
            let len = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
            if len > SNAPSHOT_HEAD_LIMIT {
                return Err(bad(
                    "failed to decode raft message (rafthttp: error limit exceeded)".into(),
                ));
            }
            if buf.len() as u64 >= 8 + len {
                let _ = buf.split_to(8);
                break buf.split_to(len as usize).freeze();
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(bad(format!("failed to decode raft message ({e})"))),
            None => return Err(bad("failed to decode raft message (unexpected EOF)".into())),
        }
    };
    let m = raft::eraftpb::Message::parse_from_bytes(&head)
        .map_err(|e| bad(format!("failed to decode raft message ({e})")))?;
    if m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
        return Err(bad("wrong raft message type".into()));
    }
    let index = m.get_snapshot().get_metadata().index;
    tracing::info!(
        "receiving database snapshot [index: {index}, from: {:x}] over etcd's peer protocol",
        m.from
    );
    let counted = crate::metrics::get().snapshot_receive.track(m.from);
    let started = std::time::Instant::now();
    let path = dir.join(format!("{index:016x}.snap.db"));
    let tmp = dir.join(format!("{index:016x}.snap.db.tmp"));
    let fail = |e: std::io::Error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to save KV snapshot ({e})"),
        )
    };
    let written = async {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        f.write_all(&buf).await?;
        let mut size = buf.len() as u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            f.write_all(&chunk).await?;
            size += chunk.len() as u64;
        }
        let syncing = std::time::Instant::now();
        f.sync_all().await?;
        crate::metrics::get()
            .snap_db_fsync
            .observe(syncing.elapsed().as_secs_f64());
        tokio::fs::rename(&tmp, &path).await?;
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
        Ok::<u64, std::io::Error>(size)
    }
    .await;
    match written {
        Ok(size) => {
            tracing::info!(
                "received and saved database snapshot [index: {index}, from: {:x}, size: {size} bytes]",
                m.from
            );
            counted.ok();
            crate::metrics::get()
                .snap_db_save
                .observe(started.elapsed().as_secs_f64());
            Ok((m.from, head))
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(fail(e))
        }
    }
}
