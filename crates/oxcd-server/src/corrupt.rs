//! Corruption checks between members (etcd's `etcdserver/corrupt.go`):
//! every member's key space at a revision must hash the same.
//!
//! - [`initial_check`] (`--experimental-initial-corrupt-check`): before a
//!   member serves clients it compares its HashKV with every peer's at its
//!   own revision, and refuses to start on a mismatch at the same compact
//!   revision (`<id> found data inconsistency with peers`).
//! - [`run_periodic`] (`--experimental-corrupt-check-time`): the leader
//!   compares its hash with every follower's at each interval and raises
//!   CORRUPT for a member that disagrees. Unlike etcd, which raises it for
//!   member 0 (its peer answers carry no member ID), the alarm names the
//!   member that disagreed.
//!
//! Peers answer HashKV over the peer listener (`oxcdpeerpb.Forward`).

use crate::apply::Request;
use crate::core::Core;
use oxcd_api::etcdserverpb::alarm_request::AlarmAction;
use oxcd_api::etcdserverpb::{AlarmRequest, AlarmType, HashKvRequest, HashKvResponse};
use oxcd_api::EtcdError;
use oxcd_mvcc::HashKv;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One peer's answer.
struct PeerHash {
    id: u64,
    answer: Result<HashKvResponse, EtcdError>,
}

/// This member's HashKV at `rev` (0: current), off the async threads.
async fn local_hash(core: &Core, rev: i64) -> Result<HashKv, EtcdError> {
    let store = core.store.clone();
    tokio::task::spawn_blocking(move || store.hash_kv(rev))
        .await
        .map_err(|e| EtcdError::Unknown(format!("hash task: {e}")))?
        .map_err(crate::apply::mvcc_error)
}

/// Every other member's HashKV at `rev`, each bounded by `timeout`.
async fn peer_hashes(core: &Core, rev: i64, timeout: Duration) -> Vec<PeerHash> {
    let others: Vec<u64> = core
        .members
        .list()
        .into_iter()
        .map(|m| m.id)
        .filter(|id| *id != core.member.id)
        .collect();
    let asks = others.into_iter().map(|id| async move {
        // etcd members answer etcd's /members/hashkv, oxcd members oxcd's.
        // (Before its link is up, a peer's kind is unknown: one that does
        // not answer oxcd's service is asked etcd's way.)
        let answer = if core.forwarder.speaks_etcd(id) {
            core.forwarder.etcd_hash_kv(core, id, rev, timeout).await
        } else {
            let oxcd = core
                .forwarder
                .to_member(core, id, timeout, |mut c| async move {
                    c.hash_kv(HashKvRequest { revision: rev })
                        .await
                        .map(tonic::Response::into_inner)
                })
                .await;
            match oxcd {
                Err(e) => core
                    .forwarder
                    .etcd_hash_kv(core, id, rev, timeout)
                    .await
                    .map_err(|_| e),
                ok => ok,
            }
        };
        PeerHash { id, answer }
    });
    futures::future::join_all(asks).await
}

/// Compares this member's key space with its peers' before it serves
/// clients.
///
/// # Errors
/// `<id> found data inconsistency with peers` when a peer at the same
/// compact revision hashes differently; an error computing the own hash.
pub async fn initial_check(core: &Core, timeout: Duration) -> Result<(), String> {
    let me = format!("{:x}", core.member.id);
    tracing::info!("{me} starting initial corruption check with timeout {timeout:?}...");
    let own = local_hash(core, 0).await.map_err(|e| e.to_string())?;
    let mut mismatches = 0;
    for p in peer_hashes(core, own.current_rev, timeout).await {
        match p.answer {
            Ok(r) if r.hash == own.hash => {}
            Ok(r) if r.compact_revision == own.compact_rev => {
                tracing::error!(
                    "{me}'s hash {} != {:x}'s hash {} (revision {}, peer revision {}, compact revision {})",
                    own.hash,
                    p.id,
                    r.hash,
                    own.current_rev,
                    r.header.map_or(0, |h| h.revision),
                    own.compact_rev
                );
                mismatches += 1;
            }
            Ok(r) => tracing::warn!(
                "{me} cannot check hash of peer({:x}): peer has a different compact revision {} (revision:{})",
                p.id,
                r.compact_revision,
                own.current_rev
            ),
            Err(EtcdError::FutureRev) => tracing::warn!(
                "{me} cannot check the hash of peer({:x}) at revision {}: peer is lagging behind",
                p.id,
                own.current_rev
            ),
            Err(EtcdError::Compacted) => tracing::warn!(
                "{me} cannot check the hash of peer({:x}) at revision {}: peer has a newer compact revision",
                p.id,
                own.current_rev
            ),
            Err(e) => tracing::warn!("{me} failed to get hash from peer {:x}: {e}", p.id),
        }
    }
    if mismatches > 0 {
        return Err(format!("{me} found data inconsistency with peers"));
    }
    tracing::info!("{me} succeeded on initial corruption checking: no corruption");
    Ok(())
}

/// The periodic check, on the leader only, every `interval` until
/// `shutdown`.
pub async fn run_periodic(
    core: Arc<Core>,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!("enabled corruption checking with {interval:?} interval");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !core.writes.is_leader() {
            continue;
        }
        if let Err(e) = check_once(&core, timeout).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

/// One leader-side round (etcd's `checkHashKV`): hash, ask the followers,
/// make sure the own state is current, hash again, then judge.
async fn check_once(core: &Core, timeout: Duration) -> Result<(), EtcdError> {
    let first = local_hash(core, 0).await?;
    let peers = peer_hashes(core, first.current_rev, timeout).await;
    core.writes.linearizable_barrier().await?;
    let second = local_hash(core, 0).await?;
    let mut corrupt: Option<u64> = None;
    if second.hash != first.hash
        && second.current_rev == first.current_rev
        && second.compact_rev == first.compact_rev
    {
        tracing::warn!(
            "mismatched hashes {} and {} for revision {}",
            first.hash,
            second.hash,
            first.current_rev
        );
        corrupt = Some(core.member.id);
    }
    for p in peers {
        let Ok(r) = p.answer else { continue };
        let rev = r.header.map_or(0, |h| h.revision);
        if rev > second.current_rev {
            tracing::warn!(
                "revision {rev} from member {:x}, expected at most {}",
                p.id,
                second.current_rev
            );
            corrupt.get_or_insert(p.id);
        }
        if r.compact_revision > second.compact_rev {
            tracing::warn!(
                "compact revision {} from member {:x}, expected at most {}",
                r.compact_revision,
                p.id,
                second.compact_rev
            );
            corrupt.get_or_insert(p.id);
        }
        if r.compact_revision == first.compact_rev && r.hash != first.hash {
            tracing::warn!(
                "revision {} from member {:x}, expected hash {}, got {}",
                first.current_rev,
                p.id,
                first.hash,
                r.hash
            );
            corrupt.get_or_insert(p.id);
        }
    }
    if let Some(id) = corrupt {
        let raise = Request::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        });
        core.writes.propose(raise).await?;
    }
    Ok(())
}
