//! etcd's peer protocol (`rafthttp`, etcd 3.4/3.5), so that oxcd and etcd
//! members form one cluster.
//!
//! etcd members exchange raft messages over HTTP/1.1:
//! - **streams**: a member *dials* `GET /raft/stream/{message,msgapp}/<its
//!   id>` on a peer to *receive* that peer's messages; the peer answers 200
//!   and keeps writing frames ([`codec`]) into the response body, with a
//!   link heartbeat every 5/3 s so the reader's 5 s timeout never fires;
//! - the **pipeline**: `POST /raft`, one message per request, used while
//!   no stream is attached;
//! - `POST /raft/snapshot` (a message head, then the backend file) and
//!   `GET /raft/probing` (round-trip probes).
//!
//! Every request carries the sender's ID, cluster ID and versions in
//! headers ([`headers`]); a mismatch is answered 412 with etcd's text.
//!
//! [`serve`] answers these on the peer listener, beside oxcd's own gRPC
//! protocol; [`link`] is the sending and dialling side. Links speak it to
//! every peer, oxcd or etcd, and fall back to oxcd's gRPC streams for an
//! oxcd peer too old to serve it (the transport decides, see
//! `transport::Protocol`).

pub mod codec;
pub mod dial;
pub mod link;
pub mod serve;

use std::sync::Mutex;
use tokio::sync::mpsc;

/// The etcd server version oxcd presents on the peer protocol.
pub const SERVER_VERSION: &str = "3.4.23";
/// The oldest cluster version it can join (etcd 3.4's `MinClusterVersion`).
pub const MIN_CLUSTER_VERSION: &str = "3.0.0";
/// etcd's per-connection read timeout (`ConnReadTimeout`).
pub const CONN_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Messages buffered per attached stream (etcd's `streamBufSize`).
const STREAM_BUFFER: usize = 4096;

/// The request and response headers of the peer protocol.
pub mod headers {
    /// The sender's member ID (hex).
    pub const FROM: &str = "x-server-from";
    /// The addressee's member ID (hex), on stream requests.
    pub const TO: &str = "x-raft-to";
    /// The cluster ID (hex).
    pub const CLUSTER_ID: &str = "x-etcd-cluster-id";
    /// The sender's etcd server version.
    pub const SERVER_VERSION: &str = "x-server-version";
    /// The oldest cluster version the sender can run in.
    pub const MIN_CLUSTER_VERSION: &str = "x-min-cluster-version";
    /// oxcd's own version, on an oxcd member's stream answers: the dialler
    /// then knows the peer offers oxcd's services (etcd ignores it).
    pub const OXCD_VERSION: &str = "x-oxcd-version";
}

/// The two stream kinds etcd dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `/raft/stream/message`: every message type, [`codec::message_frame`].
    Message,
    /// `/raft/stream/msgapp`: appends only, [`codec::msgapp_frame`].
    MsgApp,
}

/// The streams an etcd peer has attached to this member (it dialled us to
/// receive our messages), for the link to write into.
#[derive(Default)]
pub struct Attached {
    message: Mutex<Option<mpsc::Sender<bytes::Bytes>>>,
    msgapp: Mutex<Option<mpsc::Sender<bytes::Bytes>>>,
}

impl Attached {
    fn slot(
        &self,
        kind: StreamKind,
    ) -> std::sync::MutexGuard<'_, Option<mpsc::Sender<bytes::Bytes>>> {
        let m = match kind {
            StreamKind::Message => &self.message,
            StreamKind::MsgApp => &self.msgapp,
        };
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new stream replaces the previous one of its kind (whose response
    /// then ends); returns where its messages arrive.
    pub fn attach(&self, kind: StreamKind) -> mpsc::Receiver<bytes::Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        *self.slot(kind) = Some(tx);
        rx
    }

    /// Whether a stream of `kind` is attached and its response still open.
    pub fn is_attached(&self, kind: StreamKind) -> bool {
        self.slot(kind).as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Queues an encoded message on the stream of `kind`. Gives the message
    /// back when no stream is attached or it is full.
    pub fn try_send(&self, kind: StreamKind, m: bytes::Bytes) -> Result<(), bytes::Bytes> {
        let mut slot = self.slot(kind);
        let Some(tx) = slot.as_ref() else {
            return Err(m);
        };
        match tx.try_send(m) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m)) => Err(m),
            Err(mpsc::error::TrySendError::Closed(m)) => {
                *slot = None;
                Err(m)
            }
        }
    }

    /// Drops both streams (the member was removed or the link stopped).
    pub fn detach_all(&self) {
        *self.slot(StreamKind::Message) = None;
        *self.slot(StreamKind::MsgApp) = None;
    }
}

/// Parses a `major.minor.patch` version (a `-pre` or other suffix ignored).
fn major_minor(v: &str) -> Option<(u64, u64)> {
    let mut it = v.trim().split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// etcd's `checkVersionCompatibility`: the remote must be at least our
/// minimum cluster version, and its minimum cluster version at most ours.
/// A missing header counts as 2.0.0, as etcd reads it.
pub fn versions_compatible(server: Option<&str>, min_cluster: Option<&str>) -> bool {
    let server = major_minor(server.unwrap_or("2.0.0")).unwrap_or((2, 0));
    let min_cluster = major_minor(min_cluster.unwrap_or("2.0.0")).unwrap_or((2, 0));
    let ours = major_minor(SERVER_VERSION).unwrap_or((3, 4));
    let our_min = major_minor(MIN_CLUSTER_VERSION).unwrap_or((3, 0));
    server >= our_min && min_cluster <= ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_on_major_and_minor_as_etcd_does() {
        assert!(versions_compatible(Some("3.4.23"), Some("3.0.0")));
        assert!(versions_compatible(Some("3.5.9"), Some("3.0.0")));
        assert!(versions_compatible(Some("3.0.0-pre"), Some("3.0.0")));
        assert!(!versions_compatible(Some("2.3.8"), Some("2.3.0")));
        assert!(!versions_compatible(None, None));
        assert!(!versions_compatible(Some("3.6.0"), Some("3.5.0")));
    }

    #[test]
    fn a_newer_stream_replaces_the_older_one() {
        let a = Attached::default();
        assert!(a
            .try_send(StreamKind::Message, bytes::Bytes::new())
            .is_err());
        let mut first = a.attach(StreamKind::Message);
        assert!(a.is_attached(StreamKind::Message));
        let mut second = a.attach(StreamKind::Message);
        assert!(a
            .try_send(StreamKind::Message, bytes::Bytes::from_static(b"x"))
            .is_ok());
        assert_eq!(first.try_recv().ok(), None);
        assert_eq!(
            second.try_recv().ok(),
            Some(bytes::Bytes::from_static(b"x"))
        );
        drop(second);
        assert!(!a.is_attached(StreamKind::Message));
        assert!(a
            .try_send(StreamKind::Message, bytes::Bytes::new())
            .is_err());
        assert!(!a.is_attached(StreamKind::MsgApp));
    }
}
