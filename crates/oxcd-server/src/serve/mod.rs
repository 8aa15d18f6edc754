//! Serving clients and peers: listeners, TLS, and the router that puts
//! gRPC and HTTP/1 endpoints on one port (etcd's `embed/serve.go`).

pub mod authority;
pub mod coalesce;
pub mod http;
pub mod listener;
pub mod tls;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Answers anything no route claimed: gRPC callers get `Unimplemented`
/// (what etcd says for an unknown method), everyone else a plain 404.
pub async fn fallback(req: Request<Body>) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented(format!("unknown method {}", req.uri().path()))
            .into_http::<Body>()
            .into_response();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// The router for the client port: gRPC services plus HTTP endpoints.
pub fn client_router(grpc: Router, http: Router) -> Router {
    grpc.merge(http).fallback(fallback)
}
