//! Writing the first log of a member: a new cluster's bootstrap entries
//! (etcd `raft.go` `startNode`) and `--force-new-cluster`'s removals
//! (`restartAsStandaloneNode`).

use crate::wal::{self, Wal, WalContents};
use prost::bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType};

/// Members a brand-new cluster starts with: (ID, context stored with the
/// bootstrap conf change, e.g. the member's attributes).
pub type BootstrapMembers = Vec<(u64, Vec<u8>)>;

/// Writes the bootstrap log of a new cluster into a fresh WAL, as etcd's
/// `StartNode` does: one committed `AddNode` conf change per member at
/// term 1, indexes 1..=n. Returns what `start` must be given.
pub fn bootstrap(wal: &mut Wal, members: &BootstrapMembers) -> Result<WalContents, BootstrapError> {
    let mut sorted = members.clone();
    sorted.sort_by_key(|(id, _)| *id);
    let mut entries = Vec::new();
    for (i, (id, ctx)) in sorted.iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = *id;
        cc.context = Bytes::from(ctx.clone());
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 1;
        e.index = i as u64 + 1;
        e.data = Bytes::from(cc.write_to_bytes().map_err(encode_err)?);
        entries.push(to_wal_entry(&e)?);
    }
    let hs = wal::HardState {
        term: 1,
        vote: 0,
        commit: entries.len() as u64,
    };
    wal.save(&hs, &entries)?;
    Ok(WalContents {
        metadata: Vec::new(),
        hard_state: hs,
        entries,
    })
}

/// `--force-new-cluster` (etcd's `restartAsStandaloneNode`): appends to
/// the replayed log, as committed entries, one `RemoveNode` for every other
/// member the configuration holds (`base`: the snapshot's voters and
/// learners, then the log's conf changes), so that this member restarts as
/// the only voter of the same cluster with all its data. Returns the IDs
/// removed.
pub fn force_new_cluster(
    wal: &mut Wal,
    replayed: &mut WalContents,
    base: &[u64],
    me: u64,
) -> Result<Vec<u64>, BootstrapError> {
    let mut members: std::collections::BTreeSet<u64> = base.iter().copied().collect();
    for we in &replayed.entries {
        let e = Entry::parse_from_bytes(&we.data).map_err(encode_err)?;
        if e.get_entry_type() != EntryType::EntryConfChange {
            continue;
        }
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(encode_err)?;
        match cc.get_change_type() {
            ConfChangeType::RemoveNode => {
                members.remove(&cc.node_id);
            }
            _ => {
                members.insert(cc.node_id);
            }
        }
    }
    let last = replayed
        .entries
        .last()
        .map_or((0, 0), |e| (e.index, e.term));
    let term = last.1.max(replayed.hard_state.term);
    let others: Vec<u64> = members.into_iter().filter(|id| *id != me).collect();
    let mut added = Vec::new();
    for (i, id) in others.iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = *id;
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = term;
        e.index = last.0 + i as u64 + 1;
        e.data = Bytes::from(cc.write_to_bytes().map_err(encode_err)?);
        added.push(to_wal_entry(&e)?);
    }
    if let Some(end) = added.last().map(|e| e.index) {
        let hs = wal::HardState {
            term,
            vote: replayed.hard_state.vote,
            commit: end,
        };
        wal.save(&hs, &added)?;
        replayed.hard_state = hs;
        replayed.entries.extend(added);
    }
    Ok(others)
}

/// Why the bootstrap log could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The WAL refused the write.
    #[error(transparent)]
    Wal(#[from] crate::error::WalError),
    /// A raft record could not be encoded.
    #[error("cannot encode raft record: {0}")]
    Encode(String),
}

fn encode_err(e: protobuf::ProtobufError) -> BootstrapError {
    BootstrapError::Encode(e.to_string())
}

pub(super) fn to_wal_entry(e: &Entry) -> Result<wal::Entry, BootstrapError> {
    Ok(wal::Entry {
        index: e.index,
        term: e.term,
        data: e.write_to_bytes().map_err(encode_err)?,
    })
}
