//! Profiling on demand: with `--enable-pprof` a CPU profile can be taken
//! over HTTP in Go's pprof format (gzipped protobuf, as etcd answers it;
//! oxcd also answers a flame graph); without the flag the path does not
//! exist.
//!
//! Everything but the flame graph and heap text holds for etcd 3.4.23 too
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

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
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("profile.pb.gz");
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-m", "30", "-o"])
            .arg(&file)
            .args(["-w", "%{http_code}"])
            .arg(format!("{url}/debug/pprof/profile?seconds=1"))
            .output()
            .await
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
        let gz = std::fs::read(&file).expect("profile");
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw)
            .expect("gunzip");
        // The string table of a CPU profile names its sample types.
        for word in ["samples", "count", "cpu", "nanoseconds"] {
            assert!(
                raw.windows(word.len()).any(|w| w == word.as_bytes()),
                "{word} not in the profile"
            );
        }
        // Where Go is installed, its own reader must take the profile.
        let go = tokio::process::Command::new("go")
            .args(["tool", "pprof", "-raw"])
            .arg(&file)
            .env("HOME", dir.path())
            .output()
            .await;
        if let Ok(go) = go {
            let text = String::from_utf8_lossy(&go.stdout);
            assert!(
                go.status.success(),
                "{}",
                String::from_utf8_lossy(&go.stderr)
            );
            assert!(text.contains("PeriodType: cpu nanoseconds"), "{text}");
        }
        if std::env::var_os("OXCD_TEST_SERVER").is_none_or(|s| s.is_empty()) {
            let (code, body) = http_get(&url, "/debug/pprof/flamegraph?seconds=1").await;
            assert_eq!(code, 200);
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
