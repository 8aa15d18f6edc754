//! etcd's raft entries as oxcd proposes the same things (see `mod.rs`),
//! and the member list they build up as the log goes on.

use oxcd_etcd_format::membership::{ConfChangeKind, EtcdMember, V2Cluster};
use oxcd_etcd_format::wal as etcd_wal;
use oxcd_raft::wal;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};

use crate::cluster::membership::{ConfContext, Member};

/// The members as the log goes on: from the snapshot's v2 store (or,
/// without one, the backend's `members` bucket for names), changed by
/// each conf change and attribute update in the tail.
pub(super) struct Roster {
    pub(super) members: std::collections::BTreeMap<u64, Member>,
    /// Names and client URLs known from the backend, for members the v2
    /// store has no attributes for.
    known: std::collections::HashMap<u64, EtcdMember>,
}

impl Roster {
    pub(super) fn new(v2: &V2Cluster, bucket: &[EtcdMember]) -> Roster {
        let known = bucket.iter().map(|m| (m.id, m.clone())).collect();
        let members = v2.members.iter().map(|m| (m.id, to_member(m))).collect();
        Roster { members, known }
    }

    pub(super) fn members(&self) -> Vec<Member> {
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

pub(super) fn to_member(m: &EtcdMember) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// One etcd entry as an oxcd WAL entry (a raft-rs `Entry`).
pub(super) fn convert_entry(
    e: &etcd_wal::Entry,
    roster: &mut Roster,
) -> Result<wal::Entry, String> {
    let mut out = Entry {
        term: e.term,
        index: e.index,
        ..Entry::default()
    };
    // The entry keeps etcd's bytes: oxcd applies etcd's v2 requests and
    // conf changes as etcd does, and an etcd member that later receives
    // this log from an oxcd leader must read it too. The conversions only
    // check each entry and follow the member list.
    match e.kind {
        0 => {
            out.set_entry_type(EntryType::EntryNormal);
            convert_normal(&e.data, roster)?;
            out.data = e.data.clone().into();
        }
        1 => {
            out.set_entry_type(EntryType::EntryConfChange);
            convert_conf_change(&e.data, roster)?;
            out.data = e.data.clone().into();
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
pub(super) fn convert_normal(data: &[u8], roster: &mut Roster) -> Result<Vec<u8>, String> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    use crate::cluster::v2::{change, decode_entry, EntryRequest, V2Change};
    let v2 = match decode_entry(data) {
        Some(EntryRequest::V3(r)) => {
            if let Some(a) = &r.cluster_member_attr_set {
                let attrs = a.member_attributes.clone().unwrap_or_default();
                roster.set_attributes(a.member_id, attrs.name, attrs.client_urls);
            }
            return Ok(data.to_vec());
        }
        Some(EntryRequest::V2(v2)) => v2,
        None => return Err("undecodable request".into()),
    };
    match change(&v2).map_err(|e| format!("member attributes: {e}"))? {
        // Kept as etcd wrote it: oxcd applies etcd's v2 publish too.
        V2Change::Attributes {
            id,
            name,
            client_urls,
        } => {
            roster.set_attributes(id, name, client_urls);
            Ok(data.to_vec())
        }
        // The cluster version and anything else of the v2 store: oxcd
        // keeps no v2 store.
        V2Change::ClusterVersion(_) | V2Change::Other => Ok(Vec::new()),
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
pub(super) fn convert_conf_change(data: &[u8], roster: &mut Roster) -> Result<Vec<u8>, String> {
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
