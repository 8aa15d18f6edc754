//! Safety checks before a membership change is proposed: etcd's
//! `--strict-reconfig-check` (`mayAddMember`, `mayRemoveMember`,
//! `mayPromoteMember` in `etcdserver/server.go`, `IsReadyTo*` in
//! `etcdserver/api/membership/cluster.go`), the learner catch-up rule
//! (`isLearnerReady`) and the learner limit (`maxLearners`).
//!
//! "Started" means the member has published its name (it ran at least
//! once); "active" means this member's peer link to it has been up without
//! a break for the last [`HEALTH_INTERVAL`] (etcd's `ActiveSince`, see
//! `oxcd_raft::transport`). The checks run on the member that receives
//! the request, as etcd's do, except the learner catch-up rule, which only
//! the leader can decide.

use crate::cluster::membership::Member;
use oxcd_api::EtcdError;
use oxcd_raft::transport::Transport;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long every voter must have been connected before a voter is added
/// (etcd's `HealthInterval`).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A learner may be promoted once its match index reaches this share of
/// the leader's (etcd's `readyPercent`).
const READY_PERCENT: f64 = 0.9;

/// Decides whether a membership change may be proposed.
pub struct ReconfigCheck {
    transport: Arc<Transport>,
    /// `--strict-reconfig-check`.
    strict: bool,
    /// Most learners the cluster may have (`--experimental-max-learners`).
    max_learners: usize,
}

impl ReconfigCheck {
    /// Checks against `transport`'s peer activity; `strict` is
    /// `--strict-reconfig-check`.
    /// `max_learners` is `--experimental-max-learners` (etcd's default 1).
    pub fn new(transport: Arc<Transport>, strict: bool, max_learners: usize) -> Self {
        Self {
            transport,
            strict,
            max_learners,
        }
    }

    /// Whether member `me` may add a member (a learner if `learner`).
    ///
    /// # Errors
    /// [`EtcdError::TooManyLearners`], then with strict checking
    /// [`EtcdError::MemberNotEnoughStarted`] or [`EtcdError::Unhealthy`].
    pub fn may_add(&self, me: u64, members: &[Member], learner: bool) -> Result<(), EtcdError> {
        // etcd checks the learner limit when it applies the change; it is
        // checked here first so that the refusal does not cost a raft round.
        if learner && members.iter().filter(|m| m.is_learner).count() >= self.max_learners {
            return Err(EtcdError::TooManyLearners);
        }
        if !self.strict {
            return Ok(());
        }
        may_add(me, members, learner, self.activity(), Instant::now())
    }

    /// Whether member `me` may remove member `id`.
    ///
    /// # Errors
    /// With strict checking, [`EtcdError::MemberNotEnoughStarted`] or
    /// [`EtcdError::Unhealthy`].
    pub fn may_remove(&self, me: u64, members: &[Member], id: u64) -> Result<(), EtcdError> {
        if !self.strict {
            return Ok(());
        }
        may_remove(me, members, id, self.activity(), Instant::now())
    }

    /// Whether learner `id` may be promoted, given the leader's replication
    /// progress (`progress`: member -> match index, `leader`: this member).
    ///
    /// # Errors
    /// [`EtcdError::LearnerNotReady`], then with strict checking
    /// [`EtcdError::MemberNotEnoughStarted`].
    pub fn may_promote(
        &self,
        leader: u64,
        progress: &HashMap<u64, u64>,
        members: &[Member],
        id: u64,
    ) -> Result<(), EtcdError> {
        learner_ready(leader, progress, id)?;
        if !self.strict {
            return Ok(());
        }
        may_promote(members)
    }

    fn activity(&self) -> impl Fn(u64) -> Option<Instant> + '_ {
        |id| self.transport.active_since(id)
    }
}

fn voters(members: &[Member]) -> impl Iterator<Item = &Member> {
    members.iter().filter(|m| !m.is_learner)
}

