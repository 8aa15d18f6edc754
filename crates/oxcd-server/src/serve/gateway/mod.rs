//! etcd's JSON gateway: every gRPC method of the client API as a POST
//! route under `/v3/` (and `/v3beta/`, which etcd 3.4 still serves), with
//! grpc-gateway v1's encoding and error bodies.
//!
//! A JSON request becomes an in-process gRPC call on the same router the
//! client port serves ([`call`]), so a JSON client meets exactly the checks
//! and errors a gRPC client meets. etcd's gateway dials the server over one
//! gRPC connection, so `--max-concurrent-streams` also bounds how many
//! gateway calls run at once; a semaphore keeps that behaviour (etcd's
//! `TestV3Curl_MaxStreams_*`).
//!
//! - [`routes`]: the route table and the handler;
//! - [`call`]: the in-process gRPC call;
//! - [`json`]: JSON ↔ protobuf, error bodies, HTTP statuses;
//! - [`objects`]: a stream body split into its JSON objects;
//! - [`websocket`]: the same routes over a WebSocket, as etcd's wsproxy.

mod call;
mod json;
mod objects;
mod websocket;

use crate::v3rpc::GrpcRouter;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use call::{Outbound, Replies};
use http_body_util::BodyExt;
use oxcd_api::etcdserverpb as pb;
use oxcd_api::{v3electionpb as epb, v3lockpb as lpb};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a gateway call is settled: the gateway's own state.
#[derive(Clone)]
struct Gateway {
    grpc: GrpcRouter,
    /// Calls in flight, at most `--max-concurrent-streams`.
    streams: Arc<Semaphore>,
    /// Largest JSON request object read (base64 makes bytes 4/3 longer
    /// than the protobuf limit the gRPC layer enforces after it).
    max_json: usize,
    /// How long a unary call's body may take ([`body_read_timeout`]).
    body_timeout: std::time::Duration,
}

/// The gateway routes. `max_recv_bytes` is the gRPC message limit,
/// `max_streams` the `--max-concurrent-streams` flag.
pub fn routes(grpc: GrpcRouter, max_recv_bytes: usize, max_streams: u32) -> Router {
    let permits = usize::try_from(max_streams)
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS);
    let gw = Gateway {
        grpc,
        streams: Arc::new(Semaphore::new(permits)),
        max_json: max_recv_bytes.saturating_mul(2).saturating_add(64 * 1024),
        body_timeout: body_read_timeout(),
    };
    Router::new()
        .route("/v3/{*method}", any(handle))
        .route("/v3beta/{*method}", any(handle))
        .with_state(gw)
}

/// The shape of a gRPC method, which decides how its body is read and its
/// answer written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unary,
    /// One request object, many answers (Snapshot, Observe).
    ServerStream,
    /// A request object after another, many answers (Watch, KeepAlive).
    BidiStream,
}

/// One route: the gRPC method it calls and how its messages convert.
#[derive(Clone, Copy)]
struct Route {
    grpc: &'static str,
    kind: Kind,
    request: fn(&[u8]) -> Result<Vec<u8>, tonic::Status>,
    response: fn(&[u8]) -> Result<Vec<u8>, tonic::Status>,
}

macro_rules! route {
    ($grpc:literal, $kind:ident, $req:ty, $resp:ty) => {
        Route {
            grpc: $grpc,
            kind: Kind::$kind,
            request: json::to_proto::<$req>,
            response: json::to_json::<$resp>,
        }
    };
}

