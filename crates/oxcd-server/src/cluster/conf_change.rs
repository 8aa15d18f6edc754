//! Membership conf changes as raft entries, in etcd's form, so that etcd
//! members of a mixed cluster apply oxcd's and oxcd applies theirs: etcd's
//! type numbers (`AddNode` 0, `RemoveNode` 1, `UpdateNode` 2,
//! `AddLearnerNode` 3) and the member as etcd's JSON in the context
//! (`membership.Member`; a promotion adds `"isPromote":true`).
//!
//! Entries written by earlier oxcd versions carry raft-rs's numbers and
//! oxcd's own context (`{"op":...}`, [`ConfContext`]); they are still read.

use super::membership::{ConfContext, Member};
use oxcd_etcd_format::membership::ConfChange;
use oxcd_raft::node::ConfKind;
use prost::Message;

/// What a conf change does to the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// A new member (a voter, or a learner when `is_learner`).
    Add(Member),
    /// A learner becomes a voter.
    Promote(Member),
    /// A member leaves.
    Remove(u64),
    /// A member's peer URLs change.
    Update(Member),
}

/// etcd's JSON for a member in a conf change context.
fn member_json(m: &Member, promote: bool) -> Vec<u8> {
    let mut v = serde_json::json!({ "id": m.id, "peerURLs": m.peer_urls });
    let o = v.as_object_mut();
    if let Some(o) = o {
        if m.is_learner {
            o.insert("isLearner".into(), true.into());
        }
        if !m.name.is_empty() {
            o.insert("name".into(), m.name.clone().into());
        }
        if !m.client_urls.is_empty() {
            o.insert("clientURLs".into(), m.client_urls.clone().into());
        }
        if promote {
            o.insert("isPromote".into(), true.into());
        }
    }
    v.to_string().into_bytes()
}

/// The context of a bootstrap `AddNode` for `m` (etcd's: the member's
/// JSON).
pub fn add_context(m: &Member) -> Vec<u8> {
    member_json(m, false)
}

/// The entry data proposing `change` with request ID `id` (etcd's form).
pub fn entry(change: &MemberChange, id: u64) -> Vec<u8> {
    let (change_type, node_id, context) = match change {
        MemberChange::Add(m) => (
            if m.is_learner { 3 } else { 0 },
            m.id,
            member_json(m, false),
        ),
        MemberChange::Promote(m) => {
            let voter = Member {
                is_learner: false,
                ..m.clone()
            };
            (0, m.id, member_json(&voter, true))
        }
        MemberChange::Remove(node) => (1, *node, Vec::new()),
        MemberChange::Update(m) => (2, m.id, member_json(m, false)),
    };
    ConfChange {
        id,
        change_type,
        node_id,
        context,
    }
    .encode_to_vec()
}

