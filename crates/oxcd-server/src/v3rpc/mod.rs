//! The gRPC services of the client port (etcd's `etcdserver/api/v3rpc`).
//! Lock and Election live in [`crate::v3rpc::lock`] and [`crate::v3rpc::election`]
//! (etcd keeps them in `api/v3lock` and `api/v3election`).

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod health;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub(crate) mod metrics;
pub(crate) mod snapshot;
mod unary;
pub mod watch;
mod watch_outbox;
pub mod watch_wire;

use crate::core::Core;
use oxcd_api::etcdserverpb::auth_server::AuthServer;
use oxcd_api::etcdserverpb::cluster_server::ClusterServer;
use oxcd_api::etcdserverpb::kv_server::KvServer;
use oxcd_api::etcdserverpb::lease_server::LeaseServer;
use oxcd_api::etcdserverpb::maintenance_server::MaintenanceServer;
use oxcd_api::v3electionpb::election_server::ElectionServer;
use oxcd_api::v3lockpb::lock_server::LockServer;
use std::convert::Infallible;
use std::sync::Arc;
use tonic::codegen::Service;

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

/// The answer type of every gRPC service (tonic's generated servers all
/// return this boxed future).
pub type GrpcFuture = tonic::codegen::BoxFuture<http::Response<tonic::body::Body>, Infallible>;

/// Routes a gRPC call to its service by the path's `/<package.Service>/`
/// part, after etcd's interceptor checks (`hasleader`, learner).
///
/// It replaces tonic's `Routes` (an axum router) plus an axum `from_fn`
/// middleware: per call those cloned a boxed service, boxed the request
/// body and matched the path with a router, about a fifth of the server's
/// CPU for a put at 1000 clients. Here a call costs one string match and
/// the service's own future.
#[derive(Clone)]
pub struct GrpcRouter {
    core: Arc<Core>,
    /// The KV service for the lean unary path ([`unary`]).
    kv_unary: Arc<kv::KvService>,
    /// Largest request message the lean path takes.
    max_recv_bytes: usize,
    kv: KvServer<kv::KvService>,
    maintenance: MaintenanceServer<maintenance::MaintenanceService>,
    lease: LeaseServer<lease::LeaseService>,
    watch: watch_wire::WatchServer,
    cluster: ClusterServer<cluster::ClusterService>,
    auth: AuthServer<auth::AuthService>,
    lock: LockServer<crate::v3rpc::lock::LockService>,
    election: ElectionServer<crate::v3rpc::election::ElectionService>,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    health_reporter: tonic_health::server::HealthReporter,
}

/// Builds the gRPC router for all implemented services.
pub fn routes(core: Arc<Core>, limits: GrpcLimits) -> GrpcRouter {
    let kv_unary = Arc::new(kv::KvService::new(core.clone()));
    let kv = KvServer::from_arc(kv_unary.clone())
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
    let watch = watch_wire::WatchServer::new(
        watch::WatchService::new(
            core.clone(),
            limits.max_recv_bytes,
            limits.watch_progress_interval,
        ),
        limits.max_recv_bytes,
    );
    let lock = LockServer::new(crate::v3rpc::lock::LockService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let election = ElectionServer::new(crate::v3rpc::election::ElectionService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let cluster = ClusterServer::new(cluster::ClusterService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let auth = AuthServer::new(auth::AuthService::new(core.clone()))
        .max_decoding_message_size(limits.max_recv_bytes)
        .max_encoding_message_size(usize::MAX);
    let (health_reporter, _) = tonic_health::server::health_reporter();
    let health = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
    );
    GrpcRouter {
        core,
        health,
        health_reporter,
        kv_unary,
        max_recv_bytes: limits.max_recv_bytes,
        kv,
        maintenance,
        lease,
        watch,
        cluster,
        auth,
        lock,
        election,
    }
}

impl GrpcRouter {
    /// Serves one gRPC call, counted in the gRPC metrics once etcd's
    /// interceptor checks let it through (as etcd's interceptor chain
    /// puts Prometheus last).
    pub fn call<B>(&mut self, req: http::Request<B>) -> GrpcFuture
    where
        B: tonic::codegen::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        if let Some(refused) = self.refuse(&req) {
            return answer(refused);
        }
        let Some(method) = metrics::method(req.uri().path()) else {
            return self.route(req);
        };
        crate::metrics::count_client_request(
            method.kind == metrics::Kind::Unary,
            req.headers()
                .get("client-api-version")
                .map(|v| v.as_bytes()),
        );
        let call = metrics::CallMetrics::start(method);
        if let Some(kv) = unary::KvMethod::from_path(req.uri().path()) {
            if unary::takes_fast_path(&req) {
                let svc = self.kv_unary.clone();
                return unary::serve(svc, kv, req, self.max_recv_bytes, Some(call));
            }
        }
        let answer = self.route(req.map(|b| metrics::CountedRequest::new(b, method)));
        Box::pin(async move {
            let Ok(resp) = answer.await;
            Ok(metrics::count_response(call, resp))
        })
    }

    /// What sets the gRPC health status ([`health::follow`]).
    pub fn health_reporter(&self) -> tonic_health::server::HealthReporter {
        self.health_reporter.clone()
    }

    fn route<B>(&mut self, req: http::Request<B>) -> GrpcFuture
    where
        B: tonic::codegen::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        let path = req.uri().path();
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        match service {
            "etcdserverpb.KV" => match unary::KvMethod::from_path(path) {
                Some(method) if unary::takes_fast_path(&req) => unary::serve(
                    self.kv_unary.clone(),
                    method,
                    req,
                    self.max_recv_bytes,
                    None,
                ),
                _ => self.kv.call(req),
            },
            "etcdserverpb.Watch" => self.watch.call(req),
            "etcdserverpb.Lease" => self.lease.call(req),
            "etcdserverpb.Maintenance" => self.maintenance.call(req),
            "etcdserverpb.Cluster" => self.cluster.call(req),
            "etcdserverpb.Auth" => self.auth.call(req),
            "v3lockpb.Lock" => self.lock.call(req),
            "v3electionpb.Election" => self.election.call(req),
            "grpc.health.v1.Health" => self.health.call(req),
            _ => answer(crate::serve::unknown_method(path)),
        }
    }

    /// etcd's interceptor checks. A client that sets the `hasleader`
    /// metadata is refused at once with `etcdserver: no leader` while this
    /// member knows no leader, instead of waiting for a timeout. A learner
    /// serves only Status and serializable Range (the KV service checks
    /// the serializable part), as etcd's learners do.
    fn refuse<B>(&self, req: &http::Request<B>) -> Option<tonic::Status> {
        let wants_leader = req
            .headers()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if wants_leader && self.core.leader() == 0 {
            return Some(oxcd_api::EtcdError::NoLeader.into());
        }
        let path = req.uri().path();
        if path != "/etcdserverpb.KV/Range"
            && path != "/etcdserverpb.Maintenance/Status"
            && self.core.is_learner()
        {
            return Some(oxcd_api::EtcdError::NotSupportedForLearner.into());
        }
        None
    }
}

fn answer(status: tonic::Status) -> GrpcFuture {
    Box::pin(std::future::ready(Ok(status.into_http())))
}
