//! `oxcd export-etcd --data-dir D --out DIR`: a stopped oxcd member's data
//! directory written as an etcd 3.4 one, which the real etcd boots on
//! with the same member and cluster IDs, data, leases, users, alarms and
//! member list (issue 14, "and back").
//!
//! What etcd needs to start there: its backend (`member/snap/db`, written
//! as the Snapshot RPC writes it, with the `members` buckets), a snap file
//! at the backend's consistent index `CI` whose v2 store holds the members
//! (etcd 3.4 reads its member list from there) and whose configuration
//! has them as voters and learners, and a WAL whose metadata names the
//! member and cluster and which records that snapshot and a hard state
//! committing up to `CI`. So the log etcd starts from is empty after
//! `CI`: every entry of the member's log must be applied to its backend
//! first, which a clean stop (SIGTERM) does; otherwise the export is
//! refused rather than dropping entries the member may have acknowledged.
//!
//! The member list at `CI` is oxcd's newest snapshot's, with the conf
//! changes and attribute updates of the WAL after it replayed, as the
//! apply side would. No data in the oxcd directory changes (the WAL is
//! opened and locked as at a start, so a running member is refused).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxcd_etcd_format::membership::{v2_store_json, EtcdMember};
use oxcd_etcd_format::{snap, wal as etcd_wal};
use oxcd_mvcc::{BackendConfig, KvStore};
use oxcd_raft::fs::{Fs, OsFs};
use oxcd_raft::snap::Snapshotter;
use oxcd_raft::wal::{SnapshotMarker, Wal};
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType};

use crate::cluster::membership::Members;

/// The cluster version the exported files record.
const CLUSTER_VERSION: &str = "3.4.0";

/// Why an export failed; names the file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct ExportError {
    /// The file or directory.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

fn fail(path: &Path, what: impl ToString) -> ExportError {
    ExportError {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// What was exported.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The member.
    pub member_id: u64,
    /// Its cluster.
    pub cluster_id: u64,
    /// The raft index (and the etcd snapshot's) the export is at.
    pub index: u64,
    /// That index's term.
    pub term: u64,
    /// The members written.
    pub members: usize,
}

/// Writes the etcd data directory `out` (which must not exist) from the
/// oxcd data directory `data_dir`, whose WAL may be at `wal_dir`;
/// `rows_written` counts backend rows as they are written.
///
/// # Errors
/// [`ExportError`]: `out` exists, the member is running, its files do not
/// read, or its backend has not applied everything committed.
/// An oxcd log entry as etcd 3.4 reads it from its WAL; refused (with
/// why) when etcd 3.4 could not apply it: earlier oxcd versions' conf
/// changes and 3.5-only requests.
fn etcd_tail_entry(e: &Entry) -> Result<etcd_wal::Entry, &'static str> {
    let kind = match e.get_entry_type() {
        EntryType::EntryNormal => {
            if !e.data.is_empty() {
                use crate::cluster::v2::{decode_entry, EntryRequest};
                match decode_entry(e.data.as_ref()) {
                    Some(EntryRequest::V3(r))
                        if r.cluster_member_attr_set.is_some()
                            || r.cluster_version_set.is_some()
                            || r.downgrade_info_set.is_some() =>
                    {
                        return Err("a request etcd 3.4 does not know");
                    }
                    Some(_) => {}
                    None => return Err("undecodable"),
                }
            }
            0
        }
        EntryType::EntryConfChange => {
            if oxcd_raft::node::conf_change::is_legacy(&e.data) {
                return Err("a conf change in an earlier oxcd's form");
            }
            1
        }
        EntryType::EntryConfChangeV2 => return Err("a conf change v2"),
    };
    Ok(etcd_wal::Entry {
        kind,
        term: e.term,
        index: e.index,
        data: e.data.to_vec(),
    })
}

