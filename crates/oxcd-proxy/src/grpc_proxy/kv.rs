//! The KV service of the proxy: serializable ranges from the cache when it
//! can, everything else passed to the cluster, and every write through the
//! proxy dropping the cached ranges it touches — before it is sent and
//! again once it is applied, so a read racing the write cannot put the old
//! value back.

use std::sync::Arc;

use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::kv_server::Kv;
use oxcd_api::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

use super::cache::RangeCache;
use super::metrics::Metrics;
use super::namespace::Namespace;
use super::upstream::{token_of, upcall, Upstream};

/// `KV` for clients of the proxy.
#[derive(Debug)]
pub struct KvProxy {
    up: Arc<Upstream>,
    ns: Namespace,
    cache: RangeCache,
    metrics: Metrics,
}

impl KvProxy {
    /// The KV service over `up`.
    pub fn new(up: Arc<Upstream>, ns: Namespace, metrics: Metrics) -> KvProxy {
        KvProxy {
            up,
            ns,
            cache: RangeCache::new(super::cache::MAX_ENTRIES),
            metrics,
        }
    }

    fn cached(&self) {
        self.metrics.cache_keys.set(self.cache.len() as i64);
    }

    /// Drops what the ops of a transaction (both branches, nested
    /// transactions too) may change.
    fn invalidate_ops(&self, ops: &[RequestOp]) {
        for op in ops {
            match op.request.as_ref() {
                Some(request_op::Request::RequestPut(p)) => self.cache.invalidate(&p.key, &[]),
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    self.cache.invalidate(&d.key, &d.range_end)
                }
                Some(request_op::Request::RequestTxn(t)) => self.invalidate_txn(t),
                Some(request_op::Request::RequestRange(_)) | None => {}
            }
        }
    }

    fn invalidate_txn(&self, t: &TxnRequest) {
        for c in &t.compare {
            self.cache.invalidate(&c.key, &c.range_end);
        }
        self.invalidate_ops(&t.success);
        self.invalidate_ops(&t.failure);
    }
}

#[tonic::async_trait]
impl Kv for KvProxy {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let token = token_of(req.metadata());
        let r = req.get_ref();
        if r.serializable {
            if let Some(hit) = self.cache.get(&token, r).inspect_err(|_| {
                self.metrics.cache_hits.inc();
            })? {
                self.metrics.cache_hits.inc();
                return Ok(Response::new(hit));
            }
            self.metrics.cache_misses.inc();
        }
        let mut up_req = r.clone();
        self.ns.range_req(&mut up_req)?;
        let mut resp = self
            .up
            .unary(true, upcall!(KvClient, range, &req, up_req))
            .await?
            .into_inner();
        self.ns.range_resp(&mut resp);
        self.cache.add(&token, r, &resp);
        self.cached();
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = req.get_ref();
        self.cache.invalidate(&r.key, &[]);
        let mut up_req = r.clone();
        self.ns.put_req(&mut up_req)?;
        let result = self
            .up
            .unary(false, upcall!(KvClient, put, &req, up_req))
            .await;
        self.cache.invalidate(&r.key, &[]);
        self.cached();
        let mut resp = result?.into_inner();
        self.ns.put_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = req.get_ref();
        self.cache.invalidate(&r.key, &r.range_end);
        let mut up_req = r.clone();
        self.ns.delete_req(&mut up_req)?;
        let result = self
            .up
            .unary(false, upcall!(KvClient, delete_range, &req, up_req))
            .await;
        self.cache.invalidate(&r.key, &r.range_end);
        self.cached();
        let mut resp = result?.into_inner();
        self.ns.delete_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = req.get_ref();
        self.invalidate_txn(r);
        let mut up_req = r.clone();
        self.ns.txn_req(&mut up_req)?;
        let read_only = is_read_only(r);
        let result = self
            .up
            .unary(read_only, upcall!(KvClient, txn, &req, up_req))
            .await;
        self.invalidate_txn(r);
        self.cached();
        let mut resp = result?.into_inner();
        self.ns.txn_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let r = req.get_ref().clone();
        let resp = self
            .up
            .unary(false, upcall!(KvClient, compact, &req, r))
            .await?;
        self.cache.compact(r.revision);
        self.cached();
        Ok(resp)
    }
}

/// A transaction that writes nothing may be retried on another member.
fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(t.failure.iter())
        .all(|op| match op.request.as_ref() {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
            Some(_) => false,
        })
}
