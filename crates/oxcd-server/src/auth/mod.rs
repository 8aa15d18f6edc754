//! Authentication and authorization (etcd's `auth/` package): users,
//! roles, key-range permissions and who is calling.
//!
//! - [`store`]: the replicated auth state and what each Auth request does
//!   to it at apply (owned by the applier);
//! - [`permissions`]: the immutable view every check reads, rebuilt on
//!   each auth change, and the key-range rule;
//! - [`checks`]: which permission each request needs;
//! - [`password`]: bcrypt, off the async and apply threads.
//!
//! The plan, with etcd's rules and where oxcd deliberately differs, is
//! `docs/design/auth.md`.

pub mod checks;
pub mod password;
pub mod permissions;
pub mod store;

use std::collections::BTreeMap;

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

/// What the services hold of auth: the current view, the bcrypt pool.
#[derive(Clone)]
pub struct AuthHandle {
    /// The view the applier publishes after every auth change.
    pub view: store::SharedView,
    /// bcrypt off the async threads.
    pub hasher: password::Hasher,
}
