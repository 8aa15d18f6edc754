//! Raft snapshots in the raft loop (etcd `etcdserver/server.go`
//! `triggerSnapshot`, `snapshot`, `applySnapshot` and `purgeFile`;
//! `etcdserver/snapshot_merge.go`).
//!
//! - **Creating.** Once more than `count` entries were handed to the apply
//!   stage since the last snapshot (`--snapshot-count`): the loop asks the
//!   apply stage (a request queued behind those entries, answered while
//!   the loop goes on) to make its backend durable up to that index and
//!   return the state that lives outside the backend (the member list,
//!   etcd's v2 store snapshot); with the answer, the raft snapshot (index,
//!   term and conf state as of the request, that data) is written to
//!   `member/snap/<term>-<index>.snap`, then recorded in the WAL; the
//!   in-memory log is compacted, keeping `catch_up_entries` behind the
//!   snapshot for slow followers; WAL segments wholly before the snapshot
//!   are unlocked, and the oldest segments and snapshot files beyond
//!   `--max-wals` / `--max-snapshots` are removed.
//! - **Sending.** raft asks for a `MsgSnapshot` when a follower needs
//!   entries the log no longer holds. It never goes on the message stream:
//!   the transport exports the backend (a consistent copy) and streams the
//!   message plus the file to the follower (etcd's merged snapshot), then
//!   the outcome is reported back to raft on the next pass.
//! - **Receiving.** The transport saves the file as
//!   `member/snap/<index>.snap.db` before the message reaches raft. When a
//!   `Ready` carries the snapshot, the apply stage first swaps in that
//!   backend and restores its state (the loop waits for it: raft must not
//!   go on before the snapshot is recorded), then the snapshot file and WAL marker
//!   are written, then the log is replaced. Backend first: a crash in
//!   between leaves a backend ahead of the log, which replay handles (its
//!   consistent index skips entries), and the leader simply resends; the
//!   other order could leave a log that claims entries the backend lacks.

use super::{fatal, RaftLoop, ToApply};
use crate::fs::Fs;
use crate::snap::{self, Snapshotter};
use crate::transport::{BackendSource, SnapshotJob, SnapshotReport};
use crate::wal;
use protobuf::Message as _;
use raft::prelude::{Message, Snapshot, SnapshotMetadata};
use raft::{SnapshotStatus, Storage};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

/// etcd's `snapshotCatchUpEntries`: entries kept behind a snapshot so that
/// a slightly slow follower gets entries rather than a whole snapshot.
pub const CATCH_UP_ENTRIES: u64 = 5000;

/// Fewest entries the in-memory log keeps behind the applied index between
/// snapshots (with a tiny `--snapshot-count`, snapshots bound it instead).
const MIN_MEMORY_ENTRIES: u64 = 1000;

/// How the raft loop takes, keeps and sends snapshots.
pub struct SnapshotSettings {
    /// `--snapshot-count`: applied entries between snapshots (0: never).
    pub count: u64,
    /// Entries kept in memory behind a snapshot.
    pub catch_up_entries: u64,
    /// `--max-snapshots`: snapshot files kept (0: all).
    pub max_snapshots: usize,
    /// `--max-wals`: WAL segments kept (0: all).
    pub max_wals: usize,
    /// The `member/snap` directory.
    pub snapshotter: Snapshotter,
    /// The file seam the WAL uses (for purging segments).
    pub fs: Arc<dyn Fs>,
    /// Exports the backend for followers that need a snapshot.
    pub backend: Arc<dyn BackendSource>,
}

impl SnapshotSettings {
    /// etcd's catch-up length, but never more than a snapshot interval, so
    /// that a small `--snapshot-count` really bounds the in-memory log.
    pub fn catch_up_for(count: u64) -> u64 {
        CATCH_UP_ENTRIES.min(count.max(1))
    }
}

/// Why a stored snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("corrupt raft snapshot at index {index}: {reason}")]
pub struct SnapshotDecodeError {
    /// The index in the file name.
    pub index: u64,
    /// What failed.
    pub reason: String,
}

/// The file form of a raft snapshot: its encoded `raft.Snapshot`.
///
/// # Errors
/// Encoding failures (not expected for well-formed snapshots).
pub fn to_file(s: &Snapshot) -> Result<snap::Snapshot, protobuf::ProtobufError> {
    Ok(snap::Snapshot {
        term: s.get_metadata().term,
        index: s.get_metadata().index,
        data: s.write_to_bytes()?,
    })
}

