//! Consensus plumbing for oxcd. Built so far: the durable half.
//!
//! - [`wal`]: the write-ahead log (etcd `wal/`): segmented files under
//!   `member/wal`, CRC-32C chained records, one `fdatasync` per save,
//!   torn-tail repair on open, refusal on real corruption, segment locks,
//!   release and purge of old segments.
//! - [`snap`]: raft snapshot files under `member/snap` (etcd
//!   `etcdserver/api/snap`): CRC-checked, newest-valid loading, purge.
//! - [`fs`]: the file seam both go through, with the real file system and an
//!   in-memory one for fault-injection and crash tests.
//! - [`error`]: the typed errors of each.
//!
//! - [`transport`]: raft messages between members over the peer URLs
//!   (etcd's protocol, or `oxcdpeerpb.Peer` with older oxcd members),
//!   never blocking the raft loop.
//! - [`rafthttp`]: etcd's peer protocol, for clusters mixing oxcd and
//!   etcd members.
//! - [`tls_error`]: TLS failures in Go's `crypto/tls` wording, for logs.
//! - [`node`]: the raft loop around raft-rs's `RawNode`: one thread that
//!   persists each `Ready` to the WAL with one fsync, sends, and hands
//!   what committed to the apply stage over a channel.
//!
//! - [`log_store`]: the in-memory raft log raft-rs reads, with the newest
//!   snapshot and compaction.
//! - [`snapshot_transfer`]: backend snapshots streamed to lagging followers
//!   over `Peer/Snapshot`, and saved on arrival.
//!
//! The WAL byte format is in `docs/design/wal.md`; snapshots and their
//! transfer in `docs/design/snapshots.md`.

#![forbid(unsafe_code)]

#[cfg(test)]
#[path = "../../oxcd-etcd-format/src/damage.rs"]
pub(crate) mod damage;
pub mod error;
pub mod fs;
pub mod log_store;
pub mod metrics;
pub mod node;
pub mod rafthttp;
pub mod snap;
pub mod snapshot_transfer;
pub mod tls_error;
pub mod transport;
pub mod wal;

pub use error::{Corruption, SnapError, WalError};
