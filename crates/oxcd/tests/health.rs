//! Health that tells the truth: `/health` and the gRPC health service
//! across an alarm and the loss of the leader, and the health counters.
//!
//! The `/health` and counter expectations hold for etcd 3.4.23 too
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`); `?serializable=true`, `/livez`,
//! `/readyz` and a gRPC status that follows the member came in later
//! releases (3.4.23 ignores the parameter, answers 404 for the probes and
//! always SERVING), so those are checked against oxcd only.

mod common;

use common::{bounded, http_get, Cluster};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn against_etcd() -> bool {
    std::env::var_os("OXCD_TEST_SERVER").is_some_and(|s| !s.is_empty())
}

async fn grpc_health(client_url: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(client_url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Polls the gRPC health status until it is `want` (it follows the
/// member within a moment).
async fn await_grpc_health(client_url: &str, want: ServingStatus) {
    let mut status = 0;
    for _ in 0..200 {
        status = grpc_health(client_url).await;
        if status == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gRPC health stayed {status}, never {want:?}");
}

/// Polls `/health` until it answers `code` (the member notices a lost
/// leader only after its election timeout).
async fn await_health(url: &str, path: &str, code: u16) -> String {
    for _ in 0..200 {
        let (c, body) = http_get(url, path).await;
        if c == code {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never answered {code}");
}

#[tokio::test]
async fn health_follows_alarms_and_leader_loss() {
    bounded(async {
        let mut c = Cluster::builder(3).start().await;
        let url = c.member(0).client_url();
        assert_eq!(
            http_get(&url, "/health").await,
            (200, r#"{"health":"true"}"#.to_string())
        );
        if !against_etcd() {
            assert_eq!(grpc_health(&url).await, ServingStatus::Serving as i32);
            assert_eq!(http_get(&url, "/livez").await, (200, "ok\n".to_string()));
            assert_eq!(
                http_get(&url, "/readyz?verbose").await,
                (
                    200,
                    "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
                        .to_string()
                )
            );
            assert_eq!(http_get(&url, "/readyz/linearizable_read").await.0, 200);
        }

        // An alarm makes every member unhealthy unless it is excluded.
        let mut client = c.client_of(0).await;
        let id = c.member_id(0);
        let mut opts = AlarmOptions::new();
        opts.with_member(id);
        client
            .alarm(
                AlarmAction::Activate,
                AlarmType::Nospace,
                Some(opts.clone()),
            )
            .await
            .expect("raise NOSPACE");
        assert_eq!(
            await_health(&url, "/health", 503).await,
            "{\"health\":\"false\"}\n"
        );
        assert_eq!(http_get(&url, "/health?exclude=NOSPACE").await.0, 200);
        if !against_etcd() {
            await_grpc_health(&url, ServingStatus::NotServing).await;
        }
        client
            .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
            .await
            .expect("disarm");
        await_health(&url, "/health", 200).await;
        if !against_etcd() {
            await_grpc_health(&url, ServingStatus::Serving).await;
        }

        if !against_etcd() {
            // A CORRUPT alarm fails readiness, not liveness.
            let mut opts = AlarmOptions::new();
            opts.with_member(id);
            client
                .alarm(
                    AlarmAction::Activate,
                    AlarmType::Corrupt,
                    Some(opts.clone()),
                )
                .await
                .expect("raise CORRUPT");
            let body = await_health(&url, "/readyz", 503).await;
            assert!(
                body.contains("[-]data_corruption failed: alarm activated: CORRUPT\n"),
                "{body}"
            );
            assert_eq!(
                http_get(&url, "/readyz?exclude=data_corruption").await.0,
                200
            );
            assert_eq!(http_get(&url, "/livez").await.0, 200);
            client
                .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(opts))
                .await
                .expect("disarm CORRUPT");
            await_health(&url, "/readyz", 200).await;
        }

        // Without a quorum there is no leader: unhealthy, but a
        // serializable check only looks at the member itself.
        c.kill9(1);
        c.kill9(2);
        await_health(&url, "/health", 503).await;
        if !against_etcd() {
            assert_eq!(http_get(&url, "/health?serializable=true").await.0, 200);
            assert_eq!(http_get(&url, "/livez").await.0, 200);
            let body = await_health(&url, "/readyz", 503).await;
            assert!(body.contains("[-]linearizable_read failed: "), "{body}");
            await_grpc_health(&url, ServingStatus::NotServing).await;
        }
        let (_, metrics) = http_get(&url, "/metrics").await;
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("etcd_server_health_failures "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("etcd_server_health_failures");
        assert!(failures >= 1.0, "{failures}");
        // The two lost peers count as disconnected.
        let disconnected: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("etcd_network_disconnected_peers_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert!(disconnected >= 2.0, "{disconnected}");
    })
    .await;
}
