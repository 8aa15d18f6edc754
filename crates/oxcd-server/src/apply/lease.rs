//! Applying LeaseGrant and LeaseRevoke (etcd's `applierV3backend`
//! `LeaseGrant` / `LeaseRevoke` and `lessor.Grant` / `lessor.Revoke`).
//!
//! Both run inside the applier's write transaction: a grant persists the
//! lease record with the entry's consistent index; a revoke deletes every
//! attached key in sorted order and the lease record, all in one commit and
//! one revision, so watchers see one DELETE per key at that revision.

use super::{header, mvcc_error};
use crate::lessor::Lessor;
use oxcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
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
