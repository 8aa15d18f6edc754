//! The server configuration, mirroring etcd's `embed/config.go` (`embed.Config`)
//! plus the v2-proxy settings etcd keeps in `etcdmain/config.go`.
//!
//! One [`Config`] holds every etcd 3.4 server flag and the 3.5 additions, as
//! typed fields with etcd's defaults. It is filled from the command line and
//! `ETCD_*` environment (the `oxcd` binary's `flags` module) or from a YAML
//! file ([`Config::from_yaml_file`]), then checked by [`Config::validate`].
//!
//! - `duration`: Go's `time.ParseDuration`.
//! - `urls`: etcd's URL-list rules and Go's URL string form.
//! - `validate`: [`ConfigError`] and etcd's checks, with etcd's messages.
//! - `yaml`: the config file, with etcd's YAML keys and type errors.
//! - `unimplemented`: flags accepted but not acted on yet.

pub mod duration;
mod unimplemented;
mod urls;
mod validate;
mod yaml;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

pub use url::Url;

pub use duration::parse_go_duration;
pub use unimplemented::not_acted_on;
pub use urls::{parse_url, parse_urls, split_host_port, url_string, urls_string};
pub use validate::{AutoCompaction, ConfigError};
pub use yaml::cors_set;

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    /// `new`: bootstrap a new cluster from `--initial-cluster`.
    #[default]
    New,
    /// `existing`: join a running cluster.
    Existing,
}

impl ClusterState {
    /// Parses etcd's spelling (`new` / `existing`), case-sensitive as etcd is.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "new" => Some(Self::New),
            "existing" => Some(Self::Existing),
            _ => None,
        }
    }

    /// etcd's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Existing => "existing",
        }
    }
}

/// `--discovery-fallback`: what to do when discovery finds the cluster full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryFallback {
    /// `exit`.
    Exit,
    /// `proxy` (etcd's default; the v2 proxy is out of scope for oxcd).
    #[default]
    Proxy,
}

impl DiscoveryFallback {
    /// Parses `exit` / `proxy`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "exit" => Some(Self::Exit),
            "proxy" => Some(Self::Proxy),
            _ => None,
        }
    }
}

/// `--proxy`: etcd's v2 proxy mode (out of scope; only `off` runs a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// `off` (default).
    #[default]
    Off,
    /// `readonly`.
    Readonly,
    /// `on`.
    On,
}

impl ProxyMode {
    /// Parses `off` / `readonly` / `on`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "readonly" => Some(Self::Readonly),
            "on" => Some(Self::On),
            _ => None,
        }
    }
}

/// TLS settings for one side (client or peer), like etcd's
/// `transport.TLSInfo` plus its auto-TLS switch. Empty paths mean unset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// `--cert-file` / `--peer-cert-file`: server certificate (PEM).
    pub cert_file: PathBuf,
    /// `--key-file` / `--peer-key-file`: server key (PEM).
    pub key_file: PathBuf,
    /// 3.5 `--client-cert-file` / `--peer-client-cert-file`: certificate
    /// presented when this member acts as a client; defaults to `cert_file`.
    pub client_cert_file: PathBuf,
    /// 3.5 `--client-key-file` / `--peer-client-key-file`.
    pub client_key_file: PathBuf,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`.
    pub trusted_ca_file: PathBuf,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: require and verify
    /// client certificates.
    pub client_cert_auth: bool,
    /// `--auto-tls` / `--peer-auto-tls`: self-signed certificates under
    /// `<data-dir>/fixtures/{client,peer}` when no cert is given.
    pub auto_tls: bool,
    /// `--client-crl-file` / `--peer-crl-file`.
    pub crl_file: PathBuf,
    /// `--peer-cert-allowed-cn` (peer only): exact leaf CN required.
    pub allowed_cn: String,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`.
    pub allowed_hostname: String,
    /// `--experimental-peer-skip-client-san-verification` (peer only).
    pub skip_client_san_verify: bool,
}

impl TlsInfo {
    /// True when neither a cert nor a key file is configured (etcd's
    /// `TLSInfo.Empty`); auto-TLS only applies then.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cert_file.as_os_str().is_empty() && self.key_file.as_os_str().is_empty()
    }
}

