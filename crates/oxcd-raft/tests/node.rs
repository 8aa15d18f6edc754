//! The raft loop end to end: members on 127.0.0.1 with real WALs and the
//! real peer transport elect a leader, replicate proposals in order, and a
//! restarted member replays its WAL.

use oxcd_api::oxcdpeerpb::peer_server::PeerServer;
use oxcd_raft::fs::OsFs;
use oxcd_raft::node::{self, Committed, Input, NodeConfig, NodeHandle, NodeInbox, ToApply};
use oxcd_raft::transport::{PeerService, PeerTls, Transport};
use oxcd_raft::wal::{SnapshotMarker, Wal, WalOptions};
use prost::bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A stand-in apply stage: records the normal entries the loop commits,
/// in order, on its own thread (as the server's apply stage runs).
fn record(rx: std::sync::mpsc::Receiver<ToApply>, tx: mpsc::UnboundedSender<(u64, Vec<u8>)>) {
    std::thread::spawn(move || {
        while let Ok(m) = rx.recv() {
            match m {
                ToApply::Committed { entries, .. } => {
                    for e in entries {
                        if let Committed::Normal { index, data, .. } = e {
                            let _ = tx.send((index, data.to_vec()));
                        }
                    }
                }
                ToApply::SnapshotData { reply, .. } => {
                    let _ = reply.send(Ok(Vec::new()));
                }
                ToApply::Restore { reply, .. } => {
                    let _ = reply.send(Err(node::AppError("this test takes no snapshots".into())));
                }
                _ => {}
            }
        }
    });
}

/// A backend with nothing to export (these tests never snapshot).
struct NoBackend;

impl oxcd_raft::transport::BackendSource for NoBackend {
    fn export(&self, _dst: &Path) -> Result<u64, String> {
        Err("no backend".into())
    }
}

struct Member {
    handle: NodeHandle,
    applied: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    transport: Arc<Transport>,
}

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        background_preallocate: false,
    }
}

/// Starts member `id` with a WAL in `dir` (bootstrapping it when new).
async fn start_member(
    id: u64,
    dir: &Path,
    members: &[(u64, String)],
    listener: tokio::net::TcpListener,
) -> Member {
    let fs = Arc::new(OsFs);
    let wal_dir = dir.join("wal");
    let (wal, contents) = if oxcd_raft::wal::exists(fs.as_ref(), &wal_dir) {
        Wal::open(fs, &wal_dir, SnapshotMarker::default(), opts()).expect("open wal")
    } else {
        let mut wal = Wal::create(fs, &wal_dir, b"meta", opts()).expect("create wal");
        let boot: Vec<(u64, Vec<u8>)> = members.iter().map(|(id, _)| (*id, Vec::new())).collect();
        let contents = node::bootstrap(&mut wal, &boot).expect("bootstrap");
        (wal, contents)
    };
    let transport = Transport::new(id, 1, PeerTls::Plain);
    for (peer, url) in members {
        if *peer != id {
            transport.add_peer(*peer, vec![url.clone()]);
        }
    }
    let (tx, applied) = mpsc::unbounded_channel();
    let cfg = NodeConfig {
        id,
        tick: Duration::from_millis(20),
        election_ticks: 10,
        pre_vote: true,
    };
    let snap_dir = dir.join("snap");
    std::fs::create_dir_all(&snap_dir).expect("snap dir");
    let fs: Arc<dyn oxcd_raft::fs::Fs> = Arc::new(OsFs);
    let snaps = node::SnapshotSettings {
        count: 0,
        catch_up_entries: node::CATCH_UP_ENTRIES,
        max_snapshots: 5,
        max_wals: 5,
        snapshotter: oxcd_raft::snap::Snapshotter::new(fs.clone(), &snap_dir),
        fs,
        backend: Arc::new(NoBackend),
    };
    let restored = node::Restored {
        wal,
        replayed: contents,
        snapshot: None,
    };
    let (handle, to_apply) = node::start(cfg, restored, snaps, transport.clone()).expect("start");
    record(to_apply, tx);
    let svc = PeerService::new(id, 1, Arc::new(NodeInbox(handle.clone())));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Member {
        handle,
        applied,
        transport,
    }
}

async fn wait_leader(members: &[&Member]) -> u64 {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let leaders: Vec<u64> = members.iter().map(|m| m.handle.status().leader).collect();
            if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                return leaders[0];
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leader is elected within 20 s")
}

async fn next_applied(m: &mut Member) -> (u64, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), m.applied.recv())
        .await
        .expect("applied within 20 s")
        .expect("loop alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_and_replicate_in_order() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut listeners = Vec::new();
    let mut members = Vec::new();
    for i in 0..3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.push((i + 1, format!("http://{}", l.local_addr().unwrap())));
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(start_member(i as u64 + 1, dirs[i].path(), &members, l).await);
    }
    let leader = wait_leader(&nodes.iter().collect::<Vec<_>>()).await;
    let li = (leader - 1) as usize;
    for i in 0..50u32 {
        nodes[li]
            .handle
            .send(Input::Propose(Bytes::from(format!("p{i}"))))
            .expect("propose");
    }
    for n in nodes.iter_mut() {
        let mut got = Vec::new();
        while got.len() < 50 {
            let (_, data) = next_applied(n).await;
            got.push(String::from_utf8(data).unwrap());
        }
        let want: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
        assert_eq!(got, want, "every member applies every proposal in order");
    }
    for n in &nodes {
        n.transport.stop();
        let _ = n.handle.send(Input::Stop);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_replays_its_wal() {
    let dir = tempfile::tempdir().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let members = vec![(1, format!("http://{}", l.local_addr().unwrap()))];
    let mut m = start_member(1, dir.path(), &members, l).await;
    wait_leader(&[&m]).await;
    for i in 0..20u32 {
        m.handle
            .send(Input::Propose(Bytes::from(format!("p{i}"))))
            .expect("propose");
    }
    let mut first = Vec::new();
    while first.len() < 20 {
        first.push(next_applied(&mut m).await);
    }
    m.handle.send(Input::Stop).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), m.handle.stopped())
        .await
        .expect("loop stops");

    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut again = start_member(1, dir.path(), &members, l).await;
    let mut replayed = Vec::new();
    while replayed.len() < 20 {
        replayed.push(next_applied(&mut again).await);
    }
    assert_eq!(replayed, first, "the same entries at the same indexes");
    wait_leader(&[&again]).await;
    again
        .handle
        .send(Input::Propose(Bytes::from_static(b"after")))
        .expect("propose");
    let (index, data) = next_applied(&mut again).await;
    assert_eq!(data, b"after");
    assert!(index > first.last().unwrap().0);
}
