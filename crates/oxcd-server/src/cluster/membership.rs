//! Cluster membership: members, their IDs and the cluster ID.
//!
//! Mirrors etcd's `etcdserver/api/membership`. IDs are derived exactly as
//! etcd derives them so that an oxcd member and an etcd member started with
//! the same flags agree on who they are:
//!
//! * member ID = first 8 bytes (big endian) of SHA-1 over the member's sorted
//!   peer URLs concatenated, followed by the cluster token;
//! * cluster ID = first 8 bytes (big endian) of SHA-1 over the sorted member
//!   IDs, each as 8 big-endian bytes.

use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// One member of the cluster as `MemberList` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Member ID derived from peer URLs and the cluster token.
    pub id: u64,
    /// Human-readable name (`--name`); empty until the member has published.
    pub name: String,
    /// URLs other members reach this one on.
    pub peer_urls: Vec<String>,
    /// URLs clients reach this one on (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
    /// Whether the member is a non-voting learner.
    pub is_learner: bool,
}

/// The cluster's members as this member knows them, shared between the
/// services and the raft apply side (which fills in published attributes).
#[derive(Clone, Default)]
pub struct Members {
    inner: Arc<RwLock<Vec<Member>>>,
    removed: Arc<RwLock<std::collections::HashSet<u64>>>,
    /// The cluster version the leader last replicated (`/0/version`),
    /// if this member has seen it.
    version: Arc<RwLock<Option<String>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Members {
    /// Starts from `members` (sorted by ID).
    pub fn new(members: Vec<Member>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(members)),
            removed: Arc::default(),
            version: Arc::default(),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A copy of the current list, sorted by ID.
    pub fn list(&self) -> Vec<Member> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the name and client URLs member `id` published.
    pub fn set_attributes(&self, id: u64, name: String, client_urls: Vec<String>) {
        let mut list = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = list.iter_mut().find(|m| m.id == id) {
            m.name = name;
            m.client_urls = client_urls;
        }
        drop(list);
        self.changed.notify_waiters();
    }

    /// Records the cluster version an applied `/0/version` set.
    pub fn set_cluster_version(&self, version: String) {
        *self.version.write().unwrap_or_else(|e| e.into_inner()) = Some(version);
    }

    /// The cluster version, once one was replicated.
    pub fn cluster_version(&self) -> Option<String> {
        self.version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `f` holds for the list, or `timeout` passes; returns
    /// whether it holds.
    pub async fn wait_until(
        &self,
        timeout: std::time::Duration,
        f: impl Fn(&[Member]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if f(&self.list()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return f(&self.list());
            }
        }
    }
}

/// What a membership conf change carries in its context: the member, and
/// whether the change updates an existing member's peer URLs (raft-rs has
/// no `UpdateNode`, so updates travel as an `AddNode` of a current voter,
/// which raft treats as a no-op).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConfContext {
    /// `add`, `update` or `remove`.
    pub op: String,
    /// Member ID (hex).
    pub id: String,
    /// Name, empty until the member publishes.
    #[serde(default)]
    pub name: String,
    /// Peer URLs.
    #[serde(default)]
    pub peer_urls: Vec<String>,
    /// Whether the member joins as a learner.
    #[serde(default)]
    pub is_learner: bool,
}

impl ConfContext {
    /// The context for `op` on member `m`.
    pub fn new(op: &str, m: &Member) -> Self {
        Self {
            op: op.to_string(),
            id: format!("{:x}", m.id),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            is_learner: m.is_learner,
        }
    }

    /// Encodes the context for a raft conf change.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a conf change context; `None` if it is not one of ours.
    pub fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

impl Members {
    /// Adds `m`, or refreshes its peer URLs and learner flag if present.
    pub fn upsert(&self, m: Member) {
        let mut list = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match list.iter_mut().find(|x| x.id == m.id) {
            Some(x) => {
                x.peer_urls = m.peer_urls;
                x.is_learner = m.is_learner;
            }
            None => {
                list.push(m);
                list.sort_by_key(|m| m.id);
            }
        }
        drop(list);
        self.changed.notify_waiters();
    }

