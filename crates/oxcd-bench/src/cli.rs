//! The command line, shaped like etcd's `benchmark` tool: global flags
//! (`--endpoints`, `--conns`, `--clients`, `--target-leader`) and one
//! subcommand per workload with etcd's flag names and defaults.
//!
//! Global flags may appear before or after the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `oxcd-bench [global flags] <command> [command flags]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "oxcd-bench",
    version,
    about = "Load generator for etcd v3 servers (oxcd or etcd), modelled on etcd's benchmark tool"
)]
pub struct Cli {
    /// Flags shared by every workload.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The workload to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every workload.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// gRPC endpoints, comma separated: `host:port`, `http://host:port` or
    /// `https://host:port` (`host:port` means https when `--cacert` is given).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels), spread over the endpoints.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients; client i uses connection i % conns.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Send all traffic to the leader (found with Maintenance/Status);
    /// a no-op with one endpoint.
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Print one JSON line instead of the text report.
    #[arg(long, global = true)]
    pub json: bool,
    /// Dial timeout per connection, in seconds.
    #[arg(long, global = true, default_value_t = 5)]
    pub dial_timeout: u64,
    /// Overall deadline for the whole run, in seconds: no request starts
    /// after it, and requests in flight are abandoned and counted as errors.
    #[arg(long, global = true, default_value_t = 600)]
    pub timeout: u64,
    /// `name:password`: each connection authenticates once and sends its
    /// token with every call (etcd's benchmark `--user`).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// CA bundle that verifies the servers' certificates (TLS).
    #[arg(long = "cacert", global = true)]
    pub tls_cacert: Option<PathBuf>,
    /// Client certificate presented to the servers (with `--key`).
    #[arg(long = "cert", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of `--cert`.
    #[arg(long = "key", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The gRPC client of the unary KV workloads (put, range, txn-put,
    /// compact): `h2`, this tool's lean one, or `tonic`, tonic's generated
    /// client on its `Channel` with its defaults, as a Rust user would
    /// connect.
    #[arg(long, global = true, value_enum, default_value = "h2")]
    pub client: ClientKind,
}

/// Which gRPC client the unary KV calls go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    /// Straight on the `h2` crate (`h2chan`).
    H2,
    /// tonic's `Channel` and generated `KvClient`.
    Tonic,
}

impl Default for GlobalOpts {
    fn default() -> Self {
        GlobalOpts {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            conns: 1,
            clients: 1,
            target_leader: false,
            json: false,
            dial_timeout: 5,
            timeout: 600,
            user: None,
            tls_cacert: None,
            tls_cert: None,
            tls_key: None,
            client: ClientKind::H2,
        }
    }
}

/// One workload.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Benchmark put.
    Put(PutOpts),
    /// Benchmark range.
    Range(RangeOpts),
    /// Benchmark txns, each made of `--txn-ops` puts.
    TxnPut(TxnPutOpts),
    /// Benchmark watch: watcher creation, then puts on the watched keys and
    /// the events they fan out to.
    Watch(WatchOpts),
    /// Benchmark watch latency: time from a put's acknowledgement to the
    /// event's receipt by each watcher.
    WatchLatency(WatchLatencyOpts),
    /// Benchmark lease keep-alive round trips.
    LeaseKeepalive(LeaseOpts),
    /// Benchmark new connections: each operation dials a fresh connection
    /// (TCP, TLS with `--cacert`, HTTP/2), makes one serializable range
    /// request on it and closes it.
    Connect(ConnectOpts),
    /// Benchmark put latency while the server compacts a long history.
    Compact(CompactOpts),
}

/// `put`: writes `--total` keys of `--key-size` bytes chosen from
/// `--key-space-size` keys, randomly or in order.
#[derive(Debug, Clone, Parser)]
#[command(name = "put")]
pub struct PutOpts {
    /// Total number of put requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size of put request.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of put request.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys (index modulo the key space) instead of random ones.
    #[arg(long)]
    pub sequential_keys: bool,
}

