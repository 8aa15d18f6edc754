//! `/metrics` with etcd's names: every metric that the alert rules and the
//! Grafana dashboard shipped with Debian's etcd-server query exists on a
//! running 3-member cluster and moves under a workload; the counters of
//! etcd's e2e `TestV3Metrics*` count as etcd counts them.
//!
//! Every expectation here holds for etcd 3.4.23 too
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, http_get, Cluster, Member};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const OP_GUIDE: &str = "/usr/share/doc/etcd-server/op-guide";

/// The metric names the PromQL expressions of a (gzipped) file use.
fn queried_names(file: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("gzip -dc {}: {e}", file.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &text[i..];
        if starts_word
            && ["etcd_", "grpc_server_", "process_", "os_fd_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let name = &rest[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            // Jsonnet variables of the mixin (`etcd_selector`) are not metrics.
            if !base.ends_with("_selector") {
                names.insert(base.to_string());
            }
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Names etcd 3.4 itself does not serve by default, so oxcd need not:
/// the v2 HTTP API's metrics (only with `--enable-v2`) and the v3.0-era
/// names of the legacy rules file.
fn not_served_by_etcd(name: &str) -> bool {
    name.starts_with("etcd_http_")
        || name == "etcd_grpc_requests_failed_total"
        || name == "etcd_grpc_total"
}

/// A scrape: sample name (with its labels) → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn family(series: &str) -> &str {
    let name = series.split('{').next().unwrap_or(series);
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The sum of every sample of `name` (all label sets).
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn dashboard_and_alert_metrics_exist_and_move() {
    bounded(async {
        let files = [
            "etcd3_alert.rules.yml.gz",
            "etcd3_alert.rules.gz",
            "grafana.json.gz",
        ];
        let mut wanted = BTreeSet::new();
        for f in files {
            let path = Path::new(OP_GUIDE).join(f);
            assert!(
                path.exists(),
                "{} is missing: install etcd-server",
                path.display()
            );
            wanted.extend(queried_names(&path));
        }
        let mixin = Path::new("/usr/share/doc/etcd-server/etcd-mixin/mixin.libsonnet.gz");
        if mixin.exists() {
            wanted.extend(queried_names(mixin));
        }
        assert!(wanted.len() > 20, "too few names parsed: {wanted:?}");
        wanted.retain(|n| !not_served_by_etcd(n));

        let c = Cluster::builder(3)
            .flags(&["--metrics", "extensive"])
            .start()
            .await;
        let leader = c.leader_index().await.expect("a leader");
        let m = c.member(leader);
        for i in 0..20 {
            m.etcdctl(&["put", &format!("k{i}"), "v"]).await.ok();
        }
        m.etcdctl(&["get", "k", "--prefix"]).await.ok();
        let (code, text) = http_get(&m.client_url(), "/metrics").await;
        assert_eq!(code, 200);
        let samples = parse(&text);
        let families: BTreeSet<&str> = samples.keys().map(|s| family(s)).collect();
        // etcd shows these only after a probe (every 30 s) or a failure;
        // oxcd from the first connection, so alerts see every peer.
        let later_in_etcd = [
            "etcd_network_peer_round_trip_time_seconds",
            "etcd_network_peer_sent_failures_total",
        ];
        let is_etcd = std::env::var_os("OXCD_TEST_SERVER").is_some_and(|s| !s.is_empty());
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !families.contains(n.as_str()))
            .filter(|n| !(is_etcd && later_in_etcd.contains(&n.as_str())))
            .collect();
        assert!(
            missing.is_empty(),
            "queried by etcd's alerts or dashboard but not served: {missing:?}"
        );

        // They move with what they measure.
        let positive = [
            "etcd_server_has_leader",
            "etcd_server_leader_changes_seen_total",
            "etcd_server_proposals_committed_total",
            "etcd_server_proposals_applied_total",
            "grpc_server_started_total",
            "grpc_server_handled_total",
            "grpc_server_handling_seconds_count",
            "etcd_disk_wal_fsync_duration_seconds_count",
            "etcd_mvcc_db_total_size_in_bytes",
            "etcd_network_client_grpc_received_bytes_total",
            "etcd_network_client_grpc_sent_bytes_total",
            "etcd_network_peer_sent_bytes_total",
            "etcd_network_peer_received_bytes_total",
            "etcd_network_peer_round_trip_time_seconds_count",
            "etcd_network_active_peers",
            "process_resident_memory_bytes",
        ];
        for name in positive {
            if is_etcd && name.starts_with("etcd_network_peer_round_trip") {
                continue;
            }
            assert!(
                total(&samples, name) > 0.0,
                "{name} did not move:\n{}",
                grep(&text, name)
            );
        }
        assert_eq!(samples.get("etcd_server_proposals_pending"), Some(&0.0));
        assert!(total(&samples, "etcd_mvcc_put_total") >= 20.0);
        let committed = total(&samples, "etcd_server_proposals_committed_total");
        let applied = total(&samples, "etcd_server_proposals_applied_total");
        assert!(applied <= committed && applied > 0.0);
    })
    .await;
}

fn grep(text: &str, name: &str) -> String {
    text.lines()
        .filter(|l| l.contains(name))
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcd's e2e `metricsTest`: puts, deletes and ended watch streams count
/// as etcd counts them.
#[tokio::test]
async fn kv_and_watch_counters_count_like_etcd() {
    bounded(async {
        let m = Member::start().await;
        m.etcdctl(&["put", "k", "v"]).await.ok();
        for i in 1..=3 {
            m.etcdctl(&["put", &i.to_string(), "v"]).await.ok();
            assert_eq!(m.etcdctl(&["del", &i.to_string()]).await.ok(), "1\n");
            // A watch that replays history, then its client goes away.
            let mut w = tokio::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &m.endpoint(), "watch", "k", "--rev", "1"])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn etcdctl watch");
            let mut out = w.stdout.take().expect("stdout");
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("\nv\n") {
                let mut buf = [0u8; 256];
                let n = tokio::io::AsyncReadExt::read(&mut out, &mut buf).await.expect("read watch");
                assert!(n > 0, "watch ended early: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            // The watch is live: it counts as a watcher.
            let live = http_get(&m.client_url(), "/metrics").await.1;
            assert!(
                live.lines().any(|l| l == "etcd_debugging_mvcc_watcher_total 1"),
                "{}",
                grep(&live, "watcher")
            );
            w.kill().await.expect("kill watch");
        }
        // The server notices each ended stream on its own time.
        let canceled = r#"grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 3"#;
        let mut text = String::new();
        for _ in 0..100 {
            text = http_get(&m.client_url(), "/metrics").await.1;
            if text.lines().any(|l| l == canceled) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for line in [
            "etcd_mvcc_put_total 4",
            "etcd_mvcc_delete_total 3",
            "etcd_debugging_mvcc_keys_total 1",
            canceled,
            r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 4"#,
            r#"grpc_server_started_total{grpc_method="Compact",grpc_service="etcdserverpb.KV",grpc_type="unary"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{}", grep(&text, line.split(['{', ' ']).next().unwrap_or(line)));
        }
        for family in [
            "etcd_disk_defrag_inflight 0",
            "etcd_server_snapshot_apply_in_progress_total 0",
            "etcd_server_read_indexes_failed_total 0",
            "etcd_debugging_mvcc_slow_watcher_total 0",
        ] {
            assert!(text.lines().any(|l| l == family), "no line {family:?}");
        }
        // A /health check counts.
        assert_eq!(http_get(&m.client_url(), "/health").await.0, 200);
        let text = http_get(&m.client_url(), "/metrics").await.1;
        assert!(text.lines().any(|l| l == "etcd_server_health_success 1"), "{}", grep(&text, "health"));
    })
    .await;
}

/// The lease, put-size, compaction, watch-stream, auth and cluster-version
/// families of etcd 3.4 exist and move as etcd moves them.
#[tokio::test]
async fn lease_compaction_and_stream_families_move() {
    bounded(async {
        let m = Member::start().await;
        let url = m.client_url();
        let lease = m.etcdctl(&["lease", "grant", "60"]).await.ok().to_string();
        let id = lease
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("lease id in {lease:?}"))
            .to_string();
        m.etcdctl(&["lease", "keep-alive", "--once", &id])
            .await
            .ok();
        m.etcdctl(&["lease", "revoke", &id]).await.ok();
        m.etcdctl(&["put", "k", "v1"]).await.ok();
        m.etcdctl(&["put", "k", "v2"]).await.ok();
        let rev = m
            .etcdctl(&["put", "k", "v3", "-w", "json"])
            .await
            .ok()
            .to_string();
        let rev: serde_json::Value = serde_json::from_str(&rev).expect("json");
        let rev = rev["header"]["revision"].as_i64().expect("revision");
        m.etcdctl(&["compact", &rev.to_string(), "--physical"])
            .await
            .ok();

        // A live watch stream.
        let mut w = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &m.endpoint(), "watch", "k"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl watch");
        for _ in 0..100 {
            let text = http_get(&url, "/metrics").await.1;
            if text
                .lines()
                .any(|l| l == "etcd_debugging_mvcc_watch_stream_total 1")
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // An event delivered to it is counted and no longer pending.
        let mut out = w.stdout.take().expect("stdout");
        m.etcdctl(&["put", "k", "v4"]).await.ok();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("v4") {
            let mut buf = [0u8; 256];
            let n = tokio::io::AsyncReadExt::read(&mut out, &mut buf)
                .await
                .expect("read watch");
            assert!(n > 0, "watch ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        let text = http_get(&url, "/metrics").await.1;
        let samples = parse(&text);
        if std::env::var_os("OXCD_TEST_SERVER").is_none_or(|s| s.is_empty()) {
            // etcd 3.4 registers it but never counts.
            assert!(total(&samples, "etcd_debugging_mvcc_events_total") >= 1.0);
        }
        let has = |line: &str| text.lines().any(|l| l == line);
        for line in [
            "etcd_debugging_mvcc_pending_events_total 0",
            "etcd_debugging_mvcc_watch_stream_total 1",
            "etcd_debugging_lease_granted_total 1",
            "etcd_debugging_lease_revoked_total 1",
            "etcd_debugging_lease_renewed_total 1",
            "etcd_debugging_lease_ttl_total_count 1",
            // Four puts of "k" and a two-byte value.
            "etcd_debugging_mvcc_total_put_size_in_bytes 12",
            "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds_count 1",
            r#"etcd_cluster_version{cluster_version="3.4"} 1"#,
        ] {
            assert!(
                has(line),
                "no line {line:?} in:\n{}",
                grep(&text, line.split(['{', ' ']).next().unwrap_or(line))
            );
        }
        assert!(
            total(&samples, "etcd_debugging_mvcc_db_compaction_keys_total") >= 2.0,
            "{}",
            grep(&text, "compaction_keys")
        );
        assert!(
            total(
                &samples,
                "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds_count"
            ) >= 1.0
        );
        // etcd observes a deletion pause only for batches before the last
        // (none for a compaction this small); oxcd observes every batch.
        if std::env::var_os("OXCD_TEST_SERVER").is_none_or(|s| s.is_empty()) {
            assert!(
                total(
                    &samples,
                    "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds_count"
                ) >= 1.0
            );
        }
        assert!(
            total(&samples, "etcd_debugging_auth_revision") >= 1.0,
            "{}",
            grep(&text, "auth_revision")
        );
        for family in [
            "etcd_server_learner_promote_successes",
            "etcd_server_slow_apply_total",
            "etcd_server_heartbeat_send_failures_total",
            "etcd_mvcc_db_open_read_transactions",
            "etcd_debugging_mvcc_events_total",
            "etcd_disk_backend_snapshot_duration_seconds_count",
            "etcd_snap_fsync_duration_seconds_count",
            "etcd_snap_db_fsync_duration_seconds_count",
            "etcd_snap_db_save_total_duration_seconds_count",
            "etcd_debugging_snap_save_total_duration_seconds_count",
            "etcd_debugging_snap_save_marshalling_duration_seconds_count",
            "process_virtual_memory_max_bytes",
            "promhttp_metric_handler_requests_in_flight",
        ] {
            assert!(samples.contains_key(family), "no {family} in the scrape");
        }
        w.kill().await.expect("kill watch");
    })
    .await;
}
