//! The one flag table: every etcd 3.4 server flag plus the 3.5 additions,
//! each with how its value lands in [`Config`] and its help entry. The
//! parser, the `ETCD_*` environment reader and `--help` all read this table.
//! etcd's list lives in `etcdmain/config.go` (`newConfig`).

use std::path::PathBuf;
use std::time::Duration;

use oxcd_server::config::{ClusterState, Config, DiscoveryFallback, ProxyMode, Url};

use super::values;

/// How a flag's text value is stored. Each variant names the Go value type
/// it copies, because that decides the accepted syntax and the error text.
#[derive(Clone, Copy)]
pub(crate) enum Setter {
    /// Go `BoolVar`: never takes the next argument; `--x=false` to unset.
    Bool(fn(&mut Config) -> &mut bool),
    /// Go `StringVar`.
    Str(fn(&mut Config) -> &mut String),
    /// Go `StringVar` holding a file or directory path.
    Path(fn(&mut Config) -> &mut PathBuf),
    /// Go `UintVar` / `Uint64Var` (base-0 integer syntax).
    Uint(fn(&mut Config) -> &mut u64),
    /// Go `IntVar` / `Int64Var`.
    Int(fn(&mut Config) -> &mut i64),
    /// etcd's `uint32Value`, whose errors are strconv's own text.
    Uint32(fn(&mut Config) -> &mut u32),
    /// Go `DurationVar` (`5s`, `100ms`, `2h`).
    Duration(fn(&mut Config) -> &mut Duration),
    /// etcd's `UniqueURLs` with `""` allowed (an empty value changes nothing).
    Urls(fn(&mut Config) -> &mut Vec<Url>),
    /// Anything with its own parsing (choices, string sets).
    Custom(fn(&mut Config, &str) -> Result<(), String>),
    /// A legacy flag etcd accepts and ignores with a warning.
    Ignored,
    /// `--config-file`, handled by the parser itself.
    ConfigFile,
    /// `--version`, handled by the parser itself.
    Version,
}

impl Setter {
    /// Go's `IsBoolFlag`: such flags never consume the next argument.
    pub(crate) fn is_bool(self) -> bool {
        matches!(self, Setter::Bool(_) | Setter::Ignored | Setter::Version)
    }
}

/// Help sections, in the order `--help` prints them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Member,
    Clustering,
    Proxy,
    Security,
    Auth,
    Monitoring,
    Logging,
    Experimental,
    Unsafe,
    Deprecated,
    Hidden,
}

impl Section {
    pub(crate) const ORDER: [Section; 10] = [
        Section::Member,
        Section::Clustering,
        Section::Proxy,
        Section::Security,
        Section::Auth,
        Section::Monitoring,
        Section::Logging,
        Section::Experimental,
        Section::Unsafe,
        Section::Deprecated,
    ];

    pub(crate) fn title(self) -> &'static str {
        match self {
            Section::Member => "Member",
            Section::Clustering => "Clustering",
            Section::Proxy => "v2 proxy (accepted, not supported by oxcd)",
            Section::Security => "Security",
            Section::Auth => "Auth",
            Section::Monitoring => "Profiling and monitoring",
            Section::Logging => "Logging",
            Section::Experimental => "Experimental",
            Section::Unsafe => "Unsafe (can break consensus guarantees)",
            Section::Deprecated => "Deprecated",
            Section::Hidden => "",
        }
    }
}

/// One flag.
pub(crate) struct FlagDef {
    /// Name without dashes; the env var is `ETCD_` + upper snake of it.
    pub name: &'static str,
    pub setter: Setter,
    pub section: Section,
    /// Default as `--help` shows it.
    pub default: &'static str,
    pub help: &'static str,
}

const fn f(
    name: &'static str,
    setter: Setter,
    section: Section,
    default: &'static str,
    help: &'static str,
) -> FlagDef {
    FlagDef {
        name,
        setter,
        section,
        default,
        help,
    }
}

const fn ignored(name: &'static str) -> FlagDef {
    f(name, Setter::Ignored, Section::Hidden, "", "")
}

