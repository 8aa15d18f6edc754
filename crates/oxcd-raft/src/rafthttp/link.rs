//! The sending and dialling side of etcd's peer protocol, for a peer that
//! is an etcd member: this member dials the peer's `message` stream to
//! receive its messages, and sends its own over the stream the peer
//! attached here (see [`super::serve`]) or, while there is none, through
//! the pipeline (`POST /raft`).
//!
//! oxcd never dials `msgapp` streams: etcd then sends appends over the
//! `message` stream, which carries every type.

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
}

/// Opens the peer's `message` stream for this member. Returns its body.
pub async fn dial_stream(
    url: &str,
    tls: &PeerTls,
    id: &Identity,
) -> Result<hyper::body::Incoming, LinkError> {
    let path = format!("/raft/stream/message/{:x}", id.from);
    let req = dial::request(Method::GET, &path, id, Bytes::new());
    let resp = dial::send(url, tls, req)
        .await
        .map_err(|e| LinkError::Down(e.to_string()))?;
    match resp.status() {
        StatusCode::OK => Ok(resp.into_body()),
        StatusCode::GONE => Err(LinkError::Removed),
        StatusCode::NOT_FOUND => Err(LinkError::Down(format!(
            "peer {:x} failed to find local node {:x}",
            id.to, id.from
        ))),
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
    loop {
        let frame = match tokio::time::timeout(CONN_READ_TIMEOUT, body.frame()).await {
            Err(_) => return LinkError::Down("read: i/o timeout".into()),
            Ok(None) => return LinkError::Down("EOF".into()),
            Ok(Some(Err(e))) => return LinkError::Down(e.to_string()),
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
