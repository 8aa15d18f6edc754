//! etcd's `embed.Config.Validate` checks, with etcd's exact messages, plus
//! the defaults etcdmain fills in after parsing (data dir, initial cluster).

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::duration::parse_go_duration;
use super::urls::{raw_host, split_host_port, url_string, urls_string};
use super::{Config, DEFAULT_NAME, MAX_ELECTION_MS};

/// Why a configuration was rejected. `Display` is etcd's message, which
/// tooling and tests match on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read (Go's `open <path>: <reason>`).
    #[error("open {path}: {reason}")]
    ReadFile {
        /// The path as given.
        path: String,
        /// Lower-case OS reason, e.g. `no such file or directory`.
        reason: String,
    },
    /// The file is not YAML.
    #[error("error converting YAML to JSON: {0}")]
    Yaml(String),
    /// A YAML value of the wrong type (integer nanoseconds for durations).
    #[error(
        "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal {found} into Go struct field {strukt}.{field} of type {go_type}"
    )]
    YamlType {
        /// JSON kind found (`string`, `number`, `number -1`, `array`, ...).
        found: String,
        /// Go struct name (`configYAML` or `configProxy`).
        strukt: &'static str,
        /// Key path, e.g. `grpc-keepalive-min-time`.
        field: String,
        /// Go type expected, e.g. `time.Duration`.
        go_type: &'static str,
    },
    /// A bad URL list in the YAML file.
    #[error("unexpected error setting up {key}: {reason}")]
    YamlUrls {
        /// The YAML key.
        key: &'static str,
        /// etcd's URL error.
        reason: String,
    },
    /// A bad `proxy` or `discovery-fallback` value in the YAML file.
    #[error("unexpected error setting up {0}: invalid value")]
    YamlChoice(&'static str),
    /// `initial-cluster-state` in YAML is neither `new` nor `existing`.
    #[error("unexpected clusterState \"{0}\"")]
    ClusterState(String),
    /// `--logger` is neither `zap` nor `capnslog`.
    #[error("unknown logger option \"{0}\"")]
    Logger(String),
    /// `--log-level` is not a known level.
    #[error("unknown level \"{0}\"")]
    LogLevel(String),
    /// A listen URL whose host is neither an IP literal nor `localhost`.
    #[error("expected IP in URL for binding ({0})")]
    BindNotIp(String),
    /// An advertised peer URL without a usable host.
    #[error("--initial-advertise-peer-urls \"{urls}\" must be \"host:port\" ({reason})")]
    AdvertisePeerHost {
        /// All advertised peer URLs, comma-joined.
        urls: String,
        /// The specific problem.
        reason: String,
    },
    /// An advertised client URL without a usable host.
    #[error("--advertise-client-urls \"{urls}\" must be \"host:port\" ({reason})")]
    AdvertiseClientHost {
        /// All advertised client URLs, comma-joined.
        urls: String,
        /// The specific problem.
        reason: String,
    },
    /// More than one of initial-cluster, discovery and discovery-srv.
    #[error(
        "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""
    )]
    ConflictBootstrap,
    /// `--heartbeat-interval=0`.
    #[error("--heartbeat-interval must be >0 (set to {0}ms)")]
    HeartbeatZero(u64),
    /// `--election-timeout=0`.
    #[error("--election-timeout must be >0 (set to {0}ms)")]
    ElectionZero(u64),
    /// Election timeout below five heartbeats.
    #[error(
        "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]"
    )]
    ElectionTooShort {
        /// `--election-timeout`.
        election_ms: u64,
        /// `--heartbeat-interval`.
        heartbeat_ms: u64,
    },
    /// Election timeout above 50 s.
    #[error("--election-timeout[{0}ms] is too long, and should be set less than 50000ms")]
    ElectionTooLong(u64),
    /// Listen client URLs given on the command line without advertise URLs.
    #[error("--advertise-client-urls is required when --listen-client-urls is set explicitly")]
    UnsetAdvertiseClientUrls,
    /// `--auto-compaction-mode` other than periodic / revision.
    #[error("unknown auto-compaction-mode \"{0}\"")]
    AutoCompactionMode(String),
    /// `--auto-compaction-retention` that is neither an integer nor a duration.
    #[error("error parsing CompactionRetention: {0}")]
    AutoCompactionRetention(String),
    /// Lease checkpoint persistence without lease checkpoints.
    #[error(
        "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"
    )]
    LeaseCheckpointPersist,
}