use Section::{
    Auth, Clustering, Deprecated, Experimental, Hidden, Logging, Member, Monitoring, Proxy,
    Security, Unsafe,
};
use Setter::{Bool, Custom, Int, Path, Str, Uint, Uint32, Urls};

fn cluster_state(c: &mut Config, v: &str) -> Result<(), String> {
    c.initial_cluster_state = ClusterState::parse(v).ok_or("invalid value")?;
    Ok(())
}

fn discovery_fallback(c: &mut Config, v: &str) -> Result<(), String> {
    c.discovery_fallback = DiscoveryFallback::parse(v).ok_or("invalid value")?;
    Ok(())
}

fn proxy(c: &mut Config, v: &str) -> Result<(), String> {
    c.proxy = ProxyMode::parse(v).ok_or("invalid value")?;
    Ok(())
}

fn cors(c: &mut Config, v: &str) -> Result<(), String> {
    c.cors = oxcd_server::config::cors_set(v)?;
    Ok(())
}

fn host_whitelist(c: &mut Config, v: &str) -> Result<(), String> {
    c.host_whitelist = v.split(',').map(str::to_string).collect();
    Ok(())
}

fn cipher_suites(c: &mut Config, v: &str) -> Result<(), String> {
    c.cipher_suites = v.split(',').map(str::to_string).collect();
    Ok(())
}

fn log_outputs(c: &mut Config, v: &str) -> Result<(), String> {
    c.log_outputs = values::unique_sorted(v);
    Ok(())
}

fn log_output(c: &mut Config, v: &str) -> Result<(), String> {
    c.log_output_deprecated = values::unique_sorted(v);
    Ok(())
}

