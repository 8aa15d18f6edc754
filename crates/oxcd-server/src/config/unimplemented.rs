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
    ("enable-pprof", |c, d| c.enable_pprof != d.enable_pprof),
    ("log-package-levels", |c, d| {
        c.log_package_levels != d.log_package_levels
    }),
    ("enable-log-rotation", |c, d| {
        c.enable_log_rotation != d.enable_log_rotation
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
    // Auth is not built yet; these only shape it.
    ("auth-token", |c, d| c.auth_token != d.auth_token),
    ("bcrypt-cost", |c, d| c.bcrypt_cost != d.bcrypt_cost),
    ("auth-token-ttl", |c, d| {
        c.auth_token_ttl != d.auth_token_ttl
    }),
    ("log-rotation-config-json", |c, d| {
        c.log_rotation_config_json != d.log_rotation_config_json
    }),
    ("cors", |c, d| c.cors != d.cors),
    ("host-whitelist", |c, d| {
        c.host_whitelist != d.host_whitelist
    }),
    ("experimental-stop-grpc-service-on-defrag", |c, d| {
        c.experimental_stop_grpc_service_on_defrag != d.experimental_stop_grpc_service_on_defrag
    }),
];

impl Config {
    /// Names of accepted-but-not-acted-on flags whose value differs from
    /// etcd's default, in a stable order. The caller logs one warning each,
    /// e.g. `flag --enable-pprof is accepted but not implemented by oxcd; ignoring it`.
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
            enable_pprof: true,
            discovery_srv: "example.com".into(),
            ..Config::default()
        };
        assert_eq!(
            c.unimplemented_flags_set(),
            ["discovery-srv", "enable-pprof"]
        );
    }
}
