//! The lessor: granted leases, their expiry, and which keys hang on which
//! lease. Mirrors etcd's `lease/lessor.go`.
//!
//! # Ownership
//!
//! [`Lessor`] is a cheap `Clone` handle around one std `Mutex` (never held
//! across an await; every critical section is a few map operations). Two
//! kinds of callers share it:
//! - the applier (apply thread) changes it while applying committed
//!   requests: [`Lessor::grant`], [`Lessor::remove`], [`Lessor::attach`],
//!   [`Lessor::detach`]; the lease table in the backend is written by the
//!   applier in the same write transaction;
//! - the services read it and renew leases, which etcd also does outside
//!   raft: [`Lessor::renew`], [`Lessor::time_to_live`], [`Lessor::leases`].
//!
//! # Expiry
//!
//! Only the primary lessor (the raft leader; a single member is always
//! leader) tracks expiry. [`expiry::run`] checks every 500 ms for expired
//! leases, at most 500 per pass, and proposes a `LeaseRevoke` for each
//! through the write path: the revoke is applied like any other request,
//! so every member deletes the same keys at the same revision. A lease
//! whose revoke was proposed is checked again after 3 s in case the
//! proposal was lost. A lessor that is not primary holds every lease
//! forever; [`Lessor::promote`] starts the clocks (etcd calls it when a
//! member becomes leader, and at start-up of a single member).
//!
//! # Checkpoints
//!
//! With `--experimental-enable-lease-checkpoint`, the primary also records
//! how much time a lease has left, so that a new leader (or a restarted
//! member, with `--experimental-enable-lease-checkpoint-persist`) does not
//! give it its full TTL again; see [`checkpoint`].

mod checkpoint;
mod expiry;
mod lease;

pub use checkpoint::{
    checkpoint_interval, propose as propose_checkpoint, DEFAULT_CHECKPOINT_INTERVAL, INTERVAL_ENV,
};
pub use expiry::run as run_expiry;

use lease::Lease;
use oxcd_api::limits::MAX_LEASE_TTL;
use oxcd_api::EtcdError;
use oxcd_mvcc::{KvStore, MvccError, RangeOptions};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long a renewal of an expired lease waits for its revoke before
/// giving up with [`EtcdError::Timeout`] (etcd's request timeout:
/// 5 s + 2 × the default election timeout).
const RENEW_WAIT: Duration = Duration::from_secs(7);

/// etcd's minimum lease TTL in seconds: `ceil((3 × election ticks / 2) ×
/// heartbeat)`, so that a lease outlives a leader election. 2 s with the
/// default 100 ms heartbeat and 1000 ms election timeout.
pub fn min_lease_ttl(election_ticks: u64, heartbeat_ms: u64) -> i64 {
    let ms = (3 * election_ticks / 2).saturating_mul(heartbeat_ms);
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}

/// What [`Lessor::time_to_live`] reports for one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Remaining seconds, truncated toward zero.
    pub ttl: i64,
    /// The granted TTL in seconds.
    pub granted_ttl: i64,
    /// The attached keys, sorted (only when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// Handle to the leases of one member; cheap to clone.
#[derive(Clone)]
pub struct Lessor {
    shared: Arc<Mutex<State>>,
}

struct State {
    leases: HashMap<i64, Lease>,
    /// Key → the lease it is attached to (etcd's `itemMap`).
    items: HashMap<Vec<u8>, i64>,
    /// Expiry checks by time, smallest first. An entry is live only while
    /// it equals its lease's `next_check`; others are skipped and dropped.
    queue: BinaryHeap<Reverse<(Instant, i64)>>,
    /// Whether this lessor expires leases (etcd's `isPrimary`).
    primary: bool,
    /// TTLs below this many seconds are raised to it.
    min_ttl: i64,
    /// Checkpointing settings; `None` when checkpoints are off (etcd: no
    /// checkpointer set).
    checkpoints: Option<checkpoint::Settings>,
    /// Due checkpoints by time, smallest first. An entry is live only
    /// while it equals its lease's `next_checkpoint`.
    checkpoint_queue: BinaryHeap<Reverse<(Instant, i64)>>,
}

impl std::fmt::Debug for Lessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("Lessor")
            .field("leases", &st.leases.len())
            .field("items", &st.items.len())
            .field("primary", &st.primary)
            .finish()
    }
}

impl Lessor {
    /// An empty, non-primary lessor granting at least `min_ttl` seconds.
    pub fn new(min_ttl: i64) -> Self {
        Lessor {
            shared: Arc::new(Mutex::new(State {
                leases: HashMap::new(),
                items: HashMap::new(),
                queue: BinaryHeap::new(),
                primary: false,
                min_ttl,
                checkpoints: None,
                checkpoint_queue: BinaryHeap::new(),
            })),
        }
    }

