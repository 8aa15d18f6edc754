//! The gRPC services of the client port (etcd's `etcdserver/api/v3rpc`).
//! Lock and Election live in [`crate::v3lock`] and [`crate::v3election`]
//! (etcd keeps them in `api/v3lock` and `api/v3election`). Services not
//! built yet (Auth) are not registered, so their methods answer
//! `Unimplemented`.

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use crate::core::Core;
use axum::response::IntoResponse;
use oxcd_api::etcdserverpb::cluster_server::ClusterServer;
use oxcd_api::etcdserverpb::kv_server::KvServer;
use oxcd_api::etcdserverpb::lease_server::LeaseServer;
use oxcd_api::etcdserverpb::maintenance_server::MaintenanceServer;
use oxcd_api::etcdserverpb::watch_server::WatchServer;
use oxcd_api::v3electionpb::election_server::ElectionServer;
use oxcd_api::v3lockpb::lock_server::LockServer;
use std::sync::Arc;

/// Limits the gRPC layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct GrpcLimits {
    /// Largest message accepted: `--max-request-bytes` + 512 KiB, as etcd.
    pub max_recv_bytes: usize,
    /// Effective backend quota reported by Status.
    pub quota_bytes: i64,
    /// Effective watch progress-notify interval (see
    /// [`watch::progress_interval`]).
    pub watch_progress_interval: std::time::Duration,
}

/// Builds the gRPC routes for all implemented services.
pub fn routes(core: Arc<Core>, limits: GrpcLimits) -> axum::Router {
    let kv = KvServer::new(kv::KvService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let maintenance = MaintenanceServer::new(maintenance::MaintenanceService::new(
        core.clone(),
        limits.quota_bytes,
    ))
    .max_decoding_message_size(limits.max_recv_bytes)
    .max_encoding_message_size(usize::MAX);
    let lease = LeaseServer::new(lease::LeaseService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let watch = WatchServer::new(watch::WatchService::new(
        core.clone(),
        limits.max_recv_bytes,
        limits.watch_progress_interval,
    ))
    .max_decoding_message_size(limits.max_recv_bytes)
    .max_encoding_message_size(usize::MAX);
    let lock = LockServer::new(crate::v3lock::LockService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let election = ElectionServer::new(crate::v3election::ElectionService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let cluster = ClusterServer::new(cluster::ClusterService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(kv)
        .add_service(maintenance)
        .add_service(lease)
        .add_service(watch)
        .add_service(cluster)
        .add_service(lock)
        .add_service(election)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(core, require_leader))
}

/// etcd's `hasleader` metadata: a client that sets it is refused at once
/// with `etcdserver: no leader` while this member knows no leader, instead
/// of waiting for a timeout (etcd's v3rpc interceptors).
async fn require_leader(
    axum::extract::State(core): axum::extract::State<Arc<Core>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let wants_leader = req
        .headers()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true");
    if wants_leader && core.leader() == 0 {
        return tonic::Status::from(oxcd_api::EtcdError::NoLeader)
            .into_http::<axum::body::Body>()
            .into_response();
    }
    // A learner serves only Status and serializable Range (checked in the
    // KV service), as etcd's learners do.
    let path = req.uri().path();
    if core.is_learner()
        && path != "/etcdserverpb.KV/Range"
        && path != "/etcdserverpb.Maintenance/Status"
    {
        return tonic::Status::from(oxcd_api::EtcdError::NotSupportedForLearner)
            .into_http::<axum::body::Body>()
            .into_response();
    }
    next.run(req).await
}
