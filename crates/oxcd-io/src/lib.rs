//! Async I/O adapters shared by the server (`oxcd-server`) and the load
//! generator (`oxcd-bench`): both speak HTTP/2 over the same kind of
//! socket and want the same write behaviour, and both read gRPC
//! messages out of HTTP/2 DATA frames.

#![forbid(unsafe_code)]

pub mod coalesce;
pub mod gather;

pub use coalesce::Coalesce;
pub use gather::Gather;
