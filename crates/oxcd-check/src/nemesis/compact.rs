//! The compact-defrag nemesis: during load, compact the key space a few
//! hundred revisions back (logical compaction, `physical=false`) and
//! defragment a random member.
//!
//! Every compaction asked for is recorded in [`NemesisLog::compacted`],
//! even one whose call failed (a timeout may hide an applied compaction):
//! the final scan must not read below it, and the checkers then take the
//! earlier revisions from the watchers (see [`crate::scan`]).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::{Ctx, NemesisLog};
use crate::client::MemberClient;
use crate::cluster::Cluster;

/// How far behind the current revision a compaction goes.
const BACK: i64 = 200;

/// One compaction and one defragmentation.
pub(crate) async fn round(
    cluster: &Cluster,
    rng: &mut StdRng,
    ctx: &Ctx<'_>,
    log: &mut NemesisLog,
) {
    let running: Vec<usize> = (0..cluster.len())
        .filter(|&i| cluster.members[i].is_running() && !cluster.members[i].is_paused())
        .collect();
    if running.is_empty() {
        log.note(
            ctx.clock,
            "compact-defrag: no member running, round skipped".into(),
        );
        return;
    }
    let pick = |rng: &mut StdRng| running[rng.random_range(0..running.len())];
    let via = &cluster.members[pick(rng)];
    let Ok(client) = MemberClient::new(&via.client_url(), Duration::from_secs(10)) else {
        return;
    };
    let current = match client.range(b"oxcd-check-probe", b"", 0, false).await {
        Ok(r) => r.header.map_or(0, |h| h.revision),
        Err(e) => {
            log.note(
                ctx.clock,
                format!(
                    "compact-defrag: revision unknown ({}), round skipped",
                    e.message()
                ),
            );
            return;
        }
    };
    let target = current - BACK;
    if target > log.compacted.unwrap_or(1) {
        // Recorded before the call: it may apply even if the answer is lost.
        log.compacted = Some(target);
        match client.compact(target).await {
            Ok(()) => log.note(
                ctx.clock,
                format!("compact-defrag: compacted at {target} via {}", via.name),
            ),
            Err(e) => log.note(
                ctx.clock,
                format!(
                    "compact-defrag: compact at {target} via {}: {} (may have applied)",
                    via.name,
                    e.message()
                ),
            ),
        }
    }
    let victim = &cluster.members[pick(rng)];
    let Ok(client) = MemberClient::new(&victim.client_url(), Duration::from_secs(30)) else {
        return;
    };
    log.note(
        ctx.clock,
        format!("compact-defrag: defragment {}", victim.name),
    );
    match client.defragment().await {
        Ok(()) => log.note(
            ctx.clock,
            format!("compact-defrag: {} defragmented", victim.name),
        ),
        Err(e) => log.note(
            ctx.clock,
            format!(
                "compact-defrag: defragment {}: {}",
                victim.name,
                e.message()
            ),
        ),
    }
}
