//! The checker's errors: the reasons a run cannot produce a verdict at all
//! (as opposed to a verdict of FAIL or UNKNOWN).

use std::path::PathBuf;

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server binary could not be found or started.
    #[error("cannot start server {path}: {reason}")]
    Spawn {
        /// The binary that was tried.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Members did not become ready (their log tail is attached).
    #[error("cluster did not become ready: {0}")]
    NotReady(String),
    /// An existing cluster given with `--endpoints` does not answer.
    #[error("cluster unreachable: {0}")]
    Unreachable(String),
    /// The chosen nemesis cannot run in this setup.
    #[error("nemesis {nemesis} cannot run: {reason}")]
    Nemesis {
        /// The nemesis name.
        nemesis: String,
        /// Why it cannot run.
        reason: String,
    },
    /// A fault could not be lifted at the end of the run.
    #[error("cannot heal the cluster: {0}")]
    Heal(String),
    /// The final state could not be read.
    #[error("cannot read the final state: {0}")]
    FinalState(String),
    /// Bad arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Local I/O (data dirs, logs, output files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
