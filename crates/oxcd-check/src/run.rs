//! One run, start to verdict, as numbered steps:
//! 1. start the cluster (or check the given endpoints answer);
//! 2. check the nemesis can run;
//! 3. run clients, watchers and the nemesis for the duration;
//! 4. lift every fault, restart what is down, wait for convergence;
//! 5. read the final revision history (from the last compaction on);
//! 6. let watchers catch up to it, then stop them; rebuild the compacted
//!    part of the history from their events (see [`scan`]);
//! 7. run the checkers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::check::{self, CheckResult, Verdict};
use crate::client::MemberClient;
use crate::cluster::{self, Cluster, StartOptions};
use crate::error::Error;
use crate::history::{History, Op};
use crate::nemesis::{self, snapshot, Nemesis, NemesisLog, Plan};
use crate::report::Report;
use crate::scan::{self, Scan};
use crate::workload::{self, Clock, WorkloadConfig};

/// How long the watchers get to deliver the final revision history.
const WATCH_CATCH_UP: Duration = Duration::from_secs(30);

/// How long members get to agree on a revision after the faults end.
const CONVERGE: Duration = Duration::from_secs(30);

/// Where the cluster comes from.
#[derive(Clone, Debug)]
pub enum Target {
    /// Start `members` members of this binary under `dir` (a temp dir if
    /// `None`).
    Spawn {
        /// The server binary (oxcd or etcd).
        binary: PathBuf,
        /// Cluster size.
        members: usize,
        /// Where data dirs and logs go.
        dir: Option<PathBuf>,
    },
    /// An existing cluster's client URLs.
    Endpoints(Vec<String>),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The cluster.
    pub target: Target,
    /// Concurrent clients.
    pub clients: usize,
    /// Watchers.
    pub watchers: usize,
    /// Keys in the key set.
    pub keys: usize,
    /// Workload duration.
    pub duration: Duration,
    /// Seed for every random choice.
    pub seed: u64,
    /// The faults.
    pub nemesis: Nemesis,
    /// Timeout of each client operation.
    pub op_timeout: Duration,
    /// Time bound of the linearizability search.
    pub check_timeout: Duration,
    /// See [`WorkloadConfig::selftest_stale_reads`].
    pub selftest_stale_reads: bool,
    /// `--snapshot-count` of started members (snapshot-kill defaults it
    /// to [`snapshot::DEFAULT_SNAPSHOT_COUNT`]; otherwise the server's).
    pub snapshot_count: Option<u64>,
}

/// The flags and environment members need for `cfg`'s nemesis, and the
/// snapshot-kill setup that goes with them.
fn start_options(cfg: &Config, binary: &std::path::Path) -> (StartOptions, snapshot::Setup) {
    let mut options = StartOptions::default();
    if cfg.nemesis.wants_failpoints() {
        // Ignored by servers without failpoints; preflight asks.
        options
            .env
            .push(("OXCD_FAILPOINTS_HTTP".into(), "1".into()));
    }
    let count = match (cfg.nemesis, cfg.snapshot_count) {
        (_, Some(n)) => Some(n),
        (Nemesis::SnapshotKill, None) => Some(snapshot::DEFAULT_SNAPSHOT_COUNT),
        _ => None,
    };
    if let Some(n) = count {
        options
            .args
            .extend(["--snapshot-count".into(), n.to_string()]);
    }
    let mut setup = snapshot::Setup::default();
    if cfg.nemesis == Nemesis::SnapshotKill {
        let oxcd = cluster::is_oxcd(binary);
        if oxcd {
            options.args.extend([
                "--experimental-snapshot-catchup-entries".into(),
                snapshot::OXCD_CATCH_UP.to_string(),
            ]);
        }
        setup = snapshot::Setup::new(count.unwrap_or(snapshot::DEFAULT_SNAPSHOT_COUNT), oxcd);
    }
    (options, setup)
}

