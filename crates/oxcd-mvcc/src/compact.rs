//! Compaction (mirrors `store.Compact` in etcd `mvcc/kvstore.go` and
//! `scheduleCompaction` in `mvcc/kvstore_compaction.go`).
//!
//! Compacting at `C` happens in three steps:
//! 1. Under the writer lock: check `C`, then durably record
//!    `scheduledCompactRev = C` (this commit also makes every earlier
//!    revision durable).
//! 2. Still under the writer lock: publish `compact_rev = C`. From here on
//!    reads below `C` fail with `Compacted`.
//! 3. On the deleter thread, after the caller has returned (as etcd's
//!    FIFO scheduler does): compact the key index, [`INDEX_CHUNK`] keys
//!    per hold of the state lock (as etcd 3.4 walks a clone of its tree
//!    and locks per key), which also yields the revisions to keep; then
//!    delete the dropped revisions `<= C` from the `key` table,
//!    [`COMPACTION_BATCH`] rows (or [`COMPACTION_BATCH_BYTES`]) at a time,
//!    each batch a short hold of the backend's write transaction. After each chunk or batch the thread
//!    pauses as long as it held the lock, so that the applier and readers
//!    interleave. Last, durably record `finishedCompactRev = C`;
//!    [`KvStore::wait_compacted`] waits for that (a `physical` Compact
//!    request).
//!
//! Steps 1 and 2 are quick (one commit); step 3 is the bulk of the work
//! and used to run on the applier's thread, stalling every write behind
//! it. Until the index walk reaches a key, the index still lists its old
//! revisions and the rows are still on disk; a read at or above `C` never
//! needs them either way. Jobs run one at a time, in order; a later
//! compaction's steps 1 and 2 may run while an earlier one is still at
//! work, which is safe: what a later compaction keeps below the earlier
//! revision, the earlier one keeps too.
//!
//! A crash after step 1 leaves `scheduled > finished`; `KvStore::open`
//! then redoes steps 2 and 3. Deleting is idempotent, so a half-done step 3
//! is harmless.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::ReadableTable;

use crate::backend::{
    put_meta_rev, Backend, FINISHED_COMPACT_KEY, KEY_TABLE, SCHEDULED_COMPACT_KEY,
};
use crate::error::{MvccError, Result};
use crate::kvstore::{KvStore, Shared, WriterGuard};
use crate::revision::Revision;

/// Revisions examined per backend transaction while deleting, at most
/// (etcd's `--experimental-compaction-batch-limit` default). A paced
/// compaction sizes its batches below this to hold the write lock about
/// [`TARGET_HOLD`] each.
pub const COMPACTION_BATCH: usize = 1000;

/// The smallest batch a paced compaction shrinks to.
const MIN_BATCH: usize = 50;

/// How long a paced compaction aims to hold the backend's write lock per
/// batch: a write that arrives meanwhile waits at most about this long,
/// well under a put's own latency (measured: 1 000-row batches held it
/// 1–2 ms and put p99 during a compaction of 1M revisions rose to 3–6 ms
/// against 1–2 ms idle).
const TARGET_HOLD: Duration = Duration::from_micros(500);

/// Bytes of doomed rows per batch, at most (a batch ends at whichever
/// limit comes first): removing a row makes redb load its page, so 1 000
/// rows of 1 MiB values held the write lock for a second.
pub const COMPACTION_BATCH_BYTES: usize = 1 << 20;

/// Keys compacted in the index per hold of the state lock.
pub const INDEX_CHUNK: usize = 10_000;

impl KvStore {
    /// Compacts the key space at `rev` and waits until the dropped
    /// revisions are deleted from the backend ([`KvStore::schedule_compaction`]
    /// then [`KvStore::wait_compacted`]). Blocks.
    ///
    /// # Errors
    /// As [`KvStore::schedule_compaction`] and [`KvStore::wait_compacted`].
    pub fn compact(&self, rev: i64) -> Result<()> {
        self.schedule_compaction(rev)?;
        self.wait_compacted(rev)
    }

