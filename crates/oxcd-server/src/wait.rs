//! Waiters for proposals, matched by request ID (etcd's `pkg/wait`).
//!
//! The proposer registers its request ID before handing the entry to raft;
//! the apply side triggers it with the result once the entry is applied.
//! Entries proposed by other members (or replayed on restart) find no
//! waiter and are simply applied. A proposer that gives up (timeout, client
//! cancellation) unregisters through the guard's `Drop`.

use crate::apply::Response;
use oxcd_api::EtcdError;
use oxcd_mvcc::id_hash::IdMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// The result a proposer waits for.
pub type Outcome = Result<Response, EtcdError>;

/// How often the sweeper times out old waits: a proposal fails with
/// `request timed out` (etcd's words) between the request timeout and two
/// sweeps later.
const SWEEP: Duration = Duration::from_millis(100);

/// Registered waiters; shared between proposers and the apply side.
///
/// Timeouts are not one timer per request (a timer-wheel insert and
/// removal for every proposal): registration notes the sweeper's current
/// epoch, and the sweeper fails the waits that have been there too long.
#[derive(Default)]
pub struct Waiters {
    /// Keyed by request ID (a counter: see [`oxcd_mvcc::id_hash`]).
    map: Mutex<IdMap<u64, Waiting>>,
    /// Advanced by the sweeper once per [`SWEEP`].
    epoch: AtomicU64,
}

struct Waiting {
    tx: oneshot::Sender<Outcome>,
    /// The epoch it was registered in.
    since: u64,
}

impl Waiters {
    /// Registers request `id`; the returned guard yields its outcome.
    pub fn register(self: &Arc<Self>, id: u64) -> WaitGuard {
        let (tx, rx) = oneshot::channel();
        let since = self.epoch.load(Ordering::Relaxed);
        self.lock().insert(id, Waiting { tx, since });
        WaitGuard {
            waiters: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    /// Delivers the outcome of request `id`, if anyone waits for it.
    pub fn trigger(&self, id: u64, outcome: Outcome) {
        if let Some(w) = self.lock().remove(&id) {
            let _ = w.tx.send(outcome);
        }
    }

    /// Starts the task that fails waits older than `timeout` with
    /// `request timed out`; it ends when the waiters are dropped.
    pub fn start_sweeper(self: &Arc<Self>, timeout: Duration) {
        let me: Weak<Self> = Arc::downgrade(self);
        // One epoch more than the timeout spans: a wait registered just
        // before a sweep must still get the whole timeout.
        let ttl = timeout.as_millis().div_ceil(SWEEP.as_millis()) as u64 + 1;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(w) = me.upgrade() else { return };
                w.sweep(ttl);
            }
        });
    }

    /// Advances the epoch and fails the waits registered `ttl` or more
    /// epochs ago.
    fn sweep(&self, ttl: u64) {
        let now = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let mut expired = Vec::new();
        {
            let mut map = self.lock();
            map.retain(|_, w| {
                if now.saturating_sub(w.since) < ttl {
                    return true;
                }
                expired.push(std::mem::replace(&mut w.tx, oneshot::channel().0));
                false
            });
        }
        for tx in expired {
            let _ = tx.send(Err(EtcdError::Timeout));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdMap<u64, Waiting>> {
        // The map stays consistent even if a holder panicked.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One registered wait; unregisters when dropped before its outcome came.
pub struct WaitGuard {
    waiters: Arc<Waiters>,
    id: u64,
    /// `None` once the outcome arrived (the entry is gone from the map).
    rx: Option<oneshot::Receiver<Outcome>>,
}

impl WaitGuard {
    /// Waits for the outcome: the applied result, `request timed out` from
    /// the sweeper, or `Stopped` if the apply side went away.
    pub async fn wait(&mut self) -> Outcome {
        let Some(rx) = self.rx.as_mut() else {
            return Err(EtcdError::Stopped);
        };
        let outcome = rx.await.unwrap_or(Err(EtcdError::Stopped));
        self.rx = None;
        outcome
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.waiters.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_the_waiter_and_drop_unregisters() {
        let w = Arc::new(Waiters::default());
        let mut g = w.register(7);
        w.trigger(7, Err(EtcdError::Timeout));
        assert!(matches!(g.wait().await, Err(EtcdError::Timeout)));
        let g2 = w.register(8);
        drop(g2);
        assert!(w.lock().is_empty());
        // Triggering an unknown ID is a no-op.
        w.trigger(9, Err(EtcdError::Timeout));
    }

    #[tokio::test]
    async fn sweeper_times_out_old_waits_only() {
        let w = Arc::new(Waiters::default());
        let mut old = w.register(1);
        w.sweep(2);
        let mut young = w.register(2);
        w.sweep(2);
        // `old` has seen two sweeps, `young` one.
        assert!(matches!(old.wait().await, Err(EtcdError::Timeout)));
        assert_eq!(w.lock().len(), 1);
        w.trigger(2, Err(EtcdError::Stopped));
        assert!(matches!(young.wait().await, Err(EtcdError::Stopped)));
        assert!(w.lock().is_empty());
    }

    #[tokio::test]
    async fn sweeper_task_fails_a_forgotten_proposal() {
        let w = Arc::new(Waiters::default());
        let timeout = Duration::from_millis(300);
        w.start_sweeper(timeout);
        let mut g = w.register(3);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(5), g.wait())
            .await
            .expect("the sweeper answers");
        assert!(matches!(outcome, Err(EtcdError::Timeout)));
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(w.lock().is_empty());
    }
}
