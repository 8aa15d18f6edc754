//! Whole-backend snapshots for raft snapshot transfer (etcd
//! `mvcc/backend.Snapshot` on the sending member and `recoverSnapshotBackend`
//! + `kvstore.Restore` on the receiving one).
//!
//! # Consistency
//!
//! [`KvStore::export_to`] copies every table through ONE redb read
//! transaction: redb read transactions are snapshots, so the copy is the
//! file as of one commit, meta table (and so the consistent index)
//! included, while writers go on. This avoids both holding the writer lock
//! for a whole file copy and copying a file that the flusher may be
//! committing into.
//!
//! [`KvStore::replace_from`] swaps contents rather than files: every handle
//! (applier, watchable store, lessor, services) shares one open database,
//! so the received file's tables replace the live ones in one durable
//! redb write transaction, taken under the writer lock, and the in-memory
//! index is rebuilt from them. A crash leaves either the old or the new
//! contents (redb commits are atomic). Every table is `&[u8] → &[u8]`
//! (see [`crate::backend`]), which is what lets tables be copied by name.

use std::path::Path;
use std::sync::PoisonError;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::error::{MvccError, Result};
use crate::kvstore::{KvStore, WriterGuard};

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

/// Copies the tables of `src` whose names `wanted` accepts into `dst`
/// (all rows; a table already in `dst` is emptied first when `replace`);
/// returns the bytes copied.
pub(crate) fn copy_tables(
    src: &redb::ReadTransaction,
    dst: &redb::WriteTransaction,
    wanted: impl Fn(&str) -> bool,
    replace: bool,
) -> Result<u64> {
    let names: Vec<String> = src
        .list_tables()
        .map_err(|e| MvccError::backend("list tables", e))?
        .map(|h| h.name().to_string())
        .filter(|n| wanted(n))
        .collect();
    let mut bytes = 0;
    for name in names {
        if replace {
            dst.delete_table(table(&name))
                .map_err(|e| MvccError::backend("drop table", e))?;
        }
        let from = src
            .open_table(table(&name))
            .map_err(|e| MvccError::backend("open source table", e))?;
        let mut to = dst
            .open_table(table(&name))
            .map_err(|e| MvccError::backend("open target table", e))?;
        for row in from
            .iter()
            .map_err(|e| MvccError::backend("scan source table", e))?
        {
            let (k, v) = row.map_err(|e| MvccError::backend("scan source table", e))?;
            to.insert(k.value(), v.value())
                .map_err(|e| MvccError::backend("copy row", e))?;
            bytes += (k.value().len() + v.value().len()) as u64;
        }
    }
    Ok(bytes)
}

impl KvStore {
    /// Writes a consistent copy of the whole backend to a new file at `dst`
    /// (replaced if present) and returns the consistent index recorded in
    /// the copy. Blocks on disk I/O; never waits for writers.
    ///
    /// # Errors
    /// Backend errors reading this store or creating the copy.
    pub fn export_to(&self, dst: &Path) -> Result<u64> {
        let src = self.shared.backend.begin_read()?;
        if dst.exists() {
            std::fs::remove_file(dst).map_err(|source| MvccError::Io {
                path: dst.to_path_buf(),
                source,
            })?;
        }
        let db = Database::create(dst).map_err(|e| MvccError::backend("create copy", e))?;
        let tx = db
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        copy_tables(&src, &tx, |_| true, false)?;
        tx.commit()
            .map_err(|e| MvccError::backend("commit copy", e))?;
        drop(db);
        read_consistent_index(&src)
    }

    /// Replaces the whole contents of this store with the backend file at
    /// `src` (one written by [`KvStore::export_to`]), durably, and rebuilds
    /// the key index, current and compact revisions and consistent index
    /// from it. Blocks until no write transaction or compaction runs, so
    /// call it from the applier's thread between apply groups. Readers see
    /// either the old or the new contents: they wait while the swap runs
    /// (a full scan of the new file to rebuild the key index). Watchers and leases must be
    /// re-synced by the caller (see `WatchableStore::restore`).
    ///
    /// # Errors
    /// Backend errors opening `src` or writing this store; a failure after
    /// the write started should be treated as fatal.
    pub fn replace_from(&self, src: &Path) -> Result<()> {
        let _serial = self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _writer = WriterGuard::new(&self.shared.writer);
        self.shared
            .rewrites
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.shared
            .installs
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let other = Database::open(src).map_err(|e| MvccError::backend("open snapshot", e))?;
        let from = other
            .begin_read()
            .map_err(|e| MvccError::backend("begin read", e))?;
        let ci = read_consistent_index(&from)?;
        let backend = &self.shared.backend;
        // Readers wait until the new contents and their index are both in
        // place, so none pairs the old index with the new file.
        let mut state = self.shared.state_mut();
        backend.commit(true, |tx| {
            // Under `open`, with the rows: no flusher commit in between can
            // label the old contents with the snapshot's index.
            backend.reset_consistent_index(ci);
            let live: Vec<String> = tx
                .list_tables()
                .map_err(|e| MvccError::backend("list tables", e))?
                .map(|h| h.name().to_string())
                .collect();
            for name in live {
                tx.delete_table(table(&name))
                    .map_err(|e| MvccError::backend("drop table", e))?;
            }
            copy_tables(&from, tx, |_| true, false).map(|_| ())
        })?;
        drop(from);
        drop(other);
        let restored = crate::restore::restore(backend)?;
        *state = restored.state;
        drop(state);
        if let Some(rev) = restored.resume_compaction {
            self.finish_scheduled_compaction(rev)?;
        }
        // Jobs queued before the install are void; their waiters are done.
        self.shared.progress.finished(self.compact_rev());
        tracing::info!(consistent_index = ci, "replaced backend from snapshot");
        Ok(())
    }
}

