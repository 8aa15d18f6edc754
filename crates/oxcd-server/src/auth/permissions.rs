//! The immutable view every permission check reads, and the key-range rule
//! (etcd's `auth/range_perm_cache.go`, `isOpPermitted`, `IsAdminPermitted`;
//! `docs/design/auth.md` §4.1, §4.2).
//!
//! [`AuthView::build`] runs once per auth change. Per user it keeps the
//! READ and the WRITE union of its roles' permissions as sorted, disjoint
//! and non-touching intervals: because touching intervals are already
//! joined, a covered range lies inside a single interval, so every check is
//! one binary search.

use std::collections::HashMap;

use oxcd_api::authpb::{permission, Permission};
use oxcd_api::EtcdError;

use super::{AuthState, Identity, ROOT};

/// The permission a request needs on a key or a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Range, watch, compares, `prev_kv`.
    Read,
    /// Put, delete, lease attach and revoke.
    Write,
}

/// Where an interval stops: before a key, or after every key.
///
/// The derived order puts `Open` after every `Key`, which is exactly what
/// the merge and the coverage test need.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// Exclusive end key.
    Key(Vec<u8>),
    /// Every key from the start on (a `range_end` of `"\0"`).
    Open,
}

/// A union of key intervals `[start, end)`, sorted by start, pairwise
/// disjoint and not touching (`[b,c)` and `[c,d)` are stored as `[b,d)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Intervals {
    spans: Vec<(Vec<u8>, End)>,
}

