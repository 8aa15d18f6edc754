//! The `etcdserverpb.KV` service. Each method validates, calls the read or
//! write path, and stamps the header (etcd's `v3rpc/key.go`).

use crate::apply::{self, txn, Request, Response};
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
    async fn write(&self, who: &Identity, req: Request) -> Result<Response, Status> {
        Ok(self.core.writes.propose_as(req, who).await?)
    }

    /// Checks a read with `check` against the auth state after the read
    /// barrier (so a denied read still went through consensus, which
    /// `etcdctl endpoint health` relies on).
    fn permit_read(
        &self,
        who: &Identity,
        check: impl FnOnce(&AuthView, &Identity) -> Result<(), EtcdError>,
    ) -> Result<(), Status> {
        let view = self.core.auth_view();
        Ok(check(&view, who)?)
    }

    /// After reading: a permission revoked while the read ran makes the
    /// identity stale (etcd checks the auth revision again after the read).
    fn still_current(&self, who: &Identity) -> Result<(), Status> {
        // Without an identity there is nothing that could have gone stale
        // (and no view to fetch on the hot path with auth off).
        if !who.is_some() {
            return Ok(());
        }
        let view = self.core.auth_view();
        if view.enabled() && who.revision != view.revision() {
            return Err(EtcdError::AuthOldRevision.into());
        }
        Ok(())
    }

    /// Before a linearizable read: a ReadIndex round and the wait until it
    /// is applied, so the read sees every write acknowledged before it.
    async fn barrier(&self, serializable: bool) -> Result<(), Status> {
        if !serializable && self.core.is_learner() {
            return Err(EtcdError::NotSupportedForLearner.into());
        }
        if !serializable {
            self.core.writes.linearizable_barrier().await?;
        }
        Ok(())
    }
}

fn unexpected() -> Status {
    Status::internal("oxcd: write path answered with the wrong response type")
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: GrpcRequest<RangeRequest>,
    ) -> Result<GrpcResponse<RangeResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        self.barrier(r.serializable).await?;
        self.permit_read(&who, |v, w| checks::range(v, w, &r))?;
        let mut read = self.core.store.read().map_err(apply::mvcc_error)?;
        let mut resp = apply::read_range(&mut read, &r)?;
        self.still_current(&who)?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        apply::check_put(request.get_ref())?;
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        let Response::Put(mut resp) = self.write(&who, Request::Put(r)).await? else {
            return Err(unexpected());
        };
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
        let Response::DeleteRange(mut resp) = self.write(&who, Request::DeleteRange(r)).await?
        else {
            return Err(unexpected());
        };
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
            self.barrier(all_serializable(&r)).await?;
            self.permit_read(&who, |v, w| checks::txn(v, w, &r))?;
            let mut read = self.core.store.read().map_err(apply::mvcc_error)?;
            let rev = read.rev();
            let resp = apply::read_only_txn(&mut read, rev, &r)?;
            self.still_current(&who)?;
            resp
        } else {
            let Response::Txn(resp) = self.write(&who, Request::Txn(r)).await? else {
                return Err(unexpected());
            };
            resp
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
        let Response::Compaction(mut resp) = self.write(&who, Request::Compaction(r)).await? else {
            return Err(unexpected());
        };
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
