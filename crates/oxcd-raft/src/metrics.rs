//! Consensus-side Prometheus metrics with etcd's names and help texts
//! (`wal/metrics.go`, `rafthttp/metrics.go`), in the process-wide default
//! registry as etcd's are.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};
use std::sync::LazyLock;

/// The metrics, registered on first use ([`init`]).
pub(crate) struct Metrics {
    /// `etcd_disk_wal_fsync_duration_seconds`.
    pub(crate) wal_fsync: Histogram,
    /// `etcd_disk_wal_write_bytes_total` (a gauge in etcd, too).
    pub(crate) wal_write_bytes: IntGauge,
    /// `etcd_network_peer_sent_bytes_total{To}`.
    pub(crate) peer_sent_bytes: IntCounterVec,
    /// `etcd_network_peer_received_bytes_total{From}`.
    pub(crate) peer_received_bytes: IntCounterVec,
    /// `etcd_network_peer_sent_failures_total{To}`.
    pub(crate) peer_sent_failures: IntCounterVec,
    /// `etcd_network_peer_round_trip_time_seconds{To}`.
    pub(crate) peer_round_trip: HistogramVec,
    /// `etcd_network_active_peers{Local,Remote}`.
    pub(crate) active_peers: IntGaugeVec,
    /// `etcd_network_disconnected_peers_total{Local,Remote}`.
    pub(crate) disconnected_peers: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(build);

pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

/// Registers the metrics now, so a scrape shows them before first use.
pub fn init() {
    LazyLock::force(&METRICS);
}

fn build() -> Metrics {
    let r = prometheus::default_registry();
    let wal_fsync = Histogram::with_opts(
        HistogramOpts::new(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        )
        .buckets(exponential_buckets(0.001, 2.0, 14).unwrap_or_default()),
    )
    .unwrap_or_else(|e| panic!("wal fsync metric: {e}"));
    let wal_write_bytes = IntGauge::new(
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
    )
    .unwrap_or_else(|e| panic!("wal bytes metric: {e}"));
    let vec = |name: &str, help: &str, label: &str| {
        IntCounterVec::new(Opts::new(name, help), &[label])
            .unwrap_or_else(|e| panic!("metric {name}: {e}"))
    };
    let m = Metrics {
        wal_fsync,
        wal_write_bytes,
        peer_sent_bytes: vec(
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "To",
        ),
        peer_received_bytes: vec(
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "From",
        ),
        peer_sent_failures: vec(
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "To",
        ),
        peer_round_trip: HistogramVec::new(
            HistogramOpts::new(
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
            &["To"],
        )
        .unwrap_or_else(|e| panic!("rtt metric: {e}")),
        active_peers: IntGaugeVec::new(
            Opts::new(
                "etcd_network_active_peers",
                "The current number of active peer connections.",
            ),
            &["Local", "Remote"],
        )
        .unwrap_or_else(|e| panic!("active peers metric: {e}")),
        disconnected_peers: IntCounterVec::new(
            Opts::new(
                "etcd_network_disconnected_peers_total",
                "The total number of disconnected peers.",
            ),
            &["Local", "Remote"],
        )
        .unwrap_or_else(|e| panic!("disconnected peers metric: {e}")),
    };
    let _ = r.register(Box::new(m.active_peers.clone()));
    let _ = r.register(Box::new(m.disconnected_peers.clone()));
    let _ = r.register(Box::new(m.peer_round_trip.clone()));
    let _ = r.register(Box::new(m.wal_fsync.clone()));
    let _ = r.register(Box::new(m.wal_write_bytes.clone()));
    let _ = r.register(Box::new(m.peer_sent_bytes.clone()));
    let _ = r.register(Box::new(m.peer_received_bytes.clone()));
    let _ = r.register(Box::new(m.peer_sent_failures.clone()));
    m
}
