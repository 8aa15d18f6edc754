//! Errors of the WAL and the snapshotter (etcd `wal/wal.go` and
//! `snap/snapshotter.go` `Err*` values, as typed enums with context).

use crate::wal::SnapshotMarker;
use std::io;
use std::path::PathBuf;

/// Why a WAL record could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// The record's checksum does not continue the chain.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The checksum stored in the record.
        stored: u32,
        /// The running checksum the reader computed.
        computed: u32,
    },
    /// The length word is zero or has reserved bits set, or the frame runs
    /// past the end of a segment that is not the last one.
    #[error("bad frame: {0}")]
    BadFrame(&'static str),
    /// An unknown record type byte.
    #[error("unknown record type {0}")]
    UnknownType(u8),
    /// A record whose payload is too short or too long for its type.
    #[error("malformed {0} record")]
    Malformed(&'static str),
    /// A segment does not begin with the CRC record.
    #[error("segment does not start with a crc record")]
    MissingCrcRecord,
    /// An entry's index leaves a hole after the entries read so far.
    #[error("entry {index} leaves a gap after index {last}")]
    EntryGap {
        /// The index of the offending entry.
        index: u64,
        /// The last index read before it.
        last: u64,
    },
    /// Two metadata records disagree.
    #[error("conflicting metadata")]
    MetadataConflict,
}

/// Errors of [`crate::wal`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O error other than a failed sync.
    #[error("wal {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `fdatasync` (or a directory fsync) failed. Fatal: the state of the
    /// written pages is unknown, so the caller must stop (etcd logs and
    /// exits). The [`crate::wal::Wal`] refuses every later call.
    #[error("wal sync {path}: {source}")]
    SyncFailed {
        /// The file or directory whose sync failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An earlier write or sync failed; the WAL accepts nothing more.
    #[error("wal is unusable after an earlier write or sync failure")]
    Poisoned,
    /// Another handle (this process or another) holds the segment's lock.
    #[error("wal segment {0} is locked by another process")]
    Locked(PathBuf),
    /// [`crate::wal::Wal::create`] found segments already there.
    #[error("wal directory {0} already holds a wal")]
    AlreadyExists(PathBuf),
    /// No segment file in the directory (or none old enough to hold the
    /// snapshot's index).
    #[error("no wal segment in {dir} covers index {index}")]
    NotFound {
        /// The WAL directory.
        dir: PathBuf,
        /// The snapshot index asked for.
        index: u64,
    },
    /// The segment sequence numbers have a hole: a segment is missing.
    #[error("wal segment with sequence {expected:#x} is missing before {found}")]
    MissingSegment {
        /// The sequence number that should have come next.
        expected: u64,
        /// The file found in its place.
        found: PathBuf,
    },
    /// A record cannot be trusted and it is not a torn write at the tail of
    /// the last segment. The WAL is refused; etcd moves such a directory to
    /// `wal.broken.<time>` only by operator action.
    #[error("wal corrupt at {path} offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record's frame.
        offset: u64,
        /// What is wrong.
        reason: Corruption,
    },
    /// The snapshot given to open was never recorded in the WAL.
    #[error("snapshot {0:?} not found in wal")]
    SnapshotNotFound(SnapshotMarker),
    /// The WAL records the snapshot's index with a different term.
    #[error("snapshot {asked:?} does not match wal record {found:?}")]
    SnapshotMismatch {
        /// The marker given to open.
        asked: SnapshotMarker,
        /// The marker the WAL holds at that index.
        found: SnapshotMarker,
    },
    /// `save` was given entries that are not contiguous, or that start past
    /// the end of the log.
    #[error("entries to save do not continue the log: index {index} after last index {last}")]
    InvalidAppend {
        /// The offending entry's index.
        index: u64,
        /// The index it should have followed.
        last: u64,
    },
    /// One record would be larger than the format allows.
    #[error("wal record of {0} bytes is too large")]
    RecordTooLarge(usize),
}

/// Errors of [`crate::snap`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapError {
    /// An I/O error other than a failed sync.
    #[error("snap {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A sync failed while saving; fatal, as for the WAL.
    #[error("snap sync {path}: {source}")]
    SyncFailed {
        /// The file or directory whose sync failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No valid snapshot file (etcd `ErrNoSnapshot`).
    #[error("no available snapshot")]
    NoSnapshot,
    /// The file failed its checks (etcd `ErrCRCMismatch`, `ErrEmptySnapshot`).
    #[error("snapshot file {path} is broken: {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> WalError {
    let path = path.into();
    move |source| WalError::Io { op, path, source }
}

pub(crate) fn sync_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> WalError {
    let path = path.into();
    move |source| WalError::SyncFailed { path, source }
}