/// Every etcd server setting. Field docs name the flag; units are in the
/// field name or type. See the module doc for how it is filled.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::struct_excessive_bools)] // one bool per etcd flag, by design
pub struct Config {
    // ---- member ----
    /// `--name` (default `default`).
    pub name: String,
    /// `--data-dir`; empty until [`Config::validate`] sets `<name>.etcd`.
    pub data_dir: PathBuf,
    /// `--wal-dir`: dedicated WAL directory (empty = `<data-dir>/member/wal`).
    pub wal_dir: PathBuf,
    /// `--snapshot-count` (100 000 applied entries).
    pub snapshot_count: u64,
    /// 3.5 `--experimental-snapshot-catchup-entries` (5 000).
    pub snapshot_catchup_entries: u64,
    /// `--max-snapshots` (5, 0 = unlimited).
    pub max_snapshots: u64,
    /// `--max-wals` (5, 0 = unlimited).
    pub max_wals: u64,
    /// `--heartbeat-interval` in ms (100).
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout` in ms (1000).
    pub election_timeout_ms: u64,
    /// `--initial-election-tick-advance` (true).
    pub initial_election_tick_advance: bool,
    /// `--quota-backend-bytes` (0 = 2 GiB, negative = no quota).
    pub quota_backend_bytes: i64,
    /// `--backend-batch-interval` (0 = 100 ms).
    pub backend_batch_interval: Duration,
    /// `--backend-batch-limit` (0 = 10 000).
    pub backend_batch_limit: i64,
    /// `--max-txn-ops` (128).
    pub max_txn_ops: u64,
    /// `--max-request-bytes` (1 572 864).
    pub max_request_bytes: u64,
    /// `--max-concurrent-streams` (`u32::MAX`).
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-min-time` (5 s).
    pub grpc_keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval` (2 h, 0 = off).
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout` (20 s, 0 = off).
    pub grpc_keepalive_timeout: Duration,
    /// 3.5 `--socket-reuse-port`.
    pub socket_reuse_port: bool,
    /// 3.5 `--socket-reuse-address`.
    pub socket_reuse_address: bool,

    // ---- URLs (print with `url_string`, not `Display`) ----
    /// `--listen-peer-urls` (`http://localhost:2380`).
    pub listen_peer_urls: Vec<Url>,
    /// `--listen-client-urls` (`http://localhost:2379`).
    pub listen_client_urls: Vec<Url>,
    /// 3.5 `--listen-client-http-urls`: HTTP-only client listeners.
    pub listen_client_http_urls: Vec<Url>,
    /// `--listen-metrics-urls`: `/metrics` and `/health` only.
    pub listen_metrics_urls: Vec<Url>,
    /// `--initial-advertise-peer-urls` (`http://localhost:2380`).
    pub initial_advertise_peer_urls: Vec<Url>,
    /// `--advertise-client-urls` (`http://localhost:2379`); empty means unset.
    pub advertise_client_urls: Vec<Url>,

    // ---- clustering ----
    /// `--initial-cluster` (`default=http://localhost:2380`).
    pub initial_cluster: String,
    /// `--initial-cluster-token` (`etcd-cluster`).
    pub initial_cluster_token: String,
    /// `--initial-cluster-state` (`new`).
    pub initial_cluster_state: ClusterState,
    /// `--discovery`: discovery service URL.
    pub discovery: String,
    /// `--discovery-proxy`.
    pub discovery_proxy: String,
    /// `--discovery-srv`: DNS SRV domain.
    pub discovery_srv: String,
    /// `--discovery-srv-name`.
    pub discovery_srv_name: String,
    /// `--discovery-fallback` (`proxy`).
    pub discovery_fallback: DiscoveryFallback,
    /// `--strict-reconfig-check` (true).
    pub strict_reconfig_check: bool,
    /// `--enable-v2` (false; the v2 API is out of scope).
    pub enable_v2: bool,
    /// `--pre-vote` (false in 3.4).
    pub pre_vote: bool,
    /// 3.5 `--v2-deprecation` (`not-yet`).
    pub v2_deprecation: String,
    /// 3.5 `--experimental-max-learners` (1).
    pub experimental_max_learners: i64,

    // ---- v2 proxy (etcdmain) ----
    /// `--proxy` (`off`).
    pub proxy: ProxyMode,
    /// `--proxy-failure-wait` in ms (5000).
    pub proxy_failure_wait_ms: u64,
    /// `--proxy-refresh-interval` in ms (30000).
    pub proxy_refresh_interval_ms: u64,
    /// `--proxy-dial-timeout` in ms (1000).
    pub proxy_dial_timeout_ms: u64,
    /// `--proxy-write-timeout` in ms (5000).
    pub proxy_write_timeout_ms: u64,
    /// `--proxy-read-timeout` in ms (0).
    pub proxy_read_timeout_ms: u64,

