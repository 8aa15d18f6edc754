//! Nemeses: the faults injected while the workload runs. Each round waits a
//! calm interval, injects one fault, holds it, and lifts it; every step is
//! logged with its time. A fault that cannot be lifted (a killed member
//! that does not come back) is recorded as a recovery failure.
//!
//! The simple faults (kill, pause, partition, one-way) live here; each fault that
//! needs a protocol of its own has a module: [`disk`] (oxcd failpoints),
//! [`membership`] (remove and re-add a member), [`snapshot`] (kill during
//! a snapshot send), [`compact`] (compaction and defragmentation).

pub mod compact;
pub mod disk;
pub mod membership;
pub mod snapshot;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::error::Error;
use crate::workload::Clock;

/// Which faults to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// No faults.
    None,
    /// SIGKILL a random member, then restart it.
    Kill,
    /// SIGKILL the leader, then restart it.
    KillLeader,
    /// SIGSTOP a random member, then SIGCONT.
    Pause,
    /// Cut a random member off from its peers both ways, then heal.
    Partition,
    /// A random member's peer links cut one way, connections kept open:
    /// it hears no peer (deaf) or no peer hears it (mute), then healed.
    OneWay,
    /// oxcd failpoints on a random member: slow WAL and backend fsync,
    /// a failed fsync or write (the member must exit), a crash at a step.
    Disk,
    /// Remove a random follower, wipe it, add it back as a new member.
    Membership,
    /// Kill the leader or the follower while a snapshot is sent to it.
    SnapshotKill,
    /// Compact a few hundred revisions back and defragment a member.
    CompactDefrag,
    /// A random one of kill, kill-leader, pause, partition, membership
    /// (3 or more members) and disk (servers with failpoints), each round.
    Mixed,
}

impl Nemesis {
    /// Every name `--nemesis` accepts.
    pub const NAMES: [&'static str; 11] = [
        "none",
        "kill",
        "kill-leader",
        "pause",
        "partition",
        "one-way",
        "disk",
        "membership",
        "snapshot-kill",
        "compact-defrag",
        "mixed",
    ];

    /// Whether members must serve oxcd's `/debug/failpoints`.
    pub fn wants_failpoints(self) -> bool {
        matches!(self, Nemesis::Disk | Nemesis::Mixed)
    }
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::OneWay => "one-way",
            Nemesis::Disk => "disk",
            Nemesis::Membership => "membership",
            Nemesis::SnapshotKill => "snapshot-kill",
            Nemesis::CompactDefrag => "compact-defrag",
            Nemesis::Mixed => "mixed",
        };
        f.write_str(name)
    }
}

impl FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Nemesis, String> {
        Ok(match s {
            "none" => Nemesis::None,
            "kill" => Nemesis::Kill,
            "kill-leader" => Nemesis::KillLeader,
            "pause" => Nemesis::Pause,
            "partition" => Nemesis::Partition,
            "one-way" => Nemesis::OneWay,
            "disk" => Nemesis::Disk,
            "membership" => Nemesis::Membership,
            "snapshot-kill" => Nemesis::SnapshotKill,
            "compact-defrag" => Nemesis::CompactDefrag,
            "mixed" => Nemesis::Mixed,
            other => {
                return Err(format!(
                    "unknown nemesis {other:?} (one of {})",
                    Nemesis::NAMES.join(", ")
                ))
            }
        })
    }
}

/// What a nemesis did.
#[derive(Clone, Debug, Default)]
pub struct NemesisLog {
    /// (ns since start, what happened).
    pub events: Vec<(u64, String)>,
    /// Faults that could not be lifted, and members that did not behave
    /// as the fault demands (kept running after a failed fsync).
    pub failures: Vec<String>,
    /// The highest revision a compaction was asked for (applied or
    /// possibly applied): revisions below it cannot be read any more.
    pub compacted: Option<i64>,
}

impl NemesisLog {
    pub(crate) fn note(&mut self, clock: Clock, text: String) {
        self.events.push((clock.now(), text));
    }
}

