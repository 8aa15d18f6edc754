//! The backend space quota (etcd's `etcdserver/quota.go`).
//!
//! A Put, a Txn with puts and a LeaseGrant cost bytes; such a request is
//! refused with `etcdserver: mvcc: database space exceeded` when the
//! backend's size plus its cost reaches `--quota-backend-bytes` (0 means
//! etcd's 2 GiB, a negative value turns the quota off). The check runs
//! twice, as in etcd: before proposing (the write path raises the NOSPACE
//! alarm and refuses) and after applying (the write stays applied, its
//! proposer is answered NoSpace and the alarm is raised).

use super::Request;
use oxcd_api::etcdserverpb::{request_op, PutRequest, TxnRequest};
use oxcd_mvcc::KvStore;

/// etcd's default quota, used when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// Above this etcd warns that the quota is larger than recommended.
pub const MAX_QUOTA_BYTES: i64 = 8 * 1024 * 1024 * 1024;
/// How stale a measurement of the bytes in use may be when a request
/// looks over quota (measuring walks the whole file under the writer's
/// lock, so it is rare, and only happens near the quota).
const MEASURE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// What a lease costs.
const LEASE_OVERHEAD: u64 = 64;
/// What a key costs on top of its key and value bytes.
const KV_OVERHEAD: u64 = 256;

/// The quota of one member's backend; cheap to clone.
#[derive(Clone)]
pub struct Quota {
    /// `None` when the quota is off.
    max_bytes: Option<u64>,
    store: KvStore,
}

impl Quota {
    /// The quota `--quota-backend-bytes` asks for, over `store`.
    pub fn new(quota_backend_bytes: i64, store: KvStore) -> Quota {
        Quota {
            max_bytes: u64::try_from(effective_bytes(quota_backend_bytes)).ok(),
            store,
        }
    }

    /// Whether `req` fits: free when it costs nothing, otherwise
    /// `size + cost < quota`.
    pub fn available(&self, req: &Request) -> bool {
        let c = cost(req);
        match self.max_bytes {
            None => true,
            Some(_) if c == 0 => true,
            Some(max) if self.size().saturating_add(c) < max => true,
            // The estimate counts record bytes, not pages: measure (at
            // most every MEASURE_INTERVAL) before refusing.
            Some(max) => match self.store.measure_in_use(MEASURE_INTERVAL) {
                Ok(size) => size.saturating_add(c) < max,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot measure the backend size");
                    false
                }
            },
        }
    }

    /// The backend size the quota is checked against: the bytes its
    /// pages hold. This is where oxcd differs from etcd, which counts the
    /// whole file: free pages of the file are reused by later writes, so
    /// a compaction alone makes room and no defragment is needed to
    /// recover from NOSPACE (a defragment still shrinks the file).
    pub fn size(&self) -> u64 {
        self.store.db_size_in_use()
    }
}

/// The quota `--quota-backend-bytes` asks for: 0 means etcd's 2 GiB, and
/// a negative value (quota off) is returned as is.
pub fn effective_bytes(quota_backend_bytes: i64) -> i64 {
    if quota_backend_bytes == 0 {
        DEFAULT_QUOTA_BYTES
    } else {
        quota_backend_bytes
    }
}

/// What `req` costs against the quota (etcd's `backendQuota.Cost`);
/// requests that add no data cost nothing.
pub fn cost(req: &Request) -> u64 {
    match req {
        Request::Put(p) => cost_put(p),
        Request::Txn(t) => cost_txn(t),
        Request::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

fn cost_put(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// The larger of the two branches' puts. Like etcd 3.4, puts inside
/// nested txns are not counted.
pub fn cost_txn(t: &TxnRequest) -> u64 {
    let branch = |ops: &[oxcd_api::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => cost_put(p),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::etcdserverpb::{LeaseGrantRequest, RequestOp};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    fn op(p: PutRequest) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        }
    }

    #[test]
    fn costs_follow_etcd() {
        assert_eq!(cost(&Request::Put(put("ab", "cde"))), 256 + 5);
        assert_eq!(cost(&Request::LeaseGrant(LeaseGrantRequest::default())), 64);
        let t = TxnRequest {
            success: vec![op(put("a", "b")), op(put("c", ""))],
            failure: vec![op(put("a", "0123456789"))],
            ..Default::default()
        };
        // The larger branch: 258 + 257 against 267.
        assert_eq!(cost(&Request::Txn(t)), 515);
        assert_eq!(cost(&Request::Txn(TxnRequest::default())), 0);
    }

    #[test]
    fn quota_sizes() {
        assert_eq!(effective_bytes(0), DEFAULT_QUOTA_BYTES);
        assert_eq!(effective_bytes(-1), -1);
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("db"), Default::default()).unwrap();
        let off = Quota::new(-1, store.clone());
        assert!(off.available(&Request::Put(put("k", &"v".repeat(1 << 20)))));
        let tiny = Quota::new(300, store);
        assert!(!tiny.available(&Request::Put(put("k", "v"))));
        assert!(tiny.available(&Request::Txn(TxnRequest::default())));
    }
}
