//! Segment file names and which segments to read (etcd `wal/util.go`:
//! `walName`, `parseWALName`, `searchIndex`, `isValidSeq`, `readWALNames`).

use crate::error::{io_err, sync_err, WalError};
use crate::fs::Fs;
use std::path::{Path, PathBuf};

/// A segment file: `%016x-%016x.wal` = (sequence, index of its first entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentName {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentName {
    /// The file name.
    pub(crate) fn file_name(&self) -> String {
        format!("{:016x}-{:016x}.wal", self.seq, self.first_index)
    }

    /// Parses a file name; `None` for anything that is not exactly a
    /// segment name (temporary files, `.broken` files, strays).
    pub(crate) fn parse(name: &str) -> Option<SegmentName> {
        let stem = name.strip_suffix(".wal")?;
        let (seq, index) = stem.split_once('-')?;
        Some(SegmentName {
            seq: parse_hex16(seq)?,
            first_index: parse_hex16(index)?,
        })
    }
}

/// Sixteen lower-case hex digits, as `%016x` writes them.
pub(crate) fn parse_hex16(s: &str) -> Option<u64> {
    let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// The segments in `dir`, oldest first. An absent directory has none.
///
/// # Errors
/// Listing failures other than `NotFound`.
pub(crate) fn list(fs: &dyn Fs, dir: &Path) -> Result<Vec<SegmentName>, WalError> {
    let names = match fs.list(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut segs: Vec<SegmentName> = names.iter().filter_map(|n| SegmentName::parse(n)).collect();
    segs.sort_by_key(|s| s.seq);
    Ok(segs)
}

/// The segments to read for a snapshot at `index`: from the newest one
/// whose first index is at most `index` (every live entry after `index` is
/// in it or later) to the end, checked to have no gap in sequence.
///
/// # Errors
/// [`WalError::NotFound`] when no segment is old enough,
/// [`WalError::MissingSegment`] on a gap.
pub(crate) fn select(
    dir: &Path,
    segs: &[SegmentName],
    index: u64,
) -> Result<Vec<SegmentName>, WalError> {
    let start = segs
        .iter()
        .rposition(|s| s.first_index <= index)
        .ok_or_else(|| WalError::NotFound {
            dir: dir.to_path_buf(),
            index,
        })?;
    let chosen = &segs[start..];
    for pair in chosen.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(WalError::MissingSegment {
                expected: pair[0].seq + 1,
                found: dir.join(pair[1].file_name()),
            });
        }
    }
    Ok(chosen.to_vec())
}

/// The directory holding `path`, `.` for a bare name.
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes the oldest segments of `dir` until at most `max_wals` remain,
/// stopping at the first one still locked by an open [`super::Wal`] (etcd
/// `fileutil.PurgeFile` for `--max-wals`). `0` means keep everything.
/// Returns the removed paths.
///
/// # Errors
/// I/O errors; segments removed before the error stay removed.
pub fn purge(fs: &dyn Fs, dir: &Path, max_wals: usize) -> Result<Vec<PathBuf>, WalError> {
    let segs = list(fs, dir)?;
    let mut removed = Vec::new();
    if max_wals == 0 {
        return Ok(removed);
    }
    for s in &segs[..segs.len().saturating_sub(max_wals)] {
        let path = dir.join(s.file_name());
        let mut f = fs.open(&path, false).map_err(io_err("open", &path))?;
        if !f.try_lock().map_err(io_err("lock", &path))? {
            break;
        }
        // Removed while we hold the lock, so no opener can grab it meanwhile.
        fs.remove_file(&path).map_err(io_err("remove", &path))?;
        tracing::info!(segment = %path.display(), "purged wal segment");
        removed.push(path);
    }
    if !removed.is_empty() {
        fs.sync_dir(dir).map_err(sync_err(dir))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, first_index: u64) -> SegmentName {
        SegmentName { seq, first_index }
    }

    #[test]
    fn names_round_trip_and_strays_are_ignored() {
        let s = seg(0x12, 0xabc);
        assert_eq!(s.file_name(), "0000000000000012-0000000000000abc.wal");
        assert_eq!(SegmentName::parse(&s.file_name()), Some(s));
        for stray in [
            "0.tmp",
            "0000000000000012-0000000000000abc.wal.broken",
            "0000000000000012-0000000000000ABC.wal",
            "12-abc.wal",
            "0000000000000012_0000000000000abc.wal",
        ] {
            assert_eq!(SegmentName::parse(stray), None, "{stray}");
        }
    }

    #[test]
    fn select_starts_at_the_newest_segment_at_or_below_the_index() {
        let segs = [seg(0, 0), seg(1, 10), seg(2, 20)];
        let d = Path::new("/w");
        assert_eq!(select(d, &segs, 0).unwrap().len(), 3);
        assert_eq!(select(d, &segs, 15).unwrap()[0], seg(1, 10));
        assert_eq!(select(d, &segs, 20).unwrap(), vec![seg(2, 20)]);
        let late = [seg(3, 30)];
        assert!(matches!(
            select(d, &late, 5),
            Err(WalError::NotFound { .. })
        ));
        let gap = [seg(0, 0), seg(2, 20)];
        assert!(matches!(
            select(d, &gap, 0),
            Err(WalError::MissingSegment { expected: 1, .. })
        ));
    }
}
