//! Compaction (mirrors `store.Compact` in etcd `mvcc/kvstore.go` and
//! `scheduleCompaction` in `mvcc/kvstore_compaction.go`).
//!
//! Compacting at `C` happens in three steps:
//! 1. Under the writer lock: check `C`, then durably record
//!    `scheduledCompactRev = C` (this commit also makes every earlier
//!    revision durable).
//! 2. Still under the writer lock: compact the key index and publish
//!    `compact_rev = C`. From here on reads below `C` fail with
//!    `Compacted`, and the index no longer points at dropped revisions.
//! 3. Without the writer lock (writers proceed): delete the dropped
//!    revisions `<= C` from the `key` table, [`COMPACTION_BATCH`] per redb
//!    transaction, then durably record `finishedCompactRev = C`.
//!
//! A crash after step 1 leaves `scheduled > finished`; `KvStore::open`
//! then redoes steps 2 and 3. Deleting is idempotent, so a half-done step 3
//! is harmless.

use std::collections::HashSet;
use std::sync::PoisonError;

use redb::ReadableTable;

use crate::backend::{
    put_meta_rev, Backend, FINISHED_COMPACT_KEY, KEY_TABLE, SCHEDULED_COMPACT_KEY,
};
use crate::error::{MvccError, Result};
use crate::kvstore::{KvStore, WriterGuard};
use crate::revision::Revision;

/// Revisions examined per backend transaction while deleting (etcd's
/// `--experimental-compaction-batch-limit` default).
pub const COMPACTION_BATCH: usize = 1000;

impl KvStore {
    /// Compacts the key space at `rev`: afterwards reads at revisions
    /// `>= rev` work and older ones fail with `Compacted`. For each key the
    /// newest revision `<= rev` survives unless it is a tombstone. Runs to
    /// completion (including the backend deletion, during which writers
    /// proceed) before returning; blocks, like [`KvStore::write`].
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `rev <= compact_rev()` (an equal
    /// revision included), [`MvccError::FutureRev`] when `rev > rev()`,
    /// backend errors.
    pub fn compact(&self, rev: i64) -> Result<()> {
        let _serial = self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let keep = {
            let _writer = WriterGuard::new(&self.shared.writer);
            // Within a batch: the compaction sees (and readers see) every
            // revision applied before it.
            self.publish_staged()?;
            self.check_compact_rev(rev)?;
            self.shared
                .backend
                .commit(true, |tx| put_meta_rev(tx, SCHEDULED_COMPACT_KEY, rev))?;
            self.compact_index(rev)
        };
        delete_compacted(&self.shared.backend, rev, &keep)
    }

    /// Redoes an interrupted compaction found by `open` (steps 2 and 3).
    pub(crate) fn finish_scheduled_compaction(&self, rev: i64) -> Result<()> {
        let keep = self.compact_index(rev);
        delete_compacted(&self.shared.backend, rev, &keep)
    }

    fn check_compact_rev(&self, rev: i64) -> Result<()> {
        let st = self.shared.state();
        if rev <= st.compact_rev {
            return Err(MvccError::Compacted {
                requested: rev,
                compact_rev: st.compact_rev,
            });
        }
        if rev > st.current_rev {
            return Err(MvccError::FutureRev {
                requested: rev,
                current_rev: st.current_rev,
            });
        }
        Ok(())
    }

    /// Compacts the index and publishes the compact revision; returns the
    /// revisions `<= rev` to keep on disk.
    fn compact_index(&self, rev: i64) -> HashSet<Revision> {
        let started = std::time::Instant::now();
        self.shared
            .rewrites
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut st = self.shared.state_mut();
        let keep = st.index.compact(rev);
        st.compact_rev = rev;
        tracing::info!(revision = rev, took = ?started.elapsed(), "compacted key index");
        keep
    }
}

/// Deletes from the `key` table every revision `<= rev` not in `keep`,
/// in batches, then durably records the finished compaction.
fn delete_compacted(backend: &Backend, rev: i64, keep: &HashSet<Revision>) -> Result<()> {
    let started = std::time::Instant::now();
    // Every key of a revision <= rev sorts before the 8-byte prefix rev+1.
    let end = ((rev + 1) as u64).to_be_bytes();
    let mut from: Vec<u8> = Vec::new();
    let mut deleted = 0usize;
    loop {
        let mut done = false;
        backend.commit(false, |tx| {
            let mut table = tx
                .open_table(KEY_TABLE)
                .map_err(|e| MvccError::backend("open key table", e))?;
            let batch = next_batch(&table, &from, &end)?;
            for k in &batch {
                let (r, _) = Revision::from_key(k)?;
                if !keep.contains(&r) {
                    let old = table
                        .remove(k.as_slice())
                        .map_err(|e| MvccError::backend("delete revision", e))?;
                    let freed = old.map_or(0, |v| k.len() + v.value().len());
                    backend.account(-(freed as i64));
                    deleted += 1;
                }
            }
            match batch.last() {
                Some(last) if batch.len() == COMPACTION_BATCH => from = after(last),
                _ => {
                    drop(table);
                    put_meta_rev(tx, FINISHED_COMPACT_KEY, rev)?;
                    done = true;
                }
            }
            Ok(())
        })?;
        if done {
            break;
        }
    }
    backend.sync()?;
    tracing::info!(revision = rev, deleted, took = ?started.elapsed(), "finished scheduled compaction");
    Ok(())
}

/// Up to [`COMPACTION_BATCH`] keys in `[from, end)`.
fn next_batch(table: &redb::Table<&[u8], &[u8]>, from: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>> {
    let range = table
        .range(from..end)
        .map_err(|e| MvccError::backend("scan key table", e))?;
    range
        .take(COMPACTION_BATCH)
        .map(|entry| {
            entry
                .map(|(k, _)| k.value().to_vec())
                .map_err(|e| MvccError::backend("scan key table", e))
        })
        .collect()
}

/// The smallest key greater than `k`.
fn after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}
