//! Snapshot files: save, newest-valid loading with `.broken` renaming,
//! WAL-guided selection, purge, crash safety.

use oxcd_raft::fs::{Faults, Fs, MemFs, OsFs};
use oxcd_raft::snap::{self, Snapshot, Snapshotter};
use oxcd_raft::wal::{self, HardState, SnapshotMarker, Wal, WalOptions};
use oxcd_raft::SnapError;
use std::path::Path;
use std::sync::Arc;

fn snapshot(term: u64, index: u64) -> Snapshot {
    Snapshot {
        term,
        index,
        data: format!("state at {term}/{index}").into_bytes(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn newest_valid_snapshot_wins_and_broken_ones_are_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Snapshotter::new(Arc::new(OsFs), dir);
    assert!(matches!(s.load(), Err(SnapError::NoSnapshot)));
    for (term, index) in [(1, 10), (2, 20), (2, 30)] {
        s.save(&snapshot(term, index)).unwrap();
    }
    assert_eq!(s.load().unwrap(), snapshot(2, 30));

    // Damage the newest: the next one is loaded and the broken one set
    // aside.
    let newest = dir.join(snap::snap_name(2, 30));
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    std::fs::write(&newest, &bytes).unwrap();
    assert_eq!(s.load().unwrap(), snapshot(2, 20));
    assert!(names(dir).contains(&format!("{}.broken", snap::snap_name(2, 30))));

    // A file whose contents disagree with its name is broken too.
    std::fs::copy(
        dir.join(snap::snap_name(1, 10)),
        dir.join(snap::snap_name(3, 5)),
    )
    .unwrap();
    assert_eq!(s.load().unwrap(), snapshot(2, 20));

    // A truncated file is broken; with nothing valid left: NoSnapshot.
    for name in [snap::snap_name(2, 20), snap::snap_name(1, 10)] {
        std::fs::write(dir.join(name), b"oxcd").unwrap();
    }
    assert!(matches!(s.load(), Err(SnapError::NoSnapshot)));
    assert!(names(dir).iter().all(|n| n.ends_with(".broken")));
}

#[test]
fn load_newest_available_follows_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let fs: Arc<dyn Fs> = Arc::new(OsFs);
    let snap_dir = tmp.path().join("snap");
    let wal_dir = tmp.path().join("wal");
    std::fs::create_dir(&snap_dir).unwrap();
    let s = Snapshotter::new(fs.clone(), &snap_dir);
    let mut w = Wal::create(fs.clone(), &wal_dir, b"m", WalOptions::default()).unwrap();
    let entries: Vec<_> = (1..=30)
        .map(|index| wal::Entry {
            index,
            term: 1,
            data: vec![1],
        })
        .collect();
    w.save(
        &HardState {
            term: 1,
            vote: 1,
            commit: 20,
        },
        &entries,
    )
    .unwrap();
    // Saved in the documented order: snapshot file, then WAL marker.
    s.save(&snapshot(1, 20)).unwrap();
    w.save_snapshot(SnapshotMarker { index: 20, term: 1 })
        .unwrap();
    // A newer snapshot file whose WAL marker never made it (crash between
    // the two steps) must not be chosen.
    s.save(&snapshot(1, 25)).unwrap();
    let markers = wal::valid_snapshot_markers(fs.as_ref(), &wal_dir).unwrap();
    assert_eq!(s.load().unwrap().index, 25);
    assert_eq!(s.load_newest_available(&markers).unwrap(), snapshot(1, 20));
    assert_eq!(
        s.load_newest_available(&markers).unwrap().marker(),
        markers[1]
    );
}

#[test]
fn purge_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Snapshotter::new(Arc::new(OsFs), tmp.path());
    for i in 1..=7 {
        s.save(&snapshot(1, i * 100)).unwrap();
    }
    assert!(s.purge(0).unwrap().is_empty());
    assert_eq!(s.purge(3).unwrap().len(), 4);
    assert_eq!(
        s.names().unwrap(),
        [700, 600, 500].map(|i| snap::snap_name(1, i)).to_vec()
    );
}

#[test]
fn a_crashed_save_leaves_no_partial_snap_file() {
    let mfs = MemFs::new();
    let dir = Path::new("/member/snap");
    mfs.create_dir_all(dir).unwrap();
    let s = Snapshotter::new(Arc::new(mfs.clone()), dir);
    s.save(&snapshot(1, 10)).unwrap();
    mfs.set_faults(Faults {
        fail_sync_after: Some(0),
        ..Faults::default()
    });
    assert!(matches!(
        s.save(&snapshot(1, 20)),
        Err(SnapError::SyncFailed { .. })
    ));
    for keep in [0, 7, u64::MAX] {
        let after = mfs.crash_with(|total| keep.min(total));
        let s = Snapshotter::new(Arc::new(after), dir);
        assert_eq!(s.load().unwrap(), snapshot(1, 10));
    }
}
