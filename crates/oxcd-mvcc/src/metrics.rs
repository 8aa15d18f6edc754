//! The key space's Prometheus metrics, with etcd's names and help texts
//! (`mvcc/metrics.go`, `mvcc/backend/metrics.go`). They live in the
//! process-wide default registry, as etcd's do.

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounter, Registry};
use std::sync::LazyLock;

/// The metrics, registered on first use ([`init`]).
pub(crate) struct Metrics {
    /// `etcd_mvcc_*` and its `etcd_debugging_mvcc_*` twin, for each call.
    pub(crate) put: [IntCounter; 2],
    pub(crate) delete: [IntCounter; 2],
    pub(crate) range: [IntCounter; 2],
    pub(crate) txn: [IntCounter; 2],
    /// `etcd_disk_backend_commit_duration_seconds`: durable commits only
    /// (etcd's batch commits every 100 ms or 10k writes).
    pub(crate) backend_commit: Histogram,
    pub(crate) defrag: Histogram,
    /// `etcd_disk_defrag_inflight`: 1 while a defragment runs.
    pub(crate) defrag_inflight: prometheus::IntGauge,
    pub(crate) hash: Histogram,
    pub(crate) hash_rev: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| build(prometheus::default_registry()));

/// The metrics; the first call registers them.
pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

/// Registers the metrics now, so a scrape shows them before first use.
pub fn init() {
    LazyLock::force(&METRICS);
}

fn counter_pair(r: &Registry, what: &str, help: &str) -> [IntCounter; 2] {
    ["etcd_mvcc", "etcd_debugging_mvcc"].map(|prefix| {
        let c = IntCounter::new(format!("{prefix}_{what}_total"), help)
            .unwrap_or_else(|e| panic!("metric {what}: {e}"));
        let _ = r.register(Box::new(c.clone()));
        c
    })
}

fn histogram(r: &Registry, name: &str, help: &str, start: f64, count: usize) -> Histogram {
    let buckets = exponential_buckets(start, 2.0, count).unwrap_or_default();
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

fn build(r: &Registry) -> Metrics {
    Metrics {
        put: counter_pair(r, "put", "Total number of puts seen by this member."),
        delete: counter_pair(r, "delete", "Total number of deletes seen by this member."),
        range: counter_pair(r, "range", "Total number of ranges seen by this member."),
        txn: counter_pair(r, "txn", "Total number of txns seen by this member."),
        backend_commit: histogram(
            r,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            0.001,
            14,
        ),
        defrag: histogram(
            r,
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
            0.1,
            13,
        ),
        defrag_inflight: {
            let g = prometheus::IntGauge::new(
                "etcd_disk_defrag_inflight",
                "Whether or not defrag is active on the member. 1 means active, 0 means not.",
            )
            .unwrap_or_else(|e| panic!("metric defrag inflight: {e}"));
            let _ = r.register(Box::new(g.clone()));
            g
        },
        hash: histogram(
            r,
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation.",
            0.01,
            15,
        ),
        hash_rev: histogram(
            r,
            "etcd_mvcc_hash_rev_duration_seconds",
            "The latency distribution of storage hash by revision operation.",
            0.01,
            15,
        ),
    }
}

/// The calls one transaction made, added to the counters when it ends
/// (etcd's `metricsTxnWrite`): ranges, puts and deletes each count, and a
/// transaction that made more than one call counts as a txn.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ranges: u64,
    pub(crate) puts: u64,
    pub(crate) deletes: u64,
}

impl Tally {
    pub(crate) fn flush(&mut self) {
        let t = std::mem::take(self);
        if t.ranges + t.puts + t.deletes == 0 {
            return;
        }
        let m = get();
        for (counters, n) in [
            (&m.range, t.ranges),
            (&m.put, t.puts),
            (&m.delete, t.deletes),
        ] {
            if n > 0 {
                counters.iter().for_each(|c| c.inc_by(n));
            }
        }
        if t.ranges + t.puts + t.deletes > 1 {
            m.txn.iter().for_each(IntCounter::inc);
        }
    }
}
