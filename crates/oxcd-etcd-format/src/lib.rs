//! etcd's own files, read and written (docs/design/etcd-formats.md).
//!
//! - [`bolt`]: bbolt database files, the format of etcd's backend
//!   (`member/snap/db`) and of the stream the Snapshot RPC sends;
//! - [`wal`]: etcd's write-ahead log (`member/wal/*.wal`), read.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bolt;
pub mod wal;
