//! Serving clients and peers: listeners, TLS, and the dispatch that puts
//! gRPC and HTTP/1 endpoints on one port (etcd's `embed/serve.go`).

pub mod authority;
pub mod gateway;
pub mod http;
pub mod listener;
pub mod tls;

use crate::v3rpc::GrpcRouter;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// The gRPC answer for a method no service claims: `Unimplemented`, as
/// etcd answers an unknown method.
pub fn unknown_method(path: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("unknown method {path}"))
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Answers anything no route claimed: gRPC callers get `Unimplemented`
/// (what etcd says for an unknown method), everyone else a plain 404.
pub async fn fallback(req: Request<Body>) -> Response {
    if is_grpc(&req) {
        return unknown_method(req.uri().path())
            .into_http::<Body>()
            .into_response();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// What a listener serves: gRPC calls go straight to the [`GrpcRouter`]
/// when there is one (the client port), everything else to an axum router
/// (HTTP endpoints, and on the peer port the raft and forwarding routes).
#[derive(Clone)]
pub struct Dispatch {
    grpc: Option<GrpcRouter>,
    http: Router,
    /// HTTP/2 streams a connection may have open at once
    /// (`--max-concurrent-streams` on the client port).
    pub(crate) max_streams: u32,
}

impl Dispatch {
    /// The client port: the gRPC services plus the HTTP endpoints, with at
    /// most `max_streams` concurrent streams per HTTP/2 connection.
    pub fn client(grpc: GrpcRouter, http: Router, max_streams: u32) -> Dispatch {
        Dispatch {
            grpc: Some(grpc),
            http: http.fallback(fallback),
            max_streams,
        }
    }

    /// A port served by an axum router alone (the peer port).
    pub fn router(http: Router) -> Dispatch {
        Dispatch {
            grpc: None,
            http,
            max_streams: u32::MAX,
        }
    }
}

impl<B> tower::Service<Request<B>> for Dispatch
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = crate::v3rpc::GrpcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(grpc) = self.grpc.as_mut().filter(|_| is_grpc(&req)) {
            return grpc.call(req);
        }
        let http = self.http.clone();
        Box::pin(async move {
            let Ok(resp) = http.oneshot(req.map(Body::new)).await;
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}
