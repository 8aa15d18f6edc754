//! `--namespace`: every key a client names gets the prefix on its way to
//! the cluster, and loses it on the way back, so clients of the proxy see
//! only their own part of the keyspace (etcd's `clientv3/namespace`).
//!
//! A range end of `\0` ("to the end of the keyspace") becomes the end of
//! the namespace. Unlike etcd's proxy, an empty key with a range end (the
//! whole namespace, `etcdctl get "" --prefix`) is allowed: it stays inside
//! the namespace. An empty key alone is refused with etcd's error.

use bytes::Bytes;
use oxcd_api::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse, WatchCreateRequest,
};
use oxcd_api::mvccpb::{Event, KeyValue};
use oxcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ResignRequest,
};
use oxcd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use tonic::Status;

/// The prefix; empty means no namespace.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    prefix: Bytes,
}

/// etcd's `etcdserver: key is not provided`.
fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

impl Namespace {
    /// A namespace of `prefix` (empty: none).
    pub fn new(prefix: &str) -> Namespace {
        Namespace {
            prefix: Bytes::copy_from_slice(prefix.as_bytes()),
        }
    }

    /// Whether there is a namespace at all.
    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty()
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn key(&self, key: &[u8]) -> Bytes {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        Bytes::from(k)
    }

    /// `[key, end)` inside the namespace.
    fn interval(&self, key: &mut Bytes, end: &mut Bytes) {
        *key = self.key(key);
        if end.as_ref() == [0] {
            *end = prefix_end(&self.prefix);
        } else if !end.is_empty() {
            *end = self.key(end);
        }
    }

    fn strip(&self, key: &mut Bytes) {
        if key.starts_with(&self.prefix) {
            *key = key.slice(self.prefix.len()..);
        }
    }

    fn strip_kv(&self, kv: &mut KeyValue) {
        self.strip(&mut kv.key);
    }