    /// Removes member `id`; it is refused as a peer from then on.
    pub fn remove(&self, id: u64) {
        self.removed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| m.id != id);
        self.changed.notify_waiters();
    }

    /// Marks learner `id` as a voter.
    pub fn promote(&self, id: u64) {
        if let Some(m) = self
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .find(|m| m.id == id)
        {
            m.is_learner = false;
        }
        self.changed.notify_waiters();
    }

    /// Member `id`, if present.
    pub fn get(&self, id: u64) -> Option<Member> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }

    /// Whether member `id` is a learner (false if it is not a member).
    /// Asked on every client request, so it copies nothing.
    pub fn is_learner(&self, id: u64) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m.id == id && m.is_learner)
    }
}

/// What a conf change did to the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfApplied {
    /// The member was added, or its peer URLs updated: these.
    Upserted(Vec<String>),
    /// The member was removed.
    Removed,
    /// The learner became a voter.
    Promoted,
    /// Nothing changed (a repeated add, a context that is not oxcd's).
    Unchanged,
}

impl Members {
    /// Applies a committed membership conf change (the apply side's and
    /// `export-etcd`'s replay share this), read from its entry by
    /// [`super::conf_change::read`]: `None` (a context that names no
    /// member) changes nothing.
    pub fn apply_conf_change(
        &self,
        kind: oxcd_raft::node::ConfKind,
        node_id: u64,
        context: &[u8],
    ) -> ConfApplied {
        use super::conf_change::MemberChange;
        let existing = self.get(node_id);
        match super::conf_change::read(kind, node_id, context, existing.as_ref()) {
            Some(MemberChange::Remove(id)) => {
                self.remove(id);
                ConfApplied::Removed
            }
            Some(MemberChange::Update(m)) => match existing {
                Some(e) => {
                    let urls = m.peer_urls.clone();
                    self.upsert(Member {
                        peer_urls: m.peer_urls,
                        ..e
                    });
                    ConfApplied::Upserted(urls)
                }
                None => ConfApplied::Unchanged,
            },
            Some(MemberChange::Promote(_)) => match existing {
                Some(e) if e.is_learner => {
                    self.promote(node_id);
                    ConfApplied::Promoted
                }
                _ => ConfApplied::Unchanged,
            },
            Some(MemberChange::Add(m)) => match existing {
                // etcd 3.4 promotes with a plain add of the learner too.
                Some(e) if e.is_learner && !m.is_learner => {
                    self.promote(node_id);
                    ConfApplied::Promoted
                }
                Some(_) => ConfApplied::Unchanged,
                None => {
                    let urls = m.peer_urls.clone();
                    self.upsert(Member { id: node_id, ..m });
                    ConfApplied::Upserted(urls)
                }
            },
            None => ConfApplied::Unchanged,
        }
    }
}

/// The member list as stored in a raft snapshot's data (the part of etcd's
/// v2 store snapshot that 3.4 still reads): JSON, with etcd's member field
/// names and hex IDs, e.g.
/// `{"members":[{"id":"8e9e05c52164694d","name":"n1","peerURLs":["http://127.0.0.1:2380"],"clientURLs":["http://127.0.0.1:2379"],"isLearner":false}],"removed":["1234"]}`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct MembersSnapshot {
    members: Vec<MemberRecord>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_version: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MemberRecord {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    is_learner: bool,
}

impl MemberRecord {
    fn of(m: Member) -> MemberRecord {
        MemberRecord {
            id: format!("{:x}", m.id),
            name: m.name,
            peer_urls: m.peer_urls,
            client_urls: m.client_urls,
            is_learner: m.is_learner,
        }
    }
}