/// The route for a path below `/v3/`. The list is etcd 3.4's gateway
/// (`rpc.pb.gw.go`, `v3lockpb/gw`, `v3electionpb/gw`) plus the aliases
/// later releases added (`kv/lease/*`, `lock/lock`, `maintenance/hashkv`).
/// In 3.4 Hash and HashKV share `maintenance/hash`, and Hash wins.
fn route(method: &str) -> Option<Route> {
    Some(match method {
        "kv/range" => route!(
            "/etcdserverpb.KV/Range",
            Unary,
            pb::RangeRequest,
            pb::RangeResponse
        ),
        "kv/put" => route!(
            "/etcdserverpb.KV/Put",
            Unary,
            pb::PutRequest,
            pb::PutResponse
        ),
        "kv/deleterange" => route!(
            "/etcdserverpb.KV/DeleteRange",
            Unary,
            pb::DeleteRangeRequest,
            pb::DeleteRangeResponse
        ),
        "kv/txn" => route!(
            "/etcdserverpb.KV/Txn",
            Unary,
            pb::TxnRequest,
            pb::TxnResponse
        ),
        "kv/compaction" => route!(
            "/etcdserverpb.KV/Compact",
            Unary,
            pb::CompactionRequest,
            pb::CompactionResponse
        ),
        "watch" => route!(
            "/etcdserverpb.Watch/Watch",
            BidiStream,
            pb::WatchRequest,
            pb::WatchResponse
        ),
        "lease/grant" => route!(
            "/etcdserverpb.Lease/LeaseGrant",
            Unary,
            pb::LeaseGrantRequest,
            pb::LeaseGrantResponse
        ),
        "lease/revoke" | "kv/lease/revoke" => route!(
            "/etcdserverpb.Lease/LeaseRevoke",
            Unary,
            pb::LeaseRevokeRequest,
            pb::LeaseRevokeResponse
        ),
        "lease/keepalive" => route!(
            "/etcdserverpb.Lease/LeaseKeepAlive",
            BidiStream,
            pb::LeaseKeepAliveRequest,
            pb::LeaseKeepAliveResponse
        ),
        "lease/timetolive" | "kv/lease/timetolive" => route!(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            Unary,
            pb::LeaseTimeToLiveRequest,
            pb::LeaseTimeToLiveResponse
        ),
        "lease/leases" | "kv/lease/leases" => route!(
            "/etcdserverpb.Lease/LeaseLeases",
            Unary,
            pb::LeaseLeasesRequest,
            pb::LeaseLeasesResponse
        ),
        "cluster/member/add" => route!(
            "/etcdserverpb.Cluster/MemberAdd",
            Unary,
            pb::MemberAddRequest,
            pb::MemberAddResponse
        ),
        "cluster/member/remove" => route!(
            "/etcdserverpb.Cluster/MemberRemove",
            Unary,
            pb::MemberRemoveRequest,
            pb::MemberRemoveResponse
        ),
        "cluster/member/update" => route!(
            "/etcdserverpb.Cluster/MemberUpdate",
            Unary,
            pb::MemberUpdateRequest,
            pb::MemberUpdateResponse
        ),
        "cluster/member/list" => route!(
            "/etcdserverpb.Cluster/MemberList",
            Unary,
            pb::MemberListRequest,
            pb::MemberListResponse
        ),
        "cluster/member/promote" => route!(
            "/etcdserverpb.Cluster/MemberPromote",
            Unary,
            pb::MemberPromoteRequest,
            pb::MemberPromoteResponse
        ),
        "maintenance/alarm" => route!(
            "/etcdserverpb.Maintenance/Alarm",
            Unary,
            pb::AlarmRequest,
            pb::AlarmResponse
        ),
        "maintenance/status" => route!(
            "/etcdserverpb.Maintenance/Status",
            Unary,
            pb::StatusRequest,
            pb::StatusResponse
        ),
        "maintenance/defragment" => route!(
            "/etcdserverpb.Maintenance/Defragment",
            Unary,
            pb::DefragmentRequest,
            pb::DefragmentResponse
        ),
        "maintenance/hash" => route!(
            "/etcdserverpb.Maintenance/Hash",
            Unary,
            pb::HashRequest,
            pb::HashResponse
        ),
        "maintenance/hashkv" => route!(
            "/etcdserverpb.Maintenance/HashKV",
            Unary,
            pb::HashKvRequest,
            pb::HashKvResponse
        ),
        "maintenance/snapshot" => route!(
            "/etcdserverpb.Maintenance/Snapshot",
            ServerStream,
            pb::SnapshotRequest,
            pb::SnapshotResponse
        ),
        "maintenance/transfer-leadership" => route!(
            "/etcdserverpb.Maintenance/MoveLeader",
            Unary,
            pb::MoveLeaderRequest,
            pb::MoveLeaderResponse
        ),
        "maintenance/downgrade" => route!(
            "/etcdserverpb.Maintenance/Downgrade",
            Unary,
            pb::DowngradeRequest,
            pb::DowngradeResponse
        ),
        "auth/enable" => route!(
            "/etcdserverpb.Auth/AuthEnable",
            Unary,
            pb::AuthEnableRequest,
            pb::AuthEnableResponse
        ),
        "auth/disable" => route!(
            "/etcdserverpb.Auth/AuthDisable",
            Unary,
            pb::AuthDisableRequest,
            pb::AuthDisableResponse
        ),
        "auth/status" => route!(
            "/etcdserverpb.Auth/AuthStatus",
            Unary,
            pb::AuthStatusRequest,
            pb::AuthStatusResponse
        ),
        "auth/authenticate" => route!(
            "/etcdserverpb.Auth/Authenticate",
            Unary,
            pb::AuthenticateRequest,
            pb::AuthenticateResponse
        ),
        "auth/user/add" => route!(
            "/etcdserverpb.Auth/UserAdd",
            Unary,
            pb::AuthUserAddRequest,
            pb::AuthUserAddResponse
        ),
        "auth/user/get" => route!(
            "/etcdserverpb.Auth/UserGet",
            Unary,
            pb::AuthUserGetRequest,
            pb::AuthUserGetResponse
        ),
        "auth/user/list" => route!(
            "/etcdserverpb.Auth/UserList",
            Unary,
            pb::AuthUserListRequest,
            pb::AuthUserListResponse
        ),
        "auth/user/delete" => route!(
            "/etcdserverpb.Auth/UserDelete",
            Unary,
            pb::AuthUserDeleteRequest,
            pb::AuthUserDeleteResponse
        ),
        "auth/user/changepw" => route!(
            "/etcdserverpb.Auth/UserChangePassword",
            Unary,
            pb::AuthUserChangePasswordRequest,
            pb::AuthUserChangePasswordResponse
        ),
        "auth/user/grant" => route!(
            "/etcdserverpb.Auth/UserGrantRole",
            Unary,
            pb::AuthUserGrantRoleRequest,
            pb::AuthUserGrantRoleResponse
        ),
        "auth/user/revoke" => route!(
            "/etcdserverpb.Auth/UserRevokeRole",
            Unary,
            pb::AuthUserRevokeRoleRequest,
            pb::AuthUserRevokeRoleResponse
        ),
        "auth/role/add" => route!(
            "/etcdserverpb.Auth/RoleAdd",
            Unary,
            pb::AuthRoleAddRequest,
            pb::AuthRoleAddResponse
        ),
        "auth/role/get" => route!(
            "/etcdserverpb.Auth/RoleGet",
            Unary,
            pb::AuthRoleGetRequest,
            pb::AuthRoleGetResponse
        ),
        "auth/role/list" => route!(
            "/etcdserverpb.Auth/RoleList",
            Unary,
            pb::AuthRoleListRequest,
            pb::AuthRoleListResponse
        ),
        "auth/role/delete" => route!(
            "/etcdserverpb.Auth/RoleDelete",
            Unary,
            pb::AuthRoleDeleteRequest,
            pb::AuthRoleDeleteResponse
        ),
        "auth/role/grant" => route!(
            "/etcdserverpb.Auth/RoleGrantPermission",
            Unary,
            pb::AuthRoleGrantPermissionRequest,
            pb::AuthRoleGrantPermissionResponse
        ),
        "auth/role/revoke" => route!(
            "/etcdserverpb.Auth/RoleRevokePermission",
            Unary,
            pb::AuthRoleRevokePermissionRequest,
            pb::AuthRoleRevokePermissionResponse
        ),
        "lock" | "lock/lock" => route!(
            "/v3lockpb.Lock/Lock",
            Unary,
            lpb::LockRequest,
            lpb::LockResponse
        ),
        "lock/unlock" => route!(
            "/v3lockpb.Lock/Unlock",
            Unary,
            lpb::UnlockRequest,
            lpb::UnlockResponse
        ),
        "election/campaign" => route!(
            "/v3electionpb.Election/Campaign",
            Unary,
            epb::CampaignRequest,
            epb::CampaignResponse
        ),
        "election/proclaim" => route!(
            "/v3electionpb.Election/Proclaim",
            Unary,
            epb::ProclaimRequest,
            epb::ProclaimResponse
        ),
        "election/leader" => route!(
            "/v3electionpb.Election/Leader",
            Unary,
            epb::LeaderRequest,
            epb::LeaderResponse
        ),
        "election/observe" => route!(
            "/v3electionpb.Election/Observe",
            ServerStream,
            epb::LeaderRequest,
            epb::LeaderResponse
        ),
        "election/resign" => route!(
            "/v3electionpb.Election/Resign",
            Unary,
            epb::ResignRequest,
            epb::ResignResponse
        ),
        _ => return None,
    })
}

