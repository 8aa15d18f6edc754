//! The `--config-file` YAML, read the way etcd reads it (`embed.ConfigFromFile`
//! plus etcdmain's `configProxy`).
//!
//! etcd converts YAML to JSON and decodes that into Go structs, which fixes
//! the rules copied here: keys are the flag names, matched ASCII
//! case-insensitively; unknown keys are ignored; `null` leaves the default;
//! durations are integer nanoseconds (a string such as `5s` is a type error);
//! URL lists, `cors` and `host-whitelist` are comma-separated strings;
//! `cipher-suites` and `log-outputs` are lists; TLS settings live under
//! `client-transport-security` / `peer-transport-security`. JSON object keys
//! come out sorted, so the first type error reported is the first bad key in
//! alphabetical order, as with etcd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::urls::{parse_urls, url_string};
use super::{ClusterState, Config, ConfigError, DiscoveryFallback, ProxyMode, TlsInfo};

/// One value under decoding, with what an error about it must say.
struct Field<'a> {
    strukt: &'static str,
    path: String,
    value: &'a Value,
}

impl Field<'_> {
    fn type_error(&self, found: String, go_type: &'static str) -> ConfigError {
        ConfigError::YamlType {
            found,
            strukt: self.strukt,
            field: self.path.clone(),
            go_type,
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.type_error(kind(other), "string")),
        }
    }

    fn path_buf(&self) -> Result<PathBuf, ConfigError> {
        self.string().map(PathBuf::from)
    }

    fn bool(&self) -> Result<bool, ConfigError> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            other => Err(self.type_error(kind(other), "bool")),
        }
    }

    fn uint(&self, go_type: &'static str, max: u64) -> Result<u64, ConfigError> {
        match self.value {
            Value::Number(n) => n
                .as_u64()
                .filter(|v| *v <= max)
                .ok_or_else(|| self.type_error(format!("number {n}"), go_type)),
            other => Err(self.type_error(kind(other), go_type)),
        }
    }

    fn int(&self, go_type: &'static str) -> Result<i64, ConfigError> {
        match self.value {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| self.type_error(format!("number {n}"), go_type)),
            other => Err(self.type_error(kind(other), go_type)),
        }
    }

    /// `time.Duration`: integer nanoseconds. Negative values are refused
    /// (etcd would take them; nothing in etcd gives them a meaning).
    fn duration(&self) -> Result<Duration, ConfigError> {
        let ns = self.int("time.Duration")?;
        u64::try_from(ns)
            .map(Duration::from_nanos)
            .map_err(|_| self.type_error(format!("number {ns}"), "time.Duration"))
    }

    fn strings(&self) -> Result<Vec<String>, ConfigError> {
        let Value::Array(items) = self.value else {
            return Err(self.type_error(kind(self.value), "[]string"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.type_error(kind(other), "string")),
            })
            .collect()
    }

    fn object(&self, go_type: &'static str) -> Result<&Map<String, Value>, ConfigError> {
        match self.value {
            Value::Object(m) => Ok(m),
            other => Err(self.type_error(kind(other), go_type)),
        }
    }
}

/// Go's name for a JSON value's kind in `cannot unmarshal <kind>`.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
    .to_string()
}