impl Intervals {
    /// Merges possibly overlapping, unsorted, non-empty intervals.
    fn merge(mut spans: Vec<(Vec<u8>, End)>) -> Intervals {
        spans.sort();
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(spans.len());
        for (start, end) in spans {
            match merged.last_mut() {
                // `start <= last_end`: overlapping or touching.
                Some((_, last_end)) if reaches(last_end, &start) => {
                    if end > *last_end {
                        *last_end = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        Intervals { spans: merged }
    }

    /// The only interval that can contain `key`: the last one starting at
    /// or before it.
    fn around(&self, key: &[u8]) -> Option<&End> {
        let idx = self
            .spans
            .partition_point(|(start, _)| start.as_slice() <= key);
        let (_, end) = self.spans.get(idx.checked_sub(1)?)?;
        before(key, end).then_some(end)
    }

    /// Whether `key` lies in the union.
    fn contains(&self, key: &[u8]) -> bool {
        self.around(key).is_some()
    }

    /// Whether `[key, end)` (`None` = open-ended) lies in the union, for a
    /// non-empty range (`end > key`).
    fn covers(&self, key: &[u8], end: Option<&[u8]>) -> bool {
        match (self.around(key), end) {
            (None, _) => false,
            (Some(End::Open), _) => true,
            (Some(End::Key(_)), None) => false,
            (Some(End::Key(have)), Some(want)) => have.as_slice() >= want,
        }
    }
}

/// `key < end`.
fn before(key: &[u8], end: &End) -> bool {
    match end {
        End::Open => true,
        End::Key(e) => key < e.as_slice(),
    }
}

/// `end >= key`: an interval ending at `end` reaches one starting at `key`.
fn reaches(end: &End, key: &[u8]) -> bool {
    match end {
        End::Open => true,
        End::Key(e) => e.as_slice() >= key,
    }
}

/// The interval a permission grants, or `None` if it grants nothing.
fn span_of(perm: &Permission) -> Option<(Vec<u8>, End)> {
    let key = perm.key.as_ref();
    // etcd compares an empty begin as greater than every key, so such a
    // permission never covers anything (etcdctl sends "\0" for "").
    if key.is_empty() {
        return None;
    }
    let end = match perm.range_end.as_ref() {
        // A single key k is the interval [k, k"\0"): nothing lies between.
        [] => {
            let mut next = Vec::with_capacity(key.len() + 1);
            next.extend_from_slice(key);
            next.push(0);
            End::Key(next)
        }
        [0] => End::Open,
        end if end > key => End::Key(end.to_vec()),
        // Empty or inverted: etcd's interval tree never finds it useful.
        _ => return None,
    };
    Some((key.to_vec(), end))
}

/// One user as the checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserView {
    /// The role names of the user record (RoleGet's rule reads them).
    roles: Vec<String>,
    /// Has role `root`: every key check passes.
    root: bool,
    read: Intervals,
    write: Intervals,
}

impl UserView {
    fn build(roles: &[String], state: &AuthState) -> UserView {
        let root = roles.iter().any(|r| r == ROOT);
        let mut read = Vec::new();
        let mut write = Vec::new();
        if !root {
            // A role the user names but that does not exist grants nothing.
            let perms = roles
                .iter()
                .filter_map(|r| state.roles.get(r))
                .flat_map(|role| role.key_permission.iter());
            for perm in perms {
                let (r, w) = match permission::Type::try_from(perm.perm_type) {
                    Ok(permission::Type::Read) => (true, false),
                    Ok(permission::Type::Write) => (false, true),
                    Ok(permission::Type::Readwrite) => (true, true),
                    // etcd's getMergedPerms ignores unknown types.
                    Err(_) => continue,
                };
                let Some(span) = span_of(perm) else { continue };
                if r && w {
                    read.push(span.clone());
                    write.push(span);
                } else if r {
                    read.push(span);
                } else {
                    write.push(span);
                }
            }
        }
        UserView {
            roles: roles.to_vec(),
            root,
            read: Intervals::merge(read),
            write: Intervals::merge(write),
        }
    }
}

/// Everything a permission check reads: immutable, built once per auth
/// change and shared as `Arc`, so checks never lock and never see a
/// half-applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthView {
    enabled: bool,
    revision: u64,
    users: HashMap<String, UserView>,
}

impl Default for AuthView {
    /// The view of a fresh store: disabled, revision 1, nobody.
    fn default() -> Self {
        AuthView::build(&AuthState::default())
    }
}

impl AuthView {
    /// Builds the view of `state`; O(total permissions · log).
    pub fn build(state: &AuthState) -> AuthView {
        let users = state
            .users
            .iter()
            .map(|(name, user)| (name.clone(), UserView::build(&user.roles, state)))
            .collect();
        AuthView {
            enabled: state.enabled,
            revision: state.revision,
            users,
        }
    }

    /// Whether auth is enabled (`authEnabled`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision the view was built at.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether user `name` exists.
    pub fn has_user(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Whether user `name` has role `role` in its record (RoleGet's rule:
    /// the role need not exist as a role object).
    pub fn user_has_role(&self, name: &str, role: &str) -> bool {
        self.users
            .get(name)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Whether `who` passes every key check: auth off, or a current
    /// identity of a user with role `root`. Lets callers skip gathering
    /// keys (a lease's attachments) that could not change the answer.
    pub(super) fn unrestricted(&self, who: &Identity) -> bool {
        !self.enabled
            || (who.revision != 0
                && who.revision >= self.revision
                && self.users.get(&who.username).is_some_and(|u| u.root))
    }

    /// etcd's `isOpPermitted` (§4.1): may `who` access `[key, range_end)`?
    ///
    /// Auth off → Ok; no identity → UserEmpty; identity older than the
    /// view → AuthOldRevision; unknown user → PermissionDenied; role
    /// `root` → Ok; else the range rule of §4.2 → PermissionDenied.
    /// `range_end` empty = the single `key`; `"\0"` = every key from `key`
    /// on; `range_end <= key` = the single `key` (etcd's tree finds only
    /// the intervals holding `key` for such a request).
    pub fn check_key(
        &self,
        who: &Identity,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if who.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&who.username) else {
            return Err(EtcdError::PermissionDenied);
        };
        if user.root {
            return Ok(());
        }
        let spans = match access {
            Access::Read => &user.read,
            Access::Write => &user.write,
        };
        let allowed = match range_end {
            [] => spans.contains(key),
            [0] => spans.covers(key, None),
            end if end > key => spans.covers(key, Some(end)),
            _ => spans.contains(key),
        };
        if allowed {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `IsAdminPermitted`: auth off → Ok; empty user name →
    /// UserEmpty (also for a certificate without CN); unknown user →
    /// UserNotFound; no role `root` → PermissionDenied. Like etcd, it does
    /// not compare revisions.
    pub fn check_admin(&self, who: &Identity) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        match self.users.get(&who.username) {
            None => Err(EtcdError::UserNotFound),
            Some(u) if u.root => Ok(()),
            Some(_) => Err(EtcdError::PermissionDenied),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use oxcd_api::authpb::{permission::Type, Role, User};

    use super::*;

    /// A permission `(type, key, range_end)` with a raw type number.
    pub(crate) fn perm(t: i32, key: &[u8], end: &[u8]) -> Permission {
        Permission {
            perm_type: t,
            key: key.to_vec().into(),
            range_end: end.to_vec().into(),
        }
    }

    pub(crate) const R: i32 = Type::Read as i32;
    pub(crate) const W: i32 = Type::Write as i32;
    pub(crate) const RW: i32 = Type::Readwrite as i32;

    /// An enabled state at revision 5 with the given users and roles.
    pub(crate) fn state(users: &[(&str, &[&str])], roles: &[(&str, Vec<Permission>)]) -> AuthState {
        AuthState {
            enabled: true,
            revision: 5,
            users: users
                .iter()
                .map(|(name, roles)| {
                    let user = User {
                        name: name.as_bytes().to_vec().into(),
                        roles: roles.iter().map(|r| r.to_string()).collect(),
                        ..User::default()
                    };
                    (name.to_string(), user)
                })
                .collect(),
            roles: roles
                .iter()
                .map(|(name, perms)| {
                    let role = Role {
                        name: name.as_bytes().to_vec().into(),
                        key_permission: perms.clone(),
                    };
                    (name.to_string(), role)
                })
                .collect(),
        }
    }

    pub(crate) fn id(name: &str) -> Identity {
        Identity {
            username: name.to_string(),
            revision: 5,
        }
    }

    /// A view where `u` has role `r` with `perms`.
    fn one(perms: Vec<Permission>) -> AuthView {
        AuthView::build(&state(&[("u", &["r"])], &[("r", perms)]))
    }

    fn read(v: &AuthView, key: &[u8], end: &[u8]) -> bool {
        v.check_key(&id("u"), Access::Read, key, end).is_ok()
    }

    fn write(v: &AuthView, key: &[u8], end: &[u8]) -> bool {
        v.check_key(&id("u"), Access::Write, key, end).is_ok()
    }

    #[test]
    fn disabled_allows_everything_even_without_identity() {
        let mut s = state(&[], &[]);
        s.enabled = false;
        let v = AuthView::build(&s);
        assert!(!v.enabled());
        assert_eq!(
            v.check_key(&Identity::none(), Access::Write, b"k", b""),
            Ok(())
        );
        assert_eq!(v.check_admin(&Identity::none()), Ok(()));
    }

    #[test]
    fn default_view_is_fresh_store() {
        let v = AuthView::default();
        assert!(!v.enabled());
        assert_eq!(v.revision(), 1);
    }

    #[test]
    fn identity_errors_come_first() {
        let v = AuthView::build(&state(&[("root", &["root"])], &[]));
        assert_eq!(v.revision(), 5);
        let none = Identity::none();
        assert_eq!(
            v.check_key(&none, Access::Read, b"k", b""),
            Err(EtcdError::UserEmpty)
        );
        // revision 0 wins even with a name.
        let named = Identity {
            username: "root".into(),
            revision: 0,
        };
        assert_eq!(
            v.check_key(&named, Access::Read, b"k", b""),
            Err(EtcdError::UserEmpty)
        );
        let old = Identity {
            username: "root".into(),
            revision: 4,
        };
        assert_eq!(
            v.check_key(&old, Access::Read, b"k", b""),
            Err(EtcdError::AuthOldRevision)
        );
        // A newer identity is not "old".
        let newer = Identity {
            username: "root".into(),
            revision: 6,
        };
        assert_eq!(v.check_key(&newer, Access::Read, b"k", b""), Ok(()));
        assert_eq!(
            v.check_key(&id("nobody"), Access::Read, b"k", b""),
            Err(EtcdError::PermissionDenied)
        );
        // An empty CN is just an unknown user here.
        assert_eq!(
            v.check_key(&id(""), Access::Read, b"k", b""),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn root_role_allows_everything_without_role_object() {
        let v = AuthView::build(&state(&[("alice", &["r1", "root"])], &[]));
        assert_eq!(v.check_key(&id("alice"), Access::Write, b"", b"\0"), Ok(()));
        assert_eq!(v.check_key(&id("alice"), Access::Read, b"x", b"a"), Ok(()));
        // The user named root without the role has nothing.
        let v = AuthView::build(&state(&[("root", &[])], &[("root", vec![])]));
        assert_eq!(
            v.check_key(&id("root"), Access::Read, b"k", b""),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn single_key_permission() {
        let v = one(vec![perm(R, b"b", b"")]);
        assert!(read(&v, b"b", b""));
        assert!(!read(&v, b"a", b""));
        assert!(!read(&v, b"b\0", b""));
        assert!(!read(&v, b"ba", b""));
        // [b, b\0) is exactly the key.
        assert!(read(&v, b"b", b"b\0"));
        assert!(!read(&v, b"b", b"b\0\0"));
        assert!(!read(&v, b"b", b"\0"));
    }

    #[test]
    fn touching_permissions_join() {
        let v = one(vec![perm(R, b"c", b"d"), perm(R, b"b", b"c")]);
        assert!(read(&v, b"b", b"d"));
        assert!(read(&v, b"bz", b"cz"));
        assert!(!read(&v, b"b", b"d\0"));
        assert!(!read(&v, b"a", b"c"));
        // A single key touches the range after it: [b, b\0) + [b\0, c).
        let v = one(vec![perm(R, b"b", b""), perm(R, b"b\0", b"c")]);
        assert!(read(&v, b"b", b"c"));
        // A real gap is not joined.
        let v = one(vec![perm(R, b"b", b"c"), perm(R, b"c\0", b"d")]);
        assert!(!read(&v, b"b", b"d"));
        assert!(read(&v, b"c\0", b"d"));
        assert!(!read(&v, b"c", b""));
    }

    #[test]
    fn overlapping_and_contained_permissions_merge() {
        let v = one(vec![
            perm(R, b"a", b"c"),
            perm(R, b"b", b"bb"),
            perm(R, b"b", b"e"),
            perm(R, b"x", b""),
        ]);
        assert!(read(&v, b"a", b"e"));
        assert!(!read(&v, b"a", b"x"));
        assert!(read(&v, b"x", b""));
    }

    #[test]
    fn open_ended_permission_and_request() {
        let v = one(vec![perm(R, b"z", b"\0")]);
        assert!(read(&v, b"z", b""));
        assert!(read(&v, b"z0", b""));
        assert!(read(&v, b"\xff\xff", b""));
        assert!(read(&v, b"z", b"\0"));
        assert!(read(&v, b"zz", b"\0"));
        assert!(!read(&v, b"y", b"\0"));
        assert!(!read(&v, b"y", b""));
        // An open request needs an open permission.
        let v = one(vec![perm(R, b"a", b"\xff\xff\xff")]);
        assert!(!read(&v, b"a", b"\0"));
        assert!(read(&v, b"a", b"\xff\xff"));
        // Open joined to a bounded one before it.
        let v = one(vec![perm(R, b"c", b"\0"), perm(R, b"a", b"c")]);
        assert!(read(&v, b"a", b"\0"));
        // "\0" with "\0" is everything but the empty key.
        let v = one(vec![perm(R, b"\0", b"\0")]);
        assert!(read(&v, b"\0", b"\0"));
        assert!(read(&v, b"\xff", b""));
        assert!(!read(&v, b"", b""));
        assert!(!read(&v, b"", b"\0"));
    }

    #[test]
    fn empty_key_permission_covers_nothing() {
        let v = one(vec![
            perm(RW, b"", b"\0"),
            perm(RW, b"", b""),
            perm(RW, b"", b"z"),
        ]);
        for key in [&b""[..], b"\0", b"a", b"\xff"] {
            assert!(!read(&v, key, b""), "{key:?}");
            assert!(!write(&v, key, b"\0"), "{key:?}");
        }
    }

    #[test]
    fn inverted_or_empty_permission_covers_nothing() {
        let v = one(vec![perm(R, b"c", b"b"), perm(R, b"d", b"d")]);
        for key in [&b"b"[..], b"c", b"bb", b"d"] {
            assert!(!read(&v, key, b""), "{key:?}");
        }
    }

    #[test]
    fn inverted_request_range_checks_the_start_key() {
        let v = one(vec![perm(R, b"c", b"d")]);
        // etcdctl get cc bb passes, get d b fails [run].
        assert!(read(&v, b"cc", b"bb"));
        assert!(!read(&v, b"d", b"b"));
        // e == k is empty: still the start key.
        assert!(read(&v, b"c", b"c"));
        assert!(!read(&v, b"e", b"e"));
    }

    #[test]
    fn permission_types() {
        let v = one(vec![
            perm(R, b"r", b""),
            perm(W, b"w", b""),
            perm(RW, b"rw", b""),
            perm(3, b"x", b""),
            perm(-1, b"y", b""),
        ]);
        assert!(read(&v, b"r", b"") && !write(&v, b"r", b""));
        assert!(!read(&v, b"w", b"") && write(&v, b"w", b""));
        assert!(read(&v, b"rw", b"") && write(&v, b"rw", b""));
        assert!(!read(&v, b"x", b"") && !write(&v, b"x", b""));
        assert!(!read(&v, b"y", b"") && !write(&v, b"y", b""));
        // READ on one half and WRITE on the other do not make a READ range.
        let v = one(vec![perm(R, b"a", b"b"), perm(W, b"b", b"c")]);
        assert!(!read(&v, b"a", b"c"));
        assert!(!write(&v, b"a", b"c"));
    }

    #[test]
    fn union_over_roles_and_missing_roles() {
        let s = state(
            &[("u", &["ghost", "r1", "r2"])],
            &[
                ("r1", vec![perm(R, b"a", b"b")]),
                ("r2", vec![perm(RW, b"b", b"c")]),
                // Not granted to u.
                ("r3", vec![perm(RW, b"c", b"\0")]),
            ],
        );
        let v = AuthView::build(&s);
        assert!(read(&v, b"a", b"c"));
        assert!(!read(&v, b"a", b"c\0"));
        assert!(write(&v, b"b", b""));
        assert!(!write(&v, b"a", b""));
    }

    #[test]
    fn admin_rule() {
        let s = state(
            &[("root", &["root"]), ("alice", &["r1"]), ("", &["root"])],
            &[],
        );
        let v = AuthView::build(&s);
        assert_eq!(v.check_admin(&id("root")), Ok(()));
        // No revision comparison, unlike the key check.
        let stale = Identity {
            username: "root".into(),
            revision: 1,
        };
        assert_eq!(v.check_admin(&stale), Ok(()));
        // Empty name is UserEmpty even as a current identity (CN-less cert)
        // and even if a user "" existed.
        assert_eq!(v.check_admin(&id("")), Err(EtcdError::UserEmpty));
        assert_eq!(v.check_admin(&Identity::none()), Err(EtcdError::UserEmpty));
        assert_eq!(v.check_admin(&id("bob")), Err(EtcdError::UserNotFound));
        assert_eq!(
            v.check_admin(&id("alice")),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn users_and_their_roles() {
        let v = AuthView::build(&state(&[("alice", &["r1", "root"])], &[]));
        assert!(v.has_user("alice"));
        assert!(!v.has_user("bob"));
        assert!(v.user_has_role("alice", "r1"));
        assert!(v.user_has_role("alice", "root"));
        assert!(!v.user_has_role("alice", "r2"));
        assert!(!v.user_has_role("bob", "r1"));
    }

    #[test]
    fn unrestricted_matches_check_key() {
        let v = AuthView::build(&state(&[("root", &["root"]), ("u", &[])], &[]));
        assert!(v.unrestricted(&id("root")));
        assert!(!v.unrestricted(&id("u")));
        assert!(!v.unrestricted(&Identity {
            username: "root".into(),
            revision: 4
        }));
        assert!(!v.unrestricted(&Identity::none()));
        let mut s = state(&[], &[]);
        s.enabled = false;
        assert!(AuthView::build(&s).unrestricted(&Identity::none()));
    }
}
