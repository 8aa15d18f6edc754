//! The key space's Prometheus metrics, with etcd's names and help texts
//! (`mvcc/metrics.go`, `mvcc/backend/metrics.go`). They live in the
//! process-wide default registry, as etcd's do.

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
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
    /// Each hold of the index lock by the compaction (etcd observes its
    /// one hold of the whole walk).
    pub(crate) index_compaction_pause_ms: Histogram,
    /// Each batch of deletions' hold of the backend's write lock.
    pub(crate) db_compaction_pause_ms: Histogram,
    /// A whole compaction's deletions.
    pub(crate) db_compaction_total_ms: Histogram,
    pub(crate) db_compaction_keys: IntCounter,
    pub(crate) watch_streams: IntGauge,
    /// Events handed to watch streams (etcd counts them as its streams
    /// take them from the store, as here).
    pub(crate) events: IntCounter,
    /// Events queued for watch streams and not yet taken by them.
    pub(crate) pending_events: IntGauge,
    /// Bytes of keys and values put.
    pub(crate) total_put_size: IntGauge,
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

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn int_counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn build(r: &Registry) -> Metrics {
    Metrics {
        index_compaction_pause_ms: histogram(
            r,
            "etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds",
            "Bucketed histogram of index compaction pause duration.",
            0.5,
            14,
        ),
        db_compaction_pause_ms: histogram(
            r,
            "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds",
            "Bucketed histogram of db compaction pause duration.",
            1.0,
            13,
        ),
        db_compaction_total_ms: histogram(
            r,
            "etcd_debugging_mvcc_db_compaction_total_duration_milliseconds",
            "Bucketed histogram of db compaction total duration.",
            100.0,
            14,
        ),
        db_compaction_keys: int_counter(
            r,
            "etcd_debugging_mvcc_db_compaction_keys_total",
            "Total number of db keys compacted.",
        ),
        watch_streams: int_gauge(
            r,
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams.",
        ),
        events: int_counter(
            r,
            "etcd_debugging_mvcc_events_total",
            "Total number of events sent by this member.",
        ),
        pending_events: int_gauge(
            r,
            "etcd_debugging_mvcc_pending_events_total",
            "Total number of pending events to be sent.",
        ),
        total_put_size: int_gauge(
            r,
            "etcd_debugging_mvcc_total_put_size_in_bytes",
            "The total size of put kv pairs seen by this member.",
        ),
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
    /// Bytes of the keys and values put.
    pub(crate) put_size: u64,
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
        if t.put_size > 0 {
            m.total_put_size
                .add(i64::try_from(t.put_size).unwrap_or(i64::MAX));
        }
    }
}
