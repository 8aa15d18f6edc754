//! The v2 requests etcd 3.4 still replicates for the cluster itself: a
//! member publishes its name and client URLs as a v2 `PUT` of
//! `/0/members/<id>/attributes`, the leader sets the cluster version as a
//! `PUT` of `/0/version`. They travel as bare `etcdserverpb.Request`s, not
//! wrapped in an `InternalRaftRequest`; etcd tells the two apart by trying
//! the wrapper first (`pbutil.MaybeUnmarshal`), and so does oxcd.
//!
//! oxcd publishes the same way, so that etcd 3.4 members in a mixed
//! cluster apply it: they panic on the 3.5 `ClusterMemberAttrSetRequest`.

use oxcd_api::etcdserverpb::{InternalRaftRequest, Request as V2Request};
use prost::Message;

/// A normal entry's request, as etcd's `applyEntryNormal` reads it.
#[derive(Debug)]
pub enum EntryRequest {
    /// A v3 request (etcd 3.x).
    V3(Box<InternalRaftRequest>),
    /// A v2 request, bare or wrapped.
    V2(V2Request),
}

/// Decodes a normal entry's data; `None` if it is neither form.
pub fn decode_entry(data: &[u8]) -> Option<EntryRequest> {
    match InternalRaftRequest::decode(data) {
        Ok(r) => Some(match r.v2 {
            Some(v2) => EntryRequest::V2(v2),
            None => EntryRequest::V3(Box::new(r)),
        }),
        Err(_) => V2Request::decode(data).ok().map(EntryRequest::V2),
    }
}

/// What a v2 request does to the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum V2Change {
    /// A member's published name and client URLs.
    Attributes {
        /// The member.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs.
        client_urls: Vec<String>,
    },
    /// The cluster version the leader decided on.
    ClusterVersion(String),
    /// Anything else of the v2 store, which oxcd does not keep.
    Other,
}

/// Reads what a v2 request changes.
///
/// # Errors
/// Attributes whose JSON does not parse.
pub fn change(v2: &V2Request) -> Result<V2Change, serde_json::Error> {
    let path = v2.path.as_deref().unwrap_or_default();
    if v2.method.as_deref() != Some("PUT") {
        return Ok(V2Change::Other);
    }
    if path == "/0/version" {
        return Ok(V2Change::ClusterVersion(v2.val.clone().unwrap_or_default()));
    }
    let member = path
        .strip_prefix("/0/members/")
        .and_then(|rest| rest.strip_suffix("/attributes"))
        .and_then(|id| u64::from_str_radix(id, 16).ok());
    let Some(id) = member else {
        return Ok(V2Change::Other);
    };
    let m = oxcd_etcd_format::membership::EtcdMember::from_json(
        v2.val.as_deref().unwrap_or("{}").as_bytes(),
    )?;
    Ok(V2Change::Attributes {
        id,
        name: m.name,
        client_urls: m.client_urls,
    })
}

/// The entry data of etcd 3.4's `publish`: member `id`'s attributes as a
/// bare v2 `PUT` with request ID `request_id`.
pub fn publish_entry(request_id: u64, id: u64, name: &str, client_urls: &[String]) -> Vec<u8> {
    let val = serde_json::json!({ "name": name, "clientURLs": client_urls }).to_string();
    V2Request {
        id: Some(request_id),
        method: Some("PUT".into()),
        path: Some(format!("/0/members/{id:x}/attributes")),
        val: Some(val),
        ..V2Request::default()
    }
    .encode_to_vec()
}

/// The entry a leader proposes to set the cluster version (etcd's
/// `updateClusterVersion`: a bare v2 `PUT` of `/0/version`).
pub fn cluster_version_entry(request_id: u64, version: &str) -> Vec<u8> {
    V2Request {
        id: Some(request_id),
        method: Some("PUT".into()),
        path: Some("/0/version".into()),
        val: Some(version.into()),
        ..V2Request::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_entry_reads_back_as_etcd_reads_it() {
        let data = publish_entry(
            7,
            0xfc45331b8c3a455,
            "m1",
            &["http://127.0.0.1:2379".into()],
        );
        // Not an InternalRaftRequest: etcd falls back to the bare form.
        assert!(InternalRaftRequest::decode(data.as_slice()).is_err());
        let Some(EntryRequest::V2(v2)) = decode_entry(&data) else {
            panic!("not read as a v2 request");
        };
        assert_eq!(
            v2.path.as_deref(),
            Some("/0/members/fc45331b8c3a455/attributes")
        );
        assert_eq!(
            v2.val.as_deref(),
            Some(r#"{"clientURLs":["http://127.0.0.1:2379"],"name":"m1"}"#)
        );
        assert_eq!(
            change(&v2).unwrap(),
            V2Change::Attributes {
                id: 0xfc45331b8c3a455,
                name: "m1".into(),
                client_urls: vec!["http://127.0.0.1:2379".into()],
            }
        );
    }

    #[test]
    fn the_cluster_version_and_other_paths_are_told_apart() {
        let v = |method: &str, path: &str, val: &str| V2Request {
            method: Some(method.into()),
            path: Some(path.into()),
            val: Some(val.into()),
            ..V2Request::default()
        };
        assert_eq!(
            change(&v("PUT", "/0/version", "3.4.0")).unwrap(),
            V2Change::ClusterVersion("3.4.0".into())
        );
        assert_eq!(
            change(&v("DELETE", "/0/version", "")).unwrap(),
            V2Change::Other
        );
        assert_eq!(change(&v("PUT", "/1/foo", "x")).unwrap(), V2Change::Other);
        assert!(change(&v("PUT", "/0/members/1/attributes", "[")).is_err());
    }

    #[test]
    fn a_v3_request_stays_v3() {
        let r = InternalRaftRequest {
            put: Some(oxcd_api::etcdserverpb::PutRequest {
                key: bytes::Bytes::from_static(b"k"),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            decode_entry(&r.encode_to_vec()),
            Some(EntryRequest::V3(_))
        ));
        assert!(decode_entry(&[0xff, 0xff]).is_none());
    }
}