    // ---- security ----
    /// Client-side TLS (`--cert-file`, `--key-file`, `--auto-tls`, ...).
    pub client_tls: TlsInfo,
    /// Peer-side TLS (`--peer-cert-file`, `--peer-auto-tls`, ...).
    pub peer_tls: TlsInfo,
    /// `--cipher-suites`: Go cipher-suite names (empty = library default).
    pub cipher_suites: Vec<String>,
    /// 3.5 `--tls-min-version` (empty = TLS1.2).
    pub tls_min_version: String,
    /// 3.5 `--tls-max-version` (empty = library maximum).
    pub tls_max_version: String,
    /// 3.5 `--self-signed-cert-validity` in years (1).
    pub self_signed_cert_validity: u64,
    /// `--cors`: allowed origins, `*` = all (URL strings in Go form).
    pub cors: BTreeSet<String>,
    /// `--host-whitelist`: allowed Host headers on non-TLS listeners, `*` = all.
    pub host_whitelist: BTreeSet<String>,

    // ---- auth ----
    /// `--auth-token` (`simple` or `jwt,pub-key=...,priv-key=...,sign-method=...`).
    pub auth_token: String,
    /// `--bcrypt-cost` (10).
    pub bcrypt_cost: u64,
    /// `--auth-token-ttl` in seconds (300).
    pub auth_token_ttl: u64,

    // ---- compaction ----
    /// `--auto-compaction-mode` (`periodic`; `revision`). Checked by validate.
    pub auto_compaction_mode: String,
    /// `--auto-compaction-retention` (`0` = off). See [`Config::auto_compaction`].
    pub auto_compaction_retention: String,

    // ---- profiling, metrics, gateway ----
    /// `--enable-pprof`.
    pub enable_pprof: bool,
    /// `--metrics` (`basic`; `extensive`).
    pub metrics: String,
    /// `--enable-grpc-gateway` (true).
    pub enable_grpc_gateway: bool,

    // ---- logging ----
    /// `--logger` (`capnslog` in 3.4; `zap`).
    pub logger: String,
    /// `--log-level` (`info`).
    pub log_level: String,
    /// `--log-outputs` (`default`), sorted and de-duplicated as etcd does.
    pub log_outputs: Vec<String>,
    /// Deprecated `--log-output` (`default`).
    pub log_output_deprecated: Vec<String>,
    /// Deprecated `--debug`.
    pub debug: bool,
    /// Deprecated `--log-package-levels`.
    pub log_package_levels: String,
    /// 3.5 `--enable-log-rotation`.
    pub enable_log_rotation: bool,
    /// 3.5 `--log-rotation-config-json`.
    pub log_rotation_config_json: String,

    // ---- unsafe ----
    /// `--force-new-cluster`.
    pub force_new_cluster: bool,
    /// `--unsafe-no-fsync`.
    pub unsafe_no_fsync: bool,