    /// Loads the leases of `store`'s lease table and re-attaches every live
    /// key to its lease (etcd's `initAndRecover` plus the lease part of
    /// the mvcc `restore`). The leases do not expire until
    /// [`Lessor::promote`].
    ///
    /// # Errors
    /// Backend or corruption errors reading the store.
    pub fn recover(store: &KvStore, min_ttl: i64) -> Result<Self, MvccError> {
        let lessor = Lessor::new(min_ttl);
        let records = store.leases()?;
        // The restore scan already found the attached keys; reading every
        // live key with its value again took most of a restart with 1M
        // keys. After any write that list is stale: read the keys then.
        let attached: oxcd_mvcc::LeaseKeys = match store.restored_lease_keys() {
            Some(keys) => keys.as_ref().clone(),
            None => {
                let read = store.read()?;
                let live = read.range(&[0], &[0], RangeOptions::default())?;
                live.kvs
                    .into_iter()
                    .filter(|kv| kv.lease != 0)
                    .map(|kv| (kv.key.to_vec(), kv.lease))
                    .collect()
            }
        };
        let mut st = lessor.state();
        for r in &records {
            let ttl = r.ttl.max(min_ttl);
            st.leases
                .insert(r.id, Lease::new(r.id, ttl, r.remaining_ttl));
        }
        for (key, lease) in attached {
            match st.leases.get_mut(&lease) {
                Some(l) => {
                    l.keys.insert(key.clone());
                    st.items.insert(key, lease);
                }
                None => tracing::warn!(
                    lease_id = format_args!("{lease:016x}"),
                    key = %String::from_utf8_lossy(&key),
                    "failed to attach a lease: lease not found"
                ),
            }
        }
        tracing::info!(
            leases = st.leases.len(),
            attached_keys = st.items.len(),
            "recovered leases"
        );
        drop(st);
        Ok(lessor)
    }

    /// Replaces every lease with those in `store`, after the backend was
    /// replaced by a raft snapshot (etcd's `lessor.Recover`). Keeps the
    /// minimum TTL, the checkpoint settings and whether this lessor is
    /// primary; a primary lessor restarts every lease's clock, as a newly
    /// promoted one does.
    ///
    /// # Errors
    /// Backend or corruption errors reading the store; the old leases stay.
    pub fn restore(&self, store: &KvStore) -> Result<(), MvccError> {
        let min_ttl = self.state().min_ttl;
        let fresh = Lessor::recover(store, min_ttl)?;
        let mut new = fresh.state();
        let mut st = self.state();
        st.leases = std::mem::take(&mut new.leases);
        st.items = std::mem::take(&mut new.items);
        st.queue.clear();
        st.checkpoint_queue.clear();
        let primary = st.primary;
        drop(st);
        drop(new);
        if primary {
            self.promote(Duration::ZERO);
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each critical section is a few map operations that cannot leave
        // the state half-changed, so a poisoned lock is used as is.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes this lessor primary: every lease expires `extend` plus its
    /// (checkpointed or full) TTL from now (etcd's `Promote`, called with
    /// the election timeout).
    pub fn promote(&self, extend: Duration) {
        self.promote_at(Instant::now(), extend);
    }

    fn promote_at(&self, now: Instant, extend: Duration) {
        let mut st = self.state();
        st.primary = true;
        let st = &mut *st;
        for l in st.leases.values_mut() {
            l.refresh(now, extend);
            if let Some(t) = l.next_check {
                st.queue.push(Reverse((t, l.id)));
            }
            checkpoint::schedule(&st.checkpoints, &mut st.checkpoint_queue, l, now);
        }
    }

    /// Whether lease `id` exists (expired but not yet revoked counts).
    pub fn contains(&self, id: i64) -> bool {
        self.state().leases.contains_key(&id)
    }

    /// Grants lease `id` for `ttl` seconds (raised to the minimum) and
    /// returns the granted TTL. Called by the applier, which persists the
    /// lease in the same write transaction.
    ///
    /// # Errors
    /// [`EtcdError::LeaseNotFound`] for ID 0 (the server picks an ID before
    /// proposing), [`EtcdError::LeaseTTLTooLarge`], [`EtcdError::LeaseExist`].
    pub fn grant(&self, id: i64, ttl: i64) -> Result<i64, EtcdError> {
        self.grant_at(Instant::now(), id, ttl)
    }

    fn grant_at(&self, now: Instant, id: i64, ttl: i64) -> Result<i64, EtcdError> {
        if id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTTLTooLarge);
        }
        let mut st = self.state();
        let st = &mut *st;
        if st.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let mut l = Lease::new(id, ttl.max(st.min_ttl), 0);
        if st.primary {
            l.refresh(now, Duration::ZERO);
            checkpoint::schedule(&st.checkpoints, &mut st.checkpoint_queue, &mut l, now);
        }
        if let Some(t) = l.next_check {
            st.queue.push(Reverse((t, id)));
        }
        let granted = l.ttl;
        st.leases.insert(id, l);
        let counters = crate::metrics::counters();
        counters.lease_granted.inc();
        counters.lease_ttl.observe(granted as f64);
        Ok(granted)
    }

