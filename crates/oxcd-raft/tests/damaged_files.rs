//! Property tests: what a damaged disk or a confused peer hands the
//! decoders — WAL segments, snapshot files, the raft snapshot inside one,
//! peer messages — is read or refused with a typed error, never a panic.
//! (The frame scanner and the snapshot file format have their own
//! properties next to them, in `wal/decode.rs` and `snap.rs`.)

#[path = "../../oxcd-etcd-format/src/damage.rs"]
#[allow(dead_code)]
mod damage;

use damage::{damaged, damages};
use oxcd_api::oxcdpeerpb::{RaftBatch, SnapshotChunk};
use oxcd_raft::fs::{Fs, MemFs};
use oxcd_raft::node::snapshot_from_file;
use oxcd_raft::snap::{self, Snapshotter};
use oxcd_raft::wal::{self, Entry, HardState, SnapshotMarker, Wal, WalOptions};
use oxcd_raft::{SnapError, WalError};
use proptest::prelude::*;
use protobuf::{Message as _, ProtobufEnum as _};
use raft::prelude::{ConfChange, ConfChangeV2, ConfState, Message, MessageType, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ZERO: SnapshotMarker = SnapshotMarker { index: 0, term: 0 };

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        background_preallocate: false,
    }
}

/// Batches of (entry payload sizes, commit bump) saved one after another.
fn batches() -> impl Strategy<Value = Vec<(Vec<usize>, u64)>> {
    prop::collection::vec((prop::collection::vec(0usize..300, 0..6), 0u64..3), 1..8)
}

/// Writes a WAL of `batches` (and a snapshot marker at `snap_at`, if it
/// falls on a saved index) to a fresh `MemFs`.
fn write_wal(batches: &[(Vec<usize>, u64)], snap_at: u64) -> (MemFs, PathBuf) {
    let fs = MemFs::new();
    let dir = PathBuf::from("/m/wal");
    fs.create_dir_all(Path::new("/m")).unwrap();
    let mut w = Wal::create(Arc::new(fs.clone()), &dir, b"member 1", opts()).unwrap();
    let (mut last, mut commit) = (0, 0);
    for (sizes, bump) in batches {
        let entries: Vec<Entry> = sizes
            .iter()
            .map(|n| {
                last += 1;
                Entry {
                    index: last,
                    term: 1,
                    data: vec![last as u8 | 1; *n],
                }
            })
            .collect();
        commit = (commit + bump).min(last);
        let hs = HardState {
            term: 1,
            vote: 1,
            commit,
        };
        w.save(&hs, &entries).unwrap();
        if snap_at > 0 && snap_at <= commit {
            w.save_snapshot(SnapshotMarker {
                index: snap_at,
                term: 1,
            })
            .unwrap();
        }
    }
    w.close().unwrap();
    (fs, dir)
}

fn segments(fs: &MemFs, dir: &Path) -> Vec<PathBuf> {
    let mut names = fs.list(dir).unwrap();
    names.sort();
    names
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .map(|n| dir.join(n))
        .collect()
}

/// Damages the written part of the file at `path` (segments are
/// preallocated: the zeros after it stay zeros, as on disk).
fn damage_file(fs: &MemFs, path: &Path, damage: &[damage::Damage]) {
    let mut f = fs.open(path, true).unwrap();
    let len = usize::try_from(f.size().unwrap()).unwrap();
    let mut bytes = vec![0u8; len];
    f.read_exact_at(0, &mut bytes).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut bad = damaged(bytes[..end].to_vec(), damage);
    bad.resize(bad.len() + (len - end), 0);
    f.set_len(0).unwrap();
    f.write_all_at(0, &bad).unwrap();
    f.sync_data().unwrap();
}

fn typed(e: &WalError) -> bool {
    matches!(
        e,
        WalError::Corrupt { .. }
            | WalError::NotFound { .. }
            | WalError::SnapshotNotFound(_)
            | WalError::SnapshotMismatch { .. }
            | WalError::MissingSegment { .. }
    )
}