async fn handle(State(gw): State<Gateway>, req: Request) -> Response {
    if websocket::is_upgrade(req.headers()) {
        return websocket::upgrade(gw, req).await;
    }
    serve(gw, req).await
}

/// The gRPC method a gateway path names (`kv/range` for `/v3/kv/range`).
fn method(uri: &axum::http::Uri) -> &str {
    let path = uri.path();
    path.strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))
        .unwrap_or("")
}

/// One gateway call over HTTP: the body is the request object (or the
/// stream of them), the answer its JSON.
async fn serve(gw: Gateway, req: Request) -> Response {
    let Some(route) = route(method(req.uri())) else {
        return plain(StatusCode::NOT_FOUND, "Not Found\n");
    };
    if req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    }
    let metadata = metadata(req.headers());
    let body = req.into_body();
    // As grpc-gateway, a body is read before the call takes a stream, so
    // a slow uploader does not hold one.
    let first = match route.kind {
        Kind::Unary | Kind::ServerStream => {
            match tokio::time::timeout(gw.body_timeout, read_one(body, gw.max_json, route)).await {
                Ok(Ok(m)) => Outbound::Once(m),
                Ok(Err(s)) => return error(&s),
                Err(_) => {
                    let mut r = plain(StatusCode::REQUEST_TIMEOUT, "request body read timed out\n");
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
            }
        }
        Kind::BidiStream => {
            let (tx, rx) = mpsc::channel(16);
            let gone = CancellationToken::new();
            let (bad_tx, bad_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(pump(body, tx, gw.max_json, route, gone.clone(), bad_tx));
            let Ok(permit) = gw.streams.clone().acquire_owned().await else {
                return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            };
            let replies = call::start(gw.grpc, route.grpc, metadata, Outbound::Stream(rx)).await;
            return stream_answer(replies, route, permit, gone, bad_rx).await;
        }
    };
    let Ok(permit) = gw.streams.clone().acquire_owned().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    let replies = call::start(gw.grpc, route.grpc, metadata, first).await;
    if route.kind == Kind::Unary {
        let answer = unary(replies, route).await;
        drop(permit);
        answer
    } else {
        let (_, never) = tokio::sync::oneshot::channel();
        stream_answer(replies, route, permit, CancellationToken::new(), never).await
    }
}

/// gRPC metadata for the call: the `Authorization` header is the auth
/// token (grpc-gateway passes it on and etcd reads it as `token`),
/// `Grpc-Metadata-<name>` headers pass as `<name>`, and grpc-gateway's
/// `grpcgateway-*` copies of the permanent headers mark the call as one
/// that came through the gateway.
fn metadata(headers: &HeaderMap) -> HeaderMap {
    let mut md = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n == "authorization" {
            // An explicit `Grpc-Metadata-Token` wins, as in etcd.
            if !headers.contains_key("grpc-metadata-token") {
                md.insert(HeaderName::from_static("token"), value.clone());
            }
        } else if let Some(rest) = n.strip_prefix("grpc-metadata-") {
            if let Ok(name) = HeaderName::from_bytes(rest.as_bytes()) {
                md.append(name, value.clone());
            }
        } else if n == "accept" || n == "user-agent" {
            if let Ok(name) = HeaderName::from_bytes(format!("grpcgateway-{n}").as_bytes()) {
                md.append(name, value.clone());
            }
        }
    }
    md
}

