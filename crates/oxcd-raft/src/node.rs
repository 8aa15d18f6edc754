//! The raft loop: one thread owns the raft-rs `RawNode`, the WAL and the
//! in-memory log, and turns every `Ready` into persist / send / apply
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
//! 3. apply `committed_entries()`;
//! 4. hand `read_states()` to the application;
//! 5. append `entries()` and the hard state to the WAL with ONE fdatasync,
//!    then to the in-memory log;
//! 6. send `persisted_messages()` (votes and appends acknowledged only
//!    after the fsync);
//! 7. `advance`, then send and apply what the light ready holds.
//!
//! A failed WAL write or fsync is fatal: the process exits, as etcd does,
//! because what reached the disk is unknown.
//!
//! The application (the server's applier) sees committed normal entries in
//! log order exactly once per process run, and conf changes always: on
//! restart the whole log after the last snapshot is replayed, and the
//! application skips the KV part of entries its backend already holds (its
//! consistent index), but conf changes must be applied to raft again.

use crate::transport::{Inbox, Transport};
use crate::wal::{self, Wal, WalContents};
use prost::bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, MessageType,
};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use std::ops::ControlFlow;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Inputs queued to the raft loop before callers are told to back off.
const INPUT_DEPTH: usize = 64 * 1024;

/// Something for the raft loop to do.
#[derive(Debug)]
pub enum Input {
    /// Propose an application entry (an encoded request).
    Propose(Bytes),
    /// Propose a membership change.
    ProposeConfChange(ConfChange),
    /// A message from a peer.
    Step(Message),
    /// Ask for a read index; answered through [`Application::on_read_index`]
    /// with the same context.
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
    /// The highest applied index.
    pub applied: u64,
}

impl Status {
    /// Whether this member is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.id
    }
}

