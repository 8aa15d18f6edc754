//! The etcd v3 wire contract as Rust types.
//!
//! Every message, service and field number here matches etcd's, so any etcd
//! client talks to oxcd unchanged. The .proto sources live in `proto/`.

/// Storage-level types: `KeyValue` and watch `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
