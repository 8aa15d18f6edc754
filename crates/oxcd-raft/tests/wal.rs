//! WAL behaviour through the public API, on the real file system and on
//! `MemFs`.

use oxcd_raft::fs::{Faults, Fs, MemFs, OsFs};
use oxcd_raft::wal::{self, Entry, HardState, SnapshotMarker, Wal, WalContents, WalOptions};
use oxcd_raft::{Corruption, WalError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const META: &[u8] = b"node 1 cluster 7";
const ZERO: SnapshotMarker = SnapshotMarker { index: 0, term: 0 };

fn small(segment_size: u64) -> WalOptions {
    WalOptions {
        segment_size,
        background_preallocate: false,
    }
}

fn ent(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        data: vec![(index % 251) as u8 + 1; len],
    }
}

fn ents(range: std::ops::RangeInclusive<u64>, term: u64, len: usize) -> Vec<Entry> {
    range.map(|i| ent(i, term, len)).collect()
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
    }
}

fn os() -> (tempfile::TempDir, Arc<dyn Fs>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member").join("wal");
    OsFs.create_dir_all(dir.parent().unwrap()).unwrap();
    (tmp, Arc::new(OsFs), dir)
}

fn mem() -> (MemFs, Arc<dyn Fs>, PathBuf) {
    let fs = MemFs::new();
    let dir = PathBuf::from("/data/member/wal");
    fs.create_dir_all(Path::new("/data/member")).unwrap();
    (fs.clone(), Arc::new(fs), dir)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn round_trip() {
    let (_t, fs, dir) = os();
    let mut w = Wal::create(fs.clone(), &dir, META, WalOptions::default()).unwrap();
    w.save(&hs(1, 0), &ents(1..=3, 1, 10)).unwrap();
    w.save(&hs(1, 3), &ents(4..=4, 1, 0)).unwrap();
    w.save(&HardState::default(), &ents(5..=6, 1, 1000))
        .unwrap();
    assert_eq!(w.last_index(), 6);
    w.close().unwrap();
    let (w, c) = Wal::open(fs, &dir, ZERO, WalOptions::default()).unwrap();
    assert_eq!(
        c,
        WalContents {
            metadata: META.to_vec(),
            hard_state: hs(1, 3),
            entries: ents(1..=3, 1, 10)
                .into_iter()
                .chain(ents(4..=4, 1, 0))
                .chain(ents(5..=6, 1, 1000))
                .collect(),
        }
    );
    assert_eq!(w.last_index(), 6);
    assert_eq!(w.hard_state(), hs(1, 3));
    let files = segment_files(&dir);
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("0000000000000000-0000000000000000.wal"));
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        wal::SEGMENT_SIZE
    );
}

#[test]
fn one_fdatasync_per_save_and_none_for_commit_only() {
    let (mfs, fs, dir) = mem();
    let mut w = Wal::create(fs, &dir, META, small(1 << 20)).unwrap();
    let before = mfs.sync_counts();
    w.save(&hs(1, 0), &ents(1..=50, 1, 100)).unwrap();
    let after = mfs.sync_counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 0));
    w.save(&hs(1, 50), &[]).unwrap();
    assert_eq!(mfs.sync_counts(), after, "commit-only change needs no sync");
    w.save(
        &HardState {
            term: 2,
            vote: 3,
            commit: 50,
        },
        &[],
    )
    .unwrap();
    assert_eq!(mfs.sync_counts().0, after.0 + 1, "a vote must be synced");
}

#[test]
fn many_segments_with_cut_over() {
    for background in [false, true] {
        let (_t, fs, dir) = os();
        let opts = WalOptions {
            segment_size: 4096,
            background_preallocate: background,
        };
        let mut w = Wal::create(fs.clone(), &dir, META, opts).unwrap();
        for i in 1..=300 {
            w.save(&hs(1, i - 1), &[ent(i, 1, 100)]).unwrap();
        }
        assert!(w.locked_segments() > 5);
        drop(w);
        let files = segment_files(&dir);
        assert!(files.len() > 5, "{files:?}");
        let mut prev_first = 0;
        for (seq, f) in files.iter().enumerate() {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert_eq!(&name[..16], format!("{seq:016x}"));
            let first = u64::from_str_radix(&name[17..33], 16).unwrap();
            assert!(seq == 0 || first > prev_first);
            prev_first = first;
            if seq + 1 < files.len() {
                // Closed segments are cut to size, not left preallocated.
                assert!(std::fs::metadata(f).unwrap().len() >= 4096);
                assert!(std::fs::metadata(f).unwrap().len() < 4096 + 200);
            }
        }
        assert!(!dir.join("0.tmp").exists() && !dir.join("1.tmp").exists());
        let (_, c) = Wal::open(fs.clone(), &dir, ZERO, opts).unwrap();
        assert_eq!(c.entries, ents(1..=300, 1, 100));
        assert_eq!(c.hard_state, hs(1, 299));
    }
}

