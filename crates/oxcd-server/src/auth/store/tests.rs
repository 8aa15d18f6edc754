//! The auth store's rules: errors, revision bumps, persistence and the
//! bytes it stores.

use super::*;
use oxcd_api::authpb::{permission::Type, UserAddOptions};
use oxcd_mvcc::BackendConfig;

struct Rig {
    _dir: tempfile::TempDir,
    kv: KvStore,
    auth: AuthStore,
    index: u64,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(&dir.path().join("db"), BackendConfig::default()).unwrap();
        let auth = AuthStore::load(&kv).unwrap();
        Rig {
            _dir: dir,
            kv,
            auth,
            index: 0,
        }
    }

    fn run_as(&mut self, who: &Identity, req: AuthRequest) -> Result<AuthReply, EtcdError> {
        self.index += 1;
        let mut t = self.kv.write();
        let out = self.auth.apply(&mut t, who, &req, self.index);
        t.end(Some(self.index)).unwrap();
        out
    }

    fn run(&mut self, req: AuthRequest) -> Result<AuthReply, EtcdError> {
        self.run_as(&Identity::none(), req)
    }

    fn rev(&self) -> u64 {
        self.auth.state().revision
    }
}

fn user_add(name: &str, pw: &str) -> AuthRequest {
    AuthRequest::UserAdd(pb::AuthUserAddRequest {
        name: name.into(),
        hashed_password: password::hash(pw, 4)
            .map(|h| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h))
            .unwrap(),
        ..Default::default()
    })
}

fn grant_role(user: &str, role: &str) -> AuthRequest {
    AuthRequest::UserGrantRole(pb::AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn role_add(name: &str) -> AuthRequest {
    AuthRequest::RoleAdd(pb::AuthRoleAddRequest { name: name.into() })
}

fn grant_perm(role: &str, t: Type, key: &str, end: &str) -> AuthRequest {
    AuthRequest::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
        }),
    })
}

#[test]
fn revision_rules() {
    let mut r = Rig::new();
    assert_eq!(r.rev(), 1, "a fresh store is at revision 1");
    // (request, expected outcome, bump?)
    let steps: Vec<(AuthRequest, Result<(), EtcdError>, bool)> = vec![
        (AuthRequest::Enable, Err(EtcdError::RootUserNotExist), false),
        (user_add("root", "pw"), Ok(()), true),
        (
            user_add("root", "pw"),
            Err(EtcdError::UserAlreadyExist),
            false,
        ),
        (user_add("", "pw"), Err(EtcdError::UserEmpty), false),
        (AuthRequest::Enable, Err(EtcdError::RootRoleNotExist), false),
        (grant_role("root", "root"), Ok(()), true),
        (grant_role("root", "root"), Ok(()), false),
        (
            grant_role("root", "nope"),
            Err(EtcdError::RoleNotFound),
            false,
        ),
        (
            grant_role("ghost", "root"),
            Err(EtcdError::UserNotFound),
            false,
        ),
        (role_add("r1"), Ok(()), true),
        (role_add("r1"), Err(EtcdError::RoleAlreadyExist), false),
        (role_add(""), Err(EtcdError::RoleEmpty), false),
        (grant_perm("r1", Type::Read, "a", ""), Ok(()), true),
        (grant_perm("r1", Type::Read, "a", ""), Ok(()), true),
        (
            grant_perm("ghost", Type::Read, "a", ""),
            Err(EtcdError::RoleNotFound),
            false,
        ),
        (AuthRequest::Status, Ok(()), false),
        (AuthRequest::UserList, Ok(()), false),
        (AuthRequest::Disable, Ok(()), false),
        (AuthRequest::Enable, Ok(()), false),
        (AuthRequest::Enable, Ok(()), false),
        (AuthRequest::UserList, Err(EtcdError::UserEmpty), false),
        (
            AuthRequest::UserDelete(pb::AuthUserDeleteRequest {
                name: "root".into(),
            }),
            Err(EtcdError::InvalidAuthMgmt),
            false,
        ),
        (
            AuthRequest::RoleDelete(pb::AuthRoleDeleteRequest {
                role: "root".into(),
            }),
            Err(EtcdError::InvalidAuthMgmt),
            false,
        ),
        (
            AuthRequest::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            }),
            Err(EtcdError::InvalidAuthMgmt),
            false,
        ),
        (AuthRequest::Disable, Ok(()), true),
        (AuthRequest::Disable, Ok(()), false),
        (
            AuthRequest::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                role: "r1".into(),
                key: b"b".to_vec().into(),
                range_end: Default::default(),
            }),
            Err(EtcdError::PermissionNotGranted),
            false,
        ),
        (
            AuthRequest::RoleRevokePermission(pb::AuthRoleRevokePermissionRequest {
                role: "r1".into(),
                key: b"a".to_vec().into(),
                range_end: Default::default(),
            }),
            Ok(()),
            true,
        ),
        (
            AuthRequest::UserRevokeRole(pb::AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "r1".into(),
            }),
            Err(EtcdError::RoleNotGranted),
            false,
        ),
        (
            AuthRequest::UserDelete(pb::AuthUserDeleteRequest {
                name: "root".into(),
            }),
            Ok(()),
            true,
        ),
        (
            AuthRequest::UserDelete(pb::AuthUserDeleteRequest {
                name: "root".into(),
            }),
            Err(EtcdError::UserNotFound),
            false,
        ),
    ];
    let root = Identity {
        username: "root".into(),
        revision: 1,
    };
    for (i, (req, want, bump)) in steps.into_iter().enumerate() {
        let before = r.rev();
        // The step that checks the admin rule itself goes without identity.
        let who = match (&req, &want) {
            (AuthRequest::UserList, Err(_)) => Identity::none(),
            _ => root.clone(),
        };
        let got = r.run_as(&who, req.clone()).map(|_| ());
        assert_eq!(got, want, "step {i}: {req:?}");
        let expect = if bump { before + 1 } else { before };
        assert_eq!(r.rev(), expect, "step {i}: revision after {req:?}");
    }
}

