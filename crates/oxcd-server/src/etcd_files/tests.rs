//! The rewriting of etcd's entries and the schema refusal.

use super::convert::*;
use super::files::copy_backend;
use crate::cluster::membership::ConfContext;
use oxcd_api::etcdserverpb::{InternalRaftRequest, Request as V2Request};
use oxcd_etcd_format::bolt;
use oxcd_etcd_format::membership::{ConfChange as EtcdConfChange, EtcdMember, V2Cluster};
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType};

fn roster_of(members: &[(u64, bool)]) -> Roster {
    let v2 = V2Cluster {
        members: members
            .iter()
            .map(|&(id, is_learner)| EtcdMember {
                id,
                is_learner,
                peer_urls: vec![format!("http://127.0.0.1:{id}")],
                ..EtcdMember::default()
            })
            .collect(),
        removed: Vec::new(),
    };
    Roster::new(&v2, &[])
}

fn etcd_cc(change_type: i32, node_id: u64, ctx: &str) -> Vec<u8> {
    EtcdConfChange {
        id: 77,
        change_type,
        node_id,
        context: ctx.as_bytes().to_vec(),
    }
    .encode_to_vec()
}

fn decoded(b: &[u8]) -> ConfChange {
    let mut cc = ConfChange::default();
    cc.merge_from_bytes(b).unwrap();
    cc
}

