//! etcd's data directories (issue 14): booting on one (here), restoring
//! an etcd snapshot into an oxcd directory ([`restore`]), and exporting an
//! oxcd directory as an etcd one ([`export`]).
//!
//! Booting on an etcd data directory: a stopped etcd 3.4/3.5
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
//! directory takes its place. With `--wal-dir W`, etcd's WAL is read from
//! `W`, oxcd's is built in `W.oxcd-import` and etcd's kept as `W.etcd`.
//! A start that finds an unmarked build redoes it; one that finds the
//! marked build finishes the switch. So a half-finished import is never
//! used, and etcd's files stay as they were, beside oxcd's, for going back.

use std::fs;
use std::path::{Path, PathBuf};

use oxcd_etcd_format::bolt;
use oxcd_etcd_format::membership::V2Cluster;
use oxcd_etcd_format::{snap, wal as etcd_wal};
use oxcd_raft::wal::{self, SnapshotMarker};

use crate::config::Config;
use convert::{convert_entry, Roster};
use files::{copy_backend, create_private_dir};

mod convert;
pub mod export;
mod files;
pub mod restore;

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
    #[error("{path}: {what}")]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Writing oxcd's files failed.
    #[error("writing {path}: {what}")]
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
    member: PathBuf,
    kept: PathBuf,
    work: PathBuf,
    /// The WAL when it lives outside `member/` (`--wal-dir`).
    wal: Option<WalDirs>,
}

/// A `--wal-dir` WAL: etcd's files there are set aside as `<dir>.etcd`,
/// oxcd's are built in `<dir>.oxcd-import` and renamed into place.
struct WalDirs {
    dir: PathBuf,
    kept: PathBuf,
    work: PathBuf,
}