fn started(m: &Member) -> bool {
    !m.name.is_empty()
}

/// Whether `id` has been connected since `since` (the local member always is).
fn connected_since(
    me: u64,
    id: u64,
    active: &impl Fn(u64) -> Option<Instant>,
    since: Option<Instant>,
) -> bool {
    id == me || active(id).is_some_and(|t| since.is_some_and(|s| t <= s))
}

/// etcd's `mayAddMember`: `IsReadyToAddVotingMember` for a voter, then
/// `isConnectedFullySince` for any member (a learner too).
fn may_add(
    me: u64,
    members: &[Member],
    learner: bool,
    active: impl Fn(u64) -> Option<Instant>,
    now: Instant,
) -> Result<(), EtcdError> {
    let nstarted = voters(members).filter(|m| started(m)).count();
    let nmembers = voters(members).count() + 1;
    // Adding a second member to a one-member cluster is how a cluster is
    // grown from a restored backup; etcd lets it through.
    let restoring = nstarted == 1 && nmembers == 2;
    if !learner && !restoring && nstarted < nmembers / 2 + 1 {
        return Err(EtcdError::MemberNotEnoughStarted);
    }
    let since = now.checked_sub(HEALTH_INTERVAL);
    if !voters(members).all(|m| connected_since(me, m.id, &active, since)) {
        return Err(EtcdError::Unhealthy);
    }
    Ok(())
}

/// etcd's `mayRemoveMember` with `IsReadyToRemoveVotingMember`.
fn may_remove(
    me: u64,
    members: &[Member],
    id: u64,
    active: impl Fn(u64) -> Option<Instant>,
    now: Instant,
) -> Result<(), EtcdError> {
    if members.iter().any(|m| m.id == id && m.is_learner) {
        return Ok(());
    }
    let rest = || voters(members).filter(|m| m.id != id);
    if rest().filter(|m| started(m)).count() < rest().count() / 2 + 1 {
        return Err(EtcdError::MemberNotEnoughStarted);
    }
    // A member that is down is not part of the active quorum, so removing
    // it cannot break that quorum.
    if id != me && active(id).is_none() {
        return Ok(());
    }
    let since = now.checked_sub(HEALTH_INTERVAL);
    let nvoters = voters(members).count();
    let nactive = voters(members)
        .filter(|m| connected_since(me, m.id, &active, since))
        .count();
    if nactive.saturating_sub(1) < 1 + (nvoters - 1) / 2 {
        return Err(EtcdError::Unhealthy);
    }
    Ok(())
}

/// etcd's `IsReadyToPromoteMember`: the learner counts as a started voter.
fn may_promote(members: &[Member]) -> Result<(), EtcdError> {
    let nstarted = voters(members).filter(|m| started(m)).count() + 1;
    let nmembers = voters(members).count() + 1;
    if nstarted < nmembers / 2 + 1 {
        return Err(EtcdError::MemberNotEnoughStarted);
    }
    Ok(())
}