async fn unary(mut replies: Replies, route: Route) -> Response {
    let answer = match replies.next().await {
        Ok(Some(m)) => m,
        Ok(None) => return error(&tonic::Status::internal("no answer")),
        Err(s) => return error(&s),
    };
    // A unary call's status follows its one message.
    if let Err(s) = replies.next().await {
        return error(&s);
    }
    match (route.response)(&answer) {
        Ok(json) => json_response(StatusCode::OK, json),
        Err(s) => error(&s),
    }
}

/// Longest a unary or server-streaming call's body may take to arrive, so
/// that a client trickling its body cannot hold a connection for ever
/// (etcd has no limit). Stream bodies (watch, keep-alive) stay open by
/// design and have none. The test knob `OXCD_TEST_BODY_READ_TIMEOUT_MS`
/// shortens it.
fn body_read_timeout() -> std::time::Duration {
    std::env::var("OXCD_TEST_BODY_READ_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis,
        )
}

/// Reads the whole body as one request object and encodes it.
async fn read_one(body: Body, max: usize, route: Route) -> Result<Bytes, tonic::Status> {
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let proto = (route.request)(&bytes)?;
    Ok(call::frame(&proto))
}

/// Feeds a stream's request objects to the call as they arrive. Several
/// objects may follow one another in one body; each is one message. The
/// call's send side closes when the body ends (the stream itself stays
/// open, as etcd's does) or at the first object that does not decode (the
/// rest of the body is then read and dropped; if it was the first, `bad`
/// gets the error, which grpc-gateway answers as code 2, HTTP 500). A body
/// that breaks off (the client went away) cancels `gone`, which ends the
/// answer and the call.
async fn pump(
    mut body: Body,
    tx: mpsc::Sender<Bytes>,
    max: usize,
    route: Route,
    gone: CancellationToken,
    bad: tokio::sync::oneshot::Sender<tonic::Status>,
) {
    let mut bad = Some(bad);
    let mut objects = objects::Splitter::new(max);
    // Dropped (closing the call's send side) once nothing more is sent.
    let mut tx = Some(tx);
    loop {
        let frame = match body.frame().await {
            None => return,
            Some(Err(_)) => {
                gone.cancel();
                return;
            }
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let Some(sender) = &tx else {
            continue;
        };
        objects.push(&data);
        let mut stop = false;
        while !stop {
            match objects.next() {
                objects::Next::Object(object) => match (route.request)(object) {
                    Ok(msg) => {
                        bad = None;
                        stop = sender.send(call::frame(&msg)).await.is_err();
                    }
                    Err(s) => {
                        tracing::debug!(error = %s, "gateway stream request does not decode");
                        if let Some(first) = bad.take() {
                            let _ = first.send(tonic::Status::unknown(s.message()));
                        }
                        stop = true;
                    }
                },
                objects::Next::Incomplete => break,
                objects::Next::NotAnObject => {
                    tracing::debug!("gateway stream request is not a JSON object");
                    if let Some(first) = bad.take() {
                        let _ = first.send(tonic::Status::unknown("request is not a JSON object"));
                    }
                    stop = true;
                }
                objects::Next::TooLarge => {
                    tracing::debug!("gateway stream request object too large");
                    stop = true;
                }
            }
        }
        if stop {
            tx = None;
            objects = objects::Splitter::new(max);
        }
    }
}

/// A stream's answer: one `{"result":…}` line per message, and an
/// `{"error":…}` object if the call fails. Like grpc-gateway, nothing is
/// written before the first message, so a call that fails at once gets
/// its error's HTTP status. The answer ends when the call does, when the
/// client goes away (dropping it ends the call), or when `gone` says the
/// request body broke off.
async fn stream_answer(
    mut replies: Replies,
    route: Route,
    permit: OwnedSemaphorePermit,
    gone: CancellationToken,
    mut bad_first: tokio::sync::oneshot::Receiver<tonic::Status>,
) -> Response {
    let first = tokio::select! {
        r = replies.next() => r,
        _ = gone.cancelled() => return plain(StatusCode::REQUEST_TIMEOUT, "client went away\n"),
        Ok(s) = &mut bad_first => return error(&s),
    };
    let first = match first {
        Ok(Some(msg)) => msg,
        Ok(None) => return json_response(StatusCode::OK, Vec::new()),
        Err(s) => return json_response(json::http_status(s.code()), json::stream_error_line(&s)),
    };
    let head = futures::stream::once(std::future::ready(result_line(route, &first)));
    let rest = futures::stream::unfold(Some((replies, permit, gone)), move |state| async move {
        let (mut replies, permit, gone) = state?;
        let next = tokio::select! {
            r = replies.next() => r,
            _ = gone.cancelled() => return None,
        };
        match next {
            Ok(Some(msg)) => {
                let line = result_line(route, &msg);
                Some((line, Some((replies, permit, gone))))
            }
            Ok(None) => None,
            Err(s) => Some((Ok(Bytes::from(json::stream_error_line(&s))), None)),
        }
    });
    let mut r = Response::new(Body::from_stream(futures::StreamExt::chain(head, rest)));
    set_json_headers(r.headers_mut());
    r
}

fn result_line(route: Route, msg: &[u8]) -> Result<Bytes, std::convert::Infallible> {
    Ok(Bytes::from(match (route.response)(msg) {
        Ok(json) => json::stream_result_line(&json),
        Err(s) => json::stream_error_line(&s),
    }))
}

fn error(status: &tonic::Status) -> Response {
    json_response(json::http_status(status.code()), json::error_body(status))
}

fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (code, body).into_response();
    set_json_headers(r.headers_mut());
    r
}

fn set_json_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        HeaderName::from_static("grpc-metadata-content-type"),
        HeaderValue::from_static("application/grpc"),
    );
}

fn plain(code: StatusCode, body: &'static str) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
