//! The sending and dialling side of etcd's peer protocol, for a peer that
//! is an etcd member: this member dials the peer's `message` stream to
//! receive its messages, and sends its own over the stream the peer
//! attached here (see [`super::serve`]) or, while there is none, through
//! the pipeline (`POST /raft`).
//!
//! oxcd never dials `msgapp` streams: etcd then sends appends over the
//! `message` stream, which carries every type. oxcd members speak this
//! protocol to each other too; they tell each other apart from etcd by a
//! header on the stream's answer ([`super::headers::OXCD_VERSION`]).

use super::codec::{self, MessageReader};
use super::dial::{self, Identity};
use super::{Attached, StreamKind, CONN_READ_TIMEOUT};
use crate::transport::{Inbox, PeerTls};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

/// Pipeline requests in flight per peer (etcd's `connPerPipeline`).
const PIPELINE_CONNS: usize = 4;
/// Most messages handed to raft in one delivery.
const MAX_BATCH: usize = 256;

/// Why a link to an etcd peer went down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer says this member was removed (410 Gone).
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// Dialling, a refusal or a broken stream.
    #[error("{0}")]
    Down(String),
    /// The peer took the connection but did not answer etcd's stream path
    /// (an oxcd build older than etcd's protocol, or a TLS mismatch).
    #[error("the peer does not serve etcd's peer protocol ({0})")]
    Unsupported(String),
}

/// Opens the peer's `message` stream for this member. Returns its body,
/// and whether the peer is an oxcd member (it says so in a header).
pub async fn dial_stream(
    url: &str,
    tls: &PeerTls,
    id: &Identity,
) -> Result<(hyper::body::Incoming, bool), LinkError> {
    let path = format!("/raft/stream/message/{:x}", id.from);
    let req = dial::request(Method::GET, &path, id, Bytes::new());
    let resp = match dial::send(url, tls, req).await {
        Ok(r) => r,
        Err(e @ dial::DialError::Connect(_)) => return Err(LinkError::Down(e.to_string())),
        // Something answered, but not in HTTP/1.1 (an HTTP/2-only oxcd
        // build) or not through the TLS setup: let the link try oxcd's.
        Err(e) => return Err(LinkError::Unsupported(e.to_string())),
    };
    match resp.status() {
        StatusCode::OK => {
            let oxcd = resp.headers().contains_key(super::headers::OXCD_VERSION);
            Ok((resp.into_body(), oxcd))
        }
        StatusCode::GONE => Err(LinkError::Removed),
        StatusCode::NOT_FOUND => {
            // etcd's own 404s name the sender; anything else is a server
            // without the route.
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).trim_end().to_string());
            match text.unwrap_or_default().as_str() {
                "error sender not found" | "invalid from" => Err(LinkError::Down(format!(
                    "peer {:x} failed to find local node {:x}",
                    id.to, id.from
                ))),
                other => Err(LinkError::Unsupported(format!("404 {other}"))),
            }
        }
        StatusCode::PRECONDITION_FAILED => {
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).trim_end().to_string());
            Err(LinkError::Down(format!(
                "request sent was ignored by peer {:x} ({})",
                id.to,
                text.unwrap_or_default()
            )))
        }
        other => Err(LinkError::Down(format!(
            "unhandled http status {}",
            other.as_u16()
        ))),
    }
}