/// Carries out one run.
///
/// # Errors
/// The cluster cannot be started or reached, the nemesis cannot run, or
/// the cluster cannot be brought back for the final read. A run that gets
/// that far always returns a [`Report`], whatever the verdicts.
pub async fn run(cfg: &Config) -> Result<Report, Error> {
    let started = Instant::now();
    // 1.
    let (mut cluster, urls, target, _tmp, setup, server) = match &cfg.target {
        Target::Spawn {
            binary,
            members,
            dir,
        } => {
            let (path, tmp) = match dir {
                Some(d) => (d.clone(), None),
                None => {
                    let t = tempfile::Builder::new()
                        .prefix("oxcd-check-")
                        .tempdir()
                        .map_err(|e| Error::io("create temp dir", e))?;
                    (t.path().to_path_buf(), Some(t))
                }
            };
            let (options, setup) = start_options(cfg, binary);
            let c = Cluster::start(binary, *members, &path, &options).await?;
            let urls = c.client_urls();
            let target = format!(
                "{} x{members} (data in {})",
                binary.display(),
                path.display()
            );
            let server = binary.display().to_string();
            (Some(c), urls, target, tmp, setup, server)
        }
        Target::Endpoints(urls) => {
            nemesis::preflight(cfg.nemesis, None, "", snapshot::Setup::default()).await?;
            cluster::check_reachable(urls).await?;
            let target = urls.join(",");
            (
                None,
                urls.clone(),
                target.clone(),
                None,
                snapshot::Setup::default(),
                target,
            )
        }
    };
    // 2.
    let plan = nemesis::preflight(cfg.nemesis, cluster.as_mut(), &server, setup).await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("/oxcd-check/{}-{nanos}/", cfg.seed);
    let start_revision = current_revision(&urls).await? + 1;
    let wcfg = Arc::new(WorkloadConfig {
        urls: urls.clone(),
        clients: cfg.clients,
        keys: cfg.keys,
        prefix: prefix.clone(),
        op_timeout: cfg.op_timeout,
        seed: cfg.seed,
        selftest_stale_reads: cfg.selftest_stale_reads,
    });
    // 3.
    let clock = Clock::start();
    let (ops, mut nemesis_log, cluster, watch_stop, watchers) =
        drive(cfg, plan, &wcfg, cluster, start_revision, clock).await;
    let workload_time = Duration::from_nanos(clock.now());
    let mut cluster = cluster;
    let mut notes = Vec::new();
    // 4.
    if let Some(c) = cluster.as_mut() {
        if let Err(e) = c.recover_all().await {
            nemesis_log
                .failures
                .push(format!("cluster could not be recovered after the run: {e}"));
        }
        if c.unattributed_connections() > 0 {
            notes.push(format!(
                "{} peer connections had no origin found in /proc; a partition may not have \
                 cut them",
                c.unattributed_connections()
            ));
        }
    }
    if let Err(e) = wait_converged(&urls).await {
        notes.push(e);
    }
    // 5.
    let scan = match scan::scan(&urls, &prefix, start_revision, nemesis_log.compacted).await {
        Ok(s) => Some(s),
        Err(e) => {
            notes.push(format!("final revision history unavailable: {e}"));
            None
        }
    };
    // 6.
    let watches = stop_watchers(watchers, watch_stop, scan.as_ref()).await;
    let mut scan = scan;
    if let Some(s) = scan.as_mut() {
        scan::complete_from_watches(s, &watches);
        if let Some(why) = &s.incomplete {
            notes.push(format!("revision history incomplete: {why}"));
        }
    }
    // 7.
    let history = History { ops, watches };
    let checks = run_checks(cfg, &history, scan.as_ref(), &nemesis_log).await;
    drop(cluster);
    Ok(Report {
        target,
        nemesis: cfg.nemesis.to_string(),
        seed: cfg.seed,
        workload_time,
        total_time: started.elapsed(),
        history,
        nemesis_log,
        checks,
        notes,
    })
}

type Watchers = Vec<(workload::WatcherHandle, tokio::task::JoinHandle<()>)>;

/// Step 3: clients, watchers and nemesis for the duration. Watchers keep
/// running (they are stopped in step 6).
async fn drive(
    cfg: &Config,
    plan: Plan,
    wcfg: &Arc<WorkloadConfig>,
    cluster: Option<Cluster>,
    start_revision: i64,
    clock: Clock,
) -> (
    Vec<Op>,
    NemesisLog,
    Option<Cluster>,
    CancellationToken,
    Watchers,
) {
    let stop = CancellationToken::new();
    let watch_stop = CancellationToken::new();
    let watchers: Watchers = (0..cfg.watchers)
        .map(|w| {
            workload::spawn_watcher(wcfg.clone(), w, start_revision, clock, watch_stop.clone())
        })
        .collect();
    let clients: Vec<_> = (0..cfg.clients)
        .map(|c| tokio::spawn(workload::run_client(wcfg.clone(), c, clock, stop.clone())))
        .collect();
    let nemesis_task =
        cluster.map(|c| tokio::spawn(nemesis::run(plan, c, cfg.seed, clock, stop.clone())));
    tokio::time::sleep(cfg.duration).await;
    stop.cancel();
    let mut ops = Vec::new();
    for c in clients {
        if let Ok(mut list) = c.await {
            ops.append(&mut list);
        }
    }
    ops.sort_by_key(|op| (op.call, op.client));
    for (i, op) in ops.iter_mut().enumerate() {
        op.id = i;
    }
    let (cluster, log) = match nemesis_task {
        Some(t) => match t.await {
            Ok((c, log)) => (Some(c), log),
            Err(e) => {
                let log = NemesisLog {
                    failures: vec![format!("nemesis task failed: {e}")],
                    ..NemesisLog::default()
                };
                (None, log)
            }
        },
        None => (None, NemesisLog::default()),
    };
    (ops, log, cluster, watch_stop, watchers)
}

