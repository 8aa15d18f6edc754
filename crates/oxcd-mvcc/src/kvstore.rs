//! The store handle (mirrors etcd `mvcc/kvstore.go`).
//!
//! # Concurrency
//!
//! - `state` (one `RwLock`) holds the key index with the current and
//!   compact revisions, so a reader checks its revision and looks keys up
//!   under one consistent view. Writers take it for writing only for the
//!   few microseconds of an index update, never across disk I/O.
//! - `writer` admits one [`WriteTxn`] at a time (etcd's batch-tx lock). It
//!   is an owned flag rather than a `MutexGuard`, so a `WriteTxn` is `Send`
//!   and has no lifetime.
//! - A write transaction's index entries carry main revision
//!   `current + 1`; readers only ask for revisions `<= current`, so they
//!   never see an unpublished change. Without batching `current` is bumped
//!   after the redb commit; with it (the server's mode) by `end_batch`,
//!   and readers find the rows not yet committed in the staged buffer
//!   (see `docs/design/backend.md`).
//! - `compaction` serialises compactions (their backend deletion runs
//!   outside the writer lock, in batches).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::{Backend, BackendConfig, Flusher};
use crate::error::Result;
use crate::index::TreeIndex;
use crate::txn::{ReadTxn, WriteTxn};

/// The revisioned key space: a cheap `Clone` handle (`Arc` inside),
/// `Send + Sync`. Dropping the last handle stops the background flusher and
/// makes pending writes durable; the database file is closed when the last
/// handle and the last transaction are gone.
pub struct KvStore {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub backend: Arc<Backend>,
    pub state: RwLock<State>,
    pub writer: WriterLock,
    pub compaction: Mutex<()>,
    /// Held for a whole defragment: two at once would share the scratch
    /// file, and the first one's switch would rename the second's partial
    /// copy over the live file.
    pub defragmenting: Mutex<()>,
    /// Bumped (under `compaction`) whenever rows may be deleted or
    /// replaced anywhere in the `key` table: a compaction's deletion
    /// starting, a snapshot install. An online defragment copying rows
    /// compares it.
    pub rewrites: std::sync::atomic::AtomicU64,
    /// Bumped (under `compaction`) by every snapshot install: a queued
    /// compaction job made before one is void.
    pub installs: std::sync::atomic::AtomicU64,
    /// Deletes compacted revisions in the background (step 3).
    pub deleter: Mutex<crate::compact::Deleter>,
    /// How far the deleter has come.
    pub progress: crate::compact::Progress,
    /// Live `KvStore` handles; the last one to drop stops the deleter and
    /// the flusher.
    handles: AtomicUsize,
    flusher: Mutex<Flusher>,
}

/// Live keys attached to leases: (key, lease ID).
pub type LeaseKeys = Vec<(Vec<u8>, i64)>;

/// What readers must see together.
#[derive(Debug)]
pub(crate) struct State {
    pub index: TreeIndex,
    /// The newest main revision readers may see (1 for an empty store):
    /// committed to redb and published.
    pub current_rev: i64,
    /// The newest main revision written, published or not (equal to
    /// `current_rev` outside a batch). The writer builds on it.
    pub staged_rev: i64,
    /// Whether a batch is open: write transactions then stage their
    /// revision instead of publishing it.
    pub batching: bool,
    /// The revision of the last compaction, -1 before the first.
    pub compact_rev: i64,
    /// Live keys attached to a lease as the last restore found them, with
    /// the revision they hold at (see [`KvStore::restored_lease_keys`]).
    pub restored_leases: (i64, Arc<LeaseKeys>),
}

impl Shared {
    /// The state for reading. A panic while the lock was held cannot leave
    /// the index half-updated (each update is one small call), so a
    /// poisoned lock is used as is.
    pub fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Admits one writer at a time; released explicitly, so the holder can be
/// an owned value. Waiters are counted so that a release with no one
/// waiting (the apply thread, once per applied entry) skips the condvar:
/// std's `notify_one` is a futex syscall even when no thread waits, and it
/// was 90 % of the server's futex calls under load.
#[derive(Default)]
pub(crate) struct WriterLock {
    state: Mutex<WriterState>,
    cv: Condvar,
}

#[derive(Default)]
struct WriterState {
    busy: bool,
    waiting: usize,
}

impl WriterLock {
    pub fn acquire(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st.busy {
            st.waiting += 1;
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting -= 1;
        }
        st.busy = true;
    }

