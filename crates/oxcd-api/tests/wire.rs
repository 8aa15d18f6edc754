//! Spot checks of the wire contract: gRPC service paths, and the field numbers
//! most likely to be mistyped (out-of-sequence tags and 3.5/3.6 additions),
//! checked against hand-encoded protobuf bytes.

use oxcd_api::{etcdserverpb as pb, membershippb, mvccpb, v3electionpb, v3lockpb};
use prost::Message;

#[test]
fn service_names_match_etcd() {
    assert_eq!(pb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(pb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(pb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(pb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(
        pb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(pb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(
        v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
}

#[test]
fn out_of_sequence_tags() {
    let cmp = pb::Compare {
        range_end: b"a".to_vec().into(),
        ..Default::default()
    };
    // Tag 64, length-delimited: key (64 << 3) | 2 = 514 = varint 82 04.
    assert_eq!(cmp.encode_to_vec(), [0x82, 0x04, 0x01, b'a']);

    let resp = pb::WatchResponse {
        events: vec![mvccpb::Event::default()],
        ..Default::default()
    };
    assert_eq!(resp.encode_to_vec(), [0x5a, 0x00]); // tag 11

    let req = pb::InternalRaftRequest {
        header: Some(pb::RequestHeader {
            id: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(req.encode_to_vec(), [0xa2, 0x06, 0x02, 0x08, 0x01]); // tag 100
}

#[test]
fn raft_request_tags_added_after_3_4() {
    let auth_status = pb::InternalRaftRequest {
        auth_status: Some(pb::AuthStatusRequest {}),
        ..Default::default()
    };
    assert_eq!(auth_status.encode_to_vec(), [0xaa, 0x3f, 0x00]); // tag 1013

    let version_set = pb::InternalRaftRequest {
        cluster_version_set: Some(membershippb::ClusterVersionSetRequest::default()),
        ..Default::default()
    };
    assert_eq!(version_set.encode_to_vec(), [0xa2, 0x51, 0x00]); // tag 1300

    let downgrade_test = pb::InternalRaftRequest {
        downgrade_version_test: Some(pb::DowngradeVersionTestRequest::default()),
        ..Default::default()
    };
    assert_eq!(downgrade_test.encode_to_vec(), [0xe2, 0xea, 0x04, 0x00]); // tag 9900
}

#[test]
fn fields_added_in_3_5_and_3_6() {
    let status = pb::StatusResponse {
        storage_version: "3.6.0".into(),
        db_size_quota: 3,
        downgrade_info: Some(pb::DowngradeInfo::default()),
        ..Default::default()
    };
    let mut want = vec![0x5a, 0x05];
    want.extend_from_slice(b"3.6.0"); // tag 11
    want.extend_from_slice(&[0x60, 0x03, 0x6a, 0x00]); // tags 12, 13
    assert_eq!(status.encode_to_vec(), want);

    let hash = pb::HashKvResponse {
        hash_revision: 7,
        ..Default::default()
    };
    assert_eq!(hash.encode_to_vec(), [0x20, 0x07]); // tag 4

    let list = pb::MemberListRequest { linearizable: true };
    assert_eq!(list.encode_to_vec(), [0x08, 0x01]);

    let add = pb::AuthUserAddRequest {
        hashed_password: "h".into(),
        ..Default::default()
    };
    assert_eq!(add.encode_to_vec(), [0x22, 0x01, b'h']); // tag 4

    let ttl = pb::LeaseTimeToLiveResponse {
        granted_ttl: 5,
        ..Default::default()
    };
    assert_eq!(ttl.encode_to_vec(), [0x20, 0x05]); // tag 4
}
