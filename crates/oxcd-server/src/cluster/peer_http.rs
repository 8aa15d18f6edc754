//! etcd's HTTP endpoints on the peer URLs beside raft's, for mixed
//! clusters: `GET /members` (a joining member learns the cluster),
//! `POST /members/promote/<id>` (a learner's promotion, answered by the
//! leader), `GET /members/hashkv` (corruption checks) and
//! lease forwarding (`lease/leasehttp`): an etcd follower posts a `LeaseKeepAliveRequest` to the leader's `/leases`, or
//! a `LeaseInternalRequest` to `/leases/internal` for a TimeToLive, and
//! reads the protobuf answer; errors are plain-text HTTP statuses. oxcd
//! serves both for etcd followers, and uses them toward an etcd leader
//! (oxcd members forward to each other over `oxcdpeerpb.Forward`).

use super::forward::HttpCall;
use crate::core::Core;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use oxcd_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use oxcd_api::EtcdError;
use prost::Message;
use std::sync::Arc;

/// etcd's `leasepb.LeaseInternalRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseInternalRequest {
    /// The TimeToLive asked for.
    #[prost(message, optional, tag = "1")]
    pub lease_time_to_live_request: Option<LeaseTimeToLiveRequest>,
}

/// etcd's `leasepb.LeaseInternalResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseInternalResponse {
    /// The leader's answer.
    #[prost(message, optional, tag = "1")]
    pub lease_time_to_live_response: Option<LeaseTimeToLiveResponse>,
}

/// etcd's lessor errors as its handler writes them.
const LEASE_NOT_FOUND: &str = "lease not found";
const NOT_PRIMARY: &str = "not a primary lessor";
const APPLY_TIMEOUT: &str = "waiting for node to catch up its applied index has timed out";

/// `/members`, `/leases` and `/leases/internal`, for the peer listener.
pub fn routes(core: Arc<Core>) -> axum::Router {
    axum::Router::new()
        .route("/members", any(members))
        .route("/members/promote/{id}", any(promote))
        .route("/members/hashkv", any(hash_kv))
        .route("/leases", any(renew))
        .route("/leases/internal", any(time_to_live))
        .with_state(core)
}

fn text(status: StatusCode, t: &str) -> Response {
    let mut r = (status, format!("{t}\n")).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn protobuf(body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/protobuf"),
    );
    r
}

/// An error as etcd's handler answers it.
fn refusal(e: &EtcdError) -> Response {
    match e {
        EtcdError::LeaseNotFound => text(StatusCode::NOT_FOUND, LEASE_NOT_FOUND),
        EtcdError::TimeoutWaitAppliedIndex => text(StatusCode::REQUEST_TIMEOUT, APPLY_TIMEOUT),
        EtcdError::NotLeader => text(StatusCode::BAD_REQUEST, NOT_PRIMARY),
        other => text(StatusCode::BAD_REQUEST, other.message()),
    }
}

/// etcd's `peerMembersHandler`: the members as JSON, with the cluster ID.
async fn members(State(core): State<Arc<Core>>, method: Method) -> Response {
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let list = members_json(&core.members.list());
    let mut r = format!("{list}\n").into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{:x}", core.cluster_id)) {
        r.headers_mut().insert("x-etcd-cluster-id", v);
    }
    r
}

/// etcd's member JSON (`membership.Member`) for a list.
fn members_json(list: &[crate::cluster::membership::Member]) -> serde_json::Value {
    list.iter()
        .map(|m| {
            let mut v = serde_json::json!({
                "id": m.id,
                "peerURLs": m.peer_urls,
                "name": m.name,
                "clientURLs": m.client_urls,
            });
            if m.is_learner {
                v["isLearner"] = true.into();
            }
            v
        })
        .collect()
}

