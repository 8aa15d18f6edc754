//! Lease renewals and TimeToLive sent to a follower reach the leader,
//! whose lessor alone decides expiry (etcd forwards them over the peer
//! URLs). Black-box, on a 3-member cluster; every expectation was checked
//! against etcd 3.4.23 (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use std::time::{Duration, Instant};

use common::{bounded, Cluster, ELECTION_TIMEOUT};
use etcd_client::{GetOptions, PutOptions};

/// A leader must be agreed on within this many election timeouts.
const ELECTION_BOUND: Duration = ELECTION_TIMEOUT.saturating_mul(10);

/// The lease TTL in seconds (above the minimum of 1 s that
/// [`common::FAST_RAFT`] timings give).
const TTL: i64 = 2;

/// Interval of keepalives and polls.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(25);

#[tokio::test]
async fn follower_forwards_keepalive_and_time_to_live_to_the_leader() {
    bounded(async {
        let c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        let mut at_leader = c.client_of(leader).await;
        let mut at_follower = c.client_of(follower).await;

        let id = at_follower
            .lease_grant(TTL, None)
            .await
            .expect("grant")
            .id();
        at_follower
            .put("leased", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put with lease");

        // Keep the lease alive through the follower only, for three TTLs.
        let (mut keeper, mut responses) = at_follower
            .lease_keep_alive(id)
            .await
            .expect("keepalive stream");
        let until = Instant::now() + Duration::from_secs(3 * TTL as u64);
        while Instant::now() < until {
            keeper.keep_alive().await.expect("send keepalive");
            let r = responses
                .message()
                .await
                .expect("keepalive answer")
                .expect("keepalive stream open");
            assert_eq!((r.id(), r.ttl()), (id, TTL), "lease lost while kept alive");
            tokio::time::sleep(KEEPALIVE_EVERY).await;
        }
        let r = at_leader
            .get("leased", Some(GetOptions::new()))
            .await
            .expect("get");
        assert_eq!(r.kvs().len(), 1, "the leased key expired");

        // TimeToLive through the follower is the leader's remaining TTL.
        let via_follower = at_follower
            .lease_time_to_live(id, None)
            .await
            .expect("ttl via follower");
        let via_leader = at_leader
            .lease_time_to_live(id, None)
            .await
            .expect("ttl via leader");
        assert_eq!(via_follower.granted_ttl(), TTL);
        assert!(via_follower.ttl() > 0, "{via_follower:?}");
        assert!(
            (via_follower.ttl() - via_leader.ttl()).abs() <= 1,
            "follower {via_follower:?} vs leader {via_leader:?}"
        );
        // An unknown lease: TTL -1 through the follower too.
        let unknown = at_follower
            .lease_time_to_live(id + 1, None)
            .await
            .expect("ttl of an unknown lease");
        assert_eq!(unknown.ttl(), -1);

        // Once the keepalives stop, the leader expires the lease.
        drop(keeper);
        drop(responses);
        let deadline = Instant::now() + Duration::from_secs(3 * TTL as u64) + ELECTION_BOUND;
        loop {
            let r = at_follower
                .get("leased", Some(GetOptions::new()))
                .await
                .expect("get");
            if r.kvs().is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
            tokio::time::sleep(POLL).await;
        }
        // A keepalive of the expired lease through the follower answers
        // TTL 0, which etcd-client reports as "lease not found".
        let r = at_follower.lease_keep_alive(id).await;
        assert!(
            matches!(r, Err(etcd_client::Error::LeaseKeepAliveError(_))),
            "{:?}",
            r.map(|_| ())
        );
    })
    .await;
}