/// Every flag, in `--help` order within each section.
#[rustfmt::skip]
pub(crate) static FLAGS: &[FlagDef] = &[
    f("config-file", Setter::ConfigFile, Member, "", "Read every setting from this YAML file. When set, all other flags and ETCD_* variables are ignored."),
    // member
    f("name", Str(|c| &mut c.name), Member, "default", "Name of this member, unique in the cluster."),
    f("data-dir", Path(|c| &mut c.data_dir), Member, "${name}.etcd", "Directory holding the member's data."),
    f("wal-dir", Path(|c| &mut c.wal_dir), Member, "", "Put the write-ahead log in this directory instead of inside the data directory."),
    f("snapshot-count", Uint(|c| &mut c.snapshot_count), Member, "100000", "Applied entries between two snapshots."),
    f("heartbeat-interval", Uint(|c| &mut c.heartbeat_interval_ms), Member, "100", "Raft heartbeat interval, in milliseconds."),
    f("election-timeout", Uint(|c| &mut c.election_timeout_ms), Member, "1000", "Raft election timeout, in milliseconds; at least 5 heartbeats, at most 50000."),
    f("initial-election-tick-advance", Bool(|c| &mut c.initial_election_tick_advance), Member, "true", "Fast-forward election ticks at start so a leader is elected sooner."),
    f("listen-peer-urls", Urls(|c| &mut c.listen_peer_urls), Member, "http://localhost:2380", "Comma-separated URLs to accept peer traffic on."),
    f("listen-client-urls", Urls(|c| &mut c.listen_client_urls), Member, "http://localhost:2379", "Comma-separated URLs to accept client traffic on."),
    f("listen-client-http-urls", Urls(|c| &mut c.listen_client_http_urls), Member, "", "Comma-separated URLs serving HTTP only (no gRPC) to clients."),
    f("max-snapshots", Uint(|c| &mut c.max_snapshots), Member, "5", "Snapshot files to keep; 0 keeps all."),
    f("max-wals", Uint(|c| &mut c.max_wals), Member, "5", "WAL files to keep; 0 keeps all."),
    f("quota-backend-bytes", Int(|c| &mut c.quota_backend_bytes), Member, "0", "Raise the NOSPACE alarm above this backend size; 0 means 2 GiB."),
    f("backend-batch-interval", Setter::Duration(|c| &mut c.backend_batch_interval), Member, "", "Longest time before a backend commit (0 means 100ms)."),
    f("backend-batch-limit", Int(|c| &mut c.backend_batch_limit), Member, "0", "Most writes before a backend commit (0 means 10000)."),
    f("max-txn-ops", Uint(|c| &mut c.max_txn_ops), Member, "128", "Most operations allowed in one transaction."),
    f("max-request-bytes", Uint(|c| &mut c.max_request_bytes), Member, "1572864", "Largest client request accepted, in bytes."),
    f("max-concurrent-streams", Uint32(|c| &mut c.max_concurrent_streams), Member, "math.MaxUint32", "Most concurrent gRPC streams per client connection."),
    f("grpc-keepalive-min-time", Setter::Duration(|c| &mut c.grpc_keepalive_min_time), Member, "5s", "Shortest interval a client may ping the server at."),
    f("grpc-keepalive-interval", Setter::Duration(|c| &mut c.grpc_keepalive_interval), Member, "2h", "How often the server pings an idle connection (0 disables)."),
    f("grpc-keepalive-timeout", Setter::Duration(|c| &mut c.grpc_keepalive_timeout), Member, "20s", "How long to wait for a ping answer before closing (0 disables)."),
    f("socket-reuse-port", Bool(|c| &mut c.socket_reuse_port), Member, "false", "Set SO_REUSEPORT on listeners."),
    f("socket-reuse-address", Bool(|c| &mut c.socket_reuse_address), Member, "false", "Set SO_REUSEADDR on listeners."),
    // clustering
    f("initial-advertise-peer-urls", Urls(|c| &mut c.initial_advertise_peer_urls), Clustering, "http://localhost:2380", "Peer URLs of this member announced to the rest of the cluster."),
    f("initial-cluster", Str(|c| &mut c.initial_cluster), Clustering, "default=http://localhost:2380", "Bootstrap membership as name=peer-url pairs, comma-separated."),
    f("initial-cluster-state", Custom(cluster_state), Clustering, "new", "'new' to bootstrap a cluster, 'existing' to join one."),
    f("initial-cluster-token", Str(|c| &mut c.initial_cluster_token), Clustering, "etcd-cluster", "Token that keeps separately bootstrapped clusters apart."),
    f("advertise-client-urls", Urls(|c| &mut c.advertise_client_urls), Clustering, "http://localhost:2379", "Client URLs of this member announced to clients; required with --listen-client-urls."),
    f("discovery", Str(|c| &mut c.discovery), Clustering, "", "Discovery service URL for bootstrapping."),
    f("discovery-fallback", Custom(discovery_fallback), Clustering, "proxy", "When discovery fails: 'exit' or 'proxy'."),
    f("discovery-proxy", Str(|c| &mut c.discovery_proxy), Clustering, "", "HTTP proxy for discovery traffic."),
    f("discovery-srv", Str(|c| &mut c.discovery_srv), Clustering, "", "DNS domain whose SRV records describe the cluster."),
    f("discovery-srv-name", Str(|c| &mut c.discovery_srv_name), Clustering, "", "Suffix of the SRV service name used for DNS discovery."),
    f("strict-reconfig-check", Bool(|c| &mut c.strict_reconfig_check), Clustering, "true", "Refuse membership changes that would lose quorum."),
    f("pre-vote", Bool(|c| &mut c.pre_vote), Clustering, "true", "Run raft's pre-vote phase before elections (etcd 3.5's default; 3.4's was false)."),
    f("auto-compaction-retention", Str(|c| &mut c.auto_compaction_retention), Clustering, "0", "History to keep when compacting automatically: hours or a duration (periodic), or revisions (revision); 0 disables."),
    f("auto-compaction-mode", Str(|c| &mut c.auto_compaction_mode), Clustering, "periodic", "How to read --auto-compaction-retention: 'periodic' or 'revision'."),
    f("enable-v2", Bool(|c| &mut c.enable_v2), Clustering, "false", "Serve the v2 API (not supported by oxcd)."),
    f("v2-deprecation", Str(|c| &mut c.v2_deprecation), Clustering, "not-yet", "v2 store deprecation stage (accepted for compatibility)."),
    // v2 proxy
    f("proxy", Custom(proxy), Proxy, "off", "'off', 'readonly' or 'on'."),
    f("proxy-failure-wait", Uint(|c| &mut c.proxy_failure_wait_ms), Proxy, "5000", "Milliseconds a failed endpoint stays failed."),
    f("proxy-refresh-interval", Uint(|c| &mut c.proxy_refresh_interval_ms), Proxy, "30000", "Milliseconds between endpoint refreshes."),
    f("proxy-dial-timeout", Uint(|c| &mut c.proxy_dial_timeout_ms), Proxy, "1000", "Dial timeout in milliseconds; 0 disables."),
    f("proxy-write-timeout", Uint(|c| &mut c.proxy_write_timeout_ms), Proxy, "5000", "Write timeout in milliseconds; 0 disables."),
    f("proxy-read-timeout", Uint(|c| &mut c.proxy_read_timeout_ms), Proxy, "0", "Read timeout in milliseconds; 0 disables."),
    // security
    f("cert-file", Path(|c| &mut c.client_tls.cert_file), Security, "", "Server certificate for client connections."),
    f("key-file", Path(|c| &mut c.client_tls.key_file), Security, "", "Private key for --cert-file."),
    f("client-cert-file", Path(|c| &mut c.client_tls.client_cert_file), Security, "", "Certificate this member presents when it is itself a client (defaults to --cert-file)."),
    f("client-key-file", Path(|c| &mut c.client_tls.client_key_file), Security, "", "Private key for --client-cert-file."),
    f("client-cert-auth", Bool(|c| &mut c.client_tls.client_cert_auth), Security, "false", "Require clients to present a certificate signed by --trusted-ca-file."),
    f("client-crl-file", Path(|c| &mut c.client_tls.crl_file), Security, "", "Revocation list for client certificates."),
    f("client-cert-allowed-hostname", Str(|c| &mut c.client_tls.allowed_hostname), Security, "", "Accept only client certificates valid for this hostname."),
    f("trusted-ca-file", Path(|c| &mut c.client_tls.trusted_ca_file), Security, "", "CA bundle for verifying client certificates."),
    f("auto-tls", Bool(|c| &mut c.client_tls.auto_tls), Security, "false", "Serve clients with a generated self-signed certificate."),
    f("peer-cert-file", Path(|c| &mut c.peer_tls.cert_file), Security, "", "Certificate for peer connections."),
    f("peer-key-file", Path(|c| &mut c.peer_tls.key_file), Security, "", "Private key for --peer-cert-file."),
    f("peer-client-cert-file", Path(|c| &mut c.peer_tls.client_cert_file), Security, "", "Certificate presented when dialling peers (defaults to --peer-cert-file)."),
    f("peer-client-key-file", Path(|c| &mut c.peer_tls.client_key_file), Security, "", "Private key for --peer-client-cert-file."),
    f("peer-client-cert-auth", Bool(|c| &mut c.peer_tls.client_cert_auth), Security, "false", "Require peers to present a certificate signed by --peer-trusted-ca-file."),
    f("peer-trusted-ca-file", Path(|c| &mut c.peer_tls.trusted_ca_file), Security, "", "CA bundle for verifying peer certificates."),
    f("peer-auto-tls", Bool(|c| &mut c.peer_tls.auto_tls), Security, "false", "Use a generated self-signed certificate between peers."),
    f("peer-crl-file", Path(|c| &mut c.peer_tls.crl_file), Security, "", "Revocation list for peer certificates."),
    f("peer-cert-allowed-cn", Str(|c| &mut c.peer_tls.allowed_cn), Security, "", "Accept only peer certificates with this common name."),
    f("peer-cert-allowed-hostname", Str(|c| &mut c.peer_tls.allowed_hostname), Security, "", "Accept only peer certificates valid for this hostname."),
    f("cipher-suites", Custom(cipher_suites), Security, "", "Comma-separated TLS cipher suites (Go names) for client and peer listeners; empty uses the defaults."),
    f("tls-min-version", Str(|c| &mut c.tls_min_version), Security, "", "Lowest TLS version accepted (TLS1.2 or TLS1.3)."),
    f("tls-max-version", Str(|c| &mut c.tls_max_version), Security, "", "Highest TLS version accepted."),
    f("self-signed-cert-validity", Uint(|c| &mut c.self_signed_cert_validity), Security, "1", "Years an auto-TLS certificate stays valid."),
    f("cors", Custom(cors), Security, "*", "Comma-separated CORS origins; '*' allows all."),
    f("host-whitelist", Custom(host_whitelist), Security, "*", "Comma-separated Host header values accepted on plain-HTTP listeners; '*' allows all."),
    // auth
    f("auth-token", Str(|c| &mut c.auth_token), Auth, "simple", "Token type: 'simple', or 'jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>[,ttl=<duration>]'."),
    f("bcrypt-cost", Uint(|c| &mut c.bcrypt_cost), Auth, "10", "bcrypt cost for password hashes (4 to 31)."),
    f("auth-token-ttl", Uint(|c| &mut c.auth_token_ttl), Auth, "300", "Seconds a simple token stays valid."),
    // monitoring
    f("enable-pprof", Bool(|c| &mut c.enable_pprof), Monitoring, "false", "Serve runtime profiles under /debug/pprof/ on client URLs."),
    f("metrics", Str(|c| &mut c.metrics), Monitoring, "basic", "'basic', or 'extensive' to add latency histograms."),
    f("listen-metrics-urls", Urls(|c| &mut c.listen_metrics_urls), Monitoring, "", "Extra comma-separated URLs serving only /metrics and /health."),
    f("enable-grpc-gateway", Bool(|c| &mut c.enable_grpc_gateway), Monitoring, "true", "Serve the JSON gateway to the v3 API."),
    // logging
    f("logger", Str(|c| &mut c.logger), Logging, "capnslog", "'capnslog' for etcd 3.4's text lines, or 'zap' for JSON lines."),
    f("log-outputs", Custom(log_outputs), Logging, "default", "Where logs go: 'default', 'stderr', 'stdout' or file paths, comma-separated."),
    f("log-level", Str(|c| &mut c.log_level), Logging, "info", "One of debug, info, warn, error, panic, fatal."),
    f("enable-log-rotation", Bool(|c| &mut c.enable_log_rotation), Logging, "false", "Rotate a single log file output."),
    f("log-rotation-config-json", Str(|c| &mut c.log_rotation_config_json), Logging, oxcd_server::config::DEFAULT_LOG_ROTATION_CONFIG, "Rotation settings as JSON."),
    // experimental
    f("experimental-initial-corrupt-check", Bool(|c| &mut c.experimental_initial_corrupt_check), Experimental, "false", "Compare data with peers before serving."),
    f("experimental-corrupt-check-time", Setter::Duration(|c| &mut c.experimental_corrupt_check_time), Experimental, "0s", "Interval between cluster corruption checks; 0 disables."),
    f("experimental-enable-v2v3", Str(|c| &mut c.experimental_enable_v2v3), Experimental, "", "Key prefix for emulating v2 on v3 (not supported by oxcd)."),
    f("experimental-backend-bbolt-freelist-type", Str(|c| &mut c.experimental_backend_bbolt_freelist_type), Experimental, "array", "bbolt freelist type (accepted; oxcd's backend has none)."),
    f("experimental-enable-lease-checkpoint", Bool(|c| &mut c.experimental_enable_lease_checkpoint), Experimental, "false", "Leader checkpoints remaining lease TTLs to followers."),
    f("experimental-enable-lease-checkpoint-persist", Bool(|c| &mut c.experimental_enable_lease_checkpoint_persist), Experimental, "false", "Persist checkpointed TTLs; needs --experimental-enable-lease-checkpoint."),
    f("experimental-compaction-batch-limit", Int(|c| &mut c.experimental_compaction_batch_limit), Experimental, "0", "Revisions deleted per compaction batch (0 means 1000)."),
    f("experimental-compaction-sleep-interval", Setter::Duration(|c| &mut c.experimental_compaction_sleep_interval), Experimental, "10ms", "Pause between compaction batches."),
    f("experimental-watch-progress-notify-interval", Setter::Duration(|c| &mut c.experimental_watch_progress_notify_interval), Experimental, "10m", "Interval of watch progress notifications."),
    f("experimental-warning-apply-duration", Setter::Duration(|c| &mut c.experimental_warning_apply_duration), Experimental, "100ms", "Warn when applying one request takes longer."),
    f("experimental-warning-unary-request-duration", Setter::Duration(|c| &mut c.experimental_warning_unary_request_duration), Experimental, "300ms", "Warn when a unary request takes longer."),
    f("experimental-peer-skip-client-san-verification", Bool(|c| &mut c.peer_tls.skip_client_san_verify), Experimental, "false", "Do not check the SAN of peer client certificates."),
    f("experimental-snapshot-catchup-entries", Uint(|c| &mut c.snapshot_catchup_entries), Experimental, "5000", "Entries kept after a snapshot for slow followers."),
    f("experimental-max-learners", Int(|c| &mut c.experimental_max_learners), Experimental, "1", "Most learners allowed in the cluster."),
    f("experimental-enable-distributed-tracing", Bool(|c| &mut c.experimental_enable_distributed_tracing), Experimental, "false", "Export OpenTelemetry traces."),
    f("experimental-distributed-tracing-address", Str(|c| &mut c.experimental_distributed_tracing_address), Experimental, "0.0.0.0:4317", "OpenTelemetry collector address."),
    f("experimental-distributed-tracing-service-name", Str(|c| &mut c.experimental_distributed_tracing_service_name), Experimental, "etcd", "Service name in exported traces."),
    f("experimental-distributed-tracing-instance-id", Str(|c| &mut c.experimental_distributed_tracing_instance_id), Experimental, "", "Instance id in exported traces."),
    f("experimental-distributed-tracing-sampling-rate", Int(|c| &mut c.experimental_distributed_tracing_sampling_rate), Experimental, "0", "Traces sampled per million requests."),
    f("experimental-downgrade-check-time", Setter::Duration(|c| &mut c.experimental_downgrade_check_time), Experimental, "5s", "Interval of downgrade status checks."),
    f("experimental-memory-mlock", Bool(|c| &mut c.experimental_memory_mlock), Experimental, "false", "Lock the backend in RAM."),
    f("experimental-txn-mode-write-with-shared-buffer", Bool(|c| &mut c.experimental_txn_mode_write_with_shared_buffer), Experimental, "true", "Let write transactions read through the shared buffer."),
    f("experimental-bootstrap-defrag-threshold-megabytes", Uint(|c| &mut c.experimental_bootstrap_defrag_threshold_megabytes), Experimental, "0", "Defragment at start when this much space is reclaimable; 0 disables."),
    f("experimental-compact-hash-check-enabled", Bool(|c| &mut c.experimental_compact_hash_check_enabled), Experimental, "false", "Leader compares compaction hashes across members."),
    f("experimental-compact-hash-check-time", Setter::Duration(|c| &mut c.experimental_compact_hash_check_time), Experimental, "1m", "Interval of compaction hash checks."),
    f("experimental-wait-cluster-ready-timeout", Setter::Duration(|c| &mut c.experimental_wait_cluster_ready_timeout), Experimental, "5s", "Longest wait for the cluster to be ready before serving."),
    f("experimental-stop-grpc-service-on-defrag", Bool(|c| &mut c.experimental_stop_grpc_service_on_defrag), Experimental, "false", "Report NOT_SERVING on gRPC health while defragmenting."),
    f("experimental-local-address", Str(|c| &mut c.experimental_local_address), Experimental, "", "Local IP to dial peers from."),
    // unsafe
    f("force-new-cluster", Bool(|c| &mut c.force_new_cluster), Unsafe, "false", "Restart as a one-member cluster keeping the data."),
    f("unsafe-no-fsync", Bool(|c| &mut c.unsafe_no_fsync), Unsafe, "false", "Skip fsync; data can be lost on a crash."),
    // deprecated
    f("log-output", Custom(log_output), Deprecated, "default", "Old spelling of --log-outputs."),
    f("debug", Bool(|c| &mut c.debug), Deprecated, "false", "Same as --log-level=debug."),
    f("log-package-levels", Str(|c| &mut c.log_package_levels), Deprecated, "", "Per-package log levels (ignored)."),
    f("version", Setter::Version, Hidden, "false", "Print the version and exit."),
    // legacy flags etcd still accepts and ignores
    ignored("cluster-active-size"),
    ignored("cluster-remove-delay"),
    ignored("cluster-sync-interval"),
    ignored("config"),
    ignored("force"),
    ignored("max-result-buffer"),
    ignored("max-retry-attempts"),
    ignored("peer-heartbeat-interval"),
    ignored("peer-election-timeout"),
    ignored("retry-interval"),
    ignored("snapshot"),
    ignored("v"),
    ignored("vv"),
    ignored("test.coverprofile"),
    ignored("test.outputdir"),
];

