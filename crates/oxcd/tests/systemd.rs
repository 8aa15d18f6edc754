//! systemd readiness: with `NOTIFY_SOCKET` set (a `Type=notify` unit), the
//! member sends `READY=1` once it serves clients. The test plays systemd
//! with a datagram socket of its own.
//!
//! Holds for etcd 3.4.23 too (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, Cluster};
use std::time::Duration;

#[tokio::test]
async fn ready_is_sent_to_the_notify_socket() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind notify socket");
        let c = Cluster::builder(1)
            .env("NOTIFY_SOCKET", path.to_str().expect("utf-8 path"))
            .start()
            .await;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buf))
            .await
            .expect("no notification within 30 s")
            .expect("recv");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
        // Ready means serving: a client gets an answer.
        assert_eq!(c.member(0).etcdctl(&["put", "k", "v"]).await.ok(), "OK\n");
    })
    .await;
}
