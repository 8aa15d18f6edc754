//! The member's Prometheus metrics with etcd's names, types and help
//! texts (`etcdserver/metrics.go`, `mvcc/metrics.go`), and the text a
//! scrape of `/metrics` answers.
//!
//! Events (leader changes, failed proposals, health checks) are counted
//! where they happen, in the process-wide default registry as etcd does.
//! State (leader, indexes, sizes, keys, revisions, file descriptors) is
//! read from the member when scraped, so it costs the request path
//! nothing.

use crate::core::Core;
use crate::version::SERVER_VERSION;
use prometheus::{
    Encoder, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::{Arc, LazyLock};

/// Event counters of the server.
pub(crate) struct Counters {
    pub(crate) leader_changes: IntCounter,
    pub(crate) proposals_failed: IntCounter,
    pub(crate) proposals_pending: IntGauge,
    pub(crate) health_success: IntCounter,
    pub(crate) health_failures: IntCounter,
    /// `etcd_server_client_requests_total{type,client_api_version}`.
    pub(crate) client_requests: IntCounterVec,
    pub(crate) lease_expired: IntCounter,
    pub(crate) read_indexes_failed: IntCounter,
    pub(crate) slow_read_indexes: IntCounter,
    pub(crate) snapshot_apply_in_progress: IntGauge,
    pub(crate) learner_promote_successes: IntCounter,
    /// `etcd_server_learner_promote_failures{Reason}`, the error's text.
    pub(crate) learner_promote_failures: IntCounterVec,
    pub(crate) slow_applies: IntCounter,
    pub(crate) lease_granted: IntCounter,
    pub(crate) lease_revoked: IntCounter,
    /// Renewals on the member that keeps the leases alive (the leader).
    pub(crate) lease_renewed: IntCounter,
    /// `etcd_debugging_lease_ttl_total`: granted TTLs, in seconds.
    pub(crate) lease_ttl: Histogram,
    /// `etcd_network_server_stream_failures_total{Type,API}`: a watch or
    /// keep-alive stream that failed to receive or send.
    pub(crate) stream_failures: IntCounterVec,
    /// `etcd_disk_backend_snapshot_duration_seconds`: a Snapshot RPC's
    /// copy of the backend.
    pub(crate) backend_snapshot: Histogram,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let r = prometheus::default_registry();
    let c = Counters {
        leader_changes: counter(
            r,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
        ),
        proposals_failed: counter(
            r,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
        ),
        proposals_pending: gauge(
            r,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
        ),
        health_success: counter(
            r,
            "etcd_server_health_success",
            "The total number of successful health checks",
        ),
        health_failures: counter(
            r,
            "etcd_server_health_failures",
            "The total number of failed health checks",
        ),
        client_requests: {
            let v = IntCounterVec::new(
                Opts::new(
                    "etcd_server_client_requests_total",
                    "The total number of client requests per client version.",
                ),
                &["type", "client_api_version"],
            )
            .unwrap_or_else(|e| panic!("metric: {e}"));
            let _ = r.register(Box::new(v.clone()));
            v
        },
        lease_expired: counter(
            r,
            "etcd_debugging_server_lease_expired_total",
            "The total number of expired leases.",
        ),
        read_indexes_failed: counter(
            r,
            "etcd_server_read_indexes_failed_total",
            "The total number of failed read indexes seen.",
        ),
        slow_read_indexes: counter(
            r,
            "etcd_server_slow_read_indexes_total",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
        ),
        snapshot_apply_in_progress: gauge(
            r,
            "etcd_server_snapshot_apply_in_progress_total",
            "1 if the server is applying the incoming snapshot. 0 if none.",
        ),
        learner_promote_successes: counter(
            r,
            "etcd_server_learner_promote_successes",
            "The total number of successful learner promotions while this member is leader.",
        ),
        learner_promote_failures: counter_vec(
            r,
            "etcd_server_learner_promote_failures",
            "The total number of failed learner promotions (likely learner not ready) while this member is leader.",
            &["Reason"],
        ),
        slow_applies: counter(
            r,
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
        ),
        lease_granted: counter(
            r,
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
        ),
        lease_revoked: counter(
            r,
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
        ),
        lease_renewed: counter(
            r,
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
        ),
        lease_ttl: histogram(
            r,
            "etcd_debugging_lease_ttl_total",
            "Bucketed histogram of lease TTLs.",
            1.0,
            24,
        ),
        stream_failures: counter_vec(
            r,
            "etcd_network_server_stream_failures_total",
            "The total number of stream failures from the local server.",
            &["Type", "API"],
        ),
        backend_snapshot: histogram(
            r,
            "etcd_disk_backend_snapshot_duration_seconds",
            "The latency distribution of backend snapshots.",
            0.01,
            17,
        ),
    };
    c
});

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(v.clone()));
    v
}

