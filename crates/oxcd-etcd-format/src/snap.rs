//! etcd's raft snapshot files (`member/snap/<term>-<index>.snap`, etcd's
//! `etcdserver/api/snap` package), read and written.
//!
//! A file is a protobuf `snappb.Snapshot{crc=1 uint32, data=2 bytes}`
//! whose `data` is a `raftpb.Snapshot{data=1, metadata=2}` and whose `crc`
//! is the CRC-32C of `data` alone (no chaining). The metadata holds the
//! index and term the snapshot covers and the `ConfState` there; the
//! snapshot's own `data` is the JSON of etcd's v2 store, where etcd 3.4
//! and 3.5 keep the member list (see [`crate::v2store`]).

use std::path::{Path, PathBuf};

use prost::Message;

/// What can go wrong reading a snap file.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// Reading a file or listing the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not check out.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

#[derive(Clone, PartialEq, Message)]
struct SnapFile {
    #[prost(uint32, tag = "1")]
    crc: u32,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct RaftSnapshot {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    metadata: Option<Metadata>,
}

#[derive(Clone, PartialEq, Message)]
struct Metadata {
    #[prost(message, optional, tag = "1")]
    conf_state: Option<ConfState>,
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

/// `raftpb.ConfState`: who votes and who learns at the snapshot.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ConfState {
    /// Voting members.
    #[prost(uint64, repeated, packed = "false", tag = "1")]
    pub voters: Vec<u64>,
    /// Learners.
    #[prost(uint64, repeated, packed = "false", tag = "2")]
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus; etcd 3.4
    /// and 3.5 never enter it).
    #[prost(uint64, repeated, packed = "false", tag = "3")]
    pub voters_outgoing: Vec<u64>,
    /// Learners to be (joint consensus).
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub learners_next: Vec<u64>,
    /// Whether a joint configuration leaves itself.
    #[prost(bool, tag = "5")]
    pub auto_leave: bool,
}

/// A snap file, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSnapshot {
    /// The file it came from.
    pub path: PathBuf,
    /// The last index it covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The configuration at `index`.
    pub conf_state: ConfState,
    /// The v2 store, as JSON.
    pub data: Vec<u8>,
}

/// The `(term, index)` a snap file's name says, if it is one.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (term, index) = stem.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(term, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// Reads and checks one snap file.
///
/// # Errors
/// [`SnapError::Io`]; [`SnapError::Invalid`] for an empty file, a record
/// that does not decode, a CRC mismatch, or metadata that disagrees with
/// the file's name.
pub fn read(path: &Path) -> Result<EtcdSnapshot, SnapError> {
    let raw = std::fs::read(path).map_err(|source| SnapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &raw)
}

/// Checks and decodes the bytes `raw` of the snap file at `path` (whose
/// name must agree with what it holds).
fn decode(path: &Path, raw: &[u8]) -> Result<EtcdSnapshot, SnapError> {
    let bad = |what: String| SnapError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    let file = SnapFile::decode(raw).map_err(|e| bad(format!("record: {e}")))?;
    if file.data.is_empty() || file.crc == 0 {
        return Err(bad("empty snapshot".into()));
    }
    let crc = crc32c::crc32c(&file.data);
    if crc != file.crc {
        return Err(bad(format!(
            "crc mismatch: {:08x} vs {:08x}",
            file.crc, crc
        )));
    }
    let snap =
        RaftSnapshot::decode(file.data.as_slice()).map_err(|e| bad(format!("snapshot: {e}")))?;
    let meta = snap.metadata.unwrap_or_default();
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name);
    if named.is_some_and(|n| n != (meta.term, meta.index)) {
        return Err(bad(format!(
            "holds term {} index {}, not what its name says",
            meta.term, meta.index
        )));
    }
    Ok(EtcdSnapshot {
        path: path.to_path_buf(),
        index: meta.index,
        term: meta.term,
        conf_state: meta.conf_state.unwrap_or_default(),
        data: snap.data,
    })
}

