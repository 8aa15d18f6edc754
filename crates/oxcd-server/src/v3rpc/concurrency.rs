//! The building blocks of etcd's `clientv3/concurrency` recipes (`key.go`,
//! `session.go`), as the Lock and Election services use them.
//!
//! etcd's `v3lock` and `v3election` servers run those client recipes through
//! a client connected to their own member. oxcd sends the same requests
//! straight to the write path and watches the watchable store directly:
//! - every read and write goes through [`WritePath::propose`] (a read is a
//!   read-only txn), so it is linearizable however the write path evolves;
//! - a wait is a watcher of its own [`WatchStream`], removed when the wait
//!   ends or its future is dropped, so every wait here is cancel-safe;
//! - errors keep etcd's text but, as in etcd, the services send them with
//!   code Unknown (see [`to_status`]).
//!
//! [`WritePath::propose`]: crate::propose::WritePath::propose

use crate::apply::{self, Request};
use crate::auth::Identity;
use crate::core::Core;
use bytes::Bytes;
use oxcd_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use oxcd_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use oxcd_api::etcdserverpb::{
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use oxcd_api::mvccpb::{event::EventType, Event, KeyValue};
use oxcd_api::EtcdError;
use oxcd_mvcc::{Filters, WatchEvent, WatchStream, WatchableStore, AUTO_WATCH_ID};
use std::sync::Arc;
use tonic::Status;

/// TTL of the lease a session grants when the caller gives none
/// (`defaultSessionTTL` in `session.go`).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// Server-chosen lease IDs are request IDs masked to 63 bits (as the Lease
/// service chooses them), so they are positive.
const LEASE_ID_MASK: u64 = (1 << 63) - 1;

/// An error of a lock or election call as etcd sends it: code Unknown with
/// the error's own text (etcd returns the internal client's error, which
/// gRPC does not map).
pub fn to_status(e: EtcdError) -> Status {
    Status::unknown(e.message())
}

/// The lease a session runs on (`NewSession` with `WithLease`): `lease`
/// itself, or for 0 a new lease of [`DEFAULT_SESSION_TTL`] seconds. Like
/// etcd's server, which orphans its sessions at once, nothing keeps the
/// lease alive afterwards.
///
/// # Errors
/// The grant's error, when one is needed.
pub async fn session_lease(core: &Core, who: &Identity, lease: i64) -> Result<i64, EtcdError> {
    if lease != 0 {
        return Ok(lease);
    }
    let id = loop {
        let id = (core.writes.next_request_id() & LEASE_ID_MASK) as i64;
        if id != 0 && !core.lessor.contains(id) {
            break id;
        }
    };
    let grant = LeaseGrantRequest {
        ttl: DEFAULT_SESSION_TTL,
        id,
    };
    Ok(core.writes.propose_as(grant, who).await?.id)
}

/// The key of one waiter or candidate: `prefix` followed by the lease ID
/// in hex, as Go's `%x` prints an `int64` (a minus sign, not two's
/// complement, for negative IDs).
pub fn candidate_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    [prefix, hex.as_bytes()].concat().into()
}

/// The end of the range of keys starting with `prefix` (clientv3
/// `GetPrefixRangeEnd`): `\0` (every key) when no byte can be incremented.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// The key under `prefix` created first (`WithFirstCreate`).
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    by_create(prefix, SortOrder::Ascend)
}

/// The key under `prefix` created last among those created at or before
/// `max_create_rev` (`WithLastCreate` + `WithMaxCreateRev`).
pub fn last_created_before(prefix: &[u8], max_create_rev: i64) -> RangeRequest {
    RangeRequest {
        max_create_revision: max_create_rev,
        ..by_create(prefix, SortOrder::Descend)
    }
}

fn by_create(prefix: &[u8], order: SortOrder) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// `CreateRevision(key) = rev`.
pub fn created_at(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// A put op of `key` = `value` with `lease`.
pub fn put_op(key: &Bytes, value: Bytes, lease: i64) -> RequestOp {
    let put = PutRequest {
        key: key.clone(),
        value,
        lease,
        ..Default::default()
    };
    RequestOp {
        request: Some(request_op::Request::RequestPut(put)),
    }
}

/// A get op.
pub fn range_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

/// A get op of the single key `key`.
pub fn get_op(key: &Bytes) -> RequestOp {
    range_op(RangeRequest {
        key: key.clone(),
        ..Default::default()
    })
}

/// A delete op of the single key `key`.
pub fn delete_op(key: &Bytes) -> RequestOp {
    let del = DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(del)),
    }
}

/// The kvs of the `i`-th response of `resp`, which must be a Range.
///
/// # Errors
/// `Unknown` if that response is missing or not a Range (a broken applier).
pub fn range_kvs(resp: &TxnResponse, i: usize) -> Result<&[KeyValue], EtcdError> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(r)) => Ok(&r.kvs),
        _ => Err(unexpected()),
    }
}

/// Runs a txn through the write path, after the checks the KV service
/// makes; the header is stamped with this member's fields.
///
/// # Errors
/// The txn's validation or apply error.
pub async fn txn(core: &Core, who: &Identity, r: TxnRequest) -> Result<TxnResponse, EtcdError> {
    apply::txn::check_txn_request(&r, core.max_txn_ops)?;
    apply::txn::check_duplicates(&r)?;
    let mut resp = core.writes.propose_as(r, who).await?;
    core.stamp(&mut resp.header);
    Ok(resp)
}

/// A linearizable Range, as the KV service serves one (ReadIndex, then the
/// local store), with the caller's read permission.
///
/// # Errors
/// The range's error (e.g. compacted, permission denied).
pub async fn range(
    core: &Core,
    who: &Identity,
    r: RangeRequest,
) -> Result<RangeResponse, EtcdError> {
    crate::v3rpc::kv::range(core, who, &r).await
}