    // ---- experimental ----
    /// `--experimental-initial-corrupt-check`.
    pub experimental_initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time` (0 = off).
    pub experimental_corrupt_check_time: Duration,
    /// `--experimental-enable-v2v3`: v2 emulation prefix.
    pub experimental_enable_v2v3: String,
    /// `--experimental-backend-bbolt-freelist-type`.
    pub experimental_backend_bbolt_freelist_type: String,
    /// `--experimental-enable-lease-checkpoint`.
    pub experimental_enable_lease_checkpoint: bool,
    /// `--experimental-enable-lease-checkpoint-persist` (needs the above).
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// `--experimental-compaction-batch-limit` (0 = 1000).
    pub experimental_compaction_batch_limit: i64,
    /// 3.5 `--experimental-compaction-sleep-interval` (10 ms).
    pub experimental_compaction_sleep_interval: Duration,
    /// `--experimental-watch-progress-notify-interval` (0 = 10 min).
    pub experimental_watch_progress_notify_interval: Duration,
    /// `--experimental-warning-apply-duration` (100 ms).
    pub experimental_warning_apply_duration: Duration,
    /// 3.5 `--experimental-warning-unary-request-duration` (300 ms).
    pub experimental_warning_unary_request_duration: Duration,
    /// 3.5 `--experimental-enable-distributed-tracing`.
    pub experimental_enable_distributed_tracing: bool,
    /// 3.5 `--experimental-distributed-tracing-address` (`0.0.0.0:4317`).
    pub experimental_distributed_tracing_address: String,
    /// 3.5 `--experimental-distributed-tracing-service-name` (`etcd`).
    pub experimental_distributed_tracing_service_name: String,
    /// 3.5 `--experimental-distributed-tracing-instance-id`.
    pub experimental_distributed_tracing_instance_id: String,
    /// 3.5 `--experimental-distributed-tracing-sampling-rate` (per million).
    pub experimental_distributed_tracing_sampling_rate: i64,
    /// 3.5 `--experimental-downgrade-check-time` (5 s).
    pub experimental_downgrade_check_time: Duration,
    /// 3.5 `--experimental-memory-mlock`.
    pub experimental_memory_mlock: bool,
    /// 3.5 `--experimental-txn-mode-write-with-shared-buffer` (true).
    pub experimental_txn_mode_write_with_shared_buffer: bool,
    /// 3.5 `--experimental-bootstrap-defrag-threshold-megabytes` (0 = off).
    pub experimental_bootstrap_defrag_threshold_megabytes: u64,
    /// 3.5 `--experimental-compact-hash-check-enabled`.
    pub experimental_compact_hash_check_enabled: bool,
    /// 3.5 `--experimental-compact-hash-check-time` (1 min).
    pub experimental_compact_hash_check_time: Duration,
    /// 3.5 `--experimental-wait-cluster-ready-timeout` (5 s).
    pub experimental_wait_cluster_ready_timeout: Duration,
    /// 3.5 `--experimental-stop-grpc-service-on-defrag`.
    pub experimental_stop_grpc_service_on_defrag: bool,
    /// 3.5 `--experimental-local-address`: source IP for peer dials.
    pub experimental_local_address: String,
}

/// etcd's `DefaultName`.
pub const DEFAULT_NAME: &str = "default";
/// etcd's default peer URL (listen and advertise).
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default client URL (listen and advertise).
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's `maxElectionMs`.
pub const MAX_ELECTION_MS: u64 = 50_000;

fn default_url(s: &str) -> Vec<Url> {
    vec![Url::parse(s).expect("built-in default URL is valid")]
}

fn set_of(s: &str) -> BTreeSet<String> {
    BTreeSet::from([s.to_string()])
}

impl Default for Config {
    fn default() -> Self {
        let mut cfg = Self {
            name: DEFAULT_NAME.into(),
            data_dir: PathBuf::new(),
            wal_dir: PathBuf::new(),
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            max_snapshots: 5,
            max_wals: 5,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            initial_election_tick_advance: true,
            quota_backend_bytes: 0,
            backend_batch_interval: Duration::ZERO,
            backend_batch_limit: 0,
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
            max_concurrent_streams: u32::MAX,
            grpc_keepalive_min_time: Duration::from_secs(5),
            grpc_keepalive_interval: Duration::from_secs(2 * 3600),
            grpc_keepalive_timeout: Duration::from_secs(20),
            socket_reuse_port: false,
            socket_reuse_address: false,
            listen_peer_urls: default_url(DEFAULT_PEER_URL),
            listen_client_urls: default_url(DEFAULT_CLIENT_URL),
            listen_client_http_urls: Vec::new(),
            listen_metrics_urls: Vec::new(),
            initial_advertise_peer_urls: default_url(DEFAULT_PEER_URL),
            advertise_client_urls: default_url(DEFAULT_CLIENT_URL),
            initial_cluster: String::new(),
            initial_cluster_token: "etcd-cluster".into(),
            initial_cluster_state: ClusterState::New,
            discovery: String::new(),
            discovery_proxy: String::new(),
            discovery_srv: String::new(),
            discovery_srv_name: String::new(),
            discovery_fallback: DiscoveryFallback::Proxy,
            strict_reconfig_check: true,
            enable_v2: false,
            pre_vote: true,
            v2_deprecation: "not-yet".into(),
            experimental_max_learners: 1,
            proxy: ProxyMode::Off,
            proxy_failure_wait_ms: 5000,
            proxy_refresh_interval_ms: 30000,
            proxy_dial_timeout_ms: 1000,
            proxy_write_timeout_ms: 5000,
            proxy_read_timeout_ms: 0,
            client_tls: TlsInfo::default(),
            peer_tls: TlsInfo::default(),
            cipher_suites: Vec::new(),
            tls_min_version: String::new(),
            tls_max_version: String::new(),
            self_signed_cert_validity: 1,
            cors: set_of("*"),
            host_whitelist: set_of("*"),
            auth_token: "simple".into(),
            bcrypt_cost: 10,
            auth_token_ttl: 300,
            auto_compaction_mode: "periodic".into(),
            auto_compaction_retention: "0".into(),
            enable_pprof: false,
            metrics: "basic".into(),
            enable_grpc_gateway: true,
            logger: "capnslog".into(),
            log_level: "info".into(),
            log_outputs: vec!["default".into()],
            log_output_deprecated: vec!["default".into()],
            debug: false,
            log_package_levels: String::new(),
            enable_log_rotation: false,
            log_rotation_config_json: DEFAULT_LOG_ROTATION_CONFIG.into(),
            force_new_cluster: false,
            unsafe_no_fsync: false,
            experimental_initial_corrupt_check: false,
            experimental_corrupt_check_time: Duration::ZERO,
            experimental_enable_v2v3: String::new(),
            experimental_backend_bbolt_freelist_type: String::new(),
            experimental_enable_lease_checkpoint: false,
            experimental_enable_lease_checkpoint_persist: false,
            experimental_compaction_batch_limit: 0,
            experimental_compaction_sleep_interval: Duration::from_millis(10),
            experimental_watch_progress_notify_interval: Duration::ZERO,
            experimental_warning_apply_duration: Duration::from_millis(100),
            experimental_warning_unary_request_duration: Duration::from_millis(300),
            experimental_enable_distributed_tracing: false,
            experimental_distributed_tracing_address: "0.0.0.0:4317".into(),
            experimental_distributed_tracing_service_name: "etcd".into(),
            experimental_distributed_tracing_instance_id: String::new(),
            experimental_distributed_tracing_sampling_rate: 0,
            experimental_downgrade_check_time: Duration::from_secs(5),
            experimental_memory_mlock: false,
            experimental_txn_mode_write_with_shared_buffer: true,
            experimental_bootstrap_defrag_threshold_megabytes: 0,
            experimental_compact_hash_check_enabled: false,
            experimental_compact_hash_check_time: Duration::from_secs(60),
            experimental_wait_cluster_ready_timeout: Duration::from_secs(5),
            experimental_stop_grpc_service_on_defrag: false,
            experimental_local_address: String::new(),
        };
        cfg.initial_cluster = cfg.initial_cluster_from_name(&cfg.name);
        cfg
    }
}

/// 3.5's default `--log-rotation-config-json`.
pub const DEFAULT_LOG_ROTATION_CONFIG: &str =
    r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#;

impl Config {
    /// `name=url` for each advertised peer URL, comma-joined (etcd's
    /// `InitialClusterFromName`); an empty name counts as `default`.
    #[must_use]
    pub fn initial_cluster_from_name(&self, name: &str) -> String {
        let n = if name.is_empty() { DEFAULT_NAME } else { name };
        self.initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{n}={}", url_string(u)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Election timeout in heartbeat ticks (etcd's `ElectionTicks`).
    /// Only meaningful after [`Config::validate`] (heartbeat > 0).
    #[must_use]
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms.max(1)
    }

    /// True when `--initial-cluster-state=new`.
    #[must_use]
    pub fn is_new_cluster(&self) -> bool {
        self.initial_cluster_state == ClusterState::New
    }

    /// The v2 proxy could take over (etcdmain's `mayBeProxy`): then a missing
    /// `--advertise-client-urls` is not an error.
    #[must_use]
    pub fn may_be_proxy(&self) -> bool {
        self.proxy != ProxyMode::Off
            || (!self.discovery.is_empty() && self.discovery_fallback == DiscoveryFallback::Proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let c = Config::default();
        assert_eq!(c.name, "default");
        assert_eq!(c.initial_cluster, "default=http://localhost:2380");
        assert_eq!(urls_string(&c.listen_client_urls), "http://localhost:2379");
        assert_eq!(
            urls_string(&c.advertise_client_urls),
            "http://localhost:2379"
        );
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.max_concurrent_streams, 4_294_967_295);
        assert_eq!(c.snapshot_count, 100_000);
        assert_eq!(c.election_ticks(), 10);
        assert!(c.data_dir.as_os_str().is_empty());
        assert!(c.cors.contains("*"));
    }
}
