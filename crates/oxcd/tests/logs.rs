//! Logs as etcd writes them: `--logger zap` gives one JSON object per line
//! with zap's `level`, `ts`, `caller` and `msg`, to every `--log-outputs`
//! target; the readiness lines tooling waits for are there.
//!
//! Holds for etcd 3.4.23 too (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, Cluster};

#[tokio::test]
async fn zap_writes_json_lines_to_every_output() {
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("member.log");
        let outputs = format!("stderr,{}", file.display());
        let mut c = Cluster::builder(1)
            .flags(&["--logger", "zap", "--log-outputs", &outputs])
            .start()
            .await;
        c.member(0).etcdctl(&["put", "k", "v"]).await.ok();
        c.stop(0).await;
        let text = std::fs::read_to_string(&file).expect("read the log file");
        let mut messages = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for key in ["level", "ts", "caller", "msg"] {
                assert!(v[key].is_string(), "no {key} in {line}");
            }
            assert!(
                ["debug", "info", "warn", "error"].contains(&v["level"].as_str().unwrap_or("")),
                "{line}"
            );
            messages.push(v["msg"].as_str().unwrap_or("").to_string());
        }
        for wanted in ["enabled capabilities for version", "published"] {
            assert!(
                messages.iter().any(|m| m.contains(wanted)),
                "no {wanted:?} among {messages:#?}"
            );
        }
        // The same lines went to stderr.
        assert!(
            c.member(0).log().contains("\"msg\":"),
            "stderr has no zap lines"
        );
    })
    .await;
}
