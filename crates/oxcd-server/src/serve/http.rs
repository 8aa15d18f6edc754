//! The plain HTTP endpoints on the client port: `/health` and `/version`
//! (etcd's `etcdhttp/base.go` and `metrics.go`). `/metrics` and the `/v3`
//! JSON gateway come with their own issues.

use crate::core::Core;
use crate::version::{CLUSTER_VERSION, SERVER_VERSION};
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use oxcd_api::etcdserverpb::AlarmType;
use std::sync::Arc;
use std::time::Duration;

/// Routes for the HTTP/1 endpoints.
pub fn routes(core: Arc<Core>) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/version", any(version))
        .with_state(core)
}

/// etcd 3.4's `/health`: false while an alarm not named by an
/// `exclude=` parameter is raised, while there is no leader, or when a
/// quorum read does not complete within a second.
async fn health(State(core): State<Arc<Core>>, method: Method, uri: Uri) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let excluded: Vec<i32> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .filter_map(|name| AlarmType::from_str_name(name).map(|t| t as i32))
        .collect();
    let healthy = if core.alarms.any_except(&excluded) {
        tracing::warn!("/health error due to an alarm");
        false
    } else if core.leader() == 0 {
        tracing::warn!("/health error; no leader (status code 503)");
        false
    } else {
        let read = core.writes.linearizable_barrier();
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(())) => true,
            _ => {
                tracing::warn!("/health error; quorum read failed (status code 503)");
                false
            }
        }
    };
    let mut r = if healthy {
        r#"{"health":"true"}"#.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\"}\n").into_response()
    };
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
