//! etcd's proxies (`etcd gateway`, `etcd grpc-proxy`), for `oxcd`:
//!
//! - [`gateway`]: the L4 TCP gateway, a local sidecar that hides the
//!   cluster's endpoints from clients.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gateway;