    /// Compacts the key space at `rev` (steps 1 and 2 above) and leaves the
    /// deletion of the dropped revisions to the deleter thread: afterwards
    /// reads at revisions `>= rev` work and older ones fail with
    /// `Compacted`. For each key the newest revision `<= rev` survives
    /// unless it is a tombstone.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `rev <= compact_rev()` (an equal
    /// revision included), [`MvccError::FutureRev`] when `rev > rev()`,
    /// backend errors.
    pub fn schedule_compaction(&self, rev: i64) -> Result<()> {
        let job = {
            let _writer = WriterGuard::new(&self.shared.writer);
            // Within a batch: the compaction sees (and readers see) every
            // revision applied before it.
            self.publish_staged()?;
            self.check_compact_rev(rev)?;
            self.shared
                .backend
                .commit(true, |tx| put_meta_rev(tx, SCHEDULED_COMPACT_KEY, rev))?;
            self.shared.state_mut().compact_rev = rev;
            Job {
                rev,
                installs: self.shared.installs.load(Ordering::SeqCst),
            }
        };
        let sent = self
            .shared
            .deleter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job);
        if !sent {
            tracing::warn!(
                revision = rev,
                "no compaction thread; the compacted revisions are deleted at the next start"
            );
            self.shared.progress.failed(rev, "no compaction thread");
        }
        Ok(())
    }

    /// Waits until the revisions dropped by compactions up to `rev` are
    /// deleted from the backend (at once when they already are).
    ///
    /// # Errors
    /// [`MvccError::CompactionUnfinished`] when the deleter failed on or
    /// before `rev`, or the store is closing.
    pub fn wait_compacted(&self, rev: i64) -> Result<()> {
        self.shared.progress.wait(rev)
    }

    /// Redoes an interrupted compaction found by `open` or a snapshot
    /// install (steps 2 and 3, on the caller's thread).
    pub(crate) fn finish_scheduled_compaction(&self, rev: i64) -> Result<()> {
        let keep = compact_index(&self.shared, rev, false);
        delete_compacted(
            &self.shared.backend,
            rev,
            &keep,
            &AtomicBool::new(false),
            false,
        )?;
        self.shared.progress.finished(rev);
        Ok(())
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
}

/// Publishes `compact_rev = rev` (if not yet) and compacts the index in
/// chunks of [`INDEX_CHUNK`] keys, each under the state write lock; with
/// `pace`, pauses after each chunk as long as it held the lock (at least
/// 1 ms). Returns the revisions `<= rev` to keep on disk.
fn compact_index(shared: &Shared, rev: i64, pace: bool) -> HashSet<Revision> {
    let started = Instant::now();
    let mut keep = HashSet::new();
    let mut from = Some(Vec::new());
    while let Some(at) = from.take() {
        let held = Instant::now();
        {
            let mut st = shared.state_mut();
            st.compact_rev = st.compact_rev.max(rev);
            from = st.index.compact_chunk(rev, &at, INDEX_CHUNK, &mut keep);
        }
        crate::metrics::get()
            .index_compaction_pause_ms
            .observe(held.elapsed().as_secs_f64() * 1000.0);
        if pace && from.is_some() {
            std::thread::sleep(held.elapsed().max(Duration::from_millis(1)));
        }
    }
    tracing::info!(revision = rev, took = ?started.elapsed(), "compacted key index");
    keep
}