/// The raft snapshot inside a snapshot file.
///
/// # Errors
/// [`SnapshotDecodeError`] when the body does not decode or does not
/// match the file's position.
pub fn from_file(s: &snap::Snapshot) -> Result<Snapshot, SnapshotDecodeError> {
    let err = |reason: String| SnapshotDecodeError {
        index: s.index,
        reason,
    };
    let snap = Snapshot::parse_from_bytes(&s.data).map_err(|e| err(e.to_string()))?;
    let m = snap.get_metadata();
    if (m.index, m.term) != (s.index, s.term) {
        return Err(err(format!("body says {}/{}", m.term, m.index)));
    }
    Ok(snap)
}

/// Snapshot outcomes reported by transfer tasks, drained by the loop.
pub(super) struct Reports {
    tx: Mutex<Sender<(u64, bool)>>,
}

impl SnapshotReport for Reports {
    fn report(&self, to: u64, ok: bool) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        // The loop may have stopped; then nobody needs the outcome.
        let _ = tx.send((to, ok));
    }
}

/// A snapshot the apply stage is preparing the data of.
pub(super) struct Pending {
    /// Its metadata, as of the request.
    meta: SnapshotMetadata,
    /// The apply stage's answer.
    reply: Receiver<Result<Vec<u8>, crate::node::AppError>>,
}

/// The snapshot half of the raft loop's state.
pub(super) struct SnapshotState {
    pub settings: SnapshotSettings,
    /// Index of the newest snapshot (0: none).
    pub index: u64,
    /// The snapshot being created, if any.
    pub pending: Option<Pending>,
    pub reports: Arc<Reports>,
    pub report_rx: Receiver<(u64, bool)>,
}

impl SnapshotState {
    pub fn new(settings: SnapshotSettings, index: u64) -> Self {
        let (tx, report_rx) = std::sync::mpsc::channel();
        SnapshotState {
            settings,
            index,
            pending: None,
            reports: Arc::new(Reports { tx: Mutex::new(tx) }),
            report_rx,
        }
    }

    fn db_path(&self, index: u64) -> PathBuf {
        self.settings
            .snapshotter
            .dir()
            .join(format!("{index:016x}.snap.db"))
    }
}

impl RaftLoop {
    /// Finishes the snapshot being prepared once its data is there, or
    /// starts one if enough entries were handed over since the last.
    pub(super) fn maybe_snapshot(&mut self) {
        if let Some(p) = &self.snaps.pending {
            match p.reply.try_recv() {
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => fatal("the apply stage stopped"),
                Ok(Err(e)) => fatal(&format!("cannot snapshot the application state: {e}")),
                Ok(Ok(data)) => {
                    if let Some(p) = self.snaps.pending.take() {
                        self.finish_snapshot(p.meta, data);
                    }
                }
            }
        }
        let count = self.snaps.settings.count;
        let applied = self.raw.raft.raft_log.applied;
        let wanted = self.raw.store().take_snapshot_wanted();
        if (count != 0 && applied > self.snaps.index + count)
            || (wanted && applied > self.snaps.index)
        {
            self.request_snapshot(applied);
            return;
        }
        self.bound_memory(applied);
    }

    /// Keeps the in-memory log short between snapshots. etcd holds every
    /// entry since the last snapshot (up to `--snapshot-count`, 100k by
    /// default) in memory; oxcd compacts it to the newest
    /// `catch_up_entries` once it holds twice that many. The entries stay
    /// in the WAL for replay; a follower that needs an entry no longer in
    /// memory makes the loop take a fresh snapshot (see
    /// `LogStore::take_snapshot_wanted`), which costs a backend sync.
    fn bound_memory(&mut self, applied: u64) {
        let keep = self.snaps.settings.catch_up_entries.max(MIN_MEMORY_ENTRIES);
        let Ok(first) = self.raw.store().first_index() else {
            return;
        };
        if applied.saturating_sub(first) <= 2 * keep {
            return;
        }
        let compact = applied - keep;
        match self.raw.mut_store().compact_to(compact) {
            Ok(()) => tracing::debug!("compacted in-memory raft log at index {compact}"),
            Err(e) => tracing::warn!(compact, error = %e, "raft log compaction failed"),
        }
    }

