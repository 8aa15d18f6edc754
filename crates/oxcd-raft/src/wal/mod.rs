//! The write-ahead log (etcd `wal/wal.go`). The on-disk format, the CRC
//! chain and the crash analysis are in `docs/design/wal.md`.
//!
//! Life cycle: [`Wal::create`] once per member; on every start
//! [`Wal::open`], which reads everything after the newest snapshot, repairs
//! a torn tail and returns a handle positioned for appending; then, once per
//! raft `Ready`, [`Wal::save`] (entries + hard state, one `fdatasync`) and
//! [`Wal::save_snapshot`] when a snapshot file is written;
//! [`Wal::release_to`] and [`purge`] retire old segments.
//!
//! Modules: `record` (types and framing), `decode` (scanning a segment,
//! torn-write detection), `segment` (names, selection), `read` (replay),
//! `pipeline` (the next segment, preallocated in the background).

mod decode;
mod pipeline;
mod read;
mod record;
mod segment;

pub use read::{read_all, valid_snapshot_markers, WalContents};
pub use record::{Entry, HardState, SnapshotMarker};

use crate::error::{io_err, sync_err, WalError};
use crate::fs::{FileHandle, Fs};
use pipeline::FilePipeline;
use read::{read_segments, OpenSegment, Replay};
use record::Record;
pub(crate) use segment::parse_hex16;
pub use segment::purge;
use segment::{parent_of, SegmentName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// etcd's segment size (`wal.SegmentSizeBytes`): a segment is cut once an
/// append leaves it at or past this size, so segments can be a little
/// larger.
pub const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

/// Tunables; the defaults are etcd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// Preallocated size of each segment and the threshold for cutting a new
    /// one. Tests use small values to exercise cut-over.
    pub segment_size: u64,
    /// Prepare the next segment on a background thread (etcd's file
    /// pipeline); otherwise a cut creates and preallocates it inline.
    pub background_preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: SEGMENT_SIZE,
            background_preallocate: true,
        }
    }
}

/// An open, locked WAL positioned for appending. Owned by the raft loop;
/// every method blocks on disk I/O and none is async, so it is not
/// cancel-safety sensitive (run it on a blocking thread).
///
/// After any write or sync failure the handle is poisoned: every later call
/// returns [`WalError::Poisoned`], because what reached the disk is unknown.
#[derive(Debug)]
pub struct Wal {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    opts: WalOptions,
    metadata: Vec<u8>,
    /// The last hard state saved; repeated at the head of each new segment.
    state: HardState,
    /// The highest index written (entry or snapshot marker); a new segment
    /// is named after `last_index + 1`.
    last_index: u64,
    /// The running CRC-32C after the last record written.
    crc: u32,
    /// Open segments, oldest first, each holding its lock; the last is the
    /// tail being appended to. Never empty.
    segments: Vec<OpenSegment>,
    /// Where the next record goes in the tail.
    offset: u64,
    /// Records written to the tail since its last `fdatasync`.
    unsynced: bool,
    poisoned: bool,
    pipeline: Option<FilePipeline>,
    buf: Vec<u8>,
}

/// Whether `dir` holds at least one segment (etcd `wal.Exist`).
pub fn exists(fs: &dyn Fs, dir: &Path) -> bool {
    segment::list(fs, dir).is_ok_and(|s| !s.is_empty())
}

/// The `.tmp` sibling a new WAL is built in before being renamed into place.
fn tmp_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

