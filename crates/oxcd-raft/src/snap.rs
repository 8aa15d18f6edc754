//! Raft snapshot files (etcd `etcdserver/api/snap/snapshotter.go`).
//!
//! One file per snapshot, `%016x-%016x.snap` = (term, index), holding the
//! encoded raft snapshot (its metadata and the opaque payload the raft loop
//! supplies) behind a CRC-32C. Layout (little-endian):
//!
//! ```text
//! 0        8        12       16       24       32
//! +--------+--------+--------+--------+--------+------------//------+
//! | magic  |version | crc32c |  term  | index  | data ...            |
//! |oxcdsnap|   1    |  of →  |        |        |                     |
//! +--------+--------+--------+--------+--------+------------//------+
//!                            `-------- covered by crc32c ----------'
//! ```
//!
//! A file is written as `<name>.tmp`, synced, renamed and the directory
//! synced, so a crash never leaves a half-written `.snap`. Loading walks
//! the files newest first and renames any that fail their checks to
//! `<name>.broken` (as etcd does), falling back to the next.

use crate::error::SnapError;
use crate::fs::Fs;
use crate::wal::SnapshotMarker;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"oxcdsnap";
const VERSION: u32 = 1;
const HEADER: usize = 32;

/// A raft snapshot as stored: its position and the opaque encoded body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The term of the last entry the snapshot covers.
    pub term: u64,
    /// The index of the last entry the snapshot covers.
    pub index: u64,
    /// The encoded raft snapshot (conf state and application data).
    pub data: Vec<u8>,
}

impl Snapshot {
    /// The WAL marker for this snapshot.
    pub fn marker(&self) -> SnapshotMarker {
        SnapshotMarker {
            index: self.index,
            term: self.term,
        }
    }
}

/// The file name for a snapshot at (`term`, `index`).
pub fn snap_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (term, index) = stem.split_once('-')?;
    Some((
        crate::wal::parse_hex16(term)?,
        crate::wal::parse_hex16(index)?,
    ))
}

fn encode(snap: &Snapshot) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + snap.data.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&snap.term.to_le_bytes());
    buf.extend_from_slice(&snap.index.to_le_bytes());
    buf.extend_from_slice(&snap.data);
    let crc = crc32c::crc32c(&buf[16..]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(bytes: &[u8]) -> Result<Snapshot, &'static str> {
    if bytes.len() < HEADER {
        return Err("shorter than its header");
    }
    if &bytes[..8] != MAGIC {
        return Err("bad magic");
    }
    let word = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let dword = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if word(8) != VERSION {
        return Err("unknown version");
    }
    if word(12) != crc32c::crc32c(&bytes[16..]) {
        return Err("crc mismatch");
    }
    Ok(Snapshot {
        term: dword(16),
        index: dword(24),
        data: bytes[HEADER..].to_vec(),
    })
}

/// Saves and loads the snapshot files of one directory (`member/snap`).
/// Methods block on disk I/O.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
}