/// What the raft loop calls back into; runs on the raft thread.
pub trait Application: Send + 'static {
    /// Applies one committed normal entry (never an empty one).
    fn apply_entry(&mut self, index: u64, term: u64, data: &[u8]);
    /// A committed conf change was applied to raft; `cs` is the new config.
    fn apply_conf_change(&mut self, index: u64, cc: &ConfChange, cs: &ConfState);
    /// A read index request with `ctx` may be served once applied ≥ `index`.
    fn on_read_index(&mut self, ctx: &[u8], index: u64);
    /// Called after each group of applied entries, with the applied index.
    fn on_applied(&mut self, applied: u64);
    /// The leader changed (`leader` 0: no leader).
    fn on_leader_change(&mut self, leader: u64, term: u64);
}

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
/// member the log's conf changes left in the configuration, so that this
/// member restarts as the only voter of the same cluster with all its data.
/// Returns the IDs removed.
pub fn force_new_cluster(
    wal: &mut Wal,
    replayed: &mut WalContents,
    me: u64,
) -> Result<Vec<u64>, BootstrapError> {
    let mut members = std::collections::BTreeSet::new();
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

fn to_wal_entry(e: &Entry) -> Result<wal::Entry, BootstrapError> {
    Ok(wal::Entry {
        index: e.index,
        term: e.term,
        data: e.write_to_bytes().map_err(encode_err)?,
    })
}

/// Starts the raft loop on its own thread over `wal` and what it replayed.
pub fn start<A: Application>(
    cfg: NodeConfig,
    wal: Wal,
    replayed: WalContents,
    transport: Arc<Transport>,
    app: A,
) -> Result<NodeHandle, StartError> {
    let storage = MemStorage::new();
    {
        let mut core = storage.wl();
        let mut entries = Vec::with_capacity(replayed.entries.len());
        for we in &replayed.entries {
            entries.push(
                Entry::parse_from_bytes(&we.data)
                    .map_err(|e| StartError::Decode(format!("wal entry {}: {e}", we.index)))?,
            );
        }
        core.append(&entries).map_err(StartError::Raft)?;
        core.set_hardstate(HardState {
            term: replayed.hard_state.term,
            vote: replayed.hard_state.vote,
            commit: replayed.hard_state.commit,
            ..Default::default()
        });
    }
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
    let (status_tx, status) = watch::channel(Status {
        id: cfg.id,
        ..Default::default()
    });
    let mut lp = RaftLoop {
        raw,
        wal,
        transport,
        app,
        rx,
        status_tx,
        tick: cfg.tick,
        leader: 0,
        campaign_alone: false,
    };
    std::thread::Builder::new()
        .name("oxcd-raft".into())
        .spawn(move || lp.run())
        .map_err(StartError::Thread)?;
    Ok(NodeHandle { tx, status })
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

struct RaftLoop<A> {
    raw: RawNode<MemStorage>,
    wal: Wal,
    transport: Arc<Transport>,
    app: A,
    rx: Receiver<Input>,
    status_tx: watch::Sender<Status>,
    tick: Duration,
    leader: u64,
    /// Set when this member became the only voter; it campaigns at once.
    campaign_alone: bool,
}

impl<A: Application> RaftLoop<A> {
    fn run(&mut self) {
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
            self.handle_ready();
        }
    }

    fn handle(&mut self, input: Input) -> ControlFlow<()> {
        let r = match input {
            Input::Stop => return ControlFlow::Break(()),
            Input::Propose(data) => self.raw.propose(Vec::new(), data.to_vec()),
            Input::ProposeConfChange(cc) => self.raw.propose_conf_change(Vec::new(), cc),
            Input::Step(m) => self.raw.step(m),
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
            // Snapshot transfer is not built yet; members never compact
            // their log, so a leader never needs to send one.
            tracing::error!("received a raft snapshot, which this version cannot install");
        }
        self.apply(rd.take_committed_entries());
        for rs in rd.take_read_states() {
            self.app.on_read_index(&rs.request_ctx, rs.index);
        }
        self.persist(rd.entries(), rd.hs());
        self.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().wl().mut_hard_state().commit = commit;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
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
            self.app.on_leader_change(leader, term);
        }
        let _ = role;
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let bytes = match m.write_to_bytes() {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode raft message");
                    continue;
                }
            };
            if self.transport.send(to, bytes).is_err() {
                self.raw.report_unreachable(to);
                if is_snapshot {
                    self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
                }
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
                let h = store.rl().hard_state().clone();
                wal::HardState {
                    term: h.term,
                    vote: h.vote,
                    commit: h.commit,
                }
            }
        };
        if let Err(e) = self.wal.save(&state, &wal_entries) {
            fatal(&format!("failed to write the WAL: {e}"));
        }
        let mut core = store.wl();
        if let Err(e) = core.append(entries) {
            fatal(&format!("raft log append failed: {e}"));
        }
        if let Some(h) = hs {
            core.set_hardstate(h.clone());
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    self.app.apply_entry(e.index, e.term, &e.data)
                }
                EntryType::EntryNormal => {}
                EntryType::EntryConfChange => self.apply_conf_change(&e),
                EntryType::EntryConfChangeV2 => {
                    tracing::error!(
                        index = e.index,
                        "conf change v2 entries are not used by oxcd"
                    );
                }
            }
        }
        self.app.on_applied(last);
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => fatal(&format!("corrupt conf change at {}: {err}", e.index)),
        };
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                self.raw.mut_store().wl().set_conf_state(cs.clone());
                self.app.apply_conf_change(e.index, &cc, &cs);
                // A lone voter need not wait an election timeout to lead;
                // raft refuses to campaign until the change is applied, so
                // this happens after `advance_apply`.
                self.campaign_alone =
                    cs.voters == [self.raw.raft.id] && self.raw.raft.state != StateRole::Leader;
            }
            Err(err) => tracing::warn!(index = e.index, error = %err, "conf change rejected"),
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
