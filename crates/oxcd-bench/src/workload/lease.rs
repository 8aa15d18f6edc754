//! `lease-keepalive`: etcd benchmark's `lease.go`. Each client grants one
//! lease of `--ttl` seconds, then sends keep-alives for it on its own
//! LeaseKeepAlive stream, one round trip at a time, until `--total` round
//! trips are done over all clients. A response with TTL ≤ 0 (lease gone)
//! counts as an error.

use std::sync::Arc;
use std::time::Instant;

use crate::h2chan::H2Channel;
use oxcd_api::etcdserverpb::lease_client::LeaseClient;
use oxcd_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{at_least, join_recorders, Budget};
use crate::cli::LeaseOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::progress::Progress;
use crate::report::{Recorder, Summary};

/// Runs the keep-alive benchmark until done or `deadline`.
///
/// # Errors
/// A TTL below 1; [`BenchError::Unimplemented`] when the server lacks the
/// Lease service.
pub async fn run(
    conns: &Conns,
    opts: &LeaseOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    at_least("--ttl", opts.ttl, 1)?;
    let budget = Arc::new(Budget::new(opts.total, deadline));
    let progress = Progress::new(opts.total, "lease-keepalive");
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for client in 0..conns.clients() {
        let lease = LeaseClient::new(conns.channel_for(client));
        let (budget, progress, ttl) = (budget.clone(), progress.clone(), opts.ttl);
        workers.spawn(async move {
            let mut rec = Recorder::new();
            let grant = LeaseGrantRequest { ttl, id: 0 };
            let granted =
                tokio::time::timeout_at(budget.deadline().into(), lease.clone().lease_grant(grant))
                    .await;
            let id = match granted {
                Ok(Ok(resp)) => resp.into_inner().id,
                Ok(Err(status)) => {
                    rec.status(&status);
                    if status.code() == tonic::Code::Unimplemented {
                        budget.stop();
                    }
                    return rec;
                }
                Err(_) => {
                    rec.failure("deadline");
                    return rec;
                }
            };
            let mut stream = KeepAlive::new(lease);
            while budget.take().is_some() {
                let t0 = Instant::now();
                let round = stream.round_trip(id);
                match tokio::time::timeout_at(budget.deadline().into(), round).await {
                    Ok(Ok(resp)) if resp.ttl > 0 => rec.ok(t0.elapsed()),
                    Ok(Ok(_)) => rec.failure("lease expired"),
                    Ok(Err(status)) => rec.status(&status),
                    Err(_) => rec.failure("deadline"),
                }
                progress.inc();
            }
            rec
        });
    }
    let rec = join_recorders(workers).await;
    let elapsed = started.elapsed();
    progress.finish();
    if rec.saw_unimplemented() && rec.ok_count() == 0 {
        return Err(BenchError::Unimplemented {
            service: "Lease",
            message: "lease grant refused".into(),
        });
    }
    Ok(Summary::new("lease-keepalive", opts.total, elapsed, &rec))
}

/// One client's keep-alive stream, opened on first use and reopened after
/// a failure.
struct KeepAlive {
    lease: LeaseClient<H2Channel>,
    open: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )>,
}

impl KeepAlive {
    fn new(lease: LeaseClient<H2Channel>) -> KeepAlive {
        KeepAlive { lease, open: None }
    }

    /// Sends one keep-alive for `id` and waits for its response.
    async fn round_trip(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let result = self.try_round_trip(id).await;
        if result.is_err() {
            self.open = None;
        }
        result
    }

    async fn try_round_trip(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let closed = || Status::unavailable("keep-alive stream closed");
        let req = LeaseKeepAliveRequest { id };
        match &self.open {
            Some((tx, _)) => tx.send(req).await.map_err(|_| closed())?,
            None => {
                let (tx, rx) = mpsc::channel(1);
                // Queued before the call: the server may hold its headers
                // until the first message.
                tx.send(req).await.map_err(|_| closed())?;
                let inbound = self
                    .lease
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                self.open = Some((tx, inbound));
            }
        }
        let Some((_, inbound)) = self.open.as_mut() else {
            return Err(closed());
        };
        inbound.message().await?.ok_or_else(closed)
    }
}
