//! The standard gRPC health service (`grpc.health.v1.Health`), which etcd
//! registers on its client port. Its status for the whole server (service
//! `""`) follows `/health`'s cheap rules: NOT_SERVING while this member
//! knows no leader or an alarm is raised, SERVING otherwise. (The quorum
//! read of `/health` is left to `/health`: a load balancer polling gRPC
//! health should not put reads through raft.)

use crate::core::Core;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// How often the status is brought up to date.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// Keeps the health status in line with the member until `shutdown`.
pub async fn follow(core: Arc<Core>, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut last = None;
    loop {
        let serving = core.leader() != 0 && !core.alarms.any_except(&[]);
        if last != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            last = Some(serving);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}
