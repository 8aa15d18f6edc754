//! The redb backend file (mirrors etcd `mvcc/backend/`, which wraps bbolt).
//!
//! # On-disk layout
//!
//! One redb database file (`member/snap/db`) with these tables, all
//! `&[u8] → &[u8]` so that the byte images match etcd's bbolt buckets:
//!
//! | table  | key | value |
//! |--------|-----|-------|
//! | `key`  | 17-byte revision (8B BE main, `_`, 8B BE sub), plus a trailing `t` (18 bytes) for a tombstone — see [`crate::revision`] | protobuf `mvccpb.KeyValue`; a tombstone's value holds only `key` |
//! | `meta` | `consistent_index` | 8-byte BE raft index of the last applied entry |
//! | `meta` | `scheduledCompactRev` | 17-byte revision `(C, 0)`: a compaction at C was started |
//! | `meta` | `finishedCompactRev` | 17-byte revision `(C, 0)`: the compaction at C deleted everything it had to |
//! | `lease` | 8-byte BE lease ID | protobuf `leasepb.Lease` — see `lease_table` (created on first use) |
//! | `alarm` | protobuf `etcdserverpb.AlarmMember` | empty — see `alarm_table` |
//! | `auth`, `authUsers`, `authRoles` | etcd's keys | etcd's values — see `auth_table` |
//!
//! The full table list and the design are in `docs/design/backend.md`.
//!
//! # Commit policy (group commit)
//!
//! - Every MVCC write transaction is one redb commit with
//!   [`redb::Durability::None`]: later readers see it at once, but it is
//!   not on disk yet.
//! - A durable commit ([`redb::Durability::Immediate`], one fsync) persists
//!   every earlier non-durable commit. It happens when the server calls
//!   `KvStore::sync` (before a raft snapshot releases the WAL behind it,
//!   and at close), when `batch_limit` non-durable commits have piled up,
//!   every `batch_interval` from a background flusher thread if anything
//!   is pending, and for the compaction markers. Acknowledgements never
//!   wait for it: the raft WAL makes a write durable, and replay from the
//!   consistent index re-applies what the backend lost.
//! - In batch mode ([`Backend::enable_batching`], which the server turns on
//!   for good when it starts applying raft entries) write transactions do
//!   not commit at all: they share ONE redb transaction, kept open and
//!   committed by the flusher every `batch_interval`, by the
//!   `batch_limit`-th write, or by anything that needs the file current
//!   (compaction, hash, snapshot, sync). A redb commit costs page writes
//!   and checksums; paying it ten times a second instead of once per
//!   applied entry (or group) is most of the write path's speed, as it is
//!   for etcd's bbolt batch transaction. The writer reads its own writes
//!   through the open transaction; readers read them from the [`Staged`]
//!   buffer (etcd's `txReadBuffer`), see there.
//! - A crash (kill -9, power loss) leaves the file at its last durable
//!   commit; redb's commits are atomic, so the file always opens. The
//!   consistent index is written in the same commit as the data it
//!   describes, so the raft log replay resumes at exactly the first entry
//!   whose effects were lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::error::{MvccError, Result};
use crate::revision::{Revision, REV_BYTES_LEN};
use oxcd_api::mvccpb::KeyValue;
use prost::Message;

/// The `key` table: revision key → encoded `KeyValue`.
pub(crate) const KEY_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");
/// The `meta` table: a few named values.
pub(crate) const META_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

pub(crate) const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
pub(crate) const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
pub(crate) const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";

/// How often the backend makes pending writes durable on its own.
/// Acknowledgements rely on the raft WAL, not on these: they only bound how
/// much work a crash can force the WAL to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// A background thread makes pending writes durable this often
    /// (etcd `--backend-batch-interval`, default 100 ms). Zero disables it.
    pub batch_interval: Duration,
    /// After this many non-durable write commits the next one is made
    /// durable (etcd `--backend-batch-limit`, default 10000). Zero
    /// means every commit is durable.
    pub batch_limit: u64,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            batch_interval: Duration::from_millis(100),
            batch_limit: 10_000,
        }
    }
}

/// redb's page cache. redb defaults to 1 GiB, which a busy member fills
/// with pages the kernel's page cache already holds; a small cache keeps
/// the resident set small (the key index, not the cache, makes reads
/// fast: values are fetched by revision, one point lookup each).
pub(crate) const CACHE_SIZE: usize = 8 << 20;

