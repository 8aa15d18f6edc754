//! Online defragment: rewrites the backend into a fresh file without
//! stopping the member (etcd's `backend.Defrag` holds every read and write
//! for the whole copy; redb's own `compact` needs the file to itself).
//!
//! 1. Copy: a snapshot of the file is copied, table by table, into
//!    `db.defrag`, [`COPY_BATCH`] rows per transaction, while readers and
//!    writers go on with the old file, on a thread at idle CPU priority
//!    (`background`) so that requests keep their CPU. Then the `key` rows
//!    written meanwhile are copied from a newer snapshot (revisions only
//!    grow, so they are the rows after the last copied key); this repeats
//!    while many arrived.
//! 2. Switch: writers wait (the store's writer lock) while the rows of the
//!    last moments and the small tables (meta with the consistent index,
//!    lease, alarm) are copied, the new file is committed durably and
//!    renamed over `db`. New readers use it; readers in flight finish on
//!    the old one, which the rename unlinked.
//!
//! Only compaction deletes `key` rows (and a snapshot install replaces
//! them): if one ran during the copy ([`Shared::rewrites`] moved), the copy
//! is thrown away and started again, a few times at most. A crash leaves
//! either the old file or the new one, plus a stale `db.defrag` that the
//! next open removes.
//!
//! [`Shared::rewrites`]: crate::kvstore::Shared

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use redb::{Database, Durability, ReadTransaction, ReadableTable, TableHandle, WriteTransaction};

use crate::backend::KEY_TABLE;
use crate::background;
use crate::error::{MvccError, Result};
use crate::kvstore::{KvStore, WriterGuard};
use crate::snapshot::copy_tables;

/// Rows per transaction while copying.
const COPY_BATCH: usize = 10_000;
/// Catch-up rounds before writers are held off; each copies what arrived
/// during the previous one.
const CATCH_UP_ROUNDS: usize = 3;
/// Fewer new rows than this and the switch happens at once.
const SMALL_DELTA: usize = 5_000;
/// Copies started again after a compaction, before giving up.
const ATTEMPTS: usize = 3;

/// Where the new file is written before it replaces `path`.
pub(crate) fn scratch_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".defrag");
    path.with_file_name(name)
}

impl KvStore {
    /// Rewrites the backend file without its free pages while the store
    /// keeps serving (see the module docs); returns the file size before
    /// and after. Writers wait only for the final switch.
    ///
    /// # Errors
    /// Backend and file errors (the old file then stays in use);
    /// compactions that kept interrupting the copy.
    pub fn defragment(&self) -> Result<(u64, u64)> {
        // One at a time (a second caller waits, as etcd's would on its
        // batch transaction).
        let _one = self
            .shared
            .defragmenting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let m = crate::metrics::get();
        let _timer = m.defrag.start_timer();
        m.defrag_inflight.inc();
        let _inflight = scopeguard_dec(&m.defrag_inflight);
        let backend = &self.shared.backend;
        let before = backend.size()?;
        let scratch = scratch_path(backend.path());
        for attempt in 1..=ATTEMPTS {
            match self.defragment_once(&scratch)? {
                true => return Ok((before, backend.size()?)),
                false => {
                    tracing::info!(attempt, "a compaction ran during defragment; copying again")
                }
            }
        }
        Err(MvccError::Corrupt(
            "defragment gave up: compactions kept rewriting the backend during the copy".into(),
        ))
    }

