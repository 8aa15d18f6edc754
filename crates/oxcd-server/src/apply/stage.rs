//! The apply stage: what happens to a committed entry (etcd's `applyAll` /
//! `applyEntryNormal` / `applyConfChange`).
//!
//! Runs on a thread of its own (`oxcd-apply`), fed one way by the raft
//! loop ([`ToApply`]), so applying never delays raft's ticks, heartbeats
//! and votes, and group N is applied while raft fsyncs group N+1. It owns
//! what applying changes: the applier (store, lessor, auth, alarms), the
//! member list, the proposers' waiters and the watch fan-out's input.
//!
//! For each committed normal entry, in log order:
//! decode the `InternalRaftRequest` (or etcd 3.4's bare v2 request, see
//! [`crate::cluster::v2`]); member attributes update the member list;
//! everything else goes to the [`Applier`] unless the backend already
//! holds it (index ≤ the consistent index the store had at start, or got
//! from an installed snapshot: the WAL replays the log after the newest
//! snapshot on restart, the backend kept a prefix). After
//! each group: watchers get the group's events, then the proposers their
//! answers, then the applied index is published (which releases
//! linearizable reads waiting for it). Conf changes are applied to raft by
//! the loop (on replay too); here the member list and peer links follow
//! them. Read states are resolved in order with the entries; snapshot
//! requests are answered once everything before them is applied.