/// What the `meta` table says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub consistent_index: u64,
    pub scheduled_compact: Option<i64>,
    pub finished_compact: Option<i64>,
}

/// The open database file plus the commit bookkeeping.
pub(crate) struct Backend {
    /// The file. A defragment replaces it (`switch_to`); transactions
    /// begun on the old one keep it open until they end.
    db: std::sync::RwLock<Arc<Database>>,
    path: PathBuf,
    cfg: BackendConfig,
    /// Non-durable commits since the last durable one.
    pending: AtomicU64,
    /// The newest applied raft index; written into `meta` by every commit
    /// so that it always describes the data committed with it.
    consistent_index: AtomicU64,
    /// Bytes allocated inside the file, measured at open, after a
    /// defragment (on the new file, before it is switched to) or on demand
    /// ([`Backend::measure`]). redb measures by walking every page, under
    /// the writer's lock, so nothing on the write path measures.
    size_in_use: AtomicU64,
    /// `key` record bytes (key + value) written minus those compaction
    /// deleted since that measurement.
    delta_since: std::sync::atomic::AtomicI64,
    /// When `size_in_use` was last measured.
    measured: Mutex<Instant>,
    /// The redb write transaction kept open in batch mode, if any.
    open: Mutex<Open>,
    /// What the open transaction wrote to the `key` table, for readers.
    staged: Mutex<Arc<Staged>>,
}

/// The write transaction kept open in batch mode.
#[derive(Default)]
struct Open {
    tx: Option<WriteTransaction>,
    batching: bool,
    /// Keys of `key` table records staged by [`Backend::commit_records`]
    /// but not yet inserted into `tx`. They are inserted together (one
    /// `open_table` for the lot, instead of one per write transaction)
    /// before anything else uses `tx`: see [`Backend::insert_deferred`].
    deferred: Vec<Vec<u8>>,
}

/// The `key` table records written since the last commit, for readers
/// (whose redb snapshots cannot see the open transaction).
///
/// A reader captures the current generation *before* it opens its redb
/// snapshot, and after reading the published revision. A commit swaps in
/// a fresh generation only after the redb commit. So every revision a
/// reader may ask for is either in the generation it holds or committed
/// before its snapshot began (see `ReadTxn::begin`).
#[derive(Default)]
pub(crate) struct Staged {
    map: std::sync::RwLock<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Staged {
    fn insert(&self, key: Vec<u8>, value: Vec<u8>) {
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
    }

    /// The record under `key` (a full revision key), decoded.
    pub fn get_kv(&self, rev: Revision) -> Option<Result<KeyValue>> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(rev.to_bytes().as_slice()).map(|v| {
            KeyValue::decode(v.as_slice())
                .map_err(|e| MvccError::Corrupt(format!("KeyValue at revision {rev}: {e}")))
        })
    }

    /// The records with keys in `[lo, hi)`, in key order.
    pub fn range(&self, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The smallest key held, if any.
    pub fn first_key(&self) -> Option<Vec<u8>> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.keys().next().cloned()
    }

