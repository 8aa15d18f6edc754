//! The expiry loop: turns expired leases into `LeaseRevoke` proposals
//! (etcd's `lessor.runLoop` + `revokeExpiredLeases`, and the part of
//! `EtcdServer.run` that proposes the revokes), then proposes the due
//! lease checkpoints (`checkpointScheduledLeases`).

use super::Lessor;
use crate::apply::Request;
use crate::auth::store::SharedView;
use crate::auth::Identity;
use crate::propose::WritePath;
use oxcd_api::etcdserverpb::LeaseRevokeRequest;
use oxcd_api::EtcdError;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often expired leases are looked for.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Most revokes proposed per pass: etcd's revoke rate of 1000/s, halved
/// for the 500 ms pass.
pub(crate) const REVOKES_PER_PASS: usize = 500;
/// When a proposed revoke is checked again if the lease is still there
/// (etcd's `expiredLeaseRetryInterval`).
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Bound on one revoke proposal (etcd's request timeout).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(7);

/// Revokes expired leases and checkpoints due ones until `shutdown` is
/// cancelled. Only a primary lessor finds anything to do.
///
/// Cancel-safe: a revoke already handed to the write path is still applied.
pub async fn run(lessor: Lessor, writes: WritePath, auth: SharedView, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only the leader expires leases; the others learn of it through
        // the revokes it replicates.
        if !writes.is_leader() {
            continue;
        }
        let expired = lessor.find_expired(Instant::now(), REVOKES_PER_PASS, RETRY_INTERVAL);
        if !expired.is_empty() {
            // Proposed together, so the write path applies them as one group.
            // As root at the current auth revision (etcd's `WithRoot`):
            // with auth on, an anonymous revoke would fail on every member.
            let root = Identity {
                username: crate::auth::ROOT.into(),
                revision: auth.get().revision(),
            };
            let revokes = expired.into_iter().map(|id| revoke(&writes, &root, id));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = futures::future::join_all(revokes) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = super::checkpoint::propose_due(&lessor, &writes) => {}
        }
    }
}

async fn revoke(writes: &WritePath, root: &Identity, id: i64) {
    let req = Request::LeaseRevoke(LeaseRevokeRequest { id });
    match tokio::time::timeout(PROPOSE_TIMEOUT, writes.propose_as(req, root)).await {
        Ok(Ok(_)) => crate::metrics::counters().lease_expired.inc(),
        // Revoked meanwhile by a client: nothing to do.
        Ok(Err(EtcdError::LeaseNotFound)) => {}
        Ok(Err(e)) => tracing::warn!(
            lease_id = format_args!("{id:016x}"),
            error = %e,
            "failed to revoke an expired lease; retrying later"
        ),
        Err(_) => tracing::warn!(
            lease_id = format_args!("{id:016x}"),
            "revoking an expired lease timed out; retrying later"
        ),
    }
}
