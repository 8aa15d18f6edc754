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
#[cfg(test)]
mod damage;
pub mod membership;
pub mod snap;
pub mod wal;

/// Writes `bytes` to a new file at `path` and syncs it and its directory,
/// as etcd does for its WAL and snap files.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    std::io::Write::write_all(&mut f, bytes)?;
    f.sync_all()?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}