impl Wal {
    /// Creates a WAL in `dir` holding `metadata`, and opens it for appending
    /// at index 1. The first segment (`0000000000000000-0000000000000000.wal`)
    /// is built in `<dir>.tmp` and renamed into place, so a crash leaves
    /// either no WAL or a whole one. `dir` may exist if it is empty.
    ///
    /// # Errors
    /// [`WalError::AlreadyExists`] if `dir` holds segments; I/O and sync
    /// errors.
    pub fn create(
        fs: Arc<dyn Fs>,
        dir: &Path,
        metadata: &[u8],
        opts: WalOptions,
    ) -> Result<Wal, WalError> {
        if exists(fs.as_ref(), dir) {
            return Err(WalError::AlreadyExists(dir.to_path_buf()));
        }
        let tmp = tmp_dir(dir);
        if fs.exists(&tmp) {
            fs.remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        fs.create_dir_all(&tmp).map_err(io_err("mkdir", &tmp))?;
        let name = SegmentName {
            seq: 0,
            first_index: 0,
        };
        let tmp_path = tmp.join(name.file_name());
        let mut file = fs.create(&tmp_path).map_err(io_err("create", &tmp_path))?;
        if !file.try_lock().map_err(io_err("lock", &tmp_path))? {
            return Err(WalError::Locked(tmp_path));
        }
        file.allocate(opts.segment_size)
            .map_err(io_err("preallocate", &tmp_path))?;
        let mut crc = 0;
        let mut buf = Vec::new();
        for rec in [
            Record::Crc(0),
            Record::Metadata(metadata.to_vec()),
            Record::Snapshot(SnapshotMarker::default()),
        ] {
            rec.encode(&mut buf, &mut crc)?;
        }
        file.write_all_at(0, &buf)
            .map_err(io_err("write", &tmp_path))?;
        file.sync_data().map_err(sync_err(&tmp_path))?;
        fs.sync_dir(&tmp).map_err(sync_err(&tmp))?;
        fs.rename(&tmp, dir).map_err(io_err("rename", &tmp))?;
        let parent = parent_of(dir);
        fs.sync_dir(&parent).map_err(sync_err(&parent))?;
        tracing::info!(dir = %dir.display(), "created wal");
        let segments = vec![OpenSegment {
            path: dir.join(name.file_name()),
            name,
            file,
        }];
        Ok(Wal::assemble(
            fs,
            dir,
            opts,
            metadata.to_vec(),
            HardState::default(),
            0,
            crc,
            segments,
            buf.len() as u64,
        ))
    }

    /// Opens the WAL in `dir` for appending and reads everything recorded
    /// after `snap` (etcd `wal.Open` followed by `ReadAll`). `snap` must be
    /// a marker the WAL recorded: the zero marker for a member with no
    /// snapshot yet, or one passed to [`Wal::save_snapshot`].
    ///
    /// Every segment read is locked against other openers. A torn write at
    /// the end of the last segment is cut off and the tail zeroed and synced
    /// before this returns.
    ///
    /// # Errors
    /// [`WalError::NotFound`], [`WalError::MissingSegment`],
    /// [`WalError::Locked`], [`WalError::Corrupt`] (refusal: nothing is
    /// repaired), [`WalError::SnapshotNotFound`],
    /// [`WalError::SnapshotMismatch`], I/O and sync errors.
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        snap: SnapshotMarker,
        opts: WalOptions,
    ) -> Result<(Wal, WalContents), WalError> {
        let all = segment::list(fs.as_ref(), dir)?;
        let names = segment::select(dir, &all, snap.index)?;
        let mut replay = Replay::new(snap);
        let read = read_segments(fs.as_ref(), dir, names, true, &mut replay)?;
        let last_index = replay.last_index;
        let contents = replay.finish()?;
        let mut segments = read.segments;
        let tail = segments.last_mut().ok_or_else(|| WalError::NotFound {
            dir: dir.to_path_buf(),
            index: snap.index,
        })?;
        let mut offset = read.tail.valid_end;
        let mut crc = read.crc.unwrap_or(0);
        if read.tail.torn {
            tracing::warn!(
                segment = %tail.path.display(),
                offset,
                "wal ends in a torn write; truncating it"
            );
        }
        if read.tail.dirty || read.tail_records < 3 {
            let mut header = Vec::new();
            if tail.name.seq > 0 && read.tail_records < 3 {
                // The cut that made this segment died before its header
                // was whole; rewrite the header it should have had.
                crc = read.crc_before_tail.unwrap_or(0);
                for rec in [
                    Record::Crc(crc),
                    Record::Metadata(contents.metadata.clone()),
                    Record::HardState(contents.hard_state),
                ] {
                    rec.encode(&mut header, &mut crc)?;
                }
                offset = 0;
            }
            repair_tail(tail, offset, &header, opts.segment_size)?;
            offset += header.len() as u64;
        }
        let wal = Wal::assemble(
            fs,
            dir,
            opts,
            contents.metadata.clone(),
            contents.hard_state,
            last_index,
            crc,
            segments,
            offset,
        );
        Ok((wal, contents))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        fs: Arc<dyn Fs>,
        dir: &Path,
        opts: WalOptions,
        metadata: Vec<u8>,
        state: HardState,
        last_index: u64,
        crc: u32,
        segments: Vec<OpenSegment>,
        offset: u64,
    ) -> Wal {
        let pipeline = opts
            .background_preallocate
            .then(|| FilePipeline::spawn(Arc::clone(&fs), dir.to_path_buf(), opts.segment_size));
        Wal {
            fs,
            dir: dir.to_path_buf(),
            opts,
            metadata,
            state,
            last_index,
            crc,
            segments,
            offset,
            unsynced: false,
            poisoned: false,
            pipeline,
            buf: Vec::new(),
        }
    }

