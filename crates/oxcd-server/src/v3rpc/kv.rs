//! The `etcdserverpb.KV` service. Each method validates, calls the read or
//! write path, and stamps the header (etcd's `v3rpc/key.go`).

use crate::apply::{self, txn, Request, Response};
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

    async fn write(&self, req: Request) -> Result<Response, Status> {
        Ok(self.core.writes.propose(req).await?)
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
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        self.barrier(r.serializable).await?;
        let mut read = self.core.store.read().map_err(apply::mvcc_error)?;
        let mut resp = apply::read_range(&mut read, &r)?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn put(
        &self,
        request: GrpcRequest<PutRequest>,
    ) -> Result<GrpcResponse<PutResponse>, Status> {
        let r = request.into_inner();
        apply::check_put(&r)?;
        let Response::Put(mut resp) = self.write(Request::Put(r)).await? else {
            return Err(unexpected());
        };
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn delete_range(
        &self,
        request: GrpcRequest<DeleteRangeRequest>,
    ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(EtcdError::EmptyKey.into());
        }
        let Response::DeleteRange(mut resp) = self.write(Request::DeleteRange(r)).await? else {
            return Err(unexpected());
        };
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn txn(
        &self,
        request: GrpcRequest<TxnRequest>,
    ) -> Result<GrpcResponse<TxnResponse>, Status> {
        let r = request.into_inner();
        txn::check_txn_request(&r, self.core.max_txn_ops)?;
        txn::check_duplicates(&r)?;
        let mut resp = if txn::is_read_only(&r) {
            self.barrier(all_serializable(&r)).await?;
            let mut read = self.core.store.read().map_err(apply::mvcc_error)?;
            let rev = read.rev();
            apply::read_only_txn(&mut read, rev, &r)?
        } else {
            let Response::Txn(resp) = self.write(Request::Txn(r)).await? else {
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
        let r = request.into_inner();
        let Response::Compaction(mut resp) = self.write(Request::Compaction(r)).await? else {
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
