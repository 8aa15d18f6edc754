//! etcd's write-ahead log (`member/wal/*.wal`, etcd's `wal` package),
//! read (what a member had promised before it stopped) and written (a new
//! log that starts after a snapshot).
//!
//! Each file `<seq>-<index>.wal` (hex, 16 digits each) is a sequence of
//! frames: an 8-byte little-endian length whose low 56 bits are the record
//! size and whose top byte, when its high bit is set, holds the padding
//! (0–7 bytes) that aligns the next frame to 8 bytes; then the record, a
//! protobuf `walpb.Record{type=1, crc=2, data=3}`. A zero length (or the
//! end of the file) ends a file: etcd preallocates them with zeros.
//!
//! Record types: 1 metadata (`etcdserverpb.Metadata{NodeID, ClusterID}`),
//! 2 entry (`raftpb.Entry`), 3 hard state (`raftpb.HardState`), 4 crc,
//! 5 snapshot marker (`walpb.Snapshot{index, term}`). Every record but a
//! crc record carries the CRC-32C of its data chained from the one before
//! (Go's `crc32.Update` with the Castagnoli table); a crc record restarts
//! the chain with the value it carries (the first record of each file
//! carries the last file's running CRC).

use std::path::{Path, PathBuf};

use prost::Message;

/// What can go wrong reading a WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record does not check out.
    #[error("{path}: {what} (at byte {offset})")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in it.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// No WAL files in the directory.
    #[error("{0}: no WAL files")]
    Empty(PathBuf),
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct Metadata {
    #[prost(uint64, tag = "1")]
    node_id: u64,
    #[prost(uint64, tag = "2")]
    cluster_id: u64,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotMarker {
    #[prost(uint64, tag = "1")]
    index: u64,
    #[prost(uint64, tag = "2")]
    term: u64,
}

/// `raftpb.Entry`.
#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    /// 0 normal, 1 conf change, 2 conf change v2.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The entry's term.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// Its log index.
    #[prost(uint64, tag = "3")]
    pub index: u64,
    /// The proposal (`InternalRaftRequest`, or a `ConfChange`).
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// `raftpb.HardState`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct HardState {
    /// Current term.
    #[prost(uint64, tag = "1")]
    pub term: u64,
    /// Vote in that term.
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    /// Highest committed index.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// A whole WAL, read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EtcdWal {
    /// This member's ID.
    pub node_id: u64,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// Snapshot markers, in order: `(index, term)`.
    pub snapshots: Vec<(u64, u64)>,
    /// The last hard state.
    pub hard_state: Option<HardState>,
    /// The log: a later entry at an index replaces the earlier one and
    /// everything after it, as etcd's reader does.
    pub entries: Vec<Entry>,
    /// Where the last file ends in a torn record (file, offset), if it
    /// does: a write cut short by a crash. Reading stopped there, as
    /// etcd's repair truncates there.
    pub torn: Option<(PathBuf, usize)>,
}

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

