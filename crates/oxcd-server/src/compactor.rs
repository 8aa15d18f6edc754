//! Auto-compaction (etcd's `etcdserver/api/v3compactor`):
//! `--auto-compaction-mode periodic|revision` with
//! `--auto-compaction-retention`. Only the leader compacts; the others are
//! paused (a periodic compactor keeps sampling revisions while paused, as
//! etcd's does, so a new leader compacts at the right revision at once).
//!
//! - **periodic**, retention P: every P/10 (at most 6 min) the current
//!   revision is sampled and the last P/(P/10)+1 samples are kept, so the
//!   oldest is the revision of about P ago. The first compaction comes P
//!   after start, then one every min(P, 1 h), to that oldest sample.
//! - **revision**, retention N: every 5 minutes, compact to `current − N`
//!   if that moved since the last compaction.
//!
//! A compaction is an ordinary `Compaction` proposal, so it goes through
//! raft and every member compacts at the same revision. `Compacted` counts
//! as success (someone compacted further already); other failures are
//! retried at the next sample.

use crate::apply::Request;
use crate::config::AutoCompaction;
use crate::propose::WritePath;
use oxcd_api::etcdserverpb::CompactionRequest;
use oxcd_api::EtcdError;
use oxcd_mvcc::KvStore;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a revision compactor looks (etcd's `revInterval`).
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Cap on a periodic compactor's interval between compactions.
const MAX_PERIODIC_INTERVAL: Duration = Duration::from_secs(3600);
/// Samples per period.
const RETRY_DIVISOR: u32 = 10;

/// The periodic compactor's bookkeeping, free of clocks and I/O.
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    /// Revisions sampled every [`Periodic::retry_interval`], oldest first.
    revs: VecDeque<i64>,
    last_success: Instant,
    /// `period` until the first attempt, then the compaction interval.
    base: Duration,
}

impl Periodic {
    /// A compactor keeping `period` of history, started at `now`.
    pub fn new(period: Duration, now: Instant) -> Periodic {
        Periodic {
            period,
            revs: VecDeque::new(),
            last_success: now,
            base: period,
        }
    }

    /// How often revisions are sampled (and failures retried).
    pub fn retry_interval(&self) -> Duration {
        (self.period.min(MAX_PERIODIC_INTERVAL) / RETRY_DIVISOR).max(Duration::from_millis(1))
    }

    fn retentions(&self) -> usize {
        (self.period.as_nanos() / self.retry_interval().as_nanos()) as usize + 1
    }

    /// Records the current revision (before the wait of one interval).
    pub fn sample(&mut self, rev: i64) {
        self.revs.push_back(rev);
        while self.revs.len() > self.retentions() {
            self.revs.pop_front();
        }
    }

    /// After the wait: the revision to compact at, if one is due now.
    pub fn due(&mut self, now: Instant, leader: bool) -> Option<i64> {
        if !leader || now.saturating_duration_since(self.last_success) < self.base {
            return None;
        }
        if self.base == self.period {
            self.base = self.period.min(MAX_PERIODIC_INTERVAL);
        }
        self.revs.front().copied()
    }

    /// Records the outcome of a compaction started by [`Periodic::due`].
    pub fn done(&mut self, ok: bool, now: Instant) {
        if ok {
            self.last_success = now;
        }
    }
}

/// The revision compactor's bookkeeping.
#[derive(Debug)]
pub struct Revisions {
    retention: i64,
    last: i64,
}

impl Revisions {
    /// A compactor keeping `retention` revisions.
    pub fn new(retention: u64) -> Revisions {
        Revisions {
            retention: i64::try_from(retention).unwrap_or(i64::MAX),
            last: 0,
        }
    }

    /// The revision to compact at, if the history moved.
    pub fn due(&self, current: i64, leader: bool) -> Option<i64> {
        let rev = current.saturating_sub(self.retention);
        (leader && rev > 0 && rev != self.last).then_some(rev)
    }

    /// Records the outcome of a compaction at `rev`.
    pub fn done(&mut self, rev: i64, ok: bool) {
        if ok {
            self.last = rev;
        }
    }
}

