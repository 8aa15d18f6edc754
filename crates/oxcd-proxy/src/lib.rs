//! etcd's proxies (`etcd gateway`, `etcd grpc-proxy`), for `oxcd`:
//!
//! - [`gateway`]: the L4 TCP gateway, a local sidecar that hides the
//!   cluster's endpoints from clients.
//! - [`grpc_proxy`]: the L7 gRPC proxy, which puts many clients in front
//!   of a small cluster by sharing their watches, keep-alives and
//!   serializable reads.
//! - [`discovery`]: `--discovery-srv`, the endpoints from DNS SRV records.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod discovery;
pub mod gateway;
pub mod grpc_proxy;
pub mod log;
