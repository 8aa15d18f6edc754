//! The `etcdserverpb.Auth` service (etcd's `v3rpc/auth.go` and the auth
//! half of `etcdserver/v3_server.go`).
//!
//! Every request is proposed through raft and decided at apply, in log
//! order, on the replicated state (see [`crate::auth::store`]); the
//! service only hashes passwords before proposing (so no password reaches
//! the log) and shapes the answer.

use crate::auth::store::{AuthReply, AuthRequest};
use crate::auth::tokens::SimpleTokens;
use crate::auth::{Identity, TokenProvider};
use crate::core::Core;
use oxcd_api::etcdserverpb::auth_server::Auth;
use oxcd_api::etcdserverpb::*;
use oxcd_api::EtcdError;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// gRPC handler for auth requests.
pub struct AuthService {
    core: Arc<Core>,
}

impl AuthService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Proposes `req` as `who` and waits for its apply.
    async fn propose(
        &self,
        who: &Identity,
        req: AuthRequest,
    ) -> Result<(AuthReply, Option<ResponseHeader>), Status> {
        let (reply, rev) = self.core.writes.propose_as(req, who).await?;
        Ok((reply, Some(self.core.header(rev))))
    }

    /// Refuses a caller the admin rule would refuse at apply before
    /// spending a bcrypt hash on it (the apply-time check still decides:
    /// this only spares the hashing pool from anonymous floods).
    fn admin_before_hashing(&self, who: &Identity) -> Result<(), Status> {
        Ok(self.core.auth_view().check_admin(who)?)
    }

    /// The caller's identity (checked at apply).
    async fn who<T>(&self, r: &Request<T>) -> Result<Identity, Status> {
        Ok(self.core.who_of(r).await?)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self.propose(&who, AuthRequest::Enable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self.propose(&who, AuthRequest::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let who = self.who(&r).await?;
        let (reply, header) = self.propose(&who, AuthRequest::Status).await?;
        Ok(Response::new(AuthStatusResponse {
            header,
            enabled: reply.enabled,
            auth_revision: reply.auth_revision,
        }))
    }

    /// etcd's `Authenticate`: the password is checked here, on the state
    /// after a linearizable barrier, with bcrypt off the async threads;
    /// only a match is proposed (without the password), and the token
    /// comes into being when that entry applies, on every member. A
    /// failure costs one bcrypt check and writes nothing.
    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let (meta, ext, req) = r.into_parts();
        loop {
            self.core.writes.linearizable_barrier().await?;
            let state = self.core.auth.view.state();
            if !state.enabled {
                return Err(EtcdError::AuthNotEnabled.into());
            }
            let user = state.users.get(&req.name).ok_or(EtcdError::AuthFailed)?;
            if crate::auth::store::no_password(user) {
                return Err(EtcdError::Unknown(
                    "auth: authentication failed, password was given for no password user".into(),
                )
                .into());
            }
            let matches = self
                .core
                .auth
                .hasher
                .verify(req.password.clone(), user.password.to_vec())
                .await?;
            if !matches {
                return Err(EtcdError::AuthFailed.into());
            }
            let simple_token = match &self.core.auth.tokens {
                // `--auth-token ""`: no tokens are issued.
                TokenProvider::None => return Err(EtcdError::AuthFailed.into()),
                TokenProvider::Simple(_) => SimpleTokens::new_prefix(),
                TokenProvider::Jwt(jwt) if jwt.verify_only() => {
                    return Err(EtcdError::Unknown(crate::auth::jwt::VERIFY_ONLY.into()).into())
                }
                TokenProvider::Jwt(_) => String::new(),
            };
            // As etcd: the caller's own token matters only now, when the
            // request is proposed (a stale one fails here, not earlier).
            let who = self.core.who(meta.as_ref(), &ext).await?;
            let internal = InternalAuthenticateRequest {
                name: req.name.clone(),
                password: String::new(),
                simple_token,
            };
            let (reply, header) = self
                .propose(&who, AuthRequest::Authenticate(internal))
                .await?;
            // The password may have changed while this was in flight:
            // check again against the new state.
            if self.core.auth.view.get().revision() != state.revision {
                continue;
            }
            let token = match &self.core.auth.tokens {
                TokenProvider::Jwt(jwt) => jwt
                    .sign(&reply.token, reply.auth_revision)
                    .map_err(EtcdError::Unknown)?,
                _ => reply.token,
            };
            return Ok(Response::new(AuthenticateResponse { header, token }));
        }
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let who = self.who(&r).await?;
        self.admin_before_hashing(&who)?;
        let mut req = r.into_inner();
        if !req.options.is_some_and(|o| o.no_password) {
            let pw = std::mem::take(&mut req.password);
            req.hashed_password = self.core.auth.hasher.hash_for_proposal(pw).await?;
        }
        req.password.clear();
        let (_, header) = self.propose(&who, AuthRequest::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let who = self.who(&r).await?;
        let (reply, header) = self
            .propose(&who, AuthRequest::UserGet(r.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header,
            roles: reply.roles,
        }))
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let who = self.who(&r).await?;
        let (reply, header) = self.propose(&who, AuthRequest::UserList).await?;
        Ok(Response::new(AuthUserListResponse {
            header,
            users: reply.users,
        }))
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::UserDelete(r.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let who = self.who(&r).await?;
        self.admin_before_hashing(&who)?;
        let mut req = r.into_inner();
        let pw = std::mem::take(&mut req.password);
        req.hashed_password = self.core.auth.hasher.hash_for_proposal(pw).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::UserChangePassword(req))
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::UserGrantRole(r.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::UserRevokeRole(r.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::RoleAdd(r.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let who = self.who(&r).await?;
        let (reply, header) = self
            .propose(&who, AuthRequest::RoleGet(r.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header,
            perm: reply.perms,
        }))
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let who = self.who(&r).await?;
        let (reply, header) = self.propose(&who, AuthRequest::RoleList).await?;
        Ok(Response::new(AuthRoleListResponse {
            header,
            roles: reply.roles,
        }))
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::RoleDelete(r.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let who = self.who(&r).await?;
        let req = r.into_inner();
        if req.perm.is_none() {
            // etcd 3.4 would crash every member at apply (3.6's error).
            return Err(EtcdError::PermissionNotGiven.into());
        }
        let (_, header) = self
            .propose(&who, AuthRequest::RoleGrantPermission(req))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let who = self.who(&r).await?;
        let (_, header) = self
            .propose(&who, AuthRequest::RoleRevokePermission(r.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
