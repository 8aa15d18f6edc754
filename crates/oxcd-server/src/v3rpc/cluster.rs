//! The `etcdserverpb.Cluster` service (etcd's `v3rpc/member.go`). Member
//! changes need replication and answer `Unimplemented` until that issue.

use crate::core::Core;
use crate::membership::Member as OxMember;
use oxcd_api::etcdserverpb::cluster_server::Cluster;
use oxcd_api::etcdserverpb::*;
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

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Status::unimplemented("oxcd: member add needs replication"))
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Status::unimplemented(
            "oxcd: member remove needs replication",
        ))
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(
            "oxcd: member update needs replication",
        ))
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
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(
            "oxcd: member promote needs replication",
        ))
    }
}
