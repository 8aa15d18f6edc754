//! The membership nemesis: during load, remove a random follower
//! (MemberRemove), wait for its process to exit (a removed etcd or oxcd
//! member stops itself; SIGKILL by pid past [`EXIT_DEADLINE`]), wipe its
//! data dir, add it back (MemberAdd with the same advertised peer URL,
//! its proxy's) and start it with `--initial-cluster-state existing`
//! under the same name. It gets a new member ID and the whole history
//! again from the leader (log or snapshot), so the end-of-run
//! convergence and final scan include it like any other member.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::{Ctx, NemesisLog};
use crate::client::MemberClient;
use crate::cluster::{Cluster, READY_DEADLINE};

/// How long a removed member may take to stop on its own.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// How long a remove or add may be retried: etcd refuses both while the
/// cluster has not been fully connected for 5 s (strict reconfig check).
const RECONFIG_DEADLINE: Duration = Duration::from_secs(30);

/// Interval between retries of a refused reconfiguration.
const RETRY: Duration = Duration::from_millis(500);

/// One remove / wipe / re-add of a random follower.
pub(crate) async fn round(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let Some(leader) = cluster.leader().await else {
        log.note(
            ctx.clock,
            "membership: no leader found, round skipped".into(),
        );
        return;
    };
    let followers: Vec<usize> = (0..cluster.len())
        .filter(|&i| {
            let m = &cluster.members[i];
            i != leader && m.is_running() && !m.is_paused()
        })
        .collect();
    if followers.is_empty() {
        log.note(
            ctx.clock,
            "membership: no running follower, round skipped".into(),
        );
        return;
    }
    let victim = followers[rng.random_range(0..followers.len())];
    let name = cluster.members[victim].name.clone();
    let peer_url = cluster.members[victim].advertised_peer_url();
    // Every other running member may take the request (the leader first).
    let mut vias: Vec<MemberClient> = Vec::new();
    for i in std::iter::once(leader).chain(0..cluster.len()) {
        if i != victim
            && cluster.members[i].is_running()
            && !vias
                .iter()
                .any(|v| v.url == cluster.members[i].client_url())
        {
            if let Ok(c) =
                MemberClient::new(&cluster.members[i].client_url(), Duration::from_secs(5))
            {
                vias.push(c);
            }
        }
    }
    // 1. Remove.
    let removed = retry(&vias, |c| {
        let peer_url = peer_url.clone();
        async move {
            let members = c.member_list().await.map_err(|e| e.message().to_string())?;
            // Not listed: an earlier attempt that timed out removed it.
            let Some(id) = members
                .iter()
                .find(|m| m.peer_ur_ls.contains(&peer_url))
                .map(|m| m.id)
            else {
                return Ok(0);
            };
            c.member_remove(id)
                .await
                .map_err(|e| e.message().to_string())?;
            Ok(id)
        }
    })
    .await;
    let id = match removed {
        Ok(id) => id,
        Err(e) => {
            log.note(
                ctx.clock,
                format!("membership: cannot remove {name}: {e}; round skipped"),
            );
            return;
        }
    };
    log.note(ctx.clock, format!("membership: removed {name} ({id:x})"));
    // 2. Its process ends.
    let m = &mut cluster.members[victim];
    match m.wait_exit(EXIT_DEADLINE).await {
        Some(status) => log.note(ctx.clock, format!("membership: {name} exited ({status})")),
        None => {
            m.kill9();
            log.note(
                ctx.clock,
                format!("membership: {name} still ran {EXIT_DEADLINE:?} after removal; SIGKILL"),
            );
        }
    }
    // 3. Wipe.
    if let Err(e) = m.wipe_data() {
        log.failures.push(format!("membership: {e}"));
        return;
    }
    // 4. Add back.
    let added = retry(&vias, |c| {
        let peer_url = peer_url.clone();
        async move {
            match c.member_add(&peer_url).await {
                Ok(r) => Ok((r.member.map_or(0, |m| m.id), r.members)),
                // An earlier attempt that timed out added it already.
                Err(e) if e.message().contains("exist") => {
                    let members = c.member_list().await.map_err(|e| e.message().to_string())?;
                    members
                        .iter()
                        .find(|m| m.peer_ur_ls.contains(&peer_url))
                        .map(|m| (m.id, members.clone()))
                        .ok_or_else(|| e.message().to_string())
                }
                Err(e) => Err(e.message().to_string()),
            }
        }
    })
    .await;
    let (new_id, members) = match added {
        Ok(r) => r,
        Err(e) => {
            log.failures.push(format!(
                "membership: {name} was removed but could not be added back within \
                 {RECONFIG_DEADLINE:?}: {e}"
            ));
            return;
        }
    };
    let initial: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let url = m.peer_ur_ls.first()?;
            let who = if m.id == new_id || m.name.is_empty() {
                name.clone()
            } else {
                m.name.clone()
            };
            Some(format!("{who}={url}"))
        })
        .collect();
    log.note(
        ctx.clock,
        format!(
            "membership: added {name} back as {new_id:x} ({})",
            initial.join(",")
        ),
    );
    // 5. Start it as a member of the existing cluster.
    let m = &mut cluster.members[victim];
    if let Err(e) = m.spawn_joining(initial.join(",")) {
        log.failures.push(format!("membership: start {name}: {e}"));
        return;
    }
    match m.wait_ready(READY_DEADLINE).await {
        Ok(()) => log.note(ctx.clock, format!("membership: {name} ready")),
        Err(e) => log.failures.push(format!(
            "membership: re-added {name} did not become ready: {e}"
        )),
    }
}

/// Runs `call` on each of `vias` in turn until one succeeds, for at most
/// [`RECONFIG_DEADLINE`].
async fn retry<T, F, Fut>(vias: &[MemberClient], call: F) -> Result<T, String>
where
    F: Fn(MemberClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    if vias.is_empty() {
        return Err("no member to ask".into());
    }
    let deadline = Instant::now() + RECONFIG_DEADLINE;
    let mut last = String::new();
    for attempt in 0usize.. {
        let via = vias[attempt % vias.len()].clone();
        let url = via.url.clone();
        match tokio::time::timeout(Duration::from_secs(10), call(via)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => last = format!("{url}: {e}"),
            Err(_) => last = format!("{url}: timed out"),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(RETRY).await;
    }
    Err(last)
}
