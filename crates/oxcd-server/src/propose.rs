//! The write path: propose → raft (WAL fsync, replication to a quorum) →
//! apply → answer. Follows etcd's `processInternalRaftRequestOnce`
//! (`etcdserver/v3_server.go`) step for step:
//!
//! 1. backpressure: refuse when the applied index lags the committed one by
//!    more than 5000 entries (`etcdserver: too many requests`);
//! 2. stamp a fresh request ID and wrap the request in an
//!    `InternalRaftRequest`;
//! 3. refuse it if the envelope exceeds `--max-request-bytes`;
//! 4. register a waiter under the ID, hand the entry to the raft loop;
//! 5. wait for the waiter, the request timeout (5 s + 2 × election
//!    timeout) or shutdown.
//!
//! The raft loop fsyncs the WAL before an entry can commit, so an answered
//! write is durable on a quorum. The MVCC backend commits in batches behind
//! it; after a crash the WAL replays from the backend's consistent index.
//!
//! Linearizable reads use [`WritePath::linearizable_barrier`]: a batched
//! ReadIndex round, then a wait until the applied index reaches it.

use crate::apply::alarm::nospace_request;
use crate::apply::quota::{self, Quota};
use crate::apply::{Proposal, Request, Response};
use crate::auth::Identity;
use crate::raft::read_index::ReadIndex;
use crate::wait::Waiters;
use oxcd_api::mvccpb::Event;
use oxcd_api::EtcdError;
use oxcd_raft::node::{Input, NodeError, NodeHandle, Status};
use prost::bytes::Bytes;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most entries committed but not yet applied before proposals are refused.
const MAX_APPLY_LAG: u64 = 5000;

/// Receives the events of applied writes, in revision order (the watchable
/// store implements it).
pub trait EventSink: Send + Sync + 'static {
    /// Publishes the events of one applied group of writes.
    fn publish(&self, events: Vec<Event>);
}

/// A sink that drops events, for a member with no watchers.
#[derive(Debug, Default)]
pub struct NoWatchers;

impl EventSink for NoWatchers {
    fn publish(&self, _events: Vec<Event>) {}
}

/// Handle for proposing writes and waiting on reads; cheap to clone.
#[derive(Clone)]
pub struct WritePath {
    node: NodeHandle,
    waiters: Arc<Waiters>,
    reads: Arc<ReadIndex>,
    applied: watch::Receiver<u64>,
    next_id: Arc<AtomicU64>,
    max_request_bytes: usize,
    request_timeout: Duration,
    member_id: u64,
    quota: Option<Quota>,
    disk: Option<crate::disk_guard::DiskGuard>,
}

/// What [`WritePath::new`] needs.
pub struct WritePathParts {
    /// The raft loop.
    pub node: NodeHandle,
    /// Waiters shared with the apply side.
    pub waiters: Arc<Waiters>,
    /// The ReadIndex batcher shared with the apply side.
    pub reads: Arc<ReadIndex>,
    /// The applied index the apply side publishes.
    pub applied: watch::Receiver<u64>,
    /// This member's ID (seeds request IDs).
    pub member_id: u64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// 5 s + 2 × election timeout.
    pub request_timeout: Duration,
    /// The space quota checked before proposing (`None`: not checked).
    pub quota: Option<Quota>,
    /// Free disk space, checked before proposing (`None`: not checked).
    pub disk: Option<crate::disk_guard::DiskGuard>,
}

/// Request IDs as etcd builds them: low member bits, start time, counter.
pub fn request_id_base(member_id: u64) -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ((member_id & 0xffff) << 48) | ((millis & 0xff_ffff_ffff) << 8)
}

impl WritePath {
    /// Assembles the write path around a started raft loop.
    pub fn new(p: WritePathParts) -> Self {
        Self {
            node: p.node,
            waiters: p.waiters,
            reads: p.reads,
            applied: p.applied,
            next_id: Arc::new(AtomicU64::new(request_id_base(p.member_id))),
            max_request_bytes: p.max_request_bytes,
            request_timeout: p.request_timeout,
            member_id: p.member_id,
            quota: p.quota,
            disk: p.disk,
        }
    }

    /// Proposes `req` and waits until it is committed and applied.
    ///
    /// Cancel-safe: dropping the future abandons the wait, but a proposal
    /// already handed to raft may still be applied (as in etcd).
    pub async fn propose<P: Proposal>(&self, req: P) -> Result<P::Answer, EtcdError> {
        self.propose_as(req, &Identity::none()).await
    }

    /// Proposes `req` on behalf of `who` (its user and auth revision travel
    /// in the entry's header and are checked again at apply); answers with
    /// the response type of the request's kind.
    pub async fn propose_as<P: Proposal>(
        &self,
        req: P,
        who: &Identity,
    ) -> Result<P::Answer, EtcdError> {
        let answer = self.propose_request_as(req.into_request(), who).await?;
        P::answer(answer).ok_or_else(|| {
            EtcdError::Unknown("oxcd: write path answered with the wrong response type".into())
        })
    }