/// The revision compactor's interval: etcd's 5 minutes, or
/// `OXCD_TEST_REVISION_COMPACTION_INTERVAL_MS` (a test knob, not an etcd
/// setting).
fn revision_interval() -> Duration {
    std::env::var("OXCD_TEST_REVISION_COMPACTION_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(REVISION_INTERVAL, Duration::from_millis)
}

/// Runs the compactor `mode` asks for until `shutdown` is cancelled.
pub async fn run(
    mode: AutoCompaction,
    store: KvStore,
    writes: WritePath,
    shutdown: CancellationToken,
) {
    match mode {
        AutoCompaction::Disabled => {}
        AutoCompaction::Periodic(period) => {
            tracing::info!(compact_period = ?period, "enabled periodic auto-compaction");
            let mut p = Periodic::new(period, Instant::now());
            loop {
                p.sample(store.rev());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(p.retry_interval()) => {}
                }
                let Some(rev) = p.due(Instant::now(), writes.is_leader()) else {
                    continue;
                };
                tracing::info!(revision = rev, compact_period = ?period, "starting auto periodic compaction");
                let ok = compact(&writes, rev, &shutdown).await;
                if ok {
                    tracing::info!(revision = rev, compact_period = ?period, "completed auto periodic compaction");
                } else {
                    tracing::warn!(revision = rev, retry_interval = ?p.retry_interval(), "failed auto periodic compaction");
                }
                p.done(ok, Instant::now());
            }
        }
        AutoCompaction::Revision(retention) => {
            tracing::info!(retention, "enabled revision auto-compaction");
            let interval = revision_interval();
            let mut r = Revisions::new(retention);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                let Some(rev) = r.due(store.rev(), writes.is_leader()) else {
                    continue;
                };
                tracing::info!(
                    revision = rev,
                    revision_compaction_retention = retention,
                    "starting auto revision compaction"
                );
                let ok = compact(&writes, rev, &shutdown).await;
                if ok {
                    tracing::info!(revision = rev, "completed auto revision compaction");
                } else {
                    tracing::warn!(revision = rev, retry_interval = ?interval, "failed auto revision compaction");
                }
                r.done(rev, ok);
            }
        }
    }
}

/// Proposes a compaction at `rev`; true when done or already compacted.
async fn compact(writes: &WritePath, rev: i64, shutdown: &CancellationToken) -> bool {
    let req = Request::Compaction(CompactionRequest {
        revision: rev,
        physical: false,
    });
    tokio::select! {
        _ = shutdown.cancelled() => false,
        r = writes.propose(req) => match r {
            Ok(_) | Err(EtcdError::Compacted) => true,
            Err(e) => {
                tracing::warn!(revision = rev, error = %e, "auto-compaction proposal failed");
                false
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_to_the_revision_of_one_period_ago() {
        let t0 = Instant::now();
        let period = Duration::from_secs(100);
        let mut p = Periodic::new(period, t0);
        assert_eq!(p.retry_interval(), Duration::from_secs(10));
        let mut now = t0;
        let mut compacted = Vec::new();
        // Revision grows by 5 every 10 s sample, starting at 1.
        for i in 0..40i64 {
            p.sample(1 + 5 * i);
            now += p.retry_interval();
            if let Some(rev) = p.due(now, true) {
                compacted.push((now - t0, rev));
                p.done(true, now);
            }
        }
        // First at 100 s, to the revision sampled at 0 s; then every 100 s,
        // each to the revision of about 100 s before.
        assert_eq!(
            compacted,
            [
                (Duration::from_secs(100), 1),
                (Duration::from_secs(200), 46),
                (Duration::from_secs(300), 96),
                (Duration::from_secs(400), 146),
            ]
        );
    }

    #[test]
    fn periodic_waits_while_not_leader_and_retries_failures() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(10), t0);
        p.sample(7);
        assert_eq!(p.due(t0 + Duration::from_secs(11), false), None);
        assert_eq!(p.due(t0 + Duration::from_secs(11), true), Some(7));
        p.done(false, t0 + Duration::from_secs(11));
        // A failure leaves it due at the next sample.
        p.sample(8);
        assert_eq!(p.due(t0 + Duration::from_secs(12), true), Some(7));
    }

    #[test]
    fn long_periods_compact_hourly() {
        let p = Periodic::new(Duration::from_secs(5 * 3600), Instant::now());
        assert_eq!(p.retry_interval(), Duration::from_secs(360));
        assert_eq!(p.retentions(), 51);
    }

    #[test]
    fn revision_mode_keeps_n_revisions_and_skips_repeats() {
        let mut r = Revisions::new(10);
        assert_eq!(r.due(5, true), None, "nothing below 1");
        assert_eq!(r.due(25, false), None, "followers wait");
        assert_eq!(r.due(25, true), Some(15));
        r.done(15, true);
        assert_eq!(r.due(25, true), None, "no new history");
        assert_eq!(r.due(26, true), Some(16));
        r.done(16, false);
        assert_eq!(r.due(26, true), Some(16), "a failure is retried");
    }
}
