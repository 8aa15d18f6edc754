//! `oxcd-check`: flags to a [`run::Config`], run, print, exit with the
//! verdict (0 PASS, 1 FAIL, 2 UNKNOWN, 3 the run could not be carried out).
//!
//! # Release check (long mode)
//!
//! Before a release, run each nemesis for 10 minutes on a 3-member oxcd
//! cluster (`--long` is `--duration 600 --check-timeout 1800`); every run
//! must print PASS (linearizable, 0 lost acknowledged writes, valid
//! watches, monotonic revisions, every fault recovered), and the op counts
//! and verdicts go into the release note:
//! ```text
//! for n in kill pause partition disk membership; do
//!   oxcd-check --server target/debug/oxcd --nemesis $n --long --seed 1 --out /tmp/long-$n
//! done
//! ```
//! `disk` needs a debug build (failpoints); the others also run against
//! etcd (`--server /usr/bin/etcd`), which must pass too. `snapshot-kill`
//! and `compact-defrag` are worth a long run as well.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use oxcd_check::nemesis::Nemesis;
use oxcd_check::run::{self, Config, Target};

/// Robustness checker for etcd v3 clusters: concurrent clients and
/// watchers under faults, then linearizability, lost-write, watch and
/// revision checks.
#[derive(Debug, Parser)]
#[command(name = "oxcd-check", version)]
struct Args {
    /// Server binary to start a cluster of (oxcd or etcd). Default: `oxcd`
    /// next to this executable, else on PATH.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Check an existing cluster instead (comma-separated client URLs);
    /// only `--nemesis none` is possible then.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Members of the cluster to start.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Watchers on the key prefix.
    #[arg(long, default_value_t = 2)]
    watchers: usize,
    /// Keys in the key set (few keys, so histories interleave).
    #[arg(long, default_value_t = 12)]
    keys: usize,
    /// Workload duration in seconds (default 30, or 600 with --long).
    #[arg(long)]
    duration: Option<f64>,
    /// The release-check long mode: a 600 s workload (see the crate doc).
    #[arg(long)]
    long: bool,
    /// `--snapshot-count` of the members started (default: the server's,
    /// 200 under --nemesis snapshot-kill).
    #[arg(long)]
    snapshot_count: Option<u64>,
    /// Seed of every random choice (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// none, kill, kill-leader, pause, partition, one-way, disk (oxcd debug
    /// builds), membership, snapshot-kill, compact-defrag or mixed.
    #[arg(long, default_value = "none")]
    nemesis: Nemesis,
    /// Timeout of each client operation, in seconds.
    #[arg(long, default_value_t = 5.0)]
    op_timeout: f64,
    /// Time bound of the linearizability search, in seconds; past it the
    /// verdict is UNKNOWN (default 120, or 1800 with --long: a 10-minute
    /// run under kills records some 800 000 operations, whose search took
    /// about 12 s a key).
    #[arg(long)]
    check_timeout: Option<f64>,
    /// Where to keep data dirs and member logs (default: a temp dir,
    /// removed at the end; under --out DIR/cluster when --out is given).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write history.jsonl, watches.jsonl and report.txt here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Self-test of the checker: send reads as serializable but check them
    /// as linearizable. With a partition or pause nemesis, stale reads
    /// follow and the run must FAIL.
    #[arg(long, hide = true)]
    selftest_stale_reads: bool,
}

fn seconds(s: f64, flag: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("--{flag} {s}: {e}"))
}

/// `oxcd` next to this executable, else `oxcd` (found on PATH).
fn default_server() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("oxcd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("oxcd"))
}

fn config(args: &Args) -> Result<Config, String> {
    let target = if args.endpoints.is_empty() {
        let dir = args
            .work_dir
            .clone()
            .or_else(|| args.out.as_ref().map(|o| o.join("cluster")));
        // Members started on an earlier run's data would not form a new
        // cluster (and would mix two histories): refuse, never reuse.
        if let Some(d) = dir.as_ref().filter(|d| d.exists()) {
            return Err(format!(
                "{} exists (an earlier run's data dirs); give an empty --out or --work-dir",
                d.display()
            ));
        }
        Target::Spawn {
            binary: args.server.clone().unwrap_or_else(default_server),
            members: args.members,
            dir,
        }
    } else {
        if args.server.is_some() {
            return Err("--server and --endpoints exclude each other".into());
        }
        Target::Endpoints(args.endpoints.clone())
    };
    if args.clients == 0 || args.keys == 0 {
        return Err("--clients and --keys must be at least 1".into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    Ok(Config {
        target,
        clients: args.clients,
        watchers: args.watchers,
        keys: args.keys,
        duration: seconds(
            args.duration
                .unwrap_or(if args.long { 600.0 } else { 30.0 }),
            "duration",
        )?,
        seed,
        nemesis: args.nemesis,
        op_timeout: seconds(args.op_timeout, "op-timeout")?,
        check_timeout: seconds(
            args.check_timeout
                .unwrap_or(if args.long { 1800.0 } else { 120.0 }),
            "check-timeout",
        )?,
        selftest_stale_reads: args.selftest_stale_reads,
        snapshot_count: args.snapshot_count,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxcd-check: {e}");
            return ExitCode::from(3);
        }
    };
    // Ctrl-C drops the run, and with it the cluster (members are killed).
    let result = tokio::select! {
        r = run::run(&cfg) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("oxcd-check: interrupted");
            return ExitCode::from(3);
        }
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("oxcd-check: {e}");
            return ExitCode::from(3);
        }
    };
    print!("{}", report.summary());
    if let Some(dir) = &args.out {
        if let Err(e) = report.write(dir) {
            eprintln!("oxcd-check: {e}");
            return ExitCode::from(3);
        }
        println!("report: {}", dir.join("report.txt").display());
    } else {
        for c in &report.checks {
            if let oxcd_check::check::Verdict::Fail(v) = &c.verdict {
                for line in v.iter().take(3) {
                    println!("{}: {line}", c.name);
                }
            }
        }
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(3))
}