/// The current store revision (linearizable read on any member).
async fn current_revision(urls: &[String]) -> Result<i64, Error> {
    let mut last = String::new();
    for url in urls {
        let client = MemberClient::new(url, Duration::from_secs(5)).map_err(Error::Config)?;
        match client.range(b"oxcd-check-probe", b"", 0, false).await {
            Ok(r) => return Ok(r.header.map_or(0, |h| h.revision)),
            Err(e) => last = format!("{url}: {}", e.message()),
        }
    }
    Err(Error::Unreachable(last))
}

/// Step 4: polls until every member's local (serializable) revision is
/// the same; `Err` is a note for the report.
async fn wait_converged(urls: &[String]) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE;
    let mut revs = Vec::new();
    while Instant::now() < deadline {
        revs.clear();
        for url in urls {
            let rev = match MemberClient::new(url, Duration::from_secs(2)) {
                Ok(c) => c
                    .range(b"oxcd-check-probe", b"", 0, true)
                    .await
                    .ok()
                    .and_then(|r| r.header)
                    .map(|h| h.revision),
                Err(_) => None,
            };
            revs.push(rev);
        }
        if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "members did not converge within {CONVERGE:?}: local revisions {revs:?}"
    ))
}

/// Step 6: waits (bounded) until every watcher has received the last event
/// of the final history, then stops them and returns their logs.
async fn stop_watchers(
    watchers: Watchers,
    stop: CancellationToken,
    scan: Option<&Scan>,
) -> Vec<crate::history::WatchLog> {
    let target = scan.and_then(|s| s.events.last()).map_or(0, |e| e.revision);
    let deadline = tokio::time::Instant::now() + WATCH_CATCH_UP;
    for (handle, _) in &watchers {
        let mut progress = handle.progress.clone();
        let _ = tokio::time::timeout_at(deadline, progress.wait_for(|r| *r >= target)).await;
    }
    stop.cancel();
    let mut logs = Vec::new();
    for (handle, task) in watchers {
        let _ = task.await;
        let log = handle.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        logs.push(log);
    }
    logs
}

/// Step 7.
async fn run_checks(
    cfg: &Config,
    history: &History,
    scan: Option<&Scan>,
    nemesis_log: &NemesisLog,
) -> Vec<CheckResult> {
    let deadline = Instant::now() + cfg.check_timeout;
    let (lin, lin_summary) = {
        let ops = history.ops.clone();
        // An incomplete history cannot settle unknown writes: the model
        // then lets each take effect or not.
        let scan = scan.filter(|s| s.incomplete.is_none()).cloned();
        tokio::task::spawn_blocking(move || {
            check::linearizable::check(&check::linearizable::Input {
                ops: &ops,
                scan: scan.as_ref(),
                deadline,
            })
        })
        .await
        .unwrap_or_else(|e| {
            (
                Verdict::Unknown(format!("checker crashed: {e}")),
                String::new(),
            )
        })
    };
    let (lost, lost_summary) = check::lost::check(&history.ops, scan);
    let (watch, watch_summary) = check::watch::check(&history.watches, scan);
    let (rev, rev_summary) = check::revision::check(&history.ops);
    let recovery = Verdict::from_violations(nemesis_log.failures.clone());
    vec![
        CheckResult {
            name: "linearizable",
            verdict: lin,
            summary: lin_summary,
        },
        CheckResult {
            name: "lost-writes",
            verdict: lost,
            summary: lost_summary,
        },
        CheckResult {
            name: "watch",
            verdict: watch,
            summary: watch_summary,
        },
        CheckResult {
            name: "revisions",
            verdict: rev,
            summary: rev_summary,
        },
        CheckResult {
            name: "recovery",
            verdict: recovery,
            summary: format!("{} nemesis events", nemesis_log.events.len()),
        },
    ]
}
