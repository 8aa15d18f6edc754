//! The auth store at apply (etcd's `auth/store.go`): what every Auth
//! request does to the replicated users, roles, flag and revision, decided
//! in log order on the state of that moment, identically on every member.
//!
//! Owned by the applier. Each request is checked completely before it
//! changes anything; its table writes go into the entry's write
//! transaction (with the consistent index), and the in-memory state and
//! the published [`AuthView`] change with it. The revision rules (which
//! requests bump `authRevision`) are in `docs/design/auth.md` §1.

use std::sync::{Arc, PoisonError, RwLock};

use oxcd_api::authpb::{Permission, Role, User};
use oxcd_api::etcdserverpb as pb;
use oxcd_api::EtcdError;
use oxcd_mvcc::{AuthRecords, AuthTable, KvStore, MvccError, WriteTxn};
use prost::Message;

use super::password;
use super::permissions::AuthView;
use super::{AuthState, Identity, ROOT};

const ENABLED_KEY: &[u8] = b"authEnabled";
const REVISION_KEY: &[u8] = b"authRevision";

/// An Auth request as replicated (one variant per `InternalRaftRequest`
/// auth field).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthRequest {
    /// AuthEnable.
    Enable,
    /// AuthDisable.
    Disable,
    /// AuthStatus (3.5).
    Status,
    /// Authenticate: the password was checked by the proposer.
    Authenticate(pb::InternalAuthenticateRequest),
    /// UserAdd, with `hashedPassword` filled by the proposer.
    UserAdd(pb::AuthUserAddRequest),
    /// UserDelete.
    UserDelete(pb::AuthUserDeleteRequest),
    /// UserGet.
    UserGet(pb::AuthUserGetRequest),
    /// UserChangePassword, with `hashedPassword` filled by the proposer.
    UserChangePassword(pb::AuthUserChangePasswordRequest),
    /// UserGrantRole.
    UserGrantRole(pb::AuthUserGrantRoleRequest),
    /// UserRevokeRole.
    UserRevokeRole(pb::AuthUserRevokeRoleRequest),
    /// UserList.
    UserList,
    /// RoleList.
    RoleList,
    /// RoleAdd.
    RoleAdd(pb::AuthRoleAddRequest),
    /// RoleDelete.
    RoleDelete(pb::AuthRoleDeleteRequest),
    /// RoleGet.
    RoleGet(pb::AuthRoleGetRequest),
    /// RoleGrantPermission.
    RoleGrantPermission(pb::AuthRoleGrantPermissionRequest),
    /// RoleRevokePermission.
    RoleRevokePermission(pb::AuthRoleRevokePermissionRequest),
}

impl AuthRequest {
    /// Puts the request in its `InternalRaftRequest` field.
    pub fn fill(&self, r: &mut pb::InternalRaftRequest) {
        match self {
            AuthRequest::Enable => r.auth_enable = Some(pb::AuthEnableRequest {}),
            AuthRequest::Disable => r.auth_disable = Some(pb::AuthDisableRequest {}),
            AuthRequest::Status => r.auth_status = Some(pb::AuthStatusRequest {}),
            AuthRequest::Authenticate(a) => r.authenticate = Some(a.clone()),
            AuthRequest::UserAdd(a) => r.auth_user_add = Some(a.clone()),
            AuthRequest::UserDelete(a) => r.auth_user_delete = Some(a.clone()),
            AuthRequest::UserGet(a) => r.auth_user_get = Some(a.clone()),
            AuthRequest::UserChangePassword(a) => r.auth_user_change_password = Some(a.clone()),
            AuthRequest::UserGrantRole(a) => r.auth_user_grant_role = Some(a.clone()),
            AuthRequest::UserRevokeRole(a) => r.auth_user_revoke_role = Some(a.clone()),
            AuthRequest::UserList => r.auth_user_list = Some(pb::AuthUserListRequest {}),
            AuthRequest::RoleList => r.auth_role_list = Some(pb::AuthRoleListRequest {}),
            AuthRequest::RoleAdd(a) => r.auth_role_add = Some(a.clone()),
            AuthRequest::RoleDelete(a) => r.auth_role_delete = Some(a.clone()),
            AuthRequest::RoleGet(a) => r.auth_role_get = Some(a.clone()),
            AuthRequest::RoleGrantPermission(a) => r.auth_role_grant_permission = Some(a.clone()),
            AuthRequest::RoleRevokePermission(a) => r.auth_role_revoke_permission = Some(a.clone()),
        }
    }

