//! Watch behaviour that needs a member started in-process with its own
//! configuration: progress notifications at
//! `--experimental-watch-progress-notify-interval`, and a stream that
//! outlives the client's half-close. Uses the generated gRPC clients.

use std::net::TcpListener;
use std::time::Duration;

use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::watch_client::WatchClient;
use oxcd_api::etcdserverpb::watch_request::RequestUnion;
use oxcd_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use oxcd_server::config::Config;
use oxcd_server::embed;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// Bound for each expected message.
const STEP: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

async fn start(dir: &tempfile::TempDir, progress: Duration) -> (embed::Etcd, String) {
    let (client, peer) = (free_port(), free_port());
    let curl = format!("http://127.0.0.1:{client}");
    let purl = format!("http://127.0.0.1:{peer}");
    let url = |s: &str| vec![url::Url::parse(s).expect("url")];
    let cfg = Config {
        name: "w".into(),
        data_dir: dir.path().join("data"),
        listen_client_urls: url(&curl),
        advertise_client_urls: url(&curl),
        listen_peer_urls: url(&purl),
        initial_advertise_peer_urls: url(&purl),
        initial_cluster: format!("w={purl}"),
        experimental_watch_progress_notify_interval: progress,
        ..Config::default()
    };
    let etcd = embed::start(cfg).await.expect("start member");
    (etcd, curl)
}

fn create(key: &str, progress_notify: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.as_bytes().to_vec().into(),
            progress_notify,
            ..Default::default()
        })),
    }
}

async fn next(s: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(STEP, s.message())
        .await
        .expect("watch message in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

async fn put(url: &str, key: &str) -> i64 {
    let mut kv = KvClient::connect(url.to_string()).await.expect("connect");
    let resp = kv
        .put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    resp.header.expect("header").revision
}

#[tokio::test]
async fn progress_notify_reports_quiet_synced_watchers() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 10 ms is below etcd's minimum and is raised to 100 ms.
    let (etcd, url) = start(&dir, Duration::from_millis(10)).await;
    let body = async {
        let rev = put(&url, "other").await;
        let mut client = WatchClient::connect(url.clone()).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(create("p", true)).await.expect("send create");
        let mut s = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let created = next(&mut s).await;
        assert!(created.created);
        let progress = next(&mut s).await;
        assert_eq!(progress.watch_id, created.watch_id);
        assert!(progress.events.is_empty() && !progress.canceled);
        assert_eq!(progress.header.expect("header").revision, rev);

        // After an event, later ticks report the newer revision.
        let r2 = put(&url, "p").await;
        let ev = next(&mut s).await;
        assert_eq!(ev.events.len(), 1);
        loop {
            let m = next(&mut s).await;
            assert!(m.events.is_empty(), "only progress expected: {m:?}");
            if m.header.expect("header").revision == r2 {
                break;
            }
        }
        drop(tx);
    };
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test body in time");
    etcd.close().await;
}

#[tokio::test]
async fn half_closed_stream_keeps_delivering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (etcd, url) = start(&dir, Duration::ZERO).await;
    let body = async {
        let mut client = WatchClient::connect(url.clone()).await.expect("connect");
        let (tx, rx) = mpsc::channel(4);
        tx.send(create("h", false)).await.expect("send create");
        drop(tx); // half-close: no more requests
        let mut s = client
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        assert!(next(&mut s).await.created);
        let r = put(&url, "h").await;
        let ev = next(&mut s).await;
        assert_eq!(ev.header.expect("header").revision, r);
        assert_eq!(ev.events.len(), 1);
    };
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test body in time");
    etcd.close().await;
}
