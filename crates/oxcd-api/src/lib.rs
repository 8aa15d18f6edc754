//! The etcd v3 wire contract as Rust types.
//!
//! Every package, service, message and field number here matches etcd's
//! (v3.6), so any etcd client talks to oxcd unchanged. The `.proto` sources
//! live in `proto/`, one directory per protobuf package; `build.rs` compiles
//! them with protox (no system `protoc`) into prost messages and tonic
//! clients/servers. `bytes` fields are [`prost::bytes::Bytes`].
//!
//! Crate map:
//! - [`mvccpb`]: `KeyValue` and watch `Event`, the storage-level records.
//! - [`authpb`]: users, roles and permissions as the auth store keeps them.
//! - [`membershippb`]: membership requests replicated through raft (3.5+).
//! - [`etcdserverpb`]: the six client services (KV, Watch, Lease, Cluster,
//!   Maintenance, Auth) from `rpc.proto`, plus the raft envelope
//!   `InternalRaftRequest` (`raft_internal.proto`) and the legacy v2
//!   `Request`/`Metadata` (`etcdserver.proto`).
//! - [`v3lockpb`], [`v3electionpb`]: the Lock and Election services that a
//!   member serves itself.
//! - [`oxcdpeerpb`]: oxcd's own member-to-member protocol (raft messages
//!   and snapshots over the peer URLs).
//! - [`errors`]: etcd's error table ([`EtcdError`]): gRPC code and exact
//!   message for every `rpctypes` error.
//! - [`limits`]: default limits that clients can observe on the wire.
//!
//! Services are reached as e.g. `etcdserverpb::kv_server::{Kv, KvServer}`
//! and `etcdserverpb::kv_client::KvClient`.
#![forbid(unsafe_code)]

pub mod errors;
pub mod limits;

pub use errors::EtcdError;

/// Storage-level types: `KeyValue` and watch `Event`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Auth store records: `User`, `Role`, `Permission`, `UserAddOptions`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// Membership requests replicated through raft (cluster version, member attributes, downgrade).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod membershippb {
    tonic::include_proto!("membershippb");
    include!(concat!(env!("OUT_DIR"), "/membershippb.serde.rs"));
}

/// Client API services and messages, the `InternalRaftRequest` envelope and legacy v2 records.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The `Lock` service: distributed mutexes served by a member.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The `Election` service: leader election served by a member.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// oxcd's member-to-member protocol: raft message streams and snapshots.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod oxcdpeerpb {
    tonic::include_proto!("oxcdpeerpb");
}
