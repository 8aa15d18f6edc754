//! The errors that stop a benchmark before or instead of measuring.

/// Why a benchmark could not run. Failures of individual requests are not
/// errors: they are counted in the [`crate::Summary`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A flag value that makes the workload meaningless.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// An endpoint that is not a plain `host:port` or `http://host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Dialling an endpoint failed or timed out.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The URL dialled.
        endpoint: String,
        /// The connect or handshake error.
        #[source]
        source: crate::h2chan::DialError,
    },
    /// `--target-leader`: no endpoint reported itself as the leader.
    #[error("no endpoint reports itself as the leader")]
    NoLeader,
    /// The server answered `Unimplemented` for a service the workload needs.
    #[error("{service} is not implemented by the server: {message}")]
    Unimplemented {
        /// The gRPC service, e.g. `Watch`.
        service: &'static str,
        /// The server's message.
        message: String,
    },
    /// A setup call (not a measured request) failed.
    #[error("{what}: {status}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The overall deadline passed before the workload could start.
    #[error("deadline passed during {0}")]
    Deadline(&'static str),
}

impl BenchError {
    /// Maps a setup failure, turning `Unimplemented` into [`BenchError::Unimplemented`].
    pub(crate) fn setup(service: &'static str, what: &'static str, status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unimplemented {
            BenchError::Unimplemented {
                service,
                message: status.message().to_string(),
            }
        } else {
            BenchError::Setup { what, status }
        }
    }
}