    /// The keys attached to lease `id`, sorted, or `None` if it does not
    /// exist. The applier deletes them, then calls [`Lessor::remove`].
    pub fn keys(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        self.state()
            .leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
    }

    /// Forgets lease `id` after its revoke was applied, detaching whatever
    /// keys are still attached, and wakes renewals waiting for the revoke.
    pub fn remove(&self, id: i64) {
        let mut st = self.state();
        if let Some(l) = st.leases.remove(&id) {
            crate::metrics::counters().lease_revoked.inc();
            for k in &l.keys {
                st.items.remove(k);
            }
            l.revoked.send_replace(true);
        }
    }

    /// Attaches `key` to lease `id` (0: to no lease), detaching it from the
    /// lease it had. A missing lease is ignored: the applier checked it
    /// before writing.
    pub fn attach(&self, key: &[u8], id: i64) {
        let mut st = self.state();
        let old = st.items.get(key).copied();
        if old == Some(id) {
            return;
        }
        if let Some(old) = old {
            detach_locked(&mut st, key, old);
        }
        if id == 0 {
            return;
        }
        if let Some(l) = st.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
            st.items.insert(key.to_vec(), id);
        }
    }

    /// Detaches `key` from its lease, if any (the key was deleted).
    pub fn detach(&self, key: &[u8]) {
        let mut st = self.state();
        if let Some(old) = st.items.get(key).copied() {
            detach_locked(&mut st, key, old);
        }
    }

    /// Renews lease `id`: it expires its TTL from now again. Returns the
    /// granted TTL. A lease that has already expired is not renewed: this
    /// waits for its revoke and then reports it missing (etcd's `Renew`).
    ///
    /// Cancel-safe: dropping the future abandons only the wait.
    ///
    /// # Errors
    /// [`EtcdError::LeaseNotFound`] for an unknown, revoked or expired
    /// lease; [`EtcdError::Timeout`] if an expired lease is not revoked
    /// within the request timeout.
    pub async fn renew(&self, id: i64) -> Result<i64, EtcdError> {
        let mut revoked = {
            let now = Instant::now();
            let mut st = self.state();
            let st = &mut *st;
            let l = st.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
            if !l.expired(now) {
                if st.primary {
                    l.refresh(now, Duration::ZERO);
                    if let Some(t) = l.next_check {
                        st.queue.push(Reverse((t, id)));
                    }
                    crate::metrics::counters().lease_renewed.inc();
                }
                return Ok(l.ttl);
            }
            l.revoked.subscribe()
        };
        // An expired lease may be waiting for its revoke to be applied; a
        // renewal must not succeed after the keys are gone.
        let waited = tokio::time::timeout(RENEW_WAIT, revoked.wait_for(|r| *r)).await;
        match waited {
            Ok(_) => Err(EtcdError::LeaseNotFound),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Remaining and granted TTL of lease `id`, with its keys if
    /// `with_keys`; `None` if it does not exist.
    pub fn time_to_live(&self, id: i64, with_keys: bool) -> Option<TimeToLive> {
        let now = Instant::now();
        let st = self.state();
        let l = st.leases.get(&id)?;
        let ttl = match l.remaining(now) {
            // Go's int64(d.Seconds()): truncation toward zero.
            Some(secs) => secs as i64,
            None => i64::MAX / 1_000_000_000,
        };
        Some(TimeToLive {
            ttl,
            granted_ttl: l.ttl,
            keys: if with_keys {
                l.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Every lease ID, soonest expiry first (etcd's `leasesByExpiry`).
    pub fn leases(&self) -> Vec<i64> {
        let st = self.state();
        let mut ls: Vec<(Option<Instant>, i64)> =
            st.leases.values().map(|l| (l.expiry, l.id)).collect();
        // `None` (never) sorts last.
        ls.sort_by_key(|(e, id)| (e.is_none(), *e, *id));
        ls.into_iter().map(|(_, id)| id).collect()
    }

    /// Up to `limit` expired leases, for the expiry loop to revoke. Each
    /// is checked again `retry` later in case its revoke does not land.
    fn find_expired(&self, now: Instant, limit: usize, retry: Duration) -> Vec<i64> {
        let mut st = self.state();
        if !st.primary {
            return Vec::new();
        }
        let st = &mut *st;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(Reverse((t, id))) = st.queue.peek().copied() else {
                break;
            };
            let Some(l) = st.leases.get_mut(&id) else {
                st.queue.pop();
                continue;
            };
            if l.next_check != Some(t) {
                st.queue.pop();
                continue;
            }
            if t > now {
                break;
            }
            st.queue.pop();
            let again = now + retry;
            l.next_check = Some(again);
            st.queue.push(Reverse((again, id)));
            if l.expired(now) {
                out.push(id);
            }
        }
        out
    }
}

fn detach_locked(st: &mut State, key: &[u8], id: i64) {
    st.items.remove(key);
    if let Some(l) = st.leases.get_mut(&id) {
        l.keys.remove(key);
    }
}

#[cfg(test)]
mod tests;
