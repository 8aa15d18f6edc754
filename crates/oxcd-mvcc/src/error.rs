//! Errors of the MVCC store (mirrors the error values of etcd's `mvcc`
//! package: `ErrCompacted`, `ErrFutureRev`, plus what a Rust backend adds).
//!
//! Expected conditions a client can cause (`Compacted`, `FutureRev`) carry
//! the revisions involved so the service layer can report them; everything
//! else is a storage failure that the server should treat as fatal for the
//! member (etcd panics in the same places).

use std::path::PathBuf;

/// Everything an MVCC operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MvccError {
    /// The requested revision has been compacted away (etcd `ErrCompacted`,
    /// "mvcc: required revision has been compacted").
    #[error("mvcc: required revision has been compacted (requested {requested}, compacted at {compact_rev})")]
    Compacted {
        /// The revision that was asked for.
        requested: i64,
        /// The store's compact revision when the request was checked.
        compact_rev: i64,
    },

    /// The requested revision is newer than the store's current revision
    /// (etcd `ErrFutureRev`, "mvcc: required revision is a future revision").
    #[error("mvcc: required revision is a future revision (requested {requested}, current {current_rev})")]
    FutureRev {
        /// The revision that was asked for.
        requested: i64,
        /// The store's current revision when the request was checked.
        current_rev: i64,
    },

    /// The redb backend failed while doing `op`.
    #[error("mvcc backend: {op}: {source}")]
    Backend {
        /// What the store was doing ("begin write", "commit", ...).
        op: &'static str,
        /// redb's error (boxed: it is large and this path is cold).
        #[source]
        source: Box<redb::Error>,
    },

    /// The backend file would not open: it fails redb's checksums, is not a
    /// redb file, or cannot be read. Nothing is served from it.
    #[error("cannot open backend file {path}: {source}")]
    Open {
        /// The backend file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },

    /// A backend file written by an older oxcd could not be upgraded to
    /// the current file format (the original is left as it was).
    #[error("cannot upgrade backend file {path}: {reason}")]
    Upgrade {
        /// The backend file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },

    /// A filesystem operation on the backend file failed.
    #[error("mvcc backend file {path}: {source}")]
    Io {
        /// The backend file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Data read from the backend does not make sense: a malformed revision
    /// key, an undecodable `KeyValue`, a revision the index points at that
    /// is missing on disk, a meta value of the wrong length.
    #[error("mvcc backend corrupt: {0}")]
    Corrupt(String),

    /// The compacted revisions up to `rev` were not all deleted: the store
    /// is closing (the next open finishes the job) or the backend failed.
    /// The compaction itself stands; only waiting for it failed.
    #[error("mvcc: deleting the revisions compacted at {rev} did not finish: {reason}")]
    CompactionUnfinished {
        /// The compaction revision.
        rev: i64,
        /// Why it stopped.
        reason: String,
    },
}

impl MvccError {
    /// Wraps any redb error with the operation that produced it.
    pub(crate) fn backend(op: &'static str, source: impl Into<redb::Error>) -> Self {
        MvccError::Backend {
            op,
            source: Box::new(source.into()),
        }
    }

    /// True for the two errors a client request can legitimately cause.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            MvccError::Compacted { .. } | MvccError::FutureRev { .. }
        )
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = MvccError> = std::result::Result<T, E>;