    /// The highest index recorded: the last entry's, or a later snapshot
    /// marker's.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The last hard state saved.
    pub fn hard_state(&self) -> HardState {
        self.state
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many segments this handle holds open and locked.
    pub fn locked_segments(&self) -> usize {
        self.segments.len()
    }

    /// Appends `entries` then `hard_state` (skipped when zero) and makes
    /// them durable with one `fdatasync` (etcd `WAL.Save`). The sync is
    /// skipped only when nothing raft must remember changed (etcd
    /// `raft.MustSync`: no entries, same term and vote; a commit index
    /// alone can be relearned), and the next sync covers it.
    ///
    /// An entry whose index is at or below the last one replaces the log
    /// from there on (raft truncating a conflicting suffix); entries must be
    /// contiguous and start no later than `last_index() + 1`. When the tail
    /// reaches the segment size a new segment is cut, which adds the syncs
    /// of the new file and the directory.
    ///
    /// # Errors
    /// [`WalError::InvalidAppend`] (nothing written);
    /// [`WalError::SyncFailed`] and I/O errors, which poison the handle and
    /// are fatal to the caller; [`WalError::Poisoned`].
    pub fn save(&mut self, hard_state: &HardState, entries: &[Entry]) -> Result<(), WalError> {
        self.check_usable()?;
        if hard_state.is_empty() && entries.is_empty() {
            return Ok(());
        }
        self.check_append(entries)?;
        let must_sync = !entries.is_empty()
            || hard_state.term != self.state.term
            || hard_state.vote != self.state.vote;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut crc = self.crc;
        for e in entries {
            Record::Entry(e.clone()).encode(&mut buf, &mut crc)?;
        }
        if !hard_state.is_empty() {
            Record::HardState(*hard_state).encode(&mut buf, &mut crc)?;
        }
        if oxcd_failpoint::broken("wal-in-memory") {
            // Deliberately broken (checker validation): nothing reaches
            // the file, yet the caller is told it is durable.
            self.buf = buf;
            if let Some(last) = entries.last() {
                self.last_index = last.index;
            }
            if !hard_state.is_empty() {
                self.state = *hard_state;
            }
            return Ok(());
        }
        let result = self.append(&buf, crc);
        self.buf = buf;
        result?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if !hard_state.is_empty() {
            self.state = *hard_state;
        }
        if self.offset >= self.opts.segment_size {
            self.cut()
        } else if must_sync {
            self.sync()
        } else {
            Ok(())
        }
    }

    /// Records that a snapshot at `marker` has been saved, and syncs (etcd
    /// `WAL.SaveSnapshot`). Save the snapshot file first, then this, so a
    /// marker never points at a missing file.
    ///
    /// # Errors
    /// As for [`Wal::save`].
    pub fn save_snapshot(&mut self, marker: SnapshotMarker) -> Result<(), WalError> {
        self.check_usable()?;
        let mut buf = Vec::new();
        let mut crc = self.crc;
        Record::Snapshot(marker).encode(&mut buf, &mut crc)?;
        self.append(&buf, crc)?;
        self.last_index = self.last_index.max(marker.index);
        self.sync()
    }

    /// Makes everything written so far durable, if anything is pending.
    ///
    /// # Errors
    /// [`WalError::SyncFailed`] (fatal; poisons), [`WalError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if !self.unsynced {
            return Ok(());
        }
        // `error` here fails the fsync (as a disk would: fatal, see `save`).
        let injected = oxcd_failpoint::failpoint_error!("walBeforeSync");
        let tail = self.tail_mut();
        let started = std::time::Instant::now();
        let res = injected
            .and_then(|()| tail.file.sync_data())
            .map_err(sync_err(&tail.path));
        crate::metrics::get()
            .wal_fsync
            .observe(started.elapsed().as_secs_f64());
        self.poison_on_err(res)?;
        self.unsynced = false;
        oxcd_failpoint::failpoint!("walAfterSync");
        Ok(())
    }

    /// Releases the locks of segments wholly before `index`, keeping the
    /// newest segment that starts before it, which may still hold entries
    /// at or after `index` (etcd `WAL.ReleaseLockTo`). Called after a
    /// snapshot at `index`; released segments can then be removed by
    /// [`purge`].
    pub fn release_to(&mut self, index: u64) {
        let keep_from = match self
            .segments
            .iter()
            .position(|s| s.name.first_index >= index)
        {
            Some(p) => p.saturating_sub(1),
            None => self.segments.len() - 1,
        };
        if keep_from > 0 {
            // Dropping the handles releases their locks.
            self.segments.drain(..keep_from);
        }
    }

    /// Syncs anything pending and closes the WAL, releasing its locks.
    ///
    /// # Errors
    /// As for [`Wal::sync`]; the locks are released either way.
    pub fn close(mut self) -> Result<(), WalError> {
        self.sync()
    }

    /// Entries must be contiguous and start no later than `last_index + 1`.
    fn check_append(&self, entries: &[Entry]) -> Result<(), WalError> {
        if let Some(first) = entries.first() {
            if first.index > self.last_index + 1 {
                return Err(WalError::InvalidAppend {
                    index: first.index,
                    last: self.last_index,
                });
            }
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                return Err(WalError::InvalidAppend {
                    index: pair[1].index,
                    last: pair[0].index,
                });
            }
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_err<T>(&mut self, res: Result<T, WalError>) -> Result<T, WalError> {
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    fn tail_mut(&mut self) -> &mut OpenSegment {
        // Invariant: `segments` is never empty (release_to keeps the tail).
        let last = self.segments.len() - 1;
        &mut self.segments[last]
    }

    /// Writes encoded frames at the tail and adopts the checksum after them.
    fn append(&mut self, frames: &[u8], crc_after: u32) -> Result<(), WalError> {
        let offset = self.offset;
        let tail = self.tail_mut();
        let res = tail
            .file
            .write_all_at(offset, frames)
            .map_err(io_err("write", &tail.path));
        self.poison_on_err(res)?;
        crate::metrics::get()
            .wal_write_bytes
            .add(i64::try_from(frames.len()).unwrap_or(i64::MAX));
        self.offset += frames.len() as u64;
        self.crc = crc_after;
        self.unsynced = true;
        Ok(())
    }

    /// Closes the full tail and starts the next segment (etcd `WAL.cut`).
    fn cut(&mut self) -> Result<(), WalError> {
        let res = self.cut_steps();
        self.poison_on_err(res)
    }

    /// The cut, step by step; each step's durability precedes the next, so
    /// a crash between any two leaves a readable WAL (design doc, "Cut").
    fn cut_steps(&mut self) -> Result<(), WalError> {
        // 1. Drop the tail's preallocated zeros and make its records durable
        //    (this is the save's fdatasync).
        let offset = self.offset;
        let tail = self.tail_mut();
        tail.file
            .set_len(offset)
            .map_err(io_err("truncate", &tail.path))?;
        let started = std::time::Instant::now();
        tail.file.sync_data().map_err(sync_err(&tail.path))?;
        crate::metrics::get()
            .wal_fsync
            .observe(started.elapsed().as_secs_f64());
        let next = SegmentName {
            seq: tail.name.seq + 1,
            first_index: self.last_index + 1,
        };
        self.unsynced = false;
        // 2. A preallocated temporary file, locked before it gets its name.
        let (tmp, mut file) = match &self.pipeline {
            Some(p) => p.take()?,
            None => pipeline::alloc(self.fs.as_ref(), &self.dir, 0, self.opts.segment_size)?,
        };
        if !file.try_lock().map_err(io_err("lock", &tmp))? {
            return Err(WalError::Locked(tmp));
        }
        // 3. Its header: the running checksum, metadata, hard state; synced.
        let mut header = Vec::new();
        let mut crc = self.crc;
        for rec in [
            Record::Crc(crc),
            Record::Metadata(self.metadata.clone()),
            Record::HardState(self.state),
        ] {
            rec.encode(&mut header, &mut crc)?;
        }
        file.write_all_at(0, &header)
            .map_err(io_err("write", &tmp))?;
        file.sync_data().map_err(sync_err(&tmp))?;
        // 4. Its real name, made durable.
        let path = self.dir.join(next.file_name());
        self.fs
            .rename(&tmp, &path)
            .map_err(io_err("rename", &tmp))?;
        self.fs.sync_dir(&self.dir).map_err(sync_err(&self.dir))?;
        tracing::debug!(segment = %path.display(), "cut wal segment");
        self.segments.push(OpenSegment {
            name: next,
            path,
            file,
        });
        self.offset = header.len() as u64;
        self.crc = crc;
        Ok(())
    }
}

/// Cuts the tail segment at `offset`, writes `header` there (empty unless
/// the header itself must be rebuilt), zeroes and re-preallocates the rest,
/// and syncs (etcd `Repair` + `zeroToEnd`).
fn repair_tail(
    tail: &mut OpenSegment,
    offset: u64,
    header: &[u8],
    segment_size: u64,
) -> Result<(), WalError> {
    let f: &mut dyn FileHandle = tail.file.as_mut();
    f.set_len(offset).map_err(io_err("truncate", &tail.path))?;
    if !header.is_empty() {
        f.write_all_at(offset, header)
            .map_err(io_err("write", &tail.path))?;
    }
    f.allocate(segment_size)
        .map_err(io_err("preallocate", &tail.path))?;
    f.sync_data().map_err(sync_err(&tail.path))
}