/// The newest snap file in `dir` whose position the WAL recorded (one of
/// `markers`, `(index, term)`), as etcd 3.5's `LoadNewestAvailable`. A
/// file that fails its checks is skipped for an older one, as etcd does
/// (which also renames it `.broken`; here nothing is modified). `None`
/// if no file matches.
///
/// # Errors
/// [`SnapError::Io`] if the directory cannot be listed; if files matched
/// but none was valid, the newest one's error.
pub fn newest_available(
    dir: &Path,
    markers: &[(u64, u64)],
) -> Result<Option<EtcdSnapshot>, SnapError> {
    let io = |source| SnapError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut named: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let (term, index) = parse_name(e.file_name().to_str()?)?;
            Some((index, term, e.path()))
        })
        .filter(|(index, term, _)| markers.contains(&(*index, *term)))
        .collect();
    named.sort();
    let mut first_error = None;
    for (_, _, path) in named.into_iter().rev() {
        match read(&path) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Writes the snap file for a snapshot at (`index`, `term`) with
/// configuration `conf_state` and v2 store `data` into `dir`, synced, as
/// etcd's `Snapshotter.SaveSnap`; returns its path.
///
/// # Errors
/// [`SnapError::Io`].
pub fn write(
    dir: &Path,
    index: u64,
    term: u64,
    conf_state: ConfState,
    data: Vec<u8>,
) -> Result<PathBuf, SnapError> {
    let path = dir.join(format!("{term:016x}-{index:016x}.snap"));
    let io = |source| SnapError::Io {
        path: path.clone(),
        source,
    };
    let body = RaftSnapshot {
        data,
        metadata: Some(Metadata {
            conf_state: Some(conf_state),
            index,
            term,
        }),
    }
    .encode_to_vec();
    let file = SnapFile {
        crc: crc32c::crc32c(&body),
        data: body,
    }
    .encode_to_vec();
    crate::write_synced(&path, &file).map_err(io)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;

    fn file(index: u64, term: u64, voters: Vec<u64>, data: &[u8]) -> Vec<u8> {
        let body = RaftSnapshot {
            data: data.to_vec(),
            metadata: Some(Metadata {
                conf_state: Some(ConfState {
                    voters,
                    ..ConfState::default()
                }),
                index,
                term,
            }),
        }
        .encode_to_vec();
        SnapFile {
            crc: crc32c::crc32c(&body),
            data: body,
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_the_newest_file_the_wal_recorded_and_skips_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let put = |term: u64, index: u64, bytes: Vec<u8>| {
            std::fs::write(
                dir.path().join(format!("{term:016x}-{index:016x}.snap")),
                bytes,
            )
            .unwrap();
        };
        put(2, 10, file(10, 2, vec![1, 2], b"{}"));
        put(2, 20, file(20, 2, vec![1, 2, 3], b"{}"));
        // Newest, but the WAL never recorded it: a crash before the marker.
        put(3, 30, file(30, 3, vec![1], b"{}"));
        let s = newest_available(dir.path(), &[(10, 2), (20, 2)])
            .unwrap()
            .unwrap();
        assert_eq!((s.index, s.term), (20, 2));
        assert_eq!(s.conf_state.voters, vec![1, 2, 3]);
        // A flipped byte in the newest matching file: the older one serves.
        let mut broken = file(20, 2, vec![1, 2, 3], b"{}");
        let n = broken.len();
        broken[n - 3] ^= 0xff;
        put(2, 20, broken);
        let s = newest_available(dir.path(), &[(10, 2), (20, 2)])
            .unwrap()
            .unwrap();
        assert_eq!(s.index, 10);
        // Nothing valid at all: the error names the file.
        let err = newest_available(dir.path(), &[(20, 2)]).unwrap_err();
        assert!(err.to_string().contains("0000000000000014.snap"), "{err}");
        assert!(newest_available(dir.path(), &[(99, 9)]).unwrap().is_none());
    }

    #[test]
    fn refuses_empty_and_misnamed_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0000000000000001-0000000000000005.snap");
        std::fs::write(&p, b"").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("empty"));
        std::fs::write(&p, file(6, 1, vec![1], b"x")).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("name"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_read_or_refused(
            raw in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Err(e) = decode(Path::new("x.snap"), &raw) {
                prop_assert!(matches!(e, SnapError::Invalid { .. }), "{e}");
            }
        }

        /// A valid file, damaged (the CRC is recomputed half the time, so
        /// the damage also reaches the decoder behind it): read or refused.
        #[test]
        fn damaged_files_are_read_or_refused(
            index in any::<u64>(),
            term in any::<u64>(),
            voters in prop::collection::vec(any::<u64>(), 0..4),
            data in prop::collection::vec(any::<u8>(), 0..64),
            damage in damages(4),
            fix_crc in any::<bool>(),
        ) {
            let name = format!("{term:016x}-{index:016x}.snap");
            let path = Path::new(&name);
            let good = file(index, term, voters, &data);
            let s = decode(path, &good).unwrap();
            prop_assert_eq!((s.index, s.term), (index, term));
            let raw = if fix_crc {
                let body = damaged(
                    SnapFile::decode(good.as_slice()).unwrap().data,
                    &damage,
                );
                SnapFile { crc: crc32c::crc32c(&body), data: body }.encode_to_vec()
            } else {
                damaged(good, &damage)
            };
            if let Err(e) = decode(path, &raw) {
                prop_assert!(matches!(e, SnapError::Invalid { .. }), "{e}");
            }
        }
    }

    #[test]
    fn a_written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ConfState {
            voters: vec![5, 6],
            learners: vec![7],
            ..ConfState::default()
        };
        let p = write(dir.path(), 40, 3, cs.clone(), b"{}".to_vec()).unwrap();
        let s = read(&p).unwrap();
        assert_eq!(
            (s.index, s.term, s.conf_state, s.data),
            (40, 3, cs, b"{}".to_vec())
        );
    }
}