use crate::apply::{Applier, Request};
use crate::auth::Identity;
use crate::cluster::membership::{ConfApplied, Members};
use crate::cluster::v2::{EntryRequest, V2Change};
use crate::lessor::Lessor;
use crate::propose::EventSink;
use crate::raft::read_index::ReadIndex;
use crate::wait::{Outcome, Waiters};
use oxcd_api::etcdserverpb::Request as V2Request;
use oxcd_api::mvccpb::Event;
use oxcd_failpoint::failpoint;
use oxcd_raft::node::{Committed, ConfKind, ToApply};
use raft::prelude::{ConfChange, ConfState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// An entry that takes longer to apply is logged and counted
/// (`etcd_server_slow_apply_total`), as etcd's `warnApplyDuration`.
const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Everything the apply stage needs; it owns it on its thread.
pub struct ApplyStage {
    /// Runs requests against the store.
    pub applier: Applier,
    /// The backend's consistent index at start: entries up to it are
    /// already applied.
    pub skip_until: u64,
    /// Proposers waiting for their entries.
    pub waiters: Arc<Waiters>,
    /// Linearizable readers waiting for read indexes.
    pub reads: Arc<ReadIndex>,
    /// The applied index, published after each group.
    pub applied: watch::Sender<u64>,
    /// Where watch events go once their group is applied.
    pub sink: Arc<dyn EventSink>,
    /// The member list (attributes arrive through raft).
    pub members: Members,
    /// Links to the other members, updated by membership changes.
    pub transport: Arc<oxcd_raft::transport::Transport>,
    /// The lessor, promoted when this member becomes leader.
    pub lessor: Lessor,
    /// This member's ID.
    pub member_id: u64,
    /// `--election-timeout`: a new leader extends leases by it.
    pub election_timeout: Duration,
    /// Events of the group being applied.
    pub events: Vec<Event>,
    /// Answers of the group being applied.
    pub done: Vec<(u64, Outcome)>,
    /// Whether the store has a batch open for this group.
    pub batch_open: bool,
    /// What raft snapshots read and replace (`raft_snapshot`).
    pub snap: crate::raft::snapshot::SnapshotParts,
    /// Answers of writes that went over the quota at apply while no
    /// NOSPACE alarm was raised: the alarm is raised before they are
    /// delivered (etcd's `applyEntryNormal`).
    pub over_quota: tokio::sync::mpsc::UnboundedSender<(u64, Outcome)>,
}

impl ApplyStage {
    /// Starts the stage on its own thread; it ends when the raft loop does.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn spawn(
        mut self,
        rx: std::sync::mpsc::Receiver<ToApply>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("oxcd-apply".into())
            .spawn(move || {
                while let Ok(m) = rx.recv() {
                    self.handle(m);
                }
            })
    }

    fn handle(&mut self, m: ToApply) {
        match m {
            ToApply::Committed { entries, last } => {
                for e in entries {
                    match e {
                        Committed::Normal { index, data, .. } => {
                            failpoint!("applyBeforeEntry");
                            self.apply_entry(index, &data);
                        }
                        Committed::ConfChange {
                            index,
                            kind,
                            cc,
                            cs,
                        } => self.apply_conf_change(index, kind, &cc, &cs),
                    }
                }
                self.on_applied(last);
            }
            ToApply::ReadIndex { ctx, index } => self.reads.resolve(&ctx, index),
            ToApply::LeaderChange { leader, .. } => self.on_leader_change(leader),
            ToApply::SnapshotData { index, reply } => {
                // The raft loop may have moved on (a newer snapshot arrived).
                let _ = reply.send(crate::raft::snapshot::snapshot_data(self, index));
            }
            ToApply::Restore {
                index,
                db,
                data,
                reply,
            } => {
                failpoint!("applyBeforeRestore");
                let r = crate::raft::snapshot::restore(self, index, &db, &data);
                if r.is_ok() {
                    failpoint!("applyAfterRestore");
                    // Readers waiting for an index the snapshot covers may
                    // go ahead.
                    self.on_applied(index);
                }
                let _ = reply.send(r);
            }
            _ => tracing::warn!("apply stage: unknown message from the raft loop"),
        }
    }

    fn apply_entry(&mut self, index: u64, data: &[u8]) {
        let r = match crate::cluster::v2::decode_entry(data) {
            Some(EntryRequest::V3(r)) => *r,
            Some(EntryRequest::V2(v2)) => return self.apply_v2(index, &v2),
            None => {
                tracing::error!(index, "undecodable raft entry; skipped");
                return;
            }
        };
        let id = r.header.as_ref().map_or(0, |h| h.id);
        let who = r.header.as_ref().map_or_else(Identity::none, |h| Identity {
            username: h.username.clone(),
            revision: h.auth_revision,
        });
        if let Some(attrs) = &r.cluster_member_attr_set {
            let a = attrs.member_attributes.clone().unwrap_or_default();
            self.members
                .set_attributes(attrs.member_id, a.name, a.client_urls);
            return;
        }
        if index <= self.skip_until {
            return;
        }
        let Some(req) = Request::from_internal(r) else {
            tracing::warn!(index, "raft entry with no request this version applies");
            return;
        };
        if !self.batch_open {
            // One backend commit for the whole group (see `on_applied`).
            self.applier.store().begin_batch();
            self.batch_open = true;
        }
        let started = Instant::now();
        let applied = self.applier.apply_as(&req, &who, index);
        let took = started.elapsed();
        if took > SLOW_APPLY {
            crate::metrics::counters().slow_applies.inc();
            tracing::warn!(
                index,
                took = ?took,
                expected_duration = ?SLOW_APPLY,
                "apply request took too long"
            );
        }
        self.events.extend(applied.events);
        if id == 0 {
            return;
        }
        if matches!(applied.result, Err(oxcd_api::EtcdError::NoSpace))
            && !self.applier.alarms().nospace()
        {
            if let Err(e) = self.over_quota.send((id, applied.result)) {
                // The raiser is gone (shutting down): answer directly.
                self.done.push(e.0);
            }
            return;
        }
        self.done.push((id, applied.result));
    }

    /// The v2 requests etcd 3.4 members replicate, applied to what oxcd
    /// keeps: member attributes and the cluster version.
    fn apply_v2(&mut self, index: u64, v2: &V2Request) {
        match crate::cluster::v2::change(v2) {
            Ok(V2Change::Attributes {
                id,
                name,
                client_urls,
            }) => self.members.set_attributes(id, name, client_urls),
            Ok(V2Change::ClusterVersion(v)) => {
                match self.members.cluster_version() {
                    None => {
                        // Its capnslog line is logged at readiness.
                        tracing::info!(
                            zap_only = true,
                            local_member_id = %format!("{:x}", self.member_id),
                            cluster_version = crate::version::major_minor(&v),
                            "set initial cluster version"
                        )
                    }
                    Some(from) if from != v => {
                        tracing::info!(
                            target: "etcdserver/membership",
                            zap = "updated cluster version",
                            local_member_id = %format!("{:x}", self.member_id),
                            from = crate::version::major_minor(&from),
                            to = crate::version::major_minor(&v),
                            "updated the cluster version from {} to {}",
                            crate::version::major_minor(&from),
                            crate::version::major_minor(&v)
                        );
                    }
                    Some(_) => {}
                }
                self.members.set_cluster_version(v);
            }
            Ok(V2Change::Other) => tracing::debug!(index, "v2 request: nothing to apply"),
            Err(e) => tracing::warn!(index, error = %e, "bad member attributes; skipped"),
        }
    }

    fn apply_conf_change(&mut self, index: u64, kind: ConfKind, cc: &ConfChange, cs: &ConfState) {
        tracing::info!(
            index,
            node = %format!("{:x}", cc.node_id),
            change = ?kind,
            voters = ?cs.voters.iter().map(|v| format!("{v:x}")).collect::<Vec<_>>(),
            "applied raft conf change"
        );
        match self
            .members
            .apply_conf_change(kind, cc.node_id, &cc.context)
        {
            ConfApplied::Removed => {
                // Later, not now: the messages telling the removed member
                // that its removal committed are still queued.
                self.transport
                    .remove_peer_later(cc.node_id, Duration::from_secs(2));
                if cc.node_id == self.member_id {
                    removed_exit();
                }
            }
            ConfApplied::Upserted(peer_urls) if cc.node_id != self.member_id => {
                self.transport.add_peer(cc.node_id, peer_urls);
            }
            _ => {}
        }
        if cc.id != 0 {
            self.done.push((
                cc.id,
                Ok(crate::apply::Response::Members(self.members.list())),
            ));
        }
    }

    fn on_applied(&mut self, applied: u64) {
        // Readers, watchers and proposers learn of the group only once the
        // store has published it (`end_batch`: staged, not yet committed to
        // the backend file; the WAL holds it).
        if self.batch_open {
            self.batch_open = false;
            failpoint!("applyBeforePublish");
            self.applier.store().end_batch();
            failpoint!("applyAfterPublish");
        }
        if !self.events.is_empty() {
            self.sink.publish(std::mem::take(&mut self.events));
        }
        for (id, outcome) in self.done.drain(..) {
            self.waiters.trigger(id, outcome);
        }
        self.applied.send_replace(applied);
    }

    fn on_leader_change(&mut self, leader: u64) {
        if leader != 0 {
            crate::metrics::counters().leader_changes.inc();
        }
        if leader == self.member_id {
            // A new leader gives every lease a fresh TTL plus one election
            // timeout, as etcd's lessor Promote does.
            self.lessor.promote(self.election_timeout);
        }
    }
}