/// Deletes from the `key` table every revision `<= rev` not in `keep`,
/// in batches, then durably records the finished compaction. Returns
/// `Ok(false)` when `stop` was set before the end (the next open redoes
/// the rest).
///
/// Each batch is found on a read snapshot, outside the backend's write
/// lock (every revision `<= rev` was committed when the compaction was
/// scheduled), so the lock is held only for the removals. With `pace`,
/// the deleter then waits as long as it held the lock (at least 1 ms), so
/// that the applier's commits get at least half of it: etcd sleeps 10 ms
/// between its batches for the same reason.
fn delete_compacted(
    backend: &Backend,
    rev: i64,
    keep: &HashSet<Revision>,
    stop: &AtomicBool,
    pace: bool,
) -> Result<bool> {
    let started = Instant::now();
    // Every key of a revision <= rev sorts before the 8-byte prefix rev+1.
    let end = ((rev + 1) as u64).to_be_bytes();
    let mut from: Vec<u8> = Vec::new();
    let mut deleted = 0usize;
    let mut limit = COMPACTION_BATCH;
    loop {
        if stop.load(Ordering::SeqCst) {
            tracing::info!(
                revision = rev,
                deleted,
                "compaction interrupted by shutdown; the next start finishes it"
            );
            return Ok(false);
        }
        let (doomed, scanned) = next_batch(backend, &from, &end, keep, limit)?;
        let last_batch = match scanned {
            Some(last) => {
                from = after(&last);
                false
            }
            None => true,
        };
        let held = Instant::now();
        backend.commit(false, |tx| {
            let mut table = tx
                .open_table(KEY_TABLE)
                .map_err(|e| MvccError::backend("open key table", e))?;
            for k in &doomed {
                // Gone already when a resumed compaction repeats a batch.
                if let Some(old) = table
                    .remove(k.as_slice())
                    .map_err(|e| MvccError::backend("delete revision", e))?
                {
                    backend.account(-((k.len() + old.value().len()) as i64));
                    deleted += 1;
                }
            }
            drop(table);
            if last_batch {
                put_meta_rev(tx, FINISHED_COMPACT_KEY, rev)?;
            }
            Ok(())
        })?;
        let m = crate::metrics::get();
        m.db_compaction_pause_ms
            .observe(held.elapsed().as_secs_f64() * 1000.0);
        m.db_compaction_keys.inc_by(doomed.len() as u64);
        if last_batch {
            break;
        }
        if pace {
            let held = held.elapsed();
            limit = next_limit(limit, held);
            std::thread::sleep(held.max(Duration::from_millis(1)));
        }
    }
    backend.sync()?;
    crate::metrics::get()
        .db_compaction_total_ms
        .observe(started.elapsed().as_secs_f64() * 1000.0);
    tracing::info!(revision = rev, deleted, took = ?started.elapsed(), "finished scheduled compaction");
    Ok(true)
}

/// The next batch size, moved halfway towards the one that would have held
/// the lock for [`TARGET_HOLD`] at the rate `limit` rows took `held`.
fn next_limit(limit: usize, held: Duration) -> usize {
    let held = held.as_secs_f64().max(1e-6);
    let fitting = limit as f64 * TARGET_HOLD.as_secs_f64() / held;
    let next = (limit as f64 + fitting) / 2.0;
    (next as usize).clamp(MIN_BATCH, COMPACTION_BATCH)
}

/// Revision keys to delete, and where the next batch starts (after this
/// key) unless the scan reached the end.
type Batch = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// The revisions to delete among the next `limit` keys in `[from, end)`
/// of the committed `key` table (fewer once they hold
/// [`COMPACTION_BATCH_BYTES`]), and the last key scanned when the batch
/// ended before the range did.
fn next_batch(
    backend: &Backend,
    from: &[u8],
    end: &[u8],
    keep: &HashSet<Revision>,
    limit: usize,
) -> Result<Batch> {
    let snap = backend.begin_read()?;
    let table = snap
        .open_table(KEY_TABLE)
        .map_err(|e| MvccError::backend("open key table", e))?;
    let range = table
        .range(from..end)
        .map_err(|e| MvccError::backend("scan key table", e))?;
    let mut doomed = Vec::new();
    let mut scanned = 0;
    let mut bytes = 0;
    for entry in range {
        let (k, v) = entry.map_err(|e| MvccError::backend("scan key table", e))?;
        let key = k.value();
        let (r, _) = Revision::from_key(key)?;
        if !keep.contains(&r) {
            doomed.push(key.to_vec());
            bytes += key.len() + v.value().len();
        }
        scanned += 1;
        if scanned == limit || bytes >= COMPACTION_BATCH_BYTES {
            return Ok((doomed, Some(key.to_vec())));
        }
    }
    Ok((doomed, None))
}

/// The smallest key greater than `k`.
fn after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}

/// One compaction's step 3.
struct Job {
    rev: i64,
    /// [`Shared::installs`] when the job was made: a snapshot install since
    /// replaced the rows (and finished its own compaction), so the job is
    /// void.
    installs: u64,
}