/// What a run's nemesis may inject, decided before the run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The nemesis asked for.
    pub nemesis: Nemesis,
    /// The faults a round picks from (one, or several for mixed).
    pub faults: Vec<Nemesis>,
    /// See [`snapshot::Setup`].
    pub snapshot: snapshot::Setup,
}

/// Checks, before the run, that `nemesis` can run on `cluster` (`None`
/// for an existing cluster given by endpoints), and what it will inject.
///
/// # Errors
/// [`Error::Nemesis`] saying why not.
pub async fn preflight(
    nemesis: Nemesis,
    cluster: Option<&mut Cluster>,
    server: &str,
    snapshot: snapshot::Setup,
) -> Result<Plan, Error> {
    let refuse = |reason: String| Error::Nemesis {
        nemesis: nemesis.to_string(),
        reason,
    };
    let plan = |faults: Vec<Nemesis>| Plan {
        nemesis,
        faults,
        snapshot,
    };
    if nemesis == Nemesis::None {
        return Ok(plan(Vec::new()));
    }
    let Some(cluster) = cluster else {
        return Err(refuse(
            "it needs a cluster started by the checker (--endpoints allows only --nemesis none)"
                .into(),
        ));
    };
    if matches!(
        nemesis,
        Nemesis::Partition | Nemesis::OneWay | Nemesis::Mixed
    ) {
        crate::proxy::origins_supported().map_err(refuse)?;
        if cluster.len() < 2 {
            return Err(refuse("a partition needs at least 2 members".into()));
        }
    }
    if matches!(nemesis, Nemesis::Pause | Nemesis::Mixed) {
        // SIGCONT to a running process is harmless and proves we may
        // signal it.
        cluster.members[0].pause(false).map_err(refuse)?;
    }
    if nemesis == Nemesis::Membership && cluster.len() < 2 {
        return Err(refuse("removing a member needs at least 2 members".into()));
    }
    if nemesis == Nemesis::SnapshotKill && cluster.len() < 3 {
        return Err(refuse(
            "a follower can only fall behind while a quorum writes: at least 3 members".into(),
        ));
    }
    // Asked of a running member: a server without failpoints answers 404
    // (etcd, an oxcd release build, or a member started without the env).
    let failpoints = if nemesis.wants_failpoints() {
        crate::failpoint::available(&cluster.members[0].client_url())
            .await
            .map_err(refuse)?
    } else {
        false
    };
    if nemesis == Nemesis::Disk && !failpoints {
        return Err(refuse(format!(
            "{server} has no failpoints (oxcd debug builds only): GET /debug/failpoints is not \
             served"
        )));
    }
    let faults = match nemesis {
        Nemesis::Mixed => {
            let mut f = vec![
                Nemesis::Kill,
                Nemesis::KillLeader,
                Nemesis::Pause,
                Nemesis::Partition,
            ];
            if cluster.len() >= 3 {
                f.push(Nemesis::Membership);
            }
            if failpoints {
                f.push(Nemesis::Disk);
            }
            f
        }
        other => vec![other],
    };
    Ok(plan(faults))
}

/// Runs the faults of `plan` against `cluster` until `stop` fires, then
/// lifts the fault in force; returns the cluster and the log.
pub async fn run(
    plan: Plan,
    mut cluster: Cluster,
    seed: u64,
    clock: Clock,
    stop: CancellationToken,
) -> (Cluster, NemesisLog) {
    let mut log = NemesisLog::default();
    if plan.faults.is_empty() {
        return (cluster, log);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0ffa_1700);
    let mut round = 0u64;
    loop {
        let calm = Duration::from_millis(rng.random_range(1000..3000));
        tokio::select! {
            () = tokio::time::sleep(calm) => {}
            () = stop.cancelled() => break,
        }
        let fault = plan.faults[rng.random_range(0..plan.faults.len())];
        let hold = Duration::from_millis(rng.random_range(1000..4000));
        let victim = rng.random_range(0..cluster.len());
        let ctx = Ctx { clock, stop: &stop };
        match fault {
            Nemesis::Disk => {
                disk::round(&mut cluster, victim, hold, &mut rng, &ctx, &mut log).await;
            }
            Nemesis::Membership => {
                membership::round(&mut cluster, &mut rng, &ctx, &mut log).await;
            }
            Nemesis::SnapshotKill => {
                snapshot::round(
                    &mut cluster,
                    &plan.snapshot,
                    round,
                    &mut rng,
                    &ctx,
                    &mut log,
                )
                .await;
            }
            Nemesis::CompactDefrag => {
                compact::round(&cluster, &mut rng, &ctx, &mut log).await;
            }
            simple => one_round(simple, &mut cluster, victim, hold, clock, &stop, &mut log).await,
        }
        round += 1;
    }
    (cluster, log)
}

