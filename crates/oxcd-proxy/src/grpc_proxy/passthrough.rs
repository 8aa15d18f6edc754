//! The services the proxy passes to the cluster as they are: Cluster,
//! Maintenance, Auth, Lock and Election, with the caller's token, and with
//! `--namespace` applied to lock and election names (etcd's proxy leaves
//! those outside the namespace; oxcd keeps a namespaced client inside it).
//! `MemberList` answers with the proxy itself when it advertises a URL.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use oxcd_api::etcdserverpb::auth_client::AuthClient;
use oxcd_api::etcdserverpb::auth_server::Auth;
use oxcd_api::etcdserverpb::cluster_client::ClusterClient;
use oxcd_api::etcdserverpb::cluster_server::Cluster;
use oxcd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use oxcd_api::etcdserverpb::maintenance_server::Maintenance;
use oxcd_api::etcdserverpb::*;
use oxcd_api::v3electionpb::election_client::ElectionClient;
use oxcd_api::v3electionpb::election_server::Election;
use oxcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use oxcd_api::v3lockpb::lock_client::LockClient;
use oxcd_api::v3lockpb::lock_server::Lock;
use oxcd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::namespace::Namespace;
use super::register;
use super::upstream::{upcall, Upstream};

/// One unary method passed through: `repeatable` ones (reads) fail over.
/// Written in the shape `async_trait` gives the trait's methods, since the
/// attribute does not look inside macros.
macro_rules! pass {
    ($method:ident, $client:ident, $req:ty, $resp:ty, $repeatable:expr) => {
        fn $method<'life0, 'async_trait>(
            &'life0 self,
            req: Request<$req>,
        ) -> Pin<Box<dyn Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                let r = req.get_ref().clone();
                self.up
                    .unary($repeatable, upcall!($client, $method, &req, r))
                    .await
            })
        }
    };
}

/// A server stream from the cluster, handed to the client.
type Passed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `Cluster` for clients of the proxy.
#[derive(Debug)]
pub struct ClusterProxy {
    pub(super) up: Arc<Upstream>,
    /// `--advertise-client-url` (empty: pass `MemberList` through).
    pub(super) advertise: String,
    /// `--resolver-prefix` (empty: no registration).
    pub(super) resolver_prefix: String,
    pub(super) ns: Namespace,
}

#[tonic::async_trait]
impl Cluster for ClusterProxy {
    pass!(
        member_add,
        ClusterClient,
        MemberAddRequest,
        MemberAddResponse,
        false
    );
    pass!(
        member_remove,
        ClusterClient,
        MemberRemoveRequest,
        MemberRemoveResponse,
        false
    );
    pass!(
        member_update,
        ClusterClient,
        MemberUpdateRequest,
        MemberUpdateResponse,
        false
    );
    pass!(
        member_promote,
        ClusterClient,
        MemberPromoteRequest,
        MemberPromoteResponse,
        false
    );