fn read_consistent_index(tx: &redb::ReadTransaction) -> Result<u64> {
    const META: Bytes = crate::backend::META_TABLE;
    let meta = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(MvccError::backend("open meta table", e)),
    };
    let v = meta
        .get(crate::backend::CONSISTENT_INDEX_KEY)
        .map_err(|e| MvccError::backend("read meta", e))?;
    match v {
        None => Ok(0),
        Some(g) => {
            let b: [u8; 8] = g.value().try_into().map_err(|_| {
                MvccError::Corrupt(format!("consistent_index has {} bytes", g.value().len()))
            })?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendConfig, RangeOptions};

    #[test]
    fn export_then_replace_carries_data_revisions_and_consistent_index() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| MvccError::Io {
            path: "tmp".into(),
            source,
        })?;
        let a = KvStore::open(&dir.path().join("a"), BackendConfig::default())?;
        for i in 0..10u8 {
            let mut t = a.write();
            t.put(&[b'k', i], b"v", 0)?;
            t.end(Some(100 + u64::from(i)))?;
        }
        a.compact(5)?;
        let copy = dir.path().join("copy");
        assert_eq!(a.export_to(&copy)?, 109);

        let b = KvStore::open(&dir.path().join("b"), BackendConfig::default())?;
        let mut t = b.write();
        t.put(b"other", b"x", 0)?;
        t.end(Some(3))?;
        b.replace_from(&copy)?;
        assert_eq!(b.rev(), a.rev());
        assert_eq!(b.compact_rev(), 5);
        assert_eq!(b.consistent_index(), 109);
        let r = b.read()?.range(&[0], &[0], RangeOptions::default())?;
        assert_eq!(r.kvs.len(), 10);
        assert!(r.kvs.iter().all(|kv| &kv.key[..] != b"other"));
        drop(b);
        let reopened = KvStore::open(&dir.path().join("b"), BackendConfig::default())?;
        assert_eq!(reopened.consistent_index(), 109);
        assert_eq!(reopened.rev(), a.rev());
        Ok(())
    }

    #[test]
    fn watchers_resync_against_the_replaced_contents() -> Result<()> {
        use crate::watcher::{Filters, AUTO_WATCH_ID};
        use crate::WatchableStore;
        let dir = tempfile::tempdir().map_err(|source| MvccError::Io {
            path: "tmp".into(),
            source,
        })?;
        let a = KvStore::open(&dir.path().join("a"), BackendConfig::default())?;
        for i in 0..5u8 {
            let mut t = a.write();
            t.put(b"w", &[b'0' + i], 0)?;
            t.end(Some(10 + u64::from(i)))?;
        }
        let copy = dir.path().join("copy");
        a.export_to(&copy)?;

        let b = KvStore::open(&dir.path().join("b"), BackendConfig::default())?;
        let mut t = b.write();
        t.put(b"w", b"old", 0)?;
        let out = t.end(Some(1))?;
        let hub = WatchableStore::without_loop(b.clone());
        hub.notify(out.events);
        let (mut ws, mut rx) = hub.new_watch_stream();
        ws.watch(AUTO_WATCH_ID, b"w", b"", 0, Filters::default())
            .map_err(|e| MvccError::Corrupt(format!("watch: {e:?}")))?;
        assert_eq!(hub.group_sizes(), (1, 0, 0));

        b.replace_from(&copy)?;
        hub.restore();
        assert_eq!(hub.group_sizes(), (0, 1, 0));
        assert_eq!(hub.rev(), a.rev());
        hub.sync_watchers();
        let mut revs = Vec::new();
        while let Ok(r) = rx.try_recv() {
            revs.extend(r.events.iter().map(|e| crate::revision_of(e)));
        }
        // The watcher was at revision 2 (b's one write); it gets what the
        // new contents hold after that, once, in order.
        assert_eq!(revs, (3..=a.rev()).collect::<Vec<_>>());
        assert_eq!(hub.group_sizes(), (1, 0, 0));
        Ok(())
    }
}