fn histogram(r: &Registry, name: &str, help: &str, start: f64, count: usize) -> Histogram {
    let buckets = prometheus::exponential_buckets(start, 2.0, count).unwrap_or_default();
    let h = Histogram::with_opts(prometheus::HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

/// The server's event counters; the first call registers them.
pub(crate) fn counters() -> &'static Counters {
    &COUNTERS
}

/// Registers every process-wide metric (server, gRPC, key space,
/// consensus, process), so that a scrape lists them before first use, as
/// etcd's does.
pub fn init() {
    LazyLock::force(&COUNTERS);
    crate::v3rpc::metrics::init();
    oxcd_mvcc::metrics::init();
    oxcd_raft::metrics::init();
    static PROCESS: LazyLock<()> = LazyLock::new(|| {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        let _ = prometheus::default_registry().register(Box::new(pc));
    });
    LazyLock::force(&PROCESS);
}

/// Counts one client request in `etcd_server_client_requests_total`;
/// `unary` or a stream, with the client's `client-api-version` header.
/// The usual versions' counters are resolved once, so the common case
/// costs one atomic addition rather than a label lookup.
pub(crate) fn count_client_request(unary: bool, api_version: Option<&[u8]>) {
    const KNOWN: [&str; 8] = ["3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "unknown"];
    static CACHED: LazyLock<[[IntCounter; 8]; 2]> = LazyLock::new(|| {
        ["unary", "stream"]
            .map(|kind| KNOWN.map(|v| counters().client_requests.with_label_values(&[kind, v])))
    });
    let label = api_version_label(api_version);
    let row = &CACHED[usize::from(!unary)];
    match KNOWN.iter().position(|k| *k == label) {
        Some(i) => row[i].inc(),
        None => counters()
            .client_requests
            .with_label_values(&[if unary { "unary" } else { "stream" }, label])
            .inc(),
    }
}

/// The `client-api-version` label: what the client sent when it looks like
/// a version (`3.4`), `unknown` otherwise, so a client cannot make the
/// label set grow without bound.
fn api_version_label(header: Option<&[u8]>) -> &str {
    match header.and_then(|h| std::str::from_utf8(h).ok()) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 8
                && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            v
        }
        _ => "unknown",
    }
}

/// The gauges read from one member at scrape time.
pub struct Scrape {
    core: Arc<Core>,
    quota_bytes: i64,
    registry: Registry,
    g: Gauges,
}

struct Gauges {
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    quota: IntGauge,
    server_id: IntGaugeVec,
    db_size: [IntGauge; 2],
    db_in_use: IntGauge,
    keys: IntGauge,
    current_rev: IntGauge,
    compact_rev: IntGauge,
    /// Set once the cluster has decided its version, to the replicated
    /// one (`major.minor`), as etcd sets it.
    cluster_version: IntGaugeVec,
    auth_revision: IntGauge,
    open_read_txns: IntGauge,
    fd_used: IntGauge,
    fd_limit: IntGauge,
    /// `process_virtual_memory_max_bytes`: the address-space limit, -1
    /// when unlimited (as Go's process collector reports it).
    vm_max: IntGauge,
    /// promhttp's own scrape counters, which etcd's handler serves.
    scrapes_in_flight: IntGauge,
    scrapes: IntCounterVec,
    watchers: IntGauge,
    slow_watchers: IntGauge,
}

