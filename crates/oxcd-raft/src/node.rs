//! The raft loop: one thread owns the raft-rs `RawNode`, the WAL and the
//! in-memory log, and turns every `Ready` into persist / send / hand over to the apply
//! (etcd's `etcdserver/raft.go`, raft-rs's async-ready recipe).
//!
//! Inputs arrive on one bounded channel ([`Input`]): proposals, messages
//! from peers, read-index requests, leader transfer. The loop waits on it
//! with a deadline so that it also ticks raft every `tick` (the heartbeat
//! interval). Each pass then handles one `Ready`, in raft-rs's order:
//!
//! 1. note leadership changes (soft state);
//! 2. send `messages()` at once (a leader may send before it persists,
//!    raft thesis 10.2.1);
//! 3. hand `committed_entries()` to the apply stage (conf changes are
//!    applied to raft itself first);
//! 4. hand `read_states()` to the apply stage;
//! 5. append `entries()` and the hard state to the WAL with ONE fdatasync,
//!    then to the in-memory log;
//! 6. send `persisted_messages()` (votes and appends acknowledged only
//!    after the fsync);
//! 7. `advance`, then send and hand over what the light ready holds.
//!
//! A failed WAL write or fsync is fatal: the process exits, as etcd does,
//! because what reached the disk is unknown.
//!
//! Applying is not done here: everything for the apply stage (committed
//! entries, read states, leader changes, snapshot requests) goes one way
//! over a channel ([`ToApply`]), so a slow apply — a big txn, a watch
//! fan-out, a backend commit — never delays ticks, heartbeats or votes,
//! and group N is applied while group N+1 is being fsynced. The apply
//! stage sees committed normal entries in log order exactly once per
//! process run, and conf changes always: on restart the log after the
//! newest snapshot is replayed, and the apply stage skips the KV part of
//! entries its backend already holds (its consistent index), but conf
//! changes must be applied to raft again.
//!
//! Snapshots (taking them every `--snapshot-count` entries, compaction,
//! purging, sending and installing them) are in the `snapshot` submodule.

mod bootstrap;
pub mod conf_change;
mod snapshot;

use bootstrap::to_wal_entry;
pub use bootstrap::{bootstrap, force_new_cluster, BootstrapError, BootstrapMembers};
pub use conf_change::ConfKind;
pub use snapshot::{
    from_file as snapshot_from_file, to_file as snapshot_to_file, SnapshotDecodeError,
    SnapshotSettings, CATCH_UP_ENTRIES,
};

use crate::log_store::LogStore;
use crate::transport::{Inbox, Transport};
use crate::wal::{self, Wal, WalContents};
use prost::bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfState, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{Config, RawNode, StateRole};
use snapshot::SnapshotState;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most proposals stepped into raft as one message.
const MAX_PROPOSAL_BATCH: usize = 1024;
/// Most payload bytes stepped into raft as one message.
const MAX_PROPOSAL_BATCH_BYTES: usize = 4 << 20;

/// Inputs queued to the raft loop before callers are told to back off.
const INPUT_DEPTH: usize = 8 * 1024;

/// Something for the raft loop to do.
#[derive(Debug)]
pub enum Input {
    /// Propose an application entry (an encoded request).
    Propose(Bytes),
    /// Propose a membership change.
    /// The data of a conf change entry in etcd's form (see [`ConfKind`]).
    ProposeConfChange(Vec<u8>),
    /// A message from a peer.
    Step(Message),
    /// Ask for a read index; answered with [`ToApply::ReadIndex`] carrying
    /// the same context.
    ReadIndex(Vec<u8>),
    /// Hand leadership to another voter.
    TransferLeader(u64),
    /// Ask for the leader's view of replication: member ID -> the highest
    /// log index known to be on that member (raft's `Progress.Match`).
    /// Answered with `None` when this member is not the leader.
    Progress(tokio::sync::oneshot::Sender<Option<std::collections::HashMap<u64, u64>>>),
    /// Stop the loop; the WAL is closed when it ends.
    Stop,
}

