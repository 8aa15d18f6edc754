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
    /// `etcd_network_peer_received_failures_total{From}`.
    pub(crate) peer_received_failures: IntCounterVec,
    /// `etcd_server_heartbeat_send_failures_total`: the leader sent a
    /// heartbeat more than two intervals after the previous one.
    pub(crate) heartbeat_send_failures: prometheus::IntCounter,
    /// `etcd_network_snapshot_send_*{To}` and `_receive_*{From}`.
    pub(crate) snapshot_send: SnapshotTransfers,
    pub(crate) snapshot_receive: SnapshotTransfers,
    /// Saving a `.snap` file: encoding, fsync, the whole save.
    pub(crate) snap_marshalling: Histogram,
    pub(crate) snap_fsync: Histogram,
    pub(crate) snap_save: Histogram,
    /// Receiving a backend snapshot (`.snap.db`): its fsync, the whole
    /// save.
    pub(crate) snap_db_fsync: Histogram,
    pub(crate) snap_db_save: Histogram,
}

fn histogram(
    r: &prometheus::Registry,
    name: &str,
    help: &str,
    start: f64,
    count: usize,
) -> Histogram {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .buckets(exponential_buckets(start, 2.0, count).unwrap_or_default()),
    )
    .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

/// One direction of backend snapshot transfers, as etcd counts them.
pub(crate) struct SnapshotTransfers {
    pub(crate) success: IntCounterVec,
    pub(crate) failures: IntCounterVec,
    pub(crate) inflights: IntGaugeVec,
    pub(crate) duration: HistogramVec,
}

impl SnapshotTransfers {
    fn new(r: &prometheus::Registry, verb: &str, plural: &str, label: &str) -> SnapshotTransfers {
        let name = |what: &str| format!("etcd_network_snapshot_{verb}_{what}");
        let t = SnapshotTransfers {
            success: IntCounterVec::new(
                Opts::new(
                    name("success"),
                    format!("Total number of successful snapshot {plural}"),
                ),
                &[label],
            )
            .unwrap_or_else(|e| panic!("snapshot metric: {e}")),
            failures: IntCounterVec::new(
                Opts::new(
                    name("failures"),
                    format!("Total number of snapshot {verb} failures"),
                ),
                &[label],
            )
            .unwrap_or_else(|e| panic!("snapshot metric: {e}")),
            inflights: IntGaugeVec::new(
                Opts::new(
                    name("inflights_total"),
                    format!("Total number of inflight snapshot {plural}"),
                ),
                &[label],
            )
            .unwrap_or_else(|e| panic!("snapshot metric: {e}")),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    name("total_duration_seconds"),
                    format!("Total latency distributions of v3 snapshot {plural}"),
                )
                .buckets(exponential_buckets(0.1, 2.0, 10).unwrap_or_default()),
                &[label],
            )
            .unwrap_or_else(|e| panic!("snapshot metric: {e}")),
        };
        let _ = r.register(Box::new(t.success.clone()));
        let _ = r.register(Box::new(t.failures.clone()));
        let _ = r.register(Box::new(t.inflights.clone()));
        let _ = r.register(Box::new(t.duration.clone()));
        t
    }

    /// Counts one transfer with `peer` (hex ID) from start to end: the
    /// in-flight gauge while it runs, then its outcome and duration.
    pub(crate) fn track(&'static self, peer: u64) -> Transfer {
        let peer = format!("{peer:x}");
        self.inflights.with_label_values(&[peer.as_str()]).inc();
        Transfer {
            metrics: self,
            peer,
            started: std::time::Instant::now(),
            done: false,
        }
    }
}

/// A snapshot transfer being counted; dropped without [`Transfer::ok`] it
/// counts as failed.
pub(crate) struct Transfer {
    metrics: &'static SnapshotTransfers,
    peer: String,
    started: std::time::Instant,
    done: bool,
}

impl Transfer {
    pub(crate) fn ok(mut self) {
        self.done = true;
        let p = [self.peer.as_str()];
        self.metrics.success.with_label_values(&p).inc();
        self.metrics
            .duration
            .with_label_values(&p)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let p = [self.peer.as_str()];
        self.metrics.inflights.with_label_values(&p).dec();
        if !self.done {
            self.metrics.failures.with_label_values(&p).inc();
        }
    }
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
    let wal_fsync = histogram(
        r,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        0.001,
        14,
    );
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
        peer_received_failures: vec(
            "etcd_network_peer_received_failures_total",
            "The total number of receive failures from peers.",
            "From",
        ),
        heartbeat_send_failures: prometheus::IntCounter::new(
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        )
        .unwrap_or_else(|e| panic!("heartbeat metric: {e}")),
        snapshot_send: SnapshotTransfers::new(r, "send", "sends", "To"),
        snapshot_receive: SnapshotTransfers::new(r, "receive", "receives", "From"),
        snap_marshalling: histogram(
            r,
            "etcd_debugging_snap_save_marshalling_duration_seconds",
            "The marshalling cost distributions of save called by snapshot.",
            0.001,
            14,
        ),
        snap_fsync: histogram(
            r,
            "etcd_snap_fsync_duration_seconds",
            "The latency distributions of fsync called by snap.",
            0.001,
            14,
        ),
        snap_save: histogram(
            r,
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot.",
            0.001,
            14,
        ),
        snap_db_fsync: histogram(
            r,
            "etcd_snap_db_fsync_duration_seconds",
            "The latency distributions of fsyncing .snap.db file",
            0.001,
            14,
        ),
        snap_db_save: histogram(
            r,
            "etcd_snap_db_save_total_duration_seconds",
            "The total latency distributions of v3 snapshot save",
            0.1,
            10,
        ),
    };
    let _ = r.register(Box::new(m.peer_received_failures.clone()));
    let _ = r.register(Box::new(m.heartbeat_send_failures.clone()));
    let _ = r.register(Box::new(m.active_peers.clone()));
    let _ = r.register(Box::new(m.disconnected_peers.clone()));
    let _ = r.register(Box::new(m.peer_round_trip.clone()));
    let _ = r.register(Box::new(m.wal_write_bytes.clone()));
    let _ = r.register(Box::new(m.peer_sent_bytes.clone()));
    let _ = r.register(Box::new(m.peer_received_bytes.clone()));
    let _ = r.register(Box::new(m.peer_sent_failures.clone()));
    m
}
