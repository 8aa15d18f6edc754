//! The `etcdserverpb.Cluster` service (etcd's `v3rpc/member.go`): member
//! changes are raft conf changes, answered once applied.
//!
//! Before proposing, add, remove and promote pass etcd's safety checks
//! ([`crate::cluster::reconfig`]). Promote needs the leader's view of the learner's
//! progress, so a member that is not the leader forwards it
//! ([`crate::cluster::forward`]), as etcd's `PromoteMember` does.

use crate::cluster::conf_change::MemberChange;
use crate::cluster::membership::Member as OxMember;
use crate::core::Core;
use oxcd_api::etcdserverpb::cluster_server::Cluster;
use oxcd_api::etcdserverpb::*;
use oxcd_api::EtcdError;
use oxcd_raft::node::{Input, NodeError};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// gRPC handler for membership requests.
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    /// Creates the service over shared member state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Cluster responses carry no revision (etcd leaves it 0).
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.core.header(0))
    }
}

/// The wire form of a member.
pub fn to_pb(m: &OxMember) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

/// etcd's peer URL rule for MemberAdd: scheme http/https/unix(s), host:port,
/// no path.
fn valid_peer_url(u: &str) -> bool {
    let Ok(url) = url::Url::parse(u) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https" | "unix" | "unixs")
        && url.host_str().is_some()
        && url.port().is_some()
        && (url.path().is_empty() || url.path() == "/")
}

impl ClusterService {
    /// etcd's `checkMembershipOperationPermission`: membership changes are
    /// for root only (checked here, before any forwarding to the leader).
    async fn admin_only<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let who = self.core.who_of(r).await?;
        self.core.auth_view().check_admin(&who)?;
        Ok(())
    }

    fn check_urls_free(&self, urls: &[String], except: u64) -> Result<(), Status> {
        let taken = self
            .core
            .members
            .list()
            .iter()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(EtcdError::PeerURLExist.into());
        }
        Ok(())
    }

    fn response_members(list: &[OxMember]) -> Vec<Member> {
        list.iter().map(to_pb).collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.admin_only(&r).await?;
        let r = r.into_inner();
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| valid_peer_url(u)) {
            return Err(EtcdError::MemberBadURLs.into());
        }
        self.check_urls_free(&r.peer_ur_ls, 0)?;
        let m = OxMember {
            id: crate::cluster::membership::new_member_id(&r.peer_ur_ls),
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: r.is_learner,
        };
        if self.core.members.get(m.id).is_some() {
            return Err(EtcdError::MemberExist.into());
        }
        let members = self.core.members.list();
        self.core
            .reconfig
            .may_add(self.core.member.id, &members, r.is_learner)?;
        let list = self
            .core
            .writes
            .propose_conf_change(&MemberChange::Add(m.clone()))
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(to_pb(&m)),
            members: Self::response_members(&list),
        }))
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.admin_only(&r).await?;
        let id = r.into_inner().id;
        if self.core.members.get(id).is_none() {
            return Err(EtcdError::MemberNotFound.into());
        }
        let members = self.core.members.list();
        self.core
            .reconfig
            .may_remove(self.core.member.id, &members, id)?;
        let list = self
            .core
            .writes
            .propose_conf_change(&MemberChange::Remove(id))
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: Self::response_members(&list),
        }))
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.admin_only(&r).await?;
        let r = r.into_inner();
        let Some(mut m) = self.core.members.get(r.id) else {
            return Err(EtcdError::MemberNotFound.into());
        };
        self.check_urls_free(&r.peer_ur_ls, r.id)?;
        m.peer_urls = r.peer_ur_ls;
        let list = self
            .core
            .writes
            .propose_conf_change(&MemberChange::Update(m))
            .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: Self::response_members(&list),
        }))
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.core.members.list().iter().map(to_pb).collect(),
        }))
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.admin_only(&r).await?;
        let id = r.into_inner().id;
        let members = match promote_as_leader(&self.core, id).await {
            Err(EtcdError::NotLeader) => forward_promote(&self.core, id).await?,
            r => r?,
        };
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members,
        }))
    }
}

/// Promotes learner `id` if this member leads and the checks pass; answers
/// with the member list after it.
///
/// # Errors
/// [`EtcdError::NotLeader`] on a member that does not lead (the caller
/// forwards); [`EtcdError::MemberNotFound`], [`EtcdError::MemberNotLearner`],
/// [`EtcdError::LearnerNotReady`], [`EtcdError::MemberNotEnoughStarted`],
/// or the proposal's error.
pub(crate) async fn promote_as_leader(core: &Core, id: u64) -> Result<Vec<Member>, EtcdError> {
    let result = promote_here(core, id).await;
    // etcd counts promotions where they are decided: on the leader.
    let counters = crate::metrics::counters();
    match &result {
        Ok(_) => counters.learner_promote_successes.inc(),
        Err(EtcdError::NotLeader) => {}
        Err(e) => counters
            .learner_promote_failures
            .with_label_values(&[e.to_string().as_str()])
            .inc(),
    }
    result
}

async fn promote_here(core: &Core, id: u64) -> Result<Vec<Member>, EtcdError> {
    let Some(m) = core.members.get(id) else {
        return Err(EtcdError::MemberNotFound);
    };
    if !m.is_learner {
        return Err(EtcdError::MemberNotLearner);
    }
    let progress = leader_progress(core).await?;
    core.reconfig
        .may_promote(core.member.id, &progress, &core.members.list(), id)?;
    let list = core
        .writes
        .propose_conf_change(&MemberChange::Promote(m))
        .await?;
    Ok(ClusterService::response_members(&list))
}

/// The leader's match index per member, from the raft loop.
async fn leader_progress(core: &Core) -> Result<HashMap<u64, u64>, EtcdError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    core.writes
        .node()
        .send(Input::Progress(tx))
        .map_err(|e| match e {
            NodeError::Busy => EtcdError::TooManyRequests,
            _ => EtcdError::Stopped,
        })?;
    rx.await
        .map_err(|_| EtcdError::Stopped)?
        .ok_or(EtcdError::NotLeader)
}

/// Asks the leader to promote `id`. Like etcd, only "not ready", "not
/// found" and "not a learner" end the attempts early; anything else is
/// retried until the request timeout.
pub(crate) async fn forward_promote(core: &Core, id: u64) -> Result<Vec<Member>, EtcdError> {
    let call = |mut client: oxcd_api::oxcdpeerpb::forward_client::ForwardClient<_>| async move {
        let r = client.member_promote(MemberPromoteRequest { id }).await?;
        Ok(r.into_inner().members)
    };
    let is_final = |e: &EtcdError| {
        matches!(
            e,
            EtcdError::LearnerNotReady | EtcdError::MemberNotFound | EtcdError::MemberNotLearner
        )
    };
    let http = crate::cluster::peer_http::promote_call(id);
    core.forwarder
        .to_leader_or_etcd(core, call, Some(&http), is_final)
        .await
}
