//! The plain HTTP endpoints on the client port: `/health` and `/version`
//! (etcd's `etcdhttp/base.go` and `metrics.go`). `/metrics` and the `/v3`
//! JSON gateway come with their own issues.

use crate::core::Core;
use crate::version::{CLUSTER_VERSION, SERVER_VERSION};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use std::sync::Arc;

/// Routes for the HTTP/1 endpoints.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/version", any(version))
        .with_state(core)
}

async fn health(method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    // One member, no alarms yet: healthy whenever serving.
    let mut r = r#"{"health":"true"}"#.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn version(method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let body = format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{CLUSTER_VERSION}"}}"#);
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response()
}