/// Who leads and how far the log got, published after every pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// This member.
    pub id: u64,
    /// The current leader, 0 when unknown.
    pub leader: u64,
    /// The current term.
    pub term: u64,
    /// The highest committed index.
    pub commit: u64,
    /// The highest index handed to the apply stage (which publishes what
    /// it has applied itself).
    pub applied: u64,
}

impl Status {
    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

/// What the raft loop hands to the apply stage: one way, in log order,
/// over the channel [`start`] returns. The raft loop never waits for the
/// apply stage except to install a leader's snapshot; it goes on
/// persisting and sending the next `Ready` while the last is applied.
#[derive(Debug)]
#[non_exhaustive]
pub enum ToApply {
    /// One `Ready`'s committed entries (empty ones left out); `last` is the
    /// index of the last entry of the group, empty or not.
    Committed {
        /// The entries to apply, in log order.
        entries: Vec<Committed>,
        /// The applied index once they are.
        last: u64,
    },
    /// A read index request with `ctx` may be served once applied ≥ `index`.
    ReadIndex {
        /// The request context the reader chose.
        ctx: Vec<u8>,
        /// The index the leader confirmed.
        index: u64,
    },
    /// The leader changed (`leader` 0: no leader).
    LeaderChange {
        /// The new leader.
        leader: u64,
        /// Its term.
        term: u64,
    },
    /// Everything up to `index` was handed over before this message: make
    /// the backend durable up to at least `index` (the WAL behind the
    /// snapshot is released next) and reply with the state that lives
    /// outside the backend (etcd's v2 store: the member list), which
    /// becomes the raft snapshot's data. An error is fatal.
    SnapshotData {
        /// The snapshot's index.
        index: u64,
        /// Where the data goes; the loop may have stopped waiting.
        reply: SyncSender<Result<Vec<u8>, AppError>>,
    },
    /// Replace the state with a snapshot from the leader: `db` is the
    /// backend file it sent (raft index `index`, or later), `data` what its
    /// apply stage answered to [`ToApply::SnapshotData`]. The raft loop
    /// waits for the reply before it records the snapshot; the entries
    /// after `index` come next. An error is fatal.
    Restore {
        /// The snapshot's index.
        index: u64,
        /// The received backend file.
        db: std::path::PathBuf,
        /// The snapshot's data.
        data: Bytes,
        /// Done (or why not).
        reply: SyncSender<Result<(), AppError>>,
    },
}

/// One committed entry for the apply stage.
#[derive(Debug)]
pub enum Committed {
    /// An application entry (an encoded request).
    Normal {
        /// Its log index.
        index: u64,
        /// Its term.
        term: u64,
        /// Its payload, never empty.
        data: Bytes,
    },
    /// A membership change raft has already applied to itself.
    ConfChange {
        /// Its log index.
        index: u64,
        /// What it is, in etcd's terms.
        kind: ConfKind,
        /// The change (ID, member, context); its raft-rs type is `kind`'s
        /// nearest (an update is none of raft's business).
        cc: ConfChange,
        /// The configuration after it.
        cs: ConfState,
    },
}

/// Messages queued to the apply stage before the raft loop waits for it.
/// Each is a whole `Ready` group at most, so this only binds when applying
/// is far behind (proposals are refused long before: `too many requests`).
const APPLY_DEPTH: usize = 4096;

/// Why the apply stage could not take or restore a snapshot.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AppError(pub String);

/// Why an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The loop is backed up.
    #[error("raft loop is overloaded")]
    Busy,
    /// The loop has stopped.
    #[error("raft loop stopped")]
    Stopped,
}

/// Talks to the raft loop; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    tx: SyncSender<Input>,
    status: watch::Receiver<Status>,
}

impl NodeHandle {
    /// Queues `input` without blocking.
    pub fn send(&self, input: Input) -> Result<(), NodeError> {
        self.tx.try_send(input).map_err(|e| match e {
            TrySendError::Full(_) => NodeError::Busy,
            TrySendError::Disconnected(_) => NodeError::Stopped,
        })
    }

