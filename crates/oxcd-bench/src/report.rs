//! Latency recording and the run summary, as etcd's `pkg/report` prints it
//! (slowest, fastest, average, requests/sec, percentiles), plus one JSON
//! line for scripts.
//!
//! Latencies are recorded in microseconds, 8 bytes per successful
//! request, and summarised by one HDR histogram (3 significant digits,
//! 1 µs to 1 h) built from all recorders' samples when the run ends, so
//! per-client recorders merge exactly and cost nothing up front.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram resolves, in microseconds (one hour).
const MAX_MICROS: u64 = 3_600_000_000;

/// What one worker (or one phase) saw: latencies of successful operations
/// and failures counted by kind.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latencies in microseconds. Raw samples, not a histogram per
    /// recorder: each of 1000 clients' HDR histograms (1 µs..1 h, 3
    /// digits) was 188 KiB, and zeroing and merging them was a third of
    /// the load generator's CPU. One histogram is built when asked.
    samples: Vec<u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    unimplemented: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            samples: Vec::new(),
            errors: 0,
            error_kinds: BTreeMap::new(),
            unimplemented: false,
        }
    }

    /// One successful operation that took `latency`.
    pub fn ok(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.samples.push(micros.max(1));
    }

    /// One operation that failed with a gRPC status.
    pub fn status(&mut self, status: &tonic::Status) {
        if status.code() == tonic::Code::Unimplemented {
            self.unimplemented = true;
        }
        self.failure(&format!("{:?}", status.code()));
    }

    /// One operation that failed for a reason that is not a gRPC status
    /// (deadline, missing event, ...).
    pub fn failure(&mut self, kind: &str) {
        self.errors += 1;
        *self.error_kinds.entry(kind.to_string()).or_default() += 1;
    }

    /// Whether any failure was `Unimplemented`.
    pub fn saw_unimplemented(&self) -> bool {
        self.unimplemented
    }

    /// Number of successful operations.
    pub fn ok_count(&self) -> u64 {
        self.samples.len() as u64
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Recorder) {
        self.samples.extend_from_slice(&other.samples);
        self.errors += other.errors;
        for (kind, n) in &other.error_kinds {
            *self.error_kinds.entry(kind.clone()).or_default() += n;
        }
        self.unimplemented |= other.unimplemented;
    }

    /// The latency percentiles of the successful operations.
    pub fn latency(&self) -> Latency {
        if self.samples.is_empty() {
            return Latency::default();
        }
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3)
            .expect("1..1h with 3 significant digits is a valid histogram");
        for &micros in &self.samples {
            h.saturating_record(micros);
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency percentiles in milliseconds (all zero when nothing succeeded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min_ms: f64,
    /// Average.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The result of one workload run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The workload (`put`, `range`, ...).
    pub command: String,
    /// Operations requested.
    pub total: u64,
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations that failed (including those cut off by the deadline).
    pub errors: u64,
    /// Wall time of the measured phase, in seconds.
    pub duration_s: f64,
    /// `ok / duration_s`.
    pub ops_per_sec: f64,
    /// Latency of the successful operations.
    #[serde(flatten)]
    pub latency: Latency,
    /// Failures by gRPC code or reason.
    pub error_kinds: BTreeMap<String, u64>,
    /// The server answered `Unimplemented` (the service is missing).
    pub unimplemented: bool,
    /// The overall deadline stopped the run before `total` was reached.
    pub timed_out: bool,
    /// Workload-specific figures (e.g. put latency in `watch-latency`).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Summary {
    /// Summarises `rec` for a run of `total` operations that took `duration`.
    pub fn new(command: &str, total: u64, duration: Duration, rec: &Recorder) -> Summary {
        let ok = rec.ok_count();
        let secs = duration.as_secs_f64();
        Summary {
            command: command.to_string(),
            total,
            ok,
            errors: rec.errors,
            duration_s: secs,
            ops_per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency: rec.latency(),
            error_kinds: rec.error_kinds.clone(),
            unimplemented: rec.unimplemented,
            timed_out: ok + rec.errors < total,
            extra: serde_json::Map::new(),
        }
    }

    /// Adds a workload-specific figure.
    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Summary {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// One line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a Summary always serialises")
    }

    /// The human report, laid out like etcd's benchmark prints it.
    pub fn to_text(&self) -> String {
        let l = &self.latency;
        let mut out = format!(
            "\nSummary ({}):\n  Total:\t{:.4} secs.\n  Slowest:\t{:.4} ms.\n  Fastest:\t{:.4} ms.\n  Average:\t{:.4} ms.\n  Requests/sec:\t{:.4}\n  OK:\t\t{} of {}\n  Errors:\t{}\n",
            self.command, self.duration_s, l.max_ms, l.min_ms, l.mean_ms, self.ops_per_sec, self.ok, self.total, self.errors
        );
        out.push_str("\nLatency distribution:\n");
        for (label, v) in [
            ("50%", l.p50_ms),
            ("90%", l.p90_ms),
            ("99%", l.p99_ms),
            ("99.9%", l.p999_ms),
        ] {
            let _ = writeln!(out, "  {label} in {v:.4} ms.");
        }
        if !self.error_kinds.is_empty() {
            out.push_str("\nError distribution:\n");
            for (kind, n) in &self.error_kinds {
                let _ = writeln!(out, "  [{n}]\t{kind}");
            }
        }
        if self.unimplemented {
            out.push_str("\nThe server answered Unimplemented.\n");
        }
        if self.timed_out {
            out.push_str("\nThe overall deadline stopped the run early.\n");
        }
        for (key, value) in &self.extra {
            let _ = writeln!(out, "  {key}: {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_merged_histogram() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        for ms in 1..=500 {
            a.ok(Duration::from_millis(ms));
        }
        for ms in 501..=1000 {
            b.ok(Duration::from_millis(ms));
        }
        b.failure("DeadlineExceeded");
        b.status(&tonic::Status::unimplemented("no"));
        a.merge(&b);
        let s = Summary::new("put", 1002, Duration::from_secs(2), &a);
        assert_eq!((s.ok, s.errors), (1000, 2));
        assert!(!s.timed_out);
        assert!(s.unimplemented);
        assert!((s.ops_per_sec - 500.0).abs() < 1e-9);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(near(s.latency.p50_ms, 500.0), "{:?}", s.latency);
        assert!(near(s.latency.p90_ms, 900.0), "{:?}", s.latency);
        assert!(near(s.latency.p99_ms, 990.0), "{:?}", s.latency);
        assert!(near(s.latency.max_ms, 1000.0), "{:?}", s.latency);
        assert!(near(s.latency.min_ms, 1.0), "{:?}", s.latency);
        assert_eq!(s.error_kinds["Unimplemented"], 1);
    }

    #[test]
    fn json_line_is_flat_and_parses() {
        let mut r = Recorder::new();
        r.ok(Duration::from_micros(1500));
        let s = Summary::new("range", 3, Duration::from_secs(1), &r).with_extra("k", 7);
        let line = s.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["command"], "range");
        assert_eq!(v["ok"], 1);
        assert_eq!(v["timed_out"], true);
        assert_eq!(v["extra"]["k"], 7);
        assert!((v["p50_ms"].as_f64().unwrap() - 1.5).abs() < 0.01);
        assert!(s.to_text().contains("Requests/sec"));
    }

    #[test]
    fn empty_recorder_reports_zeros() {
        let s = Summary::new("put", 0, Duration::ZERO, &Recorder::new());
        assert_eq!(s.latency, Latency::default());
        assert_eq!(s.ops_per_sec, 0.0);
    }
}
