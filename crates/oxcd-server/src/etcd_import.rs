//! Booting on an etcd data directory (issue 14): a stopped etcd 3.4/3.5
//! member's `--data-dir`, or what `etcdctl snapshot restore` wrote, is
//! turned into oxcd's files before anything opens them.
//!
//! What is carried over, and how:
//! - the backend: every bbolt bucket oxcd keeps (`key`, `meta`, `lease`,
//!   `alarm`, `auth`, `authUsers`, `authRoles`) becomes the redb table of
//!   the same name, row for row (the byte images are etcd's); so keys,
//!   revisions, compaction state, leases (TTLs restart from their full
//!   TTL, as in etcd), users, roles and alarms come along, and the
//!   consistent index says which raft entries the backend already holds;
//! - raft: the member and cluster IDs (WAL metadata), the newest snapshot
//!   the WAL recorded (its index, term, configuration and the member list
//!   of its v2 store), the last hard state, and every entry after the
//!   snapshot, rewritten as oxcd proposes them: etcd's conf change type
//!   numbers and member JSON become raft-rs's and oxcd's, a v2 member
//!   attribute update becomes `ClusterMemberAttrSetRequest`, other v2
//!   requests (the cluster version) become empty entries; v3 requests are
//!   kept byte for byte. Entries up to the consistent index are skipped at
//!   apply as on any restart; the rest are applied then.
//!
//! Safety: the source is only read, with bbolt's lock taken (a running
//! etcd holds it). The new files are built in `member.oxcd-import/` and
//! marked complete; then `member/` is renamed `member.etcd/` and the new
//! directory takes its place. A start that finds an unmarked build
//! redoes it; one that finds the marked build but no `member/` finishes
//! the switch. So a half-finished import is never used, and etcd's files
//! stay as they were, beside oxcd's, for going back.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oxcd_api::etcdserverpb::{InternalRaftRequest, Request as V2Request};
use oxcd_api::membershippb::{Attributes, ClusterMemberAttrSetRequest};
use oxcd_etcd_format::bolt::{self, Item};
use oxcd_etcd_format::membership::{ConfChangeKind, EtcdMember, V2Cluster};
use oxcd_etcd_format::{snap, wal as etcd_wal};
use oxcd_mvcc::import::BackendImport;
use oxcd_raft::fs::{Fs, OsFs};
use oxcd_raft::wal::{self, SnapshotMarker, Wal};
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Snapshot};

use crate::bootstrap::Identity;
use crate::config::Config;
use crate::membership::{ConfContext, Member};

/// Buckets carried into oxcd's backend under their own names.
const TABLES: [&[u8]; 7] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"key",
    b"lease",
    b"meta",
];
/// `meta` keys oxcd reads (etcd 3.5's `term` and `confState` are left:
/// oxcd keeps those in its WAL and snapshots).
const META_KEYS: [&[u8]; 3] = [
    b"consistent_index",
    b"finishedCompactRev",
    b"scheduledCompactRev",
];
/// Marks a finished build in the scratch directory.
const DONE: &str = "IMPORT-DONE";

/// Why an etcd data directory cannot be booted on. Every variant names
/// the file and what is wrong; the source is never modified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// etcd (or another process) has the directory open.
    #[error("{0}: locked by another process (is etcd still running on this data directory?)")]
    Locked(PathBuf),
    /// Something in the source does not check out, or is a version
    /// oxcd does not read.
    #[error("cannot import etcd data directory: {path}: {what}")]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Writing oxcd's files failed.
    #[error("cannot import etcd data directory: writing {path}: {what}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}