#[test]
fn role_delete_strips_users_and_bumps_once() {
    let mut r = Rig::new();
    r.run(user_add("a", "x")).unwrap();
    r.run(user_add("b", "x")).unwrap();
    r.run(role_add("r")).unwrap();
    r.run(role_add("s")).unwrap();
    r.run(grant_role("a", "r")).unwrap();
    r.run(grant_role("a", "s")).unwrap();
    r.run(grant_role("b", "r")).unwrap();
    let before = r.rev();
    r.run(AuthRequest::RoleDelete(pb::AuthRoleDeleteRequest {
        role: "r".into(),
    }))
    .unwrap();
    assert_eq!(r.rev(), before + 1);
    let get = |r: &mut Rig, n: &str| {
        r.run(AuthRequest::UserGet(pb::AuthUserGetRequest {
            name: n.into(),
        }))
        .unwrap()
        .roles
    };
    assert_eq!(get(&mut r, "a"), vec!["s".to_string()]);
    assert!(get(&mut r, "b").is_empty());
}

#[test]
fn grants_merge_by_exact_range_and_stay_sorted() {
    let mut r = Rig::new();
    r.run(role_add("r")).unwrap();
    r.run(grant_perm("r", Type::Read, "b", "")).unwrap();
    r.run(grant_perm("r", Type::Write, "a", "c")).unwrap();
    r.run(grant_perm("r", Type::Read, "a", "c")).unwrap();
    r.run(grant_perm("r", Type::Write, "b", "")).unwrap();
    let perms = r
        .run(AuthRequest::RoleGet(pb::AuthRoleGetRequest {
            role: "r".into(),
        }))
        .unwrap()
        .perms;
    let got: Vec<(i32, &[u8], &[u8])> = perms
        .iter()
        .map(|p| (p.perm_type, &p.key[..], &p.range_end[..]))
        .collect();
    assert_eq!(
        got,
        vec![
            (Type::Read as i32, &b"a"[..], &b"c"[..]),
            (Type::Write as i32, &b"b"[..], &b""[..]),
        ]
    );
    assert_eq!(
        r.run(AuthRequest::RoleGrantPermission(
            pb::AuthRoleGrantPermissionRequest {
                name: "r".into(),
                perm: None
            }
        )),
        Err(EtcdError::PermissionNotGiven)
    );
}

