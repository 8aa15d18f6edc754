//! etcd's default limits that clients can observe on the wire.
//!
//! Mirrors `embed/config.go`, `etcdserver/api/v3rpc/grpc.go` and
//! `lease/lessor.go` (etcd 3.4). The server may be configured away from the
//! first three; these are the defaults.

/// Default `--max-request-bytes`: the largest marshalled `InternalRaftRequest`
/// a proposal may have (1.5 MiB). Only strictly larger requests fail, with
/// [`crate::EtcdError::RequestTooLarge`].
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;

/// Headroom added to the request limit for the gRPC receive limit, so an
/// oversized request reaches etcd's own size check instead of being cut off
/// by gRPC. Default receive limit: 1_572_864 + 524_288 = 2_097_152.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Default `--max-txn-ops`: max(#compare, #success, #failure) allowed per
/// txn level before [`crate::EtcdError::TooManyOps`].
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Largest lease TTL in seconds; above it LeaseGrant fails with
/// [`crate::EtcdError::LeaseTTLTooLarge`].
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grpc_receive_limit_is_two_mib() {
        assert_eq!(
            DEFAULT_MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES,
            2 * 1024 * 1024
        );
    }
}
