//! oxcd-bench: a load generator for etcd v3 servers, modelled on etcd's
//! `tools/benchmark`, so oxcd and etcd can be measured side by side with the
//! same instrument.
//!
//! Map:
//! - [`cli`]: the command line (etcd benchmark's global flags, one
//!   subcommand per workload);
//! - [`conn`]: gRPC connections, clients spread round-robin over them, and
//!   `--target-leader`;
//! - [`h2chan`]: the gRPC channel, straight on one HTTP/2 connection;
//! - [`tls`]: the TLS client configuration of `https://` endpoints;
//! - [`report`]: latency histograms (hdrhistogram, microseconds) and the
//!   [`Summary`] printed as text or as one JSON line;
//! - [`workload`]: `put`, `range`, `txn-put`, `watch`, `watch-latency`,
//!   `lease-keepalive`, `connect`, `compact`, each one file with a `run` entry point.
//!
//! Every workload is bounded twice: by its `--total` and by the overall
//! deadline (`--timeout`). Failed requests are counted per gRPC code, never
//! fatal; a server answering `Unimplemented` is reported as such
//! ([`Summary::unimplemented`] or [`BenchError::Unimplemented`]).
#![forbid(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod error;
pub mod h2chan;
mod keys;
mod progress;
pub mod report;
pub mod tls;
pub mod workload;

use std::time::{Duration, Instant};

pub use cli::{Cli, Command, GlobalOpts};
pub use conn::Conns;
pub use error::BenchError;
pub use report::Summary;

/// Connects as `cli.global` says and runs `cli.command` to completion or
/// until `--timeout` expires.
///
/// # Errors
/// Invalid arguments, a failed dial, no leader found, or a service the
/// server does not implement; per-request failures are counted in the
/// returned [`Summary`] instead.
pub async fn run(cli: &Cli) -> Result<Summary, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(cli.global.timeout);
    let unary = matches!(
        cli.command,
        Command::Put(_) | Command::Range(_) | Command::TxnPut(_) | Command::Compact(_)
    );
    if cli.global.client == cli::ClientKind::Tonic && !unary {
        return Err(BenchError::InvalidArgs(
            "--client tonic drives put, range, txn-put and compact only".into(),
        ));
    }
    let conns = Conns::connect(&cli.global).await?;
    match &cli.command {
        Command::Put(opts) => workload::put::run(&conns, opts, deadline).await,
        Command::Range(opts) => workload::range::run(&conns, opts, deadline).await,
        Command::TxnPut(opts) => workload::txn_put::run(&conns, opts, deadline).await,
        Command::Watch(opts) => workload::watch::run(&conns, opts, deadline).await,
        Command::WatchLatency(opts) => workload::watch_latency::run(&conns, opts, deadline).await,
        Command::LeaseKeepalive(opts) => workload::lease::run(&conns, opts, deadline).await,
        Command::Connect(opts) => workload::connect::run(&conns, opts, deadline).await,
        Command::Compact(opts) => workload::compact::run(&conns, opts, deadline).await,
    }
}
