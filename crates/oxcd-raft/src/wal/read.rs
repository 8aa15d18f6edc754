//! Replaying segments into the state raft restarts from (etcd
//! `WAL.ReadAll`).

use super::decode::{self, Scan};
use super::record::{Entry, HardState, Record, SnapshotMarker};
use super::segment::{self, SegmentName};
use crate::error::{io_err, Corruption, WalError};
use crate::fs::{FileHandle, Fs};
use std::path::{Path, PathBuf};

/// What a WAL holds after a snapshot: everything raft needs to restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalContents {
    /// The metadata blob given to [`super::Wal::create`].
    pub metadata: Vec<u8>,
    /// The last hard state saved (zero if none was).
    pub hard_state: HardState,
    /// The live entries after the snapshot's index, in index order, with
    /// overwritten suffixes already replaced.
    pub entries: Vec<Entry>,
}

/// Accumulates records in file order.
#[derive(Debug)]
pub(crate) struct Replay {
    start: SnapshotMarker,
    matched: bool,
    metadata: Option<Vec<u8>>,
    hard_state: HardState,
    entries: Vec<Entry>,
    /// The highest position written so far: the last entry's index, or a
    /// later snapshot's. New segments are named after it.
    pub last_index: u64,
}

impl Replay {
    pub(crate) fn new(start: SnapshotMarker) -> Replay {
        Replay {
            start,
            matched: false,
            metadata: None,
            hard_state: HardState::default(),
            entries: Vec::new(),
            last_index: 0,
        }
    }

    /// Folds one record in. An entry at index `i` replaces whatever the log
    /// held from `i` on: that is how raft truncates a follower's
    /// conflicting suffix.
    fn apply(&mut self, rec: Record) -> Result<(), ReplayError> {
        match rec {
            Record::Entry(e) => {
                if e.index > self.start.index {
                    let keep = e.index - self.start.index - 1;
                    if keep > self.entries.len() as u64 {
                        return Err(ReplayError::Corrupt(Corruption::EntryGap {
                            index: e.index,
                            last: self.start.index + self.entries.len() as u64,
                        }));
                    }
                    // keep <= len, so it fits usize.
                    self.entries.truncate(keep as usize);
                    self.last_index = e.index;
                    self.entries.push(e);
                } else {
                    // Covered by the snapshot, but it still supersedes every
                    // later entry read so far (stale ones a new leader
                    // overwrote before the snapshot's index was committed).
                    // etcd's ReadAll keeps those stale entries.
                    self.entries.clear();
                    self.last_index = e.index;
                }
            }
            Record::HardState(h) => self.hard_state = h,
            Record::Metadata(m) => {
                if self.metadata.as_ref().is_some_and(|old| *old != m) {
                    return Err(ReplayError::Corrupt(Corruption::MetadataConflict));
                }
                self.metadata = Some(m);
            }
            Record::Snapshot(s) => {
                if s.index == self.start.index {
                    if s.term != self.start.term {
                        return Err(ReplayError::Other(WalError::SnapshotMismatch {
                            asked: self.start,
                            found: s,
                        }));
                    }
                    self.matched = true;
                }
                self.last_index = self.last_index.max(s.index);
            }
            Record::Crc(_) => {}
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<WalContents, WalError> {
        if !self.matched {
            return Err(WalError::SnapshotNotFound(self.start));
        }
        Ok(WalContents {
            metadata: self.metadata.unwrap_or_default(),
            hard_state: self.hard_state,
            entries: self.entries,
        })
    }
}

enum ReplayError {
    Corrupt(Corruption),
    Other(WalError),
}

/// An opened segment after reading.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub name: SegmentName,
    pub path: PathBuf,
    pub file: Box<dyn FileHandle>,
}

/// The result of reading the selected segments.
#[derive(Debug)]
pub(crate) struct ReadOutcome {
    pub segments: Vec<OpenSegment>,
    /// The scan of the last segment (its records already folded in).
    pub tail: Scan,
    /// How many good records the last segment holds.
    pub tail_records: usize,
    /// The running checksum when the last segment began.
    pub crc_before_tail: Option<u32>,
    /// The running checksum after the last good record.
    pub crc: Option<u32>,
}

/// The offset just past the last non-zero byte of the first `len` bytes,
/// found by reading backwards in bounded chunks.
fn data_end(file: &dyn crate::fs::FileHandle, len: usize) -> std::io::Result<usize> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..end - start];
        file.read_exact_at(start as u64, chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i + 1);
        }
        end = start;
    }
    Ok(0)
}