    /// One attempt; `Ok(false)` when a compaction made the copy stale.
    fn defragment_once(&self, scratch: &Path) -> Result<bool> {
        let backend = &self.shared.backend;
        let rewrites = {
            // No compaction is deleting rows while the copy starts.
            let _serial = self
                .shared
                .compaction
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.rewrites.load(Ordering::SeqCst)
        };
        remove_if_present(scratch)?;
        let file = crate::backend_file::BackendFile::open(scratch)
            .map_err(|e| MvccError::backend("create defragment file", e))?;
        // The copy becomes the live file: the same small cache as at open.
        let next = Database::builder()
            .set_cache_size(crate::backend::CACHE_SIZE)
            .create_with_backend(file)
            .map_err(|e| MvccError::backend("create defragment file", e))?;
        // The new file replaces the old one: same permissions.
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MvccError::Io { path, source }
        };
        let perms = std::fs::metadata(backend.path())
            .map_err(io(backend.path()))?
            .permissions();
        std::fs::set_permissions(scratch, perms).map_err(io(scratch))?;
        backend.commit_open()?;
        let mut last = None;
        let snap = backend.begin_read()?;
        copy_low(snap, &next, &mut last)?;
        for _ in 0..CATCH_UP_ROUNDS {
            backend.commit_open()?;
            let snap = backend.begin_read()?;
            if copy_low(snap, &next, &mut last)? < SMALL_DELTA {
                break;
            }
        }
        let _serial = self
            .shared
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.rewrites.load(Ordering::SeqCst) != rewrites {
            drop(next);
            remove_if_present(scratch)?;
            return Ok(false);
        }
        // The copy grew the file in redb's steps (up to 2×); the private
        // copy has no readers, so redb can trim it to what it holds. Made
        // durable and measured here, on the private copy, so that the switch
        // under the writer lock syncs only the last rows. Nothing else uses
        // the copy yet, so this runs at low priority too.
        let mut next = next;
        background::run_low("defrag", || -> Result<()> {
            while next
                .compact(redb::CompactionMode::Maximum)
                .map_err(|e| MvccError::backend("trim defragment file", e))?
            {}
            next.begin_write()
                .map_err(|e| MvccError::backend("begin write", e))?
                .commit()
                .map_err(|e| MvccError::backend("commit", e))
        })
        .map_err(|e| MvccError::backend("start the defragment's thread", e))??;
        let measured = {
            let tx = next
                .begin_write()
                .map_err(|e| MvccError::backend("begin write", e))?;
            let stats = tx
                .stats()
                .map_err(|e| MvccError::backend("database stats", e))?;
            tx.abort().map_err(|e| MvccError::backend("abort", e))?;
            stats.allocated_pages() * stats.page_size() as u64
        };
        let writer = WriterGuard::new(&self.shared.writer);
        let started = std::time::Instant::now();
        let previous = backend.switch_to(
            next,
            scratch,
            |old, tx| {
                let rows = copy_rows_after(old, tx, last.as_deref())?;
                // The small tables (meta with the consistent index, lease,
                // alarm) are copied whole.
                let others = copy_tables(old, tx, |n| n != KEY_TABLE.name(), true)?;
                Ok(rows + others)
            },
            measured,
        )?;
        drop(writer);
        tracing::info!(writers_waited = ?started.elapsed(), "switched to the defragmented backend file");
        drop(previous);
        Ok(true)
    }
}

