//! The peer transport against real sockets on 127.0.0.1: delivery, a
//! cluster-ID mismatch, a dead peer that never blocks the sender, and
//! reconnection once the peer comes back.

use oxcd_api::oxcdpeerpb::peer_server::PeerServer;
use oxcd_raft::transport::{Inbox, PeerService, PeerTls, SendError, Transport};
use prost::bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

struct ChannelInbox(mpsc::UnboundedSender<(u64, Bytes)>);

impl Inbox for ChannelInbox {
    fn deliver(&self, from: u64, messages: Vec<Bytes>) {
        for m in messages {
            let _ = self.0.send((from, m));
        }
    }
}

/// A peer server on its own runtime, so that stopping it really closes
/// every connection, as a dying process would.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

/// Serves member `id` of `cluster` on `addr` (port 0 = any).
fn serve(
    addr: SocketAddr,
    id: u64,
    cluster: u64,
) -> (SocketAddr, mpsc::UnboundedReceiver<(u64, Bytes)>, Server) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("report addr");
            let svc = PeerService::new(id, cluster, Arc::new(ChannelInbox(tx)));
            let server = tonic::transport::Server::builder()
                .add_service(PeerServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::select! {
                _ = server => {}
                _ = stop_rx => {}
            }
        });
        // Dropping the runtime drops every connection task.
        rt.shutdown_background();
    });
    let local = addr_rx.recv().expect("server address");
    (
        local,
        rx,
        Server {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    )
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<(u64, Bytes)>, n: usize) -> Vec<(u64, Bytes)> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < n {
            match rx.recv().await {
                Some(m) => got.push(m),
                None => break,
            }
        }
    })
    .await
    .expect("messages arrive within 10 s");
    got
}

/// Sends until one message is accepted by an established stream.
async fn send_when_active(t: &Transport, to: u64, msg: Bytes) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !t.is_active(to) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("link becomes active");
    t.send(to, msg).expect("queued");
}

#[tokio::test]
async fn delivers_in_order_and_reconnects() {
    let (addr, mut rx, server) = serve("127.0.0.1:0".parse().unwrap(), 2, 7);
    let t = Transport::new(1, 7, PeerTls::Plain);
    t.add_peer(2, vec![format!("http://{addr}")]);
    send_when_active(&t, 2, Bytes::from_static(b"m0")).await;
    for i in 1..500 {
        t.send(2, Bytes::from(format!("m{i}"))).expect("queued");
    }
    let got = recv_n(&mut rx, 500).await;
    for (i, (from, m)) in got.iter().enumerate() {
        assert_eq!(*from, 1);
        assert_eq!(m, &Bytes::from(format!("m{i}")));
    }

    // The peer goes away: sending never blocks, and fills up at most.
    server.stop();
    tokio::time::timeout(Duration::from_secs(10), async {
        while t.is_active(2) {
            let _ = t.send(2, Bytes::from_static(b"probe"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("link notices the peer is gone");
    for _ in 0..10_000 {
        match t.send(2, Bytes::from_static(b"lost")) {
            Ok(()) | Err(SendError::Full(2)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }

    // It comes back on the same address: the link reconnects by itself.
    let (_, mut rx2, server2) = serve(addr, 2, 7);
    send_when_active(&t, 2, Bytes::from_static(b"again")).await;
    // Messages queued during the reconnect backoff may still come first;
    // what matters is that new traffic flows again.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((_, m)) = rx2.recv().await {
            if m == Bytes::from_static(b"again") {
                return;
            }
        }
        panic!("server stopped before the message arrived");
    })
    .await
    .expect("traffic resumes after reconnecting");
    server2.stop();
    t.stop();
}

#[tokio::test]
async fn refuses_another_cluster_and_unknown_peers() {
    let (addr, mut rx, server) = serve("127.0.0.1:0".parse().unwrap(), 2, 7);
    let t = Transport::new(1, 8, PeerTls::Plain);
    t.add_peer(2, vec![format!("http://{addr}")]);
    assert_eq!(t.send(3, Bytes::new()), Err(SendError::UnknownPeer(3)));
    // The hello is refused, so the link never becomes active.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!t.is_active(2));
    let _ = t.send(2, Bytes::from_static(b"x"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "nothing from another cluster is delivered"
    );
    server.stop();
    t.stop();
}
