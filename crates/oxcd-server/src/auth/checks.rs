//! Which permission each request needs (`docs/design/auth.md` §4.3;
//! etcd's `etcdserver/apply_auth.go` and the watch create check).
//!
//! Pure functions of (view, identity, request): the API calls them for
//! reads and watches, the applier for writes, on the same rules. A request
//! with nothing to check (an empty Txn, revoking a lease without keys)
//! passes even without an identity, as in etcd.

use oxcd_api::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use oxcd_api::EtcdError;

use super::permissions::{Access, AuthView};
use super::Identity;

/// Range: READ on `[key, range_end)`.
pub fn range(v: &AuthView, who: &Identity, r: &RangeRequest) -> Result<(), EtcdError> {
    v.check_key(who, Access::Read, &r.key, &r.range_end)
}

/// Put: WRITE on the key; if `lease != 0`, WRITE on every key already
/// attached to that lease (`lease_keys`), since attaching lets this user
/// revoke them all; READ on the key if `prev_kv`.
pub fn put(
    v: &AuthView,
    who: &Identity,
    p: &PutRequest,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<(), EtcdError> {
    v.check_key(who, Access::Write, &p.key, b"")?;
    // Skip gathering the lease's keys when no check can fail.
    if v.unrestricted(who) {
        return Ok(());
    }
    if p.lease != 0 {
        for key in lease_keys(p.lease) {
            v.check_key(who, Access::Write, &key, b"")?;
        }
    }
    if p.prev_kv {
        v.check_key(who, Access::Read, &p.key, b"")?;
    }
    Ok(())
}

/// DeleteRange: WRITE on the range; READ on it too if `prev_kv`.
pub fn delete_range(v: &AuthView, who: &Identity, d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    v.check_key(who, Access::Write, &d.key, &d.range_end)?;
    if d.prev_kv {
        v.check_key(who, Access::Read, &d.key, &d.range_end)?;
    }
    Ok(())
}

/// Txn, checked once before anything runs: READ on every compare range,
/// then the ops of **both** branches, whichever one will run. Stricter
/// than etcd 3.4 (§4.5): a put's `prev_kv` needs READ, and nested txns
/// are checked the same way. Puts inside a txn get no lease check (etcd
/// has none either).
pub fn txn(v: &AuthView, who: &Identity, t: &TxnRequest) -> Result<(), EtcdError> {
    for c in &t.compare {
        v.check_key(who, Access::Read, &c.key, &c.range_end)?;
    }
    ops(v, who, &t.success)?;
    ops(v, who, &t.failure)
}

/// [`txn`], and then, stricter than etcd 3.4, WRITE on every key already
/// attached to a lease that a put of either branch (nested ones too)
/// attaches to, as [`put`] demands: otherwise a txn would let a user tie
/// its key to someone else's lease and block that owner's revoke. What
/// the applier checks.
pub fn txn_with_leases(
    v: &AuthView,
    who: &Identity,
    t: &TxnRequest,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<(), EtcdError> {
    txn(v, who, t)?;
    if v.unrestricted(who) {
        return Ok(());
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) if p.lease != 0 => {
                for key in lease_keys(p.lease) {
                    v.check_key(who, Access::Write, &key, b"")?;
                }
            }
            Some(request_op::Request::RequestTxn(n)) => txn_with_leases(v, who, n, lease_keys)?,
            _ => {}
        }
    }
    Ok(())
}