    /// The cluster's members, or — when the proxy advertises a URL — the
    /// proxies registered under `--resolver-prefix`, else this proxy alone
    /// (what etcd's proxy answers, so clients that sync endpoints keep
    /// talking to the proxy).
    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if self.advertise.is_empty() {
            let r = req.get_ref().clone();
            return self
                .up
                .unary(true, upcall!(ClusterClient, member_list, &req, r))
                .await;
        }
        if !self.resolver_prefix.is_empty() {
            let members =
                register::registered(&self.up, &self.ns, &self.resolver_prefix, &req).await?;
            if !members.is_empty() {
                return Ok(Response::new(MemberListResponse {
                    members,
                    ..Default::default()
                }));
            }
        }
        Ok(Response::new(MemberListResponse {
            members: vec![Member {
                name: register::hostname(),
                client_ur_ls: vec![self.advertise.clone()],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
}

/// `Maintenance` for clients of the proxy.
#[derive(Debug)]
pub struct MaintenanceProxy {
    pub(super) up: Arc<Upstream>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceProxy {
    pass!(alarm, MaintenanceClient, AlarmRequest, AlarmResponse, false);
    pass!(
        status,
        MaintenanceClient,
        StatusRequest,
        StatusResponse,
        true
    );
    pass!(
        defragment,
        MaintenanceClient,
        DefragmentRequest,
        DefragmentResponse,
        false
    );
    pass!(hash, MaintenanceClient, HashRequest, HashResponse, true);
    pass!(
        hash_kv,
        MaintenanceClient,
        HashKvRequest,
        HashKvResponse,
        true
    );
    pass!(
        move_leader,
        MaintenanceClient,
        MoveLeaderRequest,
        MoveLeaderResponse,
        false
    );
    pass!(
        downgrade,
        MaintenanceClient,
        DowngradeRequest,
        DowngradeResponse,
        false
    );

    type SnapshotStream = Passed<SnapshotResponse>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let r = req.get_ref().clone();
        let stream = self
            .up
            .unary(true, upcall!(MaintenanceClient, snapshot, &req, r))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `Auth` for clients of the proxy.
#[derive(Debug)]
pub struct AuthProxy {
    pub(super) up: Arc<Upstream>,
}

#[tonic::async_trait]
impl Auth for AuthProxy {
    pass!(
        auth_enable,
        AuthClient,
        AuthEnableRequest,
        AuthEnableResponse,
        false
    );
    pass!(
        auth_disable,
        AuthClient,
        AuthDisableRequest,
        AuthDisableResponse,
        false
    );
    pass!(
        auth_status,
        AuthClient,
        AuthStatusRequest,
        AuthStatusResponse,
        true
    );
    pass!(
        authenticate,
        AuthClient,
        AuthenticateRequest,
        AuthenticateResponse,
        true
    );
    pass!(
        user_add,
        AuthClient,
        AuthUserAddRequest,
        AuthUserAddResponse,
        false
    );
    pass!(
        user_get,
        AuthClient,
        AuthUserGetRequest,
        AuthUserGetResponse,
        true
    );
    pass!(
        user_list,
        AuthClient,
        AuthUserListRequest,
        AuthUserListResponse,
        true
    );
    pass!(
        user_delete,
        AuthClient,
        AuthUserDeleteRequest,
        AuthUserDeleteResponse,
        false
    );
    pass!(
        user_change_password,
        AuthClient,
        AuthUserChangePasswordRequest,
        AuthUserChangePasswordResponse,
        false
    );
    pass!(
        user_grant_role,
        AuthClient,
        AuthUserGrantRoleRequest,
        AuthUserGrantRoleResponse,
        false
    );
    pass!(
        user_revoke_role,
        AuthClient,
        AuthUserRevokeRoleRequest,
        AuthUserRevokeRoleResponse,
        false
    );
    pass!(
        role_add,
        AuthClient,
        AuthRoleAddRequest,
        AuthRoleAddResponse,
        false
    );
    pass!(
        role_get,
        AuthClient,
        AuthRoleGetRequest,
        AuthRoleGetResponse,
        true
    );
    pass!(
        role_list,
        AuthClient,
        AuthRoleListRequest,
        AuthRoleListResponse,
        true
    );
    pass!(
        role_delete,
        AuthClient,
        AuthRoleDeleteRequest,
        AuthRoleDeleteResponse,
        false
    );
    pass!(
        role_grant_permission,
        AuthClient,
        AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermissionResponse,
        false
    );
    pass!(
        role_revoke_permission,
        AuthClient,
        AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermissionResponse,
        false
    );
}

/// `Lock` for clients of the proxy.
#[derive(Debug)]
pub struct LockProxy {
    pub(super) up: Arc<Upstream>,
    pub(super) ns: Namespace,
}

#[tonic::async_trait]
impl Lock for LockProxy {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.lock_req(&mut r);
        let mut resp = self
            .up
            .unary(false, upcall!(LockClient, lock, &req, r))
            .await?
            .into_inner();
        self.ns.lock_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.unlock_req(&mut r);
        self.up
            .unary(false, upcall!(LockClient, unlock, &req, r))
            .await
    }
}

/// `Election` for clients of the proxy.
#[derive(Debug)]
pub struct ElectionProxy {
    pub(super) up: Arc<Upstream>,
    pub(super) ns: Namespace,
}

#[tonic::async_trait]
impl Election for ElectionProxy {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.campaign_req(&mut r);
        let mut resp = self
            .up
            .unary(false, upcall!(ElectionClient, campaign, &req, r))
            .await?
            .into_inner();
        self.ns.campaign_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.proclaim_req(&mut r);
        self.up
            .unary(false, upcall!(ElectionClient, proclaim, &req, r))
            .await
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.leader_req(&mut r);
        let mut resp = self
            .up
            .unary(true, upcall!(ElectionClient, leader, &req, r))
            .await?
            .into_inner();
        self.ns.leader_resp(&mut resp);
        Ok(Response::new(resp))
    }

    type ObserveStream = Passed<LeaderResponse>;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.leader_req(&mut r);
        let stream = self
            .up
            .unary(true, upcall!(ElectionClient, observe, &req, r))
            .await?
            .into_inner();
        let ns = self.ns.clone();
        Ok(Response::new(Box::pin(stream.map(move |item| {
            item.map(|mut resp| {
                ns.leader_resp(&mut resp);
                resp
            })
        }))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let mut r = req.get_ref().clone();
        self.ns.resign_req(&mut r);
        self.up
            .unary(false, upcall!(ElectionClient, resign, &req, r))
            .await
    }
}