#[test]
fn user_grants_stay_sorted_and_get_rules_hold() {
    let mut r = Rig::new();
    r.run(user_add("root", "x")).unwrap();
    r.run(grant_role("root", "root")).unwrap();
    r.run(user_add("u", "x")).unwrap();
    for role in ["zz", "aa", "mm"] {
        r.run(role_add(role)).unwrap();
        r.run(grant_role("u", role)).unwrap();
    }
    let roles = r
        .run(AuthRequest::UserGet(pb::AuthUserGetRequest {
            name: "u".into(),
        }))
        .unwrap()
        .roles;
    assert_eq!(roles, vec!["aa", "mm", "zz"]);
    r.run(AuthRequest::Enable).unwrap();
    let rev = r.rev();
    let u = Identity {
        username: "u".into(),
        revision: rev,
    };
    // A user reads itself and its roles, nothing else.
    let get_user = |n: &str| AuthRequest::UserGet(pb::AuthUserGetRequest { name: n.into() });
    let get_role = |n: &str| AuthRequest::RoleGet(pb::AuthRoleGetRequest { role: n.into() });
    assert!(r.run_as(&u, get_user("u")).is_ok());
    assert_eq!(
        r.run_as(&u, get_user("root")),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(
        r.run_as(&u, get_user("ghost")),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(r.run(get_user("u")), Err(EtcdError::UserEmpty));
    assert!(r.run_as(&u, get_role("mm")).is_ok());
    assert_eq!(
        r.run_as(&u, get_role("root")),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(
        r.run_as(&u, AuthRequest::UserList),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(r.run(role_add("x")), Err(EtcdError::UserEmpty));
    let ghost = Identity {
        username: "ghost".into(),
        revision: rev,
    };
    assert_eq!(
        r.run_as(&ghost, role_add("x")),
        Err(EtcdError::UserNotFound)
    );
    let root = Identity {
        username: "root".into(),
        revision: 1,
    };
    // Admin checks ignore the identity's revision.
    assert!(r.run_as(&root, role_add("x")).is_ok());
}

#[test]
fn authenticate_at_apply() {
    let mut r = Rig::new();
    let auth = |name: &str| {
        AuthRequest::Authenticate(pb::InternalAuthenticateRequest {
            name: name.into(),
            password: String::new(),
            simple_token: "abcdefghijklmnop".into(),
        })
    };
    assert_eq!(r.run(auth("root")), Err(EtcdError::AuthNotEnabled));
    r.run(user_add("root", "x")).unwrap();
    r.run(grant_role("root", "root")).unwrap();
    r.run(AuthRequest::UserAdd(pb::AuthUserAddRequest {
        name: "np".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    }))
    .unwrap();
    r.run(AuthRequest::Enable).unwrap();
    assert_eq!(r.run(auth("ghost")), Err(EtcdError::AuthFailed));
    assert_eq!(r.run(auth("np")), Err(EtcdError::AuthFailed));
    let before = r.rev();
    let reply = r.run(auth("root")).unwrap();
    assert_eq!(reply.token, format!("abcdefghijklmnop.{}", r.index));
    assert_eq!(
        reply.tokens,
        TokenEffect::Register {
            token: reply.token.clone(),
            user: "root".into()
        }
    );
    assert_eq!(r.rev(), before, "authenticate does not bump");
}

#[test]
fn state_survives_reopen_with_etcds_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let state = {
        let kv = KvStore::open(&path, BackendConfig::default()).unwrap();
        let mut r = Rig {
            _dir: tempfile::tempdir().unwrap(),
            auth: AuthStore::load(&kv).unwrap(),
            kv,
            index: 0,
        };
        r.run(user_add("root", "pw")).unwrap();
        r.run(grant_role("root", "root")).unwrap();
        r.run(role_add("r")).unwrap();
        r.run(grant_perm("r", Type::Readwrite, "k", "\0")).unwrap();
        r.run(AuthRequest::Enable).unwrap();
        r.kv.sync().unwrap();
        r.auth.state().clone()
    };
    let kv = KvStore::open(&path, BackendConfig::default()).unwrap();
    let loaded = AuthStore::load(&kv).unwrap();
    assert_eq!(loaded.state(), &state);
    assert!(loaded.view().get().enabled());
    assert_eq!(kv.rev(), 1, "auth changes make no key-space revision");
    let rec = kv.auth_records().unwrap();
    assert_eq!(
        rec.auth,
        vec![
            (b"authEnabled".to_vec(), vec![1]),
            (b"authRevision".to_vec(), 5u64.to_be_bytes().to_vec()),
        ]
    );
    // authpb.Role{name: "r", keyPermission: [{READWRITE, "k", "\0"}]}.
    assert_eq!(
        rec.roles,
        vec![(
            b"r".to_vec(),
            vec![0x0a, 0x01, b'r', 0x12, 0x08, 0x08, 0x02, 0x12, 0x01, b'k', 0x1a, 0x01, 0x00]
        )]
    );
    // authpb.User: name, password (bcrypt text), roles, options (always
    // present, empty when no_password is false: `22 00`).
    let (name, user) = &rec.users[0];
    assert_eq!(name, b"root");
    let u = User::decode(user.as_slice()).unwrap();
    assert!(u.password.starts_with(b"$2a$04$"));
    assert_eq!(u.roles, vec!["root"]);
    assert!(user.ends_with(&[0x1a, 0x04, b'r', b'o', b'o', b't', 0x22, 0x00]));
}

mod sequences {
    //! Random sequences of management requests: whatever they do, a
    //! refused request changes nothing, the revision moves by at most one,
    //! the invariants etcd relies on hold, and the tables read back as the
    //! state the applier holds (restart = same state).

    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 4] = ["root", "a", "b", ""];
    const ROLES: [&str; 4] = ["root", "r1", "r2", ""];
    const KEYS: [&[u8]; 5] = [b"", b"\0", b"a", b"b", b"c"];

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(&NAMES[..]).prop_map(str::to_string)
    }

    fn role() -> impl Strategy<Value = String> {
        prop::sample::select(&ROLES[..]).prop_map(str::to_string)
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(&KEYS[..]).prop_map(<[u8]>::to_vec)
    }

    fn request() -> impl Strategy<Value = AuthRequest> {
        // One fixed hash: bcrypt is not what these sequences test.
        let hashed = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            b"$2a$04$0123456789012345678901uAbcdefghijklmnopqrstuvwxyzABCD",
        );
        let h2 = hashed.clone();
        prop_oneof![
            Just(AuthRequest::Enable),
            Just(AuthRequest::Disable),
            (name(), any::<bool>()).prop_map(move |(n, np)| AuthRequest::UserAdd(
                pb::AuthUserAddRequest {
                    name: n,
                    hashed_password: hashed.clone(),
                    options: Some(UserAddOptions { no_password: np }),
                    ..Default::default()
                }
            )),
            name().prop_map(|n| AuthRequest::UserDelete(pb::AuthUserDeleteRequest { name: n })),
            name().prop_map(move |n| AuthRequest::UserChangePassword(
                pb::AuthUserChangePasswordRequest {
                    name: n,
                    hashed_password: h2.clone(),
                    ..Default::default()
                }
            )),
            (name(), role()).prop_map(|(u, r)| grant_role(&u, &r)),
            (name(), role()).prop_map(|(n, r)| AuthRequest::UserRevokeRole(
                pb::AuthUserRevokeRoleRequest { name: n, role: r }
            )),
            role().prop_map(|r| role_add(&r)),
            role().prop_map(|r| AuthRequest::RoleDelete(pb::AuthRoleDeleteRequest { role: r })),
            (role(), 0i32..4, key(), key()).prop_map(|(r, t, k, e)| {
                AuthRequest::RoleGrantPermission(pb::AuthRoleGrantPermissionRequest {
                    name: r,
                    perm: Some(Permission {
                        perm_type: t,
                        key: k.into(),
                        range_end: e.into(),
                    }),
                })
            }),
            (role(), key(), key()).prop_map(|(r, k, e)| AuthRequest::RoleRevokePermission(
                pb::AuthRoleRevokePermissionRequest {
                    role: r,
                    key: k.into(),
                    range_end: e.into(),
                }
            )),
        ]
    }

    fn check_invariants(s: &AuthState) {
        if s.enabled {
            let root = s.users.get(ROOT).expect("auth on without root");
            assert!(root.roles.iter().any(|r| r == ROOT), "root lost its role");
        }
        for (n, u) in &s.users {
            assert!(!n.is_empty(), "a user with an empty name");
            assert!(
                u.roles.windows(2).all(|w| w[0] < w[1]),
                "roles unsorted: {u:?}"
            );
            assert!(u.options.is_some(), "user stored without options");
            for r in &u.roles {
                assert!(r == ROOT || s.roles.contains_key(r), "dangling role {r}");
            }
        }
        for (n, r) in &s.roles {
            assert!(!n.is_empty(), "a role with an empty name");
            assert!(
                r.key_permission.windows(2).all(|w| w[0].key <= w[1].key),
                "permissions unsorted: {r:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn management_sequences_keep_the_rules(
            reqs in prop::collection::vec((request(), any::<bool>()), 1..40)
        ) {
            let mut r = Rig::new();
            let root = Identity { username: ROOT.into(), revision: 1 };
            for (req, as_root) in reqs {
                let who = if as_root { root.clone() } else { Identity::none() };
                let before = r.auth.state().clone();
                let out = r.run_as(&who, req.clone());
                let after = r.auth.state().clone();
                match out {
                    Err(_) => prop_assert_eq!(&before, &after, "refused {:?} changed state", req),
                    Ok(_) => prop_assert!(
                        after.revision == before.revision || after.revision == before.revision + 1,
                        "{:?} moved the revision by more than one", req
                    ),
                }
                check_invariants(&after);
            }
            r.kv.sync().unwrap();
            let reloaded = AuthStore::load(&r.kv).unwrap();
            prop_assert_eq!(reloaded.state(), r.auth.state());
        }
    }
}

mod fuzz {
    use super::*;
    use crate::auth::permissions::Access;
    use crate::damage::{damaged, damages};
    use oxcd_api::authpb::UserAddOptions;
    use proptest::prelude::*;

    fn user() -> impl Strategy<Value = Vec<u8>> {
        (prop::collection::vec("[a-z]{0,3}", 0..3), any::<bool>()).prop_map(|(roles, no_pw)| {
            User {
                name: b"u".to_vec().into(),
                roles,
                options: Some(UserAddOptions { no_password: no_pw }),
                ..User::default()
            }
            .encode_to_vec()
        })
    }

    fn role() -> impl Strategy<Value = Vec<u8>> {
        let perm = (
            0i32..4,
            prop::collection::vec(any::<u8>(), 0..3),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(t, key, range_end)| Permission {
                perm_type: t,
                key: key.into(),
                range_end: range_end.into(),
            });
        prop::collection::vec(perm, 0..4).prop_map(|key_permission| {
            Role {
                name: b"r".to_vec().into(),
                key_permission,
            }
            .encode_to_vec()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The auth tables as a damaged backend may hold them: decoded or
        /// refused as corrupt; what decodes builds a view that answers
        /// permission checks.
        #[test]
        fn damaged_auth_records_decode_or_fail(
            enabled in prop::collection::vec(any::<u8>(), 0..3),
            revision in prop::collection::vec(any::<u8>(), 0..10),
            users in prop::collection::vec(("[a-z]{0,3}", user(), prop::option::of(damages(2))), 0..4),
            roles in prop::collection::vec(("[a-z]{0,3}", role(), prop::option::of(damages(2))), 0..4),
            key in prop::collection::vec(any::<u8>(), 0..3),
            end in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let rows = |v: Vec<(String, Vec<u8>, Option<Vec<crate::damage::Damage>>)>| -> Vec<(Vec<u8>, Vec<u8>)> {
                v.into_iter()
                    .map(|(k, v, d)| (k.into_bytes(), d.map_or(v.clone(), |d| damaged(v, &d))))
                    .collect()
            };
            let records = AuthRecords {
                auth: vec![(ENABLED_KEY.to_vec(), enabled), (REVISION_KEY.to_vec(), revision)],
                users: rows(users),
                roles: rows(roles),
            };
            match decode(records) {
                Ok(state) => {
                    let view = AuthView::build(&state);
                    for name in state.users.keys() {
                        let who = Identity { username: name.clone(), revision: state.revision.max(1) };
                        for access in [Access::Read, Access::Write] {
                            let _ = view.check_key(&who, access, &key, &end);
                        }
                    }
                }
                Err(e) => prop_assert!(matches!(e, MvccError::Corrupt(_)), "{e}"),
            }
        }
    }
}