/// etcd's `isLearnerReady`: the learner's match index is at least 90 % of
/// the leader's. An ID raft does not track passes (the apply step refuses
/// unknown members and voters later).
fn learner_ready(leader: u64, progress: &HashMap<u64, u64>, id: u64) -> Result<(), EtcdError> {
    let (Some(&learner), Some(&lead)) = (progress.get(&id), progress.get(&leader)) else {
        return Ok(());
    };
    // Match indexes stay far below 2^52, where f64 is exact.
    if (learner as f64) < (lead as f64) * READY_PERCENT {
        return Err(EtcdError::LearnerNotReady);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, started: bool, learner: bool) -> Member {
        Member {
            id,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: Vec::new(),
            is_learner: learner,
        }
    }

    /// Members 1..=3, all started; member 1 is local.
    fn three() -> Vec<Member> {
        (1..=3).map(|id| member(id, true, false)).collect()
    }

    /// Everyone but `down` connected since `since` (or just now).
    fn links(down: &'static [u64], since: Instant) -> impl Fn(u64) -> Option<Instant> {
        move |id| (!down.contains(&id)).then_some(since)
    }

    fn long_ago() -> (Instant, Instant) {
        let t0 = Instant::now();
        (t0, t0 + HEALTH_INTERVAL * 2)
    }

    #[test]
    fn add_voter_needs_every_voter_connected_for_the_health_interval() {
        let (t0, now) = long_ago();
        assert_eq!(may_add(1, &three(), false, links(&[], t0), now), Ok(()));
        assert_eq!(
            may_add(1, &three(), false, links(&[3], t0), now),
            Err(EtcdError::Unhealthy)
        );
        // Connected, but only for a moment.
        assert_eq!(
            may_add(1, &three(), false, links(&[], now), now),
            Err(EtcdError::Unhealthy)
        );
    }

    #[test]
    fn add_learner_needs_connected_voters_only() {
        let (t0, now) = long_ago();
        let mut ms = three();
        ms[2].name.clear();
        assert_eq!(may_add(1, &ms, true, links(&[], t0), now), Ok(()));
        assert_eq!(
            may_add(1, &ms, true, links(&[2], t0), now),
            Err(EtcdError::Unhealthy)
        );
    }

    #[test]
    fn add_voter_needs_a_started_quorum_after_the_add() {
        let (t0, now) = long_ago();
        let mut ms = three();
        ms[2].name.clear();
        // 4 voters after the add, 2 started: below a quorum of 3.
        assert_eq!(
            may_add(1, &ms, false, links(&[], t0), now),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        // One started member growing to two is allowed (restoring).
        assert_eq!(
            may_add(1, &[member(1, true, false)], false, links(&[], t0), now),
            Ok(())
        );
        let two = [member(1, true, false), member(2, false, false)];
        assert_eq!(
            may_add(1, &two, false, links(&[], t0), now),
            Err(EtcdError::MemberNotEnoughStarted)
        );
    }

    #[test]
    fn remove_keeps_the_active_quorum() {
        let (t0, now) = long_ago();
        // A member that is down may go.
        assert_eq!(may_remove(1, &three(), 3, links(&[3], t0), now), Ok(()));
        // Removing a live member while another is down leaves 1 of 2.
        assert_eq!(
            may_remove(1, &three(), 2, links(&[3], t0), now),
            Err(EtcdError::Unhealthy)
        );
        assert_eq!(may_remove(1, &three(), 2, links(&[], t0), now), Ok(()));
        // Removing itself counts itself as active.
        assert_eq!(may_remove(1, &three(), 1, links(&[], t0), now), Ok(()));
    }

    #[test]
    fn remove_needs_a_started_quorum_of_the_rest() {
        let (t0, now) = long_ago();
        let mut ms = three();
        ms[2].name.clear();
        assert_eq!(
            may_remove(1, &ms, 2, links(&[], t0), now),
            Err(EtcdError::MemberNotEnoughStarted)
        );
        // Learners are removed without any check.
        ms.push(member(9, false, true));
        assert_eq!(may_remove(1, &ms, 9, links(&[9], t0), now), Ok(()));
    }

    #[test]
    fn promote_counts_the_learner_as_started() {
        let mut ms = three();
        ms.push(member(9, true, true));
        assert_eq!(may_promote(&ms), Ok(()));
        ms[1].name.clear();
        ms[2].name.clear();
        assert_eq!(may_promote(&ms), Err(EtcdError::MemberNotEnoughStarted));
    }

    #[test]
    fn learner_ready_at_ninety_percent_of_the_leader() {
        let p = HashMap::from([(1, 100), (9, 90), (8, 89)]);
        assert_eq!(learner_ready(1, &p, 9), Ok(()));
        assert_eq!(learner_ready(1, &p, 8), Err(EtcdError::LearnerNotReady));
        assert_eq!(learner_ready(1, &p, 7), Ok(()));
    }
}
