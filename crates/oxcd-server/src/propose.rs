//! The write path of a single-member oxcd: propose → apply → fsync → answer.
//!
//! Mirrors the shape of etcd's `processInternalRaftRequestOnce`
//! (`etcdserver/v3_server.go`): check backpressure, stamp an id, marshal,
//! check the size, hand over, wait. Until the replication issue brings raft
//! and the WAL, the "log" is a channel into one apply thread, and the MVCC
//! backend's durable commit is what makes a write durable:
//!
//! 1. the apply thread takes every proposal waiting (group commit, bounded);
//! 2. applies each in order, assigning consecutive log indexes and recording
//!    the index as the consistent index in the same backend transaction;
//! 3. fsyncs the backend once for the whole group;
//! 4. publishes the durable revision, then answers every waiter.
//!
//! Readers may observe an applied revision before step 3 finished; the
//! linearizable read path therefore waits for [`WritePath::durable_rev`] to
//! reach the revision it read (see `v3rpc::kv`), so no client ever sees a
//! write that a crash could still take back.

use crate::apply::{Applier, Request, Response};
use crate::lessor::Lessor;
use oxcd_api::etcdserverpb::{InternalRaftRequest, RequestHeader};
use oxcd_api::mvccpb::Event;
use oxcd_api::EtcdError;
use oxcd_mvcc::KvStore;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Most proposals applied between two fsyncs.
const MAX_BATCH: usize = 4096;
/// Proposals queued before callers wait (backpressure).
const QUEUE_DEPTH: usize = 16 * 1024;

/// Receives the events of applied writes once they are durable, in
/// revision order (the watchable store implements it).
pub trait EventSink: Send + Sync + 'static {
    /// Publishes the events of one durable group of writes.
    fn publish(&self, events: Vec<Event>);
}

/// A sink that drops events, for a member with no watchers.
#[derive(Debug, Default)]
pub struct NoWatchers;

impl EventSink for NoWatchers {
    fn publish(&self, _events: Vec<Event>) {}
}

struct Proposal {
    req: Request,
    reply: oneshot::Sender<Result<Response, EtcdError>>,
}

/// Progress of the (single-member) log, shared with Status and headers.
#[derive(Debug, Default)]
pub struct LogProgress {
    /// Index of the last applied entry.
    pub applied: AtomicU64,
}

/// Handle for proposing writes; cheap to clone.
#[derive(Clone)]
pub struct WritePath {
    tx: mpsc::Sender<Proposal>,
    durable_rev: watch::Receiver<i64>,
    next_id: Arc<AtomicU64>,
    max_request_bytes: usize,
    progress: Arc<LogProgress>,
}

impl WritePath {
    /// Starts the apply thread over `store` and `lessor`. `first_index` is
    /// the log index already applied (the store's consistent index on
    /// restart).
    pub fn start(
        store: KvStore,
        lessor: Lessor,
        max_request_bytes: usize,
        member_id: u64,
        first_index: u64,
        sink: Arc<dyn EventSink>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (rev_tx, durable_rev) = watch::channel(store.rev());
        let progress = Arc::new(LogProgress {
            applied: AtomicU64::new(first_index),
        });
        let p = progress.clone();
        std::thread::Builder::new()
            .name("oxcd-apply".into())
            .spawn(move || {
                let applier = Applier::new(store.clone(), lessor);
                apply_loop(applier, store, rx, rev_tx, p, sink)
            })?;
        // Request ids as etcd builds them: member bits, start time, counter.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let base = ((member_id & 0xffff) << 48) | ((millis & 0xff_ffff_ffff) << 8);
        Ok(Self {
            tx,
            durable_rev,
            next_id: Arc::new(AtomicU64::new(base)),
            max_request_bytes,
            progress,
        })
    }

    /// Proposes `req` and waits until it is applied and durable.
    ///
    /// Cancel-safe: dropping the future abandons the wait, but a proposal
    /// already handed over is still applied (as in etcd).
    pub async fn propose(&self, req: Request) -> Result<Response, EtcdError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if encoded_len(&req, id) > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { req, reply })
            .await
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }

    /// A fresh request ID (member bits, start time, counter), as etcd's
    /// `reqIDGen.Next()`; LeaseGrant takes its server-chosen IDs from it.
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until every write up to revision `rev` is durable.
    pub async fn wait_durable(&self, rev: i64) -> Result<(), EtcdError> {
        let mut rx = self.durable_rev.clone();
        rx.wait_for(|d| *d >= rev)
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::Stopped)
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.progress.applied.load(Ordering::Acquire)
    }
}

/// Size of the request as it would travel through raft, which is what
/// etcd's `--max-request-bytes` limits.
fn encoded_len(req: &Request, id: u64) -> usize {
    let mut r = InternalRaftRequest {
        header: Some(RequestHeader {
            id,
            ..Default::default()
        }),
        ..Default::default()
    };
    match req {
        Request::Put(p) => r.put = Some(p.clone()),
        Request::DeleteRange(d) => r.delete_range = Some(d.clone()),
        Request::Txn(t) => r.txn = Some(t.clone()),
        Request::Compaction(c) => r.compaction = Some(*c),
        Request::LeaseGrant(g) => r.lease_grant = Some(*g),
        Request::LeaseRevoke(v) => r.lease_revoke = Some(*v),
    }
    r.encoded_len()
}

fn apply_loop(
    applier: Applier,
    store: KvStore,
    mut rx: mpsc::Receiver<Proposal>,
    durable: watch::Sender<i64>,
    progress: Arc<LogProgress>,
    sink: Arc<dyn EventSink>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut index = progress.applied.load(Ordering::Acquire);
        let mut events = Vec::new();
        let results: Vec<_> = batch
            .iter()
            .map(|p| {
                index += 1;
                let applied = applier.apply(&p.req, index);
                events.extend(applied.events);
                applied.result
            })
            .collect();
        if let Err(e) = store.sync() {
            // As with a failed WAL fsync in etcd: durability is gone, stop.
            tracing::error!(error = %e, "failed to sync the backend; exiting");
            std::process::exit(1);
        }
        progress.applied.store(index, Ordering::Release);
        durable.send_replace(store.rev());
        if !events.is_empty() {
            sink.publish(events);
        }
        for (p, r) in batch.drain(..).zip(results) {
            let _ = p.reply.send(r);
        }
    }
}
