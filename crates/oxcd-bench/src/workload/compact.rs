//! `compact`: put latency while the server compacts a long history. First
//! `--revisions` puts build the history on `--key-space-size` keys (so
//! almost every revision is superseded and compaction has to delete it);
//! then puts run at `--rate`, first `--idle-total` of them with nothing
//! else going on, then as many as fit while a physical compaction of the
//! whole history runs. The summary is the puts during compaction; the idle
//! percentiles and the compaction's duration are extras, so the two can be
//! compared (etcd stalls writes while it compacts).

use std::time::Instant;

use oxcd_api::etcdserverpb::{CompactionRequest, CompactionResponse, PutRequest, PutResponse};
use tokio_util::sync::CancellationToken;

use super::{at_least, drive, Plan};
use crate::cli::CompactOpts;
use crate::conn::{Conns, Kv};
use crate::error::BenchError;
use crate::keys::{encode_key, random_value};
use crate::report::Summary;

/// Fills the history, measures idle puts, then puts during compaction.
///
/// # Errors
/// `--key-space-size` or `--rate` below 1, a failed fill or compaction, or
/// the deadline passing before compaction starts.
pub async fn run(
    conns: &Conns,
    opts: &CompactOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    at_least("--key-space-size", opts.key_space_size, 1)?;
    at_least("--rate", opts.rate, 1)?;
    let clients = conns.kv_clients();
    let value = random_value(opts.val_size);
    let space = opts.key_space_size;
    let puts = |command: &'static str, total: u64, rate: u64, until: Option<CancellationToken>| {
        let (clients, value) = (clients.clone(), value.clone());
        let plan = Plan {
            command,
            clients: clients.len(),
            total,
            rate,
            deadline,
            until,
        };
        drive(plan, move |client, i| {
            let kv = clients[client].clone();
            let req = PutRequest {
                key: encode_key(i % space, 8),
                value: value.clone(),
                ..Default::default()
            };
            async move { kv.put(&req).await.map(drop) }
        })
    };

    let fill = puts("compact-fill", opts.revisions, 0, None).await;
    if fill.ok < opts.revisions {
        return Err(BenchError::Deadline("the fill"));
    }
    let idle = puts("compact-idle", opts.idle_total, opts.rate, None).await;

    let kv = clients[0].clone();
    let head: PutResponse = kv
        .put(&PutRequest {
            key: encode_key(0, 8),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| BenchError::setup("KV", "put before compaction", s))?;
    let revision = head.header.map_or(0, |h| h.revision);
    let done = CancellationToken::new();
    let compaction = tokio::spawn(compact(kv, revision, done.clone()));
    let started = Instant::now();
    let mut during = puts("compact", opts.total, opts.rate, Some(done.clone())).await;
    tokio::time::timeout_at(deadline.into(), compaction)
        .await
        .map_err(|_| BenchError::Deadline("the compaction"))?
        .map_err(|_| BenchError::Deadline("the compaction (its task failed)"))?
        .map_err(|s| BenchError::setup("KV", "compact", s))?;
    let seconds = started.elapsed().as_secs_f64();
    if done.is_cancelled() {
        // The phase ends with the compaction, not at `--total`.
        during.total = during.ok + during.errors;
        during.timed_out = false;
    }
    let ratio = if idle.latency.p99_ms > 0.0 {
        during.latency.p99_ms / idle.latency.p99_ms
    } else {
        0.0
    };
    Ok(during
        .with_extra("revisions", opts.revisions)
        .with_extra("compacted_revision", revision)
        .with_extra("fill_ops_per_sec", fill.ops_per_sec)
        .with_extra("compaction_s", seconds)
        .with_extra("idle_ops", idle.ok)
        .with_extra("idle_p50_ms", idle.latency.p50_ms)
        .with_extra("idle_p99_ms", idle.latency.p99_ms)
        .with_extra("p99_during_over_idle", ratio))
}

/// A physical compaction at `revision` (the call returns once the history
/// is deleted); cancels `done` when it returns, whatever the outcome.
async fn compact(
    kv: Kv,
    revision: i64,
    done: CancellationToken,
) -> Result<CompactionResponse, tonic::Status> {
    let _done = done.drop_guard();
    let req = CompactionRequest {
        revision,
        physical: true,
    };
    kv.channel().unary("/etcdserverpb.KV/Compact", &req).await
}