/// The auto-compaction policy, decoded from mode and retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Retention `0`: no auto-compaction.
    Disabled,
    /// Keep this much history (bare integers are hours).
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(u64),
}

const LOG_LEVELS: [&str; 6] = ["debug", "info", "warn", "error", "panic", "fatal"];

impl Config {
    /// Fills etcd's derived defaults, then runs etcd's checks.
    ///
    /// Defaults: an empty `data_dir` becomes `<name>.etcd`; when `name` is
    /// not `default` and `initial_cluster` is still the built-in default, it
    /// becomes `<name>=<advertise peer urls>` (etcdmain's
    /// `UpdateDefaultClusterFromName`, without the 0.0.0.0 → hostname swap).
    /// Idempotent, so calling it twice is harmless.
    ///
    /// # Errors
    /// The first failed check, in etcd's order and with etcd's message.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.fill_defaults();
        self.check_logging()?;
        for urls in [
            &self.listen_peer_urls,
            &self.listen_client_urls,
            &self.listen_client_http_urls,
            &self.listen_metrics_urls,
        ] {
            check_bind_urls(urls)?;
        }
        if let Err(reason) = check_host_urls(&self.initial_advertise_peer_urls) {
            let urls = urls_string(&self.initial_advertise_peer_urls);
            return Err(ConfigError::AdvertisePeerHost { urls, reason });
        }
        if let Err(reason) = check_host_urls(&self.advertise_client_urls) {
            let urls = urls_string(&self.advertise_client_urls);
            return Err(ConfigError::AdvertiseClientHost { urls, reason });
        }
        let bootstraps = [&self.discovery, &self.initial_cluster, &self.discovery_srv];
        if bootstraps.iter().filter(|s| !s.is_empty()).count() > 1 {
            return Err(ConfigError::ConflictBootstrap);
        }
        self.check_timing()?;
        if !self.listen_client_urls.is_empty() && self.advertise_client_urls.is_empty() {
            return Err(ConfigError::UnsetAdvertiseClientUrls);
        }
        self.auto_compaction()?;
        if self.experimental_enable_lease_checkpoint_persist
            && !self.experimental_enable_lease_checkpoint
        {
            return Err(ConfigError::LeaseCheckpointPersist);
        }
        if self.experimental_enable_lease_checkpoint
            && !self.experimental_enable_lease_checkpoint_persist
        {
            tracing::warn!(
                "Detected that checkpointing is enabled without persistence. Consider enabling experimental-enable-lease-checkpoint-persist"
            );
        }
        Ok(())
    }

    fn fill_defaults(&mut self) {
        if self.data_dir.as_os_str().is_empty() {
            self.data_dir = PathBuf::from(format!("{}.etcd", self.name));
        }
        let default_cluster = Config::default().initial_cluster;
        if self.name != DEFAULT_NAME && self.initial_cluster == default_cluster {
            self.initial_cluster = self.initial_cluster_from_name(&self.name);
        }
    }

    fn check_logging(&self) -> Result<(), ConfigError> {
        if self.logger != "zap" && self.logger != "capnslog" {
            return Err(ConfigError::Logger(self.logger.clone()));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(ConfigError::LogLevel(self.log_level.clone()));
        }
        Ok(())
    }

    fn check_timing(&self) -> Result<(), ConfigError> {
        let (tick, election) = (self.heartbeat_interval_ms, self.election_timeout_ms);
        if tick == 0 {
            return Err(ConfigError::HeartbeatZero(tick));
        }
        if election == 0 {
            return Err(ConfigError::ElectionZero(election));
        }
        if tick.saturating_mul(5) > election {
            return Err(ConfigError::ElectionTooShort {
                election_ms: election,
                heartbeat_ms: tick,
            });
        }
        if election > MAX_ELECTION_MS {
            return Err(ConfigError::ElectionTooLong(election));
        }
        Ok(())
    }

    /// Decodes `--auto-compaction-mode` and `--auto-compaction-retention`
    /// the way etcd's `parseCompactionRetention` does: a non-negative integer
    /// is hours (periodic) or revisions (revision); anything else must be a
    /// Go duration.
    ///
    /// # Errors
    /// An unknown mode or an unparsable retention.
    pub fn auto_compaction(&self) -> Result<AutoCompaction, ConfigError> {
        let mode = self.auto_compaction_mode.as_str();
        if !matches!(mode, "" | "periodic" | "revision") {
            return Err(ConfigError::AutoCompactionMode(mode.to_string()));
        }
        let retention = self.auto_compaction_retention.as_str();
        let nanos: u64 = match retention.parse::<i64>() {
            Ok(n) if n >= 0 => {
                let n = n.unsigned_abs();
                if n == 0 {
                    return Ok(AutoCompaction::Disabled);
                }
                return Ok(match mode {
                    "revision" => AutoCompaction::Revision(n),
                    _ => AutoCompaction::Periodic(Duration::from_secs(n.saturating_mul(3600))),
                });
            }
            _ => {
                let d =
                    parse_go_duration(retention).map_err(ConfigError::AutoCompactionRetention)?;
                u64::try_from(d).unwrap_or(0)
            }
        };
        Ok(match (nanos, mode) {
            (0, _) => AutoCompaction::Disabled,
            // etcd reuses the duration's nanosecond count as a revision count.
            (n, "revision") => AutoCompaction::Revision(n),
            (n, _) => AutoCompaction::Periodic(Duration::from_nanos(n)),
        })
    }
}