/// Reads a committed conf change of `kind` on `node_id` with `context`,
/// written by etcd, by this oxcd, or by an earlier oxcd; `members` tells a
/// promotion from an add in oxcd's old form. `None` for a context that
/// does not describe the member.
pub fn read(
    kind: ConfKind,
    node_id: u64,
    context: &[u8],
    existing: Option<&Member>,
) -> Option<MemberChange> {
    if kind == ConfKind::RemoveNode {
        return Some(MemberChange::Remove(node_id));
    }
    if let Some(c) = ConfContext::decode(context) {
        // An earlier oxcd's entry.
        let member = Member {
            id: node_id,
            name: existing.map(|m| m.name.clone()).unwrap_or_default(),
            peer_urls: c.peer_urls.clone(),
            client_urls: existing.map(|m| m.client_urls.clone()).unwrap_or_default(),
            is_learner: kind == ConfKind::AddLearnerNode,
        };
        return Some(match (c.op.as_str(), existing) {
            ("update", _) => MemberChange::Update(Member {
                is_learner: existing.is_some_and(|m| m.is_learner),
                ..member
            }),
            (_, Some(m)) if m.is_learner && kind == ConfKind::AddNode => {
                MemberChange::Promote(m.clone())
            }
            _ => MemberChange::Add(member),
        });
    }
    // Go writes nil slices as null (a promotion carries only the ID).
    let v: serde_json::Value = serde_json::from_slice(context).ok()?;
    let o = v.as_object()?;
    let strings = |k: &str| -> Vec<String> {
        o.get(k)
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let promote = o
        .get("isPromote")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let member = Member {
        id: node_id,
        name: o
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string(),
        peer_urls: strings("peerURLs"),
        client_urls: strings("clientURLs"),
        is_learner: kind == ConfKind::AddLearnerNode,
    };
    Some(match kind {
        ConfKind::UpdateNode => MemberChange::Update(Member {
            is_learner: existing.is_some_and(|e| e.is_learner),
            ..member
        }),
        _ if promote => MemberChange::Promote(existing.cloned().unwrap_or(member)),
        _ => MemberChange::Add(member),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: String::new(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: Vec::new(),
            is_learner: learner,
        }
    }

    fn kind_of(data: &[u8]) -> (ConfKind, u64, Vec<u8>) {
        let cc = ConfChange::decode(data).unwrap();
        let kind = match cc.change_type {
            0 => ConfKind::AddNode,
            1 => ConfKind::RemoveNode,
            2 => ConfKind::UpdateNode,
            _ => ConfKind::AddLearnerNode,
        };
        (kind, cc.node_id, cc.context)
    }

    #[test]
    fn each_change_reads_back_from_etcds_form() {
        for change in [
            MemberChange::Add(m(9, false)),
            MemberChange::Add(m(9, true)),
            MemberChange::Promote(m(9, false)),
            MemberChange::Remove(9),
            MemberChange::Update(m(9, false)),
        ] {
            let (kind, node, ctx) = kind_of(&entry(&change, 5));
            assert_eq!(node, 9);
            assert_eq!(read(kind, node, &ctx, Some(&m(9, false))), Some(change));
        }
    }

    #[test]
    fn the_context_is_etcds_member_json() {
        let data = entry(&MemberChange::Add(m(0x1234, true)), 5);
        let cc = ConfChange::decode(data.as_slice()).unwrap();
        assert_eq!(cc.change_type, 3);
        assert_eq!(
            String::from_utf8(cc.context).unwrap(),
            r#"{"id":4660,"isLearner":true,"peerURLs":["http://127.0.0.1:2380"]}"#
        );
        let cc = ConfChange::decode(entry(&MemberChange::Remove(7), 1).as_slice()).unwrap();
        assert_eq!((cc.change_type, cc.node_id, cc.context.len()), (1, 7, 0));
    }

    #[test]
    fn an_earlier_oxcds_entries_still_read() {
        let ctx = ConfContext::new("add", &m(9, true)).encode();
        assert_eq!(
            read(ConfKind::AddLearnerNode, 9, &ctx, None),
            Some(MemberChange::Add(m(9, true)))
        );
        let ctx = ConfContext::new("promote", &m(9, true)).encode();
        assert_eq!(
            read(ConfKind::AddNode, 9, &ctx, Some(&m(9, true))),
            Some(MemberChange::Promote(m(9, true)))
        );
        let ctx = ConfContext::new("update", &m(9, false)).encode();
        assert!(matches!(
            read(ConfKind::AddNode, 9, &ctx, Some(&m(9, false))),
            Some(MemberChange::Update(_))
        ));
        assert_eq!(read(ConfKind::AddNode, 9, b"junk", None), None);
    }

    #[test]
    fn etcd_3_4s_promotion_with_null_peer_urls_is_a_promotion() {
        let ctx = br#"{"id":9,"peerURLs":null,"isPromote":true}"#;
        assert_eq!(
            read(ConfKind::AddNode, 9, ctx, Some(&m(9, true))),
            Some(MemberChange::Promote(m(9, true)))
        );
    }
}
