//! etcdserver for oxcd: everything one member does between the wire and
//! the MVCC store.
//!
//! Map (each module's doc names the etcd file it mirrors):
//! - [`config`]: the one embed configuration (flags, env and YAML map onto it);
//! - [`embed`]: start and close a member;
//! - [`cluster`]: data-dir layout and persisted identity, members and
//!   member and cluster IDs, safety checks before a membership change,
//!   requests only the leader answers forwarded to it;
//! - [`propose`], [`wait`]: the write path (propose → wait → answer);
//! - [`apply`]: the apply stage ([`apply::stage`], its own thread fed one
//!   way by the raft loop) and the applier: Put, DeleteRange, Txn,
//!   Compaction, leases, auth, alarms;
//! - [`lessor`]: leases, their expiry and attached keys;
//! - [`auth`]: users, roles, permissions and identities;
//! - [`compactor`]: auto-compaction, periodic or by revisions;
//! - [`corrupt`]: HashKV comparisons with the peers, at start and periodic;
//! - [`disk_guard`]: stops writes before the disk fills up;
//! - [`raft`]: starting the raft loop and the apply stage, taking and
//!   installing raft snapshots, read indexes, publishing this member;
//! - [`core`]: the handles every service shares;
//! - [`v3rpc`]: the gRPC services, Lock and Election included (on the
//!   recipes of [`v3rpc::concurrency`]);
//! - [`serve`]: listeners, TLS, one port for gRPC and HTTP/1;
//! - [`version`]: the versions oxcd reports.
#![forbid(unsafe_code)]

pub mod apply;
pub mod auth;
pub mod cluster;
pub mod compactor;
pub mod config;
pub mod core;
pub mod corrupt;
#[cfg(test)]
#[path = "../../oxcd-etcd-format/src/damage.rs"]
mod damage;
pub mod disk_guard;
pub mod embed;
pub mod etcd_files;
pub mod lessor;
pub mod metrics;
pub mod propose;
pub mod raft;
pub mod serve;
pub mod v3rpc;
pub mod version;
pub mod wait;