/// Looks a flag up by name (without dashes).
pub(crate) fn lookup(name: &str) -> Option<&'static FlagDef> {
    FLAGS.iter().find(|f| f.name == name)
}

/// The environment variable for a flag: `ETCD_` + upper case, `-` → `_`.
pub(crate) fn env_key(name: &str) -> String {
    format!("ETCD_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Stores `value` into `cfg` with the flag's Go semantics. The error is the
/// reason part of Go's message (`parse error`, `invalid value`, ...).
pub(crate) fn apply(def: &FlagDef, cfg: &mut Config, value: &str) -> Result<(), String> {
    match def.setter {
        Setter::Bool(field) => *field(cfg) = values::go_bool(value)?,
        Setter::Str(field) => *field(cfg) = value.to_string(),
        Setter::Path(field) => *field(cfg) = PathBuf::from(value),
        Setter::Uint(field) => *field(cfg) = values::flag_uint(value, 64)?,
        Setter::Int(field) => *field(cfg) = values::flag_int(value)?,
        Setter::Uint32(field) => {
            let v = values::go_parse_uint(value, 32)
                .map_err(|e| e.strconv_message("ParseUint", value))?;
            *field(cfg) = u32::try_from(v).unwrap_or(u32::MAX);
        }
        Setter::Duration(field) => *field(cfg) = values::flag_duration(value)?,
        Setter::Urls(field) => {
            if !value.is_empty() {
                *field(cfg) = oxcd_server::config::parse_urls(value)?;
            }
        }
        Setter::Custom(set) => set(cfg, value)?,
        Setter::Ignored | Setter::ConfigFile | Setter::Version => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_unique_names_and_every_3_4_flag() {
        let mut names: Vec<_> = FLAGS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate flag names");
        for name in [
            "name",
            "data-dir",
            "wal-dir",
            "snapshot-count",
            "heartbeat-interval",
            "election-timeout",
            "listen-peer-urls",
            "listen-client-urls",
            "max-snapshots",
            "max-wals",
            "quota-backend-bytes",
            "max-txn-ops",
            "max-request-bytes",
            "max-concurrent-streams",
            "initial-advertise-peer-urls",
            "initial-cluster",
            "initial-cluster-state",
            "initial-cluster-token",
            "advertise-client-urls",
            "discovery-srv-name",
            "strict-reconfig-check",
            "pre-vote",
            "auto-tls",
            "peer-cert-allowed-cn",
            "cipher-suites",
            "cors",
            "host-whitelist",
            "auth-token",
            "bcrypt-cost",
            "auth-token-ttl",
            "enable-pprof",
            "metrics",
            "logger",
            "log-outputs",
            "log-level",
            "enable-grpc-gateway",
            "force-new-cluster",
            "unsafe-no-fsync",
            "experimental-enable-lease-checkpoint-persist",
            "experimental-peer-skip-client-san-verification",
            "listen-metrics-urls",
            "proxy-read-timeout",
            "debug",
            "log-package-levels",
            "log-output",
            "version",
        ] {
            assert!(lookup(name).is_some(), "missing --{name}");
        }
    }

    /// Flags the server acts on; each is read by the code it names (see
    /// the issue notes). Every flag of the table is here, warns when set
    /// (`oxcd_server::config::not_acted_on`), or is one of etcd's own
    /// ignored legacy flags: a new flag cannot be parsed and dropped
    /// without a word.
    const ACTS: &[&str] = &[
        "advertise-client-urls",
        "auto-compaction-mode",
        "auto-compaction-retention",
        "auto-tls",
        "backend-batch-interval",
        "auth-token",
        "auth-token-ttl",
        "backend-batch-limit",
        "enable-log-rotation",
        "bcrypt-cost",
        "cert-file",
        "cipher-suites",
        "client-cert-allowed-hostname",
        "client-cert-auth",
        "client-crl-file",
        "config-file",
        "cors",
        "data-dir",
        "debug",
        "election-timeout",
        "enable-grpc-gateway",
        "enable-pprof",
        "experimental-corrupt-check-time",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-lease-checkpoint-persist",
        "experimental-initial-corrupt-check",
        "experimental-max-learners",
        "experimental-snapshot-catchup-entries",
        "experimental-watch-progress-notify-interval",
        "force-new-cluster",
        "grpc-keepalive-interval",
        "grpc-keepalive-timeout",
        "heartbeat-interval",
        "host-whitelist",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "key-file",
        "listen-client-http-urls",
        "listen-client-urls",
        "listen-metrics-urls",
        "listen-peer-urls",
        "log-level",
        "log-output",
        "log-outputs",
        "logger",
        "max-concurrent-streams",
        "max-request-bytes",
        "max-snapshots",
        "max-txn-ops",
        "max-wals",
        "metrics",
        "name",
        "peer-auto-tls",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "peer-cert-file",
        "peer-client-cert-auth",
        "peer-client-cert-file",
        "peer-client-key-file",
        "peer-crl-file",
        "peer-key-file",
        "peer-trusted-ca-file",
        "pre-vote",
        "quota-backend-bytes",
        "snapshot-count",
        "strict-reconfig-check",
        "tls-max-version",
        "tls-min-version",
        "trusted-ca-file",
        "version",
        "wal-dir",
    ];

    /// oxcd does what these flags' non-default value asks for already
    /// (no election-tick advance beyond a single member's; no check of a
    /// peer certificate's SAN against its address), so a "set to a
    /// non-default value" warning would fire in the wrong case; they are
    /// listed, with that reason, in the README.
    const ALREADY_SO: &[&str] = &[
        "initial-election-tick-advance",
        "experimental-peer-skip-client-san-verification",
    ];

    #[test]
    fn every_flag_acts_or_warns() {
        let warns: Vec<&str> = oxcd_server::config::not_acted_on().collect();
        let mut silent = Vec::new();
        for flag in FLAGS {
            let n = flag.name;
            let classes = [
                ACTS.contains(&n),
                warns.contains(&n),
                ALREADY_SO.contains(&n),
                matches!(flag.setter, Setter::Ignored),
            ];
            match classes.iter().filter(|c| **c).count() {
                1 => {}
                0 => silent.push(n),
                _ => panic!("--{n} is classified twice"),
            }
        }
        assert!(
            silent.is_empty(),
            "flags neither acted on nor warned about: {silent:?}"
        );
        for n in ACTS.iter().chain(&warns) {
            assert!(lookup(n).is_some(), "--{n} is not in the table");
        }
    }

    #[test]
    fn env_keys() {
        assert_eq!(
            env_key("initial-cluster-token"),
            "ETCD_INITIAL_CLUSTER_TOKEN"
        );
        assert_eq!(env_key("v"), "ETCD_V");
    }
}
