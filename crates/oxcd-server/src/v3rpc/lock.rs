//! The `v3lockpb.Lock` service (etcd `etcdserver/api/v3lock/lock.go`),
//! running the mutex recipe of `clientv3/concurrency/mutex.go` on this
//! member's own key space.
//!
//! A lock named `n` is the set of keys under `n/`; each waiter owns the key
//! `n/<lease in hex>`, attached to its lease, and holds the lock once every
//! key under `n/` created before its own is gone. Unlock deletes the key;
//! so does the expiry of its lease.
//!
//! Every error is sent with code Unknown and its etcd text (see
//! [`to_status`]).

use crate::apply::Request;
use crate::auth::Identity;
use crate::core::Core;
use crate::v3rpc::concurrency;
use crate::v3rpc::concurrency::{
    created_at, first_created, get_op, put_op, range_kvs, range_op, session_lease, to_status,
    wait_deletes, Cleanup,
};
use bytes::Bytes;
use oxcd_api::etcdserverpb::{DeleteRangeRequest, ResponseHeader, TxnRequest};
use oxcd_api::v3lockpb::lock_server::Lock;
use oxcd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use oxcd_api::EtcdError;
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// gRPC handler for lock requests.
pub struct LockService {
    core: Arc<Core>,
}

impl LockService {
    /// Creates the service over shared member state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    /// Waits until the caller holds the lock. Cancel-safe: a caller that
    /// gives up while waiting has its key deleted, as etcd's mutex does
    /// when its wait fails.
    async fn lock(
        &self,
        request: GrpcRequest<LockRequest>,
    ) -> Result<GrpcResponse<LockResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let r = request.into_inner();
        let (header, key) = lock(&self.core, &who, &r.name, r.lease)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: GrpcRequest<UnlockRequest>,
    ) -> Result<GrpcResponse<UnlockResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let r = request.into_inner();
        let resp = concurrency::delete(&self.core, &who, &r.key)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(UnlockResponse {
            header: resp.header,
        }))
    }
}

/// `Mutex.Lock`: puts the caller's key (or finds it, if this lease already
/// waits or holds), then waits out every older key. Returns the header of
/// the last read and the caller's key.
async fn lock(
    core: &Arc<Core>,
    who: &Identity,
    name: &[u8],
    lease: i64,
) -> Result<(ResponseHeader, Bytes), EtcdError> {
    let lease = session_lease(core, who, lease).await?;
    let prefix = [name, b"/"].concat();
    let my_key = concurrency::candidate_key(&prefix, lease);
    // One round trip: put the key unless it exists, and read the owner.
    let t = TxnRequest {
        compare: vec![created_at(&my_key, 0)],
        success: vec![
            put_op(&my_key, Bytes::new(), lease),
            range_op(first_created(&prefix)),
        ],
        failure: vec![get_op(&my_key), range_op(first_created(&prefix))],
    };
    let resp = concurrency::txn(core, who, t).await?;
    let header = resp.header.unwrap_or_else(|| core.header(0));
    let my_rev = if resp.succeeded {
        header.revision
    } else {
        range_kvs(&resp, 0)?
            .first()
            .map_or(header.revision, |kv| kv.create_revision)
    };
    let owner = range_kvs(&resp, 1)?.first();
    if owner.is_none_or(|kv| kv.create_revision == my_rev) {
        return Ok((header, my_key));
    }
    let unlock = Request::DeleteRange(DeleteRangeRequest {
        key: my_key.clone(),
        ..Default::default()
    });
    let cleanup = Cleanup::new(core.clone(), who.clone(), unlock);
    let waited = wait_deletes(core, who, &prefix, my_rev - 1).await;
    cleanup.disarm();
    match waited {
        Ok(header) => Ok((header, my_key)),
        Err(e) => {
            // A failed wait releases the key, as etcd's mutex does.
            if let Err(d) = concurrency::delete(core, who, &my_key).await {
                tracing::debug!(error = %d.message(), "lock: releasing after a failed wait");
            }
            Err(e)
        }
    }
}