    /// Takes the auth request out of `r`, if it holds one.
    pub fn take(r: &mut pb::InternalRaftRequest) -> Option<AuthRequest> {
        use AuthRequest as A;
        if r.auth_enable.take().is_some() {
            return Some(A::Enable);
        }
        if r.auth_disable.take().is_some() {
            return Some(A::Disable);
        }
        if r.auth_status.take().is_some() {
            return Some(A::Status);
        }
        if r.auth_user_list.take().is_some() {
            return Some(A::UserList);
        }
        if r.auth_role_list.take().is_some() {
            return Some(A::RoleList);
        }
        r.authenticate
            .take()
            .map(A::Authenticate)
            .or_else(|| r.auth_user_add.take().map(A::UserAdd))
            .or_else(|| r.auth_user_delete.take().map(A::UserDelete))
            .or_else(|| r.auth_user_get.take().map(A::UserGet))
            .or_else(|| {
                r.auth_user_change_password
                    .take()
                    .map(A::UserChangePassword)
            })
            .or_else(|| r.auth_user_grant_role.take().map(A::UserGrantRole))
            .or_else(|| r.auth_user_revoke_role.take().map(A::UserRevokeRole))
            .or_else(|| r.auth_role_add.take().map(A::RoleAdd))
            .or_else(|| r.auth_role_delete.take().map(A::RoleDelete))
            .or_else(|| r.auth_role_get.take().map(A::RoleGet))
            .or_else(|| {
                r.auth_role_grant_permission
                    .take()
                    .map(A::RoleGrantPermission)
            })
            .or_else(|| {
                r.auth_role_revoke_permission
                    .take()
                    .map(A::RoleRevokePermission)
            })
    }

    /// Whether the request needs root (etcd's `needAdminPermission`).
    fn needs_admin(&self) -> bool {
        use AuthRequest as A;
        matches!(
            self,
            A::Enable
                | A::Disable
                | A::UserAdd(_)
                | A::UserDelete(_)
                | A::UserChangePassword(_)
                | A::UserGrantRole(_)
                | A::UserRevokeRole(_)
                | A::UserList
                | A::RoleAdd(_)
                | A::RoleDelete(_)
                | A::RoleGrantPermission(_)
                | A::RoleRevokePermission(_)
                | A::RoleList
        )
    }
}

/// What an applied Auth request answers; the service picks the fields its
/// RPC's response has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthReply {
    /// UserGet: the user's roles; RoleList: role names.
    pub roles: Vec<String>,
    /// UserList: user names.
    pub users: Vec<String>,
    /// RoleGet: the role's permissions, in stored order.
    pub perms: Vec<Permission>,
    /// Authenticate: the token (simple) or the user to sign one for (JWT).
    pub token: String,
    /// AuthStatus.
    pub enabled: bool,
    /// AuthStatus: the auth revision.
    pub auth_revision: u64,
    /// What the applier must do to the simple tokens.
    pub tokens: TokenEffect,
}

/// A change the request makes to the (unreplicated) simple tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TokenEffect {
    /// None.
    #[default]
    None,
    /// Auth was disabled: every token goes.
    DropAll,
    /// The user was deleted or changed password: its tokens go.
    DropUser(String),
    /// Authenticate applied: `token` now names `user`.
    Register {
        /// The whole token, `<prefix>.<index>`.
        token: String,
        /// Its user.
        user: String,
    },
}

/// The current [`AuthView`], shared between the applier (which replaces
/// it after every auth change) and the services (which read it per
/// request).
#[derive(Clone)]
pub struct SharedView(Arc<RwLock<Published>>);

/// One published auth state: the checks' view and the records it was
/// built from (Authenticate reads password hashes from them).
#[derive(Clone)]
struct Published {
    view: Arc<AuthView>,
    state: Arc<AuthState>,
}

impl Published {
    fn of(state: &AuthState) -> Published {
        Published {
            view: Arc::new(AuthView::build(state)),
            state: Arc::new(state.clone()),
        }
    }
}

impl SharedView {
    fn new(state: &AuthState) -> SharedView {
        SharedView(Arc::new(RwLock::new(Published::of(state))))
    }

    /// The view as of now.
    pub fn get(&self) -> Arc<AuthView> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .view
            .clone()
    }

    /// The applied users and roles as of now.
    pub fn state(&self) -> Arc<AuthState> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
    }

    fn set(&self, state: &AuthState) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Published::of(state);
    }
}

/// The replicated auth state and the view published from it.
pub struct AuthStore {
    state: AuthState,
    view: SharedView,
}

impl AuthStore {
    /// Loads the auth tables of `store`.
    ///
    /// # Errors
    /// Backend errors, or a record that does not decode.
    pub fn load(store: &KvStore) -> Result<AuthStore, MvccError> {
        let state = decode(store.auth_records()?)?;
        let view = SharedView::new(&state);
        Ok(AuthStore { state, view })
    }

    /// A store with no users, roles or tables (tests, and appliers built
    /// before the backend is read).
    pub fn fresh() -> AuthStore {
        let state = AuthState::default();
        let view = SharedView::new(&state);
        AuthStore { state, view }
    }

