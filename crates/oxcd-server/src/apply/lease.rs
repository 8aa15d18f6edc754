//! Applying LeaseGrant, LeaseRevoke and LeaseCheckpoint (etcd's
//! `applierV3backend` `LeaseGrant` / `LeaseRevoke` / `LeaseCheckpoint` and
//! `lessor.Grant` / `lessor.Revoke` / `lessor.Checkpoint`).
//!
//! Both run inside the applier's write transaction: a grant persists the
//! lease record with the entry's consistent index; a revoke deletes every
//! attached key in sorted order and the lease record, all in one commit and
//! one revision, so watchers see one DELETE per key at that revision. A
//! checkpoint, like a grant, writes only the lease table: no new revision.

use super::{header, mvcc_error};
use crate::lessor::Lessor;
use oxcd_api::etcdserverpb::{
    LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse,
};
use oxcd_api::EtcdError;
use oxcd_mvcc::WriteTxn;

/// Grants the lease and stores it in `t`.
///
/// # Errors
/// As [`Lessor::grant`]; nothing is written then.
pub(super) fn grant(
    lessor: &Lessor,
    t: &mut WriteTxn,
    r: &LeaseGrantRequest,
) -> Result<LeaseGrantResponse, EtcdError> {
    let ttl = lessor.grant(r.id, r.ttl)?;
    t.put_lease(r.id, ttl, 0);
    Ok(LeaseGrantResponse {
        header: Some(header(t.rev())),
        id: r.id,
        ttl,
        error: String::new(),
    })
}

/// Deletes the lease's keys and record in `t`, then forgets the lease.
///
/// # Errors
/// [`EtcdError::LeaseNotFound`] for an unknown lease; store errors.
pub(super) fn revoke(
    lessor: &Lessor,
    t: &mut WriteTxn,
    r: &LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, EtcdError> {
    let keys = lessor.keys(r.id).ok_or(EtcdError::LeaseNotFound)?;
    for k in &keys {
        t.delete_range(k, &[]).map_err(mvcc_error)?;
        lessor.detach(k);
    }
    t.delete_lease(r.id);
    lessor.remove(r.id);
    Ok(LeaseRevokeResponse {
        header: Some(header(t.rev())),
    })
}

/// Records each lease's remaining TTL, and stores it in `t` when
/// checkpoints are persisted. Unknown leases are skipped, as in etcd.
pub(super) fn checkpoint(
    lessor: &Lessor,
    t: &mut WriteTxn,
    r: &LeaseCheckpointRequest,
) -> LeaseCheckpointResponse {
    for c in &r.checkpoints {
        if let Some(ttl) = lessor.checkpoint(c.id, c.remaining_ttl) {
            t.put_lease(c.id, ttl, c.remaining_ttl);
        }
    }
    LeaseCheckpointResponse {
        header: Some(header(t.rev())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Applier, Request, Response};
    use crate::lessor::Lessor;
    use oxcd_api::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest};
    use oxcd_mvcc::{BackendConfig, KvStore};
    use std::time::Duration;

    fn checkpoint(cps: &[(i64, i64)]) -> Request {
        Request::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: cps
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        })
    }

    /// Grants lease 1 (TTL 100), applies a checkpoint of 40 s for it and
    /// an unknown lease, and returns the stored remaining TTL after reopen
    /// and the TTL a recovered, promoted lessor gives the lease.
    fn checkpoint_and_reopen(persist: bool) -> (i64, i64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db");
        {
            let store = KvStore::open(&path, BackendConfig::default()).expect("open");
            let lessor = Lessor::new(1);
            lessor.enable_checkpoints(Duration::from_secs(60), persist);
            lessor.promote(Duration::ZERO);
            let applier = Applier::new(store.clone(), lessor);
            let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 100, id: 1 });
            applier.apply(&grant, 1).result.expect("grant");
            let rev = store.rev();
            // Through the raft envelope, as a follower would see it.
            let req = Request::from_internal(checkpoint(&[(1, 40), (9, 5)]).to_internal(7))
                .expect("decodes");
            let applied = applier.apply(&req, 2);
            assert!(matches!(applied.result, Ok(Response::LeaseCheckpoint(_))));
            assert!(applied.events.is_empty());
            assert_eq!(store.rev(), rev, "a checkpoint makes no revision");
            store.sync().expect("sync");
        }
        let store = KvStore::open(&path, BackendConfig::default()).expect("reopen");
        let records = store.leases().expect("leases");
        assert_eq!(records.len(), 1, "the unknown lease is not stored");
        let lessor = Lessor::recover(&store, 1).expect("recover");
        lessor.promote(Duration::ZERO);
        let ttl = lessor.time_to_live(1, false).expect("lease").ttl;
        (records[0].remaining_ttl, ttl)
    }

    #[test]
    fn checkpoint_is_persisted_only_when_asked() {
        let (stored, ttl) = checkpoint_and_reopen(true);
        assert_eq!(stored, 40);
        assert!(
            (39..=40).contains(&ttl),
            "counts from the checkpoint: {ttl}"
        );
        let (stored, ttl) = checkpoint_and_reopen(false);
        assert_eq!(stored, 0);
        assert!((99..=100).contains(&ttl), "full TTL: {ttl}");
    }
}
