//! etcdserver for oxcd: everything one member does between the wire and
//! the MVCC store.
//!
//! Map (each module's doc names the etcd file it mirrors):
//! - [`config`]: the one embed configuration (flags, env and YAML map onto it);
//! - [`embed`]: start and close a member;
//! - [`bootstrap`]: data-dir layout and persisted identity;
//! - [`membership`]: members, member and cluster IDs;
//! - [`propose`]: the write path (propose → apply → fsync → answer);
//! - [`apply`]: the applier: Put, DeleteRange, Txn, Compaction semantics;
//! - [`core`]: the handles every service shares;
//! - [`v3rpc`]: the gRPC services;
//! - [`serve`]: listeners, TLS, one port for gRPC and HTTP/1;
//! - [`version`]: the versions oxcd reports.
#![forbid(unsafe_code)]

pub mod apply;
pub mod bootstrap;
pub mod config;
pub mod core;
pub mod embed;
pub mod membership;
pub mod propose;
pub mod serve;
pub mod v3rpc;
pub mod version;
