//! The raft log as raft-rs reads it (etcd's `raft.MemoryStorage`): the
//! entries since the last compaction, the hard and conf state, and the
//! newest raft snapshot, which is what a lagging follower is sent.
//!
//! raft-rs's `MemStorage` holds the entries, but builds its own snapshot
//! from the commit index with no data, and after `compact` it forgets the
//! term of the entry just before the first one kept. So [`LogStore`] wraps
//! it: the newest snapshot (with its data) is kept beside it, and a
//! compaction re-bases the `MemStorage` on the compaction point, so that
//! `term(first_index - 1)` stays answerable as raft requires.

use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The in-memory raft log; owned by the raft loop's `RawNode`.
#[derive(Default)]
pub struct LogStore {
    mem: MemStorage,
    /// The newest snapshot, created here or received; empty when none.
    snapshot: Snapshot,
    /// Set when raft asked for a snapshot this log could not give (none
    /// yet, or one older than the log's start): the raft loop then takes a
    /// fresh one. Needed because the log is compacted between snapshots to
    /// bound its memory (see `node::snapshot`).
    wanted: std::sync::atomic::AtomicBool,
}

impl LogStore {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries, hard state and conf state.
    pub fn mem(&self) -> &MemStorage {
        &self.mem
    }

    /// The newest snapshot (empty when none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Replaces the whole log with `snap` (a received snapshot, or the one
    /// loaded at start): the entries are dropped, and the commit index, term
    /// and conf state come from the snapshot.
    ///
    /// # Errors
    /// `SnapshotOutOfDate` if the log already starts after it.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> raft::Result<()> {
        self.mem.wl().apply_snapshot(snap.clone())?;
        self.snapshot = snap;
        Ok(())
    }

    /// Whether raft asked for a snapshot newer than the one held since the
    /// last call (clears the request).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records a snapshot created from this log; the entries stay until
    /// [`LogStore::compact_to`].
    pub fn set_snapshot(&mut self, snap: Snapshot) {
        self.snapshot = snap;
    }

    /// Discards every entry up to and including `index`, which must be
    /// applied (etcd `MemoryStorage.Compact`); its term stays known. Does
    /// nothing if the log already starts after `index`.
    ///
    /// # Errors
    /// raft-rs errors reading the log (`index` beyond the last entry).
    pub fn compact_to(&mut self, index: u64) -> raft::Result<()> {
        let first = self.mem.first_index()?;
        if index < first {
            return Ok(());
        }
        let last = self.mem.last_index()?;
        let term = self.mem.term(index)?;
        let tail = if index < last {
            self.mem
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            Vec::new()
        };
        let conf_state = self.mem.initial_state()?.conf_state;
        let mut core = self.mem.wl();
        let hs = core.hard_state().clone();
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state);
        let mut base = Snapshot::default();
        base.set_metadata(meta);
        core.apply_snapshot(base)?;
        core.append(&tail)?;
        core.set_hardstate(hs);
        Ok(())
    }

    /// Appends entries (see `MemStorageCore::append`).
    ///
    /// # Errors
    /// As raft-rs reports them.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.mem.wl().append(entries)
    }

    /// Sets the hard state.
    pub fn set_hardstate(&mut self, hs: HardState) {
        self.mem.wl().set_hardstate(hs);
    }

    /// Sets the commit index of the hard state.
    pub fn set_commit(&mut self, commit: u64) {
        self.mem.wl().mut_hard_state().commit = commit;
    }

    /// The current hard state.
    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    /// Sets the conf state (after a conf change was applied).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.mem.wl().set_conf_state(cs);
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The newest snapshot; "temporarily unavailable" (raft retries later,
    /// and the loop takes a new snapshot) when there is none yet, it is
    /// older than `request_index`, or its configuration does not hold
    /// `to` (a member added since: raft refuses a snapshot that leaves it
    /// out, so etcd sends one made at the applied index instead).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let index = self.snapshot.get_metadata().index;
        // A follower installing a snapshot continues with the entry after
        // it, which the log must still hold.
        let first = self.mem.first_index()?;
        let cs = self.snapshot.get_metadata().get_conf_state();
        let holds_target = cs.voters.contains(&to) || cs.learners.contains(&to);
        if index == 0 || index < request_index || index + 1 < first || !holds_target {
            self.wanted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn compaction_keeps_the_term_before_the_first_entry() -> raft::Result<()> {
        let mut s = LogStore::new();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5)).collect();
        s.append(&entries)?;
        s.set_hardstate(HardState {
            term: 3,
            vote: 1,
            commit: 10,
            ..Default::default()
        });
        s.compact_to(6)?;
        assert_eq!(s.first_index()?, 7);
        assert_eq!(s.last_index()?, 10);
        assert_eq!(s.term(6)?, 2);
        assert!(s.term(5).is_err());
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(
            s.entries(7, 11, None, GetEntriesContext::empty(false))?
                .len(),
            4
        );
        // Compacting behind the start is a no-op.
        s.compact_to(3)?;
        assert_eq!(s.first_index()?, 7);
        Ok(())
    }

    #[test]
    fn snapshot_is_unavailable_until_one_exists() {
        let mut s = LogStore::new();
        assert!(s.snapshot(0, 2).is_err());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 5;
        snap.mut_metadata().term = 2;
        snap.data = b"members".to_vec().into();
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        s.set_snapshot(snap.clone());
        assert_eq!(s.snapshot(0, 2).ok(), Some(snap));
        assert!(s.snapshot(6, 2).is_err());
        // Member 3 joined after it: a newer snapshot is wanted.
        let _ = s.take_snapshot_wanted();
        assert!(s.snapshot(0, 3).is_err());
        assert!(s.take_snapshot_wanted());
    }
}