/// Reads a `message` stream, handing each message but the link heartbeats
/// to `inbox` as sent by `from`, until it fails or stays silent for etcd's
/// read timeout.
pub async fn receive(mut body: hyper::body::Incoming, from: u64, inbox: &dyn Inbox) -> LinkError {
    let mut reader = MessageReader::default();
    let received = crate::metrics::get()
        .peer_received_bytes
        .with_label_values(&[format!("{from:x}").as_str()]);
    let failed = || {
        crate::metrics::get()
            .peer_received_failures
            .with_label_values(&[format!("{from:x}").as_str()])
            .inc();
    };
    loop {
        let frame = match tokio::time::timeout(CONN_READ_TIMEOUT, body.frame()).await {
            Err(_) => {
                failed();
                return LinkError::Down("read: i/o timeout".into());
            }
            Ok(None) => return LinkError::Down("EOF".into()),
            Ok(Some(Err(e))) => {
                failed();
                return LinkError::Down(e.to_string());
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        received.inc_by(data.len() as u64);
        reader.extend(&data);
        let mut batch = Vec::new();
        loop {
            match reader.next_message() {
                Ok(Some(m)) if codec::is_link_heartbeat(&m) => {}
                Ok(Some(m)) => {
                    batch.push(m);
                    if batch.len() >= MAX_BATCH {
                        inbox.deliver(from, std::mem::take(&mut batch));
                    }
                }
                Ok(None) => break,
                Err(e) => return LinkError::Down(e.to_string()),
            }
        }
        if !batch.is_empty() {
            inbox.deliver(from, batch);
        }
    }
}

/// Sends queued messages to the peer until the queue closes: appends over
/// its `msgapp` stream when attached, the rest (and appends otherwise)
/// over its `message` stream, and through the pipeline while neither is
/// attached or keeping up.
pub async fn send(
    url: &str,
    tls: &PeerTls,
    id: &Identity,
    attached: &Attached,
    rx: &mut mpsc::Receiver<Bytes>,
) {
    let inflight = Arc::new(Semaphore::new(PIPELINE_CONNS));
    let failures = crate::metrics::get()
        .peer_sent_failures
        .with_label_values(&[format!("{:x}", id.to).as_str()]);
    let sent = crate::metrics::get()
        .peer_sent_bytes
        .with_label_values(&[format!("{:x}", id.to).as_str()]);
    while let Some(m) = rx.recv().await {
        let len = m.len() as u64;
        let kind = if codec::message_type(&m) == Some(codec::MSG_APP)
            && attached.is_attached(StreamKind::MsgApp)
        {
            StreamKind::MsgApp
        } else {
            StreamKind::Message
        };
        let Err(m) = attached.try_send(kind, m) else {
            sent.inc_by(len);
            continue;
        };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            // Raft resends what matters; a stuck pipeline must not queue.
            failures.inc();
            continue;
        };
        let (url, tls, id) = (url.to_string(), tls.clone(), id.clone());
        let (failures, sent) = (failures.clone(), sent.clone());
        tokio::spawn(async move {
            let req = dial::request(Method::POST, "/raft", &id, m);
            match dial::send(&url, &tls, req).await {
                Ok(r) if r.status() == StatusCode::NO_CONTENT => sent.inc_by(len),
                Ok(r) => {
                    failures.inc();
                    tracing::debug!(to = %format!("{:x}", id.to), status = r.status().as_u16(), "pipeline message refused");
                }
                Err(e) => {
                    failures.inc();
                    tracing::debug!(to = %format!("{:x}", id.to), error = %e, "pipeline message failed");
                }
            }
            drop(permit);
        });
    }
}

/// Sends a raft snapshot to an etcd follower (etcd's snapshot sender):
/// the backend exported in etcd's format to `scratch`, then `POST
/// /raft/snapshot` with the `MsgSnap` head (its data etcd's v2 store) and
/// the file. Returns the bytes sent.
pub(crate) async fn send_snapshot(
    route: &crate::snapshot_transfer::Route,
    job: &crate::snapshot_transfer::SnapshotJob,
    scratch: &std::path::Path,
) -> Result<u64, String> {
    use protobuf::Message as _;
    use tokio::io::AsyncReadExt;
    let backend = job.backend.clone();
    let dst = scratch.to_path_buf();
    tokio::task::spawn_blocking(move || backend.export_etcd(&dst))
        .await
        .map_err(|e| format!("export task: {e}"))??;
    let mut m = raft::eraftpb::Message::parse_from_bytes(&job.message)
        .map_err(|e| format!("snapshot message: {e}"))?;
    let data = job.backend.etcd_snapshot_data(&m.get_snapshot().data)?;
    m.mut_snapshot().data = data.into();
    let head = m
        .write_to_bytes()
        .map_err(|e| format!("snapshot message: {e}"))?;
    let size = tokio::fs::metadata(scratch)
        .await
        .map_err(|e| format!("stat {}: {e}", scratch.display()))?
        .len();
    let id = Identity {
        from: route.from,
        to: job.to,
        cluster_id: route.cluster_id,
    };
    let mut last_err = String::from("no peer URL");
    for url in &route.urls {
        let mut file = tokio::fs::File::open(scratch)
            .await
            .map_err(|e| format!("open {}: {e}", scratch.display()))?;
        let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
        let _ = tx
            .send(Ok(hyper::body::Frame::data(codec::message_frame(&head))))
            .await;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; crate::snapshot_transfer::CHUNK_BYTES];
            loop {
                match file.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if tx.send(Ok(hyper::body::Frame::data(chunk))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut req = http::Request::post("/raft/snapshot")
            .body(body)
            .map_err(|e| e.to_string())?;
        for (k, v) in dial::request(Method::POST, "/raft/snapshot", &id, Bytes::new()).headers() {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        let sent = dial::send(url, &route.tls, req).await;
        reader.abort();
        match sent {
            Ok(r) if r.status() == StatusCode::NO_CONTENT => return Ok(size),
            Ok(r) => {
                let status = r.status();
                let text = r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| {
                        String::from_utf8_lossy(&b.to_bytes())
                            .trim_end()
                            .to_string()
                    })
                    .unwrap_or_default();
                return Err(format!("{url}: {} {text}", status.as_u16()));
            }
            Err(e) => last_err = format!("{url}: {e}"),
        }
    }
    Err(last_err)
}