impl MembersSnapshot {
    /// The members of an etcd raft snapshot's v2 store.
    fn from_v2(v2: oxcd_etcd_format::membership::V2Cluster) -> MembersSnapshot {
        MembersSnapshot {
            members: v2
                .members
                .into_iter()
                .map(|m| {
                    MemberRecord::of(Member {
                        id: m.id,
                        name: m.name,
                        peer_urls: m.peer_urls,
                        client_urls: m.client_urls,
                        is_learner: m.is_learner,
                    })
                })
                .collect(),
            removed: v2.removed.iter().map(|id| format!("{id:x}")).collect(),
            cluster_version: None,
        }
    }
}

/// Why a snapshot's member list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("corrupt member list in snapshot: {0}")]
pub struct MembersSnapshotError(String);

impl Members {
    /// The member list (and removed IDs) for a raft snapshot.
    pub fn snapshot_data(&self) -> Vec<u8> {
        let removed: Vec<u64> = self
            .removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        snapshot_json(self.list(), removed, self.cluster_version())
    }

    /// Replaces the list and the removed IDs with a snapshot's.
    ///
    /// # Errors
    /// [`MembersSnapshotError`] if `data` is not what
    /// [`Members::snapshot_data`] writes; nothing changes then.
    pub fn restore_snapshot(&self, data: &[u8]) -> Result<(), MembersSnapshotError> {
        let snap: MembersSnapshot = match serde_json::from_slice(data) {
            Ok(s) => s,
            // A snapshot from an etcd leader: etcd's v2 store.
            Err(e) => match oxcd_etcd_format::membership::V2Cluster::from_store_json(data) {
                Ok(v2) => MembersSnapshot::from_v2(v2),
                Err(_) => return Err(MembersSnapshotError(e.to_string())),
            },
        };
        let hex = |s: &str| {
            u64::from_str_radix(s, 16).map_err(|e| MembersSnapshotError(format!("id {s:?}: {e}")))
        };
        let mut list = Vec::with_capacity(snap.members.len());
        for r in snap.members {
            list.push(Member {
                id: hex(&r.id)?,
                name: r.name,
                peer_urls: r.peer_urls,
                client_urls: r.client_urls,
                is_learner: r.is_learner,
            });
        }
        list.sort_by_key(|m| m.id);
        let removed = snap
            .removed
            .iter()
            .map(|s| hex(s))
            .collect::<Result<std::collections::HashSet<u64>, _>>()?;
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = list;
        *self.removed.write().unwrap_or_else(|e| e.into_inner()) = removed;
        if snap.cluster_version.is_some() {
            *self.version.write().unwrap_or_else(|e| e.into_inner()) = snap.cluster_version;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// IDs of removed members.
    pub fn removed_ids(&self) -> Vec<u64> {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }
}

/// A raft snapshot's member list as etcd keeps it in its snapshots: its
/// v2 store JSON, for an etcd follower.
///
/// # Errors
/// `data` is not what [`Members::snapshot_data`] writes.
pub fn etcd_v2_store(data: &[u8]) -> Result<Vec<u8>, MembersSnapshotError> {
    let scratch = Members::new(Vec::new());
    scratch.restore_snapshot(data)?;
    let members: Vec<oxcd_etcd_format::membership::EtcdMember> = scratch
        .list()
        .into_iter()
        .map(|m| oxcd_etcd_format::membership::EtcdMember {
            id: m.id,
            peer_urls: m.peer_urls,
            is_learner: m.is_learner,
            name: m.name,
            client_urls: m.client_urls,
        })
        .collect();
    Ok(oxcd_etcd_format::membership::v2_store_json(
        &members,
        &scratch.removed_ids(),
        crate::version::CLUSTER_VERSION,
    ))
}

/// The raft snapshot form of `members` and the `removed` IDs (what
/// [`Members::restore_snapshot`] reads).
pub fn snapshot_data_of(members: Vec<Member>, removed: Vec<u64>) -> Vec<u8> {
    snapshot_json(members, removed, None)
}

fn snapshot_json(
    members: Vec<Member>,
    mut removed: Vec<u64>,
    cluster_version: Option<String>,
) -> Vec<u8> {
    let members = members.into_iter().map(MemberRecord::of).collect();
    removed.sort_unstable();
    let snap = MembersSnapshot {
        members,
        removed: removed.iter().map(|id| format!("{id:x}")).collect(),
        cluster_version,
    };
    // Plain strings and lists cannot fail to serialise.
    serde_json::to_vec(&snap).unwrap_or_default()
}

impl oxcd_raft::transport::Directory for Members {
    fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    fn members(&self) -> Vec<oxcd_api::oxcdpeerpb::PeerMember> {
        self.list()
            .into_iter()
            .map(|m| oxcd_api::oxcdpeerpb::PeerMember {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_urls,
                client_urls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect()
    }
}

/// A member ID for a member added at runtime: like etcd, the peer URLs
/// hashed with the current time, so re-adding the same URLs gets a new ID.
pub fn new_member_id(peer_urls: &[String]) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    member_id(peer_urls, &now.to_string())
}

/// Errors in `--initial-cluster` and member identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipError {
    /// An `--initial-cluster` entry is not `name=url`.
    #[error("invalid initial cluster entry {0:?}: expected name=url")]
    BadEntry(String),
    /// This member's name is absent from `--initial-cluster`.
    #[error("couldn't find local name {name:?} in the initial cluster configuration")]
    NameNotFound {
        /// The `--name` that was looked up.
        name: String,
    },
    /// This member's advertised peer URLs differ from its `--initial-cluster` entry.
    #[error("--initial-cluster has {name}={cluster_urls} but missing from --initial-advertise-peer-urls={advertised} (\"{name}\" does not match the local peer URLs)")]
    PeerUrlMismatch {
        /// The member name.
        name: String,
        /// URLs listed for the name in `--initial-cluster`.
        cluster_urls: String,
        /// URLs from `--initial-advertise-peer-urls`.
        advertised: String,
    },
    /// Two members of the initial cluster share one ID (same peer URLs).
    #[error("member count is unequal")]
    DuplicateId,
}

/// Computes a member ID the way etcd does (see module docs).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// Computes a cluster ID from its member IDs the way etcd does.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// The members a cluster starts with, parsed from `--initial-cluster`.
#[derive(Debug, Clone)]
pub struct InitialCluster {
    /// Name → peer URLs, in the order names first appear.
    pub by_name: BTreeMap<String, Vec<String>>,
}

impl InitialCluster {
    /// Parses `name1=url1,name1=url2,name2=url3` (a name may repeat).
    pub fn parse(s: &str) -> Result<Self, MembershipError> {
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| MembershipError::BadEntry(entry.to_string()))?;
            if url.is_empty() {
                return Err(MembershipError::BadEntry(entry.to_string()));
            }
            by_name
                .entry(name.to_string())
                .or_default()
                .push(url.to_string());
        }
        Ok(Self { by_name })
    }

