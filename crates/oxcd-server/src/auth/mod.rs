//! Authentication and authorization (etcd's `auth/` package): users,
//! roles, key-range permissions and who is calling.
//!
//! - [`store`]: the replicated auth state and what each Auth request does
//!   to it at apply (owned by the applier);
//! - [`permissions`]: the immutable view every check reads, rebuilt on
//!   each auth change, and the key-range rule;
//! - [`checks`]: which permission each request needs;
//! - [`password`]: bcrypt, off the async and apply threads;
//! - [`tokens`]: simple tokens; and [`AuthHandle::resolve`]: who a
//!   request comes from (token, else client-certificate CN).
//!
//! The plan, with etcd's rules and where oxcd deliberately differs, is
//! `docs/design/auth.md`.

pub mod checks;
pub mod jwt;
pub mod password;
pub mod permissions;
pub mod store;
pub mod tokens;

use std::collections::BTreeMap;
use std::sync::Arc;

use oxcd_api::authpb::{Role, User};

/// Who sent a request, as the proposer resolved it: the user name and the
/// auth revision the identity was resolved at (0 = no identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user name (may be empty: a client certificate without a CN).
    pub username: String,
    /// The auth store revision when the token or certificate was checked;
    /// 0 when the request carried no identity.
    pub revision: u64,
}

impl Identity {
    /// No identity: a request without token or client certificate.
    pub fn none() -> Identity {
        Identity::default()
    }

    /// Whether the request carried an identity at all.
    pub fn is_some(&self) -> bool {
        self.revision != 0
    }
}

/// The replicated auth state: the `auth`, `authUsers` and `authRoles`
/// tables, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthState {
    /// `authEnabled`.
    pub enabled: bool,
    /// `authRevision`: bumped by every change of users, roles or grants.
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    /// A fresh store: disabled, at revision 1 (etcd writes 1 at creation).
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// The name of the role (and user) with every permission.
pub const ROOT: &str = "root";

/// What the services hold of auth: the current view, the bcrypt pool,
/// the tokens.
#[derive(Clone)]
pub struct AuthHandle {
    /// The view the applier publishes after every auth change.
    pub view: store::SharedView,
    /// bcrypt off the async threads.
    pub hasher: password::Hasher,
    /// What `--auth-token` issues.
    pub tokens: TokenProvider,
}

/// The token kind a member issues and accepts (`--auth-token`).
#[derive(Clone)]
pub enum TokenProvider {
    /// `""`: no tokens; Authenticate fails, only client-certificate
    /// identities work.
    None,
    /// `simple`: random tokens registered as their entry applies.
    Simple(tokens::SimpleTokens),
    /// `jwt,…`: signed tokens.
    Jwt(Arc<jwt::Jwt>),
}

impl TokenProvider {
    /// The simple-token registry the applier keeps, if any.
    pub fn simple(&self) -> Option<tokens::SimpleTokens> {
        match self {
            TokenProvider::Simple(t) => Some(t.clone()),
            _ => None,
        }
    }
}

/// The subject CN of a connection's verified client certificate, put in
/// each request's extensions by the listener (TLS with
/// `--client-cert-auth` only).
#[derive(Debug, Clone)]
pub struct ClientCn(pub Arc<str>);

/// What [`AuthHandle::resolve`] found in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// Neither token nor client certificate.
    None,
    /// A token (gRPC metadata `token`, else `authorization`).
    Token(&'a str),
    /// A token that is not valid text.
    BadToken,
    /// The CN of a verified client certificate.
    Cn(&'a str),
}

impl<'a> Credentials<'a> {
    /// Reads the credentials of a request from its headers and extensions.
    pub fn of(headers: &'a http::HeaderMap, ext: &'a http::Extensions) -> Credentials<'a> {
        if let Some(v) = headers
            .get("token")
            .or_else(|| headers.get("authorization"))
        {
            return match v.to_str() {
                Ok(t) => Credentials::Token(t),
                Err(_) => Credentials::BadToken,
            };
        }
        match ext.get::<ClientCn>() {
            Some(cn) => Credentials::Cn(&cn.0),
            None => Credentials::None,
        }
    }
}

impl AuthHandle {
    /// [`AuthHandle::resolve`] without the wait for the token's entry: for
    /// a stream whose token was resolved (and waited for) when it opened.
    ///
    /// # Errors
    /// `InvalidAuthToken` for a token that is malformed, unknown or
    /// expired.
    pub fn resolve_now(&self, creds: Credentials<'_>) -> Result<Identity, oxcd_api::EtcdError> {
        use oxcd_api::EtcdError;
        let revision = self.view.get().revision();
        match creds {
            Credentials::None => Ok(Identity::none()),
            Credentials::BadToken => Err(EtcdError::InvalidAuthToken),
            Credentials::Cn(cn) => Ok(Identity {
                username: cn.to_string(),
                revision,
            }),
            Credentials::Token(t) => match &self.tokens {
                TokenProvider::Simple(tokens) => {
                    let username = tokens.lookup(t).ok_or(EtcdError::InvalidAuthToken)?;
                    Ok(Identity { username, revision })
                }
                // A JWT carries its own revision, which never slides.
                TokenProvider::Jwt(jwt) => jwt.verify(t).ok_or(EtcdError::InvalidAuthToken),
                TokenProvider::None => Err(EtcdError::InvalidAuthToken),
            },
        }
    }

    /// Who sent a request (docs/design/auth.md §3.1): a token must
    /// resolve, even while auth is off (a token from before AuthDisable
    /// is invalid, as in etcd); without one, the client certificate's CN;
    /// else nobody. `applied` waits until this member has applied a
    /// given index (a simple token names the entry that created it).
    ///
    /// # Errors
    /// `InvalidAuthToken` for a token that is malformed, unknown or
    /// expired; the wait's error if the member falls behind or stops.
    pub async fn resolve<F, Fut>(
        &self,
        creds: Credentials<'_>,
        applied: F,
    ) -> Result<Identity, oxcd_api::EtcdError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<(), oxcd_api::EtcdError>>,
    {
        use oxcd_api::EtcdError;
        match creds {
            Credentials::None => Ok(Identity::none()),
            Credentials::BadToken => Err(EtcdError::InvalidAuthToken),
            Credentials::Token(t) if matches!(self.tokens, TokenProvider::Simple(_)) => {
                let index = tokens::SimpleTokens::index_of(t).ok_or(EtcdError::InvalidAuthToken)?;
                applied(index).await?;
                self.resolve_now(creds)
            }
            other => self.resolve_now(other),
        }
    }
}

/// An error as Go's `status.Error(…).Error()` prints it
/// (`rpc error: code = PermissionDenied desc = etcdserver: permission
/// denied`): how a refused watch create states its reason.
pub fn go_status_text(e: &oxcd_api::EtcdError) -> String {
    use tonic::Code;
    let code = match e.code() {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    };
    format!("rpc error: code = {code} desc = {}", e.message())
}

/// etcd's raw `auth` package errors, as Maintenance and Alarm return
/// them (gRPC code Unknown, message `auth: …`).
pub fn raw_error(e: oxcd_api::EtcdError) -> oxcd_api::EtcdError {
    use oxcd_api::EtcdError;
    let text = match &e {
        EtcdError::PermissionDenied => "auth: permission denied",
        EtcdError::UserEmpty => "auth: user name is empty",
        EtcdError::UserNotFound => "auth: user name not found",
        EtcdError::InvalidAuthToken => "auth: invalid auth token",
        EtcdError::AuthOldRevision => "auth: revision in header is old",
        _ => return e,
    };
    EtcdError::Unknown(text.into())
}