    pub fn release(&self) {
        let waiting = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.busy = false;
            st.waiting
        };
        if waiting > 0 {
            self.cv.notify_one();
        }
    }
}

/// Holds the writer lock for a scope.
pub(crate) struct WriterGuard<'a>(&'a WriterLock);

impl<'a> WriterGuard<'a> {
    pub fn new(lock: &'a WriterLock) -> Self {
        lock.acquire();
        WriterGuard(lock)
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl KvStore {
    /// Opens the backend file at `path` (creating it if absent), rebuilds
    /// the key index by scanning every stored revision, restores the
    /// current and compact revisions and the consistent index, and finishes
    /// a compaction that was interrupted by a crash (like etcd's restore).
    ///
    /// # Errors
    /// Backend errors opening or reading the file; [`crate::MvccError::Corrupt`]
    /// for records that do not decode.
    pub fn open(path: &Path, cfg: BackendConfig) -> Result<KvStore> {
        let backend = Arc::new(Backend::open(path, cfg)?);
        let restored = crate::restore::restore(&backend)?;
        let flusher = Flusher::start(Arc::downgrade(&backend), cfg.batch_interval);
        let store = KvStore {
            shared: Arc::new_cyclic(|weak| Shared {
                backend,
                state: RwLock::new(restored.state),
                writer: WriterLock::default(),
                compaction: Mutex::new(()),
                defragmenting: Mutex::new(()),
                rewrites: std::sync::atomic::AtomicU64::new(0),
                installs: std::sync::atomic::AtomicU64::new(0),
                deleter: Mutex::new(crate::compact::Deleter::start(weak.clone())),
                progress: crate::compact::Progress::default(),
                handles: AtomicUsize::new(1),
                flusher,
            }),
        };
        if let Some(rev) = restored.resume_compaction {
            tracing::info!(revision = rev, "resume scheduled compaction");
            store.finish_scheduled_compaction(rev)?;
        }
        store.shared.progress.finished(store.compact_rev());
        Ok(store)
    }

    /// The current revision: the main revision of the newest committed
    /// change, 1 for an empty store.
    pub fn rev(&self) -> i64 {
        self.shared.state().current_rev
    }

    /// The live keys attached to a lease (key, lease ID), as the scan that
    /// rebuilt the index at open (or after a snapshot replaced the
    /// backend) found them, so that the lessor need not read every key a
    /// second time. `None` once anything was written since: the list would
    /// be stale, and the caller must read the keys itself.
    pub fn restored_lease_keys(&self) -> Option<Arc<LeaseKeys>> {
        let st = self.shared.state();
        let (rev, keys) = &st.restored_leases;
        (*rev == st.staged_rev).then(|| keys.clone())
    }

    /// Keys alive at the current revision.
    pub fn live_keys(&self) -> usize {
        self.shared.state().index.live()
    }

    /// The revision of the last compaction, -1 if there was none.
    pub fn compact_rev(&self) -> i64 {
        self.shared.state().compact_rev
    }

    /// The raft index of the last applied entry handed to
    /// [`WriteTxn::end`] (0 for a new store).
    pub fn consistent_index(&self) -> u64 {
        self.shared.backend.consistent_index()
    }

    /// A read transaction: a consistent snapshot at the current revision.
    /// Never waits for writers (only for an index update in progress).
    ///
    /// # Errors
    /// Backend errors starting the redb read transaction.
    pub fn read(&self) -> Result<ReadTxn> {
        ReadTxn::begin(self.shared.clone())
    }

    /// The write transaction: blocks the calling thread until no other
    /// write transaction (or compaction's index step) is running, so call
    /// it from the applier's thread, not from an async task. All its
    /// changes share one main revision, `rev() + 1`, which exists only if
    /// something changed. A thread holding a `WriteTxn` must not call
    /// `write` or `compact` again (it would wait for itself).
    pub fn write(&self) -> WriteTxn {
        WriteTxn::begin(self.shared.clone())
    }

    /// Opens a batch: until [`KvStore::end_batch`], write transactions
    /// stage their revision instead of publishing it to readers. The backend
    /// then keeps one redb transaction open across write transactions and
    /// batches (committed by the flusher, the batch limit or anything that
    /// needs the file current, see `backend`). The server brackets each
    /// group of applied raft entries with it.
    pub fn begin_batch(&self) {
        let _writer = WriterGuard::new(&self.shared.writer);
        self.shared.backend.enable_batching();
        self.shared.state_mut().batching = true;
    }

    /// Ends the batch: publishes the newest revision to readers, who find
    /// the values not yet committed in the backend's staged buffer. Commits
    /// nothing: the raft WAL already holds the entries, and the flusher
    /// commits within `batch_interval`.
    pub fn end_batch(&self) {
        let _writer = WriterGuard::new(&self.shared.writer);
        if let Err(e) = self.shared.backend.flush_deferred() {
            // Not in batch mode (a failure in it exits, see `Backend`):
            // the records stay staged and deferred for the next commit.
            tracing::error!(error = %e, "cannot insert the batch into the backend");
        }
        let mut st = self.shared.state_mut();
        st.batching = false;
        st.current_rev = st.staged_rev;
    }

    /// Commits and publishes what the open batch holds, keeping the batch
    /// open. The caller holds the writer lock.
    pub(crate) fn publish_staged(&self) -> Result<()> {
        self.shared.backend.commit_open()?;
        let mut st = self.shared.state_mut();
        st.current_rev = st.staged_rev;
        Ok(())
    }

    /// Makes every committed write durable (one fsync), together with the
    /// consistent index. The server calls it before a raft snapshot lets
    /// the WAL behind it go, and at close; acknowledgements rely on the
    /// WAL, not on this.
    ///
    /// # Errors
    /// Backend errors; a failed sync should be treated as fatal.
    pub fn sync(&self) -> Result<()> {
        self.shared.backend.sync()
    }

    /// The backend file's path.
    pub fn path(&self) -> &std::path::Path {
        self.shared.backend.path()
    }

    /// Size of the backend file in bytes: what it takes on disk (its
    /// length, or less while the end of it is sparse).
    ///
    /// # Errors
    /// I/O errors reading the file's metadata.
    pub fn db_size(&self) -> Result<u64> {
        self.shared.backend.size()
    }

    /// Bytes in use inside the backend file: the last measurement (at open,
    /// after a defragment, or by [`KvStore::measure_in_use`]) plus the
    /// record bytes written and minus those compacted away since; an
    /// estimate, like etcd's.
    pub fn db_size_in_use(&self) -> u64 {
        self.shared.backend.size_in_use()
    }

    /// Read transactions open on the backend file now.
    pub fn open_read_txns(&self) -> usize {
        self.shared.backend.open_read_txns()
    }

    /// Measures the bytes in use now unless the last measurement is younger
    /// than `max_age`, and returns [`KvStore::db_size_in_use`].
    ///
    /// # Errors
    /// Backend errors.
    pub fn measure_in_use(&self, max_age: std::time::Duration) -> Result<u64> {
        self.shared.backend.measure(max_age)
    }

    /// Number of keys with any history in the index (live or not yet
    /// compacted away). For metrics and tests.
    pub fn index_len(&self) -> usize {
        self.shared.state().index.len()
    }
}

impl Clone for KvStore {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::SeqCst);
        KvStore {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            // A compaction still deleting stops between batches; the next
            // open finishes it.
            self.shared
                .deleter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop();
            // Join the flusher so that it holds no reference to the
            // database when the last handle is gone: a reopen right after
            // this drop must not find the file still open.
            self.shared
                .flusher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop();
            // A clean close leaves nothing for the WAL to replay.
            if self.shared.backend.pending() > 0 {
                if let Err(e) = self.shared.backend.sync() {
                    tracing::error!(error = %e, "final backend commit failed");
                }
            }
        }
    }
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.state();
        f.debug_struct("KvStore")
            .field("current_rev", &st.current_rev)
            .field("compact_rev", &st.compact_rev)
            .field("keys", &st.index.len())
            .finish()
    }
}
