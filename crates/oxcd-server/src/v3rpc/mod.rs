//! The gRPC services of the client port (etcd's `etcdserver/api/v3rpc`).
//! Services not built yet (Watch, Lease, Auth, lock, election) are not
//! registered, so their methods answer `Unimplemented`.

pub mod cluster;
pub mod kv;
pub mod maintenance;

use crate::core::Core;
use oxcd_api::etcdserverpb::cluster_server::ClusterServer;
use oxcd_api::etcdserverpb::kv_server::KvServer;
use oxcd_api::etcdserverpb::maintenance_server::MaintenanceServer;
use std::sync::Arc;

/// Limits the gRPC layer enforces.
#[derive(Debug, Clone, Copy)]
pub struct GrpcLimits {
    /// Largest message accepted: `--max-request-bytes` + 512 KiB, as etcd.
    pub max_recv_bytes: usize,
    /// Effective backend quota reported by Status.
    pub quota_bytes: i64,
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
    let cluster = ClusterServer::new(cluster::ClusterService::new(core))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(kv)
        .add_service(maintenance)
        .add_service(cluster)
        .into_axum_router()
}