/// etcd's `peerMemberPromoteHandler`: promotes learner `id` (decimal), on
/// the leader or forwarded to it; answers the member list as JSON.
async fn promote(
    State(core): State<Arc<Core>>,
    method: Method,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let Ok(id) = id.parse::<u64>() else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("member {id} not found in cluster"),
        );
    };
    let answer = match crate::v3rpc::cluster::promote_as_leader(&core, id).await {
        Err(EtcdError::NotLeader) => crate::v3rpc::cluster::forward_promote(&core, id).await,
        r => r,
    };
    let mut r = match answer {
        Ok(_) => {
            let body = format!("{}\n", members_json(&core.members.list()));
            let mut r = body.into_response();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(EtcdError::MemberNotFound) => text(StatusCode::NOT_FOUND, "membership: ID not found"),
        Err(EtcdError::MemberNotLearner) => text(
            StatusCode::PRECONDITION_FAILED,
            "membership: can only promote a learner member",
        ),
        Err(EtcdError::LearnerNotReady) => text(
            StatusCode::PRECONDITION_FAILED,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        Err(EtcdError::Timeout) => {
            text(StatusCode::REQUEST_TIMEOUT, "etcdserver: request timed out")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
    };
    if let Ok(v) = HeaderValue::from_str(&format!("{:x}", core.cluster_id)) {
        r.headers_mut().insert("x-etcd-cluster-id", v);
    }
    r
}

/// A promotion posted to an etcd leader's `/members/promote/<id>`.
pub fn promote_call(id: u64) -> HttpCall<Vec<oxcd_api::etcdserverpb::Member>> {
    HttpCall {
        path: format!("/members/promote/{id}"),
        content_type: "application/octet-stream",
        body: Bytes::new(),
        decode: |status, body| {
            let t = String::from_utf8_lossy(body);
            match status {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Err(EtcdError::MemberNotFound),
                StatusCode::REQUEST_TIMEOUT => return Err(EtcdError::Timeout),
                StatusCode::PRECONDITION_FAILED if t.contains("in sync with leader") => {
                    return Err(EtcdError::LearnerNotReady)
                }
                StatusCode::PRECONDITION_FAILED if t.contains("can only promote") => {
                    return Err(EtcdError::MemberNotLearner)
                }
                _ => {
                    return Err(EtcdError::Unknown(format!(
                        "member promote: unknown error({})",
                        t.trim_end()
                    )))
                }
            }
            let ms: Vec<oxcd_etcd_format::membership::EtcdMember> = serde_json::from_slice(body)
                .map_err(|e| EtcdError::Unknown(format!("member promote: {e}")))?;
            Ok(ms
                .into_iter()
                .map(|m| oxcd_api::etcdserverpb::Member {
                    id: m.id,
                    name: m.name,
                    peer_ur_ls: m.peer_urls,
                    client_ur_ls: m.client_urls,
                    is_learner: m.is_learner,
                })
                .collect())
        },
    }
}

/// etcd's `hashKVHandler`: `GET` with a JSON `{"revision":N}` body; the
/// answer is JSON with etcd's field names.
async fn hash_kv(State(core): State<Arc<Core>>, method: Method, body: Bytes) -> Response {
    if method != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let rev = if body.is_empty() {
        Some(0)
    } else {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .map(|v| {
                v.get("revision")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0)
            })
    };
    let Some(rev) = rev else {
        return text(StatusCode::BAD_REQUEST, "error unmarshalling request");
    };
    let store = core.store.clone();
    let h = match tokio::task::spawn_blocking(move || store.hash_kv(rev)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                crate::apply::mvcc_error(e).message(),
            )
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut v = serde_json::json!({ "header": { "revision": h.current_rev } });
    if h.hash != 0 {
        v["hash"] = h.hash.into();
    }
    if h.compact_rev != 0 {
        v["compact_revision"] = h.compact_rev.into();
    }
    let mut r = v.to_string().into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{:x}", core.cluster_id)) {
        r.headers_mut().insert("x-etcd-cluster-id", v);
    }
    r
}

/// An etcd member's JSON HashKV answer.
pub fn hash_kv_from_json(b: &[u8]) -> Option<oxcd_api::etcdserverpb::HashKvResponse> {
    let v: serde_json::Value = serde_json::from_slice(b).ok()?;
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_i64);
    let rev = v
        .get("header")
        .and_then(|h| num(h, "revision"))
        .unwrap_or(0);
    Some(oxcd_api::etcdserverpb::HashKvResponse {
        header: Some(oxcd_api::etcdserverpb::ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        hash: v
            .get("hash")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as u32,
        compact_revision: num(&v, "compact_revision").unwrap_or(0),
        ..Default::default()
    })
}