impl Dirs {
    fn new(data_dir: &Path, wal_dir: &Path) -> Dirs {
        let beside = |dir: &Path, suffix: &str| {
            let mut name = dir.as_os_str().to_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        let wal_dir = wal_dir.components().collect::<PathBuf>();
        Dirs {
            member: data_dir.join("member"),
            kept: data_dir.join("member.etcd"),
            work: data_dir.join("member.oxcd-import"),
            wal: (!wal_dir.as_os_str().is_empty()).then(|| WalDirs {
                kept: beside(&wal_dir, ".etcd"),
                work: beside(&wal_dir, ".oxcd-import"),
                dir: wal_dir,
            }),
        }
    }

    /// Where etcd's WAL is read from.
    fn etcd_wal(&self) -> PathBuf {
        self.wal
            .as_ref()
            .map_or_else(|| self.member.join("wal"), |w| w.dir.clone())
    }

    /// Where oxcd's WAL is built.
    fn new_wal(&self) -> PathBuf {
        self.wal
            .as_ref()
            .map_or_else(|| self.work.join("wal"), |w| w.work.clone())
    }
}

/// If `cfg.data_dir` holds etcd's files, replaces them by oxcd's (keeping
/// etcd's as `member.etcd/`); otherwise does nothing.
///
/// # Errors
/// [`ImportError`]; nothing in etcd's files has been modified then.
pub fn import_if_etcd(cfg: &Config) -> Result<(), ImportError> {
    let dirs = Dirs::new(&cfg.data_dir, &cfg.wal_dir);
    if dirs.work.join(DONE).exists() {
        // A finished build whose switch was cut short: finish it.
        return switch(&dirs);
    }
    let db = dirs.member.join("snap").join("db");
    if !is_bolt(&db) {
        refuse_v2_only(&dirs)?;
        return Ok(());
    }
    for kept in std::iter::once(&dirs.kept).chain(dirs.wal.as_ref().map(|w| &w.kept)) {
        if kept.exists() {
            return Err(source(
                kept,
                "already exists (etcd files kept by an earlier import); move it away to import again",
            ));
        }
    }
    tracing::info!(
        "found an etcd data directory at {}: importing it",
        dirs.member.display()
    );
    let started = std::time::Instant::now();
    let summary = build(&dirs, &db).inspect_err(|_| {
        let _ = fs::remove_dir_all(&dirs.work);
        let _ = fs::remove_dir_all(dirs.new_wal());
    })?;
    switch(&dirs)?;
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

/// Turns a backend snapshot an etcd leader sent (a bbolt file, see
/// `oxcd_raft::rafthttp`) into oxcd's backend at the same path, before it
/// is installed; an oxcd backend is left as it is. The bbolt copy is read
/// with the import's checks, so a damaged file is refused, never used.
///
/// # Errors
/// [`ImportError`] naming the file.
pub fn convert_snapshot_db(db: &Path) -> Result<(), ImportError> {
    if !is_bolt(db) {
        return Ok(());
    }
    let out = db.with_extension("db.converted");
    if out.exists() {
        fs::remove_file(&out).map_err(|e| write_err(&out, e))?;
    }
    let backend = copy_backend(db, &out)?;
    fs::rename(&out, db).map_err(|e| write_err(db, e))?;
    tracing::info!(
        file = %db.display(),
        rows = backend.rows,
        consistent_index = backend.consistent_index,
        "converted an etcd member's database snapshot to oxcd's backend"
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

/// Puts the finished build in place of etcd's files, which are renamed
/// aside: the `--wal-dir` WAL first (if any), then `member/`. Each step is
/// skipped when a start cut short already did it, so a crash anywhere in
/// here is finished by the next start; while `member.oxcd-import/` exists,
/// a `member/` beside it is still etcd's.
fn switch(dirs: &Dirs) -> Result<(), ImportError> {
    let sync_parent = |p: &Path| {
        let parent = p.parent().unwrap_or(Path::new("."));
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_err(parent, e))
    };
    let set_aside = |from: &Path, to: &Path| {
        if to.exists() {
            return Err(source(
                to,
                "already exists (etcd files kept by an earlier import); move it away to import again",
            ));
        }
        fs::rename(from, to).map_err(|e| write_err(to, e))?;
        sync_parent(to)
    };
    oxcd_failpoint::failpoint!("importBeforeSwitch");
    if let Some(w) = &dirs.wal {
        if w.work.exists() {
            if w.dir.exists() {
                set_aside(&w.dir, &w.kept)?;
            }
            fs::rename(&w.work, &w.dir).map_err(|e| write_err(&w.dir, e))?;
            sync_parent(&w.dir)?;
        }
        oxcd_failpoint::failpoint!("importAfterWalSwitch");
    }
    if dirs.member.exists() {
        set_aside(&dirs.member, &dirs.kept)?;
    }
    oxcd_failpoint::failpoint!("importBetweenRenames");
    fs::rename(&dirs.work, &dirs.member).map_err(|e| write_err(&dirs.member, e))?;
    sync_parent(&dirs.member)?;
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
    let wal_dir = dirs.etcd_wal();
    let log = etcd_wal::read_dir(&wal_dir).map_err(|e| source(&wal_dir, e))?;
    if let Some((file, offset)) = &log.torn {
        // etcd repairs this on its next start: truncates there.
        tracing::warn!(
            file = %file.display(),
            offset,
            "etcd's WAL ends in a torn record (a write cut short by a crash); importing the entries before it, as etcd's repair would keep"
        );
    }
    let snap_dir = dirs.member.join("snap");
    let snapshot =
        snap::newest_available(&snap_dir, &log.snapshots).map_err(|e| source(&snap_dir, e))?;
    let v2 = match &snapshot {
        Some(s) => V2Cluster::from_store_json(&s.data).map_err(|e| source(&s.path, e))?,
        None => V2Cluster::default(),
    };

    for stale in [dirs.work.clone(), dirs.new_wal()] {
        if stale.exists() {
            // An earlier import stopped before it was marked done.
            fs::remove_dir_all(&stale).map_err(|e| write_err(&stale, e))?;
        }
    }
    create_private_dir(&dirs.work.join("snap"))?;
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
    let marker = snapshot
        .as_ref()
        .map_or(SnapshotMarker::default(), |s| SnapshotMarker {
            index: s.index,
            term: s.term,
        });
    let hs = log.hard_state.unwrap_or_default();
    let entries_written = entries.len();
    let wal_out = dirs.new_wal();
    files::write_raft_files(
        &dirs.work.join("snap"),
        &wal_out,
        files::RaftFiles {
            node_id: log.node_id,
            cluster_id: log.cluster_id,
            snapshot: snapshot.as_ref().map(|s| {
                (
                    marker,
                    s.conf_state.clone(),
                    snap_members,
                    v2.removed.clone(),
                )
            }),
            hard_state: wal::HardState {
                term: hs.term.max(marker.term),
                vote: hs.vote,
                commit: hs.commit.max(marker.index).min(last_index),
            },
            entries,
            members: roster.members(),
        },
    )?;

    if let Some(parent) = dirs.wal.as_ref().and_then(|w| w.work.parent()) {
        // The WAL built outside member/ must be there before the mark.
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_err(parent, e))?;
    }
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
        entries: entries_written,
        member_id: log.node_id,
        cluster_id: log.cluster_id,
    })
}

#[cfg(test)]
mod tests;
