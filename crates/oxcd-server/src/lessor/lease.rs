//! One lease: its TTL, expiry and attached keys (etcd's `lease.Lease`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A granted lease as the lessor holds it.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The lease ID.
    pub id: i64,
    /// The granted TTL in seconds, already raised to the minimum.
    pub ttl: i64,
    /// Last checkpointed remaining TTL in seconds; 0 means unset (the full
    /// TTL applies on promote). Set by applied `LeaseCheckpoint`s.
    pub remaining_ttl: i64,
    /// When the lease expires; `None` means never (a lessor that is not
    /// primary holds every lease forever, as etcd's followers do).
    pub expiry: Option<Instant>,
    /// When the expiry queue should look at this lease next: the expiry,
    /// or a retry time once a revoke has been proposed. A queue entry with
    /// another time is stale.
    pub next_check: Option<Instant>,
    /// When the checkpoint loop should record this lease's remaining TTL;
    /// a checkpoint queue entry with another time is stale.
    pub next_checkpoint: Option<Instant>,
    /// Attached keys, sorted: a revoke deletes them in this order so that
    /// every member produces the same backend (etcd sorts them too).
    pub keys: BTreeSet<Vec<u8>>,
    /// Set to `true` when the lease is revoked; renewals of an expired
    /// lease wait on it (etcd's `revokec`).
    pub revoked: watch::Sender<bool>,
}

impl Lease {
    /// A lease with no expiry and no keys.
    pub fn new(id: i64, ttl: i64, remaining_ttl: i64) -> Self {
        Lease {
            id,
            ttl,
            remaining_ttl,
            expiry: None,
            next_check: None,
            next_checkpoint: None,
            keys: BTreeSet::new(),
            revoked: watch::channel(false).0,
        }
    }

    /// The TTL a refresh counts from: the checkpointed remaining TTL when
    /// set, otherwise the full TTL.
    pub fn refresh_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }

    /// Sets the expiry to `now + extend + refresh_ttl()`.
    pub fn refresh(&mut self, now: Instant, extend: Duration) {
        let secs = u64::try_from(self.refresh_ttl()).unwrap_or(0);
        self.expiry = now.checked_add(extend + Duration::from_secs(secs));
        self.next_check = self.expiry;
    }

    /// Time left until expiry, negative once expired; `None` if it never
    /// expires.
    pub fn remaining(&self, now: Instant) -> Option<f64> {
        self.expiry.map(|e| {
            if e >= now {
                (e - now).as_secs_f64()
            } else {
                -(now - e).as_secs_f64()
            }
        })
    }

    /// Whether the lease has expired at `now` (etcd: remaining <= 0).
    pub fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }
}
