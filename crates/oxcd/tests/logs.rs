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
        // The leader decides the cluster version shortly after it serves.
        for _ in 0..200 {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.contains("\"set initial cluster version\"") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        c.stop(0).await;
        let text = std::fs::read_to_string(&file).expect("read the log file");
        let mut messages = Vec::new();
        let mut lines = Vec::new();
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
            lines.push(v);
        }
        // etcd 3.4's zap wording of the lines operators and tools grep,
        // with their fields.
        let line = |msg: &str| {
            lines
                .iter()
                .find(|v| v["msg"] == msg)
                .unwrap_or_else(|| panic!("no {msg:?} among {messages:#?}"))
        };
        assert_eq!(
            line("enabled capabilities for version")["cluster-version"],
            "3.4"
        );
        assert_eq!(
            line("set initial cluster version")["cluster-version"],
            "3.4"
        );
        let published = line("published local member to cluster through raft");
        assert!(
            published["local-member-attributes"]
                .as_str()
                .is_some_and(|a| a.starts_with("{Name:")),
            "{published}"
        );
        let serving = line("serving client traffic insecurely; this is strongly discouraged!");
        assert!(
            serving["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{serving}"
        );
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

/// capnslog (etcd 3.4's default): the readiness lines as etcd words them,
/// each under its package.
#[tokio::test]
async fn capnslog_lines_name_their_package() {
    bounded(async {
        let mut c = Cluster::builder(1).start().await;
        c.member(0).etcdctl(&["put", "k", "v"]).await.ok();
        c.stop(0).await;
        let log = c.member(0).log();
        for wanted in [
            "| etcdserver/membership: set the initial cluster version to 3.4",
            "| etcdserver/api: enabled capabilities for version 3.4",
            "| etcdserver: published {Name:",
            "| embed: serving insecure client requests on 127.0.0.1:",
        ] {
            assert!(log.contains(wanted), "no {wanted:?} in:\n{log}");
        }
    })
    .await;
}