/// Deletes the single key `key` (clientv3 `Delete`).
///
/// # Errors
/// `EmptyKey` for an empty key, or the write's error.
pub async fn delete(
    core: &Core,
    who: &Identity,
    key: &Bytes,
) -> Result<DeleteRangeResponse, EtcdError> {
    if key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    let del = DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    let mut resp = core.writes.propose_as(del, who).await?;
    core.stamp(&mut resp.header);
    Ok(resp)
}

/// Waits until every key under `prefix` created at or before
/// `max_create_rev` is gone (`waitDeletes`): repeatedly finds the newest
/// such key and waits for its deletion. Returns the header of the read
/// that found none.
///
/// Cancel-safe: dropping the future removes its watcher; it changes
/// nothing in the key space.
///
/// # Errors
/// A read error, `Compacted` if a watch start was compacted away, or
/// `Stopped` when the member stops.
pub async fn wait_deletes(
    core: &Core,
    who: &Identity,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<ResponseHeader, EtcdError> {
    loop {
        let resp = range(core, who, last_created_before(prefix, max_create_rev)).await?;
        let header = resp.header.unwrap_or_else(|| core.header(0));
        let Some(last) = resp.kvs.first() else {
            return Ok(header);
        };
        wait_delete(core, &last.key, header.revision).await?;
    }
}

/// Waits for a DELETE of `key` at or after revision `rev` (`waitDelete`).
async fn wait_delete(core: &Core, key: &[u8], rev: i64) -> Result<(), EtcdError> {
    let mut watch = KeyWatch::new(&core.watchable, key, &[], rev)?;
    loop {
        let events = watch.next().await?;
        if events.iter().any(|(_, ev)| is_delete(ev)) {
            return Ok(());
        }
    }
}

/// Whether `ev` is a DELETE.
pub fn is_delete(ev: &Event) -> bool {
    ev.r#type == EventType::Delete as i32
}

/// One watcher on `[key, end)` in its own watch stream: the server-side
/// `client.Watch` of the recipes. Dropping it removes the watcher.
pub struct KeyWatch {
    stream: WatchStream,
    responses: oxcd_mvcc::WatchReceiver,
}

impl KeyWatch {
    /// Starts watching `[key, end)` (Range conventions) from `start_rev`.
    ///
    /// # Errors
    /// `Unknown` with the store's text for an empty range.
    pub fn new(
        store: &WatchableStore,
        key: &[u8],
        end: &[u8],
        start_rev: i64,
    ) -> Result<Self, EtcdError> {
        let (mut stream, responses) = store.new_watch_stream();
        stream
            .watch(AUTO_WATCH_ID, key, end, start_rev, Filters::default())
            .map_err(|e| EtcdError::Unknown(e.to_string()))?;
        Ok(KeyWatch { stream, responses })
    }

    /// The next non-empty batch of events, each with the revision a client
    /// watch response carrying it would have in its header.
    ///
    /// Cancel-safe: a batch is never half taken.
    ///
    /// # Errors
    /// `Compacted` if the watcher's next revision was compacted (the
    /// watcher is then gone); `Stopped` when the member stops.
    pub async fn next(&mut self) -> Result<Vec<(i64, Arc<WatchEvent>)>, EtcdError> {
        loop {
            let resp = tokio::select! {
                resp = self.responses.recv() => resp.ok_or(EtcdError::Stopped)?,
                () = self.stream.store().closed() => return Err(EtcdError::Stopped),
            };
            if resp.compact_revision != 0 {
                return Err(EtcdError::Compacted);
            }
            if resp.events.is_empty() {
                continue; // a progress notification
            }
            // Live events may span revisions; etcd sends one message per
            // revision, headed by it.
            let live = resp.live;
            let rev = resp.revision;
            return Ok(resp
                .events
                .into_iter()
                .map(|ev| {
                    let r = if live {
                        oxcd_mvcc::revision_of(&ev)
                    } else {
                        rev
                    };
                    (r, ev)
                })
                .collect());
        }
    }
}

/// A write to make if the call that armed it is dropped (the client
/// cancelled): etcd's recipes clean up with the server's own context after
/// a cancelled wait. [`Cleanup::disarm`] once the call completes.
pub struct Cleanup {
    core: Arc<Core>,
    who: Identity,
    req: Option<Request>,
}

impl Cleanup {
    /// Arms `req` to be proposed on drop, as `who`.
    pub fn new(core: Arc<Core>, who: Identity, req: Request) -> Self {
        Cleanup {
            core,
            who,
            req: Some(req),
        }
    }

    /// Drops the cleanup without proposing anything.
    pub fn disarm(mut self) {
        self.req = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(req) = self.req.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // the runtime is gone: the member is stopping anyway
        };
        let core = self.core.clone();
        let who = std::mem::take(&mut self.who);
        rt.spawn(async move {
            if let Err(e) = core.writes.propose_as(req, &who).await {
                tracing::debug!(error = %e.message(), "lock/election cleanup failed");
            }
        });
    }
}

fn unexpected() -> EtcdError {
    EtcdError::Unknown("oxcd: write path answered with the wrong response type".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_keys_print_like_go() {
        assert_eq!(&candidate_key(b"a/", 0x694d_77aa)[..], b"a/694d77aa");
        assert_eq!(&candidate_key(b"a/", -1)[..], b"a/-1");
        assert_eq!(&candidate_key(b"", i64::MIN)[..], b"-8000000000000000");
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(&prefix_end(b"a/")[..], b"a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
    }
}