    /// Builds the member list, checking that `name` is present with exactly
    /// the advertised peer URLs. Members other than `name` start unnamed
    /// until they publish, exactly as etcd reports them.
    pub fn members(
        &self,
        name: &str,
        advertised_peer_urls: &[String],
        token: &str,
    ) -> Result<Vec<Member>, MembershipError> {
        let own = self
            .by_name
            .get(name)
            .ok_or_else(|| MembershipError::NameNotFound {
                name: name.to_string(),
            })?;
        let mut a = own.clone();
        let mut b = advertised_peer_urls.to_vec();
        a.sort();
        b.sort();
        if a != b {
            return Err(MembershipError::PeerUrlMismatch {
                name: name.to_string(),
                cluster_urls: own.join(","),
                advertised: advertised_peer_urls.join(","),
            });
        }
        let mut members: Vec<Member> = self
            .by_name
            .iter()
            .map(|(n, urls)| Member {
                id: member_id(urls, token),
                name: n.clone(),
                peer_urls: urls.clone(),
                client_urls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != members.len() {
            return Err(MembershipError::DuplicateId);
        }
        members.sort_by_key(|m| m.id);
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_for_the_default_single_member() {
        // `etcd` with no flags: member 8e9e05c52164694d, cluster cdf818194e3a8c32.
        let urls = vec!["http://localhost:2380".to_string()];
        let id = member_id(&urls, "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }

    #[test]
    fn member_list_round_trips_through_snapshot_data() {
        let a = Members::new(vec![
            Member {
                id: 0x10,
                name: "n1".into(),
                peer_urls: vec!["http://127.0.0.1:1".into()],
                client_urls: vec!["http://127.0.0.1:2".into()],
                is_learner: false,
            },
            Member {
                id: 0x20,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:3".into()],
                client_urls: Vec::new(),
                is_learner: true,
            },
        ]);
        a.remove(0x30);
        let data = a.snapshot_data();
        let b = Members::new(Vec::new());
        b.restore_snapshot(&data).unwrap();
        assert_eq!(b.list(), a.list());
        assert_eq!(b.removed_ids(), vec![0x30]);
        assert!(b.restore_snapshot(b"not json").is_err());
        assert_eq!(b.list(), a.list());
    }

    #[test]
    fn parse_initial_cluster_and_check_own_urls() {
        let ic = InitialCluster::parse("a=http://127.0.0.1:1,b=http://127.0.0.1:2").unwrap();
        let m = ic
            .members("a", &["http://127.0.0.1:1".into()], "tok")
            .unwrap();
        assert_eq!(m.len(), 2);
        assert!(matches!(
            ic.members("c", &[], "tok"),
            Err(MembershipError::NameNotFound { .. })
        ));
        assert!(matches!(
            ic.members("a", &["http://127.0.0.1:9".into()], "tok"),
            Err(MembershipError::PeerUrlMismatch { .. })
        ));
        assert!(InitialCluster::parse("nourl").is_err());
    }

    mod fuzz {
        use super::*;
        use crate::damage::{damaged, damages};
        use proptest::prelude::*;

        fn member() -> impl Strategy<Value = Member> {
            (
                any::<u64>(),
                "[a-z0-9]{0,6}",
                prop::collection::vec("[a-z:/.0-9]{0,12}", 0..3),
                any::<bool>(),
            )
                .prop_map(|(id, name, peer_urls, is_learner)| Member {
                    id,
                    name,
                    peer_urls: peer_urls.clone(),
                    client_urls: peer_urls,
                    is_learner,
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// A conf change context (from a committed entry) and a
            /// snapshot's member list, arbitrary or damaged: decoded, or
            /// refused with nothing changed.
            #[test]
            fn member_records_decode_or_fail(
                first in member(),
                more in prop::collection::vec(member(), 0..3),
                removed in prop::collection::vec(any::<u64>(), 0..3),
                raw in prop::collection::vec(any::<u8>(), 0..128),
                damage in damages(4),
            ) {
                let ctx = ConfContext::new("add", &first).encode();
                let mut members = more;
                members.push(first);
                members.sort_by_key(|m| m.id);
                members.dedup_by_key(|m| m.id);
                for bytes in [raw.clone(), damaged(ctx, &damage)] {
                    let _ = ConfContext::decode(&bytes);
                }
                let data = snapshot_data_of(members.clone(), removed);
                let target = Members::new(Vec::new());
                target.restore_snapshot(&data).unwrap();
                prop_assert_eq!(target.list().len(), members.len());
                for bytes in [raw, damaged(data, &damage)] {
                    let before = (target.list(), target.removed_ids());
                    if target.restore_snapshot(&bytes).is_err() {
                        prop_assert_eq!((target.list(), target.removed_ids()), before);
                    }
                }
            }
        }
    }
}