fn raft_message() -> impl Strategy<Value = Message> {
    (
        0i32..19,
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(
            (any::<u64>(), prop::collection::vec(any::<u8>(), 0..16)),
            0..3,
        ),
        prop::collection::vec(any::<u64>(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(kind, term, index, entries, voters, with_snapshot)| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::from_i32(kind).unwrap_or(MessageType::MsgAppend));
            m.term = term;
            m.index = index;
            m.set_entries(
                entries
                    .into_iter()
                    .map(|(index, data)| raft::prelude::Entry {
                        index,
                        data: data.into(),
                        ..Default::default()
                    })
                    .collect(),
            );
            if with_snapshot {
                let mut s = Snapshot::default();
                s.mut_metadata().index = index;
                s.mut_metadata()
                    .set_conf_state(ConfState::from((voters, vec![])));
                s.data = b"backend".to_vec().into();
                m.set_snapshot(s);
            }
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A damaged segment: reading, listing the snapshot markers and opening
    /// (which repairs a torn tail) answer or refuse; an open that answers
    /// leaves a WAL that opens again to the same contents.
    #[test]
    fn damaged_wal_segments_are_read_or_refused(
        batches in batches(),
        snap_at in 0u64..8,
        which in any::<prop::sample::Index>(),
        damage in damages(3),
    ) {
        let (fs, dir) = write_wal(&batches, snap_at);
        let segs = segments(&fs, &dir);
        damage_file(&fs, &segs[which.index(segs.len())], &damage);
        if let Err(e) = wal::read_all(&fs, &dir, ZERO) {
            prop_assert!(typed(&e), "{e}");
        }
        let markers = match wal::valid_snapshot_markers(&fs, &dir) {
            Ok(m) => m,
            Err(e) => {
                prop_assert!(typed(&e), "{e}");
                Vec::new()
            }
        };
        let at = markers.last().copied().unwrap_or(ZERO);
        let shared: Arc<dyn Fs> = Arc::new(fs.clone());
        match Wal::open(Arc::clone(&shared), &dir, at, opts()) {
            Ok((w, first)) => {
                w.close().unwrap();
                let (w, again) = Wal::open(shared, &dir, at, opts()).unwrap();
                prop_assert_eq!(first, again);
                w.close().unwrap();
            }
            Err(e) => prop_assert!(typed(&e), "{e}"),
        }
    }

    /// Damaged snapshot files are renamed `.broken` and skipped: loading
    /// finds an intact one whose contents match its name, or none.
    #[test]
    fn damaged_snapshot_files_are_skipped(
        count in 1u64..4,
        which in any::<prop::sample::Index>(),
        damage in damages(3),
    ) {
        let fs = MemFs::new();
        let dir = PathBuf::from("/m/snap");
        fs.create_dir_all(&dir).unwrap();
        let shared: Arc<dyn Fs> = Arc::new(fs.clone());
        let s = Snapshotter::new(Arc::clone(&shared), &dir);
        for i in 1..=count {
            s.save(&snap::Snapshot { term: 1, index: i * 10, data: vec![i as u8; 40] }).unwrap();
        }
        let names = s.names().unwrap();
        let path = dir.join(&names[which.index(names.len())]);
        damage_file(&fs, &path, &damage);
        match snap::read(shared.as_ref(), &path) {
            Ok(_) | Err(SnapError::Broken { .. }) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
        match s.load() {
            Ok(got) => prop_assert_eq!(got.data, vec![(got.index / 10) as u8; 40]),
            Err(SnapError::NoSnapshot) => prop_assert_eq!(count, 1),
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    /// The raft snapshot inside a snapshot file: decoded, or refused with
    /// the file's index.
    #[test]
    fn raft_snapshots_in_files_decode_or_fail(
        index in any::<u64>(),
        voters in prop::collection::vec(any::<u64>(), 0..4),
        raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..128)),
        damage in damages(3),
    ) {
        let data = raw.unwrap_or_else(|| {
            let mut s = Snapshot::default();
            s.mut_metadata().index = index;
            s.mut_metadata().term = 1;
            s.mut_metadata().set_conf_state(ConfState::from((voters, vec![])));
            damaged(s.write_to_bytes().unwrap(), &damage)
        });
        let file = snap::Snapshot { term: 1, index, data };
        if let Err(e) = snapshot_from_file(&file) {
            prop_assert_eq!(e.index, index);
        }
    }

    /// What a peer sends: the envelope (prost) and the raft messages in it
    /// (rust-protobuf, as `NodeInbox` and the snapshot receiver decode
    /// them), arbitrary or damaged.
    #[test]
    fn peer_messages_decode_or_fail(
        msg in raft_message(),
        raw in prop::collection::vec(any::<u8>(), 0..128),
        damage in damages(3),
    ) {
        for bytes in [raw.clone(), damaged(msg.write_to_bytes().unwrap(), &damage)] {
            let _ = Message::parse_from_bytes(&bytes);
            let _ = raft::prelude::Entry::parse_from_bytes(&bytes);
            let _ = ConfChange::parse_from_bytes(&bytes);
            let _ = ConfChangeV2::parse_from_bytes(&bytes);
            let batch = RaftBatch { cluster_id: 1, from: 2, to: 3, messages: vec![bytes.clone().into()] };
            let chunk = SnapshotChunk { raft_message: bytes.clone().into(), data: bytes.clone().into(), ..Default::default() };
            for envelope in [prost::Message::encode_to_vec(&batch), prost::Message::encode_to_vec(&chunk), bytes.clone()] {
                let _ = <RaftBatch as prost::Message>::decode(damaged(envelope.clone(), &damage).as_slice());
                let _ = <SnapshotChunk as prost::Message>::decode(damaged(envelope, &damage).as_slice());
            }
        }
    }
}