impl Scrape {
    /// The scrape of `core`'s metrics; `quota_bytes` is the effective
    /// backend quota.
    pub fn new(core: Arc<Core>, quota_bytes: i64) -> Scrape {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| gauge(&registry, name, help);
        let labelled = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let size_help = "Total size of the underlying database physically allocated in bytes.";
        let g = Gauges {
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            quota: gauge(
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            server_id: labelled(
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                "server_id",
            ),
            db_size: [
                gauge("etcd_mvcc_db_total_size_in_bytes", size_help),
                gauge("etcd_debugging_mvcc_db_total_size_in_bytes", size_help),
            ],
            db_in_use: gauge(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys: gauge("etcd_debugging_mvcc_keys_total", "Total number of keys."),
            current_rev: gauge(
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_rev: gauge(
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            watchers: gauge(
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            slow_watchers: gauge(
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),
            cluster_version: labelled(
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
                "cluster_version",
            ),
            open_read_txns: gauge(
                "etcd_mvcc_db_open_read_transactions",
                "The number of currently open read transactions",
            ),
            auth_revision: gauge(
                "etcd_debugging_auth_revision",
                "The current revision of auth store.",
            ),
            vm_max: gauge(
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
            ),
            scrapes_in_flight: gauge(
                "promhttp_metric_handler_requests_in_flight",
                "Current number of scrapes being served.",
            ),
            scrapes: {
                let v = IntCounterVec::new(
                    Opts::new(
                        "promhttp_metric_handler_requests_total",
                        "Total number of scrapes by HTTP status code.",
                    ),
                    &["code"],
                )
                .unwrap_or_else(|e| panic!("metric scrapes: {e}"));
                let _ = registry.register(Box::new(v.clone()));
                for code in ["200", "500", "503"] {
                    v.with_label_values(&[code]);
                }
                v
            },
            fd_used: gauge("os_fd_used", "The number of used file descriptors."),
            fd_limit: gauge("os_fd_limit", "The file descriptor limit."),
        };
        labelled(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "server_version",
        )
        .with_label_values(&[SERVER_VERSION])
        .set(1);
        Scrape {
            core,
            quota_bytes,
            registry,
            g,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.g.scrapes_in_flight.inc();
        self.refresh();
        let mut families = prometheus::gather();
        families.extend(self.registry.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        let code = match prometheus::TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => "200",
            Err(e) => {
                tracing::warn!(error = %e, "could not encode metrics");
                "500"
            }
        };
        self.g.scrapes_in_flight.dec();
        self.g.scrapes.with_label_values(&[code]).inc();
        out
    }

    fn refresh(&self) {
        let (c, g) = (&self.core, &self.g);
        let st = c.writes.status();
        g.has_leader.set(i64::from(st.leader != 0));
        g.is_leader.set(i64::from(st.leader == c.member.id));
        g.is_learner.set(i64::from(c.is_learner()));
        g.committed
            .set(i64::try_from(st.commit).unwrap_or(i64::MAX));
        g.applied.set(i64::try_from(st.applied).unwrap_or(i64::MAX));
        g.quota.set(self.quota_bytes);
        g.server_id.reset();
        g.server_id
            .with_label_values(&[format!("{:x}", c.member.id).as_str()])
            .set(1);
        let size = i64::try_from(c.store.db_size().unwrap_or(0)).unwrap_or(i64::MAX);
        g.db_size.iter().for_each(|s| s.set(size));
        g.db_in_use
            .set(i64::try_from(c.store.db_size_in_use()).unwrap_or(i64::MAX));
        g.keys
            .set(i64::try_from(c.store.live_keys()).unwrap_or(i64::MAX));
        g.current_rev.set(c.store.rev());
        g.compact_rev.set(c.store.compact_rev());
        let (synced, unsynced, victims) = c.watchable.group_sizes();
        g.watchers
            .set(i64::try_from(synced + unsynced + victims).unwrap_or(i64::MAX));
        g.slow_watchers
            .set(i64::try_from(unsynced + victims).unwrap_or(i64::MAX));
        g.cluster_version.reset();
        if let Some(v) = c.members.cluster_version() {
            g.cluster_version
                .with_label_values(&[crate::version::major_minor(&v)])
                .set(1);
        }
        g.open_read_txns
            .set(i64::try_from(c.store.open_read_txns()).unwrap_or(i64::MAX));
        g.auth_revision
            .set(i64::try_from(c.auth_view().revision()).unwrap_or(i64::MAX));
        let vm = rustix::process::getrlimit(rustix::process::Resource::As)
            .current
            .map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        g.vm_max.set(vm);
        let (used, limit) = file_descriptors();
        g.fd_used.set(used);
        g.fd_limit.set(limit);
    }
}

/// Open file descriptors and the soft limit (etcd's `os_fd_used` and
/// `os_fd_limit`).
fn file_descriptors() -> (i64, i64) {
    let used = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as i64)
        .unwrap_or(0);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    (used, limit)
}
