//! The workloads, one file each, and the loop they share.
//!
//! [`drive`] is etcd's benchmark loop: `clients` workers pull operation
//! indices from one shared counter until `total` are handed out, the
//! deadline passes, or the server answers `Unimplemented`. Each worker
//! times its own operations into its own [`Recorder`]; the recorders are
//! merged at the end.

pub mod compact;
pub mod connect;
pub mod lease;
pub mod put;
pub mod range;
pub mod txn_put;
pub mod watch;
pub mod watch_latency;
mod watch_stream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::report::{Recorder, Summary};

/// Hands out operation indices `0..total` until the deadline or a stop.
pub(crate) struct Budget {
    next: AtomicU64,
    total: u64,
    deadline: Instant,
    stopped: AtomicBool,
    /// Ends the run from outside when cancelled (see [`Plan::until`]).
    until: Option<CancellationToken>,
}

impl Budget {
    pub(crate) fn new(total: u64, deadline: Instant) -> Budget {
        Budget {
            next: AtomicU64::new(0),
            total,
            deadline,
            stopped: AtomicBool::new(false),
            until: None,
        }
    }

    /// The next operation index, or `None` when the run is over.
    pub(crate) fn take(&self) -> Option<u64> {
        if self.stopped.load(Ordering::Relaxed)
            || Instant::now() >= self.deadline
            || self.until.as_ref().is_some_and(|t| t.is_cancelled())
        {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }

    /// Ends the run early (the server lacks the service).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Spaces operation starts `1/rate` seconds apart (no limit when `rate` is 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    start: Instant,
    rate: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u64) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }

    /// Waits until operation `i` may start.
    pub(crate) async fn wait(&self, i: u64) {
        if self.rate > 0 {
            let offset = Duration::from_secs_f64(i as f64 / self.rate as f64);
            tokio::time::sleep_until((self.start + offset).into()).await;
        }
    }
}

/// What [`drive`] runs.
pub(crate) struct Plan {
    /// Label of the summary.
    pub command: &'static str,
    /// Number of concurrent workers.
    pub clients: usize,
    /// Operations to run in all.
    pub total: u64,
    /// Operations started per second over all workers (0: unlimited).
    pub rate: u64,
    /// No operation starts after this; one in flight is abandoned.
    pub deadline: Instant,
    /// No operation starts once this is cancelled; those in flight finish.
    pub until: Option<CancellationToken>,
}

/// Runs `op(client, index)` for every index in `0..plan.total`, spread over
/// `plan.clients` workers, and summarises latencies and failures.
pub(crate) async fn drive<F, Fut>(plan: Plan, op: F) -> Summary
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let mut budget = Budget::new(plan.total, plan.deadline);
    budget.until = plan.until;
    let budget = Arc::new(budget);
    let op = Arc::new(op);
    let progress = Progress::new(plan.total, plan.command);
    let pacer = Pacer::new(plan.rate);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for client in 0..plan.clients {
        let (budget, op, progress) = (budget.clone(), op.clone(), progress.clone());
        workers.spawn(async move {
            let mut rec = Recorder::new();
            while let Some(i) = budget.take() {
                pacer.wait(i).await;
                let t0 = Instant::now();
                match tokio::time::timeout_at(budget.deadline().into(), op(client, i)).await {
                    Ok(Ok(())) => rec.ok(t0.elapsed()),
                    Ok(Err(status)) => {
                        rec.status(&status);
                        if status.code() == tonic::Code::Unimplemented {
                            budget.stop();
                        }
                    }
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
    Summary::new(plan.command, plan.total, elapsed, &rec)
}

/// Merges the recorders of finished workers; a worker that panicked counts
/// as one failure.
pub(crate) async fn join_recorders(mut workers: JoinSet<Recorder>) -> Recorder {
    let mut all = Recorder::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(rec) => all.merge(&rec),
            Err(_) => all.failure("worker panicked"),
        }
    }
    all
}

/// Checks that a flag is at least `min`.
pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    flag: &str,
    value: T,
    min: T,
) -> Result<(), crate::BenchError> {
    if value < min {
        return Err(crate::BenchError::InvalidArgs(format!(
            "{flag} must be at least {min}, got {value}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_hands_out_each_index_once() {
        let b = Budget::new(3, Instant::now() + Duration::from_secs(60));
        assert_eq!((b.take(), b.take(), b.take()), (Some(0), Some(1), Some(2)));
        assert_eq!(b.take(), None);
        let b = Budget::new(3, Instant::now() + Duration::from_secs(60));
        b.stop();
        assert_eq!(b.take(), None);
        let past = Budget::new(3, Instant::now());
        assert_eq!(past.take(), None);
    }

    #[tokio::test]
    async fn drive_counts_successes_and_failures() {
        let plan = Plan {
            command: "t",
            clients: 4,
            total: 100,
            rate: 0,
            deadline: Instant::now() + Duration::from_secs(30),
            until: None,
        };
        let s = drive(plan, |_, i| async move {
            if i % 10 == 0 {
                Err(tonic::Status::unavailable("x"))
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!((s.ok, s.errors), (90, 10));
        assert_eq!(s.error_kinds["Unavailable"], 10);
        assert!(!s.timed_out && !s.unimplemented);
    }

    #[tokio::test]
    async fn drive_stops_on_unimplemented() {
        let plan = Plan {
            command: "t",
            clients: 2,
            total: 1_000_000,
            rate: 0,
            deadline: Instant::now() + Duration::from_secs(30),
            until: None,
        };
        let s = drive(plan, |_, _| async {
            Err(tonic::Status::unimplemented("no"))
        })
        .await;
        assert!(s.unimplemented);
        assert!(s.errors <= 2, "{}", s.errors);
    }
}
