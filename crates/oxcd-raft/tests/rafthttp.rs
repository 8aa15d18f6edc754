//! etcd's peer protocol (rafthttp) as oxcd serves and speaks it: etcd's
//! answers to bad requests, and two members that reach each other the
//! etcd way (no oxcd gRPC service on either side) exchanging raft
//! messages in order.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use oxcd_raft::rafthttp::codec::message_frame;
use oxcd_raft::transport::{Directory, Inbox, PeerTls, Transport};
use prost::bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;

struct ChannelInbox(mpsc::UnboundedSender<(u64, Bytes)>);

impl Inbox for ChannelInbox {
    fn deliver(&self, from: u64, messages: Vec<Bytes>) {
        for m in messages {
            let _ = self.0.send((from, m));
        }
    }
}

/// Member 3 was removed; nobody else.
struct Removed3;

impl Directory for Removed3 {
    fn members(&self) -> Vec<oxcd_api::oxcdpeerpb::PeerMember> {
        Vec::new()
    }
    fn is_removed(&self, id: u64) -> bool {
        id == 3
    }
}

const CLUSTER: u64 = 0xc1;

fn msg(t: MessageType, from: u64, to: u64, index: u64) -> Bytes {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = 1;
    m.index = index;
    m.write_to_bytes().expect("encode").into()
}

fn router(
    transport: &Arc<Transport>,
    tx: mpsc::UnboundedSender<(u64, Bytes)>,
    snap_dir: Option<std::path::PathBuf>,
) -> axum::Router {
    oxcd_raft::rafthttp::serve::routes(
        transport.clone(),
        Arc::new(ChannelInbox(tx)),
        Arc::new(Removed3),
        snap_dir,
    )
}

fn req(
    method: &str,
    path: &str,
    cluster: &str,
    from: &str,
    to: &str,
    body: Bytes,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if !cluster.is_empty() {
        b = b
            .header("X-Etcd-Cluster-ID", cluster)
            .header("X-Server-Version", "3.4.23")
            .header("X-Min-Cluster-Version", "3.0.0");
    }
    b.header("X-Server-From", from)
        .header("X-Raft-To", to)
        .body(Body::from(body))
        .expect("request")
}

async fn answer(r: &axum::Router, req: Request<Body>) -> (StatusCode, String) {
    let resp = r.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn bad_requests_get_etcds_answers() {
    let t = Transport::new(1, CLUSTER, PeerTls::Plain);
    t.add_peer(2, vec!["http://127.0.0.1:9".into()]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router(&t, tx, Some(dir.path().to_path_buf()));
    let cid = format!("{CLUSTER:x}");
    let stream = "/raft/stream/message/2";

    let cases = [
        (
            req("GET", stream, "ff", "2", "1", Bytes::new()),
            412,
            "cluster ID mismatch\n",
        ),
        (
            req("GET", stream, "", "2", "1", Bytes::new()),
            412,
            "incompatible version\n",
        ),
        (
            req(
                "GET",
                "/raft/stream/message/9",
                &cid,
                "9",
                "1",
                Bytes::new(),
            ),
            404,
            "error sender not found\n",
        ),
        (
            req(
                "GET",
                "/raft/stream/message/3",
                &cid,
                "3",
                "1",
                Bytes::new(),
            ),
            410,
            "removed member\n",
        ),
        (
            req(
                "GET",
                "/raft/stream/message/zz",
                &cid,
                "2",
                "1",
                Bytes::new(),
            ),
            404,
            "invalid from\n",
        ),
        (
            req("GET", stream, &cid, "2", "7", Bytes::new()),
            412,
            "to field mismatch\n",
        ),
        (
            req("POST", stream, &cid, "2", "1", Bytes::new()),
            405,
            "Method Not Allowed\n",
        ),
        (
            req("GET", "/raft", &cid, "2", "1", Bytes::new()),
            405,
            "Method Not Allowed\n",
        ),
        (
            req(
                "POST",
                "/raft",
                &cid,
                "2",
                "1",
                Bytes::from_static(&[0xff, 0xff]),
            ),
            400,
            "error unmarshalling raft message\n",
        ),
        (
            req(
                "POST",
                "/raft/snapshot",
                &cid,
                "2",
                "1",
                message_frame(&msg(MessageType::MsgAppend, 2, 1, 5)),
            ),
            400,
            "wrong raft message type\n",
        ),
        (
            req(
                "POST",
                "/raft/snapshot",
                &cid,
                "2",
                "1",
                Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 9, 1]),
            ),
            400,
            "failed to decode raft message (unexpected EOF)\n",
        ),
    ];
    for (request, status, text) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (got, body) = answer(&r, request).await;
        assert_eq!((got.as_u16(), body.as_str()), (status, text), "{what}");
    }
    assert!(rx.try_recv().is_err(), "nothing refused reached raft");

    // A good pipeline message reaches raft as sent.
    let m = msg(MessageType::MsgHeartbeat, 2, 1, 0);
    let (got, _) = answer(&r, req("POST", "/raft", &cid, "2", "1", m.clone())).await;
    assert_eq!(got, StatusCode::NO_CONTENT);
    assert_eq!(rx.try_recv().ok(), Some((2, m)));

    // A snapshot cut short is never handed to raft, and leaves no file.
    let mut snap = Message::default();
    snap.set_msg_type(MessageType::MsgSnapshot);
    snap.from = 2;
    snap.to = 1;
    snap.mut_snapshot().mut_metadata().index = 42;
    let head = message_frame(&snap.write_to_bytes().expect("encode"));
    let body = Body::from_stream(futures::stream::iter(vec![
        Ok::<Bytes, std::io::Error>(head),
        Ok(Bytes::from_static(b"partial backend")),
        Err(std::io::Error::other("connection reset")),
    ]));
    let mut cut = req("POST", "/raft/snapshot", &cid, "2", "1", Bytes::new());
    *cut.body_mut() = body;
    let (got, _) = answer(&r, cut).await;
    assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(rx.try_recv().is_err(), "a partial snapshot reached raft");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Serves only etcd's routes for member `id` on a fresh port.