/// What every round needs besides the cluster and its log.
pub(crate) struct Ctx<'a> {
    pub(crate) clock: Clock,
    pub(crate) stop: &'a CancellationToken,
}

impl Ctx<'_> {
    /// Sleeps `d`, or less if the run ends.
    pub(crate) async fn hold(&self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.stop.cancelled() => {}
        }
    }
}

/// Injects one fault on `victim` (or the leader), holds it for `hold` (or
/// until `stop`), lifts it.
async fn one_round(
    fault: Nemesis,
    cluster: &mut Cluster,
    victim: usize,
    hold: Duration,
    clock: Clock,
    stop: &CancellationToken,
    log: &mut NemesisLog,
) {
    let victim = if fault == Nemesis::KillLeader {
        match cluster.leader().await {
            Some(l) => l,
            None => {
                log.note(clock, "kill-leader: no leader found, round skipped".into());
                return;
            }
        }
    } else {
        victim
    };
    let name = cluster.members[victim].name.clone();
    match fault {
        Nemesis::Kill | Nemesis::KillLeader => {
            cluster.kill9(victim);
            log.note(clock, format!("{fault}: SIGKILL {name}"));
        }
        Nemesis::Pause => match cluster.members[victim].pause(true) {
            Ok(()) => log.note(clock, format!("pause: SIGSTOP {name}")),
            Err(e) => {
                log.failures.push(format!("pause {name}: {e}"));
                return;
            }
        },
        Nemesis::Partition => {
            cluster.isolate(victim);
            log.note(clock, format!("partition: isolate {name}"));
        }
        Nemesis::OneWay => {
            // Which way, from the round's hold (drawn from the seeded rng).
            let deaf = hold.as_millis().is_multiple_of(2);
            cluster.one_way(victim, deaf);
            let how = if deaf { "deaf" } else { "mute" };
            log.note(clock, format!("one-way: {name} {how}"));
        }
        _ => return,
    }
    tokio::select! {
        () = tokio::time::sleep(hold) => {}
        () = stop.cancelled() => {}
    }
    lift(fault, cluster, victim, clock, log).await;
}

async fn lift(
    fault: Nemesis,
    cluster: &mut Cluster,
    victim: usize,
    clock: Clock,
    log: &mut NemesisLog,
) {
    let name = cluster.members[victim].name.clone();
    match fault {
        Nemesis::Kill | Nemesis::KillLeader => {
            log.note(clock, format!("{fault}: restart {name}"));
            match cluster.restart(victim).await {
                Ok(()) => log.note(clock, format!("{fault}: {name} ready")),
                Err(e) => log
                    .failures
                    .push(format!("{name} did not come back after SIGKILL: {e}")),
            }
        }
        Nemesis::Pause => match cluster.members[victim].pause(false) {
            Ok(()) => log.note(clock, format!("pause: SIGCONT {name}")),
            Err(e) => log.failures.push(format!("resume {name}: {e}")),
        },
        Nemesis::Partition | Nemesis::OneWay => {
            cluster.heal_all();
            log.note(clock, format!("{fault}: heal {name}"));
        }
        _ => {}
    }
}
