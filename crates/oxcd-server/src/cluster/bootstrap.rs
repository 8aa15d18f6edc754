//! The data dir and this member's persisted identity (etcd's
//! `etcdserver/bootstrap` and `config.go` MemberDir/WALDir/SnapDir).
//!
//! Layout, as etcd's:
//! ```text
//! <data-dir>/            0700
//!   member/
//!     snap/db            the MVCC backend (redb)
//!     snap/identity.json member ID, cluster ID and members (see below)
//!     wal/               the WAL (replication issue)
//!   fixtures/{client,peer}/  self-signed certs for --auto-tls / --peer-auto-tls
//! ```
//! etcd keeps the member and cluster IDs in the WAL's metadata record; until
//! oxcd has a WAL they live in `identity.json`, written once on first start
//! (temp file, fsync, rename, fsync dir) and read back on every restart, so
//! a restarted member ignores `--initial-cluster` exactly as etcd does.

use crate::cluster::membership::Member;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The log index a fresh single member has applied once it is ready
/// (etcd: its own conf change, the leader's empty entry, the cluster
/// version and its publish entry).
pub const BOOTSTRAP_INDEX: u64 = 4;

/// Data-dir problems, worded like etcd's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The data dir cannot be created or written.
    #[error("cannot access data directory: {path}: {source}")]
    Access {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity file is unreadable or malformed.
    #[error("cannot read member identity {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Paths inside one data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    data_dir: PathBuf,
}

impl Layout {
    /// `<data-dir>/member`.
    pub fn member_dir(&self) -> PathBuf {
        self.data_dir.join("member")
    }
    /// `<data-dir>/member/snap/db`.
    pub fn backend_path(&self) -> PathBuf {
        self.member_dir().join("snap").join("db")
    }
    /// `<data-dir>/member/snap/identity.json`.
    pub fn identity_path(&self) -> PathBuf {
        self.member_dir().join("snap").join("identity.json")
    }
    /// `<data-dir>/fixtures/client`.
    pub fn client_fixtures(&self) -> PathBuf {
        self.data_dir.join("fixtures").join("client")
    }
    /// `<data-dir>/fixtures/peer`.
    pub fn peer_fixtures(&self) -> PathBuf {
        self.data_dir.join("fixtures").join("peer")
    }
}

/// Creates `member/{snap,wal}` under `data_dir` with mode 0700 and checks
/// that the directory is writable.
pub fn prepare_data_dir(data_dir: &Path) -> Result<Layout, BootstrapError> {
    let layout = Layout {
        data_dir: data_dir.to_path_buf(),
    };
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootstrapError::Access { path, source }
    };
    warn_if_open(data_dir);
    for d in [
        data_dir.to_path_buf(),
        layout.member_dir(),
        layout.member_dir().join("snap"),
        layout.member_dir().join("wal"),
    ] {
        create_private_dir(&d).map_err(err(&d))?;
    }
    // etcd refuses a data dir it cannot write; probe it.
    let probe = layout.member_dir().join(".touch");
    fs::write(&probe, b"").map_err(err(data_dir))?;
    fs::remove_file(&probe).map_err(err(data_dir))?;
    Ok(layout)
}

/// etcd's warning for an existing data dir that others may read (it is
/// left as it is: its owner may mean it).
fn warn_if_open(data_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::metadata(data_dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_dir() && mode & 0o077 != 0 {
        tracing::warn!(
            "check file permission: directory {:?} exist, but the permission is \"{}\". The recommended permission is \"-rwx------\" to prevent possible unprivileged access to the data.",
            data_dir.display().to_string(),
            unix_mode_string(mode)
        );
    }
}

/// A permission like Go's `os.FileMode.String()` for a directory:
/// `drwxr-xr-x`.
fn unix_mode_string(mode: u32) -> String {
    let mut s = String::from("d");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Creates `d` (and its parents) with mode 0700, as etcd creates its
/// directories; an existing one is left as it is.
pub(crate) fn create_private_dir(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if d.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)?;
    fs::set_permissions(d, fs::Permissions::from_mode(0o700))
}

/// Who this member is, and who else is in its cluster.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This member.
    pub member: Member,
    /// All members, sorted by ID.
    pub members: Vec<Member>,
    /// The cluster ID.
    pub cluster_id: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredMember {
    id: String,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    is_learner: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredIdentity {
    member_id: String,
    cluster_id: String,
    members: Vec<StoredMember>,
}

/// Reads the persisted identity, or derives one with `derive` on first
/// start and persists it durably.
pub fn load_or_create_identity<E>(
    layout: &Layout,
    derive: impl FnOnce() -> Result<Identity, E>,
) -> Result<Identity, E>
where
    E: From<BootstrapError>,
{
    let path = layout.identity_path();
    if path.exists() {
        return Ok(read_identity(&path)?);
    }
    let id = derive()?;
    write_identity(&path, &id)?;
    Ok(id)
}

pub(crate) fn read_identity(path: &Path) -> Result<Identity, BootstrapError> {
    let bad = |reason: String| BootstrapError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let s: StoredIdentity = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|e| bad(format!("bad id {v:?}: {e}")));
    let member_id = hex(&s.member_id)?;
    let mut members = Vec::new();
    for m in s.members {
        members.push(Member {
            id: hex(&m.id)?,
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        });
    }
    let member = members
        .iter()
        .find(|m| m.id == member_id)
        .cloned()
        .ok_or_else(|| bad("own member missing from member list".into()))?;
    Ok(Identity {
        member,
        members,
        cluster_id: hex(&s.cluster_id)?,
    })
}

/// Writes `id` to `path` durably (temp file, fsync, rename, fsync dir).
pub(crate) fn write_identity(path: &Path, id: &Identity) -> Result<(), BootstrapError> {
    let s = StoredIdentity {
        member_id: format!("{:x}", id.member.id),
        cluster_id: format!("{:x}", id.cluster_id),
        members: id
            .members
            .iter()
            .map(|m| StoredMember {
                id: format!("{:x}", m.id),
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect(),
    };
    let err = |source| BootstrapError::Access {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(&s).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?
    };
    f.write_all(&json).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = prepare_data_dir(&dir.path().join("x.etcd")).unwrap();
        let m = Member {
            id: 0xabc,
            name: "n".into(),
            peer_urls: vec!["http://127.0.0.1:1".into()],
            client_urls: vec![],
            is_learner: false,
        };
        let first = load_or_create_identity::<BootstrapError>(&layout, || {
            Ok(Identity {
                member: m.clone(),
                members: vec![m.clone()],
                cluster_id: 7,
            })
        })
        .unwrap();
        let again = load_or_create_identity::<BootstrapError>(&layout, || {
            panic!("identity must be read back, not derived again")
        })
        .unwrap();
        assert_eq!(first.member, again.member);
        assert_eq!(again.cluster_id, 7);
    }
}
