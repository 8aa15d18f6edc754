//! The `etcdserverpb.KV` service. Each method validates, calls the read or
//! write path, and stamps the header (etcd's `v3rpc/key.go`).

use crate::apply::{self, txn, Proposal};
use crate::auth::permissions::AuthView;
use crate::auth::{checks, Identity};
use crate::core::Core;
use oxcd_api::etcdserverpb::kv_server::Kv;
use oxcd_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use oxcd_api::EtcdError;
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// gRPC handler for key-value requests.
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    /// Creates the service over shared member state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Proposes `req` as its sender; permissions are checked at apply.
    async fn write<P: Proposal>(&self, who: &Identity, req: P) -> Result<P::Answer, Status> {
        Ok(self.core.writes.propose_as(req, who).await?)
    }
}

/// Checks a read with `check` against the auth state after the read
/// barrier (so a denied read still went through consensus, which `etcdctl
/// endpoint health` relies on).
fn permit_read(
    core: &Core,
    who: &Identity,
    check: impl FnOnce(&AuthView, &Identity) -> Result<(), EtcdError>,
) -> Result<(), EtcdError> {
    check(&core.auth_view(), who)
}

/// After reading: a permission revoked while the read ran makes the
/// identity stale (etcd checks the auth revision again after the read).
fn still_current(core: &Core, who: &Identity) -> Result<(), EtcdError> {
    // Without an identity there is nothing that could have gone stale
    // (and no view to fetch on the hot path with auth off).
    if !who.is_some() {
        return Ok(());
    }
    let view = core.auth_view();
    if view.enabled() && who.revision != view.revision() {
        return Err(EtcdError::AuthOldRevision);
    }
    Ok(())
}

/// Before a linearizable read: a ReadIndex round and the wait until it is
/// applied, so the read sees every write acknowledged before it.
async fn barrier(core: &Core, serializable: bool) -> Result<(), EtcdError> {
    if !serializable && core.is_learner() {
        return Err(EtcdError::NotSupportedForLearner);
    }
    if !serializable {
        core.writes.linearizable_barrier().await?;
    }
    Ok(())
}

/// A Range as `who` (the KV service's, and Lock's and Election's reads):
/// the barrier unless serializable, the permission check, the read from
/// the local store; the header stamped with this member's fields.
///
/// # Errors
/// etcd's errors for an empty key, a learner, a denied or stale identity,
/// a compacted or future revision, or a barrier that timed out.
pub async fn range(
    core: &Core,
    who: &Identity,
    r: &RangeRequest,
) -> Result<RangeResponse, EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    barrier(core, r.serializable).await?;
    permit_read(core, who, |v, w| checks::range(v, w, r))?;
    let mut read = core.store.read().map_err(apply::mvcc_error)?;
    let mut resp = apply::read_range(&mut read, r)?;
    still_current(core, who)?;
    core.stamp(&mut resp.header);
    Ok(resp)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let resp = range(&self.core, &who, request.get_ref()).await?;
        Ok(GrpcResponse::new(resp))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        apply::check_put(request.get_ref())?;
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        let mut resp = self.write(&who, r).await?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        if request.get_ref().key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        let mut resp = self.write(&who, r).await?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn txn(
        &self,
        request: GrpcRequest<TxnRequest>,
    ) -> Result<GrpcResponse<TxnResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        txn::check_txn_request(&r, self.core.max_txn_ops)?;
        txn::check_duplicates(&r)?;
        let mut resp = if txn::is_read_only(&r) {
            barrier(&self.core, all_serializable(&r)).await?;
            permit_read(&self.core, &who, |v, w| checks::txn(v, w, &r))?;
            let mut read = self.core.store.read().map_err(apply::mvcc_error)?;
            let rev = read.rev();
            let resp = apply::read_only_txn(&mut read, rev, &r)?;
            still_current(&self.core, &who)?;
            resp
        } else {
            self.write(&who, r).await?
        };
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn compact(
        &self,
        request: GrpcRequest<CompactionRequest>,
    ) -> Result<GrpcResponse<CompactionResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        let (physical, rev) = (r.physical, r.revision);
        let mut resp = self.write(&who, r).await?;
        if physical {
            // As etcd: a physical compaction answers once the compacted
            // revisions are gone from the backend.
            let store = self.core.store.clone();
            tokio::task::spawn_blocking(move || store.wait_compacted(rev))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(apply::mvcc_error)?;
        }
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }
}

/// A read-only txn is served without waiting only if all its ranges ask
/// for serializable reads.
fn all_serializable(r: &TxnRequest) -> bool {
    use oxcd_api::etcdserverpb::request_op::Request as Op;
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(rr)) => rr.serializable,
            Some(Op::RequestTxn(t)) => all_serializable(t),
            _ => true,
        })
}