    /// Asks the apply stage for the data of a snapshot at `index`, the last
    /// index handed over; term and conf state are taken now, as of it.
    fn request_snapshot(&mut self, index: u64) {
        let term = match self.raw.store().term(index) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot snapshot: term unknown");
                return;
            }
        };
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        // The stored conf state is updated as each conf change is handed
        // over, so it is the configuration as of `index`.
        match self.raw.store().initial_state() {
            Ok(rs) => meta.set_conf_state(rs.conf_state),
            Err(e) => {
                tracing::warn!(index, error = %e, "cannot snapshot: conf state unknown");
                return;
            }
        }
        let (reply, rx): (SyncSender<_>, _) = std::sync::mpsc::sync_channel(1);
        self.to_apply(ToApply::SnapshotData { index, reply });
        self.snaps.pending = Some(Pending { meta, reply: rx });
    }

    fn finish_snapshot(&mut self, meta: SnapshotMetadata, data: Vec<u8>) {
        let index = meta.index;
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data.into();
        self.save_snapshot_file(&snap);
        self.raw.mut_store().set_snapshot(snap);
        tracing::info!("saved snapshot at index {index}");
        let compact = index.saturating_sub(self.snaps.settings.catch_up_entries);
        if compact > 0 {
            match self.raw.mut_store().compact_to(compact) {
                Ok(()) => tracing::info!("compacted raft logs at index {compact}"),
                Err(e) => tracing::warn!(compact, error = %e, "raft log compaction failed"),
            }
        }
        self.release_and_purge(index);
    }

    /// Writes the `.snap` file, then the WAL marker (a marker must never
    /// name a missing file); either failing is fatal, as in etcd.
    fn save_snapshot_file(&mut self, snap: &Snapshot) {
        let file = match to_file(snap) {
            Ok(f) => f,
            Err(e) => fatal(&format!("cannot encode snapshot: {e}")),
        };
        oxcd_failpoint::failpoint!("raftBeforeSaveSnap");
        if let Err(e) = self.snaps.settings.snapshotter.save(&file) {
            fatal(&format!("failed to save snapshot: {e}"));
        }
        if let Err(e) = self.wal.save_snapshot(file.marker()) {
            fatal(&format!("failed to record snapshot in the WAL: {e}"));
        }
        oxcd_failpoint::failpoint!("raftAfterSaveSnap");
        self.snaps.index = file.index;
    }

    /// Unlocks WAL segments behind the snapshot and trims old files
    /// (etcd purges on a 30 s timer; here after each snapshot, the only
    /// time anything becomes purgeable).
    fn release_and_purge(&mut self, index: u64) {
        self.wal.release_to(index);
        let s = &self.snaps.settings;
        match wal::purge(s.fs.as_ref(), self.wal.dir(), s.max_wals) {
            Ok(removed) => {
                for p in removed {
                    tracing::info!("purged file {}", p.display());
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to purge wal files"),
        }
        match s.snapshotter.purge(s.max_snapshots) {
            Ok(removed) => {
                for p in removed {
                    tracing::info!("purged file {}", p.display());
                }
            }
            Err(e) => tracing::warn!(error = %e, "failed to purge snap files"),
        }
        crate::snapshot_transfer::remove_stale(s.snapshotter.dir(), index, false);
    }

    /// Installs a snapshot received from the leader (see the module doc
    /// for the order).
    pub(super) fn install_snapshot(&mut self, snap: Snapshot) {
        let index = snap.get_metadata().index;
        let db = self.snaps.db_path(index);
        tracing::info!(
            "applying snapshot at index {index} (term {})",
            snap.get_metadata().term
        );
        // A snapshot still being prepared would be older than this one.
        self.snaps.pending = None;
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        self.to_apply(ToApply::Restore {
            index,
            db: db.clone(),
            data: snap.data.clone(),
            reply,
        });
        match done.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fatal(&format!("failed to restore snapshot at index {index}: {e}")),
            Err(_) => fatal("the apply stage stopped"),
        }
        if let Err(e) = std::fs::remove_file(&db) {
            tracing::warn!(file = %db.display(), error = %e, "cannot remove applied snapshot db");
        }
        self.save_snapshot_file(&snap);
        if let Err(e) = self.raw.mut_store().apply_snapshot(snap) {
            fatal(&format!("raft refused snapshot at index {index}: {e}"));
        }
        tracing::info!("applied snapshot at index {index}");
        self.release_and_purge(index);
    }

    /// Hands a `MsgSnapshot` to the transport with the backend to send.
    pub(super) fn send_snapshot(&mut self, m: Message) {
        let to = m.to;
        let index = m.get_snapshot().get_metadata().index;
        let job = match m.write_to_bytes() {
            Ok(b) => SnapshotJob {
                to,
                index,
                message: b.into(),
                backend: self.snaps.settings.backend.clone(),
                scratch_dir: self.snaps.settings.snapshotter.dir().to_path_buf(),
                report: self.snaps.reports.clone(),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot encode snapshot message");
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
                return;
            }
        };
        if let Err(e) = self.transport.send_snapshot(job) {
            tracing::warn!(error = %e, "cannot send snapshot");
            self.raw.report_unreachable(to);
            self.raw.report_snapshot(to, SnapshotStatus::Failure);
        }
    }

    /// Tells raft how finished snapshot transfers went.
    pub(super) fn drain_snapshot_reports(&mut self) {
        while let Ok((to, ok)) = self.snaps.report_rx.try_recv() {
            let status = if ok {
                SnapshotStatus::Finish
            } else {
                self.raw.report_unreachable(to);
                SnapshotStatus::Failure
            };
            self.raw.report_snapshot(to, status);
        }
    }
}
