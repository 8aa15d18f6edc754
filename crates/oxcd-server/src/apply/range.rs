//! Range semantics above the MVCC store: limit/more, count, sort, filters,
//! keys_only, count_only. Mirrors `Range` in etcd's `etcdserver/apply.go`.

use oxcd_api::etcdserverpb::{range_request, RangeRequest, RangeResponse, ResponseHeader};
use oxcd_api::mvccpb::KeyValue;
use oxcd_mvcc::{MvccError, RangeOptions, RangeResult};
use std::cmp::Ordering;

/// Anything that can answer a revisioned range: a read or a write txn.
pub trait RangeSource {
    /// Ranges `[key, end)` with the store's rules for `end`.
    fn range_kvs(
        &mut self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError>;
}

impl RangeSource for oxcd_mvcc::ReadTxn {
    fn range_kvs(
        &mut self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.range(key, end, opts)
    }
}

impl RangeSource for oxcd_mvcc::WriteTxn {
    fn range_kvs(
        &mut self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult, MvccError> {
        self.range(key, end, opts)
    }
}

/// Runs a `RangeRequest` against `src`. The header carries only the revision;
/// the service layer fills in the cluster fields.
pub fn range(src: &mut impl RangeSource, r: &RangeRequest) -> Result<RangeResponse, MvccError> {
    let sort_order =
        range_request::SortOrder::try_from(r.sort_order).unwrap_or(range_request::SortOrder::None);
    let sort_target = range_request::SortTarget::try_from(r.sort_target)
        .unwrap_or(range_request::SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;

    // Sorting or filtering needs every key; otherwise fetch one extra to learn `more`.
    let mut limit = r.limit;
    if sort_order != range_request::SortOrder::None || filtered {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
    };
    let rr = src.range_kvs(&r.key, &r.range_end, opts)?;
    let mut kvs = rr.kvs;
    if filtered {
        kvs.retain(|kv| keep(r, kv));
    }

    // etcd quirk: a non-key target with order NONE sorts ascending.
    let order = if sort_target != range_request::SortTarget::Key
        && sort_order == range_request::SortOrder::None
    {
        range_request::SortOrder::Ascend
    } else {
        sort_order
    };
    match order {
        range_request::SortOrder::None => {}
        range_request::SortOrder::Ascend => kvs.sort_by(|a, b| compare(sort_target, a, b)),
        range_request::SortOrder::Descend => kvs.sort_by(|a, b| compare(sort_target, b, a)),
    }

    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: rr.rev,
            ..Default::default()
        }),
        kvs,
        more,
        count: rr.count,
    })
}

fn keep(r: &RangeRequest, kv: &KeyValue) -> bool {
    !(r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision
        || r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision
        || r.max_create_revision != 0 && kv.create_revision > r.max_create_revision
        || r.min_create_revision != 0 && kv.create_revision < r.min_create_revision)
}

fn compare(target: range_request::SortTarget, a: &KeyValue, b: &KeyValue) -> Ordering {
    use range_request::SortTarget as T;
    match target {
        T::Key => a.key.cmp(&b.key),
        T::Version => a.version.cmp(&b.version),
        T::Create => a.create_revision.cmp(&b.create_revision),
        T::Mod => a.mod_revision.cmp(&b.mod_revision),
        T::Value => a.value.cmp(&b.value),
    }
}