/// The cluster as an etcd member at one of `urls` describes it (`GET
/// /members`): its ID and members.
///
/// # Errors
/// No URL answered with a member list, with the last failure.
pub async fn fetch_members(
    urls: &[String],
    tls: &oxcd_raft::transport::PeerTls,
) -> Result<(u64, Vec<crate::cluster::membership::Member>), String> {
    let mut last = String::from("no peer URL to ask");
    for url in urls {
        match oxcd_raft::rafthttp::dial::get(url, tls, "/members").await {
            Err(e) => last = format!("{url}: {e}"),
            Ok((status, headers, body)) if status == StatusCode::OK => {
                let cid = headers
                    .get("x-etcd-cluster-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| u64::from_str_radix(v, 16).ok());
                let members: Result<Vec<oxcd_etcd_format::membership::EtcdMember>, _> =
                    serde_json::from_slice(&body);
                match (cid, members) {
                    (Some(cid), Ok(ms)) => {
                        let list = ms
                            .into_iter()
                            .map(|m| crate::cluster::membership::Member {
                                id: m.id,
                                name: m.name,
                                peer_urls: m.peer_urls,
                                client_urls: m.client_urls,
                                is_learner: m.is_learner,
                            })
                            .collect();
                        return Ok((cid, list));
                    }
                    _ => last = format!("{url}: not a member list"),
                }
            }
            Ok((status, _, _)) => last = format!("{url}: status {}", status.as_u16()),
        }
    }
    Err(last)
}

async fn renew(State(core): State<Arc<Core>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let Ok(req) = LeaseKeepAliveRequest::decode(body) else {
        return text(StatusCode::BAD_REQUEST, "error unmarshalling request");
    };
    if !core.writes.is_leader() {
        return refusal(&EtcdError::NotLeader);
    }
    match crate::v3rpc::lease::renew_as_leader(&core, req.id).await {
        Ok(ttl) => protobuf(
            LeaseKeepAliveResponse {
                header: None,
                id: req.id,
                ttl,
            }
            .encode_to_vec(),
        ),
        Err(e) => refusal(&e),
    }
}

async fn time_to_live(State(core): State<Arc<Core>>, method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let Ok(req) = LeaseInternalRequest::decode(body) else {
        return text(StatusCode::BAD_REQUEST, "error unmarshalling request");
    };
    let req = req.lease_time_to_live_request.unwrap_or_default();
    if !core.writes.is_leader() {
        return refusal(&EtcdError::NotLeader);
    }
    match crate::v3rpc::lease::time_to_live_as_leader(&core, req).await {
        Ok(r) => protobuf(
            LeaseInternalResponse {
                lease_time_to_live_response: Some(LeaseTimeToLiveResponse {
                    header: Some(Default::default()),
                    ..r
                }),
            }
            .encode_to_vec(),
        ),
        Err(e) => refusal(&e),
    }
}

/// An answer's error, as etcd's `RenewHTTP` / `TimeToLiveHTTP` read it.
fn answer_error(status: StatusCode, body: &[u8]) -> EtcdError {
    match status {
        StatusCode::NOT_FOUND => EtcdError::LeaseNotFound,
        StatusCode::REQUEST_TIMEOUT => EtcdError::TimeoutWaitAppliedIndex,
        _ => EtcdError::Unknown(format!(
            "lease: unknown error({})",
            String::from_utf8_lossy(body).trim_end()
        )),
    }
}

/// A renewal of lease `id` posted to an etcd leader; answers the TTL.
pub fn renew_call(id: i64) -> HttpCall<i64> {
    HttpCall {
        path: "/leases".into(),
        content_type: "application/protobuf",
        body: LeaseKeepAliveRequest { id }.encode_to_vec().into(),
        decode: |status, body| {
            if status != StatusCode::OK {
                return Err(answer_error(status, body));
            }
            LeaseKeepAliveResponse::decode(body)
                .map(|r| r.ttl)
                .map_err(|e| EtcdError::Unknown(format!("lease: {e}")))
        },
    }
}

/// A TimeToLive posted to an etcd leader's `/leases/internal`.
pub fn time_to_live_call(req: LeaseTimeToLiveRequest) -> HttpCall<LeaseTimeToLiveResponse> {
    HttpCall {
        path: "/leases/internal".into(),
        content_type: "application/protobuf",
        body: LeaseInternalRequest {
            lease_time_to_live_request: Some(req),
        }
        .encode_to_vec()
        .into(),
        decode: |status, body| {
            if status != StatusCode::OK {
                return Err(answer_error(status, body));
            }
            LeaseInternalResponse::decode(body)
                .map(|r| r.lease_time_to_live_response.unwrap_or_default())
                .map_err(|e| EtcdError::Unknown(format!("lease: {e}")))
        },
    }
}
