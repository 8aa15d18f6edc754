//! Nemeses: the faults injected while the workload runs. Each round waits a
//! calm interval, injects one fault, holds it, and lifts it; every step is
//! logged with its time. A fault that cannot be lifted (a killed member
//! that does not come back) is recorded as a recovery failure.

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
    /// A random one of the above, each round.
    Mixed,
}

impl Nemesis {
    /// Every name `--nemesis` accepts.
    pub const NAMES: [&'static str; 6] =
        ["none", "kill", "kill-leader", "pause", "partition", "mixed"];
}

impl fmt::Display for Nemesis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Nemesis::None => "none",
            Nemesis::Kill => "kill",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
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
    /// Faults that could not be lifted.
    pub failures: Vec<String>,
}

impl NemesisLog {
    fn note(&mut self, clock: Clock, text: String) {
        self.events.push((clock.now(), text));
    }
}

/// Checks, before the run, that `nemesis` can run on `cluster` (`None`
/// for an existing cluster given by endpoints).
///
/// # Errors
/// [`Error::Nemesis`] saying why not.
pub fn preflight(nemesis: Nemesis, cluster: Option<&mut Cluster>) -> Result<(), Error> {
    let refuse = |reason: String| Error::Nemesis {
        nemesis: nemesis.to_string(),
        reason,
    };
    if nemesis == Nemesis::None {
        return Ok(());
    }
    let Some(cluster) = cluster else {
        return Err(refuse(
            "it needs a cluster started by the checker (--endpoints allows only --nemesis none)"
                .into(),
        ));
    };
    if matches!(nemesis, Nemesis::Partition | Nemesis::Mixed) {
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
    Ok(())
}

/// Runs `nemesis` against `cluster` until `stop` fires, then lifts the
/// fault in force; returns the cluster and the log.
pub async fn run(
    nemesis: Nemesis,
    mut cluster: Cluster,
    seed: u64,
    clock: Clock,
    stop: CancellationToken,
) -> (Cluster, NemesisLog) {
    let mut log = NemesisLog::default();
    if nemesis == Nemesis::None {
        return (cluster, log);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0ffa_1700);
    loop {
        let calm = Duration::from_millis(rng.random_range(1000..3000));
        tokio::select! {
            () = tokio::time::sleep(calm) => {}
            () = stop.cancelled() => break,
        }
        let fault = match nemesis {
            Nemesis::Mixed => [
                Nemesis::Kill,
                Nemesis::KillLeader,
                Nemesis::Pause,
                Nemesis::Partition,
            ][rng.random_range(0..4)],
            other => other,
        };
        let hold = Duration::from_millis(rng.random_range(1000..4000));
        let victim = rng.random_range(0..cluster.len());
        one_round(fault, &mut cluster, victim, hold, clock, &stop, &mut log).await;
    }
    (cluster, log)
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
        Nemesis::None | Nemesis::Mixed => return,
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
        Nemesis::Partition => {
            cluster.heal_all();
            log.note(clock, format!("partition: heal {name}"));
        }
        Nemesis::None | Nemesis::Mixed => {}
    }
}
