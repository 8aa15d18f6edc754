//! Profiling on demand (`--enable-pprof`), under `/debug/pprof/` as etcd
//! serves Go's: `profile?seconds=N` samples the CPU for N seconds (30 by
//! default, at most 300) and answers Go's gzipped pprof protobuf
//! ([`encode`]), which `go tool pprof http://host:2379/debug/pprof/profile`
//! reads as it reads etcd's; `flamegraph?seconds=N` answers the same
//! samples as a flame graph (SVG) a user can attach to a bug report;
//! `heap` answers the process's memory figures from `/proc/self/status`.
//! One CPU profile runs at a time.

mod encode;

use axum::extract::Query;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sampling frequency of a CPU profile, in Hz (Go's default too).
const FREQUENCY: i32 = 100;
const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 300;

/// Whether a CPU profile is being taken (the profiler is process-wide).
static PROFILING: AtomicBool = AtomicBool::new(false);

/// The profiling routes.
pub fn routes() -> Router {
    Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/flamegraph", get(flamegraph))
        .route("/debug/pprof/heap", get(heap))
}

async fn index() -> Response {
    text(
        StatusCode::OK,
        "/debug/pprof/\n\nprofile?seconds=N     CPU profile (Go's pprof protobuf, gzipped)\nflamegraph?seconds=N  CPU profile as a flame graph (SVG)\nheap                  memory of the process\n"
            .to_string(),
    )
}

/// What a CPU profile is answered as.
#[derive(Clone, Copy)]
enum Format {
    Pprof,
    FlameGraph,
}

async fn profile(Query(q): Query<HashMap<String, String>>) -> Response {
    cpu(q, Format::Pprof).await
}

async fn flamegraph(Query(q): Query<HashMap<String, String>>) -> Response {
    cpu(q, Format::FlameGraph).await
}

async fn cpu(q: HashMap<String, String>, format: Format) -> Response {
    let seconds = q
        .get("seconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECONDS)
        .clamp(1, MAX_SECONDS);
    if PROFILING.swap(true, Ordering::AcqRel) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Could not enable CPU profiling: cpu profiling already in use\n".into(),
        );
    }
    let answer = take_profile(Duration::from_secs(seconds), format).await;
    PROFILING.store(false, Ordering::Release);
    match answer {
        Ok(body) => {
            let mut r = body.into_response();
            let h = r.headers_mut();
            match format {
                Format::Pprof => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    h.insert(
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("attachment; filename=\"profile\""),
                    );
                }
                Format::FlameGraph => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("image/svg+xml"),
                    );
                }
            }
            r
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Could not take a CPU profile: {e}\n"),
        ),
    }
}

async fn take_profile(length: Duration, format: Format) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(length).await;
    // Building the report symbolizes every frame: off the async threads.
    tokio::task::spawn_blocking(move || {
        let report = guard.report().build().map_err(|e| e.to_string())?;
        match format {
            Format::Pprof => encode::gzipped(&encode::profile(&report)).map_err(|e| e.to_string()),
            Format::FlameGraph => flame_graph(&report, length),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

fn flame_graph(report: &pprof::Report, length: Duration) -> Result<Vec<u8>, String> {
    let mut svg = Vec::new();
    report.flamegraph(&mut svg).map_err(|e| e.to_string())?;
    if svg.is_empty() {
        // The profiler samples CPU time: an idle member gives none.
        let note = format!(
            "<?xml version=\"1.0\" standalone=\"no\"?><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">no CPU samples in {} s: the member was idle</text></svg>\n",
            length.as_secs()
        );
        svg = note.into_bytes();
    }
    Ok(svg)
}

async fn heap() -> Response {
    let status = tokio::fs::read_to_string("/proc/self/status")
        .await
        .unwrap_or_default();
    let mut out = String::from("# memory of the oxcd process (from /proc/self/status)\n");
    for line in status
        .lines()
        .filter(|l| l.starts_with("Vm") || l.starts_with("Rss"))
    {
        out.push_str(line);
        out.push('\n');
    }
    text(StatusCode::OK, out)
}

fn text(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
