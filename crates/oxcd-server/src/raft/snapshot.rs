//! The server's half of raft snapshots (etcd `etcdserver/server.go`
//! `snapshot` and `applySnapshot`, `etcdserver/snapshot_merge.go`).
//!
//! - Taking one: the backend is synced (so the WAL behind the snapshot can
//!   go) and the member list becomes the snapshot's data
//!   ([`Members::snapshot_data`]; etcd stores its v2 store there).
//! - Sending one: [`StoreExporter`] copies the backend through one redb
//!   read transaction (`KvStore::export_to`), a consistent point at or
//!   after the raft snapshot's index, without stopping writers.
//! - Installing one: the received file's contents replace the backend's
//!   (`KvStore::replace_from`), then the lessor reloads its leases, the
//!   watchers are re-synced against the new contents, the member list and
//!   peer links follow the snapshot, and replay resumes after the new
//!   consistent index.

use crate::apply::stage::ApplyStage;
use crate::cluster::membership::Members;
use oxcd_mvcc::{KvStore, WatchableStore};
use oxcd_raft::node::AppError;
use oxcd_raft::transport::BackendSource;
use std::path::Path;

/// What snapshots touch beyond the applier.
pub struct SnapshotParts {
    /// The backend.
    pub store: KvStore,
    /// The watchers over it.
    pub watchable: WatchableStore,
}

/// Exports the backend for a follower that needs a snapshot: oxcd's file
/// for an oxcd member, etcd's (as the Snapshot RPC writes it, with the
/// member list) for an etcd member.
pub struct StoreExporter(pub KvStore, pub Members);

impl BackendSource for StoreExporter {
    fn export(&self, dst: &Path) -> Result<u64, String> {
        self.0.export_to(dst).map_err(|e| e.to_string())
    }

    fn export_etcd(&self, dst: &Path) -> Result<u64, String> {
        let view = self.0.export_view().map_err(|e| e.to_string())?;
        let mut ci = 0;
        view.for_each("meta", |k, v| {
            if k == b"consistent_index" {
                ci = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
            }
            true
        })
        .map_err(|e| e.to_string())?;
        crate::v3rpc::snapshot::write_file(dst, &view, &self.1.list(), &self.1.removed_ids(), None)
            .map_err(|e| e.to_string())?;
        Ok(ci)
    }

    fn etcd_snapshot_data(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        crate::cluster::membership::etcd_v2_store(data).map_err(|e| e.to_string())
    }
}

/// Answers [`oxcd_raft::node::ToApply::SnapshotData`].
pub(crate) fn snapshot_data(app: &ApplyStage, index: u64) -> Result<Vec<u8>, AppError> {
    app.snap
        .store
        .sync()
        .map_err(|e| AppError(format!("backend sync before snapshot {index}: {e}")))?;
    Ok(app.members.snapshot_data())
}

/// Carries out [`oxcd_raft::node::ToApply::Restore`].
pub(crate) fn restore(
    app: &mut ApplyStage,
    index: u64,
    db: &Path,
    data: &[u8],
) -> Result<(), AppError> {
    let in_progress = &crate::metrics::counters().snapshot_apply_in_progress;
    in_progress.set(1);
    let result = restore_inner(app, index, db, data);
    in_progress.set(0);
    result
}

fn restore_inner(app: &mut ApplyStage, index: u64, db: &Path, data: &[u8]) -> Result<(), AppError> {
    let err = |what: &str, e: &dyn std::fmt::Display| AppError(format!("{what}: {e}"));
    if !db.exists() {
        return Err(AppError(format!(
            "snapshot backend {} is missing",
            db.display()
        )));
    }
    // A snapshot from an etcd leader carries etcd's bbolt file.
    crate::etcd_files::convert_snapshot_db(db).map_err(|e| err("etcd snapshot", &e))?;
    let store = &app.snap.store;
    store
        .replace_from(db)
        .map_err(|e| err("replace backend", &e))?;
    app.lessor
        .restore(store)
        .map_err(|e| err("restore leases", &e))?;
    app.applier
        .alarms()
        .reload(store)
        .map_err(|e| err("restore alarms", &e))?;
    app.applier
        .reload_auth()
        .map_err(|e| err("restore auth", &e))?;
    app.snap.watchable.restore();
    app.members
        .restore_snapshot(data)
        .map_err(|e| err("restore members", &e))?;
    sync_peers(&app.members, &app.transport, app.member_id);
    app.skip_until = store.consistent_index().max(index);
    tracing::info!(
        index,
        consistent_index = store.consistent_index(),
        revision = store.rev(),
        "restored backend and member list from snapshot"
    );
    Ok(())
}

/// Links to every member of the restored list, none to removed ones.
fn sync_peers(members: &Members, transport: &oxcd_raft::transport::Transport, me: u64) {
    for m in members.list() {
        if m.id != me && !transport.has_peer(m.id) {
            transport.add_peer(m.id, m.peer_urls);
        }
    }
    for id in members.removed_ids() {
        transport.remove_peer(id);
    }
}
