//! Membership changes refused for safety: `--strict-reconfig-check` (on by
//! default), the learner catch-up rule for promotion, and the limit of one
//! learner. Black-box, on clusters of real member processes.
//!
//! Every expectation was checked against etcd 3.4.23
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`) with [`common::FAST_RAFT`] timings.
//! Members added here and never started stay "unstarted" (no name), which
//! is what the started-quorum rules count. etcd 3.4 sends "not enough
//! started members" with code Unknown (see `oxcd_api::errors`).

mod common;

use std::time::{Duration, Instant};

use common::{bounded, grpc_status, Cluster, ELECTION_TIMEOUT};
use etcd_client::{Client, MemberAddOptions};

/// A leader must be agreed on within this many election timeouts.
const ELECTION_BOUND: Duration = ELECTION_TIMEOUT.saturating_mul(10);

/// How long a started learner may take to catch up.
const CATCH_UP_BOUND: Duration = Duration::from_secs(20);

/// Interval of the tests' own polls.
const POLL: Duration = Duration::from_millis(25);

const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";
const TOO_MANY_LEARNERS: &str = "etcdserver: too many learner members in cluster";

/// A peer URL on a port nothing listens on (for members never started).
fn unused_peer_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let port = l.local_addr().expect("probe port").port();
    format!("http://127.0.0.1:{port}")
}

/// Adds a member that is never started; returns its ID.
async fn add_unstarted(client: &mut Client, learner: bool) -> Result<u64, tonic::Status> {
    let opts = learner.then(|| MemberAddOptions::new().with_is_learner());
    client
        .member_add([unused_peer_url()], opts)
        .await
        .map(|r| r.member().expect("added member").id())
        .map_err(grpc_status)
}

/// Asserts `r` failed with `code` and exactly `message`.
fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    let err = r.expect_err(message);
    assert_eq!((err.code(), err.message()), (code, message), "{err:?}");
}

/// Kills a follower of `c` and waits until its client port is gone;
/// returns (leader, the other follower, the killed one).
async fn kill_a_follower(c: &mut Cluster) -> (usize, usize, usize) {
    let leader = c.wait_leader(ELECTION_BOUND).await;
    let live = (leader + 1) % 3;
    let down = (leader + 2) % 3;
    c.kill9(down);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status_of(down).await.is_some() {
        assert!(Instant::now() < deadline, "killed member still answers");
        tokio::time::sleep(POLL).await;
    }
    (leader, live, down)
}

#[tokio::test]
async fn strict_check_refuses_changes_that_risk_quorum() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let (leader, live, down) = kill_a_follower(&mut c).await;
        for via in [leader, live] {
            let mut client = c.client_of(via).await;
            // A new voter needs every voter connected for the last 5 s.
            assert_refused(
                add_unstarted(&mut client, false).await,
                tonic::Code::Unavailable,
                UNHEALTHY,
            );
            // Removing a live voter would leave 1 active of 2.
            let r = client.member_remove(c.member_id(live)).await;
            assert_refused(r.map_err(grpc_status), tonic::Code::Unavailable, UNHEALTHY);
        }
        let mut client = c.client_of(leader).await;
        // A learner needs the voters connected too (but not started).
        assert_refused(
            add_unstarted(&mut client, true).await,
            tonic::Code::Unavailable,
            UNHEALTHY,
        );
        // The member that is down is not part of the active quorum.
        client
            .member_remove(c.member_id(down))
            .await
            .expect("remove the member that is down");
        let list = client.member_list().await.expect("member list");
        assert_eq!(list.members().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn learners_limited_and_promoted_only_in_sync() {
    bounded(async {
        let c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        let mut client = c.client_of(follower).await;
        // Right after start-up the peers have not been connected for the
        // 5 s the strict check wants.
        let deadline = Instant::now() + Duration::from_secs(15);
        let learner = loop {
            match add_unstarted(&mut client, true).await {
                Ok(id) => break id,
                Err(e) if e.message() == UNHEALTHY => {}
                Err(e) => panic!("add learner: {e:?}"),
            }
            assert!(Instant::now() < deadline, "still unhealthy");
            tokio::time::sleep(POLL).await;
        };
        assert_refused(
            add_unstarted(&mut client, true).await,
            tonic::Code::FailedPrecondition,
            TOO_MANY_LEARNERS,
        );
        // Never started, the learner has nothing of the log: through a
        // follower (forwarded) and through the leader alike.
        for via in [follower, leader] {
            let r = c.client_of(via).await.member_promote(learner).await;
            assert_refused(
                r.map_err(grpc_status),
                tonic::Code::FailedPrecondition,
                LEARNER_NOT_READY,
            );
        }
        client.member_remove(learner).await.expect("remove learner");
        add_unstarted(&mut client, true)
            .await
            .expect("a learner again once the first is gone");
    })
    .await;
}

#[tokio::test]
async fn strict_check_counts_started_members() {
    bounded(async {
        let c = Cluster::start(1).await;
        c.wait_leader(ELECTION_BOUND).await;
        let mut client = c.client_of(0).await;
        // Growing one started member to two is how a cluster is rebuilt
        // from a backup, so it is allowed (and leaves no quorum running).
        add_unstarted(&mut client, false)
            .await
            .expect("second voter of a one-member cluster");
        assert_refused(
            add_unstarted(&mut client, false).await,
            tonic::Code::Unknown,
            NOT_ENOUGH_STARTED,
        );
        let r = client.member_remove(c.member_id(0)).await;
        assert_refused(
            r.map_err(grpc_status),
            tonic::Code::Unknown,
            NOT_ENOUGH_STARTED,
        );
    })
    .await;
}

#[tokio::test]
async fn without_strict_check_a_voter_is_added_while_one_is_down() {
    bounded(async {
        let mut c = Cluster::builder(3)
            .flags(&["--strict-reconfig-check=false"])
            .start()
            .await;
        let (leader, _, _) = kill_a_follower(&mut c).await;
        let mut client = c.client_of(leader).await;
        // Two of three voters commit the change; the cluster then has four
        // voters and only two running, which is what the check prevents.
        add_unstarted(&mut client, false)
            .await
            .expect("add without the strict check");
    })
    .await;
}

#[tokio::test]
async fn promote_through_a_follower_once_caught_up() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        let mut client = c.client_of(follower).await;
        for i in 0..50 {
            client.put(format!("k{i}"), "v", None).await.expect("put");
        }
        let l = c.add_member(true).await;
        let id = c.member_id(l);
        // Promotion goes to the leader, which alone knows the learner's
        // progress; it succeeds once the learner is in sync.
        let deadline = Instant::now() + CATCH_UP_BOUND;
        let members = loop {
            match client.member_promote(id).await.map_err(grpc_status) {
                Ok(r) => break r.members().to_vec(),
                Err(e) if e.message() == LEARNER_NOT_READY => {}
                Err(e) => panic!("promote through a follower: {e:?}"),
            }
            assert!(Instant::now() < deadline, "learner never caught up");
            tokio::time::sleep(POLL).await;
        };
        assert_eq!(members.len(), 4);
        assert!(members.iter().all(|m| !m.is_learner()), "{members:?}");
        // Promoting it again: it is no learner any more.
        let r = client.member_promote(id).await;
        assert_refused(
            r.map_err(grpc_status),
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        );
    })
    .await;
}