/// The deleter thread (step 3 of every compaction, in order) and the way
/// to stop it. The thread holds only a weak reference to the store
/// between jobs.
pub(crate) struct Deleter {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Deleter {
    pub(crate) fn start(shared: Weak<Shared>) -> Deleter {
        let (jobs, queue) = mpsc::channel::<Job>();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("oxcd-compaction".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    let Some(shared) = shared.upgrade() else { return };
                    match run(&shared, &job, &flag) {
                        Ok(true) => shared.progress.finished(job.rev),
                        Ok(false) => {
                            shared.progress.failed(i64::MAX, "the store is closing");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(revision = job.rev, error = %e, "deleting compacted revisions failed; the next start retries");
                            shared.progress.failed(job.rev, &e.to_string());
                        }
                    }
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the thread compactions still take effect (reads
                // below them fail); the rows stay until the next start.
                tracing::error!(error = %e, "cannot start the compaction thread");
                None
            }
        };
        Deleter {
            jobs: thread.is_some().then_some(jobs),
            thread,
            stop,
        }
    }

    /// Queues `job`; false when there is no thread to run it.
    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Stops the thread between batches and waits for it.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs one job under the compaction lock; `Ok(false)` when stopped.
fn run(shared: &Shared, job: &Job, stop: &AtomicBool) -> Result<bool> {
    let _serial = shared
        .compaction
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if shared.installs.load(Ordering::SeqCst) != job.installs {
        tracing::info!(
            revision = job.rev,
            "a snapshot install replaced the compacted rows"
        );
        return Ok(true);
    }
    let keep = compact_index(shared, job.rev, true);
    shared.rewrites.fetch_add(1, Ordering::SeqCst);
    delete_compacted(&shared.backend, job.rev, &keep, stop, true)
}

/// How far deleting has come, for [`KvStore::wait_compacted`].
#[derive(Default)]
pub(crate) struct Progress {
    state: Mutex<Done>,
    changed: Condvar,
}

#[derive(Default)]
struct Done {
    /// Every compaction up to here is deleted.
    finished: i64,
    /// The newest compaction whose deletion failed, and why. A later job
    /// deletes what an earlier failed one left, so only waiters at or
    /// below it give up.
    failed: Option<(i64, String)>,
}

impl Progress {
    pub(crate) fn finished(&self, rev: i64) {
        let mut d = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        d.finished = d.finished.max(rev);
        self.changed.notify_all();
    }

    fn failed(&self, rev: i64, why: &str) {
        let mut d = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if d.failed.as_ref().is_none_or(|(at, _)| *at < rev) {
            d.failed = Some((rev, why.to_string()));
        }
        self.changed.notify_all();
    }

    fn wait(&self, rev: i64) -> Result<()> {
        let mut d = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if d.finished >= rev {
                return Ok(());
            }
            if let Some((at, why)) = &d.failed {
                if *at >= rev {
                    return Err(MvccError::CompactionUnfinished {
                        rev,
                        reason: why.clone(),
                    });
                }
            }
            d = self.changed.wait(d).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;

    use crate::{BackendConfig, KvStore, MvccError, RangeOptions};

    fn put(s: &KvStore, k: &[u8], v: &[u8]) -> i64 {
        let mut t = s.write();
        t.put(k, v, 0).unwrap();
        t.end(None).unwrap().rev
    }

    /// Rows of the `key` table on disk (after committing the batch).
    fn rows(s: &KvStore) -> u64 {
        use redb::ReadableTableMetadata;
        s.sync().unwrap();
        let snap = s.shared.backend.begin_read().unwrap();
        snap.open_table(crate::backend::KEY_TABLE)
            .unwrap()
            .len()
            .unwrap()
    }

    /// The writer's part of a compaction does not wait for the deletion:
    /// with the deleter held off (its lock taken here), scheduling
    /// returns, reads below the revision fail, writes go on, and a
    /// physical wait ends only once the deleter ran.
    #[test]
    fn writes_go_on_while_compacted_revisions_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        for i in 0..3 * super::COMPACTION_BATCH {
            put(&s, b"k", i.to_string().as_bytes());
        }
        let at = s.rev();
        let held = s
            .shared
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.schedule_compaction(at).unwrap();
        let after = put(&s, b"other", b"v");
        assert_eq!(after, at + 1);
        let old = RangeOptions {
            rev: at - 1,
            ..Default::default()
        };
        assert!(matches!(
            s.read().unwrap().range(b"k", b"", old),
            Err(MvccError::Compacted { .. })
        ));
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait_compacted(at))
        };
        assert_eq!(rows(&s), 3 * super::COMPACTION_BATCH as u64 + 1);
        assert!(!waiter.is_finished(), "nothing deleted yet");
        drop(held);
        waiter.join().unwrap().unwrap();
        s.wait_compacted(at).unwrap();
        // Only the newest revision of "k" and "other" are left on disk.
        assert_eq!(rows(&s), 2);
        drop(s);
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        assert_eq!(rows(&s), 2);
        assert_eq!(s.read().unwrap().events(at + 1, 0, 0).unwrap().len(), 1);
    }

