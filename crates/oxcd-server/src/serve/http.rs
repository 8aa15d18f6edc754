//! The plain HTTP endpoints on the client port: `/health`, `/version` and
//! `/metrics` (etcd's `etcdhttp/base.go` and `metrics.go`); the
//! `--listen-metrics-urls` listeners serve `/metrics` and `/health` only.
//! The `/v3` JSON gateway is [`super::gateway`].

use crate::core::Core;
use crate::metrics::Scrape;
use crate::version::{CLUSTER_VERSION, SERVER_VERSION};
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use oxcd_api::etcdserverpb::AlarmType;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
struct Endpoints {
    core: Arc<Core>,
    scrape: Arc<Scrape>,
}

/// Routes for the HTTP/1 endpoints.
pub fn routes(core: Arc<Core>, scrape: Arc<Scrape>) -> Router {
    let members = core.members.clone();
    metrics_routes(core, scrape)
        .route(
            "/version",
            any(move |method: Method| version(members.cluster_version(), method)),
        )
        .merge(super::failpoints::routes())
}

/// What a `--listen-metrics-urls` listener serves: `/metrics`, `/health`
/// and the probes (`/livez`, `/readyz`).
pub fn metrics_routes(core: Arc<Core>, scrape: Arc<Scrape>) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/metrics", any(metrics))
        .with_state(Endpoints {
            core: core.clone(),
            scrape,
        })
        .merge(super::probes::routes(core))
}

/// Prometheus text exposition (format 0.0.4), built off the async
/// threads since it reads the whole registry.
async fn metrics(State(e): State<Endpoints>) -> Response {
    let body = tokio::task::spawn_blocking(move || e.scrape.render())
        .await
        .unwrap_or_default();
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// etcd's `/health`: false while an alarm not named by an `exclude=`
/// parameter is raised, while there is no leader, or when a quorum read
/// does not complete within a second. With `serializable=true` (etcd 3.5)
/// only this member's own state counts: alarms, no leader or quorum read.
async fn health(State(e): State<Endpoints>, method: Method, uri: Uri) -> Response {
    let core = e.core;
    if method != Method::GET {
        return method_not_allowed();
    }
    let params: Vec<&str> = uri.query().unwrap_or("").split('&').collect();
    let excluded: Vec<i32> = params
        .iter()
        .filter_map(|kv| kv.strip_prefix("exclude="))
        .filter_map(|name| AlarmType::from_str_name(name).map(|t| t as i32))
        .collect();
    let serializable = params.contains(&"serializable=true");
    let healthy = if core.alarms.any_except(&excluded) {
        tracing::warn!("/health error due to an alarm");
        false
    } else if serializable {
        true
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
    let counters = crate::metrics::counters();
    if healthy {
        counters.health_success.inc();
    } else {
        counters.health_failures.inc();
    }
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

/// `cluster` is the replicated cluster version; before one is known
/// (etcd says `not_decided` then) oxcd reports the 3.4 cluster version it
/// always settles on, as it did before it replicated one.
async fn version(cluster: Option<String>, method: Method) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let cluster = cluster.as_deref().unwrap_or(CLUSTER_VERSION);
    let body = format!(r#"{{"etcdserver":"{SERVER_VERSION}","etcdcluster":"{cluster}"}}"#);
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