async fn etcd_style_member(
    id: u64,
    peer: u64,
    peer_url: impl Fn() -> String,
    listener: tokio::net::TcpListener,
) -> (Arc<Transport>, mpsc::UnboundedReceiver<(u64, Bytes)>) {
    let t = Transport::new(id, CLUSTER, PeerTls::Plain);
    let (tx, rx) = mpsc::unbounded_channel();
    t.set_inbox(Arc::new(ChannelInbox(tx.clone())));
    t.add_peer(peer, vec![peer_url()]);
    let app = router(&t, tx, None);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (t, rx)
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<(u64, Bytes)>, n: usize) -> Vec<(u64, Bytes)> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < n {
            match rx.recv().await {
                Some(m) => got.push(m),
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages within 20 s; got {}", got.len()));
    got
}

#[tokio::test]
async fn two_members_that_only_speak_etcds_protocol_exchange_messages_in_order() {
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (a1, a2) = (
        l1.local_addr().expect("addr"),
        l2.local_addr().expect("addr"),
    );
    let (t1, mut rx1) = etcd_style_member(1, 2, || format!("http://{a2}"), l1).await;
    let (t2, mut rx2) = etcd_style_member(2, 1, || format!("http://{a1}"), l2).await;

    // Each link speaks etcd's protocol (there is no gRPC service here to
    // fall back to) and learns from the stream's answer that its peer is
    // an oxcd member.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(t1.is_active(2) && t2.is_active(1)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both links up within 20 s");
    assert!(!t1.speaks_etcd(2) && !t2.speaks_etcd(1));

    // Both directions, appends and others mixed, in order; whatever goes
    // before the peer attached its stream goes through the pipeline.
    let sent: Vec<Bytes> = (1..=300)
        .map(|i| {
            let t = if i % 3 == 0 {
                MessageType::MsgHeartbeat
            } else {
                MessageType::MsgAppend
            };
            msg(t, 1, 2, i)
        })
        .collect();
    for m in &sent {
        t1.send(2, m.clone()).expect("queued");
    }
    let got = recv_n(&mut rx2, sent.len()).await;
    assert!(got.iter().all(|(from, _)| *from == 1));
    assert_eq!(got.into_iter().map(|(_, m)| m).collect::<Vec<_>>(), sent);

    let back: Vec<Bytes> = (1..=50)
        .map(|i| msg(MessageType::MsgAppendResponse, 2, 1, i))
        .collect();
    for m in &back {
        t2.send(1, m.clone()).expect("queued");
    }
    let got = recv_n(&mut rx1, back.len()).await;
    assert_eq!(got.into_iter().map(|(_, m)| m).collect::<Vec<_>>(), back);
    t1.stop();
    t2.stop();
}