/// Builds a WAL whose last record is entry 5 with a recognisable payload,
/// and returns (dir, frame start, frame length) of that record.
fn wal_ending_in_entry_5(fs: &Arc<dyn Fs>, dir: &Path) -> (u64, u64) {
    let mut w = Wal::create(fs.clone(), dir, META, small(8192)).unwrap();
    w.save(&hs(1, 2), &ents(1..=4, 1, 30)).unwrap();
    w.save(
        &HardState::default(),
        &[Entry {
            index: 5,
            term: 1,
            data: vec![0xee; 40],
        }],
    )
    .unwrap();
    drop(w);
    let seg = &segment_files(dir)[0];
    let bytes = std::fs::read(seg).unwrap();
    let last = bytes.iter().rposition(|b| *b == 0xee).unwrap() as u64 + 1;
    // Body = 8 header + 16 index/term + 40 data = 64, already aligned.
    let frame = 8 + 64;
    (last - frame, frame)
}

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record_is_repaired() {
    let (t, fs, dir) = os();
    let (start, frame) = wal_ending_in_entry_5(&fs, &dir);
    let original = std::fs::read(&segment_files(&dir)[0]).unwrap();
    for keep in 0..=frame {
        for truncate in [false, true] {
            let case = t.path().join(format!("case-{keep}-{truncate}"));
            copy_dir(&dir, &case);
            let seg = segment_files(&case)[0].clone();
            let mut bytes = original.clone();
            let cut = (start + keep) as usize;
            if truncate {
                bytes.truncate(cut);
            } else {
                bytes[cut..].fill(0);
            }
            std::fs::write(&seg, &bytes).unwrap();

            let (mut w, c) = Wal::open(fs.clone(), &case, ZERO, small(8192))
                .unwrap_or_else(|e| panic!("keep {keep} truncate {truncate}: {e}"));
            let expect = if keep == frame { 5 } else { 4 };
            assert_eq!(c.entries.len(), expect, "keep {keep} truncate {truncate}");
            assert_eq!(c.entries[..4], ents(1..=4, 1, 30)[..]);
            assert_eq!(c.hard_state, hs(1, 2));
            // Appending after the repair continues the chain.
            w.save(&hs(2, 4), &[ent(5, 2, 7)]).unwrap();
            drop(w);
            let (_, c) = Wal::open(fs.clone(), &case, ZERO, small(8192)).unwrap();
            assert_eq!(c.entries.last(), Some(&ent(5, 2, 7)));
            assert_eq!(c.entries.len(), 5);
            std::fs::remove_dir_all(&case).unwrap();
        }
    }
}

fn expect_corrupt(res: Result<(Wal, WalContents), WalError>) -> Corruption {
    match res {
        Err(WalError::Corrupt { reason, .. }) => reason,
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, got a wal"),
    }
}

#[test]
fn corruption_in_the_middle_is_refused_and_left_untouched() {
    let (_t, fs, dir) = os();
    let (start, _) = wal_ending_in_entry_5(&fs, &dir);
    let seg = segment_files(&dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    // A bit flip inside entry 3's payload, with entries 4 and 5 after it.
    let victim = bytes[..start as usize]
        .windows(30)
        .position(|w| w.iter().all(|b| *b == 4))
        .unwrap()
        - 20;
    bytes[victim] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let reason = expect_corrupt(Wal::open(fs.clone(), &dir, ZERO, small(8192)));
    assert!(matches!(reason, Corruption::CrcMismatch { .. }), "{reason}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "refusal must not repair"
    );
    assert!(matches!(
        wal::read_all(fs.as_ref(), &dir, ZERO),
        Err(WalError::Corrupt { .. })
    ));
}

fn three_segments() -> (tempfile::TempDir, Arc<dyn Fs>, PathBuf, Vec<PathBuf>) {
    let (t, fs, dir) = os();
    let mut w = Wal::create(fs.clone(), &dir, META, small(1024)).unwrap();
    for i in 1..=30 {
        w.save(&hs(1, i), &[ent(i, 1, 60)]).unwrap();
    }
    drop(w);
    let files = segment_files(&dir);
    assert!(files.len() >= 3);
    (t, fs, dir, files)
}

#[test]
fn damage_to_an_older_segment_is_refused() {
    let (_t, fs, dir, files) = three_segments();
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n - 30] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    expect_corrupt(Wal::open(fs, &dir, ZERO, small(1024)));
}

