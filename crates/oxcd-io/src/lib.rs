//! Async I/O adapters shared by the server (`oxcd-server`) and the load
//! generator (`oxcd-bench`): both speak HTTP/2 over the same kind of
//! socket and want the same write behaviour.

#![forbid(unsafe_code)]

pub mod coalesce;

pub use coalesce::Coalesce;