    /// `[key, end)` inside the namespace, refusing an empty key alone.
    fn checked_interval(&self, key: &mut Bytes, end: &mut Bytes) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        if key.is_empty() && end.is_empty() {
            return Err(empty_key());
        }
        self.interval(key, end);
        Ok(())
    }

    /// A range request on its way up.
    pub fn range_req(&self, r: &mut RangeRequest) -> Result<(), Status> {
        self.checked_interval(&mut r.key, &mut r.range_end)
    }

    /// A range response on its way down.
    pub fn range_resp(&self, r: &mut RangeResponse) {
        if self.is_empty() {
            return;
        }
        r.kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    /// A put on its way up.
    pub fn put_req(&self, r: &mut PutRequest) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        if r.key.is_empty() {
            return Err(empty_key());
        }
        r.key = self.key(&r.key);
        Ok(())
    }

    /// A put's answer on its way down.
    pub fn put_resp(&self, r: &mut PutResponse) {
        if let Some(kv) = r.prev_kv.as_mut().filter(|_| !self.is_empty()) {
            self.strip_kv(kv);
        }
    }

    /// A delete on its way up.
    pub fn delete_req(&self, r: &mut DeleteRangeRequest) -> Result<(), Status> {
        self.checked_interval(&mut r.key, &mut r.range_end)
    }

    /// A delete's answer on its way down.
    pub fn delete_resp(&self, r: &mut DeleteRangeResponse) {
        if self.is_empty() {
            return;
        }
        r.prev_kvs.iter_mut().for_each(|kv| self.strip_kv(kv));
    }

    /// A transaction on its way up: compares and both branches, nested
    /// transactions included.
    pub fn txn_req(&self, r: &mut TxnRequest) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        for c in &mut r.compare {
            self.compare(c);
        }
        for op in r.success.iter_mut().chain(r.failure.iter_mut()) {
            self.request_op(op)?;
        }
        Ok(())
    }

    fn compare(&self, c: &mut Compare) {
        self.interval(&mut c.key, &mut c.range_end);
    }

    fn request_op(&self, op: &mut RequestOp) -> Result<(), Status> {
        match op.request.as_mut() {
            Some(request_op::Request::RequestRange(r)) => self.range_req(r),
            Some(request_op::Request::RequestPut(r)) => self.put_req(r),
            Some(request_op::Request::RequestDeleteRange(r)) => self.delete_req(r),
            Some(request_op::Request::RequestTxn(r)) => self.txn_req(r),
            None => Ok(()),
        }
    }

    /// A transaction's answer on its way down.
    pub fn txn_resp(&self, r: &mut TxnResponse) {
        if self.is_empty() {
            return;
        }
        for op in &mut r.responses {
            match op.response.as_mut() {
                Some(response_op::Response::ResponseRange(r)) => self.range_resp(r),
                Some(response_op::Response::ResponsePut(r)) => self.put_resp(r),
                Some(response_op::Response::ResponseDeleteRange(r)) => self.delete_resp(r),
                Some(response_op::Response::ResponseTxn(r)) => self.txn_resp(r),
                None => {}
            }
        }
    }

    /// A watch's range on its way up (an empty key with a range end
    /// watches the whole namespace).
    pub fn watch_create(&self, r: &mut WatchCreateRequest) {
        if self.is_empty() {
            return;
        }
        self.interval(&mut r.key, &mut r.range_end);
    }

    /// An event on its way down.
    pub fn event(&self, e: &mut Event) {
        if self.is_empty() {
            return;
        }
        if let Some(kv) = e.kv.as_mut() {
            self.strip_kv(kv);
        }
        if let Some(kv) = e.prev_kv.as_mut() {
            self.strip_kv(kv);
        }
    }

    /// A lease's attached keys on their way down.
    pub fn lease_ttl_resp(&self, r: &mut LeaseTimeToLiveResponse) {
        if self.is_empty() {
            return;
        }
        r.keys.retain(|k| k.starts_with(&self.prefix));
        r.keys.iter_mut().for_each(|k| self.strip(k));
    }

    /// A lock request on its way up.
    pub fn lock_req(&self, r: &mut LockRequest) {
        if !self.is_empty() {
            r.name = self.key(&r.name);
        }
    }

    /// A lock's owner key on its way down.
    pub fn lock_resp(&self, r: &mut LockResponse) {
        if !self.is_empty() {
            self.strip(&mut r.key);
        }
    }

    /// An unlock on its way up.
    pub fn unlock_req(&self, r: &mut UnlockRequest) {
        if !self.is_empty() {
            r.key = self.key(&r.key);
        }
    }

    /// A campaign on its way up.
    pub fn campaign_req(&self, r: &mut CampaignRequest) {
        if !self.is_empty() {
            r.name = self.key(&r.name);
        }
    }

    /// A campaign's leader key on its way down.
    pub fn campaign_resp(&self, r: &mut CampaignResponse) {
        if let Some(l) = r.leader.as_mut().filter(|_| !self.is_empty()) {
            self.strip_leader(l);
        }
    }

    /// A leader key on its way up (proclaim, resign).
    pub fn leader_key(&self, l: &mut LeaderKey) {
        if !self.is_empty() {
            l.name = self.key(&l.name);
            l.key = self.key(&l.key);
        }
    }

    fn strip_leader(&self, l: &mut LeaderKey) {
        self.strip(&mut l.name);
        self.strip(&mut l.key);
    }

    /// A proclaim on its way up.
    pub fn proclaim_req(&self, r: &mut ProclaimRequest) {
        if let Some(l) = r.leader.as_mut() {
            self.leader_key(l);
        }
    }

    /// A resign on its way up.
    pub fn resign_req(&self, r: &mut ResignRequest) {
        if let Some(l) = r.leader.as_mut() {
            self.leader_key(l);
        }
    }

    /// A leader query on its way up.
    pub fn leader_req(&self, r: &mut LeaderRequest) {
        if !self.is_empty() {
            r.name = self.key(&r.name);
        }
    }

    /// The leader's key-value on its way down.
    pub fn leader_resp(&self, r: &mut LeaderResponse) {
        if let Some(kv) = r.kv.as_mut().filter(|_| !self.is_empty()) {
            self.strip_kv(kv);
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's
/// increment with carry; all `0xff` gives `\0`, the end of the keyspace).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    for i in (0..end.len()).rev() {
        end[i] = end[i].wrapping_add(1);
        if end[i] != 0 {
            return Bytes::from(end);
        }
    }
    Bytes::from_static(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn intervals_stay_inside_the_namespace() {
        let ns = Namespace::new("/ns/");
        let mut r = RangeRequest {
            key: b(b"a"),
            range_end: b(b"\0"),
            ..Default::default()
        };
        ns.range_req(&mut r).unwrap();
        assert_eq!(&r.key[..], b"/ns/a");
        assert_eq!(&r.range_end[..], b"/ns0");
        let mut all = RangeRequest {
            key: Bytes::new(),
            range_end: b(b"\0"),
            ..Default::default()
        };
        ns.range_req(&mut all).unwrap();
        assert_eq!(
            (&all.key[..], &all.range_end[..]),
            (&b"/ns/"[..], &b"/ns0"[..])
        );
        let mut empty = RangeRequest::default();
        assert!(ns.range_req(&mut empty).is_err());
        assert_eq!(&prefix_end(b"a\xff")[..], b"b\x00");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
    }

    #[test]
    fn responses_lose_the_prefix() {
        let ns = Namespace::new("/ns/");
        let mut r = RangeResponse {
            kvs: vec![KeyValue {
                key: b(b"/ns/x"),
                ..Default::default()
            }],
            ..Default::default()
        };
        ns.range_resp(&mut r);
        assert_eq!(&r.kvs[0].key[..], b"x");
        let mut t = LeaseTimeToLiveResponse {
            keys: vec![b(b"/ns/k"), b(b"other")],
            ..Default::default()
        };
        ns.lease_ttl_resp(&mut t);
        assert_eq!(t.keys, vec![b(b"k")]);
    }
}