impl Default for PutOpts {
    fn default() -> Self {
        PutOpts::parse_from(["put"])
    }
}

/// Read consistency of `range`, as etcd's `--consistency` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable (`l`): goes through the leader's read index.
    #[value(name = "l")]
    Linearizable,
    /// Serializable (`s`): served from the local store.
    #[value(name = "s")]
    Serializable,
}

/// `range KEY [END]`: reads one key or the range [KEY, END).
#[derive(Debug, Clone, Parser)]
#[command(name = "range")]
pub struct RangeOpts {
    /// Key to read (or start of the range).
    #[arg(required_unless_present_any = ["all", "key_space_size"])]
    pub key: Option<String>,
    /// End of the range (exclusive); absent reads the single key.
    pub end: Option<String>,
    /// Total number of range requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Linearizable (`l`) or serializable (`s`).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Maximum number of keys per response (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Return only the count of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Read every key (key and range end `\0`, which binary keys need:
    /// they cannot be given on a command line).
    #[arg(long, conflicts_with_all = ["key", "end"])]
    pub all: bool,
    /// Each request reads one key drawn at random from the `N` keys put
    /// writes with `--key-size 8 --key-space-size N` (a large key space
    /// read beyond the caches, rather than one hot key).
    #[arg(long, conflicts_with_all = ["key", "end", "all"])]
    pub key_space_size: Option<u64>,
}

/// `txn-put`: txns of `--txn-ops` puts on distinct keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "txn-put")]
pub struct TxnPutOpts {
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
    /// Total number of txn requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size of each put.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size of each put.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys (at least `--txn-ops`).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
}

impl Default for TxnPutOpts {
    fn default() -> Self {
        TxnPutOpts::parse_from(["txn-put"])
    }
}

/// `watch`: `--streams` streams with `--watch-per-stream` watchers each on
/// `--watched-key-total` keys, then `--put-total` puts on those keys.
#[derive(Debug, Clone, Parser)]
#[command(name = "watch")]
pub struct WatchOpts {
    /// Number of watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Number of watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Number of distinct watched keys (watcher w watches key w % this).
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: u64,
    /// Number of puts after the watchers are created.
    #[arg(long, default_value_t = 1_000)]
    pub put_total: u64,
    /// Puts per second (0: unlimited).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Key size.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of each put.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Watch each key as a prefix (a range watcher on every key that starts
    /// with it) instead of as a single key; keys are fixed-size, so each
    /// put still reaches the same watchers.
    #[arg(long)]
    pub prefix: bool,
}

impl Default for WatchOpts {
    fn default() -> Self {
        WatchOpts::parse_from(["watch"])
    }
}

/// `watch-latency`: `--watchers` watchers spread over `--streams` streams on
/// one key, and `--total` puts on it, one at a time at `--put-rate`.
#[derive(Debug, Clone, Parser)]
#[command(name = "watch-latency")]
pub struct WatchLatencyOpts {
    /// Total number of puts; every watcher should see each one.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Puts per second (0: unlimited, still one at a time).
    #[arg(long, default_value_t = 100)]
    pub put_rate: u64,
    /// Total number of watchers, spread round-robin over the streams.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Number of watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Key size.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size.
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
}

impl Default for WatchLatencyOpts {
    fn default() -> Self {
        WatchLatencyOpts::parse_from(["watch-latency"])
    }
}

/// `lease-keepalive`: each client grants one lease and sends keep-alives on
/// one stream until `--total` round trips are done.
#[derive(Debug, Clone, Parser)]
#[command(name = "lease-keepalive")]
pub struct LeaseOpts {
    /// Total number of keep-alive round trips.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// TTL of each granted lease, in seconds.
    #[arg(long, default_value_t = 100)]
    pub ttl: i64,
}

