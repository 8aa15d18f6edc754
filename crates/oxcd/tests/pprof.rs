//! Profiling on demand: with `--enable-pprof` a CPU profile can be taken
//! over HTTP (oxcd answers a flame graph, etcd Go's pprof protobuf);
//! without the flag the path does not exist.
//!
//! The status codes hold for etcd 3.4.23 too (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, http_get, Cluster, Member};

#[tokio::test]
async fn cpu_profile_only_with_enable_pprof() {
    bounded(async {
        let m = Member::start().await;
        assert_eq!(
            http_get(&m.client_url(), "/debug/pprof/profile?seconds=1")
                .await
                .0,
            404
        );
        drop(m);

        let c = Cluster::builder(1).flags(&["--enable-pprof"]).start().await;
        let url = c.member(0).client_url();
        let (code, body) = http_get(&url, "/debug/pprof/profile?seconds=1").await;
        assert_eq!(code, 200);
        if std::env::var_os("OXCD_TEST_SERVER").is_none_or(|s| s.is_empty()) {
            assert!(
                body.starts_with("<?xml") && body.contains("<svg"),
                "{}",
                &body[..body.len().min(200)]
            );
            let (code, heap) = http_get(&url, "/debug/pprof/heap").await;
            assert_eq!(code, 200);
            assert!(heap.contains("VmRSS:"), "{heap}");
        }
    })
    .await;
}
