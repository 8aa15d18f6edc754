//! Reading a committed conf change entry for raft. Entries are in etcd's
//! form (etcd's type numbers: `AddNode` 0, `RemoveNode` 1, `UpdateNode` 2,
//! `AddLearnerNode` 3), which etcd members of a mixed cluster also write;
//! earlier oxcd versions wrote raft-rs's numbers (2 = `AddLearnerNode`)
//! with a context starting `{"op":`, and those still read as written.

use prost::Message as _;
use raft::prelude::{ConfChange, ConfChangeType};

/// A membership change in etcd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfKind {
    /// A voter joins, or a learner is promoted.
    AddNode,
    /// A member leaves.
    RemoveNode,
    /// A member's peer URLs change (raft's configuration does not).
    UpdateNode,
    /// A learner joins.
    AddLearnerNode,
}

/// `raftpb.ConfChange` with the type as a plain number.
#[derive(Clone, PartialEq, prost::Message)]
struct Wire {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int32, tag = "2")]
    change_type: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    context: Vec<u8>,
}

/// An earlier oxcd's context (`ConfContext` with `op` first).
const OXCD_CONTEXT: &[u8] = br#"{"op":"#;

/// Whether a conf change entry is in an earlier oxcd's form (raft-rs's
/// numbers, oxcd's `{"op":...}` context), which etcd cannot read.
pub fn is_legacy(data: &[u8]) -> bool {
    Wire::decode(data).is_ok_and(|w| w.context.starts_with(OXCD_CONTEXT))
}

/// The change's kind and the raft-rs conf change raft applies for it;
/// `None` for bytes that are not a conf change of a known type.
pub fn read(data: &[u8]) -> Option<(ConfKind, ConfChange)> {
    let w = Wire::decode(data).ok()?;
    let oxcd = w.context.starts_with(OXCD_CONTEXT);
    let kind = match (w.change_type, oxcd) {
        (0, _) => ConfKind::AddNode,
        (1, _) => ConfKind::RemoveNode,
        (2, true) | (3, false) => ConfKind::AddLearnerNode,
        (2, false) => ConfKind::UpdateNode,
        _ => return None,
    };
    let mut cc = ConfChange {
        id: w.id,
        node_id: w.node_id,
        context: w.context.into(),
        ..ConfChange::default()
    };
    cc.set_change_type(match kind {
        ConfKind::AddNode | ConfKind::UpdateNode => ConfChangeType::AddNode,
        ConfKind::RemoveNode => ConfChangeType::RemoveNode,
        ConfKind::AddLearnerNode => ConfChangeType::AddLearnerNode,
    });
    Some((kind, cc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(change_type: i32, context: &[u8]) -> Vec<u8> {
        Wire {
            id: 1,
            change_type,
            node_id: 9,
            context: context.to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn etcds_numbers_and_an_earlier_oxcds_are_told_apart() {
        let etcd = br#"{"id":9,"peerURLs":["http://a:1"]}"#;
        let old = br#"{"op":"add","id":"9","peer_urls":[]}"#;
        let kind = |t, c: &[u8]| read(&wire(t, c)).map(|(k, _)| k);
        assert_eq!(kind(0, etcd), Some(ConfKind::AddNode));
        assert_eq!(kind(1, b""), Some(ConfKind::RemoveNode));
        assert_eq!(kind(2, etcd), Some(ConfKind::UpdateNode));
        assert_eq!(kind(3, etcd), Some(ConfKind::AddLearnerNode));
        assert_eq!(kind(2, old), Some(ConfKind::AddLearnerNode));
        assert_eq!(kind(0, old), Some(ConfKind::AddNode));
        assert_eq!(kind(7, etcd), None);
        let (_, cc) = read(&wire(3, etcd)).unwrap();
        assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
        assert_eq!((cc.id, cc.node_id), (1, 9));
    }
}