/// The per-op rules of [`txn`] for one branch.
fn ops(v: &AuthView, who: &Identity, ops: &[RequestOp]) -> Result<(), EtcdError> {
    for op in ops {
        match &op.request {
            None => {}
            Some(request_op::Request::RequestRange(r)) => range(v, who, r)?,
            Some(request_op::Request::RequestPut(p)) => {
                v.check_key(who, Access::Write, &p.key, b"")?;
                if p.prev_kv {
                    v.check_key(who, Access::Read, &p.key, b"")?;
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) => delete_range(v, who, d)?,
            Some(request_op::Request::RequestTxn(t)) => txn(v, who, t)?,
        }
    }
    Ok(())
}

/// Watch create: READ on `[key, range_end)`, an empty key meaning `"\0"`
/// (the smallest key) as in etcd's watch server. A `range_end` of `"\0"`
/// is open-ended here, where etcd 3.4 checks only the start key (§4.5).
pub fn watch_create(
    v: &AuthView,
    who: &Identity,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), EtcdError> {
    let key: &[u8] = if key.is_empty() { b"\0" } else { key };
    v.check_key(who, Access::Read, key, range_end)
}

/// LeaseRevoke: WRITE on every key attached to the lease, since revoking
/// deletes them.
pub fn lease_revoke(
    v: &AuthView,
    who: &Identity,
    attached_keys: &[Vec<u8>],
) -> Result<(), EtcdError> {
    for key in attached_keys {
        v.check_key(who, Access::Write, key, b"")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use oxcd_api::etcdserverpb::Compare;

    use super::super::permissions::tests::{id, perm, state, R, RW, W};
    use super::*;

    /// User `u` (role `r`: READ `[a, c)`, WRITE `[b, d)`) and `root`.
    fn view() -> AuthView {
        AuthView::build(&state(
            &[("u", &["r"]), ("root", &["root"])],
            &[("r", vec![perm(R, b"a", b"c"), perm(W, b"b", b"d")])],
        ))
    }

    fn rq(key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: key.to_vec().into(),
            range_end: end.to_vec().into(),
            ..RangeRequest::default()
        }
    }

    fn pq(key: &[u8], prev_kv: bool, lease: i64) -> PutRequest {
        PutRequest {
            key: key.to_vec().into(),
            prev_kv,
            lease,
            ..PutRequest::default()
        }
    }

    fn dq(key: &[u8], end: &[u8], prev_kv: bool) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: key.to_vec().into(),
            range_end: end.to_vec().into(),
            prev_kv,
        }
    }

    fn cmp(key: &[u8], end: &[u8]) -> Compare {
        Compare {
            key: key.to_vec().into(),
            range_end: end.to_vec().into(),
            ..Compare::default()
        }
    }

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    fn no_lease(_: i64) -> Vec<Vec<u8>> {
        Vec::new()
    }

    const DENIED: Result<(), EtcdError> = Err(EtcdError::PermissionDenied);

    #[test]
    fn range_needs_read() {
        let v = view();
        assert_eq!(range(&v, &id("u"), &rq(b"a", b"c")), Ok(()));
        assert_eq!(range(&v, &id("u"), &rq(b"c", b"")), DENIED);
        assert_eq!(range(&v, &id("u"), &rq(b"a", b"\0")), DENIED);
        assert_eq!(
            range(&v, &Identity::none(), &rq(b"a", b"")),
            Err(EtcdError::UserEmpty)
        );
        assert_eq!(range(&v, &id("root"), &rq(b"\0", b"\0")), Ok(()));
    }

    #[test]
    fn put_needs_write_and_read_for_prev_kv() {
        let v = view();
        assert_eq!(put(&v, &id("u"), &pq(b"c", false, 0), &no_lease), Ok(()));
        assert_eq!(put(&v, &id("u"), &pq(b"a", false, 0), &no_lease), DENIED);
        // b: READ and WRITE; c: WRITE only.
        assert_eq!(put(&v, &id("u"), &pq(b"b", true, 0), &no_lease), Ok(()));
        assert_eq!(put(&v, &id("u"), &pq(b"c", true, 0), &no_lease), DENIED);
    }

    #[test]
    fn put_with_lease_needs_write_on_attached_keys() {
        let v = view();
        let attached = |l: i64| -> Vec<Vec<u8>> {
            match l {
                7 => vec![b"b".to_vec(), b"cc".to_vec()],
                8 => vec![b"b".to_vec(), b"a".to_vec()],
                _ => Vec::new(),
            }
        };
        assert_eq!(put(&v, &id("u"), &pq(b"c", false, 7), &attached), Ok(()));
        assert_eq!(put(&v, &id("u"), &pq(b"c", false, 8), &attached), DENIED);
        assert_eq!(put(&v, &id("u"), &pq(b"c", false, 9), &attached), Ok(()));
        assert_eq!(put(&v, &id("root"), &pq(b"c", false, 8), &attached), Ok(()));
        // Lease 0 and root callers never gather keys; the key's own check
        // still comes first.
        let called = Cell::new(false);
        let spy = |_: i64| -> Vec<Vec<u8>> {
            called.set(true);
            vec![b"a".to_vec()]
        };
        assert_eq!(put(&v, &id("u"), &pq(b"c", false, 0), &spy), Ok(()));
        assert_eq!(put(&v, &id("root"), &pq(b"c", true, 3), &spy), Ok(()));
        assert_eq!(put(&v, &id("u"), &pq(b"a", false, 3), &spy), DENIED);
        assert!(!called.get());
    }

    #[test]
    fn delete_needs_write_and_read_for_prev_kv() {
        let v = view();
        assert_eq!(delete_range(&v, &id("u"), &dq(b"b", b"d", false)), Ok(()));
        assert_eq!(delete_range(&v, &id("u"), &dq(b"b", b"d", true)), DENIED);
        assert_eq!(delete_range(&v, &id("u"), &dq(b"b", b"c", true)), Ok(()));
        assert_eq!(delete_range(&v, &id("u"), &dq(b"a", b"c", false)), DENIED);
    }

    #[test]
    fn txn_compares_need_read() {
        let v = view();
        let t = TxnRequest {
            compare: vec![cmp(b"a", b""), cmp(b"a", b"c")],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), Ok(()));
        // A compare on a write-only key.
        let t = TxnRequest {
            compare: vec![cmp(b"a", b""), cmp(b"c", b"")],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), DENIED);
    }

    #[test]
    fn txn_checks_both_branches() {
        let v = view();
        let good = op(request_op::Request::RequestPut(pq(b"b", false, 0)));
        let bad = op(request_op::Request::RequestPut(pq(b"a", false, 0)));
        let t = TxnRequest {
            success: vec![good.clone()],
            failure: vec![bad.clone()],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), DENIED);
        let t = TxnRequest {
            success: vec![bad],
            failure: vec![good.clone()],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), DENIED);
        let t = TxnRequest {
            success: vec![
                good,
                op(request_op::Request::RequestRange(rq(b"a", b"c"))),
                op(request_op::Request::RequestDeleteRange(dq(
                    b"b", b"d", false,
                ))),
                RequestOp { request: None },
            ],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), Ok(()));
        let t = TxnRequest {
            failure: vec![op(request_op::Request::RequestRange(rq(b"c", b"")))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), DENIED);
        let t = TxnRequest {
            failure: vec![op(request_op::Request::RequestDeleteRange(dq(
                b"b", b"d", true,
            )))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), DENIED);
    }

    #[test]
    fn txn_put_prev_kv_needs_read() {
        let v = view();
        let t = |key: &[u8]| TxnRequest {
            success: vec![op(request_op::Request::RequestPut(pq(key, true, 0)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t(b"b")), Ok(()));
        // 3.4 lets this one through (§4.5 #2).
        assert_eq!(txn(&v, &id("u"), &t(b"c")), DENIED);
    }

    #[test]
    fn txn_puts_get_no_lease_check() {
        let v = view();
        // The lease number is not looked at: there is no lease_keys here.
        let t = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(pq(b"b", false, 42)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &t), Ok(()));
    }

    #[test]
    fn txn_puts_onto_a_lease_need_write_on_its_keys_at_apply() {
        // oxcd's applier is stricter than etcd 3.4 here (like a plain Put).
        let v = view();
        let attached = |l: i64| -> Vec<Vec<u8>> {
            match l {
                7 => vec![b"b".to_vec()],
                8 => vec![b"a".to_vec()],
                _ => Vec::new(),
            }
        };
        let put_on = |lease| TxnRequest {
            success: vec![op(request_op::Request::RequestPut(pq(b"b", false, lease)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn_with_leases(&v, &id("u"), &put_on(7), &attached), Ok(()));
        assert_eq!(txn_with_leases(&v, &id("u"), &put_on(8), &attached), DENIED);
        assert_eq!(
            txn_with_leases(&v, &id("root"), &put_on(8), &attached),
            Ok(())
        );
        // In the branch that does not run, and nested, just the same.
        let nested = TxnRequest {
            failure: vec![op(request_op::Request::RequestTxn(put_on(8)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn_with_leases(&v, &id("u"), &nested, &attached), DENIED);
        // The plain txn rules still come first.
        let forbidden = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(pq(b"e", false, 7)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn_with_leases(&v, &id("u"), &forbidden, &attached), DENIED);
    }

    #[test]
    fn nested_txn_is_checked() {
        let v = view();
        let inner = |t: TxnRequest| TxnRequest {
            failure: vec![op(request_op::Request::RequestTxn(t))],
            ..TxnRequest::default()
        };
        // 3.4 checks none of these (§4.5 #1).
        let bad_put = TxnRequest {
            success: vec![op(request_op::Request::RequestPut(pq(b"e", false, 0)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &inner(bad_put)), DENIED);
        let bad_read = TxnRequest {
            failure: vec![op(request_op::Request::RequestRange(rq(b"e", b"")))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &inner(inner(bad_read))), DENIED);
        let bad_cmp = TxnRequest {
            compare: vec![cmp(b"e", b"")],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &inner(bad_cmp)), DENIED);
        let fine = TxnRequest {
            compare: vec![cmp(b"a", b"")],
            success: vec![op(request_op::Request::RequestPut(pq(b"b", true, 0)))],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &id("u"), &inner(inner(fine))), Ok(()));
    }

    #[test]
    fn nothing_to_check_passes_without_identity() {
        let v = view();
        assert_eq!(txn(&v, &Identity::none(), &TxnRequest::default()), Ok(()));
        let empty_nested = TxnRequest {
            success: vec![
                op(request_op::Request::RequestTxn(TxnRequest::default())),
                RequestOp { request: None },
            ],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &Identity::none(), &empty_nested), Ok(()));
        assert_eq!(lease_revoke(&v, &Identity::none(), &[]), Ok(()));
        // But one op is enough to need an identity.
        let one_op = TxnRequest {
            failure: vec![op(request_op::Request::RequestRange(rq(b"a", b"")))],
            ..TxnRequest::default()
        };
        assert_eq!(
            txn(&v, &Identity::none(), &one_op),
            Err(EtcdError::UserEmpty)
        );
    }

    #[test]
    fn watch_create_rules() {
        let v = AuthView::build(&state(
            &[("u", &["r"]), ("all", &["s"])],
            &[
                ("r", vec![perm(R, b"key", b"key4")]),
                ("s", vec![perm(R, b"\0", b"\0")]),
            ],
        ));
        assert_eq!(watch_create(&v, &id("u"), b"key", b"key4"), Ok(()));
        assert_eq!(watch_create(&v, &id("u"), b"key", b"key6"), DENIED);
        assert_eq!(watch_create(&v, &id("u"), b"key5", b""), DENIED);
        // "\0" end is open-ended (3.4 checks only "key", §4.5 #3).
        assert_eq!(watch_create(&v, &id("u"), b"key", b"\0"), DENIED);
        assert_eq!(watch_create(&v, &id("all"), b"key", b"\0"), Ok(()));
        // Empty key = "\0": a whole-keyspace watch.
        assert_eq!(watch_create(&v, &id("u"), b"", b"\0"), DENIED);
        assert_eq!(watch_create(&v, &id("all"), b"", b"\0"), Ok(()));
        assert_eq!(watch_create(&v, &id("all"), b"", b""), Ok(()));
        assert_eq!(
            watch_create(&v, &Identity::none(), b"key", b""),
            Err(EtcdError::UserEmpty)
        );
    }

    #[test]
    fn lease_revoke_needs_write_on_attached_keys() {
        let v = view();
        assert_eq!(
            lease_revoke(&v, &id("u"), &[b"b".to_vec(), b"c".to_vec()]),
            Ok(())
        );
        assert_eq!(
            lease_revoke(&v, &id("u"), &[b"b".to_vec(), b"a".to_vec()]),
            DENIED
        );
        assert_eq!(lease_revoke(&v, &id("root"), &[b"a".to_vec()]), Ok(()));
    }

    #[test]
    fn disabled_passes_everything() {
        let mut s = state(&[], &[("r", vec![perm(RW, b"a", b"")])]);
        s.enabled = false;
        let v = AuthView::build(&s);
        let none = Identity::none();
        assert_eq!(range(&v, &none, &rq(b"x", b"\0")), Ok(()));
        assert_eq!(
            put(&v, &none, &pq(b"x", true, 5), &|_| vec![b"y".to_vec()]),
            Ok(())
        );
        assert_eq!(delete_range(&v, &none, &dq(b"x", b"z", true)), Ok(()));
        let t = TxnRequest {
            compare: vec![cmp(b"x", b"")],
            ..TxnRequest::default()
        };
        assert_eq!(txn(&v, &none, &t), Ok(()));
        assert_eq!(watch_create(&v, &none, b"", b"\0"), Ok(()));
        assert_eq!(lease_revoke(&v, &none, &[b"x".to_vec()]), Ok(()));
    }
}

/// Model-based property test (`docs/design/auth.md` §6): random auth
/// states, identities and requests; production must answer exactly what a
/// plain transcription of the rules answers, with coverage decided by a
/// different algorithm (witness points instead of merged intervals).
#[cfg(test)]
mod model {
    use std::collections::BTreeMap;

    use oxcd_api::authpb::{Permission, Role, User};
    use oxcd_api::etcdserverpb::Compare;
    use proptest::prelude::*;

    use super::super::{AuthState, ROOT};
    use super::*;

    const KEYS: &[&[u8]] = &[b"\0", b"a", b"ab", b"b", b"b\xff", b"c", b"\xff\xff", b""];
    const USERS: &[&str] = &["root", "alice", "bob", ""];
    const ROLES: &[&str] = &["root", "r1", "r2", "r3"];
    /// Lease 1 has the generated keys, lease 2 has none.
    const LEASES: &[i64] = &[0, 1, 2];

    /// One request of the test, with its lease attachments.
    #[derive(Debug, Clone)]
    enum Req {
        Range(RangeRequest),
        Put(PutRequest),
        Delete(DeleteRangeRequest),
        Txn(TxnRequest),
        Watch(Vec<u8>, Vec<u8>),
        LeaseRevoke(Vec<Vec<u8>>),
        Admin,
    }

    // ---- the model ----

    /// One needed permission: (access, key, range_end) as on the wire.
    type Need = (Access, Vec<u8>, Vec<u8>);

    /// Whether `x` lies in the permission's interval; nothing for an empty
    /// key, an empty range_end is `[k, k"\0")`, `"\0"` is open.
    fn perm_holds(p: &Permission, x: &[u8]) -> bool {
        if p.key.is_empty() || x < p.key.as_ref() {
            return false;
        }
        match p.range_end.as_ref() {
            [] => x == p.key.as_ref(),
            [0] => true,
            end => x < end,
        }
    }

    /// The permission's end as a point (None = open).
    fn perm_end(p: &Permission) -> Option<Vec<u8>> {
        match p.range_end.as_ref() {
            [] => Some([p.key.as_ref(), b"\0"].concat()),
            [0] => None,
            end => Some(end.to_vec()),
        }
    }

    fn grants(p: &Permission, access: Access) -> bool {
        matches!(
            (p.perm_type, access),
            (0 | 2, Access::Read) | (1 | 2, Access::Write)
        )
    }

    /// Coverage by witnesses: `[k, e)` is covered iff `k` and every
    /// permission start and end inside it lie in some single permission.
    fn covered(perms: &[&Permission], key: &[u8], end: &[u8]) -> bool {
        let open = end == b"\0";
        let inside = |x: &[u8]| x >= key && (open || x < end);
        let mut witnesses = vec![key.to_vec()];
        if open || (!end.is_empty() && end > key) {
            for p in perms {
                witnesses.push(p.key.to_vec());
                witnesses.extend(perm_end(p));
            }
        }
        witnesses
            .iter()
            .filter(|w| w.as_slice() == key || inside(w))
            .all(|w| perms.iter().any(|p| perm_holds(p, w)))
    }

    /// What the rules say about `needs` for `who` in `s`.
    fn decide(s: &AuthState, who: &Identity, needs: &[Need]) -> Result<(), EtcdError> {
        if !s.enabled || needs.is_empty() {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if who.revision < s.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let user = s
            .users
            .get(&who.username)
            .ok_or(EtcdError::PermissionDenied)?;
        if user.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let all: Vec<&Permission> = user
            .roles
            .iter()
            .filter_map(|r| s.roles.get(r))
            .flat_map(|r| &r.key_permission)
            .collect();
        for (access, key, end) in needs {
            let perms: Vec<&Permission> =
                all.iter().copied().filter(|p| grants(p, *access)).collect();
            if !covered(&perms, key, end) {
                return Err(EtcdError::PermissionDenied);
            }
        }
        Ok(())
    }

    fn txn_needs(t: &TxnRequest, out: &mut Vec<Need>) {
        for c in &t.compare {
            out.push((Access::Read, c.key.to_vec(), c.range_end.to_vec()));
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                None => {}
                Some(request_op::Request::RequestRange(r)) => {
                    out.push((Access::Read, r.key.to_vec(), r.range_end.to_vec()))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    out.push((Access::Write, p.key.to_vec(), vec![]));
                    if p.prev_kv {
                        out.push((Access::Read, p.key.to_vec(), vec![]));
                    }
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    out.push((Access::Write, d.key.to_vec(), d.range_end.to_vec()));
                    if d.prev_kv {
                        out.push((Access::Read, d.key.to_vec(), d.range_end.to_vec()));
                    }
                }
                Some(request_op::Request::RequestTxn(t)) => txn_needs(t, out),
            }
        }
    }

    fn needs(req: &Req, lease_keys: &[Vec<u8>]) -> Vec<Need> {
        let mut out = Vec::new();
        match req {
            Req::Range(r) => out.push((Access::Read, r.key.to_vec(), r.range_end.to_vec())),
            Req::Put(p) => {
                out.push((Access::Write, p.key.to_vec(), vec![]));
                if p.prev_kv {
                    out.push((Access::Read, p.key.to_vec(), vec![]));
                }
                if p.lease == 1 {
                    for k in lease_keys {
                        out.push((Access::Write, k.clone(), vec![]));
                    }
                }
            }
            Req::Delete(d) => {
                out.push((Access::Write, d.key.to_vec(), d.range_end.to_vec()));
                if d.prev_kv {
                    out.push((Access::Read, d.key.to_vec(), d.range_end.to_vec()));
                }
            }
            Req::Txn(t) => txn_needs(t, &mut out),
            Req::Watch(k, e) => {
                let k = if k.is_empty() {
                    b"\0".to_vec()
                } else {
                    k.clone()
                };
                out.push((Access::Read, k, e.clone()));
            }
            Req::LeaseRevoke(keys) => {
                for k in keys {
                    out.push((Access::Write, k.clone(), vec![]));
                }
            }
            Req::Admin => {}
        }
        out
    }

    fn model_admin(s: &AuthState, who: &Identity) -> Result<(), EtcdError> {
        if !s.enabled {
            Ok(())
        } else if who.username.is_empty() {
            Err(EtcdError::UserEmpty)
        } else {
            match s.users.get(&who.username) {
                None => Err(EtcdError::UserNotFound),
                Some(u) if u.roles.iter().any(|r| r == ROOT) => Ok(()),
                Some(_) => Err(EtcdError::PermissionDenied),
            }
        }
    }

    // ---- generators ----

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(KEYS).prop_map(|k| k.to_vec())
    }

    /// KEYS already holds "\0" and "".
    fn range_end() -> impl Strategy<Value = Vec<u8>> {
        key()
    }

    fn permission() -> impl Strategy<Value = Permission> {
        // Mostly the three real types; 3 is an unknown one.
        let t = prop_oneof![4 => 0..=2i32, 1 => Just(3i32)];
        (t, key(), range_end()).prop_map(|(t, k, e)| Permission {
            perm_type: t,
            key: k.into(),
            range_end: e.into(),
        })
    }

    /// A user's roles, sorted as the store keeps them; `root` only now and
    /// then, so most checks reach the range rule.
    fn user_roles() -> impl Strategy<Value = Vec<String>> {
        (
            prop::bool::weighted(0.15),
            prop::sample::subsequence(&ROLES[1..], 0..=ROLES.len() - 1),
        )
            .prop_map(|(root, roles)| {
                let mut roles: Vec<String> = roles.into_iter().map(str::to_string).collect();
                if root {
                    roles.push(ROOT.to_string());
                    roles.sort();
                }
                roles
            })
    }

    fn auth_state() -> impl Strategy<Value = AuthState> {
        // root, alice, bob, "": each exists with its own odds.
        let users = (
            prop::option::weighted(0.5, user_roles()),
            prop::option::weighted(0.9, user_roles()),
            prop::option::weighted(0.9, user_roles()),
            prop::option::weighted(0.3, user_roles()),
        )
            .prop_map(|(a, b, c, d)| {
                USERS
                    .iter()
                    .zip([a, b, c, d])
                    .filter_map(|(name, roles)| Some((name.to_string(), roles?)))
                    .collect::<Vec<_>>()
            });
        // A missing role object grants nothing, so some roles are absent.
        let roles = prop::collection::vec(
            prop::option::weighted(0.85, prop::collection::vec(permission(), 0..6)),
            ROLES.len(),
        )
        .prop_map(|perms| {
            ROLES
                .iter()
                .zip(perms)
                .filter_map(|(name, perms)| Some((name.to_string(), perms?)))
                .collect::<Vec<_>>()
        });
        (prop::bool::weighted(0.9), 1..4u64, users, roles).prop_map(
            |(enabled, revision, users, roles)| AuthState {
                enabled,
                revision,
                users: users
                    .into_iter()
                    .map(|(name, roles)| {
                        let user = User {
                            name: name.clone().into_bytes().into(),
                            roles,
                            ..User::default()
                        };
                        (name, user)
                    })
                    .collect(),
                roles: roles
                    .into_iter()
                    .map(|(name, perms)| {
                        let role = Role {
                            name: name.clone().into_bytes().into(),
                            key_permission: perms,
                        };
                        (name, role)
                    })
                    .collect::<BTreeMap<_, _>>(),
            },
        )
    }

    /// A user name (carol never exists) and the revision as an offset:
    /// 0 = none, 1 = current − 1, 2 = current, 3 = current + 1.
    fn identity() -> impl Strategy<Value = (String, u8)> {
        (
            prop_oneof![
                1 => Just("root"),
                3 => Just("alice"),
                3 => Just("bob"),
                1 => Just(""),
                1 => Just("carol"),
            ]
            .prop_map(str::to_string),
            prop_oneof![1 => Just(0u8), 1 => Just(1u8), 5 => Just(2u8), 1 => Just(3u8)],
        )
    }

    fn put_req() -> impl Strategy<Value = PutRequest> {
        (key(), any::<bool>(), prop::sample::select(LEASES)).prop_map(|(k, prev_kv, lease)| {
            PutRequest {
                key: k.into(),
                prev_kv,
                lease,
                ..PutRequest::default()
            }
        })
    }

    fn range_req() -> impl Strategy<Value = RangeRequest> {
        (key(), range_end()).prop_map(|(k, e)| RangeRequest {
            key: k.into(),
            range_end: e.into(),
            ..RangeRequest::default()
        })
    }

    fn delete_req() -> impl Strategy<Value = DeleteRangeRequest> {
        (key(), range_end(), any::<bool>()).prop_map(|(k, e, prev_kv)| DeleteRangeRequest {
            key: k.into(),
            range_end: e.into(),
            prev_kv,
        })
    }

    fn txn_req(depth: u32) -> BoxedStrategy<TxnRequest> {
        let op = request_op(depth);
        (
            prop::collection::vec(
                (key(), range_end()).prop_map(|(k, e)| Compare {
                    key: k.into(),
                    range_end: e.into(),
                    ..Compare::default()
                }),
                0..3,
            ),
            prop::collection::vec(op.clone(), 0..3),
            prop::collection::vec(op, 0..3),
        )
            .prop_map(|(compare, success, failure)| TxnRequest {
                compare,
                success,
                failure,
            })
            .boxed()
    }

    fn request_op(depth: u32) -> BoxedStrategy<RequestOp> {
        use request_op::Request as Op;
        let leaf = prop_oneof![
            range_req().prop_map(Op::RequestRange),
            put_req().prop_map(Op::RequestPut),
            delete_req().prop_map(Op::RequestDeleteRange),
        ];
        let req = if depth == 0 {
            leaf.boxed()
        } else {
            prop_oneof![3 => leaf, 1 => txn_req(depth - 1).prop_map(Op::RequestTxn)].boxed()
        };
        prop::option::weighted(0.95, req)
            .prop_map(|request| RequestOp { request })
            .boxed()
    }

    fn req() -> impl Strategy<Value = Req> {
        prop_oneof![
            range_req().prop_map(Req::Range),
            put_req().prop_map(Req::Put),
            delete_req().prop_map(Req::Delete),
            // Top level plus nested to depth 2.
            txn_req(2).prop_map(Req::Txn),
            // A single op in either branch, so one rule decides alone.
            (request_op(2), any::<bool>()).prop_map(|(op, success)| {
                let ops = vec![op];
                Req::Txn(if success {
                    TxnRequest {
                        success: ops,
                        ..TxnRequest::default()
                    }
                } else {
                    TxnRequest {
                        failure: ops,
                        ..TxnRequest::default()
                    }
                })
            }),
            (key(), range_end()).prop_map(|(k, e)| Req::Watch(k, e)),
            prop::collection::vec(key(), 0..3).prop_map(Req::LeaseRevoke),
            Just(Req::Admin),
        ]
    }

    /// Production's answer.
    fn production(
        v: &AuthView,
        who: &Identity,
        req: &Req,
        lease_keys: &[Vec<u8>],
    ) -> Result<(), EtcdError> {
        let attached = |l: i64| {
            if l == 1 {
                lease_keys.to_vec()
            } else {
                Vec::new()
            }
        };
        match req {
            Req::Range(r) => range(v, who, r),
            Req::Put(p) => put(v, who, p, &attached),
            Req::Delete(d) => delete_range(v, who, d),
            Req::Txn(t) => txn(v, who, t),
            Req::Watch(k, e) => watch_create(v, who, k, e),
            Req::LeaseRevoke(keys) => lease_revoke(v, who, keys),
            Req::Admin => v.check_admin(who),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The range rule alone, densely: one user, one role, many perms.
        #[test]
        fn range_rule_matches_model(
            perms in prop::collection::vec(permission(), 0..8),
            write in any::<bool>(),
            k in key(),
            e in range_end(),
        ) {
            let mut s = AuthState { enabled: true, ..AuthState::default() };
            let role = Role { name: "r".into(), key_permission: perms };
            s.roles.insert("r".to_string(), role);
            let user = User { name: "u".into(), roles: vec!["r".to_string()], ..User::default() };
            s.users.insert("u".to_string(), user);
            let who = Identity { username: "u".to_string(), revision: s.revision };
            let access = if write { Access::Write } else { Access::Read };
            let want = decide(&s, &who, &[(access, k.clone(), e.clone())]);
            prop_assert_eq!(AuthView::build(&s).check_key(&who, access, &k, &e), want);
        }

        #[test]
        fn checks_match_model(
            s in auth_state(),
            (name, rev) in identity(),
            reqs in prop::collection::vec(req(), 1..12),
            lease_keys in prop::collection::vec(key(), 0..3),
        ) {
            let v = AuthView::build(&s);
            let who = Identity {
                username: name,
                revision: match rev {
                    0 => 0,
                    r => s.revision + u64::from(r) - 2,
                },
            };
            for req in &reqs {
                let want = match req {
                    Req::Admin => model_admin(&s, &who),
                    _ => decide(&s, &who, &needs(req, &lease_keys)),
                };
                prop_assert_eq!(production(&v, &who, req, &lease_keys), want, "{:?}", req);
            }
            for user in USERS.iter().chain(&["carol"]) {
                prop_assert_eq!(v.has_user(user), s.users.contains_key(*user));
                for role in ROLES {
                    let has = s.users.get(*user).is_some_and(|u| u.roles.iter().any(|r| r == role));
                    prop_assert_eq!(v.user_has_role(user, role), has);
                }
            }
        }
    }
}