    /// The latest published status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver that changes whenever the status does.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until the loop has ended and released the WAL.
    pub async fn stopped(&self) {
        let mut rx = self.status.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Delivers peer messages into the loop (the transport's inbox).
pub struct NodeInbox(pub NodeHandle);

impl Inbox for NodeInbox {
    fn deliver(&self, _from: u64, messages: Vec<Bytes>) {
        for m in messages {
            match Message::parse_from_bytes(&m) {
                Ok(msg) => {
                    // Dropping when busy is fine: raft retransmits.
                    let _ = self.0.send(Input::Step(msg));
                }
                Err(e) => tracing::warn!(error = %e, "undecodable raft message from peer"),
            }
        }
    }
}

/// How to run the loop.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's ID.
    pub id: u64,
    /// Heartbeat interval: one raft tick.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Enable raft PreVote.
    pub pre_vote: bool,
}

/// What the raft loop restarts from: the newest snapshot (if any), and
/// the WAL opened at it with everything it recorded after it.
pub struct Restored {
    /// The WAL, positioned for appending.
    pub wal: Wal,
    /// The hard state and the entries after the snapshot.
    pub replayed: WalContents,
    /// The snapshot the WAL was opened at.
    pub snapshot: Option<Snapshot>,
}

/// Starts the raft loop on its own thread over the restored log; what it
/// commits comes out of the returned receiver, for the apply stage.
pub fn start(
    cfg: NodeConfig,
    restored: Restored,
    snaps: SnapshotSettings,
    transport: Arc<Transport>,
) -> Result<(NodeHandle, Receiver<ToApply>), StartError> {
    let inbox_for = transport.clone();
    let Restored {
        wal,
        replayed,
        snapshot,
    } = restored;
    let mut storage = LogStore::new();
    let snap_index = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
    if let Some(s) = snapshot {
        storage.apply_snapshot(s).map_err(StartError::Raft)?;
    }
    let mut entries = Vec::with_capacity(replayed.entries.len());
    for we in replayed.entries.iter().filter(|e| e.index > snap_index) {
        entries.push(
            Entry::parse_from_bytes(&we.data)
                .map_err(|e| StartError::Decode(format!("wal entry {}: {e}", we.index)))?,
        );
    }
    storage.append(&entries).map_err(StartError::Raft)?;
    storage.set_hardstate(HardState {
        term: replayed.hard_state.term,
        vote: replayed.hard_state.vote,
        commit: replayed.hard_state.commit.max(snap_index),
        ..Default::default()
    });
    let raft_cfg = Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: 1,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 512,
        check_quorum: true,
        pre_vote: cfg.pre_vote,
        applied: 0,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let raw = RawNode::new(&raft_cfg, storage, &logger).map_err(StartError::Raft)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(INPUT_DEPTH);
    let (apply, applied) = std::sync::mpsc::sync_channel(APPLY_DEPTH);
    let (status_tx, status) = watch::channel(Status {
        id: cfg.id,
        ..Default::default()
    });
    let mut lp = RaftLoop {
        raw,
        wal,
        transport,
        apply,
        rx,
        status_tx,
        tick: cfg.tick,
        leader: 0,
        campaign_alone: false,
        proposals: Vec::new(),
        proposal_bytes: 0,
        snaps: SnapshotState::new(snaps, snap_index),
        heartbeats_sent: HashMap::new(),
    };
    // A member that is the only voter (a single-member cluster
    // restarting) campaigns at once instead of after an election timeout,
    // as etcd's --initial-election-tick-advance lets it: no one else can
    // lead. raft-rs declines while conf changes are still unapplied; the
    // election timeout then applies as before.
    let prs = lp.raw.raft.prs();
    lp.campaign_alone = prs.is_singleton() && prs.conf().voters().contains(cfg.id);
    std::thread::Builder::new()
        .name("oxcd-raft".into())
        .spawn(move || lp.run())
        .map_err(StartError::Thread)?;
    let handle = NodeHandle { tx, status };
    // Links that read from their peers (etcd's protocol) deliver here.
    inbox_for.set_inbox(Arc::new(NodeInbox(handle.clone())));
    Ok((handle, applied))
}

/// Why the raft loop could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// raft-rs refused the restored state.
    #[error("raft: {0}")]
    Raft(raft::Error),
    /// A WAL entry did not decode as a raft entry.
    #[error("corrupt raft entry: {0}")]
    Decode(String),
    /// The thread could not be spawned.
    #[error("cannot start the raft thread: {0}")]
    Thread(std::io::Error),
}

struct RaftLoop {
    raw: RawNode<LogStore>,
    wal: Wal,
    transport: Arc<Transport>,
    /// To the apply stage.
    apply: SyncSender<ToApply>,
    rx: Receiver<Input>,
    status_tx: watch::Sender<Status>,
    tick: Duration,
    leader: u64,
    /// Set when this member became the only voter; it campaigns at once.
    campaign_alone: bool,
    /// Proposals waiting to be stepped into raft together.
    proposals: Vec<Entry>,
    /// Their payload size.
    proposal_bytes: usize,
    snaps: SnapshotState,
    /// When the leader last sent each peer a heartbeat (etcd's timeout
    /// detector): a gap over two intervals is a heartbeat sent late.
    heartbeats_sent: HashMap<u64, Instant>,
}

impl RaftLoop {
    fn run(&mut self) {
        if std::mem::take(&mut self.campaign_alone) {
            if let Err(err) = self.raw.campaign() {
                tracing::warn!(error = %err, "campaign failed");
            }
            self.handle_ready();
        }
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(input) => {
                    if self.handle(input).is_break() {
                        return;
                    }
                    while let Ok(more) = self.rx.try_recv() {
                        if self.handle(more).is_break() {
                            return;
                        }
                    }
                    self.flush_proposals();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick;
                }
            }
            self.drain_snapshot_reports();
            self.handle_ready();
            self.maybe_snapshot();
        }
    }

    /// Queues a proposal; queued proposals reach raft as one `MsgPropose`
    /// (one append, one broadcast to the followers) when the input queue is
    /// drained, another kind of input arrives, or the batch is full.
    fn queue_proposal(&mut self, data: Bytes) {
        self.proposal_bytes += data.len();
        self.proposals.push(Entry {
            data,
            ..Default::default()
        });
        if self.proposals.len() >= MAX_PROPOSAL_BATCH
            || self.proposal_bytes >= MAX_PROPOSAL_BATCH_BYTES
        {
            self.flush_proposals();
        }
    }

    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() {
            return;
        }
        self.proposal_bytes = 0;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        m.set_entries(std::mem::take(&mut self.proposals).into());
        if let Err(e) = self.raw.step(m) {
            // Dropped proposals (no leader) time out at their waiters.
            tracing::debug!(error = %e, "raft refused proposals");
        }
    }

    fn handle(&mut self, input: Input) -> ControlFlow<()> {
        if let Input::Propose(data) = input {
            self.queue_proposal(data);
            return ControlFlow::Continue(());
        }
        // Everything else is ordered after the proposals queued before it.
        self.flush_proposals();
        let r = match input {
            Input::Stop => return ControlFlow::Break(()),
            Input::Propose(_) => Ok(()),
            Input::ProposeConfChange(data) => {
                // Stepped as raft-rs's `propose_conf_change` does, with the
                // entry's data in etcd's form (raft-rs's type enum cannot
                // hold etcd's `AddLearnerNode`).
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgPropose);
                m.from = self.raw.raft.id;
                let mut e = Entry::default();
                e.set_entry_type(EntryType::EntryConfChange);
                e.data = data.into();
                m.set_entries(vec![e].into());
                self.step(m)
            }
            Input::Step(m) => self.step(m),
            Input::ReadIndex(ctx) => {
                self.raw.read_index(ctx);
                Ok(())
            }
            Input::TransferLeader(to) => {
                self.raw.transfer_leader(to);
                Ok(())
            }
            Input::Progress(reply) => {
                let _ = reply.send(self.progress());
                Ok(())
            }
        };
        if let Err(e) = r {
            // Dropped proposals (no leader) time out at the waiter.
            tracing::debug!(error = %e, "raft refused input");
        }
        ControlFlow::Continue(())
    }

    fn handle_ready(&mut self) {
        if !self.raw.has_ready() {
            return;
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.note_leader(ss.leader_id, ss.raft_state);
        }
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone());
        }
        self.hand_over(rd.take_committed_entries());
        for rs in rd.take_read_states() {
            self.to_apply(ToApply::ReadIndex {
                ctx: rs.request_ctx,
                index: rs.index,
            });
        }
        self.persist(rd.entries(), rd.hs());
        self.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.hand_over(light.take_committed_entries());
        self.raw.advance_apply();
        if std::mem::take(&mut self.campaign_alone) {
            if let Err(err) = self.raw.campaign() {
                tracing::warn!(error = %err, "campaign failed");
            }
        }
        self.publish();
    }

    fn note_leader(&mut self, leader: u64, role: StateRole) {
        if leader != self.leader {
            let term = self.raw.raft.term;
            if leader != 0 {
                tracing::info!(
                    "raft.node: {:x} elected leader {:x} at term {term}",
                    self.raw.raft.id,
                    leader
                );
            } else {
                tracing::info!(
                    "raft.node: {:x} lost leader {:x} at term {term}",
                    self.raw.raft.id,
                    self.leader
                );
            }
            self.leader = leader;
            self.heartbeats_sent.clear();
            self.to_apply(ToApply::LeaderChange { leader, term });
        }
        let _ = role;
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                self.heartbeat_sent(to);
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            let bytes = match m.write_to_bytes() {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode raft message");
                    continue;
                }
            };
            if self.transport.send(to, bytes).is_err() {
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Notes a heartbeat to `to`; one sent over two intervals after the
    /// previous is counted and logged as etcd does (the loop was held up,
    /// most likely by a slow disk).
    fn heartbeat_sent(&mut self, to: u64) {
        let now = Instant::now();
        let expected = self.tick * 2;
        if let Some(last) = self.heartbeats_sent.insert(to, now) {
            let gap = now.saturating_duration_since(last);
            if gap > expected {
                crate::metrics::get().heartbeat_send_failures.inc();
                tracing::warn!(
                    to = %format!("{to:x}"),
                    heartbeat_interval = ?self.tick,
                    expected_duration = ?expected,
                    exceeded_duration = ?(gap - expected),
                    "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk"
                );
            }
        }
    }

    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) {
        if entries.is_empty() && hs.is_none() {
            return;
        }
        let mut wal_entries = Vec::with_capacity(entries.len());
        for e in entries {
            match to_wal_entry(e) {
                Ok(we) => wal_entries.push(we),
                Err(err) => fatal(&format!("cannot encode raft entry: {err}")),
            }
        }
        let store = self.raw.mut_store();
        let state = match hs {
            Some(h) => wal::HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            },
            None => {
                let h = store.hard_state();
                wal::HardState {
                    term: h.term,
                    vote: h.vote,
                    commit: h.commit,
                }
            }
        };
        oxcd_failpoint::failpoint!("raftBeforeSave");
        if let Err(e) = self.wal.save(&state, &wal_entries) {
            fatal(&format!("failed to write the WAL: {e}"));
        }
        oxcd_failpoint::failpoint!("raftAfterSave");
        if let Err(e) = store.append(entries) {
            fatal(&format!("raft log append failed: {e}"));
        }
        if let Some(h) = hs {
            store.set_hardstate(h.clone());
        }
    }

    /// Queues `m` for the apply stage (waiting only when it is
    /// [`APPLY_DEPTH`] messages behind).
    fn to_apply(&self, m: ToApply) {
        if self.apply.send(m).is_err() {
            fatal("the apply stage stopped");
        }
    }

    /// Hands one group of committed entries to the apply stage. Conf
    /// changes are applied to raft here, in log order, before the group
    /// leaves: raft's view of the configuration is then the one as of the
    /// last index handed over, which is what a snapshot taken at that
    /// index records.
    fn hand_over(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut group = Vec::with_capacity(entries.len());
        for mut e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => group.push(Committed::Normal {
                    index: e.index,
                    term: e.term,
                    data: std::mem::take(&mut e.data),
                }),
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => {
                    if let Some(c) = self.apply_conf_change(&e) {
                        group.push(c);
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    tracing::error!(
                        index = e.index,
                        "conf change v2 entries are not used by oxcd"
                    );
                }
            }
        }
        self.to_apply(ToApply::Committed {
            entries: group,
            last,
        });
    }

    /// Steps raft with `m`. A leader takes proposals of conf changes in
    /// etcd's form that raft-rs cannot parse (etcd's `AddLearnerNode` is 3,
    /// past raft-rs's enum) the way raft-rs takes its own: refused while a
    /// leadership transfer runs, turned into an empty entry while another
    /// conf change is unapplied, else appended and sent.
    fn step(&mut self, mut m: Message) -> raft::Result<()> {
        let foreign = m.get_msg_type() == MessageType::MsgPropose
            && self.raw.raft.state == StateRole::Leader
            && m.get_entries().iter().any(|e| {
                e.get_entry_type() == EntryType::EntryConfChange
                    && ConfChange::parse_from_bytes(&e.data).is_err()
            });
        if !foreign {
            return self.raw.step(m);
        }
        let raft = &mut self.raw.raft;
        if raft.lead_transferee.is_some() {
            return Err(raft::Error::ProposalDropped);
        }
        for (i, e) in m.mut_entries().iter_mut().enumerate() {
            if e.get_entry_type() != EntryType::EntryConfChange {
                continue;
            }
            if raft.has_pending_conf() {
                tracing::info!("ignoring conf change: possible unapplied conf change");
                *e = Entry::default();
                e.set_entry_type(EntryType::EntryNormal);
            } else {
                raft.pending_conf_index = raft.raft_log.last_index() + i as u64 + 1;
            }
        }
        if !raft.append_entry(m.mut_entries()) {
            return Err(raft::Error::ProposalDropped);
        }
        raft.bcast_append();
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Option<Committed> {
        let Some((kind, cc)) = conf_change::read(&e.data) else {
            fatal(&format!("corrupt conf change at {}", e.index));
        };
        let applied = if kind == ConfKind::UpdateNode {
            // Peer URLs only: raft's configuration stays as it is.
            Ok(self.raw.raft.prs().conf().to_conf_state())
        } else {
            self.raw.apply_conf_change(&cc)
        };
        match applied {
            Ok(cs) => {
                self.raw.mut_store().set_conf_state(cs.clone());
                // A lone voter need not wait an election timeout to lead;
                // raft refuses to campaign until the change is applied, so
                // this happens after `advance_apply`.
                self.campaign_alone =
                    cs.voters == [self.raw.raft.id] && self.raw.raft.state != StateRole::Leader;
                Some(Committed::ConfChange {
                    index: e.index,
                    kind,
                    cc,
                    cs,
                })
            }
            Err(err) => {
                tracing::warn!(index = e.index, error = %err, "conf change rejected");
                None
            }
        }
    }

    /// Match index per member, as only the leader tracks it.
    fn progress(&self) -> Option<std::collections::HashMap<u64, u64>> {
        let raft = &self.raw.raft;
        (raft.state == StateRole::Leader).then(|| {
            raft.prs()
                .iter()
                .map(|(id, pr)| (*id, pr.matched))
                .collect()
        })
    }

    fn publish(&mut self) {
        let hs = self.raw.raft.hard_state();
        let status = Status {
            id: self.raw.raft.id,
            leader: self.raw.raft.leader_id,
            term: hs.term,
            commit: hs.commit,
            applied: self.raw.raft.raft_log.applied,
        };
        self.status_tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

/// Stops the process on a durability failure (etcd: `lg.Fatal`).
fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}; exiting");
    std::process::exit(1);
}
