//! `connect`: the cost of a new connection. Every operation dials a fresh
//! connection (TCP, the TLS handshake with `--cacert`, HTTP/2 and, with
//! `--user`, authentication), reads one key serializably on it and drops
//! it; its latency spans all of that. `--rate` paces the dials, so "1 000
//! new TLS connections per second" is `--rate 1000`.

use std::time::Instant;

use bytes::Bytes;
use oxcd_api::etcdserverpb::{RangeRequest, RangeResponse};
use tonic::Status;

use super::{drive, Plan};
use crate::cli::ConnectOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::report::Summary;

/// Dials `opts.total` connections over `conns`' clients until done or
/// `deadline`.
///
/// # Errors
/// None today; the `Result` keeps every workload's entry point alike.
pub async fn run(
    conns: &Conns,
    opts: &ConnectOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    let dialer = conns.dialer().clone();
    let req = RangeRequest {
        key: Bytes::from(opts.key.clone().into_bytes()),
        serializable: true,
        ..Default::default()
    };
    let plan = Plan {
        command: "connect",
        clients: conns.clients(),
        total: opts.total,
        rate: opts.rate,
        deadline,
        until: None,
    };
    Ok(drive(plan, move |_, i| {
        let (dialer, req) = (dialer.clone(), req.clone());
        async move {
            let ch = dialer
                .dial(i as usize)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let _: RangeResponse = ch.unary("/etcdserverpb.KV/Range", &req).await?;
            Ok(())
        }
    })
    .await)
}
