//! Rebuilding the in-memory state from the backend at open (mirrors
//! `store.restore` and `restoreIntoIndex` in etcd `mvcc/kvstore.go`).
//!
//! The `key` table is scanned in revision order:
//! - a tombstone ends the key's live generation (a tombstone for a key the
//!   index does not know is a leftover of compaction and is skipped);
//! - a put of a known key appends a revision;
//! - a put of an unknown key starts its index from the stored
//!   `create_revision` and `version`, since older revisions may have been
//!   compacted away.
//!
//! The current revision is the newest main revision seen, but never below
//! a compaction marker: a compaction can delete every revision up to it.

use prost::Message;
use redb::ReadableTable;

use oxcd_api::mvccpb::KeyValue;

use crate::backend::{Backend, KEY_TABLE};
use crate::error::{MvccError, Result};
use crate::index::TreeIndex;
use crate::key_index::KeyIndex;
use crate::kvstore::State;
use crate::revision::Revision;

/// The restored state, and a compaction to finish if one was interrupted.
pub(crate) struct Restored {
    pub state: State,
    pub resume_compaction: Option<i64>,
}

pub(crate) fn restore(backend: &Backend) -> Result<Restored> {
    let meta = backend.read_meta()?;
    let compact_rev = meta.finished_compact.unwrap_or(-1);
    let (mut index, last_main, lease_keys) = scan_index(backend)?;
    index.recount_live();
    let mut current_rev = last_main.max(1).max(compact_rev);
    let resume_compaction = match meta.scheduled_compact {
        Some(s) if s > compact_rev => {
            // The scheduled marker was committed durably after every
            // revision up to it, so those revisions existed.
            current_rev = current_rev.max(s);
            Some(s)
        }
        _ => None,
    };
    tracing::info!(
        current_rev,
        compact_rev,
        consistent_index = meta.consistent_index,
        keys = index.len(),
        "restored mvcc store"
    );
    Ok(Restored {
        state: State {
            index,
            current_rev,
            staged_rev: current_rev,
            batching: false,
            compact_rev,
            restored_leases: (current_rev, std::sync::Arc::new(lease_keys)),
        },
        resume_compaction,
    })
}

/// Builds the index from the `key` table; returns it with the newest main
/// revision found (0 when the table is empty) and the live keys attached
/// to a lease (the newest revision of each key decides, as for the index).
fn scan_index(backend: &Backend) -> Result<(TreeIndex, i64, crate::kvstore::LeaseKeys)> {
    let tx = backend.begin_read()?;
    let table = tx
        .open_table(KEY_TABLE)
        .map_err(|e| MvccError::backend("open key table", e))?;
    let mut index = TreeIndex::default();
    let mut last: Option<Revision> = None;
    let mut leases: std::collections::HashMap<Vec<u8>, i64> = Default::default();
    let iter = table
        .iter()
        .map_err(|e| MvccError::backend("scan key table", e))?;
    for entry in iter {
        let (k, v) = entry.map_err(|e| MvccError::backend("scan key table", e))?;
        let (rev, tombstone) = Revision::from_key(k.value())?;
        // Byte order is revision order, so only a revision stored both as
        // a put and as a tombstone (17 and 18 bytes) can come again.
        if let Some(prev) = last.filter(|prev| rev <= *prev) {
            return Err(MvccError::Corrupt(format!(
                "revision {rev} stored after revision {prev}"
            )));
        }
        last = Some(rev);
        let kv = KeyValue::decode(v.value())
            .map_err(|e| MvccError::Corrupt(format!("KeyValue at revision {rev}: {e}")))?;
        // A put's version counts from 1; the index computes versions from
        // it by subtraction.
        if !tombstone && kv.version < 1 {
            return Err(MvccError::Corrupt(format!(
                "KeyValue at revision {rev}: version {}",
                kv.version
            )));
        }
        // Records come in revision order, so the last one of a key wins.
        if tombstone || kv.lease == 0 {
            leases.remove(kv.key.as_ref());
        } else {
            leases.insert(kv.key.to_vec(), kv.lease);
        }
        apply_record(&mut index, rev, tombstone, kv);
    }
    let last_main = last.map_or(0, |r| r.main);
    Ok((index, last_main, leases.into_iter().collect()))
}

fn apply_record(index: &mut TreeIndex, rev: Revision, tombstone: bool, kv: KeyValue) {
    match index.key_index_mut(&kv.key) {
        Some(ki) if tombstone => {
            // etcd ignores this too; it cannot arise from a compaction,
            // which deletes in revision order.
            if ki.tombstone(rev).is_err() {
                tracing::warn!(%rev, key = ?kv.key, "tombstone for a key that is not live");
            }
        }
        Some(ki) => ki.put(rev),
        None if tombstone => {}
        None => {
            let created = Revision::new(kv.create_revision, 0);
            index.insert(kv.key.to_vec(), KeyIndex::restore(created, rev, kv.version));
        }
    }
}