fn check_bind_urls(urls: &[Url]) -> Result<(), ConfigError> {
    for u in urls {
        if matches!(u.scheme(), "unix" | "unixs") {
            continue;
        }
        let host = raw_host(u);
        if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        return Err(ConfigError::BindNotIp(url_string(u)));
    }
    Ok(())
}

fn check_host_urls(urls: &[Url]) -> Result<(), String> {
    for u in urls {
        let s = url_string(u);
        let authority = s.split_once("://").map_or("", |(_, a)| a);
        match split_host_port(authority) {
            Some(("", _)) => return Err(format!("unexpected empty host ({s})")),
            Some(_) => {}
            None => return Err(format!("address {authority}: missing port in address")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_urls;

    fn check(edit: impl FnOnce(&mut Config)) -> Result<Config, String> {
        let mut c = Config::default();
        edit(&mut c);
        c.validate().map(|()| c).map_err(|e| e.to_string())
    }

    #[test]
    fn validation_messages_match_etcd() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, &str)] = &[
            (
                |c| c.election_timeout_ms = 400,
                "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]",
            ),
            (
                |c| c.election_timeout_ms = 60000,
                "--election-timeout[60000ms] is too long, and should be set less than 50000ms",
            ),
            (|c| c.heartbeat_interval_ms = 0, "--heartbeat-interval must be >0 (set to 0ms)"),
            (|c| c.auto_compaction_mode = "x".into(), "unknown auto-compaction-mode \"x\""),
            (
                |c| c.experimental_enable_lease_checkpoint_persist = true,
                "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint",
            ),
            (
                |c| c.listen_peer_urls = parse_urls("http://example.com:2380").unwrap(),
                "expected IP in URL for binding (http://example.com:2380)",
            ),
            (
                |c| c.advertise_client_urls.clear(),
                "--advertise-client-urls is required when --listen-client-urls is set explicitly",
            ),
            (
                |c| c.discovery = "https://discovery.etcd.io/x".into(),
                "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"",
            ),
            (|c| c.logger = "bogus".into(), "unknown logger option \"bogus\""),
            (
                |c| c.auto_compaction_retention = "x".into(),
                "error parsing CompactionRetention: time: invalid duration \"x\"",
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(check(*edit).unwrap_err(), *want);
        }
    }

    #[test]
    fn validate_fills_defaults() {
        let c = check(|c| c.name = "n1".into()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("n1.etcd"));
        assert_eq!(c.initial_cluster, "n1=http://localhost:2380");
        let c = check(|c| {
            c.name = "n1".into();
            c.initial_cluster = "n1=http://10.0.0.1:2380".into();
            c.data_dir = "/d".into();
        })
        .unwrap();
        assert_eq!(c.initial_cluster, "n1=http://10.0.0.1:2380");
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert!(check(|c| c.listen_client_urls = parse_urls("http://[::1]:1").unwrap()).is_ok());
    }

    #[test]
    fn auto_compaction_decoding() {
        let ac = |mode: &str, r: &str| {
            let c = Config {
                auto_compaction_mode: mode.into(),
                auto_compaction_retention: r.into(),
                ..Config::default()
            };
            c.auto_compaction().unwrap()
        };
        assert_eq!(ac("periodic", "0"), AutoCompaction::Disabled);
        assert_eq!(
            ac("periodic", "2"),
            AutoCompaction::Periodic(Duration::from_secs(7200))
        );
        assert_eq!(
            ac("periodic", "30m"),
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        assert_eq!(ac("revision", "1000"), AutoCompaction::Revision(1000));
    }
}
