//! What every client-facing service of one member shares: the store, the
//! write path, this member's identity and the cluster's members.
//!
//! One owner per piece of state: the store is owned by `oxcd-mvcc`, the
//! write path by its apply thread; `Core` only hands out handles.

use crate::auth::{Credentials, Identity};
use crate::cluster::membership::{Member, Members};
use crate::lessor::Lessor;
use crate::propose::WritePath;
use oxcd_api::etcdserverpb::ResponseHeader;
use oxcd_api::EtcdError;
use oxcd_mvcc::{KvStore, WatchableStore};

/// Shared state handed to the gRPC and HTTP services.
pub struct Core {
    /// The MVCC key space.
    pub store: KvStore,
    /// Where writes are proposed.
    pub writes: WritePath,
    /// Watchers: fed by the write path after each durable group.
    pub watchable: WatchableStore,
    /// Leases: renewals and lookups are served from it directly.
    pub lessor: Lessor,
    /// This member.
    pub member: Member,
    /// Every member of the cluster, sorted by ID.
    pub members: Members,
    /// The cluster ID derived from the initial members.
    pub cluster_id: u64,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// Safety checks on membership changes (`--strict-reconfig-check`).
    pub reconfig: crate::cluster::reconfig::ReconfigCheck,
    /// Sends what only the leader can answer to the leader.
    pub forwarder: crate::cluster::forward::Forwarder,
    /// The raised alarms (changed only by the applier).
    pub alarms: crate::apply::alarm::Alarms,
    /// Users, roles and permissions as applied, and the bcrypt pool.
    pub auth: crate::auth::AuthHandle,
}

impl Core {
    /// A response header at `revision` with this member's cluster fields.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: self.writes.status().term,
        }
    }

    /// Fills the cluster fields of a header produced by the applier.
    pub fn stamp(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    /// Whether this member is currently a non-voting learner.
    pub fn is_learner(&self) -> bool {
        self.members.is_learner(self.member.id)
    }

    /// Who sent a request with these headers and extensions (token, else
    /// client-certificate CN; see [`crate::auth::AuthHandle::resolve`]).
    ///
    /// # Errors
    /// `InvalidAuthToken`, or the wait for the token's entry failing.
    pub async fn who(
        &self,
        headers: &http::HeaderMap,
        ext: &http::Extensions,
    ) -> Result<Identity, EtcdError> {
        let creds = Credentials::of(headers, ext);
        if creds == Credentials::None {
            return Ok(Identity::none());
        }
        self.auth
            .resolve(creds, |index| self.writes.wait_applied(index))
            .await
    }

    /// [`Core::who`] for a tonic request.
    ///
    /// # Errors
    /// As [`Core::who`].
    pub async fn who_of<T>(&self, r: &tonic::Request<T>) -> Result<Identity, EtcdError> {
        self.who(r.metadata().as_ref(), r.extensions()).await
    }

    /// The current auth view (users, roles, permissions).
    pub fn auth_view(&self) -> std::sync::Arc<crate::auth::permissions::AuthView> {
        self.auth.view.get()
    }

    /// The leader's member ID, 0 when there is none.
    pub fn leader(&self) -> u64 {
        self.writes.status().leader
    }
}
