//! Waiters for proposals, matched by request ID (etcd's `pkg/wait`).
//!
//! The proposer registers its request ID before handing the entry to raft;
//! the apply side triggers it with the result once the entry is applied.
//! Entries proposed by other members (or replayed on restart) find no
//! waiter and are simply applied. A proposer that gives up (timeout, client
//! cancellation) unregisters through the guard's `Drop`.

use crate::apply::Response;
use oxcd_api::EtcdError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The result a proposer waits for.
pub type Outcome = Result<Response, EtcdError>;

/// Registered waiters; shared between proposers and the apply side.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
}

impl Waiters {
    /// Registers request `id`; the returned guard yields its outcome.
    pub fn register(self: &Arc<Self>, id: u64) -> WaitGuard {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        WaitGuard {
            waiters: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    /// Delivers the outcome of request `id`, if anyone waits for it.
    pub fn trigger(&self, id: u64, outcome: Outcome) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        // The map stays consistent even if a holder panicked.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One registered wait; unregisters when dropped.
pub struct WaitGuard {
    waiters: Arc<Waiters>,
    id: u64,
    rx: Option<oneshot::Receiver<Outcome>>,
}

impl WaitGuard {
    /// Waits for the outcome. `Stopped` if the apply side went away.
    pub async fn wait(&mut self) -> Outcome {
        match self.rx.as_mut() {
            Some(rx) => rx.await.unwrap_or(Err(EtcdError::Stopped)),
            None => Err(EtcdError::Stopped),
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.id);
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
}
