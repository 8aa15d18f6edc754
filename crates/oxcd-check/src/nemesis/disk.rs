//! The disk nemesis: oxcd's failpoints armed over HTTP on one member.
//!
//! Each round is one of:
//! - slow disk: `walBeforeSync` and `backendSync` sleep 200 ms per call
//!   for the hold, then are disarmed (a clock-independent slow fsync);
//! - failed I/O: `1*error` at `walBeforeSync`, `backendSync` or
//!   `backendWrite`. A member whose fsync or write failed must exit (as
//!   etcd does: after a failed fsync the page cache cannot be trusted), so
//!   the nemesis waits for the exit and restarts the member; a member that
//!   logged the injected failure and kept running is a failure;
//! - crash: `1*crash` at `walAfterSync`, `raftAfterSave` or
//!   `applyBeforeEntry`; the member exits with 137 at that step and is
//!   restarted.
//!
//! The member's own exit is expected here: the nemesis reaps it and
//! records its status as an event, so the end-of-run recovery does not
//! mistake it for a crash.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::{Ctx, NemesisLog};
use crate::cluster::{Cluster, READY_DEADLINE};
use crate::failpoint;

/// Per-call delay of the slow-disk fault.
const SLOW: &str = "sleep(200)";

/// Failpoints whose `error` fails an fsync or write.
const IO_ERRORS: [&str; 3] = ["walBeforeSync", "backendSync", "backendWrite"];

/// Failpoints where `crash` ends the process at a crash-relevant step.
const CRASHES: [&str; 3] = ["walAfterSync", "raftAfterSave", "applyBeforeEntry"];

/// How long an armed one-shot fault may take to fire and end the member
/// (writes reach every member within a heartbeat while clients write).
const EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// One disk fault on member `victim` (skipped if it does not run).
pub(crate) async fn round(
    cluster: &mut Cluster,
    victim: usize,
    hold: Duration,
    rng: &mut StdRng,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let m = &cluster.members[victim];
    if !m.is_running() || m.is_paused() {
        log.note(
            ctx.clock,
            format!("disk: {} not running, round skipped", m.name),
        );
        return;
    }
    match rng.random_range(0..3u32) {
        0 => slow(cluster, victim, hold, ctx, log).await,
        1 => {
            let point = IO_ERRORS[rng.random_range(0..IO_ERRORS.len())];
            one_shot(cluster, victim, point, "1*error", ctx, log).await;
        }
        _ => {
            let point = CRASHES[rng.random_range(0..CRASHES.len())];
            one_shot(cluster, victim, point, "1*crash", ctx, log).await;
        }
    }
}

async fn slow(
    cluster: &mut Cluster,
    victim: usize,
    hold: Duration,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let (name, url) = {
        let m = &cluster.members[victim];
        (m.name.clone(), m.client_url())
    };
    for point in ["walBeforeSync", "backendSync"] {
        if let Err(e) = failpoint::arm(&url, point, SLOW).await {
            log.note(ctx.clock, format!("disk: {name}: {e}; round skipped"));
            disarm_all(&url, log, ctx).await;
            return;
        }
    }
    log.note(
        ctx.clock,
        format!("disk: slow fsync on {name} (walBeforeSync, backendSync = {SLOW})"),
    );
    ctx.hold(hold).await;
    disarm_all(&url, log, ctx).await;
    let m = &mut cluster.members[victim];
    if let Some(status) = m.exited() {
        log.failures.push(format!(
            "{name} exited ({status}) under a slow disk, no fault asked for that; log tail:\n{}",
            m.log_tail(20)
        ));
        return;
    }
    log.note(ctx.clock, format!("disk: {name} disk fast again"));
}

async fn disarm_all(url: &str, log: &mut NemesisLog, ctx: &Ctx<'_>) {
    for point in ["walBeforeSync", "backendSync"] {
        if let Err(e) = failpoint::disarm(url, point).await {
            log.note(ctx.clock, format!("disk: {e}"));
        }
    }
}

/// Arms `term` (a one-shot error or crash) at `point`, waits for the
/// member to exit, restarts it.
async fn one_shot(
    cluster: &mut Cluster,
    victim: usize,
    point: &str,
    term: &str,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let (name, url) = {
        let m = &cluster.members[victim];
        (m.name.clone(), m.client_url())
    };
    if let Err(e) = failpoint::arm(&url, point, term).await {
        // Under load the point can fire before the member answers the PUT:
        // then it is gone, and this round's fault happened after all.
        let m = &mut cluster.members[victim];
        if let Some(status) = m.wait_exit(ARM_RACE).await {
            log.note(
                ctx.clock,
                format!("disk: {name} {point}={term}; exited ({status}) before answering the arm"),
            );
            return restart_after(cluster, victim, point, term, ctx, log).await;
        }
        log.note(ctx.clock, format!("disk: {name}: {e}; round skipped"));
        return;
    }
    log.note(ctx.clock, format!("disk: {name} {point}={term}"));
    let m = &mut cluster.members[victim];
    let Some(status) = m.wait_exit(EXIT_DEADLINE).await else {
        let fired = m.log_count(&format!("failpoint {point}: failing the call")) > 0;
        let _ = failpoint::disarm(&url, point).await;
        if fired {
            log.failures.push(format!(
                "{name} kept running for {EXIT_DEADLINE:?} after its injected {point} failure \
                 (a failed fsync or write must end the member); log tail:\n{}",
                m.log_tail(20)
            ));
        } else {
            log.note(
                ctx.clock,
                format!(
                    "disk: {name} {point}={term} did not fire within {EXIT_DEADLINE:?}; disarmed"
                ),
            );
        }
        return;
    };
    log.note(
        ctx.clock,
        format!("disk: {name} exited ({status}) at injected {point}={term}; restart"),
    );
    restart_after(cluster, victim, point, term, ctx, log).await;
}

/// How long a member whose arm request failed may take to turn out to
/// have exited at the point it was arming.
const ARM_RACE: Duration = Duration::from_secs(3);

/// Restarts a member that exited at an injected fault.
async fn restart_after(
    cluster: &mut Cluster,
    victim: usize,
    point: &str,
    term: &str,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let name = cluster.members[victim].name.clone();
    match cluster.restart(victim).await {
        Ok(()) => log.note(ctx.clock, format!("disk: {name} ready")),
        Err(e) => log.failures.push(format!(
            "{name} did not come back after {point}={term} (within {READY_DEADLINE:?}): {e}"
        )),
    }
}
