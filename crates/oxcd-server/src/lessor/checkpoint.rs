//! Lease checkpoints: the primary records the remaining TTL of long leases
//! through raft, so that a new leader counts from what was left instead of
//! the full TTL (etcd's `scheduleCheckpointIfNeeded`,
//! `findDueScheduledCheckpoints`, `checkpointScheduledLeases` and
//! `Checkpoint` in `lease/lessor.go`).
//!
//! # Protocol
//!
//! - A lease whose TTL to count from (checkpointed remaining TTL, else the
//!   full TTL) is longer than the interval is scheduled for a checkpoint
//!   one interval after it is granted, promoted or checkpointed.
//! - Every pass of the expiry loop, the leader takes the due checkpoints,
//!   at most [`MAX_BATCH`] per `LeaseCheckpoint` proposal and
//!   [`MAX_PER_PASS`] in all, each with `ceil(expiry - now)` seconds. A
//!   lease that has expired, or has not lost a whole second, is skipped.
//! - Applying a checkpoint sets the lease's remaining TTL on every member
//!   (and writes it to the lease table with
//!   `--experimental-enable-lease-checkpoint-persist`, etcd 3.5); the
//!   primary schedules the next one. [`Lessor::promote`] counts from it.
//! - A renewal of a lease with a remaining TTL first proposes a checkpoint
//!   of 0 (etcd 3.5's `Renew`), so a later leader uses the full TTL again.
//!
//! The interval is 5 minutes, as in etcd 3.4. Tests shorten it with the
//! hidden environment variable [`INTERVAL_ENV`] (milliseconds); it has no
//! effect unless checkpoints are enabled.

use super::lease::Lease;
use super::Lessor;
use crate::apply::Request;
use crate::propose::WritePath;
use oxcd_api::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// etcd's `defaultLeaseCheckpointInterval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Test-only override of the checkpoint interval, in milliseconds.
pub const INTERVAL_ENV: &str = "OXCD_TEST_LEASE_CHECKPOINT_INTERVAL_MS";
/// Most checkpoints in one raft entry (etcd's `maxLeaseCheckpointBatchSize`).
pub(crate) const MAX_BATCH: usize = 1000;
/// Most checkpoints per 500 ms pass: etcd's `leaseCheckpointRate` of
/// 1000/s, halved, counted in batches as etcd does.
pub(crate) const MAX_PER_PASS: usize = MAX_BATCH * 500;
/// Bound on one checkpoint proposal (etcd's request timeout).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(7);

/// How the lessor checkpoints, once enabled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// Time between checkpoints of one lease.
    interval: Duration,
    /// Whether applied checkpoints are written to the lease table.
    persist: bool,
}

/// The checkpoint interval: [`INTERVAL_ENV`] when set to a positive number
/// of milliseconds, otherwise [`DEFAULT_CHECKPOINT_INTERVAL`].
pub fn checkpoint_interval() -> Duration {
    std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(DEFAULT_CHECKPOINT_INTERVAL, Duration::from_millis)
}

/// Schedules lease `l`'s next checkpoint one interval after `now` if its
/// TTL is longer than the interval (etcd's `scheduleCheckpointIfNeeded`).
pub(super) fn schedule(
    settings: &Option<Settings>,
    queue: &mut BinaryHeap<Reverse<(Instant, i64)>>,
    l: &mut Lease,
    now: Instant,
) {
    let Some(s) = settings else { return };
    let ttl = Duration::from_secs(u64::try_from(l.refresh_ttl()).unwrap_or(0));
    if ttl <= s.interval {
        return;
    }
    if let Some(at) = now.checked_add(s.interval) {
        l.next_checkpoint = Some(at);
        queue.push(Reverse((at, l.id)));
    }
}

impl Lessor {
    /// Turns checkpoints on (etcd's `SetCheckpointer`), every `interval`,
    /// written to the lease table if `persist`. Call before
    /// [`Lessor::promote`] so that recovered leases are scheduled.
    pub fn enable_checkpoints(&self, interval: Duration, persist: bool) {
        self.state().checkpoints = Some(Settings { interval, persist });
    }