    /// A batch of large rows ends at [`super::COMPACTION_BATCH_BYTES`],
    /// long before [`super::COMPACTION_BATCH`] rows: removing a row loads
    /// its page under the write lock.
    /// A batch that held the lock too long shrinks, a quick one grows,
    /// within bounds.
    #[test]
    fn batches_are_sized_to_the_target_hold() {
        let slow = super::next_limit(1000, super::TARGET_HOLD * 4);
        assert!(slow < 1000 && slow > 500, "{slow}");
        let fast = super::next_limit(200, super::TARGET_HOLD / 4);
        assert!(fast > 200, "{fast}");
        assert_eq!(
            super::next_limit(1000, std::time::Duration::ZERO),
            super::COMPACTION_BATCH
        );
        assert_eq!(
            super::next_limit(60, std::time::Duration::from_secs(1)),
            super::MIN_BATCH
        );
        // A steady rate settles where it holds the lock about the target.
        let mut limit = 1000;
        for _ in 0..20 {
            let held = std::time::Duration::from_micros(2) * u32::try_from(limit).unwrap();
            limit = super::next_limit(limit, held);
        }
        assert!((240..=260).contains(&limit), "{limit}");
    }

    #[test]
    fn batches_of_large_rows_end_at_the_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = KvStore::open(&dir.path().join("db"), BackendConfig::default()).unwrap();
        let value = vec![7u8; 300 << 10];
        for _ in 0..10 {
            put(&s, b"big", &value);
        }
        s.sync().unwrap();
        let end = ((s.rev() + 1) as u64).to_be_bytes();
        let keep = std::collections::HashSet::new();
        let (doomed, next) =
            super::next_batch(&s.shared.backend, &[], &end, &keep, super::COMPACTION_BATCH)
                .unwrap();
        assert_eq!(doomed.len(), 4, "4 × 300 KiB reach 1 MiB");
        assert_eq!(next.as_deref(), doomed.last().map(Vec::as_slice));
        let (rest, next) = super::next_batch(
            &s.shared.backend,
            &super::after(&doomed[3]),
            &end,
            &keep,
            super::COMPACTION_BATCH,
        )
        .unwrap();
        assert_eq!((rest.len(), next.is_some()), (4, true));
    }

    /// Closing the store while a compaction waits to be deleted wakes its
    /// waiters with an error; the next open finishes the deletion.
    #[test]
    fn closing_mid_compaction_leaves_it_for_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        for i in 0..2 * super::COMPACTION_BATCH {
            put(&s, b"k", i.to_string().as_bytes());
        }
        let at = s.rev();
        {
            // The deleter stops before its first batch.
            let _held = s
                .shared
                .compaction
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.schedule_compaction(at).unwrap();
            s.shared
                .deleter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stop
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let err = s.wait_compacted(at).unwrap_err();
        assert!(
            matches!(err, MvccError::CompactionUnfinished { rev, .. } if rev == at),
            "{err}"
        );
        assert_eq!(rows(&s), 2 * super::COMPACTION_BATCH as u64);
        drop(s);
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        assert_eq!(s.compact_rev(), at);
        assert_eq!(rows(&s), 1);
        s.wait_compacted(at).unwrap();
    }
}