fn source(path: &Path, what: impl ToString) -> ImportError {
    ImportError::Source {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn write_err(path: &Path, what: impl ToString) -> ImportError {
    ImportError::Write {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// Where the pieces are.
struct Dirs {
    data: PathBuf,
    member: PathBuf,
    kept: PathBuf,
    work: PathBuf,
}

impl Dirs {
    fn new(data_dir: &Path) -> Dirs {
        Dirs {
            data: data_dir.to_path_buf(),
            member: data_dir.join("member"),
            kept: data_dir.join("member.etcd"),
            work: data_dir.join("member.oxcd-import"),
        }
    }
}

/// If `cfg.data_dir` holds etcd's files, replaces them by oxcd's (keeping
/// etcd's as `member.etcd/`); otherwise does nothing.
///
/// # Errors
/// [`ImportError`]; nothing in etcd's files has been modified then.
pub fn import_if_etcd(cfg: &Config) -> Result<(), ImportError> {
    let dirs = Dirs::new(&cfg.data_dir);
    if !dirs.member.exists() && dirs.kept.exists() && dirs.work.join(DONE).exists() {
        return switch(&dirs, false);
    }
    let db = dirs.member.join("snap").join("db");
    if !is_bolt(&db) {
        refuse_v2_only(&dirs)?;
        return Ok(());
    }
    if !cfg.wal_dir.as_os_str().is_empty() {
        return Err(source(
            &cfg.wal_dir,
            "importing an etcd member whose WAL is outside member/wal (--wal-dir) is not supported; move it to member/wal and start without --wal-dir",
        ));
    }
    if dirs.kept.exists() {
        return Err(source(
            &dirs.kept,
            "already exists (etcd files kept by an earlier import); move it away to import member/ again",
        ));
    }
    tracing::info!(
        "found an etcd data directory at {}: importing it",
        dirs.member.display()
    );
    let started = std::time::Instant::now();
    let summary = build(&dirs, &db).inspect_err(|_| {
        let _ = fs::remove_dir_all(&dirs.work);
    })?;
    switch(&dirs, true)?;
    tracing::info!(
        rows = summary.rows,
        consistent_index = summary.consistent_index,
        snapshot_index = summary.snapshot_index,
        entries = summary.entries,
        member = %format!("{:x}", summary.member_id),
        cluster = %format!("{:x}", summary.cluster_id),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "imported the etcd data directory; etcd's files are kept unchanged in {}",
        dirs.kept.display()
    );
    Ok(())
}

fn is_bolt(db: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 32];
    fs::File::open(db)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| bolt::looks_like_bolt(&head))
}

/// An etcd 2 data directory has a WAL and snap files but no v3 backend.
fn refuse_v2_only(dirs: &Dirs) -> Result<(), ImportError> {
    let snap = dirs.member.join("snap");
    let wal_dir = dirs.member.join("wal");
    let oxcd_own = snap.join("db").exists() || snap.join("identity.json").exists();
    let etcd_wal = etcd_wal::wal_files(&wal_dir).is_ok_and(|f| !f.is_empty());
    if !oxcd_own && etcd_wal {
        return Err(source(
            &dirs.member,
            "has a WAL but no v3 backend (member/snap/db): an etcd v2 data directory, which oxcd does not read; upgrade it with etcd 3.4 first",
        ));
    }
    Ok(())
}

/// Renames `member/` aside (unless `move_source` is false: already done)
/// and the finished build into its place.
fn switch(dirs: &Dirs, move_source: bool) -> Result<(), ImportError> {
    let sync_data = || {
        fs::File::open(&dirs.data)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_err(&dirs.data, e))
    };
    if move_source {
        fs::rename(&dirs.member, &dirs.kept).map_err(|e| write_err(&dirs.kept, e))?;
        sync_data()?;
    }
    fs::rename(&dirs.work, &dirs.member).map_err(|e| write_err(&dirs.member, e))?;
    sync_data()?;
    let _ = fs::remove_file(dirs.member.join(DONE));
    Ok(())
}

struct Summary {
    rows: u64,
    consistent_index: u64,
    snapshot_index: u64,
    entries: usize,
    member_id: u64,
    cluster_id: u64,
}

fn build(dirs: &Dirs, db: &Path) -> Result<Summary, ImportError> {
    // bbolt's own lock: held by a running etcd, and held here until the
    // import is done so nobody starts etcd underneath it.
    let lock = fs::File::open(db).map_err(|e| source(db, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(ImportError::Locked(db.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => return Err(source(db, e)),
    }
    let wal_dir = dirs.member.join("wal");
    let log = etcd_wal::read_dir(&wal_dir).map_err(|e| source(&wal_dir, e))?;
    let snap_dir = dirs.member.join("snap");
    let snapshot =
        snap::newest_available(&snap_dir, &log.snapshots).map_err(|e| source(&snap_dir, e))?;
    let v2 = match &snapshot {
        Some(s) => V2Cluster::from_store_json(&s.data).map_err(|e| source(&s.path, e))?,
        None => V2Cluster::default(),
    };

    if dirs.work.exists() {
        // An earlier import stopped before it was marked done.
        fs::remove_dir_all(&dirs.work).map_err(|e| write_err(&dirs.work, e))?;
    }
    for d in [dirs.work.join("snap"), dirs.work.join("wal")] {
        create_private_dir(&d)?;
    }
    let backend = copy_backend(db, &dirs.work.join("snap").join("db"))?;
    let snapshot_index = snapshot.as_ref().map_or(0, |s| s.index);
    if backend.consistent_index < snapshot_index {
        return Err(source(
            db,
            format!(
                "consistent index {} is behind the raft snapshot at {snapshot_index}",
                backend.consistent_index
            ),
        ));
    }

    let tail: Vec<&etcd_wal::Entry> = log
        .entries
        .iter()
        .filter(|e| e.index > snapshot_index)
        .collect();
    if let Some(first) = tail.first() {
        if first.index != snapshot_index + 1 {
            return Err(source(
                &wal_dir,
                format!(
                    "entries {}..{} are missing (the WAL starts after the snapshot at {snapshot_index})",
                    snapshot_index + 1,
                    first.index - 1
                ),
            ));
        }
    }
    let last_index = tail.last().map_or(snapshot_index, |e| e.index);
    if backend.consistent_index > last_index {
        return Err(source(
            &wal_dir,
            format!(
                "ends at index {last_index}, before the backend's consistent index {}",
                backend.consistent_index
            ),
        ));
    }

    let mut roster = Roster::new(&v2, &backend.members);
    let snap_members = roster.members();
    let mut entries = Vec::with_capacity(tail.len());
    for e in &tail {
        entries.push(
            convert_entry(e, &mut roster)
                .map_err(|what| source(&wal_dir, format!("entry {}: {what}", e.index)))?,
        );
    }
    let members = roster.members();
    let me = members
        .iter()
        .find(|m| m.id == log.node_id)
        .cloned()
        .ok_or_else(|| {
            source(
                &wal_dir,
                format!(
                    "member {:x} (the WAL's) is not in the member list {:x?}",
                    log.node_id,
                    members.iter().map(|m| m.id).collect::<Vec<_>>()
                ),
            )
        })?;
    let identity = Identity {
        member: me,
        members,
        cluster_id: log.cluster_id,
    };
    crate::bootstrap::write_identity(&dirs.work.join("snap").join("identity.json"), &identity)
        .map_err(|e| write_err(&dirs.work, e))?;

    let fs_: Arc<dyn Fs> = Arc::new(OsFs);
    let marker = match &snapshot {
        Some(s) => {
            write_snapshot(&fs_, &dirs.work.join("snap"), s, snap_members, &v2.removed)?;
            SnapshotMarker {
                index: s.index,
                term: s.term,
            }
        }
        None => SnapshotMarker::default(),
    };
    let hs = log.hard_state.unwrap_or_default();
    let hard_state = wal::HardState {
        term: hs.term.max(marker.term),
        vote: hs.vote,
        commit: hs.commit.max(marker.index).min(last_index),
    };
    let wal_out = dirs.work.join("wal");
    let meta = format!(
        r#"{{"member_id":"{:x}","cluster_id":"{:x}"}}"#,
        log.node_id, log.cluster_id
    );
    // `Wal::create` builds in `<dir>.tmp` and renames: the directory must
    // not exist yet.
    fs::remove_dir(&wal_out).map_err(|e| write_err(&wal_out, e))?;
    let mut w = Wal::create(
        fs_,
        &wal_out,
        meta.as_bytes(),
        crate::raft_boot::wal_options(),
    )
    .map_err(|e| write_err(&wal_out, e))?;
    if marker.index > 0 {
        w.save_snapshot(marker)
            .map_err(|e| write_err(&wal_out, e))?;
    }
    w.save(&hard_state, &entries)
        .map_err(|e| write_err(&wal_out, e))?;
    w.sync().map_err(|e| write_err(&wal_out, e))?;
    w.close().map_err(|e| write_err(&wal_out, e))?;

    let done = dirs.work.join(DONE);
    fs::write(&done, b"").map_err(|e| write_err(&done, e))?;
    fs::File::open(&dirs.work)
        .and_then(|d| d.sync_all())
        .map_err(|e| write_err(&dirs.work, e))?;
    drop(lock);
    Ok(Summary {
        rows: backend.rows,
        consistent_index: backend.consistent_index,
        snapshot_index,
        entries: entries.len(),
        member_id: log.node_id,
        cluster_id: log.cluster_id,
    })
}

fn create_private_dir(d: &Path) -> Result<(), ImportError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(|e| write_err(d, e))
}

/// What the backend copy found on the way.
struct Backend {
    rows: u64,
    consistent_index: u64,
    /// The `members` bucket (etcd 3.4+ keeps members there too).
    members: Vec<EtcdMember>,
}

fn copy_backend(db: &Path, out: &Path) -> Result<Backend, ImportError> {
    let data = fs::read(db).map_err(|e| source(db, e))?;
    let mut imp = BackendImport::create(out).map_err(|e| write_err(out, e))?;
    let mut bucket: Vec<u8> = Vec::new();
    let mut found = Backend {
        rows: 0,
        consistent_index: 0,
        members: Vec::new(),
    };
    let mut failure: Option<ImportError> = None;
    let visited = bolt::visit(&data, &mut |item| {
        match item {
            Item::Bucket(name) => name.clone_into(&mut bucket),
            Item::Row(k, v) => {
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
                    if !META_KEYS.contains(&k) {
                        return Ok(());
                    }
                }
                if bucket == b"members" {
                    if let Ok(m) = EtcdMember::from_json(v) {
                        found.members.push(m);
                    }
                }
                if TABLES.contains(&bucket.as_slice()) {
                    let table = String::from_utf8_lossy(&bucket).into_owned();
                    if let Err(e) = imp.put(&table, k, v) {
                        failure = Some(write_err(out, e));
                        return Err(bolt::BoltError::Invalid("write failed".into()));
                    }
                    found.rows += 1;
                }
            }
        }
        Ok(())
    });
    if let Some(f) = failure {
        return Err(f);
    }
    visited.map_err(|e| source(db, e))?;
    imp.finish().map_err(|e| write_err(out, e))?;
    Ok(found)
}

/// The members as the log goes on: from the snapshot's v2 store (or,
/// without one, the backend's `members` bucket for names), changed by
/// each conf change and attribute update in the tail.
struct Roster {
    members: std::collections::BTreeMap<u64, Member>,
    /// Names and client URLs known from the backend, for members the v2
    /// store has no attributes for.
    known: std::collections::HashMap<u64, EtcdMember>,
}

impl Roster {
    fn new(v2: &V2Cluster, bucket: &[EtcdMember]) -> Roster {
        let known = bucket.iter().map(|m| (m.id, m.clone())).collect();
        let members = v2.members.iter().map(|m| (m.id, to_member(m))).collect();
        Roster { members, known }
    }

    fn members(&self) -> Vec<Member> {
        self.members
            .values()
            .map(|m| {
                let mut m = m.clone();
                if let Some(k) = self.known.get(&m.id) {
                    if m.name.is_empty() {
                        m.name.clone_from(&k.name);
                    }
                    if m.client_urls.is_empty() {
                        m.client_urls.clone_from(&k.client_urls);
                    }
                }
                m
            })
            .collect()
    }
}

fn to_member(m: &EtcdMember) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// One etcd entry as an oxcd WAL entry (a raft-rs `Entry`).
fn convert_entry(e: &etcd_wal::Entry, roster: &mut Roster) -> Result<wal::Entry, String> {
    let mut out = Entry {
        term: e.term,
        index: e.index,
        ..Entry::default()
    };
    match e.kind {
        0 => {
            out.set_entry_type(EntryType::EntryNormal);
            out.data = convert_normal(&e.data, roster)?.into();
        }
        1 => {
            out.set_entry_type(EntryType::EntryConfChange);
            out.data = convert_conf_change(&e.data, roster)?.into();
        }
        other => {
            return Err(format!(
                "entry type {other} (conf change v2) is not supported"
            ))
        }
    }
    Ok(wal::Entry {
        index: e.index,
        term: e.term,
        data: out.write_to_bytes().map_err(|e| e.to_string())?,
    })
}

/// A normal entry's data, as etcd's `applyEntryNormal` tells them apart:
/// an `InternalRaftRequest`, else a bare v2 `Request`.
fn convert_normal(data: &[u8], roster: &mut Roster) -> Result<Vec<u8>, String> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let v2 = match InternalRaftRequest::decode(data) {
        Ok(r) => match r.v2 {
            Some(v2) => v2,
            None => {
                if let Some(a) = &r.cluster_member_attr_set {
                    let attrs = a.member_attributes.clone().unwrap_or_default();
                    roster.set_attributes(a.member_id, attrs.name, attrs.client_urls);
                }
                return Ok(data.to_vec());
            }
        },
        Err(_) => V2Request::decode(data).map_err(|e| format!("undecodable request: {e}"))?,
    };
    let path = v2.path.clone().unwrap_or_default();
    let attrs = path
        .strip_prefix("/0/members/")
        .and_then(|rest| rest.strip_suffix("/attributes"))
        .and_then(|id| u64::from_str_radix(id, 16).ok());
    match (v2.method.as_deref(), attrs) {
        (Some("PUT"), Some(member_id)) => {
            let m = EtcdMember::from_json(v2.val.as_deref().unwrap_or("{}").as_bytes())
                .map_err(|e| format!("member attributes: {e}"))?;
            roster.set_attributes(member_id, m.name.clone(), m.client_urls.clone());
            Ok(InternalRaftRequest {
                cluster_member_attr_set: Some(ClusterMemberAttrSetRequest {
                    member_id,
                    member_attributes: Some(Attributes {
                        name: m.name,
                        client_urls: m.client_urls,
                    }),
                }),
                ..InternalRaftRequest::default()
            }
            .encode_to_vec())
        }
        // The cluster version and anything else of the v2 store: oxcd
        // keeps no v2 store.
        _ => Ok(Vec::new()),
    }
}

impl Roster {
    fn set_attributes(&mut self, id: u64, name: String, client_urls: Vec<String>) {
        if let Some(m) = self.members.get_mut(&id) {
            m.name = name;
            m.client_urls = client_urls;
        }
    }
}

/// etcd's conf change (type numbers, member JSON context) as oxcd
/// proposes the same change (see `v3rpc/cluster.rs`).
fn convert_conf_change(data: &[u8], roster: &mut Roster) -> Result<Vec<u8>, String> {
    let cc = oxcd_etcd_format::membership::ConfChange::decode(data)
        .map_err(|e| format!("conf change: {e}"))?;
    let kind = cc
        .kind()
        .ok_or_else(|| format!("unknown conf change type {}", cc.change_type))?;
    let mut out = ConfChange {
        id: cc.id,
        node_id: cc.node_id,
        ..ConfChange::default()
    };
    let context = |op: &str, learner: bool| -> Result<(Member, Vec<u8>), String> {
        let m = EtcdMember::from_json(&cc.context).map_err(|e| format!("member: {e}"))?;
        let member = Member {
            id: cc.node_id,
            is_learner: learner,
            ..to_member(&m)
        };
        Ok((member.clone(), ConfContext::new(op, &member).encode()))
    };
    match kind {
        ConfChangeKind::RemoveNode => {
            out.set_change_type(ConfChangeType::RemoveNode);
            roster.members.remove(&cc.node_id);
        }
        ConfChangeKind::AddLearnerNode => {
            out.set_change_type(ConfChangeType::AddLearnerNode);
            let (m, ctx) = context("add", true)?;
            out.context = ctx.into();
            roster.members.entry(m.id).or_insert(m);
        }
        ConfChangeKind::AddNode => {
            out.set_change_type(ConfChangeType::AddNode);
            match roster.members.get_mut(&cc.node_id) {
                Some(existing) if existing.is_learner => {
                    existing.is_learner = false;
                    let (_, ctx) = context("promote", false)?;
                    out.context = ctx.into();
                }
                _ => {
                    let (m, ctx) = context("add", false)?;
                    out.context = ctx.into();
                    roster.members.entry(m.id).or_insert(m);
                }
            }
        }
        ConfChangeKind::UpdateNode => {
            let learner = roster
                .members
                .get(&cc.node_id)
                .is_some_and(|m| m.is_learner);
            out.set_change_type(if learner {
                ConfChangeType::AddLearnerNode
            } else {
                ConfChangeType::AddNode
            });
            let (m, ctx) = context("update", learner)?;
            out.context = ctx.into();
            if let Some(existing) = roster.members.get_mut(&cc.node_id) {
                existing.peer_urls = m.peer_urls;
            }
        }
    }
    out.write_to_bytes().map_err(|e| e.to_string())
}

/// oxcd's snapshot file at etcd's snapshot position, with the member list
/// of etcd's v2 store as its data.
fn write_snapshot(
    fs_: &Arc<dyn Fs>,
    dir: &Path,
    s: &snap::EtcdSnapshot,
    members: Vec<Member>,
    removed: &[u64],
) -> Result<(), ImportError> {
    let cs = ConfState {
        voters: s.conf_state.voters.clone(),
        learners: s.conf_state.learners.clone(),
        voters_outgoing: s.conf_state.voters_outgoing.clone(),
        learners_next: s.conf_state.learners_next.clone(),
        auto_leave: s.conf_state.auto_leave,
        ..ConfState::default()
    };
    let mut rs = Snapshot {
        data: crate::membership::snapshot_data_of(members, removed.to_vec()).into(),
        ..Snapshot::default()
    };
    let meta = rs.mut_metadata();
    meta.index = s.index;
    meta.term = s.term;
    meta.set_conf_state(cs);
    let file = oxcd_raft::node::snapshot_to_file(&rs).map_err(|e| write_err(dir, e))?;
    oxcd_raft::snap::Snapshotter::new(fs_.clone(), dir)
        .save(&file)
        .map_err(|e| write_err(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_etcd_format::membership::ConfChange as EtcdConfChange;

    fn roster_of(members: &[(u64, bool)]) -> Roster {
        let v2 = V2Cluster {
            members: members
                .iter()
                .map(|&(id, is_learner)| EtcdMember {
                    id,
                    is_learner,
                    peer_urls: vec![format!("http://127.0.0.1:{id}")],
                    ..EtcdMember::default()
                })
                .collect(),
            removed: Vec::new(),
        };
        Roster::new(&v2, &[])
    }

    fn etcd_cc(change_type: i32, node_id: u64, ctx: &str) -> Vec<u8> {
        EtcdConfChange {
            id: 77,
            change_type,
            node_id,
            context: ctx.as_bytes().to_vec(),
        }
        .encode_to_vec()
    }

    fn decoded(b: &[u8]) -> ConfChange {
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(b).unwrap();
        cc
    }

    #[test]
    fn etcd_conf_changes_become_oxcds() {
        let mut r = roster_of(&[(1, false), (2, true)]);
        // Add learner (etcd 3) → raft-rs AddLearnerNode (2).
        let cc = decoded(
            &convert_conf_change(
                &etcd_cc(
                    3,
                    3,
                    r#"{"id":3,"peerURLs":["http://h:3"],"isLearner":true}"#,
                ),
                &mut r,
            )
            .unwrap(),
        );
        assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
        assert_eq!(cc.id, 77);
        let ctx = ConfContext::decode(&cc.context).unwrap();
        assert_eq!((ctx.op.as_str(), ctx.is_learner), ("add", true));
        assert!(r.members.get(&3).unwrap().is_learner);
        // Update (etcd 2) of a learner stays a learner change; of a voter,
        // an AddNode with op "update".
        let cc = decoded(
            &convert_conf_change(
                &etcd_cc(
                    2,
                    2,
                    r#"{"id":2,"peerURLs":["http://new:2"],"isLearner":true}"#,
                ),
                &mut r,
            )
            .unwrap(),
        );
        assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
        assert_eq!(ConfContext::decode(&cc.context).unwrap().op, "update");
        assert_eq!(r.members.get(&2).unwrap().peer_urls, vec!["http://new:2"]);
        let cc = decoded(
            &convert_conf_change(
                &etcd_cc(2, 1, r#"{"id":1,"peerURLs":["http://new:1"]}"#),
                &mut r,
            )
            .unwrap(),
        );
        assert_eq!(cc.get_change_type(), ConfChangeType::AddNode);
        // AddNode of a learner is etcd's promotion.
        let cc = decoded(
            &convert_conf_change(
                &etcd_cc(0, 2, r#"{"id":2,"peerURLs":["http://new:2"]}"#),
                &mut r,
            )
            .unwrap(),
        );
        assert_eq!(cc.get_change_type(), ConfChangeType::AddNode);
        assert_eq!(ConfContext::decode(&cc.context).unwrap().op, "promote");
        assert!(!r.members.get(&2).unwrap().is_learner);
        // Remove carries no context in etcd.
        let cc = decoded(&convert_conf_change(&etcd_cc(1, 3, ""), &mut r).unwrap());
        assert_eq!(cc.get_change_type(), ConfChangeType::RemoveNode);
        assert!(!r.members.contains_key(&3));
        // An unknown type, or an add without a member, is refused.
        assert!(convert_conf_change(&etcd_cc(9, 3, "{}"), &mut r).is_err());
        assert!(convert_conf_change(&etcd_cc(0, 4, "not json"), &mut r).is_err());
    }

    #[test]
    fn v2_requests_become_attribute_updates_or_nothing() {
        let mut r = roster_of(&[(0x1a, false)]);
        let publish = V2Request {
            id: Some(5),
            method: Some("PUT".into()),
            path: Some("/0/members/1a/attributes".into()),
            val: Some(r#"{"name":"n1","clientURLs":["http://c:1"]}"#.into()),
            ..V2Request::default()
        };
        let out = convert_normal(&publish.encode_to_vec(), &mut r).unwrap();
        let req = InternalRaftRequest::decode(out.as_slice()).unwrap();
        let set = req.cluster_member_attr_set.unwrap();
        assert_eq!(set.member_id, 0x1a);
        assert_eq!(set.member_attributes.unwrap().name, "n1");
        assert_eq!(r.members()[0].client_urls, vec!["http://c:1"]);
        let version = V2Request {
            method: Some("PUT".into()),
            path: Some("/0/version".into()),
            val: Some("3.4.0".into()),
            ..V2Request::default()
        };
        assert!(convert_normal(&version.encode_to_vec(), &mut r)
            .unwrap()
            .is_empty());
        // A v3 request is kept byte for byte.
        let put = InternalRaftRequest {
            put: Some(oxcd_api::etcdserverpb::PutRequest {
                key: b"k".to_vec().into(),
                ..Default::default()
            }),
            ..InternalRaftRequest::default()
        }
        .encode_to_vec();
        assert_eq!(convert_normal(&put, &mut r).unwrap(), put);
        assert!(convert_normal(b"", &mut r).unwrap().is_empty());
    }

    #[test]
    fn an_etcd_3_6_backend_is_refused_before_anything_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let mut w = bolt::BoltWriter::new(std::fs::File::create(&db).unwrap()).unwrap();
        {
            let mut b = w.bucket(b"meta").unwrap();
            b.put(b"consistent_index", &5u64.to_be_bytes()).unwrap();
            b.put(b"storageVersion", b"3.6.0").unwrap();
            b.finish().unwrap();
        }
        w.finish().unwrap();
        let err = copy_backend(&db, &dir.path().join("out"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("3.6") && err.contains(&db.display().to_string()),
            "{err}"
        );
    }
}