    /// Replaces the state with what `store` now holds (after a raft
    /// snapshot replaced the backend).
    ///
    /// # Errors
    /// As [`AuthStore::load`].
    pub fn reload(&mut self, store: &KvStore) -> Result<(), MvccError> {
        self.state = decode(store.auth_records()?)?;
        self.view.set(&self.state);
        Ok(())
    }

    /// The view handle the services read.
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// The state as applied so far.
    pub fn state(&self) -> &AuthState {
        &self.state
    }

    /// Applies `req` from `who` at log index `index`: checks it against
    /// the current state, and on success stages its table writes in `t`
    /// and moves the state and view on. A refused request changes nothing.
    ///
    /// # Errors
    /// etcd's error for the first failed precondition.
    pub fn apply(
        &mut self,
        t: &mut WriteTxn,
        who: &Identity,
        req: &AuthRequest,
        index: u64,
    ) -> Result<AuthReply, EtcdError> {
        let view = self.view.get();
        if req.needs_admin() {
            view.check_admin(who)?;
        }
        let mut next = self.state.clone();
        let mut reply = AuthReply::default();
        let mut bump = true;
        let s = &mut next;
        use AuthRequest as A;
        match req {
            A::Enable => {
                bump = false;
                if s.enabled {
                    return Ok(reply);
                }
                let root = s.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                s.enabled = true;
                t.put_auth(AuthTable::Auth, ENABLED_KEY, &[1]);
            }
            A::Disable => {
                if !s.enabled {
                    return Ok(reply);
                }
                s.enabled = false;
                t.put_auth(AuthTable::Auth, ENABLED_KEY, &[0]);
                reply.tokens = TokenEffect::DropAll;
            }
            A::Status => {
                return Ok(AuthReply {
                    enabled: s.enabled,
                    auth_revision: s.revision,
                    ..reply
                })
            }
            A::Authenticate(a) => {
                if !s.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let user = s.users.get(&a.name).ok_or(EtcdError::AuthFailed)?;
                if no_password(user) {
                    return Err(EtcdError::AuthFailed);
                }
                // For a JWT the proposer signs (name, revision) once this
                // answer reaches it.
                reply.auth_revision = s.revision;
                reply.token = if a.simple_token.is_empty() {
                    a.name.clone()
                } else {
                    format!("{}.{index}", a.simple_token)
                };
                if !a.simple_token.is_empty() {
                    reply.tokens = TokenEffect::Register {
                        token: reply.token.clone(),
                        user: a.name.clone(),
                    };
                }
                return Ok(reply);
            }
            A::UserAdd(a) => {
                if a.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if s.users.contains_key(&a.name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let options = a.options.unwrap_or_default();
                let password = if options.no_password {
                    Vec::new()
                } else {
                    stored_password(&a.password, &a.hashed_password)?
                };
                let user = User {
                    name: a.name.clone().into_bytes().into(),
                    password: password.into(),
                    roles: Vec::new(),
                    options: Some(options),
                };
                put_user(t, &user);
                s.users.insert(a.name.clone(), user);
            }
            A::UserDelete(a) => {
                if s.enabled && a.name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if s.users.remove(&a.name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                t.delete_auth(AuthTable::Users, a.name.as_bytes());
                reply.tokens = TokenEffect::DropUser(a.name.clone());
            }
            A::UserChangePassword(a) => {
                let user = s.users.get_mut(&a.name).ok_or(EtcdError::UserNotFound)?;
                user.password = stored_password(&a.password, &a.hashed_password)?.into();
                put_user(t, user);
                reply.tokens = TokenEffect::DropUser(a.name.clone());
            }
            A::UserGrantRole(a) => {
                if !s.users.contains_key(&a.user) {
                    return Err(EtcdError::UserNotFound);
                }
                if a.role != ROOT && !s.roles.contains_key(&a.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let Some(user) = s.users.get_mut(&a.user) else {
                    return Err(EtcdError::UserNotFound);
                };
                match user.roles.binary_search(&a.role) {
                    Ok(_) => return Ok(reply),
                    Err(at) => user.roles.insert(at, a.role.clone()),
                }
                put_user(t, user);
            }
            A::UserRevokeRole(a) => {
                if s.enabled && a.name == ROOT && a.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = s.users.get_mut(&a.name).ok_or(EtcdError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|r| r != &a.role);
                if user.roles.len() == before {
                    return Err(EtcdError::RoleNotGranted);
                }
                put_user(t, user);
            }
            A::UserGet(a) => {
                if let Err(e) = view.check_admin(who) {
                    if who.username != a.name {
                        return Err(e);
                    }
                }
                let user = s.users.get(&a.name).ok_or(EtcdError::UserNotFound)?;
                reply.roles = user.roles.clone();
                return Ok(reply);
            }
            A::UserList => {
                reply.users = s.users.keys().cloned().collect();
                return Ok(reply);
            }
            A::RoleList => {
                reply.roles = s.roles.keys().cloned().collect();
                return Ok(reply);
            }
            A::RoleAdd(a) => {
                if a.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if s.roles.contains_key(&a.name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                let role = Role {
                    name: a.name.clone().into_bytes().into(),
                    key_permission: Vec::new(),
                };
                put_role(t, &role);
                s.roles.insert(a.name.clone(), role);
            }
            A::RoleDelete(a) => {
                if s.enabled && a.role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if s.roles.remove(&a.role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                t.delete_auth(AuthTable::Roles, a.role.as_bytes());
                for user in s.users.values_mut() {
                    let before = user.roles.len();
                    user.roles.retain(|r| r != &a.role);
                    if user.roles.len() != before {
                        put_user(t, user);
                    }
                }
            }
            A::RoleGet(a) => {
                if let Err(e) = view.check_admin(who) {
                    if !view.user_has_role(&who.username, &a.role) {
                        return Err(e);
                    }
                }
                let role = s.roles.get(&a.role).ok_or(EtcdError::RoleNotFound)?;
                reply.perms = role.key_permission.clone();
                return Ok(reply);
            }
            A::RoleGrantPermission(a) => {
                let perm = a.perm.clone().ok_or(EtcdError::PermissionNotGiven)?;
                let role = s.roles.get_mut(&a.name).ok_or(EtcdError::RoleNotFound)?;
                grant(role, perm);
                put_role(t, role);
            }
            A::RoleRevokePermission(a) => {
                let role = s.roles.get_mut(&a.role).ok_or(EtcdError::RoleNotFound)?;
                let before = role.key_permission.len();
                role.key_permission
                    .retain(|p| !(p.key == a.key && p.range_end == a.range_end));
                if role.key_permission.len() == before {
                    return Err(EtcdError::PermissionNotGranted);
                }
                put_role(t, role);
            }
        }
        if bump {
            s.revision += 1;
        }
        t.put_auth(AuthTable::Auth, REVISION_KEY, &next.revision.to_be_bytes());
        self.state = next;
        self.view.set(&self.state);
        Ok(reply)
    }
}

/// The stored password of a proposal: the proposer's hash, or (an entry
/// from a proposer that sent the password itself) a hash made here.
fn stored_password(password: &str, hashed: &str) -> Result<Vec<u8>, EtcdError> {
    if hashed.is_empty() {
        password::hash(password, password::DEFAULT_COST)
    } else {
        password::decode_proposed(hashed)
    }
}

/// Whether `user` was added with `--no-password`.
pub fn no_password(user: &User) -> bool {
    user.options.is_some_and(|o| o.no_password)
}

/// Merges `perm` into `role` by exact `(key, range_end)`: a match takes
/// the new type; otherwise it is inserted keeping the list sorted by key
/// (stably: after the permissions with the same key).
fn grant(role: &mut Role, perm: Permission) {
    if let Some(p) = role
        .key_permission
        .iter_mut()
        .find(|p| p.key == perm.key && p.range_end == perm.range_end)
    {
        p.perm_type = perm.perm_type;
        return;
    }
    let at = role.key_permission.partition_point(|p| p.key <= perm.key);
    role.key_permission.insert(at, perm);
}

fn put_user(t: &mut WriteTxn, user: &User) {
    t.put_auth(AuthTable::Users, &user.name, &user.encode_to_vec());
}

fn put_role(t: &mut WriteTxn, role: &Role) {
    t.put_auth(AuthTable::Roles, &role.name, &role.encode_to_vec());
}

/// Decodes the committed tables.
fn decode(r: AuthRecords) -> Result<AuthState, MvccError> {
    let mut s = AuthState::default();
    for (k, v) in &r.auth {
        match k.as_slice() {
            ENABLED_KEY => s.enabled = v.first() == Some(&1),
            REVISION_KEY => {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    MvccError::Corrupt(format!("authRevision of {} bytes", v.len()))
                })?;
                s.revision = u64::from_be_bytes(b);
            }
            _ => {}
        }
    }
    for (k, v) in &r.users {
        let u = User::decode(v.as_slice())
            .map_err(|e| MvccError::Corrupt(format!("auth user record: {e}")))?;
        s.users.insert(String::from_utf8_lossy(k).into_owned(), u);
    }
    for (k, v) in &r.roles {
        let role = Role::decode(v.as_slice())
            .map_err(|e| MvccError::Corrupt(format!("auth role record: {e}")))?;
        s.roles
            .insert(String::from_utf8_lossy(k).into_owned(), role);
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