    /// Records an applied checkpoint: lease `id` counts from
    /// `remaining_ttl` seconds on the next promote (0: the full TTL again).
    /// Returns the lease's granted TTL when the lease table should be
    /// updated too (persistence on); `None` for an unknown lease, which
    /// etcd ignores as well.
    pub fn checkpoint(&self, id: i64, remaining_ttl: i64) -> Option<i64> {
        self.checkpoint_at(Instant::now(), id, remaining_ttl)
    }

    pub(super) fn checkpoint_at(&self, now: Instant, id: i64, remaining_ttl: i64) -> Option<i64> {
        let mut st = self.state();
        let st = &mut *st;
        let l = st.leases.get_mut(&id)?;
        l.remaining_ttl = remaining_ttl;
        if st.primary {
            schedule(&st.checkpoints, &mut st.checkpoint_queue, l, now);
        }
        st.checkpoints.filter(|s| s.persist).map(|_| l.ttl)
    }

    /// The checkpoint a renewal of lease `id` must propose first: a reset
    /// to the full TTL when checkpoints are on and the lease has a
    /// remaining TTL recorded (etcd 3.5's `Renew`); otherwise `None`.
    pub fn renewal_checkpoint(&self, id: i64) -> Option<LeaseCheckpointRequest> {
        let st = self.state();
        st.checkpoints?;
        let l = st.leases.get(&id)?;
        (l.remaining_ttl > 0 && !l.expired(Instant::now())).then(|| LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            }],
        })
    }

    /// Up to `limit` due checkpoints with their remaining TTL in whole
    /// seconds, rounded up (etcd's `findDueScheduledCheckpoints`). Taken
    /// checkpoints are not rescheduled until one is applied.
    pub(super) fn find_due_checkpoints(&self, now: Instant, limit: usize) -> Vec<LeaseCheckpoint> {
        let mut st = self.state();
        if !st.primary || st.checkpoints.is_none() {
            return Vec::new();
        }
        let st = &mut *st;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((t, id))) = st.checkpoint_queue.peek().copied() else {
                break;
            };
            if t > now {
                break;
            }
            st.checkpoint_queue.pop();
            let Some(l) = st.leases.get_mut(&id) else {
                continue;
            };
            if l.next_checkpoint != Some(t) {
                continue;
            }
            l.next_checkpoint = None;
            let Some(expiry) = l.expiry.filter(|e| *e > now) else {
                continue;
            };
            let left = (expiry - now).as_secs_f64().ceil();
            let remaining_ttl = if left >= i64::MAX as f64 {
                i64::MAX
            } else {
                left as i64
            };
            if remaining_ttl >= l.ttl {
                continue;
            }
            out.push(LeaseCheckpoint { id, remaining_ttl });
        }
        out
    }
}

/// Proposes the due checkpoints in batches of [`MAX_BATCH`], one batch at a
/// time, waiting for each (etcd's `checkpointScheduledLeases`). Call only
/// on the leader.
///
/// Cancel-safe: a batch already handed to the write path is still applied.
pub(super) async fn propose_due(lessor: &Lessor, writes: &WritePath) {
    let mut sent = 0;
    while sent < MAX_PER_PASS {
        let batch = lessor.find_due_checkpoints(Instant::now(), MAX_BATCH);
        let n = batch.len();
        if n > 0 {
            propose(writes, LeaseCheckpointRequest { checkpoints: batch }).await;
        }
        if n < MAX_BATCH {
            return;
        }
        sent += n;
    }
}