/// Opens (and, when `write`, locks) each selected segment, scans it and
/// folds its records into `replay`.
pub(crate) fn read_segments(
    fs: &dyn Fs,
    dir: &Path,
    names: Vec<SegmentName>,
    write: bool,
    replay: &mut Replay,
) -> Result<ReadOutcome, WalError> {
    let mut segments = Vec::with_capacity(names.len());
    let mut crc = None;
    let mut tail = None;
    let (mut tail_records, mut crc_before_tail) = (0, None);
    let count = names.len();
    for (i, name) in names.into_iter().enumerate() {
        let path = dir.join(name.file_name());
        let mut file = fs.open(&path, write).map_err(io_err("open", &path))?;
        if write && !file.try_lock().map_err(io_err("lock", &path))? {
            return Err(WalError::Locked(path));
        }
        let len = file.size().map_err(io_err("stat", &path))?;
        let len = usize::try_from(len).map_err(|_| WalError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: Corruption::BadFrame("segment larger than memory"),
        })?;
        // Segments are preallocated: most of a young segment is zeros. The
        // buffer keeps the file's full length (the decoder sees exactly the
        // file), but only the part up to the last non-zero byte is read
        // into it; the rest stays untouched zeroed memory, which costs no
        // resident pages.
        let end = data_end(&*file, len).map_err(io_err("read", &path))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(0, &mut bytes[..end])
            .map_err(io_err("read", &path))?;
        let corrupt = |offset: u64, reason| WalError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        crc_before_tail = crc;
        let mut scan = decode::scan(&bytes, &mut crc, i + 1 == count)
            .map_err(|b| corrupt(b.offset, b.reason))?;
        if !scan.records.is_empty() && !matches!(scan.records[0], Record::Crc(_)) {
            return Err(corrupt(0, Corruption::MissingCrcRecord));
        }
        tail_records = scan.records.len();
        for rec in std::mem::take(&mut scan.records) {
            replay.apply(rec).map_err(|e| match e {
                // The offset of a logically bad record is not tracked;
                // the segment is named.
                ReplayError::Corrupt(reason) => corrupt(0, reason),
                ReplayError::Other(e) => e,
            })?;
        }
        tail = Some(scan);
        segments.push(OpenSegment { name, path, file });
    }
    let tail = tail.ok_or_else(|| WalError::NotFound {
        dir: dir.to_path_buf(),
        index: replay.start.index,
    })?;
    Ok(ReadOutcome {
        segments,
        tail,
        tail_records,
        crc_before_tail,
        crc,
    })
}

/// Reads the WAL without locking or repairing it (etcd `OpenForRead` +
/// `ReadAll`), for tools and for checking a data directory. A torn tail is
/// ignored, not removed.
///
/// # Errors
/// As for [`super::Wal::open`], except [`WalError::Locked`].
pub fn read_all(fs: &dyn Fs, dir: &Path, snap: SnapshotMarker) -> Result<WalContents, WalError> {
    let all = segment::list(fs, dir)?;
    let names = segment::select(dir, &all, snap.index)?;
    let mut replay = Replay::new(snap);
    read_segments(fs, dir, names, false, &mut replay)?;
    replay.finish()
}

/// The snapshot markers in the WAL that a snapshot file may be loaded for:
/// those at or below the last saved commit index (etcd 3.5
/// `ValidSnapshotEntries`). Reads every segment, without locking.
///
/// # Errors
/// As for [`read_all`].
pub fn valid_snapshot_markers(fs: &dyn Fs, dir: &Path) -> Result<Vec<SnapshotMarker>, WalError> {
    let all = segment::list(fs, dir)?;
    let names = segment::select(dir, &all, all.first().map_or(0, |s| s.first_index))?;
    let mut markers = Vec::new();
    let mut state = HardState::default();
    let mut crc = None;
    let count = names.len();
    for (i, name) in names.into_iter().enumerate() {
        let path = dir.join(name.file_name());
        let file = fs.open(&path, false).map_err(io_err("open", &path))?;
        let len = file.size().map_err(io_err("stat", &path))?;
        let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(0, &mut bytes)
            .map_err(io_err("read", &path))?;
        let scan =
            decode::scan(&bytes, &mut crc, i + 1 == count).map_err(|b| WalError::Corrupt {
                path: path.clone(),
                offset: b.offset,
                reason: b.reason,
            })?;
        for rec in scan.records {
            match rec {
                Record::Snapshot(s) => markers.push(s),
                Record::HardState(h) => state = h,
                _ => {}
            }
        }
    }
    markers.retain(|m| m.index <= state.commit);
    Ok(markers)
}
