//! `/debug/failpoints` on the client port, to arm failpoints while the
//! member runs (etcd's gofail HTTP endpoint): `GET /debug/failpoints`
//! lists the armed ones, `PUT /debug/failpoints/NAME` with a term as body
//! arms one, `DELETE` disarms it (terms: see `oxcd_failpoint`).
//!
//! Served only by debug builds started with `OXCD_FAILPOINTS_HTTP=1`:
//! release builds have no failpoints, and a member that was not asked for
//! the route does not answer it.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// The routes, when this build and environment serve them.
pub fn routes() -> Router {
    let asked = std::env::var_os("OXCD_FAILPOINTS_HTTP").is_some_and(|v| v != "0");
    if !asked {
        return Router::new();
    }
    if !cfg!(debug_assertions) {
        tracing::warn!(
            "OXCD_FAILPOINTS_HTTP is set, but this build has no failpoints (debug builds only); ignored"
        );
        return Router::new();
    }
    tracing::warn!("serving /debug/failpoints (OXCD_FAILPOINTS_HTTP)");
    Router::new()
        .route(
            "/debug/failpoints",
            get(|| async { oxcd_failpoint::list() }),
        )
        .route(
            "/debug/failpoints/{name}",
            axum::routing::put(arm).delete(disarm),
        )
}

async fn arm(Path(name): Path<String>, body: String) -> (StatusCode, String) {
    match oxcd_failpoint::set(&name, body.trim()) {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn disarm(Path(name): Path<String>) -> (StatusCode, String) {
    match oxcd_failpoint::set(&name, "off") {
        Ok(()) => (StatusCode::NO_CONTENT, String::new()),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}