/// The `.wal` files of `dir`, in order.
///
/// # Errors
/// [`WalError::Io`] if the directory cannot be listed.
pub fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let io = |source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 37 && n.ends_with(".wal"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every WAL file of `dir` (etcd's `member/wal`).
///
/// A torn record at the end of the last file — cut short, or with a CRC
/// or encoding that fails and a 512-byte sector of zeros in it, what a
/// crash mid-write leaves — ends the log there, as etcd's `ReadAll`
/// reports `ErrUnexpectedEOF` and its repair truncates there
/// ([`EtcdWal::torn`] says where). Anywhere else it is corruption.
///
/// # Errors
/// No files, an unreadable file, a frame or record that does not decode,
/// or a CRC that does not match, unless torn as above (etcd refuses those
/// too).
pub fn read_dir(dir: &Path) -> Result<EtcdWal, WalError> {
    let files = wal_files(dir)?;
    if files.is_empty() {
        return Err(WalError::Empty(dir.to_path_buf()));
    }
    let mut wal = EtcdWal::default();
    let mut crc = 0u32;
    let count = files.len();
    for (i, path) in files.into_iter().enumerate() {
        let data = std::fs::read(&path).map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
        read_file(&path, &data, &mut crc, &mut wal, i + 1 == count)?;
    }
    Ok(wal)
}

/// etcd's sector size for torn-write detection (`minSectorSize`).
const SECTOR: usize = 512;

/// etcd's `isTornEntry`: whether any sector-aligned piece of the frame at
/// `data[start..end]` (clipped to the file) is all zeros.
fn is_torn(data: &[u8], start: usize, end: usize) -> bool {
    let end = end.min(data.len());
    let mut at = start;
    while at < end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        let piece = &data[at..next.min(end)];
        if piece.iter().all(|b| *b == 0) {
            return true;
        }
        at = next;
    }
    false
}

fn read_file(
    path: &Path,
    data: &[u8],
    crc: &mut u32,
    wal: &mut EtcdWal,
    last: bool,
) -> Result<(), WalError> {
    let bad = |offset: usize, what: String| WalError::Invalid {
        path: path.to_path_buf(),
        offset,
        what,
    };
    let mut at = 0;
    while at + 8 <= data.len() {
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&data[at..at + 8]);
        let field = u64::from_le_bytes(len8);
        if field == 0 {
            break; // preallocated space
        }
        let size = (field & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if field >> 63 == 1 {
            ((field >> 56) & 0x7) as usize
        } else {
            0
        };
        let start = at + 8;
        let frame_end = start.saturating_add(size).saturating_add(pad);
        // A torn last record ends the log (see `read_dir`).
        let torn = |what: String| {
            if last && is_torn(data, start, frame_end) {
                Ok(())
            } else {
                Err(bad(at, what))
            }
        };
        let Some(body) = data.get(start..start.saturating_add(size)) else {
            if last {
                wal.torn = Some((path.to_path_buf(), at));
                return Ok(());
            }
            return Err(bad(at, format!("record of {size} bytes runs past the end")));
        };
        let rec = match Record::decode(body) {
            Ok(rec) => rec,
            Err(e) => {
                torn(format!("record: {e}"))?;
                wal.torn = Some((path.to_path_buf(), at));
                return Ok(());
            }
        };
        let want = crc32c::crc32c_append(*crc, &rec.data);
        if rec.kind != CRC && want != rec.crc {
            torn(format!("crc mismatch: {:08x} vs {want:08x}", rec.crc))?;
            wal.torn = Some((path.to_path_buf(), at));
            return Ok(());
        }
        if rec.kind == CRC {
            if *crc != 0 && rec.crc != *crc {
                return Err(bad(
                    at,
                    format!("crc chain broken: {:08x} vs {:08x}", rec.crc, *crc),
                ));
            }
            *crc = rec.crc;
        } else {
            // Checked above.
            *crc = rec.crc;
        }
        match rec.kind {
            METADATA => {
                let m = Metadata::decode(rec.data.as_slice())
                    .map_err(|e| bad(at, format!("metadata: {e}")))?;
                wal.node_id = m.node_id;
                wal.cluster_id = m.cluster_id;
            }
            ENTRY => {
                let e = Entry::decode(rec.data.as_slice())
                    .map_err(|e| bad(at, format!("entry: {e}")))?;
                let keep = wal.entries.partition_point(|x| x.index < e.index);
                wal.entries.truncate(keep);
                wal.entries.push(e);
            }
            STATE => {
                let s = HardState::decode(rec.data.as_slice())
                    .map_err(|e| bad(at, format!("hard state: {e}")))?;
                wal.hard_state = Some(s);
            }
            SNAPSHOT => {
                let s = SnapshotMarker::decode(rec.data.as_slice())
                    .map_err(|e| bad(at, format!("snapshot marker: {e}")))?;
                wal.snapshots.push((s.index, s.term));
            }
            CRC => {}
            other => return Err(bad(at, format!("unknown record type {other}"))),
        }
        at = start + size + pad;
    }
    Ok(())
}

/// Writes a new etcd WAL into the empty or missing directory `dir`: one
/// file `0000000000000000-0000000000000000.wal` holding, as etcd's
/// `wal.Create`, `SaveSnapshot` and `Save` write them, a crc record, the
/// metadata (`node_id`, `cluster_id`), the empty snapshot marker, the
/// marker `snapshot` (`(index, term)`, unless zero), `entries` and
/// `hard_state`; synced. etcd opens it at `snapshot` and appends after it.
///
/// # Errors
/// [`WalError::Io`].
pub fn write_new(
    dir: &Path,
    node_id: u64,
    cluster_id: u64,
    snapshot: (u64, u64),
    entries: &[Entry],
    hard_state: HardState,
) -> Result<PathBuf, WalError> {
    let path = dir.join(format!("{:016x}-{:016x}.wal", 0, 0));
    let io = |source| WalError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut out = Vec::new();
    let mut crc = 0u32;
    let mut frame = |kind: i64, data: Vec<u8>| encode_frame(&mut out, &mut crc, kind, data);
    frame(CRC, Vec::new());
    frame(
        METADATA,
        Metadata {
            node_id,
            cluster_id,
        }
        .encode_to_vec(),
    );
    frame(SNAPSHOT, SnapshotMarker::default().encode_to_vec());
    if snapshot != (0, 0) {
        frame(
            SNAPSHOT,
            SnapshotMarker {
                index: snapshot.0,
                term: snapshot.1,
            }
            .encode_to_vec(),
        );
    }
    for e in entries {
        frame(ENTRY, e.encode_to_vec());
    }
    frame(STATE, hard_state.encode_to_vec());
    crate::write_synced(&path, &out).map_err(io)?;
    Ok(path)
}

/// Appends one frame to `out` as etcd's encoder writes it: the length
/// (with the padding in its top byte), the `walpb.Record`, the padding.
/// Every record but a crc record carries the CRC chained from `crc`; a
/// crc record carries `crc` itself.
fn encode_frame(out: &mut Vec<u8>, crc: &mut u32, kind: i64, data: Vec<u8>) {
    if kind != CRC {
        *crc = crc32c::crc32c_append(*crc, &data);
    }
    let rec = Record {
        kind,
        crc: *crc,
        data,
    }
    .encode_to_vec();
    let pad = (8 - rec.len() % 8) % 8;
    let mut len = rec.len() as u64;
    if pad != 0 {
        len |= (0x80 | pad as u64) << 56;
    }
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&rec);
    out.extend(std::iter::repeat_n(0, pad));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;

    /// Frames `records` as etcd's encoder does, chaining the CRC from
    /// `crc`; returns the bytes and the running CRC.
    fn encode(records: &[(i64, Vec<u8>)], mut crc: u32) -> (Vec<u8>, u32) {
        let mut out = Vec::new();
        for (kind, data) in records {
            encode_frame(&mut out, &mut crc, *kind, data.clone());
        }
        (out, crc)
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
        Entry {
            kind: 0,
            term,
            index,
            data: data.to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn two_files_chain_and_later_entries_replace_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata {
            node_id: 7,
            cluster_id: 9,
        }
        .encode_to_vec();
        let (mut first, crc) = encode(
            &[
                (CRC, vec![]),
                (METADATA, meta.clone()),
                (
                    SNAPSHOT,
                    SnapshotMarker { index: 0, term: 0 }.encode_to_vec(),
                ),
                (ENTRY, entry(1, 1, b"a")),
                (ENTRY, entry(2, 1, b"bb")),
                (ENTRY, entry(3, 1, b"ccc")),
            ],
            0,
        );
        first.extend_from_slice(&[0; 64]); // preallocated tail
        let (second, _) = encode(
            &[
                (CRC, vec![]),
                (METADATA, meta),
                // A new leader overwrote index 2 onwards.
                (ENTRY, entry(2, 2, b"x")),
                (
                    STATE,
                    HardState {
                        term: 2,
                        vote: 7,
                        commit: 2,
                    }
                    .encode_to_vec(),
                ),
            ],
            crc,
        );
        std::fs::write(
            dir.path().join("0000000000000000-0000000000000000.wal"),
            &first,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("0000000000000001-0000000000000004.wal"),
            &second,
        )
        .unwrap();
        let wal = read_dir(dir.path()).unwrap();
        assert_eq!((wal.node_id, wal.cluster_id), (7, 9));
        assert_eq!(wal.snapshots, vec![(0, 0)]);
        let got: Vec<(u64, u64, &[u8])> = wal
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.as_slice()))
            .collect();
        assert_eq!(got, vec![(1, 1, &b"a"[..]), (2, 2, &b"x"[..])]);
        assert_eq!(wal.hard_state.map(|h| h.commit), Some(2));

        // The second file's crc record must carry the first file's CRC.
        let (broken, _) = encode(&[(CRC, vec![]), (ENTRY, entry(4, 2, b"y"))], crc ^ 1);
        std::fs::write(
            dir.path().join("0000000000000001-0000000000000004.wal"),
            &broken,
        )
        .unwrap();
        assert!(read_dir(dir.path())
            .unwrap_err()
            .to_string()
            .contains("crc chain"));
    }

    /// What a crash mid-write leaves: the last record's tail still zeros
    /// (a 512-byte sector never written). In the last file the log ends
    /// before it, as etcd's repair truncates; in an earlier file, or with
    /// garbage instead of zeros, it is corruption.
    #[test]
    fn a_torn_last_record_ends_the_log_like_etcds_repair() {
        let big = vec![7u8; 1500];
        let (good, _) = encode(
            &[
                (CRC, vec![]),
                (ENTRY, entry(1, 1, b"kept")),
                (ENTRY, entry(2, 1, &big)),
            ],
            0,
        );
        let second = frame_starts(&good)[2];
        let mut torn = good.clone();
        // Zero the sector holding the record's last bytes.
        let end = good.len();
        let sector_start = ((end - 1) / SECTOR) * SECTOR;
        torn[sector_start..end].fill(0);
        assert!(sector_start > second + 8, "the sector is inside the record");
        let mut wal = EtcdWal::default();
        read_file(Path::new("w.wal"), &torn, &mut 0, &mut wal, true).unwrap();
        assert_eq!(wal.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [1]);
        assert_eq!(wal.torn.as_ref().map(|(_, at)| *at), Some(second));
        // Not the last file: refused.
        let err = read_file(
            Path::new("w.wal"),
            &torn,
            &mut 0,
            &mut EtcdWal::default(),
            false,
        );
        assert!(matches!(err, Err(WalError::Invalid { offset, .. }) if offset == second));
        // Garbage, not zeros: refused even in the last file.
        let mut garbage = good.clone();
        garbage[end - 3] ^= 0x55;
        let err = read_file(
            Path::new("w.wal"),
            &garbage,
            &mut 0,
            &mut EtcdWal::default(),
            true,
        );
        assert!(matches!(err, Err(WalError::Invalid { .. })), "{err:?}");
    }

    #[test]
    fn damaged_records_are_refused_with_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000000-0000000000000000.wal");
        let (good, _) = encode(&[(CRC, vec![]), (ENTRY, entry(1, 1, b"hello"))], 0);
        // A flipped data byte: CRC mismatch.
        let mut flipped = good.clone();
        let at = flipped
            .windows(5)
            .position(|w| w == b"hello")
            .expect("the entry's data");
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let e = read_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("0000000000000000-0000000000000000.wal"), "{e}");
        // A frame running past the end of the last file: torn, the log
        // ends before it (etcd repairs there).
        std::fs::write(&path, &good[..good.len() - 4]).unwrap();
        let wal = read_dir(dir.path()).unwrap();
        assert!(wal.entries.is_empty());
        assert_eq!(
            wal.torn.map(|(_, at)| at),
            frame_starts(&good).get(1).copied()
        );
        // No files at all.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(read_dir(dir.path()), Err(WalError::Empty(_))));
    }

    /// A record of any type with a valid payload.
    fn record() -> impl Strategy<Value = (i64, Vec<u8>)> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(node_id, cluster_id)| (
                METADATA,
                Metadata {
                    node_id,
                    cluster_id
                }
                .encode_to_vec()
            )),
            (
                1u64..100,
                1u64..5,
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(i, t, d)| (ENTRY, entry(i, t, &d))),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| (
                STATE,
                HardState { term, vote, commit }.encode_to_vec()
            )),
            (any::<u64>(), any::<u64>()).prop_map(|(index, term)| (
                SNAPSHOT,
                SnapshotMarker { index, term }.encode_to_vec()
            )),
        ]
    }

    /// A valid file: a crc record, then `records`, then maybe
    /// preallocated zeros.
    fn file(records: &[(i64, Vec<u8>)], zeros: usize) -> Vec<u8> {
        let mut all = vec![(CRC, Vec::new())];
        all.extend_from_slice(records);
        let (mut out, _) = encode(&all, 0);
        out.resize(out.len() + zeros, 0);
        out
    }

    /// Frame starts of a file written by [`encode`].
    fn frame_starts(data: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut starts = Vec::new();
        while at + 8 <= data.len() {
            let field = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
            if field == 0 {
                break;
            }
            starts.push(at);
            let pad = (field >> 56 & 0x7) as usize;
            at += 8 + (field & 0x00ff_ffff_ffff_ffff) as usize + pad;
        }
        starts
    }

    fn read_bytes(data: &[u8], crc: u32) -> Result<EtcdWal, WalError> {
        let mut wal = EtcdWal::default();
        let mut crc = crc;
        read_file(Path::new("w.wal"), data, &mut crc, &mut wal, false).map(|()| wal)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the bytes, the reader answers, with a typed error if
        /// not with a log.
        #[test]
        fn arbitrary_bytes_are_read_or_refused(
            data in prop::collection::vec(any::<u8>(), 0..512),
            crc in any::<u32>(),
        ) {
            if let Err(e) = read_bytes(&data, crc) {
                prop_assert!(matches!(e, WalError::Invalid { .. }), "{e}");
            }
        }

        /// A valid file, damaged: read or refused, never a panic; and an
        /// undamaged one reads back.
        #[test]
        fn damaged_files_are_read_or_refused(
            records in prop::collection::vec(record(), 0..8),
            zeros in 0usize..64,
            damage in damages(4),
        ) {
            let good = file(&records, zeros);
            let wal = read_bytes(&good, 0).unwrap();
            prop_assert!(wal.entries.len() <= records.len());
            let bad = damaged(good, &damage);
            if let Err(e) = read_bytes(&bad, 0) {
                prop_assert!(matches!(e, WalError::Invalid { .. }), "{e}");
            }
        }

        /// A frame whose length runs past the file is refused by where
        /// it is, without reading (or allocating) what it claims.
        #[test]
        fn a_length_past_the_end_is_refused(
            records in prop::collection::vec(record(), 1..8),
            which in any::<prop::sample::Index>(),
            size in 1u64 << 20..1 << 56,
            pad in 0u64..8,
        ) {
            let mut data = file(&records, 0);
            let starts = frame_starts(&data);
            let at = starts[which.index(starts.len())];
            let field = size | (0x80 | pad) << 56;
            data[at..at + 8].copy_from_slice(&field.to_le_bytes());
            match read_bytes(&data, 0) {
                Err(WalError::Invalid { offset, what, .. }) => {
                    prop_assert_eq!(offset, at);
                    prop_assert!(what.contains("past the end"), "{}", what);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    #[test]
    fn a_written_wal_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let e = Entry {
            kind: 0,
            term: 3,
            index: 8,
            data: b"x".to_vec(),
        };
        let hs = HardState {
            term: 3,
            vote: 9,
            commit: 8,
        };
        write_new(dir.path(), 9, 77, (7, 2), std::slice::from_ref(&e), hs).unwrap();
        let w = read_dir(dir.path()).unwrap();
        assert_eq!((w.node_id, w.cluster_id), (9, 77));
        assert_eq!(w.snapshots, vec![(0, 0), (7, 2)]);
        assert_eq!(w.entries, vec![e]);
        assert_eq!(w.hard_state, Some(hs));
    }
}
