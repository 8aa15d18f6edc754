//! Flags oxcd accepts (so etcd command lines and config files keep working)
//! but does not act on yet. The server logs one warning per flag here that
//! was set to a non-default value. Remove a line when its feature lands.

use super::Config;

type Differs = fn(&Config, &Config) -> bool;

/// `(flag name, "was it changed from the default?")`.
const NOT_ACTED_ON: &[(&str, Differs)] = &[
    ("enable-v2", |c, d| c.enable_v2 != d.enable_v2),
    ("experimental-enable-v2v3", |c, d| {
        c.experimental_enable_v2v3 != d.experimental_enable_v2v3
    }),
    ("v2-deprecation", |c, d| {
        c.v2_deprecation != d.v2_deprecation
    }),
    ("proxy", |c, d| c.proxy != d.proxy),
    ("proxy-failure-wait", |c, d| {
        c.proxy_failure_wait_ms != d.proxy_failure_wait_ms
    }),
    ("proxy-refresh-interval", |c, d| {
        c.proxy_refresh_interval_ms != d.proxy_refresh_interval_ms
    }),
    ("proxy-dial-timeout", |c, d| {
        c.proxy_dial_timeout_ms != d.proxy_dial_timeout_ms
    }),
    ("proxy-write-timeout", |c, d| {
        c.proxy_write_timeout_ms != d.proxy_write_timeout_ms
    }),
    ("proxy-read-timeout", |c, d| {
        c.proxy_read_timeout_ms != d.proxy_read_timeout_ms
    }),
    ("discovery", |c, d| c.discovery != d.discovery),
    ("discovery-proxy", |c, d| {
        c.discovery_proxy != d.discovery_proxy
    }),
    ("discovery-srv", |c, d| c.discovery_srv != d.discovery_srv),
    ("discovery-srv-name", |c, d| {
        c.discovery_srv_name != d.discovery_srv_name
    }),
    ("log-package-levels", |c, d| {
        c.log_package_levels != d.log_package_levels
    }),
    ("experimental-backend-bbolt-freelist-type", |c, d| {
        c.experimental_backend_bbolt_freelist_type != d.experimental_backend_bbolt_freelist_type
    }),
    ("experimental-compaction-batch-limit", |c, d| {
        c.experimental_compaction_batch_limit != d.experimental_compaction_batch_limit
    }),
    ("experimental-memory-mlock", |c, d| {
        c.experimental_memory_mlock != d.experimental_memory_mlock
    }),
    ("socket-reuse-port", |c, d| {
        c.socket_reuse_port != d.socket_reuse_port
    }),
    ("socket-reuse-address", |c, d| {
        c.socket_reuse_address != d.socket_reuse_address
    }),
    ("experimental-enable-distributed-tracing", |c, d| {
        c.experimental_enable_distributed_tracing != d.experimental_enable_distributed_tracing
    }),
    ("experimental-downgrade-check-time", |c, d| {
        c.experimental_downgrade_check_time != d.experimental_downgrade_check_time
    }),
    ("experimental-txn-mode-write-with-shared-buffer", |c, d| {
        c.experimental_txn_mode_write_with_shared_buffer
            != d.experimental_txn_mode_write_with_shared_buffer
    }),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        |c, d| {
            c.experimental_bootstrap_defrag_threshold_megabytes
                != d.experimental_bootstrap_defrag_threshold_megabytes
        },
    ),
    ("experimental-local-address", |c, d| {
        c.experimental_local_address != d.experimental_local_address
    }),
    // The gateway calls gRPC in process; it has no client certificate.
    ("client-cert-file", |c, d| {
        c.client_tls.client_cert_file != d.client_tls.client_cert_file
    }),
    ("client-key-file", |c, d| {
        c.client_tls.client_key_file != d.client_tls.client_key_file
    }),
    ("self-signed-cert-validity", |c, d| {
        c.self_signed_cert_validity != d.self_signed_cert_validity
    }),
    ("experimental-wait-cluster-ready-timeout", |c, d| {
        c.experimental_wait_cluster_ready_timeout != d.experimental_wait_cluster_ready_timeout
    }),
    ("experimental-compact-hash-check-enabled", |c, d| {
        c.experimental_compact_hash_check_enabled != d.experimental_compact_hash_check_enabled
    }),
    ("experimental-compact-hash-check-time", |c, d| {
        c.experimental_compact_hash_check_time != d.experimental_compact_hash_check_time
    }),
    ("experimental-compaction-sleep-interval", |c, d| {
        c.experimental_compaction_sleep_interval != d.experimental_compaction_sleep_interval
    }),
    // oxcd always fsyncs: an acknowledged write is durable.
    ("unsafe-no-fsync", |c, d| {
        c.unsafe_no_fsync != d.unsafe_no_fsync
    }),
    ("grpc-keepalive-min-time", |c, d| {
        c.grpc_keepalive_min_time != d.grpc_keepalive_min_time
    }),
    ("experimental-warning-apply-duration", |c, d| {
        c.experimental_warning_apply_duration != d.experimental_warning_apply_duration
    }),
    ("experimental-warning-unary-request-duration", |c, d| {
        c.experimental_warning_unary_request_duration
            != d.experimental_warning_unary_request_duration
    }),
    ("experimental-distributed-tracing-address", |c, d| {
        c.experimental_distributed_tracing_address != d.experimental_distributed_tracing_address
    }),
    ("experimental-distributed-tracing-service-name", |c, d| {
        c.experimental_distributed_tracing_service_name
            != d.experimental_distributed_tracing_service_name
    }),
    ("experimental-distributed-tracing-instance-id", |c, d| {
        c.experimental_distributed_tracing_instance_id
            != d.experimental_distributed_tracing_instance_id
    }),
    ("experimental-distributed-tracing-sampling-rate", |c, d| {
        c.experimental_distributed_tracing_sampling_rate
            != d.experimental_distributed_tracing_sampling_rate
    }),
    ("discovery-fallback", |c, d| {
        c.discovery_fallback != d.discovery_fallback
    }),
    // Acts only with --enable-log-rotation.
    ("log-rotation-config-json", |c, d| {
        !c.enable_log_rotation && c.log_rotation_config_json != d.log_rotation_config_json
    }),
    ("experimental-stop-grpc-service-on-defrag", |c, d| {
        c.experimental_stop_grpc_service_on_defrag != d.experimental_stop_grpc_service_on_defrag
    }),
];

/// The names of every flag that is accepted but not acted on.
pub fn not_acted_on() -> impl Iterator<Item = &'static str> {
    NOT_ACTED_ON.iter().map(|(name, _)| *name)
}

impl Config {
    /// Names of accepted-but-not-acted-on flags whose value differs from
    /// etcd's default, in a stable order. The caller logs one warning each,
    /// e.g. `flag --unsafe-no-fsync is accepted but not implemented by oxcd; ignoring it`.
    #[must_use]
    pub fn unimplemented_flags_set(&self) -> Vec<&'static str> {
        let defaults = Config::default();
        NOT_ACTED_ON
            .iter()
            .filter(|(_, differs)| differs(self, &defaults))
            .map(|(name, _)| *name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_flags_are_reported() {
        assert!(Config::default().unimplemented_flags_set().is_empty());
        let c = Config {
            unsafe_no_fsync: true,
            discovery_srv: "example.com".into(),
            ..Config::default()
        };
        assert_eq!(
            c.unimplemented_flags_set(),
            ["discovery-srv", "unsafe-no-fsync"]
        );
    }
}
