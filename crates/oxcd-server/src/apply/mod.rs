//! The applier: runs committed requests against the MVCC store, in order,
//! each in one write transaction that also records its log index as the
//! consistent index. Mirrors etcd's `etcdserver/apply.go`
//! (`applierV3backend`), without etcd's back-pointer into the server: the
//! applier owns the MVCC write path and keeps the lessor's key
//! attachments in step with it, nothing else.

pub mod alarm;
mod lease;
pub mod quota;
pub mod range;
pub mod stage;
pub mod txn;

use crate::auth::checks;
use crate::auth::store::{AuthReply, AuthRequest, AuthStore, SharedView};
use crate::auth::tokens::SimpleTokens;
use crate::auth::Identity;
use crate::lessor::Lessor;
use alarm::{Alarms, Gate};
use oxcd_api::etcdserverpb::{
    request_op, response_op, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointRequest, LeaseCheckpointResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use oxcd_api::etcdserverpb::{InternalRaftRequest, RequestHeader};
use oxcd_api::mvccpb::Event;
use oxcd_api::EtcdError;
use oxcd_mvcc::{KvStore, MvccError, RangeOptions, WriteTxn};
use range::RangeSource;
use txn::Path;

/// A request that changes state and therefore goes through the write path
/// (raft, once replication lands). Decoded from the wire at the edge.
#[derive(Debug, Clone)]
pub enum Request {
    /// `KV/Put`.
    Put(PutRequest),
    /// `KV/DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// `KV/Txn` with at least one write op.
    Txn(TxnRequest),
    /// `KV/Compact`.
    Compaction(CompactionRequest),
    /// `Lease/LeaseGrant`, with the ID already chosen (never 0).
    LeaseGrant(LeaseGrantRequest),
    /// `Lease/LeaseRevoke`, from a client or the expiry loop.
    LeaseRevoke(LeaseRevokeRequest),
    /// Remaining TTLs recorded by the leader (checkpoints enabled), or a
    /// reset to 0 before a renewal.
    LeaseCheckpoint(LeaseCheckpointRequest),
    /// `Maintenance/Alarm`: list, raise or clear alarms.
    Alarm(AlarmRequest),
    /// One of the Auth service's requests.
    Auth(AuthRequest),
}

impl Request {
    /// Wraps the request in the raft envelope with request `id` and no
    /// identity.
    pub fn to_internal(&self, id: u64) -> InternalRaftRequest {
        self.to_internal_as(id, &Identity::none())
    }

    /// Wraps the request in the raft envelope with request `id`, sent by
    /// `who` (re-checked at apply).
    pub fn to_internal_as(&self, id: u64, who: &Identity) -> InternalRaftRequest {
        let mut r = InternalRaftRequest {
            header: Some(RequestHeader {
                id,
                username: who.username.clone(),
                auth_revision: who.revision,
            }),
            ..Default::default()
        };
        match self {
            Request::Put(p) => r.put = Some(p.clone()),
            Request::DeleteRange(d) => r.delete_range = Some(d.clone()),
            Request::Txn(t) => r.txn = Some(t.clone()),
            Request::Compaction(c) => r.compaction = Some(*c),
            Request::LeaseGrant(g) => r.lease_grant = Some(*g),
            Request::LeaseRevoke(v) => r.lease_revoke = Some(*v),
            Request::LeaseCheckpoint(c) => r.lease_checkpoint = Some(c.clone()),
            Request::Alarm(a) => r.alarm = Some(*a),
            Request::Auth(a) => a.fill(&mut r),
        }
        r
    }

    /// Unwraps a raft envelope; `None` for requests this applier does not
    /// handle (membership attributes are handled by the raft application).
    pub fn from_internal(mut r: InternalRaftRequest) -> Option<Request> {
        if let Some(a) = AuthRequest::take(&mut r) {
            return Some(Request::Auth(a));
        }
        if let Some(p) = r.put {
            Some(Request::Put(p))
        } else if let Some(d) = r.delete_range {
            Some(Request::DeleteRange(d))
        } else if let Some(t) = r.txn {
            Some(Request::Txn(t))
        } else if let Some(c) = r.compaction {
            Some(Request::Compaction(c))
        } else if let Some(g) = r.lease_grant {
            Some(Request::LeaseGrant(g))
        } else if let Some(v) = r.lease_revoke {
            Some(Request::LeaseRevoke(v))
        } else if let Some(c) = r.lease_checkpoint {
            Some(Request::LeaseCheckpoint(c))
        } else {
            r.alarm.map(Request::Alarm)
        }
    }
}

/// The outcome of applying one request.
#[derive(Debug)]
pub struct Applied {
    /// What the proposer is answered.
    pub result: Result<Response, EtcdError>,
    /// The changes, in order, for watchers.
    pub events: Vec<Event>,
}

/// The typed answer to each [`Request`] variant.
#[derive(Debug, Clone)]
pub enum Response {
    /// Answer to [`Request::Put`].
    Put(PutResponse),
    /// Answer to [`Request::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Answer to [`Request::Txn`].
    Txn(TxnResponse),
    /// Answer to [`Request::Compaction`].
    Compaction(CompactionResponse),
    /// Answer to [`Request::LeaseGrant`].
    LeaseGrant(LeaseGrantResponse),
    /// Answer to [`Request::LeaseRevoke`].
    LeaseRevoke(LeaseRevokeResponse),
    /// Answer to [`Request::LeaseCheckpoint`].
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// Answer to [`Request::Alarm`].
    Alarm(AlarmResponse),
    /// Answer to a membership change: the members after it.
    Members(Vec<crate::cluster::membership::Member>),
    /// Answer to [`Request::Auth`], with the key space's revision.
    Auth(AuthReply, i64),
}

/// A request the write path carries and the answer its apply gives, so a
/// caller proposes a `PutRequest` and gets a `PutResponse` back; the one
/// mismatch that cannot happen is handled once, in `WritePath::propose_as`.
pub trait Proposal {
    /// The answer's type.
    type Answer;
    /// The request as the apply stage takes it.
    fn into_request(self) -> Request;
    /// The answer, if `r` is of this request's kind.
    fn answer(r: Response) -> Option<Self::Answer>;
}

macro_rules! proposals {
    ($($req:ty => $variant:ident($answer:ty)),* $(,)?) => {$(
        impl Proposal for $req {
            type Answer = $answer;
            fn into_request(self) -> Request {
                Request::$variant(self)
            }
            fn answer(r: Response) -> Option<$answer> {
                match r {
                    Response::$variant(a) => Some(a),
                    _ => None,
                }
            }
        }
    )*};
}

proposals! {
    PutRequest => Put(PutResponse),
    DeleteRangeRequest => DeleteRange(DeleteRangeResponse),
    TxnRequest => Txn(TxnResponse),
    CompactionRequest => Compaction(CompactionResponse),
    LeaseGrantRequest => LeaseGrant(LeaseGrantResponse),
    LeaseRevokeRequest => LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpointRequest => LeaseCheckpoint(LeaseCheckpointResponse),
    AlarmRequest => Alarm(AlarmResponse),
}

/// An auth request answers with its reply and the key space's revision.
impl Proposal for AuthRequest {
    type Answer = (AuthReply, i64);
    fn into_request(self) -> Request {
        Request::Auth(self)
    }
    fn answer(r: Response) -> Option<(AuthReply, i64)> {
        match r {
            Response::Auth(reply, rev) => Some((reply, rev)),
            _ => None,
        }
    }
}

/// Any request, answered untyped (for callers that hold requests of
/// several kinds).
impl Proposal for Request {
    type Answer = Response;
    fn into_request(self) -> Request {
        self
    }
    fn answer(r: Response) -> Option<Response> {
        Some(r)
    }
}

/// Maps store errors to etcd's wire errors.
pub fn mvcc_error(e: MvccError) -> EtcdError {
    match e {
        MvccError::Compacted { .. } => EtcdError::Compacted,
        MvccError::FutureRev { .. } => EtcdError::FutureRev,
        other => {
            tracing::error!(error = %other, "storage failure");
            EtcdError::Unknown(other.to_string())
        }
    }
}

/// Validates a Put before it is proposed (etcd's `checkPutRequest`).
pub fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// Runs committed requests against the store. Owned by the write path.
pub struct Applier {
    store: KvStore,
    /// Leases and their keys; the applier keeps attachments in step with
    /// the key space it changes.
    lessor: Lessor,
    /// The raised alarms; applied `AlarmRequest`s change them, and
    /// NOSPACE or CORRUPT refuse writes.
    alarms: Alarms,
    /// The space quota, checked again after each write (the write path
    /// checked it before proposing).
    quota: Option<quota::Quota>,
    /// Users, roles and permissions (replicated like the key space).
    auth: std::sync::Mutex<AuthStore>,
    /// The view `auth` publishes: what writes are checked against.
    view: SharedView,
    /// Simple tokens, registered and dropped as auth entries apply.
    tokens: Option<SimpleTokens>,
}

impl Applier {
    /// Creates the applier over `store` and `lessor`, with no alarms, no
    /// quota and a fresh auth store.
    pub fn new(store: KvStore, lessor: Lessor) -> Self {
        let auth = AuthStore::fresh();
        Self {
            store,
            lessor,
            alarms: Alarms::default(),
            quota: None,
            view: auth.view(),
            auth: std::sync::Mutex::new(auth),
            tokens: None,
        }
    }

    /// Applies with the auth state in `auth` (loaded from the store),
    /// registering simple tokens in `tokens`.
    pub fn with_auth(mut self, auth: AuthStore, tokens: Option<SimpleTokens>) -> Self {
        self.view = auth.view();
        self.auth = std::sync::Mutex::new(auth);
        self.tokens = tokens;
        self
    }

    /// Reloads the auth state from the store (after a snapshot install);
    /// tokens of users that are gone go too.
    ///
    /// # Errors
    /// Backend errors or undecodable auth records.
    pub fn reload_auth(&self) -> Result<(), MvccError> {
        self.auth_store().reload(&self.store)?;
        if let Some(tokens) = &self.tokens {
            let view = self.view.get();
            tokens.retain_users(view.enabled(), |u| view.has_user(u));
        }
        Ok(())
    }

    fn auth_store(&self) -> std::sync::MutexGuard<'_, AuthStore> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies with the alarms in `alarms` (loaded from the store) and the
    /// space quota `quota`.
    pub fn with_alarms(mut self, alarms: Alarms, quota: quota::Quota) -> Self {
        self.alarms = alarms;
        self.quota = Some(quota);
        self
    }

    /// The raised alarms.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// The store it applies to.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// Applies one committed request at log position `index`. A request that
    /// fails leaves the store untouched. The events of a successful write
    /// are returned for the watchers, to publish once its group is
    /// published in the store.
    pub fn apply(&self, req: &Request, index: u64) -> Applied {
        self.apply_as(req, &Identity::none(), index)
    }

    /// Applies one committed request sent by `who` at log position
    /// `index` (see [`Applier::apply`]).
    pub fn apply_as(&self, req: &Request, who: &Identity, index: u64) -> Applied {
        let mut events = Vec::new();
        if let Err(e) = self.admit(req).and_then(|()| self.permit(req, who)) {
            // Nothing applied (like any failed request: replaying it after
            // a restart fails it again).
            return Applied {
                result: Err(e),
                events,
            };
        }
        let fits = self.quota.as_ref().is_none_or(|q| q.available(req));
        let result = match req {
            Request::Compaction(c) => self.compact(c),
            Request::Put(p) => {
                self.write(index, &mut events, |t, s| s.put(t, p).map(Response::Put))
            }
            Request::DeleteRange(d) => self.write(index, &mut events, |t, s| {
                Ok(Response::DeleteRange(s.delete_range(t, d)?))
            }),
            Request::Txn(r) => {
                self.write(index, &mut events, |t, s| s.txn(t, r).map(Response::Txn))
            }
            Request::LeaseGrant(r) => self.write(index, &mut events, |t, s| {
                lease::grant(&s.lessor, t, r).map(Response::LeaseGrant)
            }),
            Request::LeaseRevoke(r) => self.write(index, &mut events, |t, s| {
                lease::revoke(&s.lessor, t, r).map(Response::LeaseRevoke)
            }),
            Request::LeaseCheckpoint(r) => self.write(index, &mut events, |t, s| {
                Ok(Response::LeaseCheckpoint(lease::checkpoint(
                    &s.lessor, t, r,
                )))
            }),
            Request::Alarm(r) => {
                let mut change = alarm::Change::None;
                let result = self.write(index, &mut events, |t, s| {
                    let (resp, c) = s.alarms.apply(t, r);
                    change = c;
                    Ok(Response::Alarm(resp))
                });
                self.alarms.commit(change);
                result
            }
            Request::Auth(r) => self.write(index, &mut events, |t, s| {
                let reply = s.auth_store().apply(t, who, r, index)?;
                if let Some(tokens) = &s.tokens {
                    tokens.apply(&reply.tokens);
                }
                Ok(Response::Auth(reply, t.rev()))
            }),
        };
        // etcd's quotaApplierV3: the write stays applied, but its proposer
        // learns that the backend is over quota (and raises NOSPACE).
        let result = match result {
            Ok(_) if !fits => Err(EtcdError::NoSpace),
            other => other,
        };
        Applied { result, events }
    }

    /// Refuses what the raised alarms forbid (etcd's `applierV3Corrupt`
    /// and `applierV3Capped`), before anything is written.
    fn admit(&self, req: &Request) -> Result<(), EtcdError> {
        match (self.alarms.gate(), req) {
            (Gate::Open, _) => Ok(()),
            (
                Gate::Corrupt,
                Request::Put(_)
                | Request::DeleteRange(_)
                | Request::Txn(_)
                | Request::Compaction(_)
                | Request::LeaseGrant(_)
                | Request::LeaseRevoke(_),
            ) => Err(EtcdError::Corrupt),
            (Gate::Capped, Request::Put(_) | Request::LeaseGrant(_)) => Err(EtcdError::NoSpace),
            (Gate::Capped, Request::Txn(t)) if quota::cost_txn(t) > 0 => Err(EtcdError::NoSpace),
            _ => Ok(()),
        }
    }

    /// Refuses a write its sender may not make, on the auth state at this
    /// point of the log (the proposer did not check: the decision is made
    /// once, here, identically on every member). Auth requests check
    /// themselves in the auth store.
    fn permit(&self, req: &Request, who: &Identity) -> Result<(), EtcdError> {
        let view = self.view.get();
        if !view.enabled() {
            return Ok(());
        }
        let lease_keys = |id: i64| self.lessor.keys(id).unwrap_or_default();
        match req {
            Request::Put(p) => checks::put(&view, who, p, &lease_keys),
            Request::DeleteRange(d) => checks::delete_range(&view, who, d),
            Request::Txn(t) => checks::txn_with_leases(&view, who, t, &lease_keys),
            Request::LeaseRevoke(r) => checks::lease_revoke(&view, who, &lease_keys(r.id)),
            _ => Ok(()),
        }
    }

    /// Opens a write txn, runs `f`, and commits it with `index` as the
    /// consistent index. A failed `f` is rolled back by dropping the txn:
    /// checks run before writes, so a failure has nothing to undo anyway.
    fn write<F>(&self, index: u64, events: &mut Vec<Event>, f: F) -> Result<Response, EtcdError>
    where
        F: FnOnce(&mut WriteTxn, &Self) -> Result<Response, EtcdError>,
    {
        let mut t = self.store.write();
        let result = f(&mut t, self)?;
        match t.end(Some(index)) {
            Ok(outcome) => *events = outcome.events,
            // The backend keeps one transaction open across entries: a
            // failed commit lost earlier applied entries too. Exit, as etcd
            // does on a backend error, and let the restart replay the WAL.
            Err(e) => {
                tracing::error!(index, error = %e, "backend commit failed; exiting");
                std::process::exit(1);
            }
        }
        Ok(result)
    }

    /// Publishes the compact revision at once; the index walk and the
    /// deletion of the dropped revisions run on the store's compaction
    /// thread, so a long history does not stall the entries applied after
    /// this one (a `physical` request waits for them in the KV service).
    fn compact(&self, c: &CompactionRequest) -> Result<Response, EtcdError> {
        self.store
            .schedule_compaction(c.revision)
            .map_err(mvcc_error)?;
        Ok(Response::Compaction(CompactionResponse {
            header: Some(header(self.store.rev())),
        }))
    }

    /// Whether lease `id` exists (expired but not yet revoked counts).
    fn lease_exists(&self, id: i64) -> bool {
        self.lessor.contains(id)
    }

    fn put(&self, t: &mut WriteTxn, p: &PutRequest) -> Result<PutResponse, EtcdError> {
        let mut prev = None;
        if p.ignore_value || p.ignore_lease || p.prev_kv {
            let rr = t
                .range(&p.key, &[], RangeOptions::default())
                .map_err(mvcc_error)?;
            prev = rr.kvs.into_iter().next();
        }
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let value = match (&prev, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (&prev, p.ignore_lease) {
            (Some(kv), true) => kv.lease,
            _ => p.lease,
        };
        if !p.ignore_lease && lease != 0 && !self.lease_exists(lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        t.put(&p.key, &value, lease).map_err(mvcc_error)?;
        self.lessor.attach(&p.key, lease);
        Ok(PutResponse {
            header: Some(header(t.rev())),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn txn(&self, t: &mut WriteTxn, r: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        let path = txn::compare_to_path(t, r);
        self.check_requests(t, r, &path)?;
        let mut resp = self.apply_txn(t, r, &path)?;
        resp.header = Some(header(t.rev()));
        Ok(resp)
    }

    /// Fails the whole txn, before any write, on what would fail midway.
    fn check_requests(
        &self,
        t: &mut WriteTxn,
        r: &TxnRequest,
        path: &Path,
    ) -> Result<(), EtcdError> {
        let mut nested = path.children.iter();
        for op in txn::branch(r, path) {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => self.check_put_at_apply(t, p)?,
                Some(request_op::Request::RequestRange(rr)) => {
                    self.check_range_rev(t, rr.revision)?
                }
                Some(request_op::Request::RequestTxn(n)) => {
                    if let Some(np) = nested.next() {
                        self.check_requests(t, n, np)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_put_at_apply(&self, t: &mut WriteTxn, p: &PutRequest) -> Result<(), EtcdError> {
        if p.ignore_value || p.ignore_lease {
            let rr = t
                .range(&p.key, &[], RangeOptions::default())
                .map_err(mvcc_error)?;
            if rr.kvs.is_empty() {
                return Err(EtcdError::KeyNotFound);
            }
        }
        if p.lease != 0 && !self.lease_exists(p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(())
    }

    fn check_range_rev(&self, t: &WriteTxn, rev: i64) -> Result<(), EtcdError> {
        if rev > t.rev() {
            return Err(EtcdError::FutureRev);
        }
        if rev > 0 && rev < self.store.compact_rev() {
            return Err(EtcdError::Compacted);
        }
        Ok(())
    }

    fn apply_txn(
        &self,
        t: &mut WriteTxn,
        r: &TxnRequest,
        path: &Path,
    ) -> Result<TxnResponse, EtcdError> {
        let mut nested = path.children.iter();
        let mut responses = Vec::new();
        for op in txn::branch(r, path) {
            let resp = match &op.request {
                Some(request_op::Request::RequestRange(rr)) => {
                    response_op::Response::ResponseRange(range::range(t, rr).map_err(mvcc_error)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(t, p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete_range(t, d)?)
                }
                Some(request_op::Request::RequestTxn(n)) => {
                    let np = nested.next().cloned().unwrap_or(Path {
                        succeeded: false,
                        children: Vec::new(),
                    });
                    let mut inner = self.apply_txn(t, n, &np)?;
                    inner.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(inner)
                }
                None => return Err(EtcdError::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(resp),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: path.succeeded,
            responses,
        })
    }

    /// Deletes the range and detaches the deleted keys from their leases.
    fn delete_range(
        &self,
        t: &mut WriteTxn,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        let deleted = t.delete_range(&d.key, &d.range_end).map_err(mvcc_error)?;
        for kv in deleted.iter().filter(|kv| kv.lease != 0) {
            self.lessor.detach(&kv.key);
        }
        Ok(DeleteRangeResponse {
            header: Some(header(t.rev())),
            deleted: deleted.len() as i64,
            prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
        })
    }
}

/// A header carrying only a revision; the service layer adds cluster fields.
pub fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

/// Serves a read-only txn from a read view: compares, then ranges.
pub fn read_only_txn(
    src: &mut impl RangeSource,
    rev: i64,
    r: &TxnRequest,
) -> Result<TxnResponse, EtcdError> {
    let path = txn::compare_to_path(src, r);
    let mut resp = read_only_branch(src, r, &path)?;
    resp.header = Some(header(rev));
    Ok(resp)
}

fn read_only_branch(
    src: &mut impl RangeSource,
    r: &TxnRequest,
    path: &Path,
) -> Result<TxnResponse, EtcdError> {
    let mut nested = path.children.iter();
    let mut responses = Vec::new();
    for op in txn::branch(r, path) {
        let resp = match &op.request {
            Some(request_op::Request::RequestRange(rr)) => {
                response_op::Response::ResponseRange(range::range(src, rr).map_err(mvcc_error)?)
            }
            Some(request_op::Request::RequestTxn(n)) => {
                let np = nested.next().cloned().unwrap_or(Path {
                    succeeded: false,
                    children: Vec::new(),
                });
                let mut inner = read_only_branch(src, n, &np)?;
                inner.header = Some(ResponseHeader::default());
                response_op::Response::ResponseTxn(inner)
            }
            _ => return Err(EtcdError::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(resp),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: path.succeeded,
        responses,
    })
}

/// Runs a plain Range request against a read view.
pub fn read_range(
    src: &mut impl RangeSource,
    r: &RangeRequest,
) -> Result<RangeResponse, EtcdError> {
    range::range(src, r).map_err(mvcc_error)
}