    async fn propose_request_as(
        &self,
        req: Request,
        who: &Identity,
    ) -> Result<Response, EtcdError> {
        // etcd's quotaKVServer / quotaLeaseServer: a request that would
        // take the backend past its quota raises NOSPACE and is refused.
        if quota::cost(&req) > 0 {
            // A disk too full to store more: refused at once (the disk
            // guard raises the alarm).
            if self.disk.as_ref().is_some_and(|d| d.is_low()) {
                return Err(EtcdError::NoSpace);
            }
            if let Some(q) = &self.quota {
                if !q.available(&req) {
                    self.raise_nospace().await;
                    return Err(EtcdError::NoSpace);
                }
            }
        }
        self.submit(req, who).await
    }

    /// Proposes this member's NOSPACE alarm and waits for it to apply
    /// (its failure is only logged: the caller is refused either way).
    pub async fn raise_nospace(&self) {
        let r = Request::Alarm(nospace_request(self.member_id));
        if let Err(e) = self.submit(r, &Identity::none()).await {
            tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
        }
    }

    /// Proposes `req` as is: the steps listed in the module docs.
    async fn submit(&self, req: Request, who: &Identity) -> Result<Response, EtcdError> {
        let status = self.status();
        if status.commit > status.applied + MAX_APPLY_LAG {
            return Err(EtcdError::TooManyRequests);
        }
        let id = self.next_request_id();
        let data = req.to_internal_as(id, who).encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        let mut guard = self.waiters.register(id);
        let counters = crate::metrics::counters();
        // Counted as etcd does: pending while proposed and not yet
        // answered; failed when raft would not take it or it timed out
        // (not when its apply answered an error, nor at shutdown).
        let _pending = Pending::new(&counters.proposals_pending);
        if let Err(e) = self.node.send(Input::Propose(Bytes::from(data))) {
            counters.proposals_failed.inc();
            return Err(node_error(e));
        }
        // The waiters' sweeper answers `request timed out` after the
        // request timeout.
        let outcome = guard.wait().await;
        if let Err(
            EtcdError::Timeout
            | EtcdError::TimeoutDueToLeaderFail
            | EtcdError::TimeoutDueToConnectionLost
            | EtcdError::LeaderChanged,
        ) = &outcome
        {
            counters.proposals_failed.inc();
        }
        outcome
    }

    /// Proposes a membership change and waits until it is applied;
    /// answers with the member list after it.
    pub async fn propose_conf_change(
        &self,
        change: &crate::cluster::conf_change::MemberChange,
    ) -> Result<Vec<crate::cluster::membership::Member>, EtcdError> {
        let id = self.next_request_id();
        let data = crate::cluster::conf_change::entry(change, id);
        let mut guard = self.waiters.register(id);
        self.node
            .send(Input::ProposeConfChange(data))
            .map_err(node_error)?;
        match guard.wait().await? {
            Response::Members(m) => Ok(m),
            _ => Err(EtcdError::Unknown("unexpected conf change answer".into())),
        }
    }

    /// Hands leadership to `to` and waits (bounded by the request timeout)
    /// until it leads.
    pub async fn move_leader(&self, to: u64) -> Result<(), EtcdError> {
        self.node
            .send(Input::TransferLeader(to))
            .map_err(node_error)?;
        let mut st = self.node.watch_status();
        let moved = tokio::time::timeout(self.request_timeout, async move {
            st.wait_for(|s| s.leader == to).await.is_ok()
        })
        .await;
        match moved {
            Ok(true) => Ok(()),
            Ok(false) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Unknown(
                "etcdserver: request timed out, leader transfer took too long".into(),
            )),
        }
    }

    /// Proposes an already-encoded entry without waiting (member
    /// attributes, which have no response).
    pub fn propose_raw(&self, data: Vec<u8>) -> Result<(), EtcdError> {
        self.node
            .send(Input::Propose(Bytes::from(data)))
            .map_err(node_error)
    }

    /// A fresh request ID (member bits, start time, counter), as etcd's
    /// `reqIDGen.Next()`; LeaseGrant takes its server-chosen IDs from it.
    pub fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until this member may serve a linearizable read: a ReadIndex
    /// round through the leader, then the applied index reaching it.
    pub async fn linearizable_barrier(&self) -> Result<(), EtcdError> {
        if oxcd_failpoint::broken("local-reads") {
            return Ok(());
        }
        let index = self.reads.read_index().await?;
        self.wait_applied(index).await
    }

    /// Waits (bounded by the request timeout) until `index` is applied.
    pub async fn wait_applied(&self, index: u64) -> Result<(), EtcdError> {
        // Usually already there (a token's entry, a read index): no timer.
        if *self.applied.borrow() >= index {
            return Ok(());
        }
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(self.request_timeout, async move {
            rx.wait_for(|a| *a >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The raft loop's latest status (leader, term, commit, applied).
    pub fn status(&self) -> Status {
        // The raft loop knows what it handed over; the apply stage
        // publishes what it has applied.
        Status {
            applied: self.applied_index(),
            ..self.node.status()
        }
    }

    /// Whether this member currently leads.
    pub fn is_leader(&self) -> bool {
        self.node.status().is_leader()
    }

    /// The raft loop itself (leader transfer, shutdown).
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }
}

fn node_error(e: NodeError) -> EtcdError {
    match e {
        NodeError::Busy => EtcdError::TooManyRequests,
        _ => EtcdError::Stopped,
    }
}

/// One proposal in `etcd_server_proposals_pending` while it lives.
struct Pending<'a>(&'a prometheus::IntGauge);

impl<'a> Pending<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        Pending(g)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
