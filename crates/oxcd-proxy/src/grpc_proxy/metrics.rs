//! The proxy's own metrics, with etcd's names (`etcd_grpc_proxy_*`),
//! served at `/proxy/metrics` (etcd 3.5's path; etcd 3.4's proxy
//! registered them but never served them).

use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

/// The `etcd_grpc_proxy_*` families.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Client watchers served by a shared upstream watch, beyond the first.
    pub watchers_coalescing: IntGauge,
    /// Events delivered to more than one watcher from one upstream event.
    pub events_coalescing: IntCounter,
    /// Answers in the range cache.
    pub cache_keys: IntGauge,
    /// Range cache hits (a gauge, as etcd declares it).
    pub cache_hits: IntGauge,
    /// Range cache misses (a gauge, as etcd declares it).
    pub cache_misses: IntGauge,
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    reg.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Metrics {
    /// Registers the families in a registry of their own.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events_coalescing = IntCounter::new(
            "etcd_grpc_proxy_events_coalescing_total",
            "Total number of events coalescing",
        )
        .expect("valid metric name");
        registry
            .register(Box::new(events_coalescing.clone()))
            .expect("registered once");
        Metrics {
            watchers_coalescing: gauge(
                &registry,
                "etcd_grpc_proxy_watchers_coalescing_total",
                "Total number of current watchers coalescing",
            ),
            events_coalescing,
            cache_keys: gauge(
                &registry,
                "etcd_grpc_proxy_cache_keys_total",
                "Total number of keys/ranges cached",
            ),
            cache_hits: gauge(
                &registry,
                "etcd_grpc_proxy_cache_hits_total",
                "Total number of cache hits",
            ),
            cache_misses: gauge(
                &registry,
                "etcd_grpc_proxy_cache_misses_total",
                "Total number of cache misses",
            ),
            registry,
        }
    }

    /// The families in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