/// Proposes one checkpoint request; failures are logged, as etcd ignores
/// them too (the lease is checkpointed again after its next refresh).
///
/// Cancel-safe like [`WritePath::propose`].
pub async fn propose(writes: &WritePath, req: LeaseCheckpointRequest) {
    let n = req.checkpoints.len();
    let sent = writes.propose(Request::LeaseCheckpoint(req));
    match tokio::time::timeout(PROPOSE_TIMEOUT, sent).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(checkpoints = n, error = %e, "failed to checkpoint leases"),
        Err(_) => tracing::warn!(checkpoints = n, "checkpointing leases timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn primary_with_checkpoints(now: Instant, persist: bool) -> Lessor {
        let l = Lessor::new(1);
        l.enable_checkpoints(MIN, persist);
        l.promote_at(now, Duration::ZERO);
        l
    }

    fn s(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn only_leases_longer_than_the_interval_are_checkpointed() {
        let t0 = Instant::now();
        let l = primary_with_checkpoints(t0, false);
        l.grant_at(t0, 1, 60).expect("grant");
        l.grant_at(t0, 2, 600).expect("grant");
        assert!(
            l.find_due_checkpoints(s(t0, 59), 10).is_empty(),
            "not due yet"
        );
        let due = l.find_due_checkpoints(s(t0, 60) + Duration::from_millis(300), 10);
        // 540 - 0.3 s left, rounded up.
        assert_eq!(
            due,
            [LeaseCheckpoint {
                id: 2,
                remaining_ttl: 540
            }]
        );
        assert!(
            l.find_due_checkpoints(s(t0, 200), 10).is_empty(),
            "taken checkpoints wait for their apply to be rescheduled"
        );
    }

    #[test]
    fn checkpoints_are_batched_in_time_order() {
        let t0 = Instant::now();
        let l = primary_with_checkpoints(t0, false);
        for id in 1..=5 {
            l.grant_at(s(t0, id as u64), id, 1000).expect("grant");
        }
        let ids = |cps: Vec<LeaseCheckpoint>| cps.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(l.find_due_checkpoints(s(t0, 100), 2)), [1, 2]);
        assert_eq!(ids(l.find_due_checkpoints(s(t0, 100), 2)), [3, 4]);
        assert_eq!(ids(l.find_due_checkpoints(s(t0, 100), 2)), [5]);
        assert!(l.find_due_checkpoints(s(t0, 100), 2).is_empty());
    }

    #[test]
    fn nothing_is_due_when_disabled_or_not_primary() {
        let t0 = Instant::now();
        let off = Lessor::new(1);
        off.promote_at(t0, Duration::ZERO);
        off.grant_at(t0, 1, 1000).expect("grant");
        assert!(off.find_due_checkpoints(s(t0, 100), 10).is_empty());
        assert!(off.renewal_checkpoint(1).is_none());
        assert_eq!(off.checkpoint_at(t0, 1, 500), None, "nothing to persist");

        let follower = Lessor::new(1);
        follower.enable_checkpoints(MIN, true);
        follower.grant_at(t0, 1, 1000).expect("grant");
        assert!(follower.find_due_checkpoints(s(t0, 100), 10).is_empty());
    }

    #[test]
    fn skips_expired_missing_and_untouched_leases() {
        let t0 = Instant::now();
        let l = primary_with_checkpoints(t0, false);
        l.grant_at(t0, 1, 100).expect("grant");
        l.grant_at(t0, 2, 100).expect("grant");
        l.remove(2);
        assert!(
            l.find_due_checkpoints(s(t0, 150), 10).is_empty(),
            "1 expired"
        );
    }

    #[test]
    fn applied_checkpoint_sets_remaining_ttl_and_reschedules() {
        let t0 = Instant::now();
        let l = primary_with_checkpoints(t0, true);
        l.grant_at(t0, 1, 1000).expect("grant");
        assert_eq!(l.checkpoint_at(s(t0, 60), 1, 940), Some(1000), "persist");
        assert_eq!(l.checkpoint_at(s(t0, 60), 9, 940), None, "unknown lease");
        // The first schedule was replaced by the one after the apply.
        assert!(l.find_due_checkpoints(s(t0, 119), 10).is_empty());
        assert_eq!(l.find_due_checkpoints(s(t0, 120), 10).len(), 1);
        // A new leader counts from the checkpoint, plus the extension.
        let later = s(t0, 200);
        l.promote_at(later, Duration::from_secs(1));
        let left = l.state().leases[&1].remaining(later).expect("expires");
        assert!((left - 941.0).abs() < 0.01, "{left}");
        // A renewal resets it first.
        assert_eq!(
            l.renewal_checkpoint(1),
            Some(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 0
                }]
            })
        );
        l.checkpoint_at(later, 1, 0);
        assert!(l.renewal_checkpoint(1).is_none());
        l.promote_at(later, Duration::ZERO);
        let left = l.state().leases[&1].remaining(later).expect("expires");
        assert!((left - 1000.0).abs() < 0.01, "{left}");
    }
}
