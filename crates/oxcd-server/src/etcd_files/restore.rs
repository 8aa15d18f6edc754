//! `oxcd snapshot restore`: an etcd snapshot file (what `etcdctl snapshot
//! save` writes, from etcd or oxcd) to a new oxcd data directory, with the
//! flags and checks of `etcdctl snapshot restore` (etcd 3.4's
//! `clientv3/snapshot` `Restore`):
//!
//! - the file is a bbolt file, plus its SHA-256 when its length is
//!   ≡ 32 (mod 512); the digest must match, and a file without one is
//!   taken only with `--skip-hash-check`;
//! - the new cluster is the one `--initial-cluster`, `--initial-cluster-
//!   token` and `--initial-advertise-peer-urls` describe, with etcd's IDs;
//!   its log starts after a snapshot at index n (the number of members,
//!   term 1) whose configuration has every member as a voter, and the
//!   backend's consistent index is n, so nothing before is replayed;
//! - the member buckets of the old cluster are not carried (etcd deletes
//!   them); keys, leases, auth and alarms are.
//!
//! The directory is built beside its destination and renamed into place,
//! so a failed restore leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};

use oxcd_etcd_format::snap;
use oxcd_raft::wal::{self, SnapshotMarker};

use super::files::{copy_file, create_private_dir, write_raft_files, RaftFiles};
use super::{source, write_err, ImportError};
use crate::cluster::membership::{cluster_id, InitialCluster};

/// The flags of `etcdctl snapshot restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The snapshot file.
    pub snapshot: PathBuf,
    /// `--name`.
    pub name: String,
    /// `--data-dir` (etcd's default: `<name>.etcd`).
    pub data_dir: PathBuf,
    /// `--wal-dir` (default `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--skip-hash-check`.
    pub skip_hash_check: bool,
    /// Counts the snapshot's rows as they are copied (for a progress
    /// display); optional.
    pub rows_read: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// What was restored, for the messages etcdctl prints.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The new cluster's ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    /// Every member: ID and peer URLs.
    pub members: Vec<(u64, Vec<String>)>,
    /// Rows copied into the backend.
    pub rows: u64,
}

/// SHA-256 digest length: what `snapshot save` appends.
const DIGEST: usize = 32;

/// Restores `o.snapshot` into `o.data_dir`, which must not exist.
///
/// # Errors
/// [`ImportError`] naming the file: the data dir exists, the digest is
/// missing or wrong, the file is not a valid bbolt file, the cluster
/// flags are inconsistent, or writing failed.
pub fn restore(o: &RestoreOptions) -> Result<Restored, ImportError> {
    if o.data_dir.exists() {
        return Err(source(&o.data_dir, "data-dir exists"));
    }
    if let Some(w) = &o.wal_dir {
        if w.exists() {
            return Err(source(w, "wal-dir exists"));
        }
    }
    let ic = InitialCluster::parse(&o.initial_cluster).map_err(|e| source(&o.snapshot, e))?;
    let mut members = ic
        .members(
            &o.name,
            &o.initial_advertise_peer_urls,
            &o.initial_cluster_token,
        )
        .map_err(|e| source(&o.snapshot, e))?;
    // Named once they publish, as in a new cluster.
    for m in &mut members {
        if m.name != o.name {
            m.name.clear();
        }
        m.client_urls.clear();
    }
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cid = cluster_id(&ids);
    let me = members
        .iter()
        .find(|m| m.name == o.name)
        .map(|m| m.id)
        .ok_or_else(|| source(&o.snapshot, format!("no member named {:?}", o.name)))?;

    let file = fs::File::open(&o.snapshot).map_err(|e| source(&o.snapshot, e))?;
    check_digest(&file, &o.snapshot, o.skip_hash_check)?;

    let scratch = scratch_of(&o.data_dir);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| write_err(&scratch, e))?;
    }
    let built = build(o, &file, &scratch, me, cid, &members);
    let rows = match built {
        Ok(rows) => rows,
        Err(e) => {
            let _ = fs::remove_dir_all(&scratch);
            if let Some(w) = &o.wal_dir {
                let _ = fs::remove_dir_all(w);
            }
            return Err(e);
        }
    };
    fs::rename(&scratch, &o.data_dir).map_err(|e| write_err(&o.data_dir, e))?;
    if let Some(parent) = o.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| write_err(parent, e))?;
    }
    Ok(Restored {
        cluster_id: cid,
        member_id: me,
        members: members
            .iter()
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect(),
        rows,
    })
}