    fn is_empty(&self) -> bool {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

impl Backend {
    /// Opens (creating if absent) the file and its tables.
    pub fn open(path: &Path, cfg: BackendConfig) -> Result<Backend> {
        let db = open_database(path)?;
        let backend = Backend {
            db: std::sync::RwLock::new(Arc::new(db)),
            path: path.to_path_buf(),
            cfg,
            pending: AtomicU64::new(0),
            consistent_index: AtomicU64::new(0),
            size_in_use: AtomicU64::new(0),
            delta_since: std::sync::atomic::AtomicI64::new(0),
            measured: Mutex::new(Instant::now()),
            open: Mutex::new(Open::default()),
            staged: Mutex::new(Arc::new(Staged::default())),
        };
        backend.create_tables()?;
        let meta = backend.read_meta()?;
        backend
            .consistent_index
            .store(meta.consistent_index, Ordering::SeqCst);
        Ok(backend)
    }

    /// Creates the tables so that readers can always open them. Not
    /// through [`Backend::commit`]: that would overwrite the stored
    /// consistent index before it is read.
    fn create_tables(&self) -> Result<()> {
        let tx = self
            .db()
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        tx.open_table(KEY_TABLE)
            .map_err(|e| MvccError::backend("create key table", e))?;
        tx.open_table(META_TABLE)
            .map_err(|e| MvccError::backend("create meta table", e))?;
        let in_use = allocated_bytes(&tx)?;
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        self.size_in_use.store(in_use, Ordering::Relaxed);
        Ok(())
    }

    /// The current file. A transaction begun on it keeps it open (see
    /// [`Snapshot`]) even after a defragment replaced it.
    fn db(&self) -> Arc<Database> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A consistent snapshot of the file as of the newest commit.
    pub fn begin_read(&self) -> Result<Snapshot> {
        let db = self.db();
        let tx = db
            .begin_read()
            .map_err(|e| MvccError::backend("begin read", e))?;
        Ok(Snapshot { tx, _db: db })
    }

    /// The last step of an online defragment (see `defrag`): with writers
    /// held off by the caller, commits the open batch, lets `catch_up`
    /// copy what the fresh file `next` lacks from a snapshot of the
    /// current one, makes `next` durable, renames it over this file and
    /// serves from it. Readers still on the old file finish on it; the old
    /// file is returned, to be closed without holding anyone up.
    pub(crate) fn switch_to(
        &self,
        next: Database,
        next_path: &Path,
        catch_up: impl FnOnce(&ReadTransaction, &WriteTransaction) -> Result<u64>,
        measured: u64,
    ) -> Result<Arc<Database>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = open.tx.take() {
            self.insert_deferred(&mut open.deferred, &tx)?;
            self.finish(tx, false)?;
        } else {
            // The consistent index may have moved without a commit.
            let tx = self
                .db()
                .begin_write()
                .map_err(|e| MvccError::backend("begin write", e))?;
            self.finish(tx, false)?;
        }
        let old = self.begin_read()?;
        let tx = next
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        let caught_up = catch_up(&old, &tx)?;
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        drop(old);
        std::fs::rename(next_path, &self.path).map_err(|source| MvccError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(|source| MvccError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let previous = std::mem::replace(
            &mut *self.db.write().unwrap_or_else(PoisonError::into_inner),
            Arc::new(next),
        );
        self.pending.store(0, Ordering::SeqCst);
        self.set_measured(measured + caught_up);
        // Closing the old file flushes it: the caller does that once
        // writers go on.
        Ok(previous)
    }

    /// Runs `f` in one redb write transaction and commits it, together with
    /// the current consistent index. Durable when `force_durable`, or when
    /// the batch limit is reached; otherwise visible but not yet fsynced.
    /// In batch mode a non-forced commit leaves the transaction open for
    /// the next one (see the module docs); a forced one commits it.
    ///
    /// A failure in batch mode aborts the whole open transaction, i.e. the
    /// earlier writes of the group too: the caller must treat backend
    /// errors as fatal.
    pub fn commit(
        &self,
        force_durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let batching = open.batching;
        let tx = match open.tx.take() {
            Some(tx) => tx,
            None => self
                .db()
                .begin_write()
                // No batch open: nothing is lost yet.
                .map_err(|e| MvccError::backend("begin write", e))?,
        };
        self.insert_deferred(&mut open.deferred, &tx)
            .and_then(|()| f(&tx))
            .or_else(|e| lost_if(batching, e))?;
        self.pending.fetch_add(1, Ordering::SeqCst);
        let limit_reached = self.pending.load(Ordering::SeqCst) >= self.cfg.batch_limit;
        if batching && !force_durable && !limit_reached {
            open.tx = Some(tx);
            return Ok(());
        }
        self.finish(tx, force_durable)
            .or_else(|e| lost_if(batching, e))
    }

    /// Commits the `key` table records of one MVCC write transaction
    /// (revision key, encoded `KeyValue`) and whatever `also` writes to
    /// other tables, with the consistent index `ci`, like
    /// [`Backend::commit`] would. In batch mode `also` runs on the open
    /// redb transaction at once, while the records are only staged (readers
    /// find them there) and inserted into it later, all at once (see
    /// [`Open::deferred`]).
    pub(crate) fn commit_records(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        ci: Option<u64>,
        also: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.account(bytes as i64);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if !open.batching {
            drop(open);
            return self.commit(false, |tx| {
                also(tx)?;
                let mut table = tx
                    .open_table(KEY_TABLE)
                    .map_err(|e| MvccError::backend("open key table", e))?;
                for (key, value) in records {
                    table
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(|e| MvccError::backend("write revision", e))?;
                    self.stage(key, value);
                }
                if let Some(ci) = ci {
                    self.set_consistent_index(ci);
                }
                Ok(())
            });
        }
        let tx = match open.tx.take() {
            Some(tx) => tx,
            None => self
                .db()
                .begin_write()
                .map_err(|e| MvccError::backend("begin write", e))?,
        };
        also(&tx).or_else(|e| lost_if(true, e))?;
        open.tx = Some(tx);
        {
            let staged = self.staged();
            let mut map = staged.map.write().unwrap_or_else(PoisonError::into_inner);
            for (key, value) in records {
                open.deferred.push(key.clone());
                map.insert(key, value);
            }
        }
        // Under the `open` lock, like the records: a commit persists this
        // index only together with them.
        if let Some(ci) = ci {
            self.set_consistent_index(ci);
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.pending.load(Ordering::SeqCst) >= self.cfg.batch_limit {
            if let Some(tx) = open.tx.take() {
                self.insert_deferred(&mut open.deferred, &tx)
                    .and_then(|()| self.finish(tx, false))
                    .or_else(|e| lost_if(true, e))?;
            }
        }
        Ok(())
    }

    /// Inserts the deferred `key` table records into `tx`, taking their
    /// values from the staged buffer (which holds every record since the
    /// last redb commit).
    fn insert_deferred(&self, deferred: &mut Vec<Vec<u8>>, tx: &WriteTransaction) -> Result<()> {
        if deferred.is_empty() {
            return Ok(());
        }
        let staged = self.staged();
        let map = staged.map.read().unwrap_or_else(PoisonError::into_inner);
        let mut table = tx
            .open_table(KEY_TABLE)
            .map_err(|e| MvccError::backend("open key table", e))?;
        for key in deferred.iter() {
            let value = map.get(key).ok_or_else(|| {
                MvccError::Corrupt("a deferred record is missing from the staged buffer".into())
            })?;
            table
                .insert(key.as_slice(), value.as_slice())
                .map_err(|e| MvccError::backend("write revision", e))?;
        }
        // Only now: after an error every record is still deferred (a
        // repeated insert of the same record is harmless).
        deferred.clear();
        Ok(())
    }

    /// Inserts what [`Backend::commit_records`] deferred into the open
    /// transaction (the server calls it once per group of applied
    /// entries, so the work stays on the applying thread).
    pub(crate) fn flush_deferred(&self) -> Result<()> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let open = &mut *open;
        match &open.tx {
            Some(tx) => self
                .insert_deferred(&mut open.deferred, tx)
                .or_else(|e| lost_if(true, e)),
            None => Ok(()),
        }
    }

    /// Records a `key` table write of the open transaction for readers;
    /// call it inside [`Backend::commit`]'s closure, so that it is in the
    /// same generation as the transaction that holds the write.
    pub(crate) fn stage(&self, key: Vec<u8>, value: Vec<u8>) {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
    }

    /// The current generation of staged writes (see [`Staged`]).
    pub(crate) fn staged(&self) -> Arc<Staged> {
        self.staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Commits the open batch transaction, if any (non-durable unless the
    /// batch limit says otherwise).
    pub fn commit_open(&self) -> Result<()> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.tx.take() {
            Some(tx) => self
                .insert_deferred(&mut open.deferred, &tx)
                .and_then(|()| self.finish(tx, false))
                .or_else(|e| lost_if(true, e)),
            None => Ok(()),
        }
    }

    /// Turns batch mode on: from now on non-forced commits leave the
    /// transaction open (see the module docs). There is no way back: the
    /// server keeps it on for the life of the store.
    pub fn enable_batching(&self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .batching = true;
    }

    /// Runs `f` on the key table as the writer sees it: through the open
    /// batch transaction when there is one (it holds writes no snapshot
    /// has yet), otherwise through a fresh snapshot.
    pub fn read_latest<T>(&self, f: impl FnOnce(&dyn KeyLookup) -> Result<T>) -> Result<T> {
        let mut guard = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let open = &mut *guard;
        if let Some(tx) = &open.tx {
            self.insert_deferred(&mut open.deferred, tx)?;
            let table = tx
                .open_table(KEY_TABLE)
                .map_err(|e| MvccError::backend("open key table", e))?;
            return f(&table);
        }
        drop(guard);
        let tx = self.begin_read()?;
        let table = tx
            .open_table(KEY_TABLE)
            .map_err(|e| MvccError::backend("open key table", e))?;
        f(&table)
    }

    /// Writes the consistent index into `tx` and commits it, then starts a
    /// new generation of staged writes. The caller holds the `open` lock,
    /// so no write can be staged between the commit and the swap.
    fn finish(&self, mut tx: WriteTransaction, force_durable: bool) -> Result<()> {
        let durable = force_durable || self.pending.load(Ordering::SeqCst) >= self.cfg.batch_limit;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| MvccError::backend("set durability", e))?;
        self.put_consistent_index(&tx)?;
        let started = std::time::Instant::now();
        oxcd_failpoint::failpoint!("backendBeforeCommit");
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        oxcd_failpoint::failpoint!("backendAfterCommit");
        if durable {
            crate::metrics::get()
                .backend_commit
                .observe(started.elapsed().as_secs_f64());
            self.pending.store(0, Ordering::SeqCst);
        }
        let mut staged = self.staged.lock().unwrap_or_else(PoisonError::into_inner);
        if !staged.is_empty() {
            *staged = Arc::new(Staged::default());
        }
        Ok(())
    }

    /// Adds `bytes` (negative: deleted) of `key` records to the estimate
    /// of the bytes in use.
    pub(crate) fn account(&self, bytes: i64) {
        self.delta_since.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts and waits for the write-back of the file's dirty pages,
    /// without any lock: it makes nothing durable that redb relies on (its
    /// commits stay atomic under any write-back order), it only leaves the
    /// next durable commit less to write.
    pub fn write_back(&self) -> Result<()> {
        let io = |source| MvccError::Io {
            path: self.path.clone(),
            source,
        };
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_data())
            .map_err(io)
    }

    /// Read snapshots open on the current file: each holds a reference to
    /// it, so the count costs the read path nothing (etcd's
    /// `etcd_mvcc_db_open_read_transactions`, read at scrape time).
    pub fn open_read_txns(&self) -> usize {
        // The backend's own reference and the one `db()` just made.
        Arc::strong_count(&self.db()).saturating_sub(2)
    }

    /// Makes every commit so far durable (one fsync).
    pub fn sync(&self) -> Result<()> {
        self.commit(true, |_| Ok(()))
    }

    /// Number of commits not yet durable.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    pub fn consistent_index(&self) -> u64 {
        self.consistent_index.load(Ordering::SeqCst)
    }

    /// Records that raft entries up to `ci` have been applied. Persisted by
    /// the next commit.
    pub fn set_consistent_index(&self, ci: u64) {
        self.consistent_index.fetch_max(ci, Ordering::SeqCst);
    }

    /// Sets the consistent index outright (a snapshot replacing the whole
    /// backend may carry any index); persisted by the next commit.
    pub fn reset_consistent_index(&self, ci: u64) {
        self.consistent_index.store(ci, Ordering::SeqCst);
    }

    fn put_consistent_index(&self, tx: &WriteTransaction) -> Result<()> {
        let ci = self.consistent_index();
        let mut meta = tx
            .open_table(META_TABLE)
            .map_err(|e| MvccError::backend("open meta table", e))?;
        meta.insert(CONSISTENT_INDEX_KEY, ci.to_be_bytes().as_slice())
            .map_err(|e| MvccError::backend("write consistent index", e))?;
        Ok(())
    }

    /// Reads the `meta` table.
    pub fn read_meta(&self) -> Result<Meta> {
        let tx = self.begin_read()?;
        let table = tx
            .open_table(META_TABLE)
            .map_err(|e| MvccError::backend("open meta table", e))?;
        let get = |k: &[u8]| -> Result<Option<Vec<u8>>> {
            Ok(table
                .get(k)
                .map_err(|e| MvccError::backend("read meta", e))?
                .map(|g| g.value().to_vec()))
        };
        let consistent_index = match get(CONSISTENT_INDEX_KEY)? {
            None => 0,
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                MvccError::Corrupt(format!("consistent_index has {} bytes", v.len()))
            })?),
        };
        Ok(Meta {
            consistent_index,
            scheduled_compact: decode_meta_rev(get(SCHEDULED_COMPACT_KEY)?)?,
            finished_compact: decode_meta_rev(get(FINISHED_COMPACT_KEY)?)?,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes the file takes on disk. redb grows its file in steps (up
    /// to doubling it) that stay sparse until written, so the length alone
    /// can be twice what the disk holds; this is the smaller of the length
    /// and the allocated blocks (for a file that is not sparse, as etcd's
    /// bbolt file, the two are the same).
    pub fn size(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .map(|m| m.len().min(m.blocks().saturating_mul(512)))
            .map_err(|source| MvccError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Bytes in use inside the file: the last measurement plus the record
    /// bytes written and minus those compacted away since (etcd's figure
    /// is an estimate too: file size minus its free list).
    pub fn size_in_use(&self) -> u64 {
        let measured = self.size_in_use.load(Ordering::Relaxed) as i64;
        (measured + self.delta_since.load(Ordering::Relaxed)).max(0) as u64
    }

    /// Starts the estimate again from `bytes` measured now.
    fn set_measured(&self, bytes: u64) {
        self.size_in_use.store(bytes, Ordering::Relaxed);
        self.delta_since.store(0, Ordering::Relaxed);
        *self.measured.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Measures the bytes in use now, unless the last measurement is
    /// younger than `max_age`, and returns [`Backend::size_in_use`]. The
    /// open batch transaction is measured as it stands (its pages are in
    /// use); the measurement walks redb's trees, so callers bound how often
    /// they ask.
    pub fn measure(&self, max_age: Duration) -> Result<u64> {
        {
            let at = self.measured.lock().unwrap_or_else(PoisonError::into_inner);
            if at.elapsed() < max_age {
                return Ok(self.size_in_use());
            }
        }
        let mut guard = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let open = &mut *guard;
        let bytes = match &open.tx {
            Some(tx) => {
                self.insert_deferred(&mut open.deferred, tx)?;
                allocated_bytes(tx)?
            }
            None => {
                let tx = self
                    .db()
                    .begin_write()
                    .map_err(|e| MvccError::backend("begin write", e))?;
                let bytes = allocated_bytes(&tx)?;
                tx.abort().map_err(|e| MvccError::backend("abort", e))?;
                bytes
            }
        };
        self.set_measured(bytes);
        Ok(bytes)
    }
}

/// Opens (or creates) the file at `path`, checking every page against
/// redb's checksums first, so that a file altered on disk is refused
/// instead of served (redb checks them otherwise only after a crash). A
/// file of an older redb format (oxcd before redb 5) is upgraded first.
fn open_database(path: &Path) -> Result<Database> {
    // A new file is private (0600), as etcd creates its bbolt file; an
    // existing one keeps the mode its owner gave it.
    let created = !path.exists();
    let open = || {
        Database::builder()
            .set_cache_size(CACHE_SIZE)
            .set_check_integrity_on_open(true)
            .create_with_backend(crate::backend_file::BackendFile::open(path)?)
    };
    let open_error = |e: redb::DatabaseError| MvccError::Open {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    };
    for tmp in [upgrade_path(path), crate::defrag::scratch_path(path)] {
        if tmp.exists() {
            // An upgrade or defragment was cut short before its rename:
            // the original is intact.
            std::fs::remove_file(&tmp).map_err(|source| MvccError::Io {
                path: tmp.clone(),
                source,
            })?;
        }
    }
    let db = match open() {
        Err(redb::DatabaseError::UpgradeRequired(version)) => {
            upgrade_file(path, version)?;
            open().map_err(open_error)
        }
        other => other.map_err(open_error),
    }?;
    if created {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| MvccError::Io {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(db)
}

/// Where an upgrade writes the new file before renaming it over the old.
fn upgrade_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".upgrade");
    path.with_file_name(name)
}

/// Upgrades a redb 2 file (format v2) to the format redb 5 reads, on a
/// copy that replaces the original by rename once synced: a crash at any
/// point leaves either the old file or the new one.
fn upgrade_file(path: &Path, version: u8) -> Result<()> {
    let started = Instant::now();
    let tmp = upgrade_path(path);
    let failed = |reason: String| MvccError::Upgrade {
        path: path.to_path_buf(),
        reason,
    };
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| MvccError::Io { path: p, source }
    };
    std::fs::copy(path, &tmp).map_err(io(&tmp))?;
    {
        let mut db = redb2::Database::create(&tmp).map_err(|e| failed(e.to_string()))?;
        db.upgrade().map_err(|e| failed(e.to_string()))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(dir))?;
    }
    tracing::info!(
        path = %path.display(),
        from_format = version,
        took = ?started.elapsed(),
        "upgraded the backend file to redb's current file format"
    );
    Ok(())
}

/// A read transaction together with the file it reads, which it keeps
/// open: a defragment may replace the file meanwhile.
pub struct Snapshot {
    // Dropped first: the transaction before its database.
    tx: ReadTransaction,
    _db: Arc<Database>,
}

impl std::ops::Deref for Snapshot {
    type Target = ReadTransaction;

    fn deref(&self) -> &ReadTransaction {
        &self.tx
    }
}

/// Point reads in the key table, whichever redb transaction holds it.
pub(crate) trait KeyLookup {
    /// The `KeyValue` stored at revision `rev` (a live, not tombstone, key).
    fn get_kv(&self, rev: Revision) -> Result<KeyValue>;
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> KeyLookup for T {
    fn get_kv(&self, rev: Revision) -> Result<KeyValue> {
        let guard = self
            .get(rev.to_bytes().as_slice())
            .map_err(|e| MvccError::backend("read revision", e))?
            .ok_or_else(|| {
                MvccError::Corrupt(format!("revision {rev} is indexed but not stored"))
            })?;
        KeyValue::decode(guard.value())
            .map_err(|e| MvccError::Corrupt(format!("KeyValue at revision {rev}: {e}")))
    }
}

fn allocated_bytes(tx: &WriteTransaction) -> Result<u64> {
    let stats = tx
        .stats()
        .map_err(|e| MvccError::backend("database stats", e))?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}

/// Writes a compaction marker into `meta`.
pub(crate) fn put_meta_rev(tx: &WriteTransaction, key: &[u8], main: i64) -> Result<()> {
    let mut meta = tx
        .open_table(META_TABLE)
        .map_err(|e| MvccError::backend("open meta table", e))?;
    meta.insert(key, Revision::new(main, 0).to_bytes().as_slice())
        .map_err(|e| MvccError::backend("write compaction marker", e))?;
    Ok(())
}

fn decode_meta_rev(v: Option<Vec<u8>>) -> Result<Option<i64>> {
    match v {
        None => Ok(None),
        Some(b) if b.len() == REV_BYTES_LEN => Ok(Some(Revision::from_key(&b)?.0.main)),
        Some(b) => Err(MvccError::Corrupt(format!(
            "compaction marker has {} bytes",
            b.len()
        ))),
    }
}

/// The background thread that makes pending writes durable every
/// `batch_interval`. It holds only a weak reference, so it never keeps the
/// database open; stopping it (drop the sender, join) is done by the last
/// store handle, which guarantees the file is closed when that handle's
/// drop returns.
pub(crate) struct Flusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread, or nothing when the interval is zero.
    pub fn start(backend: Weak<Backend>, interval: Duration) -> Mutex<Flusher> {
        if interval.is_zero() {
            return Mutex::new(Flusher {
                stop: None,
                thread: None,
            });
        }
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("oxcd-mvcc-flush".into())
            .spawn(move || flush_loop(backend, interval, rx))
            .ok();
        if thread.is_none() {
            tracing::warn!("could not start the backend flusher; relying on explicit syncs");
        }
        Mutex::new(Flusher {
            stop: Some(tx),
            thread,
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("backend flusher panicked");
            }
        }
    }
}

/// In batch mode a failure anywhere in committing the batch transaction
/// loses it, and with it every write applied since the last commit, while
/// the consistent index has already moved past them: the next commit would
/// record entries whose rows are gone. So, like etcd ("failed to commit
/// tx" is fatal there), the process exits and the restart replays the WAL
/// from the last durable consistent index. Without batching the one
/// transaction is undone and the error returned.
fn lost_if<T>(batching: bool, e: MvccError) -> Result<T> {
    if !batching {
        return Err(e);
    }
    tracing::error!(error = %e, "backend commit failed; exiting");
    std::process::exit(1);
}

fn flush_loop(backend: Weak<Backend>, interval: Duration, stop: mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(b) = backend.upgrade() else { return };
        if b.pending() > 0 {
            // The durable commit holds the write lock through its fsync, and
            // the applier waits for it. Committing the batch first (no fsync)
            // and writing its pages back with the lock free leaves the
            // durable commit only what arrived meanwhile: a short fsync
            // instead of one as long as the batch (tens of ms while a
            // compaction deletes).
            let pre = b.commit_open().and_then(|()| b.write_back());
            if let Err(e) = pre.and_then(|()| b.sync()) {
                tracing::error!(error = %e, "backend periodic commit failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir written by oxcd on redb 2 opens with its data, and the
    /// upgrade leaves no scratch file behind.
    #[test]
    fn a_redb2_backend_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let key: redb2::TableDefinition<&[u8], &[u8]> = redb2::TableDefinition::new("key");
            let meta: redb2::TableDefinition<&[u8], &[u8]> = redb2::TableDefinition::new("meta");
            let db = redb2::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let kv = KeyValue {
                    key: b"foo".to_vec().into(),
                    value: b"bar".to_vec().into(),
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                    lease: 0,
                };
                let mut t = tx.open_table(key).unwrap();
                t.insert(
                    Revision::new(2, 0).to_bytes().as_slice(),
                    kv.encode_to_vec().as_slice(),
                )
                .unwrap();
                let mut m = tx.open_table(meta).unwrap();
                m.insert(CONSISTENT_INDEX_KEY, 9u64.to_be_bytes().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let b = Backend::open(&path, BackendConfig::default()).unwrap();
        assert_eq!(b.read_meta().unwrap().consistent_index, 9);
        let tx = b.begin_read().unwrap();
        let t = tx.open_table(KEY_TABLE).unwrap();
        assert_eq!(
            t.get_kv(Revision::new(2, 0)).unwrap().value,
            b"bar".to_vec()
        );
        assert!(!upgrade_path(&path).exists());
    }

    /// A page altered on disk is refused at open, naming the file.
    #[test]
    fn a_flipped_byte_in_the_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cfg = BackendConfig {
            batch_interval: Duration::ZERO,
            batch_limit: 1,
        };
        {
            let b = Backend::open(&path, cfg).unwrap();
            b.commit(true, |tx| {
                let mut t = tx.open_table(KEY_TABLE).unwrap();
                t.insert(b"k".as_slice(), b"VALUE-0123456789".as_slice())
                    .unwrap();
                Ok(())
            })
            .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(16)
            .position(|w| w == b"VALUE-0123456789")
            .unwrap();
        bytes[at + 15] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = Backend::open(&path, cfg)
            .err()
            .expect("a corrupt file must not open");
        assert!(matches!(e, MvccError::Open { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn meta_round_trip_and_batching() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cfg = BackendConfig {
            batch_interval: Duration::ZERO,
            batch_limit: 3,
        };
        {
            let b = Backend::open(&path, cfg).unwrap();
            assert_eq!(b.read_meta().unwrap(), Meta::default());
            b.set_consistent_index(7);
            b.commit(false, |tx| put_meta_rev(tx, SCHEDULED_COMPACT_KEY, 5))
                .unwrap();
            assert_eq!(b.pending(), 1);
            b.commit(false, |_| Ok(())).unwrap();
            assert_eq!(b.pending(), 2);
            // The third reaches the limit and is durable.
            b.commit(false, |_| Ok(())).unwrap();
            assert_eq!(b.pending(), 0);
            assert!(b.size_in_use() > 0, "measured at open");
            assert!(b.size().unwrap() >= b.size_in_use());
        }
        let b = Backend::open(&path, cfg).unwrap();
        let m = b.read_meta().unwrap();
        assert_eq!(m.consistent_index, 7);
        assert_eq!(m.scheduled_compact, Some(5));
        assert_eq!(m.finished_compact, None);
    }
}
