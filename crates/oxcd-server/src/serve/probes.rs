//! Kubernetes-style probes as etcd serves them (3.4.x backport and 3.5+):
//! `/livez` (the member answers a local read) and `/readyz` (no CORRUPT
//! alarm, a local read, a linearizable read), each check also at its own
//! sub-path (`/readyz/linearizable_read`), `?exclude=<check>` to skip one,
//! `?verbose` to list them. Results go to `etcd_server_healthcheck` and
//! `etcd_server_healthchecks_total`.

use crate::core::Core;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use oxcd_api::etcdserverpb::AlarmType;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The checks, in the order they run and are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
        }
    }
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
];

/// Longest a linearizable read may take before the check fails.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

struct ProbeMetrics {
    result: IntGaugeVec,
    total: IntCounterVec,
}

static METRICS: LazyLock<ProbeMetrics> = LazyLock::new(|| {
    let r = prometheus::default_registry();
    let result = IntGaugeVec::new(
        Opts::new(
            "etcd_server_healthcheck",
            "The result of each kind of healthcheck.",
        ),
        &["type", "name"],
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let total = IntCounterVec::new(
        Opts::new(
            "etcd_server_healthchecks_total",
            "The total number of each kind of healthcheck.",
        ),
        &["type", "name", "status"],
    )
    .unwrap_or_else(|e| panic!("metric: {e}"));
    let _ = r.register(Box::new(result.clone()));
    let _ = r.register(Box::new(total.clone()));
    ProbeMetrics { result, total }
});

/// The probe routes.
pub fn routes(core: Arc<Core>) -> Router {
    let mut r = Router::new()
        .route("/livez", any(livez))
        .route("/readyz", any(readyz));
    for c in LIVEZ {
        r = r.route(&format!("/livez/{}", c.name()), any(one));
    }
    for c in READYZ {
        r = r.route(&format!("/readyz/{}", c.name()), any(one));
    }
    r.with_state(core)
}

async fn livez(State(core): State<Arc<Core>>, method: Method, uri: Uri) -> Response {
    probe(&core, "livez", LIVEZ, method, &uri).await
}

async fn readyz(State(core): State<Arc<Core>>, method: Method, uri: Uri) -> Response {
    probe(&core, "readyz", READYZ, method, &uri).await
}

/// One check at its own path (`/readyz/linearizable_read`).
async fn one(State(core): State<Arc<Core>>, method: Method, uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let (kind, name) = path.split_once('/').unwrap_or((path, ""));
    let list = if kind == "livez" { LIVEZ } else { READYZ };
    let Some(check) = list.iter().copied().find(|c| c.name() == name) else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    let kind = if kind == "livez" { "livez" } else { "readyz" };
    probe(&core, kind, &[check], method, &uri).await
}

async fn probe(core: &Core, kind: &str, checks: &[Check], method: Method, uri: &Uri) -> Response {
    if method != Method::GET {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let query = uri.query().unwrap_or("");
    let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let excluded: Vec<&str> = params
        .iter()
        .filter_map(|p| p.strip_prefix("exclude="))
        .collect();
    let verbose = params
        .iter()
        .any(|p| *p == "verbose" || p.starts_with("verbose="));
    let mut report = String::new();
    let mut ok = true;
    for &c in checks.iter().filter(|c| !excluded.contains(&c.name())) {
        let outcome = run(core, c).await;
        let status = if outcome.is_ok() { "success" } else { "error" };
        let m = &*METRICS;
        m.result
            .with_label_values(&[kind, c.name()])
            .set(i64::from(outcome.is_ok()));
        m.total.with_label_values(&[kind, c.name(), status]).inc();
        match outcome {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", c.name())),
            Err(e) => {
                ok = false;
                report.push_str(&format!("[-]{} failed: {e}\n", c.name()));
            }
        }
    }
    let (code, body) = if ok {
        let mut body = if verbose { report } else { String::new() };
        body.push_str("ok\n");
        (StatusCode::OK, body)
    } else {
        tracing::error!("Health check error path={}, reason={report:?}", uri.path());
        report.push('\n');
        (StatusCode::SERVICE_UNAVAILABLE, report)
    };
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn run(core: &Core, c: Check) -> Result<(), String> {
    match c {
        Check::DataCorruption => {
            if core
                .alarms
                .any_except(&[AlarmType::None as i32, AlarmType::Nospace as i32])
            {
                Err("alarm activated: CORRUPT".into())
            } else {
                Ok(())
            }
        }
        Check::SerializableRead => core
            .store
            .read()
            .and_then(|r| {
                r.range(
                    b"\0",
                    b"\0",
                    oxcd_mvcc::RangeOptions {
                        limit: 1,
                        ..Default::default()
                    },
                )
                .map(|_| ())
            })
            .map_err(|e| e.to_string()),
        Check::LinearizableRead => {
            match tokio::time::timeout(READ_TIMEOUT, core.writes.linearizable_barrier()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(oxcd_api::EtcdError::Timeout.to_string()),
            }
        }
    }
}
