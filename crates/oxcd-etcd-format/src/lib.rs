//! etcd's own files, read and written (docs/design/etcd-formats.md).
//!
//! - [`bolt`]: bbolt database files, the format of etcd's backend
//!   (`member/snap/db`) and of the stream the Snapshot RPC sends;
//! - [`wal`]: etcd's write-ahead log (`member/wal/*.wal`), read;
//! - [`snap`]: etcd's raft snapshot files (`member/snap/*.snap`), read;
//! - [`membership`]: how etcd records its members (v2 store, conf change
//!   contexts, the `members` bucket).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bolt;
pub mod membership;
pub mod snap;
pub mod wal;