/// A member removed from the cluster stops itself, as etcd's does, after a
/// moment that lets the leader see the change committed.
pub fn removed_exit() {
    tracing::warn!("the member has been permanently removed from the cluster; exiting");
    let _ = std::thread::Builder::new()
        .name("oxcd-removed".into())
        .spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            std::process::exit(0);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages};
    use oxcd_api::etcdserverpb::{InternalRaftRequest, PutRequest, RequestHeader};
    use proptest::prelude::*;
    use prost::Message;
    use protobuf::Message as _;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// A committed entry's bytes, arbitrary or damaged: the request,
        /// the conf change and its context decode or fail, never panic.
        #[test]
        fn committed_entries_decode_or_fail(
            key in prop::collection::vec(any::<u8>(), 0..16),
            raw in prop::collection::vec(any::<u8>(), 0..128),
            damage in damages(4),
        ) {
            let req = InternalRaftRequest {
                header: Some(RequestHeader { id: 7, username: "u".into(), auth_revision: 3 }),
                put: Some(PutRequest { key: key.into(), ..PutRequest::default() }),
                ..InternalRaftRequest::default()
            }
            .encode_to_vec();
            let cc = ConfChange {
                node_id: 9,
                context: b"{\"op\":\"add\",\"id\":\"9\"}".to_vec().into(),
                ..Default::default()
            }
            .write_to_bytes()
            .unwrap();
            for bytes in [raw, damaged(req, &damage), damaged(cc, &damage)] {
                if let Some(crate::cluster::v2::EntryRequest::V2(v2)) =
                    crate::cluster::v2::decode_entry(&bytes)
                {
                    let _ = crate::cluster::v2::change(&v2);
                }
                if let Some((kind, cc)) = oxcd_raft::node::conf_change::read(&bytes) {
                    let _ = crate::cluster::conf_change::read(kind, cc.node_id, &cc.context, None);
                }
            }
        }
    }
}