/// `<data-dir>.oxcd-restore`.
fn scratch_of(data_dir: &Path) -> PathBuf {
    let mut s = data_dir.as_os_str().to_owned();
    s.push(".oxcd-restore");
    PathBuf::from(s)
}

/// Checks a snapshot file's trailing SHA-256 (present when its length is
/// ≡ 32 mod 512) against the bytes before it, read in 1 MiB pieces. The
/// bbolt reader never reads the digest: its pages end before it.
fn check_digest(file: &fs::File, path: &Path, skip: bool) -> Result<(), ImportError> {
    use std::os::unix::fs::FileExt;
    let io = |e: std::io::Error| source(path, e);
    let len = file.metadata().map_err(io)?.len();
    if len % 512 != DIGEST as u64 {
        if skip {
            return Ok(());
        }
        return Err(source(
            path,
            "snapshot missing hash but --skip-hash-check=false",
        ));
    }
    if skip {
        return Ok(());
    }
    let body = len - DIGEST as u64;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < body {
        let n = buf
            .len()
            .min(usize::try_from(body - at).unwrap_or(usize::MAX));
        file.read_exact_at(&mut buf[..n], at).map_err(io)?;
        ctx.update(&buf[..n]);
        at += n as u64;
    }
    let mut digest = [0u8; DIGEST];
    file.read_exact_at(&mut digest, body).map_err(io)?;
    let actual = ctx.finish();
    if actual.as_ref() != digest {
        return Err(source(
            path,
            format!("expected sha256 {:?}, got {:?}", digest, actual.as_ref()),
        ));
    }
    Ok(())
}

fn build(
    o: &RestoreOptions,
    db: &fs::File,
    scratch: &Path,
    me: u64,
    cid: u64,
    members: &[crate::cluster::membership::Member],
) -> Result<u64, ImportError> {
    let snap_dir = scratch.join("member").join("snap");
    create_private_dir(&snap_dir)?;
    let n = members.len() as u64;
    let backend = copy_file(
        db,
        &o.snapshot,
        &snap_dir.join("db"),
        Some(n),
        o.rows_read.as_deref(),
    )?;
    // The WAL goes where the member will look for it: `--wal-dir`, or
    // `member/wal` inside the data dir (renamed with it).
    let wal_dir = match &o.wal_dir {
        Some(w) => {
            if let Some(parent) = w.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dir(parent)?;
            }
            w.clone()
        }
        None => scratch.join("member").join("wal"),
    };
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let at = SnapshotMarker { index: n, term: 1 };
    write_raft_files(
        &snap_dir,
        &wal_dir,
        RaftFiles {
            node_id: me,
            cluster_id: cid,
            snapshot: Some((
                at,
                snap::ConfState {
                    voters: ids.clone(),
                    ..snap::ConfState::default()
                },
                members.to_vec(),
                Vec::new(),
            )),
            hard_state: wal::HardState {
                term: 1,
                vote: ids.first().copied().unwrap_or_default(),
                commit: n,
            },
            entries: Vec::new(),
            members: members.to_vec(),
        },
    )?;
    Ok(backend.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_checked_unless_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let check = |bytes: &[u8], skip: bool| {
            std::fs::write(&p, bytes).unwrap();
            check_digest(&std::fs::File::open(&p).unwrap(), &p, skip).map_err(|e| e.to_string())
        };
        let page = vec![3u8; 4096 * 300];
        let mut with = page.clone();
        with.extend_from_slice(ring::digest::digest(&ring::digest::SHA256, &page).as_ref());
        assert!(check(&with, false).is_ok());
        let n = with.len();
        with[n - 1] ^= 1;
        let err = check(&with, false).unwrap_err();
        assert!(
            err.contains("expected sha256") && err.contains("s.db"),
            "{err}"
        );
        assert!(check(&with, true).is_ok());
        with[n - 1] ^= 1;
        with[5] ^= 1;
        assert!(check(&with, false).is_err(), "a changed body byte");
        let err = check(&page, false).unwrap_err();
        assert!(err.contains("snapshot missing hash"), "{err}");
        assert!(check(&page, true).is_ok());
    }
}