pub fn export(
    data_dir: &Path,
    wal_dir: Option<&Path>,
    out: &Path,
    rows_written: Option<&std::sync::atomic::AtomicU64>,
) -> Result<Exported, ExportError> {
    if out.exists() {
        return Err(fail(out, "already exists"));
    }
    let member = data_dir.join("member");
    let snap_dir = member.join("snap");
    let wal_dir = wal_dir.map_or_else(|| member.join("wal"), Path::to_path_buf);
    let identity_path = snap_dir.join("identity.json");
    let identity = crate::cluster::bootstrap::read_identity(&identity_path)
        .map_err(|e| fail(&identity_path, e))?;

    let fs_: Arc<dyn Fs> = Arc::new(OsFs);
    let snapshotter = Snapshotter::new(fs_.clone(), &snap_dir);
    let snapshot = crate::raft::boot::load_snapshot(&fs_, &wal_dir, &snapshotter)
        .map_err(|e| fail(&snap_dir, e))?;
    let marker = snapshot
        .as_ref()
        .map_or(SnapshotMarker::default(), |s| SnapshotMarker {
            index: s.get_metadata().index,
            term: s.get_metadata().term,
        });
    let (w, log) =
        Wal::open(fs_, &wal_dir, marker, crate::raft::boot::wal_options()).map_err(|e| {
            fail(
                &wal_dir,
                format!("{e} (is oxcd still running on this data directory?)"),
            )
        })?;
    let members = Members::new(identity.members.clone());
    if let Some(s) = &snapshot {
        members
            .restore_snapshot(&s.data)
            .map_err(|e| fail(&snap_dir, e))?;
    }
    // The backend is written at its consistent index; the log's entries
    // after it (applied later by etcd, or not yet committed: a member
    // stopped under load may have acknowledged entries the leader has not
    // yet told it are committed, and must keep them) go into etcd's WAL.
    let backend = snap_dir.join("db");
    let store = KvStore::open(&backend, BackendConfig::default()).map_err(|e| fail(&backend, e))?;
    let ci = store.consistent_index();
    let last = log.entries.last().map_or(marker.index, |e| e.index);
    if ci < marker.index {
        return Err(fail(
            &backend,
            format!(
                "has applied up to raft index {ci}, before the snapshot at {}",
                marker.index
            ),
        ));
    }
    if ci > last {
        // Applied further than the log it kept: only a backend restored
        // from a snapshot ahead of the WAL, which a member never leaves.
        return Err(fail(
            &wal_dir,
            format!("ends at index {last}, before the backend's consistent index {ci}"),
        ));
    }
    let mut term_at_ci = marker.term;
    let mut tail = Vec::new();
    for we in &log.entries {
        let e = Entry::parse_from_bytes(&we.data).map_err(|e| fail(&wal_dir, e))?;
        if e.index > ci {
            tail.push(etcd_tail_entry(&e).map_err(|what| {
                fail(
                    &backend,
                    format!(
                        "has applied up to raft index {ci} and entry {} after it is {what}: start this member and stop it with SIGTERM once it has applied it, then export again",
                        e.index
                    ),
                )
            })?);
            continue;
        }
        term_at_ci = e.term;
        match e.get_entry_type() {
            EntryType::EntryConfChange => {
                let (kind, cc) = oxcd_raft::node::conf_change::read(&e.data)
                    .ok_or_else(|| fail(&wal_dir, "corrupt conf change"))?;
                members.apply_conf_change(kind, cc.node_id, &cc.context);
            }
            EntryType::EntryNormal if !e.data.is_empty() => {
                use crate::cluster::v2::{change, decode_entry, EntryRequest, V2Change};
                match decode_entry(e.data.as_ref()) {
                    Some(EntryRequest::V3(r)) => {
                        if let Some(a) = r.cluster_member_attr_set {
                            let attrs = a.member_attributes.unwrap_or_default();
                            members.set_attributes(a.member_id, attrs.name, attrs.client_urls);
                        }
                    }
                    Some(EntryRequest::V2(v2)) => {
                        if let Ok(V2Change::Attributes {
                            id,
                            name,
                            client_urls,
                        }) = change(&v2)
                        {
                            members.set_attributes(id, name, client_urls);
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
    let view = store.export_view().map_err(|e| fail(&backend, e))?;

    let list = members.list();
    let removed = members.removed_ids();
    let result = (|| {
        let out_snap = out.join("member").join("snap");
        let out_wal = out.join("member").join("wal");
        create_private_dir(&out_snap)?;
        create_private_dir(&out_wal)?;
        let db = out_snap.join("db");
        crate::v3rpc::snapshot::write_file(&db, &view, &list, &removed, rows_written)
            .map_err(|e| fail(&db, e))?;
        let etcd_members: Vec<EtcdMember> = list
            .iter()
            .map(|m| EtcdMember {
                id: m.id,
                peer_urls: m.peer_urls.clone(),
                is_learner: m.is_learner,
                name: m.name.clone(),
                client_urls: m.client_urls.clone(),
            })
            .collect();
        let conf = snap::ConfState {
            voters: list
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.id)
                .collect(),
            learners: list.iter().filter(|m| m.is_learner).map(|m| m.id).collect(),
            ..snap::ConfState::default()
        };
        snap::write(
            &out_snap,
            ci,
            term_at_ci,
            conf,
            v2_store_json(&etcd_members, &removed, CLUSTER_VERSION),
        )
        .map_err(|e| fail(&out_snap, e))?;
        etcd_wal::write_new(
            &out_wal,
            identity.member.id,
            identity.cluster_id,
            (ci, term_at_ci),
            &tail,
            etcd_wal::HardState {
                term: log.hard_state.term.max(term_at_ci),
                vote: log.hard_state.vote,
                commit: log.hard_state.commit.clamp(ci, last),
            },
        )
        .map_err(|e| fail(&out_wal, e))?;
        Ok(())
    })();
    drop(w);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(out);
        return Err(e);
    }
    Ok(Exported {
        member_id: identity.member.id,
        cluster_id: identity.cluster_id,
        index: ci,
        term: term_at_ci,
        members: list.len(),
    })
}

fn create_private_dir(d: &Path) -> Result<(), ExportError> {
    crate::cluster::bootstrap::create_private_dir(d).map_err(|e| fail(d, e))
}
