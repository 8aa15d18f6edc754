//! Property test: random raft-like save / snapshot / purge sequences with
//! clean reopens, crashes (torn at any byte) and injected write and sync
//! failures, checked against an in-memory model of the log (redb's fuzzer
//! pattern, STYLE rule 10).
//!
//! What must hold after every reopen: every acknowledged entry is there; of
//! an unacknowledged (failed) save, at most a prefix of its entries
//! survives, and a surviving entry replaces the suffix it overwrote; the
//! hard state is the last synced one or a later one.

use oxcd_raft::fs::{Faults, Fs, MemFs};
use oxcd_raft::wal::{self, Entry, HardState, SnapshotMarker, Wal, WalContents, WalOptions};
use oxcd_raft::WalError;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` entries starting `back` before the end (an overwrite when
    /// `back > 0`), advancing commit by `adv`.
    Save {
        back: u64,
        n: usize,
        len: usize,
        bump: bool,
        adv: u64,
    },
    Snapshot,
    Purge,
    Reopen,
    Crash {
        keep: u64,
    },
    FailSync {
        after: u64,
        keep: u64,
    },
    FailWrite {
        keep: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..4, 0usize..5, 0usize..90, any::<bool>(), 0u64..4).prop_map(
            |(back, n, len, bump, adv)| Op::Save { back, n, len, bump, adv }
        ),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Purge),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(|keep| Op::Crash { keep }),
        1 => (0u64..4, any::<u64>()).prop_map(|(after, keep)| Op::FailSync { after, keep }),
        1 => any::<u64>().prop_map(|keep| Op::FailWrite { keep }),
    ]
}

/// A save that failed: its outcome on disk is unknown.
struct Inflight {
    entries: Vec<Entry>,
    hard_state: HardState,
}

struct Harness {
    mfs: MemFs,
    dir: PathBuf,
    opts: WalOptions,
    wal: Option<Wal>,
    /// The whole live log from index 1, as acknowledged.
    entries: Vec<Entry>,
    hs_latest: HardState,
    hs_durable: HardState,
    snap: SnapshotMarker,
    /// The crash cut to use when an injected fault fires.
    fault_keep: u64,
}

impl Harness {
    fn new(background: bool) -> Harness {
        let mfs = MemFs::new();
        let dir = PathBuf::from("/d/member/wal");
        mfs.create_dir_all(Path::new("/d/member")).unwrap();
        let opts = WalOptions {
            segment_size: 700,
            background_preallocate: background,
        };
        let fs: Arc<dyn Fs> = Arc::new(mfs.clone());
        let wal = Wal::create(fs, &dir, b"meta", opts).unwrap();
        Harness {
            mfs,
            dir,
            opts,
            wal: Some(wal),
            entries: Vec::new(),
            hs_latest: HardState::default(),
            hs_durable: HardState::default(),
            snap: SnapshotMarker::default(),
            fault_keep: 0,
        }
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.index)
    }

    fn wal(&mut self) -> &mut Wal {
        self.wal
            .as_mut()
            .expect("harness keeps a wal open between ops")
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Save {
                back,
                n,
                len,
                bump,
                adv,
            } => self.save(back, n, len, bump, adv),
            Op::Snapshot => {
                let commit = self.hs_latest.commit;
                if commit > self.snap.index && commit <= self.last() {
                    let marker = SnapshotMarker {
                        index: commit,
                        term: self.entries[commit as usize - 1].term,
                    };
                    match self.wal().save_snapshot(marker) {
                        Ok(()) => {
                            self.snap = marker;
                            self.hs_durable = self.hs_latest;
                        }
                        Err(e) => self.after_failure(e, None),
                    }
                }
            }
            Op::Purge => {
                let snap = self.snap.index;
                self.wal().release_to(snap);
                let fs = self.mfs.clone();
                if let Err(e) = wal::purge(&fs, &self.dir, 1) {
                    self.after_failure(e, None);
                }
            }
            Op::Reopen => {
                drop(self.wal.take());
                self.open_and_check(None, false);
            }
            Op::Crash { keep } => {
                drop(self.wal.take());
                self.mfs = self.mfs.crash_with(|total| keep % (total + 1));
                self.open_and_check(None, true);
            }
            Op::FailSync { after, keep } => {
                self.fault_keep = keep;
                self.mfs.set_faults(Faults {
                    fail_sync_after: Some(after),
                    ..Faults::default()
                });
            }
            Op::FailWrite { keep } => {
                self.fault_keep = keep;
                self.mfs.set_faults(Faults {
                    fail_write_after: Some(0),
                    ..Faults::default()
                });
            }
        }
    }

    fn save(&mut self, back: u64, n: usize, len: usize, bump: bool, adv: u64) {
        let floor = self.hs_latest.commit.max(self.snap.index);
        let start = (self.last() + 1).saturating_sub(back).max(floor + 1);
        let mut hs = self.hs_latest;
        if bump {
            hs.term += 1;
            hs.vote = hs.term % 3;
        }
        hs.term = hs.term.max(1);
        let batch: Vec<Entry> = (0..n as u64)
            .map(|i| Entry {
                index: start + i,
                term: hs.term,
                data: vec![(start + i) as u8; len],
            })
            .collect();
        let new_last = if batch.is_empty() {
            self.last()
        } else {
            start + n as u64 - 1
        };
        hs.commit = (hs.commit + adv).min(new_last);
        match self.wal().save(&hs, &batch) {
            Ok(()) => {
                if let Some(first) = batch.first() {
                    self.entries.truncate(first.index as usize - 1);
                    self.entries.extend(batch.iter().cloned());
                }
                let synced = !batch.is_empty()
                    || hs.term != self.hs_latest.term
                    || hs.vote != self.hs_latest.vote;
                self.hs_latest = hs;
                if synced {
                    self.hs_durable = hs;
                }
            }
            Err(e) => self.after_failure(
                e,
                Some(Inflight {
                    entries: batch,
                    hard_state: hs,
                }),
            ),
        }
    }

    /// A write or sync failed: fatal, so the "process" dies and the disk is
    /// whatever the crash leaves.
    fn after_failure<E: std::fmt::Display>(&mut self, err: E, inflight: Option<Inflight>) {
        let msg = err.to_string();
        assert!(
            msg.contains("injected") || msg.contains("unusable"),
            "unexpected error: {msg}"
        );
        drop(self.wal.take());
        let keep = self.fault_keep;
        self.mfs = self.mfs.crash_with(|total| keep % (total + 1));
        self.open_and_check(inflight, true);
    }

    fn open_and_check(&mut self, inflight: Option<Inflight>, crashed: bool) {
        let fs: Arc<dyn Fs> = Arc::new(self.mfs.clone());
        let (wal, got) = match Wal::open(fs, &self.dir, self.snap, self.opts) {
            Ok(x) => x,
            Err(WalError::SyncFailed { .. }) => {
                // A pending injected fault fired during repair.
                self.mfs = self.mfs.crash();
                return self.open_and_check(inflight, true);
            }
            Err(e) => panic!("reopen failed: {e}"),
        };
        self.check(&got, inflight, crashed);
        self.wal = Some(wal);
    }

    fn check(&mut self, got: &WalContents, inflight: Option<Inflight>, crashed: bool) {
        assert_eq!(got.metadata, b"meta");
        let after_snap = |log: &[Entry]| -> Vec<Entry> {
            log.iter()
                .filter(|e| e.index > self.snap.index)
                .cloned()
                .collect()
        };
        let mut candidates = vec![self.entries.clone()];
        if let Some(f) = &inflight {
            if let Some(first) = f.entries.first() {
                for k in 1..=f.entries.len() {
                    let mut log = self.entries[..first.index as usize - 1].to_vec();
                    log.extend_from_slice(&f.entries[..k]);
                    candidates.push(log);
                }
            }
        }
        let matched =
            candidates
                .into_iter()
                .find(|c| after_snap(c) == got.entries)
                .unwrap_or_else(|| {
                    panic!(
                    "entries after crash={crashed} match no allowed outcome: got {:?}, model {:?}",
                    got.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
                    self.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
                )
                });
        let hs = got.hard_state;
        let from_inflight = inflight.as_ref().is_some_and(|f| f.hard_state == hs);
        if crashed {
            let in_range = (hs.term, hs.vote) == (self.hs_latest.term, self.hs_latest.vote)
                && (self.hs_durable.commit..=self.hs_latest.commit).contains(&hs.commit);
            assert!(
                from_inflight || in_range,
                "hard state {hs:?} not between {:?} and {:?}",
                self.hs_durable,
                self.hs_latest
            );
        } else {
            assert_eq!(hs, self.hs_latest);
        }
        self.entries = matched;
        self.hs_latest = hs;
        if crashed {
            // What survived a crash is on disk; a clean reopen syncs nothing.
            self.hs_durable = hs;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model_across_reopen_and_crashes(
        background in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut h = Harness::new(background);
        for op in ops {
            h.run(op);
        }
        // Finally, a clean reopen sees exactly the model.
        h.run(Op::Reopen);
    }
}