#[test]
fn a_truncated_older_segment_is_refused() {
    let (_t, fs, dir, files) = three_segments();
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() - 5]).unwrap();
    expect_corrupt(Wal::open(fs, &dir, ZERO, small(1024)));
}

#[test]
fn a_zeroed_tail_of_an_older_segment_is_refused() {
    let (_t, fs, dir, files) = three_segments();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let n = bytes.len();
    bytes[n - 64..].fill(0);
    std::fs::write(&files[1], &bytes).unwrap();
    expect_corrupt(Wal::open(fs, &dir, ZERO, small(1024)));
}

#[test]
fn a_missing_segment_is_refused() {
    let (_t, fs, dir, files) = three_segments();
    std::fs::remove_file(&files[1]).unwrap();
    let err = Wal::open(fs, &dir, ZERO, small(1024)).unwrap_err();
    assert!(
        matches!(err, WalError::MissingSegment { expected: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_later_append_overwrites_the_suffix() {
    let (_t, fs, dir) = os();
    let mut w = Wal::create(fs.clone(), &dir, META, small(2048)).unwrap();
    w.save(&hs(1, 2), &ents(1..=40, 1, 50)).unwrap();
    // A new leader truncates the follower's log back to 25 (across a
    // segment boundary), then the log grows again.
    w.save(&hs(2, 2), &ents(26..=30, 2, 20)).unwrap();
    w.save(&hs(2, 2), &ents(31..=31, 2, 5)).unwrap();
    w.save(&hs(3, 2), &ents(29..=29, 3, 5)).unwrap();
    assert_eq!(w.last_index(), 29);
    let err = w.save(&hs(3, 2), &ents(31..=31, 3, 5)).unwrap_err();
    assert!(matches!(
        err,
        WalError::InvalidAppend {
            index: 31,
            last: 29
        }
    ));
    let err = w
        .save(&hs(3, 2), &[ent(30, 3, 1), ent(32, 3, 1)])
        .unwrap_err();
    assert!(matches!(err, WalError::InvalidAppend { index: 32, .. }));
    drop(w);
    let expect: Vec<Entry> = ents(1..=25, 1, 50)
        .into_iter()
        .chain(ents(26..=28, 2, 20))
        .chain(ents(29..=29, 3, 5))
        .collect();
    let (_, c) = Wal::open(fs.clone(), &dir, ZERO, small(2048)).unwrap();
    assert_eq!(c.entries, expect);
    assert_eq!(c.hard_state, hs(3, 2));
}

#[test]
fn reopen_continues_appending() {
    let (_t, fs, dir) = os();
    drop(Wal::create(fs.clone(), &dir, META, small(1500)).unwrap());
    let mut all = Vec::new();
    for round in 0..6u64 {
        let (mut w, c) = Wal::open(fs.clone(), &dir, ZERO, small(1500)).unwrap();
        assert_eq!(c.entries, all);
        assert_eq!(c.metadata, META);
        let batch = ents(round * 10 + 1..=round * 10 + 10, round + 1, 33);
        w.save(&hs(round + 1, round * 10), &batch).unwrap();
        all.extend(batch);
        w.close().unwrap();
    }
    assert!(segment_files(&dir).len() > 2);
}

#[test]
fn a_second_opener_is_locked_out() {
    let (_t, fs, dir) = os();
    let w = Wal::create(fs.clone(), &dir, META, small(4096)).unwrap();
    let err = Wal::open(fs.clone(), &dir, ZERO, small(4096)).unwrap_err();
    assert!(matches!(err, WalError::Locked(_)), "{err}");
    // Read-only access is still allowed.
    assert!(wal::read_all(fs.as_ref(), &dir, ZERO).is_ok());
    drop(w);
    assert!(Wal::open(fs, &dir, ZERO, small(4096)).is_ok());
}

#[test]
fn create_refuses_an_existing_wal_and_exists_sees_it() {
    let (_t, fs, dir) = os();
    assert!(!wal::exists(fs.as_ref(), &dir));
    drop(Wal::create(fs.clone(), &dir, META, small(4096)).unwrap());
    assert!(wal::exists(fs.as_ref(), &dir));
    let err = Wal::create(fs.clone(), &dir, META, small(4096)).unwrap_err();
    assert!(matches!(err, WalError::AlreadyExists(_)));
    let err = Wal::open(fs, &dir.with_file_name("none"), ZERO, small(4096)).unwrap_err();
    assert!(matches!(err, WalError::NotFound { .. }));
}

#[test]
fn opening_at_a_snapshot_skips_what_it_covers() {
    let (_t, fs, dir) = os();
    let mut w = Wal::create(fs.clone(), &dir, META, small(1024)).unwrap();
    w.save(&hs(1, 20), &ents(1..=20, 1, 40)).unwrap();
    let snap = SnapshotMarker { index: 15, term: 1 };
    w.save_snapshot(snap).unwrap();
    w.save(&hs(1, 25), &ents(21..=25, 1, 40)).unwrap();
    drop(w);
    let (_, c) = Wal::open(fs.clone(), &dir, snap, small(1024)).unwrap();
    assert_eq!(c.entries, ents(16..=25, 1, 40));
    let err = Wal::open(
        fs.clone(),
        &dir,
        SnapshotMarker { index: 15, term: 2 },
        small(1024),
    )
    .unwrap_err();
    assert!(matches!(err, WalError::SnapshotMismatch { .. }), "{err}");
    let err = Wal::open(
        fs.clone(),
        &dir,
        SnapshotMarker { index: 16, term: 1 },
        small(1024),
    )
    .unwrap_err();
    assert!(matches!(err, WalError::SnapshotNotFound(_)), "{err}");
    assert_eq!(
        wal::valid_snapshot_markers(fs.as_ref(), &dir).unwrap(),
        vec![ZERO, snap]
    );
}

#[test]
fn release_and_purge_remove_only_unlocked_old_segments() {
    let (_t, fs, dir) = os();
    let mut w = Wal::create(fs.clone(), &dir, META, small(1024)).unwrap();
    for i in 1..=60 {
        w.save(&hs(1, i), &[ent(i, 1, 60)]).unwrap();
    }
    let total = segment_files(&dir).len();
    assert!(total >= 6);
    // Everything is locked: nothing can go.
    assert!(wal::purge(fs.as_ref(), &dir, 1).unwrap().is_empty());

    let snap = SnapshotMarker { index: 40, term: 1 };
    w.save_snapshot(snap).unwrap();
    w.release_to(40);
    let held = w.locked_segments();
    assert!(held < total);
    let removed = wal::purge(fs.as_ref(), &dir, 1).unwrap();
    assert_eq!(removed.len(), total - held);
    assert_eq!(segment_files(&dir).len(), held);
    // The WAL still opens at the snapshot and holds everything after it.
    w.save(&hs(1, 61), &[ent(61, 1, 60)]).unwrap();
    drop(w);
    let (_, c) = Wal::open(fs.clone(), &dir, snap, small(1024)).unwrap();
    assert_eq!(c.entries, ents(41..=61, 1, 60));
    assert!(matches!(
        Wal::open(fs.clone(), &dir, ZERO, small(1024)),
        Err(WalError::NotFound { .. })
    ));
    // Unlimited keeps all; with nothing open, purge honours the maximum.
    assert!(wal::purge(fs.as_ref(), &dir, 0).unwrap().is_empty());
    wal::purge(fs.as_ref(), &dir, 2).unwrap();
    assert_eq!(segment_files(&dir).len(), 2);
}

#[test]
fn a_failed_fdatasync_is_fatal_and_poisons() {
    let (mfs, fs, dir) = mem();
    let mut w = Wal::create(fs, &dir, META, small(1 << 20)).unwrap();
    w.save(&hs(1, 0), &ents(1..=2, 1, 10)).unwrap();
    mfs.set_faults(Faults {
        fail_sync_after: Some(0),
        ..Faults::default()
    });
    let err = w.save(&hs(1, 2), &ents(3..=3, 1, 10)).unwrap_err();
    assert!(matches!(err, WalError::SyncFailed { .. }), "{err}");
    assert!(matches!(
        w.save(&hs(1, 3), &ents(4..=4, 1, 10)),
        Err(WalError::Poisoned)
    ));
    assert!(matches!(w.sync(), Err(WalError::Poisoned)));
}

#[test]
fn a_failed_write_poisons_and_loses_nothing_acknowledged() {
    let (mfs, fs, dir) = mem();
    let mut w = Wal::create(fs, &dir, META, small(1 << 20)).unwrap();
    w.save(&hs(1, 0), &ents(1..=2, 1, 10)).unwrap();
    mfs.set_faults(Faults {
        fail_write_after: Some(0),
        ..Faults::default()
    });
    assert!(matches!(
        w.save(&hs(1, 2), &ents(3..=3, 1, 10)),
        Err(WalError::Io { .. })
    ));
    drop(w);
    let after = mfs.crash();
    let (_, c) = Wal::open(Arc::new(after), &dir, ZERO, small(1 << 20)).unwrap();
    assert_eq!(c.entries, ents(1..=2, 1, 10));
}

#[test]
fn a_crash_during_create_leaves_no_wal() {
    let (mfs, fs, dir) = mem();
    mfs.set_faults(Faults {
        fail_sync_after: Some(2),
        ..Faults::default()
    });
    assert!(Wal::create(fs, &dir, META, small(4096)).is_err());
    let after: Arc<dyn Fs> = Arc::new(mfs.crash());
    assert!(!wal::exists(after.as_ref(), &dir));
    drop(Wal::create(after.clone(), &dir, META, small(4096)).unwrap());
    assert!(Wal::open(after, &dir, ZERO, small(4096)).is_ok());
}

#[test]
fn read_only_reading_ignores_a_torn_tail_without_repairing() {
    let (_t, fs, dir) = os();
    let (start, _) = wal_ending_in_entry_5(&fs, &dir);
    let seg = segment_files(&dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[start as usize + 30..].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let c = wal::read_all(fs.as_ref(), &dir, ZERO).unwrap();
    assert_eq!(c.entries.len(), 4);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn a_newest_segment_without_its_header_is_given_one() {
    let (_t, fs, dir, files) = three_segments();
    let newest = files.last().unwrap();
    let (_, before) = Wal::open(fs.clone(), &dir, ZERO, small(1024)).unwrap();
    // Keep entries only in older segments: rewrite the newest as all zeros,
    // as if the cut's rename reached the disk before its data.
    let len = std::fs::metadata(newest).unwrap().len() as usize;
    std::fs::write(newest, vec![0u8; len]).unwrap();
    let (mut w, c) = Wal::open(fs.clone(), &dir, ZERO, small(1024)).unwrap();
    assert!(c.entries.len() < before.entries.len());
    assert_eq!(c.entries[..], before.entries[..c.entries.len()]);
    let next = c.entries.len() as u64 + 1;
    w.save(&hs(2, next - 1), &[ent(next, 2, 60)]).unwrap();
    drop(w);
    let (_, again) = Wal::open(fs, &dir, ZERO, small(1024)).unwrap();
    assert_eq!(again.entries.last(), Some(&ent(next, 2, 60)));
    assert_eq!(again.hard_state, hs(2, next - 1));
}

#[test]
fn a_flipped_bit_in_the_last_record_refuses_the_wal() {
    let (_t, fs, dir) = os();
    let (start, frame) = wal_ending_in_entry_5(&fs, &dir);
    let seg = segment_files(&dir)[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    // A data byte of entry 5 (acknowledged once fsynced) flips; the record
    // is complete and only the preallocated zeros follow it.
    bytes[(start + frame - 10) as usize] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let Err(e) = Wal::open(fs.clone(), &dir, ZERO, small(8192)) else {
        panic!("a damaged complete record must not be repaired away");
    };
    let text = e.to_string();
    assert!(text.contains("crc mismatch"), "{text}");
    assert!(text.contains(&seg.display().to_string()), "{text}");
    // Nothing was truncated.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}