#[test]
fn etcd_conf_changes_become_oxcds() {
    let mut r = roster_of(&[(1, false), (2, true)]);
    // Add learner (etcd 3) → raft-rs AddLearnerNode (2).
    let cc = decoded(
        &convert_conf_change(
            &etcd_cc(
                3,
                3,
                r#"{"id":3,"peerURLs":["http://h:3"],"isLearner":true}"#,
            ),
            &mut r,
        )
        .unwrap(),
    );
    assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
    assert_eq!(cc.id, 77);
    let ctx = ConfContext::decode(&cc.context).unwrap();
    assert_eq!((ctx.op.as_str(), ctx.is_learner), ("add", true));
    assert!(r.members.get(&3).unwrap().is_learner);
    // Update (etcd 2) of a learner stays a learner change; of a voter,
    // an AddNode with op "update".
    let cc = decoded(
        &convert_conf_change(
            &etcd_cc(
                2,
                2,
                r#"{"id":2,"peerURLs":["http://new:2"],"isLearner":true}"#,
            ),
            &mut r,
        )
        .unwrap(),
    );
    assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
    assert_eq!(ConfContext::decode(&cc.context).unwrap().op, "update");
    assert_eq!(r.members.get(&2).unwrap().peer_urls, vec!["http://new:2"]);
    let cc = decoded(
        &convert_conf_change(
            &etcd_cc(2, 1, r#"{"id":1,"peerURLs":["http://new:1"]}"#),
            &mut r,
        )
        .unwrap(),
    );
    assert_eq!(cc.get_change_type(), ConfChangeType::AddNode);
    // AddNode of a learner is etcd's promotion.
    let cc = decoded(
        &convert_conf_change(
            &etcd_cc(0, 2, r#"{"id":2,"peerURLs":["http://new:2"]}"#),
            &mut r,
        )
        .unwrap(),
    );
    assert_eq!(cc.get_change_type(), ConfChangeType::AddNode);
    assert_eq!(ConfContext::decode(&cc.context).unwrap().op, "promote");
    assert!(!r.members.get(&2).unwrap().is_learner);
    // Remove carries no context in etcd.
    let cc = decoded(&convert_conf_change(&etcd_cc(1, 3, ""), &mut r).unwrap());
    assert_eq!(cc.get_change_type(), ConfChangeType::RemoveNode);
    assert!(!r.members.contains_key(&3));
    // An unknown type, or an add without a member, is refused.
    assert!(convert_conf_change(&etcd_cc(9, 3, "{}"), &mut r).is_err());
    assert!(convert_conf_change(&etcd_cc(0, 4, "not json"), &mut r).is_err());
}

#[test]
fn v2_attribute_updates_are_kept_and_other_v2_requests_dropped() {
    let mut r = roster_of(&[(0x1a, false)]);
    let publish = V2Request {
        id: Some(5),
        method: Some("PUT".into()),
        path: Some("/0/members/1a/attributes".into()),
        val: Some(r#"{"name":"n1","clientURLs":["http://c:1"]}"#.into()),
        ..V2Request::default()
    };
    // Kept byte for byte: oxcd applies etcd 3.4's publish as etcd does.
    let out = convert_normal(&publish.encode_to_vec(), &mut r).unwrap();
    assert_eq!(out, publish.encode_to_vec());
    assert_eq!(r.members()[0].name, "n1");
    assert_eq!(r.members()[0].client_urls, vec!["http://c:1"]);
    let version = V2Request {
        method: Some("PUT".into()),
        path: Some("/0/version".into()),
        val: Some("3.4.0".into()),
        ..V2Request::default()
    };
    assert!(convert_normal(&version.encode_to_vec(), &mut r)
        .unwrap()
        .is_empty());
    // A v3 request is kept byte for byte.
    let put = InternalRaftRequest {
        put: Some(oxcd_api::etcdserverpb::PutRequest {
            key: b"k".to_vec().into(),
            ..Default::default()
        }),
        ..InternalRaftRequest::default()
    }
    .encode_to_vec();
    assert_eq!(convert_normal(&put, &mut r).unwrap(), put);
    assert!(convert_normal(b"", &mut r).unwrap().is_empty());
}

#[test]
fn an_etcd_3_6_backend_is_refused_before_anything_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut w = bolt::BoltWriter::new(std::fs::File::create(&db).unwrap()).unwrap();
    {
        let mut b = w.bucket(b"meta").unwrap();
        b.put(b"consistent_index", &5u64.to_be_bytes()).unwrap();
        b.put(b"storageVersion", b"3.6.0").unwrap();
        b.finish().unwrap();
    }
    w.finish().unwrap();
    let err = copy_backend(&db, &dir.path().join("out"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("3.6") && err.contains(&db.display().to_string()),
        "{err}"
    );
}

mod fuzz {
    use super::*;
    use crate::damage::{damaged, damages};
    use oxcd_etcd_format::wal::Entry as EtcdEntry;
    use proptest::prelude::*;

    /// Data of an etcd entry: a conf change, a member attribute update
    /// through the v2 store, an InternalRaftRequest.
    fn data() -> impl Strategy<Value = (i32, Vec<u8>)> {
        prop_oneof![
            (
                0i32..5,
                1u64..4,
                prop::sample::select(vec![
                    r#"{"id":2,"peerURLs":["http://a:1"],"name":"n"}"#,
                    r#"{"isLearner":true}"#,
                    "",
                    "{",
                ])
            )
                .prop_map(|(t, id, ctx)| (1, etcd_cc(t, id, ctx))),
            (
                1u64..4,
                prop::sample::select(vec![r#"{"name":"n","clientURLs":["http://c:1"]}"#, "[", ""])
            )
                .prop_map(|(id, val)| (
                    0,
                    V2Request {
                        method: Some("PUT".into()),
                        path: Some(format!("/0/members/{id:x}/attributes")),
                        val: Some(val.into()),
                        ..V2Request::default()
                    }
                    .encode_to_vec()
                )),
            Just((0, InternalRaftRequest::default().encode_to_vec())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The entries of an etcd WAL, arbitrary or damaged: converted
        /// into oxcd's, or refused with a message; never a panic.
        #[test]
        fn etcd_entries_convert_or_fail(
            entries in prop::collection::vec((data(), prop::option::of(damages(3))), 1..6),
            raw in prop::collection::vec(any::<u8>(), 0..64),
            kind in 0i32..3,
        ) {
            let mut roster = roster_of(&[(1, false), (2, true)]);
            let mut all: Vec<(i32, Vec<u8>)> = entries
                .into_iter()
                .map(|((kind, data), d)| (kind, d.map_or(data.clone(), |d| damaged(data, &d))))
                .collect();
            all.push((kind, raw));
            for (i, (kind, data)) in all.into_iter().enumerate() {
                let e = EtcdEntry { kind, term: 2, index: i as u64 + 1, data };
                let _ = convert_entry(&e, &mut roster);
                let _ = convert_normal(&e.data, &mut roster);
                let _ = convert_conf_change(&e.data, &mut roster);
            }
            let _ = roster.members();
        }
    }
}
