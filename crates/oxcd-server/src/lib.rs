//! etcdserver for oxcd: everything one member does between the wire and
//! the MVCC store.
//!
//! Map (each module's doc names the etcd file it mirrors):
//! - [`config`]: the one embed configuration (flags, env and YAML map onto it);
//! - [`embed`]: start and close a member;
//! - [`bootstrap`]: data-dir layout and persisted identity;
//! - [`membership`]: members, member and cluster IDs;
//! - [`reconfig`]: safety checks before a membership change;
//! - [`forward`]: requests only the leader answers, forwarded to it;
//! - [`propose`]: the write path (propose → apply → fsync → answer);
//! - [`apply`]: the applier: Put, DeleteRange, Txn, Compaction, LeaseGrant
//!   and LeaseRevoke semantics;
//! - [`lessor`]: leases, their expiry and attached keys;
//! - [`auth`]: users, roles, permissions and identities;
//! - [`compactor`]: auto-compaction, periodic or by revisions;
//! - [`corrupt`]: HashKV comparisons with the peers, at start and periodic;
//! - [`disk_guard`]: stops writes before the disk fills up;
//! - [`raft_boot`], [`raft_snapshot`]: starting raft and the apply stage
//!   ([`apply::stage`], its own thread fed one way by the raft loop),
//!   taking and installing raft snapshots;
//! - [`core`]: the handles every service shares;
//! - [`v3rpc`]: the gRPC services;
//! - [`v3lock`], [`v3election`]: the Lock and Election services, on
//!   the recipes of [`concurrency`];
//! - [`serve`]: listeners, TLS, one port for gRPC and HTTP/1;
//! - [`version`]: the versions oxcd reports.
#![forbid(unsafe_code)]

pub mod apply;
pub mod auth;
pub mod bootstrap;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod core;
pub mod corrupt;
#[cfg(test)]
#[path = "../../oxcd-etcd-format/src/damage.rs"]
mod damage;
pub mod disk_guard;
pub mod embed;
pub mod etcd_files;
pub mod forward;
pub mod lessor;
pub mod membership;
pub mod metrics;
pub mod propose;
pub mod publish;
pub mod raft_boot;
pub mod raft_snapshot;
pub mod read_index;
pub mod reconfig;
pub mod serve;
pub mod v3election;
pub mod v3lock;
pub mod v3rpc;
pub mod version;
pub mod wait;