impl Snapshotter {
    /// A snapshotter for `dir`, which must exist.
    pub fn new(fs: Arc<dyn Fs>, dir: &Path) -> Snapshotter {
        Snapshotter {
            fs,
            dir: dir.to_path_buf(),
        }
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `snap` durably and returns its path (etcd `SaveSnap`).
    ///
    /// # Errors
    /// [`SnapError::SyncFailed`] (fatal) and I/O errors; a failed save
    /// leaves at most a `.tmp` file, never a partial `.snap`.
    pub fn save(&self, snap: &Snapshot) -> Result<PathBuf, SnapError> {
        let name = snap_name(snap.term, snap.index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let io = |op, p: &Path| {
            let p = p.to_path_buf();
            move |source| SnapError::Io {
                op,
                path: p,
                source,
            }
        };
        let sync = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SnapError::SyncFailed { path: p, source }
        };
        let started = std::time::Instant::now();
        let bytes = encode(snap);
        let m = crate::metrics::get();
        m.snap_marshalling.observe(started.elapsed().as_secs_f64());
        let mut f = self.fs.create(&tmp).map_err(io("create", &tmp))?;
        f.write_all_at(0, &bytes).map_err(io("write", &tmp))?;
        let syncing = std::time::Instant::now();
        f.sync_data().map_err(sync(&tmp))?;
        m.snap_fsync.observe(syncing.elapsed().as_secs_f64());
        drop(f);
        self.fs.rename(&tmp, &path).map_err(io("rename", &tmp))?;
        self.fs.sync_dir(&self.dir).map_err(sync(&self.dir))?;
        m.snap_save.observe(started.elapsed().as_secs_f64());
        Ok(path)
    }

    /// The snapshot file names, newest (highest term, then index) first.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn names(&self) -> Result<Vec<String>, SnapError> {
        let mut names: Vec<String> = self
            .fs
            .list(&self.dir)
            .map_err(|source| SnapError::Io {
                op: "list",
                path: self.dir.clone(),
                source,
            })?
            .into_iter()
            .filter(|n| parse_name(n).is_some())
            .collect();
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names)
    }

    /// Loads the newest valid snapshot (etcd `Load`), renaming broken files
    /// to `.broken` on the way.
    ///
    /// # Errors
    /// [`SnapError::NoSnapshot`] if none is valid; I/O errors.
    pub fn load(&self) -> Result<Snapshot, SnapError> {
        self.load_matching(|_| true)
    }

    /// Loads the newest valid snapshot whose position the WAL recorded
    /// (etcd 3.5 `LoadNewestAvailable`, fed by
    /// [`crate::wal::valid_snapshot_markers`]), so that the snapshot and the
    /// WAL replay always line up.
    ///
    /// # Errors
    /// As for [`Snapshotter::load`].
    pub fn load_newest_available(&self, markers: &[SnapshotMarker]) -> Result<Snapshot, SnapError> {
        self.load_matching(|m| markers.contains(&m))
    }

    fn load_matching(&self, want: impl Fn(SnapshotMarker) -> bool) -> Result<Snapshot, SnapError> {
        for name in self.names()? {
            let Some((term, index)) = parse_name(&name) else {
                continue;
            };
            if !want(SnapshotMarker { index, term }) {
                continue;
            }
            let path = self.dir.join(&name);
            match read(self.fs.as_ref(), &path) {
                Ok(s) if (s.term, s.index) == (term, index) => return Ok(s),
                Ok(_) => self.mark_broken(&path, "contents do not match its name")?,
                Err(SnapError::Broken { reason, .. }) => self.mark_broken(&path, reason)?,
                Err(e) => return Err(e),
            }
        }
        Err(SnapError::NoSnapshot)
    }

    fn mark_broken(&self, path: &Path, reason: &str) -> Result<(), SnapError> {
        let mut broken = path.as_os_str().to_owned();
        broken.push(".broken");
        tracing::warn!(file = %path.display(), reason, "snapshot file is broken; renaming it");
        self.fs
            .rename(path, Path::new(&broken))
            .map_err(|source| SnapError::Io {
                op: "rename",
                path: path.to_path_buf(),
                source,
            })
    }

    /// Removes the oldest snapshot files beyond the newest `max_snapshots`
    /// (`--max-snapshots`; `0` keeps all). Returns the removed paths.
    ///
    /// # Errors
    /// I/O errors; files removed before the error stay removed.
    pub fn purge(&self, max_snapshots: usize) -> Result<Vec<PathBuf>, SnapError> {
        let mut removed = Vec::new();
        if max_snapshots == 0 {
            return Ok(removed);
        }
        for name in self.names()?.into_iter().skip(max_snapshots) {
            let path = self.dir.join(name);
            self.fs.remove_file(&path).map_err(|source| SnapError::Io {
                op: "remove",
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
        if !removed.is_empty() {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|source| SnapError::SyncFailed {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok(removed)
    }
}

/// Reads and checks one snapshot file (etcd `snap.Read`).
///
/// # Errors
/// [`SnapError::Broken`] when it fails its checks; I/O errors.
pub fn read(fs: &dyn Fs, path: &Path) -> Result<Snapshot, SnapError> {
    let io = |op| {
        move |source| SnapError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let f = fs.open(path, false).map_err(io("open"))?;
    let len = f.size().map_err(io("stat"))?;
    let len = usize::try_from(len).map_err(|_| SnapError::Broken {
        path: path.to_path_buf(),
        reason: "larger than memory",
    })?;
    let mut bytes = vec![0u8; len];
    f.read_exact_at(0, &mut bytes).map_err(io("read"))?;
    decode(&bytes).map_err(|reason| SnapError::Broken {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;

    #[test]
    fn encoding_round_trips_and_detects_damage() {
        let s = Snapshot {
            term: 3,
            index: 77,
            data: b"conf state and kv".to_vec(),
        };
        let mut bytes = encode(&s);
        assert_eq!(decode(&bytes), Ok(s));
        bytes[40] ^= 1;
        assert_eq!(decode(&bytes), Err("crc mismatch"));
        assert_eq!(decode(&bytes[..20]), Err("shorter than its header"));
    }

    #[test]
    fn names_sort_by_term_then_index() {
        assert_eq!(
            snap_name(2, 0x30d41),
            "0000000000000002-0000000000030d41.snap"
        );
        assert_eq!(parse_name(&snap_name(2, 9)), Some((2, 9)));
        assert_eq!(
            parse_name("0000000000000002-0000000000030d41.snap.broken"),
            None
        );
        assert!(snap_name(2, 1) > snap_name(1, 0xffff));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }

        /// A file the snapshotter wrote, damaged: decoded or refused; when
        /// decoded, what it holds passed the CRC.
        #[test]
        fn damaged_files_decode_or_fail(
            term in any::<u64>(),
            index in any::<u64>(),
            data in prop::collection::vec(any::<u8>(), 0..64),
            damage in damages(4),
        ) {
            let good = encode(&Snapshot { term, index, data });
            let bad = damaged(good, &damage);
            if let Ok(s) = decode(&bad) {
                prop_assert_eq!(encode(&s), bad);
            }
        }
    }
}
