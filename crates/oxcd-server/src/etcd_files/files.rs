//! Writing a new oxcd member directory: the backend from etcd's bbolt
//! rows, the identity, the snapshot file and the WAL.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use oxcd_etcd_format::bolt::{self, Item};
use oxcd_etcd_format::membership::EtcdMember;
use oxcd_etcd_format::snap;
use oxcd_mvcc::import::BackendImport;
use oxcd_raft::fs::{Fs, OsFs};
use oxcd_raft::wal::{self, SnapshotMarker, Wal};
use raft::prelude::{ConfState, Snapshot};

use super::{source, write_err, ImportError, META_KEYS};
use crate::cluster::bootstrap::Identity;
use crate::cluster::membership::Member;
use crate::v3rpc::snapshot::TABLES;

pub(super) fn create_private_dir(d: &Path) -> Result<(), ImportError> {
    crate::cluster::bootstrap::create_private_dir(d).map_err(|e| write_err(d, e))
}

/// What the backend copy found on the way.
pub(super) struct Backend {
    pub(super) rows: u64,
    pub(super) consistent_index: u64,
    /// The `members` bucket (etcd 3.4+ keeps members there too).
    pub(super) members: Vec<EtcdMember>,
}

/// Copies the backend file `db` into a new oxcd backend at `out`.
pub(super) fn copy_backend(db: &Path, out: &Path) -> Result<Backend, ImportError> {
    let file = fs::File::open(db).map_err(|e| source(db, e))?;
    copy_file(&file, db, out, None, None)
}

/// Copies the buckets oxcd keeps from the bbolt file `file` (opened from
/// `db`, named in errors), read a page at a time, into a new backend
/// at `out`; with `consistent_index`, that value replaces the source's
/// (etcd's `snapshot restore` sets it to the new cluster's bootstrap
/// index). `rows_read` counts the rows read, for a progress display.
pub(super) fn copy_file(
    file: &fs::File,
    db: &Path,
    out: &Path,
    consistent_index: Option<u64>,
    rows_read: Option<&std::sync::atomic::AtomicU64>,
) -> Result<Backend, ImportError> {
    let mut imp = BackendImport::create(out).map_err(|e| write_err(out, e))?;
    let mut bucket: Vec<u8> = Vec::new();
    // The table the current bucket is copied into, if oxcd keeps it.
    let mut table: Option<&str> = None;
    let mut found = Backend {
        rows: 0,
        consistent_index: 0,
        members: Vec::new(),
    };
    let mut failure: Option<ImportError> = None;
    let mut each = |item: Item<'_>| -> Result<(), bolt::BoltError> {
        match item {
            Item::Bucket(name) => {
                name.clone_into(&mut bucket);
                table = TABLES.iter().copied().find(|t| t.as_bytes() == name);
            }
            Item::Row(k, v) => {
                if let Some(n) = rows_read {
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if bucket == b"meta" {
                    if k == b"storageVersion" {
                        failure = Some(source(
                            db,
                            "has an etcd 3.6 schema (meta/storageVersion); oxcd reads etcd 3.4 and 3.5 data directories",
                        ));
                        return Err(bolt::BoltError::Invalid("unsupported schema".into()));
                    }
                    if k == b"consistent_index" {
                        found.consistent_index =
                            v.try_into().map(u64::from_be_bytes).unwrap_or_default();
                    }
                    if !META_KEYS.contains(&k)
                        || (k == b"consistent_index" && consistent_index.is_some())
                    {
                        return Ok(());
                    }
                }
                if bucket == b"members" {
                    if let Ok(m) = EtcdMember::from_json(v) {
                        found.members.push(m);
                    }
                }
                if let Some(table) = table {
                    if let Err(e) = imp.put(table, k, v) {
                        failure = Some(write_err(out, e));
                        return Err(bolt::BoltError::Invalid("write failed".into()));
                    }
                    found.rows += 1;
                }
            }
        }
        Ok(())
    };
    let visited = bolt::visit_file(file, &mut each);
    if let Some(f) = failure {
        return Err(f);
    }
    visited.map_err(|e| source(db, e))?;
    if let Some(ci) = consistent_index {
        imp.put("meta", b"consistent_index", &ci.to_be_bytes())
            .map_err(|e| write_err(out, e))?;
        found.consistent_index = ci;
    }
    imp.finish().map_err(|e| write_err(out, e))?;
    Ok(found)
}