impl Default for LeaseOpts {
    fn default() -> Self {
        LeaseOpts::parse_from(["lease-keepalive"])
    }
}

/// `connect`: `--total` fresh connections, `--rate` per second.
#[derive(Debug, Clone, Parser)]
#[command(name = "connect")]
pub struct ConnectOpts {
    /// Total number of connections.
    #[arg(long, default_value_t = 1_000)]
    pub total: u64,
    /// New connections per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The key each connection reads once.
    #[arg(default_value = "foo")]
    pub key: String,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts::parse_from(["connect"])
    }
}

/// `compact`: `--revisions` puts of history, `--idle-total` paced puts,
/// then paced puts while a physical compaction of that history runs.
#[derive(Debug, Clone, Parser)]
#[command(name = "compact")]
pub struct CompactOpts {
    /// Puts written first, the history compaction deletes.
    #[arg(long, default_value_t = 100_000)]
    pub revisions: u64,
    /// Distinct keys the puts cycle over (keys are 8 bytes).
    #[arg(long, default_value_t = 1_000)]
    pub key_space_size: u64,
    /// Value size of each put.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Puts per second in the two measured phases.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Puts measured before the compaction starts.
    #[arg(long, default_value_t = 5_000)]
    pub idle_total: u64,
    /// At most this many puts while compaction runs (it ends the phase
    /// when it finishes first).
    #[arg(long, default_value_t = 100_000)]
    pub total: u64,
}

impl Default for CompactOpts {
    fn default() -> Self {
        CompactOpts::parse_from(["compact"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from([
            "oxcd-bench",
            "--endpoints",
            "127.0.0.1:1,http://127.0.0.1:2",
            "--conns=100",
            "put",
            "--clients",
            "1000",
            "--total=5",
            "--val-size",
            "256",
            "--sequential-keys",
            "--json",
        ])
        .expect("valid command line");
        assert_eq!(cli.global.endpoints, ["127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!((cli.global.conns, cli.global.clients), (100, 1000));
        assert!(cli.global.json);
        let Command::Put(put) = cli.command else {
            panic!("expected put")
        };
        assert_eq!((put.total, put.key_size, put.val_size), (5, 8, 256));
        assert!(put.sequential_keys);
    }

    #[test]
    fn range_takes_key_end_and_consistency() {
        let cli = Cli::try_parse_from(["b", "range", "a", "z", "--consistency", "s"])
            .expect("valid command line");
        let Command::Range(r) = cli.command else {
            panic!("expected range")
        };
        assert_eq!((r.key.as_deref(), r.end.as_deref()), (Some("a"), Some("z")));
        assert_eq!(r.consistency, Consistency::Serializable);
        assert!(Cli::try_parse_from(["b", "range", "a", "--consistency", "x"]).is_err());
        assert!(Cli::try_parse_from(["b", "range"]).is_err());
        assert!(Cli::try_parse_from(["b", "range", "a", "--all"]).is_err());
        let Command::Range(r) = Cli::try_parse_from(["b", "range", "--all"])
            .expect("valid")
            .command
        else {
            panic!("expected range")
        };
        assert!(r.all && r.key.is_none());
    }

    #[test]
    fn subcommand_names_and_defaults_match_etcds_tool() {
        for name in [
            "txn-put",
            "watch",
            "watch-latency",
            "lease-keepalive",
            "put",
            "connect",
            "compact",
        ] {
            assert!(Cli::try_parse_from(["b", name]).is_ok(), "{name}");
        }
        assert_eq!(PutOpts::default().total, 10_000);
        assert_eq!(TxnPutOpts::default().txn_ops, 1);
        assert_eq!(WatchLatencyOpts::default().put_rate, 100);
        assert_eq!(LeaseOpts::default().ttl, 100);
        assert_eq!(GlobalOpts::default().conns, 1);
        assert_eq!(ConnectOpts::default().rate, 0);
    }
}
