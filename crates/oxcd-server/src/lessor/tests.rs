use super::*;

const RETRY: Duration = Duration::from_secs(3);

fn primary(min_ttl: i64, now: Instant) -> Lessor {
    let l = Lessor::new(min_ttl);
    l.promote_at(now, Duration::ZERO);
    l
}

#[test]
fn min_ttl_follows_etcd_formula() {
    // Defaults: 10 ticks of 100 ms → (3×10/2)×100 ms = 1.5 s → 2 s.
    assert_eq!(min_lease_ttl(10, 100), 2);
    // 5 ticks: (15/2 = 7)×100 ms = 0.7 s → 1 s (integer division first).
    assert_eq!(min_lease_ttl(5, 100), 1);
    // 10 ticks of 500 ms: 7.5 s → 8 s.
    assert_eq!(min_lease_ttl(10, 500), 8);
}

#[test]
fn grant_checks_and_raises_ttl() {
    let now = Instant::now();
    let l = primary(2, now);
    assert_eq!(l.grant_at(now, 1, 1), Ok(2), "raised to the minimum");
    assert_eq!(l.grant_at(now, 2, -5), Ok(2), "negative raised too");
    assert_eq!(l.grant_at(now, 3, 60), Ok(60));
    assert_eq!(l.grant_at(now, 3, 60), Err(EtcdError::LeaseExist));
    assert_eq!(l.grant_at(now, 0, 60), Err(EtcdError::LeaseNotFound));
    assert_eq!(
        l.grant_at(now, 4, MAX_LEASE_TTL + 1),
        Err(EtcdError::LeaseTTLTooLarge)
    );
    assert_eq!(l.grant_at(now, 4, MAX_LEASE_TTL), Ok(MAX_LEASE_TTL));
    assert!(l.contains(3) && !l.contains(5));
}

#[test]
fn expiry_is_found_in_order_and_retried() {
    let t0 = Instant::now();
    let l = primary(1, t0);
    l.grant_at(t0, 10, 10).unwrap();
    l.grant_at(t0, 5, 5).unwrap();
    l.grant_at(t0, 7, 7).unwrap();
    assert_eq!(l.leases(), vec![5, 7, 10], "sorted by expiry");
    let s = |n| t0 + Duration::from_secs(n);
    assert!(l.find_expired(s(4), 100, RETRY).is_empty());
    assert_eq!(l.find_expired(s(8), 100, RETRY), vec![5, 7]);
    // Proposed revokes are not proposed again until the retry interval.
    assert!(l.find_expired(s(9), 100, RETRY).is_empty());
    assert_eq!(l.find_expired(s(12), 100, RETRY), vec![10, 5, 7]);
    // The limit bounds one pass.
    l.remove(5);
    l.remove(7);
    l.grant_at(s(12), 20, 1).unwrap();
    l.grant_at(s(12), 21, 1).unwrap();
    assert_eq!(l.find_expired(s(20), 1, RETRY).len(), 1);
}

#[tokio::test]
async fn renew_moves_the_expiry() {
    let t0 = Instant::now() - Duration::from_secs(4);
    let l = primary(1, t0);
    l.grant_at(t0, 1, 5).unwrap();
    // Renewed now (4 s after the grant): expires 5 s from now.
    assert_eq!(l.renew(1).await, Ok(5));
    let ttl = l.time_to_live(1, false).unwrap();
    assert!((4..=5).contains(&ttl.ttl), "{ttl:?}");
    assert_eq!(ttl.granted_ttl, 5);
    // The stale queue entry (grant time + 5 s) does not expire it.
    assert!(l
        .find_expired(t0 + Duration::from_secs(6), 10, RETRY)
        .is_empty());
    assert_eq!(l.renew(99).await, Err(EtcdError::LeaseNotFound));
}

#[tokio::test]
async fn renew_of_an_expired_lease_waits_for_the_revoke() {
    let t0 = Instant::now() - Duration::from_secs(10);
    let l = primary(1, t0);
    l.grant_at(t0, 1, 2).unwrap();
    let waiter = tokio::spawn({
        let l = l.clone();
        async move { l.renew(1).await }
    });
    tokio::task::yield_now().await;
    l.remove(1);
    assert_eq!(waiter.await.unwrap(), Err(EtcdError::LeaseNotFound));
}

#[test]
fn attach_and_detach_keep_both_maps() {
    let now = Instant::now();
    let l = primary(1, now);
    l.grant_at(now, 1, 60).unwrap();
    l.grant_at(now, 2, 60).unwrap();
    l.attach(b"b", 1);
    l.attach(b"a", 1);
    l.attach(b"c", 2);
    assert_eq!(l.keys(1).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    // Moving a key to another lease detaches it from the first.
    l.attach(b"a", 2);
    assert_eq!(l.keys(1).unwrap(), vec![b"b".to_vec()]);
    assert_eq!(l.keys(2).unwrap(), vec![b"a".to_vec(), b"c".to_vec()]);
    // Lease 0 means no lease.
    l.attach(b"c", 0);
    assert_eq!(l.keys(2).unwrap(), vec![b"a".to_vec()]);
    l.detach(b"a");
    assert!(l.keys(2).unwrap().is_empty());
    let ttl = l.time_to_live(1, true).unwrap();
    assert_eq!(ttl.keys, vec![b"b".to_vec()]);
    l.remove(1);
    assert!(l.keys(1).is_none());
    // A key of a removed lease can be attached elsewhere afresh.
    l.attach(b"b", 2);
    assert_eq!(l.keys(2).unwrap(), vec![b"b".to_vec()]);
}

#[test]
fn not_primary_never_expires() {
    let now = Instant::now();
    let l = Lessor::new(1);
    l.grant_at(now, 1, 1).unwrap();
    assert!(l
        .find_expired(now + Duration::from_secs(100), 10, RETRY)
        .is_empty());
    assert_eq!(l.time_to_live(1, false).unwrap().ttl, 9_223_372_036);
    // Promote starts the clock: TTL + extend from now.
    l.promote_at(now, Duration::from_secs(1));
    let later = now + Duration::from_millis(1500);
    assert!(l.find_expired(later, 10, RETRY).is_empty());
    assert_eq!(
        l.find_expired(now + Duration::from_secs(2), 10, RETRY),
        vec![1]
    );
}