/// The raft half of a member directory.
pub(super) struct RaftFiles {
    /// This member.
    pub node_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
    /// The snapshot the log starts after, if any: its position, its
    /// configuration, and the members and removed IDs then.
    pub snapshot: Option<(SnapshotMarker, snap::ConfState, Vec<Member>, Vec<u64>)>,
    /// The last hard state.
    pub hard_state: wal::HardState,
    /// The entries after the snapshot.
    pub entries: Vec<wal::Entry>,
    /// The members at the end of the log (the identity's list).
    pub members: Vec<Member>,
}

/// Writes `identity.json` and the snapshot file into `snap_dir` and a new
/// WAL at `wal_dir` (which must not exist yet), all synced.
pub(super) fn write_raft_files(
    snap_dir: &Path,
    wal_dir: &Path,
    r: RaftFiles,
) -> Result<(), ImportError> {
    let me = r
        .members
        .iter()
        .find(|m| m.id == r.node_id)
        .cloned()
        .ok_or_else(|| {
            source(
                wal_dir,
                format!(
                    "member {:x} is not in the member list {:x?}",
                    r.node_id,
                    r.members.iter().map(|m| m.id).collect::<Vec<_>>()
                ),
            )
        })?;
    let identity = Identity {
        member: me,
        members: r.members,
        cluster_id: r.cluster_id,
    };
    crate::cluster::bootstrap::write_identity(&snap_dir.join("identity.json"), &identity)
        .map_err(|e| write_err(snap_dir, e))?;
    let fs_: Arc<dyn Fs> = Arc::new(OsFs);
    let marker = match r.snapshot {
        Some((marker, cs, members, removed)) => {
            write_snapshot(&fs_, snap_dir, marker, &cs, members, &removed)?;
            marker
        }
        None => SnapshotMarker::default(),
    };
    let meta = format!(
        r#"{{"member_id":"{:x}","cluster_id":"{:x}"}}"#,
        r.node_id, r.cluster_id
    );
    let mut w = Wal::create(
        fs_,
        wal_dir,
        meta.as_bytes(),
        crate::raft::boot::wal_options(),
    )
    .map_err(|e| write_err(wal_dir, e))?;
    if marker.index > 0 {
        w.save_snapshot(marker).map_err(|e| write_err(wal_dir, e))?;
    }
    w.save(&r.hard_state, &r.entries)
        .map_err(|e| write_err(wal_dir, e))?;
    w.sync().map_err(|e| write_err(wal_dir, e))?;
    w.close().map_err(|e| write_err(wal_dir, e))
}

/// oxcd's snapshot file at `at` with configuration `conf`, and the
/// member list (etcd's v2 store's, for an import) as its data.
fn write_snapshot(
    fs_: &Arc<dyn Fs>,
    dir: &Path,
    at: SnapshotMarker,
    conf: &snap::ConfState,
    members: Vec<Member>,
    removed: &[u64],
) -> Result<(), ImportError> {
    let cs = ConfState {
        voters: conf.voters.clone(),
        learners: conf.learners.clone(),
        voters_outgoing: conf.voters_outgoing.clone(),
        learners_next: conf.learners_next.clone(),
        auto_leave: conf.auto_leave,
        ..ConfState::default()
    };
    let mut rs = Snapshot {
        data: crate::cluster::membership::snapshot_data_of(members, removed.to_vec()).into(),
        ..Snapshot::default()
    };
    let meta = rs.mut_metadata();
    meta.index = at.index;
    meta.term = at.term;
    meta.set_conf_state(cs);
    let file = oxcd_raft::node::snapshot_to_file(&rs).map_err(|e| write_err(dir, e))?;
    oxcd_raft::snap::Snapshotter::new(fs_.clone(), dir)
        .save(&file)
        .map_err(|e| write_err(dir, e))?;
    Ok(())
}