/// Raw strings that etcd post-processes after decoding.
#[derive(Default)]
struct Deferred {
    urls: [(&'static str, String); 5],
    cors: String,
    host_whitelist: String,
    cluster_state: String,
}

impl Config {
    /// Reads an etcd YAML config file; see the module doc for the rules.
    /// The result has been through [`Config::validate`], as etcd's is.
    ///
    /// # Errors
    /// Unreadable file, bad YAML, a value of the wrong type, a bad URL list,
    /// or a failed validation, each with etcd's message.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile {
            path: path.display().to_string(),
            reason: io_reason(&e),
        })?;
        Self::from_yaml_str(&text)
    }

    /// [`Config::from_yaml_file`] on text already read.
    ///
    /// # Errors
    /// As [`Config::from_yaml_file`], minus the read error.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let doc: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        let empty = Map::new();
        let map = match &doc {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(ConfigError::Yaml(format!(
                    "cannot unmarshal {} into Go value of type embed.configYAML",
                    kind(other)
                )))
            }
        };
        let mut cfg = Config::default();
        let default_cluster = cfg.initial_cluster.clone();
        let mut deferred = Deferred {
            urls: [
                ("listen-peer-urls", String::new()),
                ("listen-client-urls", String::new()),
                ("initial-advertise-peer-urls", String::new()),
                ("advertise-client-urls", String::new()),
                ("listen-metrics-urls", String::new()),
            ],
            ..Deferred::default()
        };
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let f = Field {
                strukt: "configYAML",
                path: key.clone(),
                value,
            };
            cfg.decode_key(&key, &f, &mut deferred)?;
        }
        cfg.finish_yaml(deferred, &default_cluster)?;
        cfg.validate()?;
        for (key, value) in map {
            if value.is_null() {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let f = Field {
                strukt: "configProxy",
                path: key.clone(),
                value,
            };
            cfg.decode_proxy_key(&key, &f)?;
        }
        Ok(cfg)
    }

    fn decode_key(
        &mut self,
        key: &str,
        f: &Field<'_>,
        d: &mut Deferred,
    ) -> Result<(), ConfigError> {
        const UINT: u64 = u64::MAX;
        if let Some(slot) = d.urls.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = f.string()?;
            return Ok(());
        }
        match key {
            "name" => self.name = f.string()?,
            "data-dir" => self.data_dir = f.path_buf()?,
            "wal-dir" => self.wal_dir = f.path_buf()?,
            "snapshot-count" => self.snapshot_count = f.uint("uint64", UINT)?,
            "max-snapshots" => self.max_snapshots = f.uint("uint", UINT)?,
            "max-wals" => self.max_wals = f.uint("uint", UINT)?,
            "heartbeat-interval" => self.heartbeat_interval_ms = f.uint("uint", UINT)?,
            "election-timeout" => self.election_timeout_ms = f.uint("uint", UINT)?,
            "initial-election-tick-advance" => self.initial_election_tick_advance = f.bool()?,
            "backend-batch-interval" => self.backend_batch_interval = f.duration()?,
            "backend-batch-limit" => self.backend_batch_limit = f.int("int")?,
            "quota-backend-bytes" => self.quota_backend_bytes = f.int("int64")?,
            "max-txn-ops" => self.max_txn_ops = f.uint("uint", UINT)?,
            "max-request-bytes" => self.max_request_bytes = f.uint("uint", UINT)?,
            "max-concurrent-streams" => {
                let v = f.uint("uint32", u64::from(u32::MAX))?;
                self.max_concurrent_streams = u32::try_from(v).unwrap_or(u32::MAX);
            }
            "grpc-keepalive-min-time" => self.grpc_keepalive_min_time = f.duration()?,
            "grpc-keepalive-interval" => self.grpc_keepalive_interval = f.duration()?,
            "grpc-keepalive-timeout" => self.grpc_keepalive_timeout = f.duration()?,
            "socket-reuse-port" => self.socket_reuse_port = f.bool()?,
            "socket-reuse-address" => self.socket_reuse_address = f.bool()?,
            "cipher-suites" => self.cipher_suites = f.strings()?,
            "tls-min-version" => self.tls_min_version = f.string()?,
            "tls-max-version" => self.tls_max_version = f.string()?,
            "self-signed-cert-validity" => self.self_signed_cert_validity = f.uint("uint", UINT)?,
            "initial-cluster-state" => d.cluster_state = f.string()?,
            "discovery-srv" => self.discovery_srv = f.string()?,
            "discovery-srv-name" => self.discovery_srv_name = f.string()?,
            "discovery-proxy" => self.discovery_proxy = f.string()?,
            "discovery" => self.discovery = f.string()?,
            "initial-cluster" => self.initial_cluster = f.string()?,
            "initial-cluster-token" => self.initial_cluster_token = f.string()?,
            "strict-reconfig-check" => self.strict_reconfig_check = f.bool()?,
            "enable-v2" => self.enable_v2 = f.bool()?,
            "pre-vote" => self.pre_vote = f.bool()?,
            "v2-deprecation" => self.v2_deprecation = f.string()?,
            "experimental-max-learners" => self.experimental_max_learners = f.int("int")?,
            "auto-compaction-mode" => self.auto_compaction_mode = f.string()?,
            "auto-compaction-retention" => self.auto_compaction_retention = f.string()?,
            "cors" => d.cors = f.string()?,
            "host-whitelist" => d.host_whitelist = f.string()?,
            "auth-token" => self.auth_token = f.string()?,
            "bcrypt-cost" => self.bcrypt_cost = f.uint("uint", UINT)?,
            "auth-token-ttl" => self.auth_token_ttl = f.uint("uint", UINT)?,
            "client-transport-security" => decode_security(f, &mut self.client_tls)?,
            "peer-transport-security" => decode_security(f, &mut self.peer_tls)?,
            "enable-pprof" => self.enable_pprof = f.bool()?,
            "metrics" => self.metrics = f.string()?,
            "enable-grpc-gateway" => self.enable_grpc_gateway = f.bool()?,
            "logger" => self.logger = f.string()?,
            "log-level" => self.log_level = f.string()?,
            "log-outputs" => self.log_outputs = f.strings()?,
            "log-output" => self.log_output_deprecated = f.strings()?,
            "debug" => self.debug = f.bool()?,
            "log-package-levels" => self.log_package_levels = f.string()?,
            "enable-log-rotation" => self.enable_log_rotation = f.bool()?,
            "log-rotation-config-json" => self.log_rotation_config_json = f.string()?,
            "force-new-cluster" => self.force_new_cluster = f.bool()?,
            "unsafe-no-fsync" => self.unsafe_no_fsync = f.bool()?,
            _ => self.decode_experimental_key(key, f)?,
        }
        Ok(())
    }

    fn decode_experimental_key(&mut self, key: &str, f: &Field<'_>) -> Result<(), ConfigError> {
        match key {
            "experimental-initial-corrupt-check" => {
                self.experimental_initial_corrupt_check = f.bool()?;
            }
            "experimental-corrupt-check-time" => {
                self.experimental_corrupt_check_time = f.duration()?;
            }
            "experimental-enable-v2v3" => self.experimental_enable_v2v3 = f.string()?,
            "experimental-backend-bbolt-freelist-type" => {
                self.experimental_backend_bbolt_freelist_type = f.string()?;
            }
            "experimental-enable-lease-checkpoint" => {
                self.experimental_enable_lease_checkpoint = f.bool()?;
            }
            "experimental-enable-lease-checkpoint-persist" => {
                self.experimental_enable_lease_checkpoint_persist = f.bool()?;
            }
            "experimental-compaction-batch-limit" => {
                self.experimental_compaction_batch_limit = f.int("int")?;
            }
            "experimental-compaction-sleep-interval" => {
                self.experimental_compaction_sleep_interval = f.duration()?;
            }
            "experimental-watch-progress-notify-interval" => {
                self.experimental_watch_progress_notify_interval = f.duration()?;
            }
            "experimental-warning-apply-duration" => {
                self.experimental_warning_apply_duration = f.duration()?;
            }
            "experimental-warning-unary-request-duration" => {
                self.experimental_warning_unary_request_duration = f.duration()?;
            }
            "experimental-snapshot-catchup-entries" => {
                self.snapshot_catchup_entries = f.uint("uint64", u64::MAX)?;
            }
            _ => self.decode_experimental_35_key(key, f)?,
        }
        Ok(())
    }

    fn decode_experimental_35_key(&mut self, key: &str, f: &Field<'_>) -> Result<(), ConfigError> {
        match key {
            "experimental-enable-distributed-tracing" => {
                self.experimental_enable_distributed_tracing = f.bool()?;
            }
            "experimental-distributed-tracing-address" => {
                self.experimental_distributed_tracing_address = f.string()?;
            }
            "experimental-distributed-tracing-service-name" => {
                self.experimental_distributed_tracing_service_name = f.string()?;
            }
            "experimental-distributed-tracing-instance-id" => {
                self.experimental_distributed_tracing_instance_id = f.string()?;
            }
            "experimental-distributed-tracing-sampling-rate" => {
                self.experimental_distributed_tracing_sampling_rate = f.int("int")?;
            }
            "experimental-downgrade-check-time" => {
                self.experimental_downgrade_check_time = f.duration()?;
            }
            "experimental-memory-mlock" => self.experimental_memory_mlock = f.bool()?,
            "experimental-txn-mode-write-with-shared-buffer" => {
                self.experimental_txn_mode_write_with_shared_buffer = f.bool()?;
            }
            "experimental-bootstrap-defrag-threshold-megabytes" => {
                self.experimental_bootstrap_defrag_threshold_megabytes =
                    f.uint("uint", u64::MAX)?;
            }
            "experimental-compact-hash-check-enabled" => {
                self.experimental_compact_hash_check_enabled = f.bool()?;
            }
            "experimental-compact-hash-check-time" => {
                self.experimental_compact_hash_check_time = f.duration()?;
            }
            "experimental-wait-cluster-ready-timeout" => {
                self.experimental_wait_cluster_ready_timeout = f.duration()?;
            }
            "experimental-stop-grpc-service-on-defrag" => {
                self.experimental_stop_grpc_service_on_defrag = f.bool()?;
            }
            "experimental-local-address" => self.experimental_local_address = f.string()?,
            _ => {} // unknown keys are ignored, as etcd does
        }
        Ok(())
    }

    /// etcd's post-decoding steps: URL strings, cors, host whitelist, the
    /// discovery/initial-cluster interplay and the cluster state.
    fn finish_yaml(&mut self, d: Deferred, default_cluster: &str) -> Result<(), ConfigError> {
        for (key, raw) in d.urls {
            if raw.is_empty() {
                continue;
            }
            let urls = parse_urls(&raw).map_err(|reason| ConfigError::YamlUrls { key, reason })?;
            match key {
                "listen-peer-urls" => self.listen_peer_urls = urls,
                "listen-client-urls" => self.listen_client_urls = urls,
                "initial-advertise-peer-urls" => self.initial_advertise_peer_urls = urls,
                "advertise-client-urls" => self.advertise_client_urls = urls,
                _ => self.listen_metrics_urls = urls,
            }
        }
        if !d.cors.is_empty() {
            self.cors = cors_set(&d.cors).map_err(|reason| ConfigError::YamlUrls {
                key: "cors",
                reason,
            })?;
        }
        if !d.host_whitelist.is_empty() {
            self.host_whitelist = d.host_whitelist.split(',').map(str::to_string).collect();
        }
        if (!self.discovery.is_empty() || !self.discovery_srv.is_empty())
            && self.initial_cluster == default_cluster
        {
            self.initial_cluster.clear();
        }
        self.initial_cluster_state = match d.cluster_state.as_str() {
            "" => ClusterState::New,
            s => ClusterState::parse(s).ok_or_else(|| ConfigError::ClusterState(s.to_string()))?,
        };
        Ok(())
    }

    fn decode_proxy_key(&mut self, key: &str, f: &Field<'_>) -> Result<(), ConfigError> {
        let ms = |f: &Field<'_>| f.uint("uint", u64::MAX);
        match key {
            "proxy-failure-wait" => self.proxy_failure_wait_ms = ms(f)?,
            "proxy-refresh-interval" => self.proxy_refresh_interval_ms = ms(f)?,
            "proxy-dial-timeout" => self.proxy_dial_timeout_ms = ms(f)?,
            "proxy-write-timeout" => self.proxy_write_timeout_ms = ms(f)?,
            "proxy-read-timeout" => self.proxy_read_timeout_ms = ms(f)?,
            "proxy" => {
                let s = f.string()?;
                if !s.is_empty() {
                    self.proxy =
                        ProxyMode::parse(&s).ok_or(ConfigError::YamlChoice("proxyFlag"))?;
                }
            }
            "discovery-fallback" => {
                let s = f.string()?;
                if !s.is_empty() {
                    self.discovery_fallback = DiscoveryFallback::parse(&s)
                        .ok_or(ConfigError::YamlChoice("discovery-fallback flag"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A `client-transport-security` / `peer-transport-security` section. etcd
/// copies the 3.4 keys unconditionally (absent = empty/false).
fn decode_security(f: &Field<'_>, tls: &mut TlsInfo) -> Result<(), ConfigError> {
    let section = f.object("embed.securityConfig")?;
    let mut fresh = TlsInfo {
        crl_file: std::mem::take(&mut tls.crl_file),
        allowed_cn: std::mem::take(&mut tls.allowed_cn),
        allowed_hostname: std::mem::take(&mut tls.allowed_hostname),
        skip_client_san_verify: tls.skip_client_san_verify,
        ..TlsInfo::default()
    };
    for (key, value) in section {
        if value.is_null() {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let sub = Field {
            strukt: "configYAML",
            path: format!("{}.{key}", f.path),
            value,
        };
        match key.as_str() {
            "cert-file" => fresh.cert_file = sub.path_buf()?,
            "key-file" => fresh.key_file = sub.path_buf()?,
            "client-cert-file" => fresh.client_cert_file = sub.path_buf()?,
            "client-key-file" => fresh.client_key_file = sub.path_buf()?,
            "client-cert-auth" => fresh.client_cert_auth = sub.bool()?,
            "trusted-ca-file" => fresh.trusted_ca_file = sub.path_buf()?,
            "auto-tls" => fresh.auto_tls = sub.bool()?,
            _ => {}
        }
    }
    *tls = fresh;
    Ok(())
}

/// `--cors` / `cors:`: `*` or a comma-separated URL list (etcd parses the
/// origins as URLs, so they need a port).
///
/// # Errors
/// etcd's URL error for the first bad origin.
pub fn cors_set(raw: &str) -> Result<BTreeSet<String>, String> {
    if raw == "*" {
        return Ok(BTreeSet::from(["*".to_string()]));
    }
    Ok(parse_urls(raw)?.iter().map(url_string).collect())
}

/// Go's lower-case OS error text (`no such file or directory`).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::urls_string;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_yaml_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn yaml_values_land_in_fields() {
        let c = load(
            "name: n1\n\
             data-dir: /var/lib/n1\n\
             listen-client-urls: http://127.0.0.1:2379,http://127.0.0.1:22379\n\
             advertise-client-urls: http://127.0.0.1:2379\n\
             grpc-keepalive-min-time: 3000000000\n\
             backend-batch-interval: 10000000\n\
             initial-cluster-state: existing\n\
             cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n\
             log-outputs: [stderr]\n\
             strict-reconfig-check: false\n\
             max-request-bytes: 10485760\n\
             bogus-key: 1\n\
             proxy-dial-timeout: 7\n\
             client-transport-security:\n  cert-file: /c.crt\n  key-file: /c.key\n  client-cert-auth: true\n  trusted-ca-file: /ca.crt\n\
             peer-transport-security:\n  auto-tls: true\n",
        )
        .unwrap();
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/n1"));
        assert_eq!(
            urls_string(&c.listen_client_urls),
            "http://127.0.0.1:22379,http://127.0.0.1:2379"
        );
        assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(3));
        assert_eq!(c.backend_batch_interval, Duration::from_millis(10));
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
        assert_eq!(c.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(c.log_outputs, ["stderr"]);
        assert!(!c.strict_reconfig_check);
        assert_eq!(c.max_request_bytes, 10_485_760);
        assert_eq!(c.proxy_dial_timeout_ms, 7);
        assert_eq!(c.client_tls.cert_file, PathBuf::from("/c.crt"));
        assert_eq!(c.client_tls.key_file, PathBuf::from("/c.key"));
        assert_eq!(c.client_tls.trusted_ca_file, PathBuf::from("/ca.crt"));
        assert!(c.client_tls.client_cert_auth);
        assert!(!c.client_tls.auto_tls);
        assert!(c.peer_tls.auto_tls);
        assert_eq!(c.initial_cluster, "n1=http://localhost:2380");
    }

    #[test]
    fn yaml_listen_client_without_advertise_keeps_default() {
        let c = load("listen-client-urls: http://127.0.0.1:12379\n").unwrap();
        assert_eq!(
            urls_string(&c.advertise_client_urls),
            "http://localhost:2379"
        );
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    }

    #[test]
    fn yaml_errors_match_etcd() {
        let j = "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal";
        let cases: &[(&str, String)] = &[
            (
                "grpc-keepalive-min-time: 5s\n",
                format!("{j} string into Go struct field configYAML.grpc-keepalive-min-time of type time.Duration"),
            ),
            (
                "name: [1]\n",
                format!("{j} array into Go struct field configYAML.name of type string"),
            ),
            (
                "snapshot-count: -1\n",
                format!("{j} number -1 into Go struct field configYAML.snapshot-count of type uint64"),
            ),
            (
                "strict-reconfig-check: 'yes'\n",
                format!("{j} string into Go struct field configYAML.strict-reconfig-check of type bool"),
            ),
            (
                "client-transport-security: 5\n",
                format!("{j} number into Go struct field configYAML.client-transport-security of type embed.securityConfig"),
            ),
            (
                "cipher-suites: a,b\n",
                format!("{j} string into Go struct field configYAML.cipher-suites of type []string"),
            ),
            (
                "peer-transport-security:\n  cert-file: 1\n",
                format!("{j} number into Go struct field configYAML.peer-transport-security.cert-file of type string"),
            ),
            (
                "listen-peer-urls: ftp://127.0.0.1:23999\n",
                "unexpected error setting up listen-peer-urls: URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:23999".into(),
            ),
            ("initial-cluster-state: bogus\n", "unexpected clusterState \"bogus\"".into()),
            (
                "election-timeout: 10\n",
                "--election-timeout[10ms] should be at least as 5 times as --heartbeat-interval[100ms]".into(),
            ),
            ("proxy: bad\n", "unexpected error setting up proxyFlag: invalid value".into()),
        ];
        for (text, want) in cases {
            assert_eq!(&load(text).unwrap_err(), want, "{text}");
        }
    }

    #[test]
    fn yaml_empty_and_missing() {
        assert_eq!(load("").unwrap().name, "default");
        let err = Config::from_yaml_file("/nonexistent/oxcd.yml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "open /nonexistent/oxcd.yml: no such file or directory"
        );
        assert!(load("{{{")
            .unwrap_err()
            .starts_with("error converting YAML to JSON: "));
    }
}
