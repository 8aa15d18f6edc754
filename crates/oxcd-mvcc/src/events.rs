//! Reading the change history back as events, for the watch layer (etcd's
//! `watchableStore.syncWatchers` scans the `key` bucket by revision the
//! same way).

use prost::Message;
use redb::ReadableTable;

use oxcd_api::mvccpb::{Event, KeyValue};

use crate::backend::KEY_TABLE;
use crate::error::{MvccError, Result};
use crate::revision::Revision;
use crate::txn::{to_event_parts, ReadTxn};

impl ReadTxn {
    /// Every change with main revision in `[start_rev, end_rev)` (an
    /// `end_rev <= 0` means up to and including this snapshot's revision),
    /// as events in revision order, exactly as [`crate::WriteTxn::end`]
    /// reported them. With `limit > 0`, stops at the first main revision
    /// boundary after `limit` events (a transaction's events are never
    /// split), so a caller pages on from the last event's revision + 1.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `start_rev <= compact_rev` (the
    /// history there may be partly deleted), backend and corruption errors.
    pub fn events(&self, start_rev: i64, end_rev: i64, limit: usize) -> Result<Vec<Event>> {
        let compact_rev = self.compact_rev();
        if start_rev <= compact_rev {
            return Err(MvccError::Compacted {
                requested: start_rev,
                compact_rev,
            });
        }
        self.scan_events(start_rev, end_rev, limit)
    }

    /// [`ReadTxn::events`] without the compaction check: the watch layer
    /// reads from exactly the compact revision (as etcd does), where the
    /// surviving puts of that revision are still stored.
    pub(crate) fn scan_events(
        &self,
        start_rev: i64,
        end_rev: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let end_rev = if end_rev <= 0 {
            self.rev() + 1
        } else {
            end_rev
        };
        if end_rev <= start_rev {
            return Ok(Vec::new());
        }
        let table = self
            .tx
            .open_table(KEY_TABLE)
            .map_err(|e| MvccError::backend("open key table", e))?;
        let lo = Revision::new(start_rev, 0).to_bytes();
        let hi = Revision::new(end_rev, 0).to_bytes();
        // Staged (not yet committed) records are all newer than committed
        // ones; the snapshot may also hold some of them if a commit came
        // after this transaction captured them, so it is read only up to
        // the first staged key.
        let staged = self.staged.range(&lo, &hi);
        let committed_hi = match self.staged.first_key() {
            Some(first) if first.as_slice() < hi.as_slice() => first.max(lo.to_vec()),
            _ => hi.to_vec(),
        };
        let iter = table
            .range(lo.as_slice()..committed_hi.as_slice())
            .map_err(|e| MvccError::backend("scan key table", e))?;
        let mut out = Vec::new();
        let mut last_main = 0;
        let mut push = |key: &[u8], value: &[u8]| -> Result<bool> {
            let (rev, tombstone) = Revision::from_key(key)?;
            if limit > 0 && out.len() >= limit && rev.main != last_main {
                return Ok(false);
            }
            last_main = rev.main;
            let kv = KeyValue::decode(value)
                .map_err(|e| MvccError::Corrupt(format!("KeyValue at revision {rev}: {e}")))?;
            out.push(to_event_parts(kv, tombstone, rev.main));
            Ok(true)
        };
        let mut more = true;
        for entry in iter {
            let (k, v) = entry.map_err(|e| MvccError::backend("scan key table", e))?;
            if !push(k.value(), v.value())? {
                more = false;
                break;
            }
        }
        if more {
            for (k, v) in &staged {
                if !push(k, v)? {
                    break;
                }
            }
        }
        Ok(out)
    }
}
