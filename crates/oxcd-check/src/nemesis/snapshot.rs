//! The snapshot-kill nemesis: make the leader send a snapshot and kill one
//! end of the transfer while it is in flight.
//!
//! Members run with a small `--snapshot-count` (and, on oxcd, a small
//! `--experimental-snapshot-catchup-entries`; etcd 3.4 keeps its fixed
//! 5000 entries). A round SIGKILLs a follower, waits until the cluster's
//! raft index is `lag` entries past where it was (so the leader has
//! compacted its log past the follower; [`FILLERS`] tasks add raft
//! entries that create no revision, see [`MemberClient::filler`], so that
//! etcd's 5000 are reached in seconds), restarts the follower, waits
//! until the leader's log reports a snapshot send (bounded; the round goes
//! on without one and says so), and then SIGKILLs the leader (even
//! rounds) or the receiving follower (odd rounds). Both are restarted.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::{Ctx, NemesisLog};
use crate::client::MemberClient;
use crate::cluster::Cluster;

/// The default `--snapshot-count` of this nemesis.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 200;

/// oxcd's catch-up entries under this nemesis (a flag etcd 3.4 lacks).
pub const OXCD_CATCH_UP: u64 = 100;

/// etcd's fixed catch-up entries (`SnapshotCatchUpEntries`).
pub const ETCD_CATCH_UP: u64 = 5000;

/// Both oxcd's and etcd's leaders log this when they send a snapshot.
const SEND_MARKER: &str = "database snapshot [index";

/// Concurrent filler writers while the follower is down.
const FILLERS: usize = 64;

/// How long the follower stays down at most, waiting for the lag.
const LAG_DEADLINE: Duration = Duration::from_secs(45);

/// How long to wait for the snapshot send after the follower restarts.
const SEND_DEADLINE: Duration = Duration::from_secs(10);

/// How the cluster was set up for this nemesis.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// Raft entries the follower must miss so that the leader can only
    /// catch it up with a snapshot (snapshot count + catch-up entries +
    /// a margin); 0 when the nemesis is not snapshot-kill.
    pub lag: u64,
}

impl Setup {
    /// The setup for `snapshot_count` on a server that is (`oxcd`) or is
    /// not oxcd.
    pub fn new(snapshot_count: u64, oxcd: bool) -> Setup {
        let catch_up = if oxcd { OXCD_CATCH_UP } else { ETCD_CATCH_UP };
        Setup {
            lag: snapshot_count + catch_up + 100,
        }
    }
}

/// The highest raft index any running member reports.
async fn raft_index(cluster: &Cluster) -> Option<u64> {
    let mut best = None;
    for m in &cluster.members {
        if !m.is_running() || m.is_paused() {
            continue;
        }
        let Ok(c) = MemberClient::new(&m.client_url(), Duration::from_secs(1)) else {
            continue;
        };
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await {
            best = best.max(Some(st.raft_index));
        }
    }
    best
}

/// One round; `round` picks which end of the transfer dies.
pub(crate) async fn round(
    cluster: &mut Cluster,
    setup: &Setup,
    round: u64,
    rng: &mut StdRng,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let Some(leader) = cluster.leader().await else {
        log.note(
            ctx.clock,
            "snapshot-kill: no leader found, round skipped".into(),
        );
        return;
    };
    let followers: Vec<usize> = (0..cluster.len())
        .filter(|&i| i != leader && cluster.members[i].is_running())
        .collect();
    if followers.is_empty() {
        log.note(
            ctx.clock,
            "snapshot-kill: no follower, round skipped".into(),
        );
        return;
    }
    let follower = followers[rng.random_range(0..followers.len())];
    let fname = cluster.members[follower].name.clone();
    let base = raft_index(cluster).await.unwrap_or(0);
    cluster.kill9(follower);
    log.note(
        ctx.clock,
        format!("snapshot-kill: SIGKILL follower {fname} at raft index {base}"),
    );
    // Let the leader compact its log past the follower.
    let fill_stop = tokio_util::sync::CancellationToken::new();
    let mut fillers = tokio::task::JoinSet::new();
    let alive: Vec<String> = cluster
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.client_url())
        .collect();
    for i in 0..FILLERS {
        let Some(url) = alive.get(i % alive.len().max(1)) else {
            break;
        };
        let Ok(c) = MemberClient::new(url, Duration::from_secs(2)) else {
            continue;
        };
        let stop = fill_stop.clone();
        fillers.spawn(async move {
            while !stop.is_cancelled() {
                tokio::select! {
                    r = c.filler() => if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    },
                    () = stop.cancelled() => {}
                }
            }
        });
    }
    let deadline = Instant::now() + LAG_DEADLINE;
    let mut lag = 0;
    while Instant::now() < deadline && !ctx.stop.is_cancelled() {
        lag = raft_index(cluster)
            .await
            .unwrap_or(base)
            .saturating_sub(base);
        if lag >= setup.lag {
            break;
        }
        ctx.hold(Duration::from_millis(250)).await;
    }
    fill_stop.cancel();
    while fillers.join_next().await.is_some() {}
    let sender = cluster.leader().await.unwrap_or(leader);
    let sent_before = cluster.members[sender].log_count(SEND_MARKER);
    if let Err(e) = cluster.spawn(follower) {
        log.failures
            .push(format!("snapshot-kill: restart {fname}: {e}"));
        return;
    }
    log.note(
        ctx.clock,
        format!(
            "snapshot-kill: restart {fname} {lag} entries behind (snapshot needs {})",
            setup.lag
        ),
    );
    // Without the lag (the run ended first) no snapshot is coming.
    let deadline = Instant::now() + SEND_DEADLINE;
    let mut sending = false;
    while lag >= setup.lag && Instant::now() < deadline {
        if cluster.members[sender].log_count(SEND_MARKER) > sent_before {
            sending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A short random delay so the kill lands at different points of the
    // transfer (it is usually tens of milliseconds long).
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
    let target = if round.is_multiple_of(2) {
        sender
    } else {
        follower
    };
    let role = if target == follower {
        "receiving follower"
    } else {
        "sending leader"
    };
    let tname = cluster.members[target].name.clone();
    cluster.kill9(target);
    log.note(
        ctx.clock,
        format!(
            "snapshot-kill: SIGKILL {role} {tname} ({})",
            if sending {
                "snapshot send in the leader's log"
            } else {
                "no snapshot send seen in the leader's log"
            }
        ),
    );
    ctx.hold(Duration::from_millis(500)).await;
    let down = if target == follower {
        vec![follower]
    } else {
        vec![target, follower]
    };
    for i in down {
        let name = cluster.members[i].name.clone();
        match cluster.restart(i).await {
            Ok(()) => log.note(ctx.clock, format!("snapshot-kill: {name} ready")),
            Err(e) => log
                .failures
                .push(format!("{name} did not come back after snapshot-kill: {e}")),
        }
    }
}