/// [`copy_key_rows`] from `snap` on a low-priority thread
/// ([`background::run_low`]): the copy takes only CPU that requests leave.
/// Its pages are not written back batch by batch (as the snapshot file's
/// are): measured, an fdatasync every batch tripled put p99 during the
/// copy, where leaving them to the final durable commit kept it near idle.
fn copy_low(
    snap: crate::backend::Snapshot,
    dst: &Database,
    last: &mut Option<Vec<u8>>,
) -> Result<usize> {
    background::run_low("defrag", move || copy_key_rows(&snap, dst, last))
        .map_err(|e| MvccError::backend("start the defragment's thread", e))?
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MvccError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Copies the `key` rows of `src` after `last` into `dst`, in batches,
/// advancing `last`; returns how many were copied.
fn copy_key_rows(
    src: &ReadTransaction,
    dst: &Database,
    last: &mut Option<Vec<u8>>,
) -> Result<usize> {
    let mut copied = 0;
    loop {
        let mut tx = dst
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        tx.set_durability(Durability::None)
            .map_err(|e| MvccError::backend("set durability", e))?;
        let (n, _) = copy_batch(src, &tx, last)?;
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        copied += n;
        if n < COPY_BATCH {
            return Ok(copied);
        }
    }
}

/// Copies up to [`COPY_BATCH`] `key` rows after `last` into `tx`; returns
/// how many, and their bytes.
fn copy_batch(
    src: &ReadTransaction,
    tx: &WriteTransaction,
    last: &mut Option<Vec<u8>>,
) -> Result<(usize, u64)> {
    let from = match src.open_table(KEY_TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
        Err(e) => return Err(MvccError::backend("open key table", e)),
    };
    let mut to = tx
        .open_table(KEY_TABLE)
        .map_err(|e| MvccError::backend("open key table", e))?;
    let start: std::ops::Bound<&[u8]> = match last.as_deref() {
        Some(after) => std::ops::Bound::Excluded(after),
        None => std::ops::Bound::Unbounded,
    };
    let range = from
        .range((start, std::ops::Bound::Unbounded))
        .map_err(|e| MvccError::backend("scan key table", e))?;
    let (mut n, mut bytes) = (0, 0);
    for row in range.take(COPY_BATCH) {
        let (k, v) = row.map_err(|e| MvccError::backend("scan key table", e))?;
        to.insert(k.value(), v.value())
            .map_err(|e| MvccError::backend("copy row", e))?;
        bytes += (k.value().len() + v.value().len()) as u64;
        *last = Some(k.value().to_vec());
        n += 1;
    }
    Ok((n, bytes))
}

/// Copies every `key` row after `last` (the last moments' writes);
/// returns their bytes.
fn copy_rows_after(
    src: &ReadTransaction,
    tx: &WriteTransaction,
    last: Option<&[u8]>,
) -> Result<u64> {
    let mut last = last.map(<[u8]>::to_vec);
    let mut total = 0;
    loop {
        let (n, bytes) = copy_batch(src, tx, &mut last)?;
        total += bytes;
        if n < COPY_BATCH {
            return Ok(total);
        }
    }
}

/// Takes one off `g` when dropped (the defragment ended, however).
fn scopeguard_dec(g: &prometheus::IntGauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus::IntGauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(g)
}

#[cfg(test)]
mod tests {
    use crate::{BackendConfig, KvStore, RangeOptions};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn open(dir: &tempfile::TempDir) -> KvStore {
        KvStore::open(&dir.path().join("db"), BackendConfig::default()).unwrap()
    }

    /// Two defragments at once (an operator retrying after etcdctl's
    /// timeout) run one after the other: every row survives in the live
    /// file and after a reopen. Unserialized, the first one's switch
    /// renamed the second's partial copy over the file.
    #[test]
    fn concurrent_defragments_are_serialized() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![3u8; 300];
        let rev = {
            let s = open(&dir);
            for i in 0..6_000u64 {
                let mut t = s.write();
                t.put(format!("k{i:06}").as_bytes(), &value, 0).unwrap();
                t.end(Some(i + 1)).unwrap();
            }
            let runs: Vec<_> = (0..3)
                .map(|_| {
                    let s = s.clone();
                    std::thread::spawn(move || s.defragment().map(|_| ()))
                })
                .collect();
            for r in runs {
                r.join().unwrap().unwrap();
            }
            let r = s.read().unwrap();
            let all = r.range(b"k", b"l", RangeOptions::default()).unwrap();
            assert_eq!(all.kvs.len(), 6_000);
            let mut t = s.write();
            t.put(b"after", &value, 0).unwrap();
            t.end(Some(7_000)).unwrap();
            s.sync().unwrap();
            s.rev()
        };
        let s = open(&dir);
        assert_eq!(s.rev(), rev);
        let r = s.read().unwrap();
        let all = r.range(b"k", b"l", RangeOptions::default()).unwrap();
        assert_eq!(all.kvs.len(), 6_000);
        assert_eq!(
            r.range(b"after", b"aftes", RangeOptions::default())
                .unwrap()
                .kvs
                .len(),
            1
        );
    }

    /// Writers keep writing during the defragment; every write is in the
    /// new file, the file shrinks, and a reopen finds everything.
    #[test]
    fn defragment_while_writing_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![5u8; 200];
        let (rev, written) = {
            let s = open(&dir);
            for round in 0..4 {
                for i in 0..5_000 {
                    let mut t = s.write();
                    t.put(format!("k{i:06}").as_bytes(), &value, 0).unwrap();
                    t.end(Some((round * 5_000 + i + 1) as u64)).unwrap();
                }
            }
            s.compact(s.rev()).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (s, stop, value) = (s.clone(), stop.clone(), value.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    // As the server applies: one batch per group. At most
                    // 2000 writes, paced, so that the file can shrink.
                    while !stop.load(Ordering::SeqCst) && n < 2_000 {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        s.begin_batch();
                        let mut t = s.write();
                        t.put(format!("new{n:08}").as_bytes(), &value, 0).unwrap();
                        t.end(Some(100_000 + n)).unwrap();
                        s.end_batch();
                        n += 1;
                    }
                    n
                })
            };
            let (before, after) = s.defragment().unwrap();
            stop.store(true, Ordering::SeqCst);
            let written = writer.join().unwrap();
            assert!(written > 0, "the writer never got a turn");
            assert!(after < before, "{before} -> {after}");
            let r = s.read().unwrap();
            let all = r.range(b"k", b"l", RangeOptions::default()).unwrap();
            assert_eq!(all.kvs.len(), 5_000);
            let new = r.range(b"new", b"nex", RangeOptions::default()).unwrap();
            assert_eq!(new.kvs.len() as u64, written);
            s.sync().unwrap();
            (s.rev(), written)
        };
        let s = open(&dir);
        assert_eq!(s.rev(), rev);
        assert_eq!(s.consistent_index(), 100_000 + written - 1);
        let r = s.read().unwrap();
        let new = r.range(b"new", b"nex", RangeOptions::default()).unwrap();
        assert_eq!(new.kvs.len() as u64, written);
        assert!(!super::scratch_path(&dir.path().join("db")).exists());
    }
}
