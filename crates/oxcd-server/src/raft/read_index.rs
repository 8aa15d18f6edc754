//! Linearizable reads through raft's ReadIndex, batched across concurrent
//! readers (etcd's `linearizableReadLoop` in `etcdserver/v3_server.go`).
//!
//! A reader joins the waiting batch. At most one ReadIndex request is in
//! flight; when it is answered, every reader that joined *before it was
//! sent* gets its index, and the readers that arrived meanwhile go out
//! together in the next request. A reader is therefore never answered with
//! an index obtained before it arrived, which is what linearizability needs.
//! The reader then waits until the applied index reaches the read index.
//!
//! raft may drop a ReadIndex request (no leader yet, leader change); the
//! request is re-sent every 500 ms, as etcd does, until the request
//! timeout.

use oxcd_api::EtcdError;
use oxcd_raft::node::{Input, NodeError, NodeHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How often an unanswered ReadIndex request is sent again.
const RETRY: Duration = Duration::from_millis(500);

type Reply = oneshot::Sender<Result<u64, EtcdError>>;

#[derive(Default)]
struct Batch {
    waiting: Vec<Reply>,
    in_flight: bool,
}

/// Issues ReadIndex requests on behalf of readers.
pub struct ReadIndex {
    /// Set once the raft loop runs (the loop needs this batcher first).
    node: OnceLock<NodeHandle>,
    timeout: Duration,
    batch: Mutex<Batch>,
    pending: Mutex<HashMap<u64, oneshot::Sender<u64>>>,
    next_ctx: AtomicU64,
}

impl ReadIndex {
    /// Creates the batcher for member `member_id`; `timeout` bounds each
    /// ReadIndex round.
    ///
    /// Request contexts start from the same member-tagged base as request
    /// IDs (as etcd uses its request IDs): the leader keeps pending
    /// ReadIndex requests by context and ignores one whose context is
    /// already pending, so two members counting from the same number would
    /// have their rounds dropped and retried 500 ms later.
    pub fn new(timeout: Duration, member_id: u64) -> Arc<Self> {
        Arc::new(Self {
            node: OnceLock::new(),
            timeout,
            batch: Mutex::new(Batch::default()),
            pending: Mutex::new(HashMap::new()),
            next_ctx: AtomicU64::new(crate::propose::request_id_base(member_id)),
        })
    }

    /// Connects the batcher to the started raft loop.
    pub fn set_node(&self, node: NodeHandle) {
        let _ = self.node.set(node);
    }

    /// The index a linearizable read must wait to be applied.
    ///
    /// Cancel-safe: a dropped caller just misses its answer.
    pub async fn read_index(self: &Arc<Self>) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = lock(&self.batch);
            b.waiting.push(tx);
            !std::mem::replace(&mut b.in_flight, true)
        };
        if start {
            tokio::spawn(self.clone().drive());
        }
        rx.await.unwrap_or(Err(EtcdError::Stopped))
    }

    /// Answers batches until none is waiting.
    async fn drive(self: Arc<Self>) {
        loop {
            let readers = {
                let mut b = lock(&self.batch);
                if b.waiting.is_empty() {
                    b.in_flight = false;
                    return;
                }
                std::mem::take(&mut b.waiting)
            };
            let r = self.request_once().await;
            for tx in readers {
                let _ = tx.send(r.clone());
            }
        }
    }

    async fn request_once(&self) -> Result<u64, EtcdError> {
        let ctx = self.next_ctx.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        lock(&self.pending).insert(ctx, tx);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = loop {
            let Some(node) = self.node.get() else {
                break Err(EtcdError::Stopped);
            };
            if let Err(e) = node.send(Input::ReadIndex(ctx.to_be_bytes().to_vec())) {
                break Err(match e {
                    NodeError::Busy => EtcdError::TooManyRequests,
                    _ => EtcdError::Stopped,
                });
            }
            let wait = RETRY.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(index)) => break Ok(index),
                Ok(Err(_)) => break Err(EtcdError::Stopped),
                Err(_) if tokio::time::Instant::now() >= deadline => break Err(EtcdError::Timeout),
                Err(_) => {
                    // Not answered within the retry interval (etcd's
                    // "slow read index").
                    crate::metrics::counters().slow_read_indexes.inc();
                    continue;
                }
            }
        };
        lock(&self.pending).remove(&ctx);
        if result.is_err() {
            crate::metrics::counters().read_indexes_failed.inc();
        }
        result
    }

    /// Called by the raft loop when a ReadIndex request is answered.
    pub fn resolve(&self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some(tx) = lock(&self.pending).remove(&u64::from_be_bytes(bytes)) {
            let _ = tx.send(index);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Both maps stay consistent even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_use_distinct_read_contexts() {
        let timeout = Duration::from_secs(1);
        let a = ReadIndex::new(timeout, 0x1111);
        let b = ReadIndex::new(timeout, 0x2222);
        let ctx = |r: &ReadIndex| r.next_ctx.load(Ordering::Relaxed);
        assert_ne!(ctx(&a), ctx(&b));
        assert_eq!(ctx(&a) >> 48, 0x1111);
        assert_eq!(ctx(&b) >> 48, 0x2222);
    }
}
