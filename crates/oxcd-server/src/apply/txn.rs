//! Txn rules: request validation before proposing (op counts, empty keys,
//! duplicate keys), compare evaluation, and the pre-apply checks that fail a
//! whole txn before any write. Mirrors etcd's `checkTxnRequest` /
//! `checkIntervals` (`etcdserver/api/v3rpc/key.go`) and `compareToPath` /
//! `checkRequests` / `applyCompare` (`etcdserver/apply.go`).

use super::range::RangeSource;
use oxcd_api::etcdserverpb::{compare, request_op, Compare, RequestOp, TxnRequest};
use oxcd_api::mvccpb::KeyValue;
use oxcd_api::EtcdError;
use oxcd_mvcc::RangeOptions;
use std::cmp::Ordering;
use std::collections::HashSet;

/// Which branch each txn took, decided against the state before the txn.
/// `children` holds one entry per nested txn of the chosen branch, in order.
#[derive(Debug, Clone)]
pub struct Path {
    /// Whether the compares held (success branch chosen).
    pub succeeded: bool,
    /// Paths of the nested txns in the chosen branch.
    pub children: Vec<Path>,
}

/// The chosen branch of `t` according to `path`.
pub fn branch<'a>(t: &'a TxnRequest, path: &Path) -> &'a [RequestOp] {
    if path.succeeded {
        &t.success
    } else {
        &t.failure
    }
}

/// Validates a txn before it is proposed: op counts, empty keys, empty ops.
pub fn check_txn_request(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => Err(EtcdError::EmptyKey),
        Some(request_op::Request::RequestPut(p)) => super::check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
            Err(EtcdError::EmptyKey)
        }
        Some(request_op::Request::RequestTxn(t)) => check_txn_request(t, max_txn_ops),
        Some(_) => Ok(()),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A deleted interval `[key, end)`, or a single key when `end` is empty.
#[derive(Debug, Clone)]
struct Interval {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            self.key == k
        } else {
            self.key.as_slice() <= k && k < self.end.as_slice()
        }
    }
}

/// Rejects txns whose branches write one key twice, or put a key that the
/// same branch deletes. Overlapping deletes, and one key in both success and
/// failure, are allowed (as in etcd).
pub fn check_duplicates(r: &TxnRequest) -> Result<(), EtcdError> {
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<Interval>, HashSet<Vec<u8>>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.to_vec(),
                end: d.range_end.to_vec(),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|iv| iv.contains(k));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (dels_then, puts_then) = check_intervals(&t.success)?;
        let (dels_else, puts_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            // The nested success and failure may share keys; nothing else may.
            if puts.contains(&k) && !puts_then.contains(&k) || deleted(&dels, &k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(p.key.as_ref()) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((dels, puts))
}

/// Whether every op in both branches (recursively) is a Range.
pub fn is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}

/// Evaluates all compares of `r` and of the nested txns it will run.
pub fn compare_to_path(src: &mut impl RangeSource, r: &TxnRequest) -> Path {
    let succeeded = r.compare.iter().all(|c| apply_compare(src, c));
    let ops = if succeeded { &r.success } else { &r.failure };
    let children = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestTxn(t)) => Some(compare_to_path(src, t)),
            _ => None,
        })
        .collect();
    Path {
        succeeded,
        children,
    }
}

fn apply_compare(src: &mut impl RangeSource, c: &Compare) -> bool {
    let Ok(rr) = src.range_kvs(&c.key, &c.range_end, RangeOptions::default()) else {
        return false;
    };
    if rr.kvs.is_empty() {
        // A missing value cannot be told from an empty one, so value
        // compares on missing keys always fail.
        if c.target == compare::CompareTarget::Value as i32 {
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareTarget as T, TargetUnion as U};
    let ord = match (T::try_from(c.target), &c.target_union) {
        (Ok(T::Value), Some(U::Value(v))) => kv.value.as_ref().cmp(v.as_ref()),
        (Ok(T::Value), _) => kv.value.as_ref().cmp(&[][..]),
        (Ok(T::Create), u) => kv.create_revision.cmp(&int_target(u, T::Create)),
        (Ok(T::Mod), u) => kv.mod_revision.cmp(&int_target(u, T::Mod)),
        (Ok(T::Version), u) => kv.version.cmp(&int_target(u, T::Version)),
        (Ok(T::Lease), u) => kv.lease.cmp(&int_target(u, T::Lease)),
        (Err(_), _) => Ordering::Equal,
    };
    match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => ord == Ordering::Equal,
        Ok(compare::CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(compare::CompareResult::Greater) => ord == Ordering::Greater,
        Ok(compare::CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// The integer a compare targets; 0 when the union holds another member.
fn int_target(u: &Option<compare::TargetUnion>, t: compare::CompareTarget) -> i64 {
    use compare::{CompareTarget as T, TargetUnion as U};
    match (t, u) {
        (T::Create, Some(U::CreateRevision(v)))
        | (T::Mod, Some(U::ModRevision(v)))
        | (T::Version, Some(U::Version(v)))
        | (T::Lease, Some(U::Lease(v))) => *v,
        _ => 0,
    }
}
