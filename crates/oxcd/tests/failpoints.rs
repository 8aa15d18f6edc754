//! Failpoints (`oxcd-failpoint`, debug builds only): a slow apply must not
//! delay raft, and a crash at each crash-relevant step must lose no
//! acknowledged write.
//!
//! Members are started with `OXCD_FAILPOINTS_HTTP=1` and armed through
//! `PUT /debug/failpoints/NAME` while they run, or with `OXCD_FAILPOINTS`
//! for a start. These tests exercise oxcd's own code paths; against the
//! reference etcd (`OXCD_TEST_SERVER`) they have nothing to check and say
//! so.

mod common;

use common::{bounded, http_request, server_binary, Cluster, ELECTION_TIMEOUT};
use etcd_client::{Client, GetOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A leader must be agreed on within this many election timeouts.
const ELECTION_BOUND: Duration = ELECTION_TIMEOUT.saturating_mul(10);

/// How long a member may take to reach a crash failpoint and exit.
const CRASH_BOUND: Duration = Duration::from_secs(20);

/// How long a restarted member may take to catch up with the others.
const CONVERGE_BOUND: Duration = Duration::from_secs(30);

/// The exit status of a `crash` failpoint (`oxcd_failpoint::CRASH_STATUS`).
const CRASH_STATUS: i32 = 137;

/// Whether the server under test is oxcd (the failpoints are oxcd's).
fn is_oxcd() -> bool {
    let ours = server_binary() == Path::new(env!("CARGO_BIN_EXE_oxcd"));
    if !ours {
        eprintln!("failpoints are oxcd's own; nothing to check against the reference server");
    }
    ours
}

/// Arms failpoint `name` with `term` on the member at `client_url`.
async fn arm(client_url: &str, name: &str, term: &str) {
    let (code, body) = http_request(
        client_url,
        "PUT",
        &format!("/debug/failpoints/{name}"),
        term,
    )
    .await;
    assert_eq!(code, 204, "arming {name}={term}: {body}");
}

/// The (leader, term) member `i` reports.
async fn view(c: &Cluster, i: usize) -> (u64, u64) {
    let s = c
        .status_of(i)
        .await
        .unwrap_or_else(|| panic!("member {i} answers no status\n{}", c.logs()));
    (s.leader(), s.raft_term())
}

#[tokio::test(flavor = "multi_thread")]
async fn failpoint_route_arms_lists_and_refuses() {
    if !is_oxcd() {
        return;
    }
    bounded(async {
        let c = Cluster::builder(1)
            .env("OXCD_FAILPOINTS_HTTP", "1")
            .start()
            .await;
        let url = c.member(0).client_url();
        arm(&url, "walAfterSync", "2*sleep(1)").await;
        let (code, body) = http_request(&url, "GET", "/debug/failpoints", "").await;
        assert_eq!((code, body.as_str()), (200, "walAfterSync=2*sleep(1)\n"));
        let (code, body) = http_request(&url, "PUT", "/debug/failpoints/nope", "crash").await;
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("unknown failpoint"), "{body}");
        let (code, body) =
            http_request(&url, "PUT", "/debug/failpoints/walAfterSync", "boom").await;
        assert_eq!(code, 400, "{body}");
        let (code, _) = http_request(&url, "DELETE", "/debug/failpoints/walAfterSync", "").await;
        assert_eq!(code, 204);
        let (_, body) = http_request(&url, "GET", "/debug/failpoints", "").await;
        assert_eq!(body, "");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failpoint_route_needs_the_environment() {
    if !is_oxcd() {
        return;
    }
    bounded(async {
        let c = Cluster::builder(1).start().await;
        let url = c.member(0).client_url();
        let (code, _) = http_request(&url, "PUT", "/debug/failpoints/walAfterSync", "crash").await;
        assert_eq!(code, 404);
    })
    .await;
}

/// Applying runs on its own stage: an entry that takes 3 s (six election
/// timeouts) to apply on the leader does not stop its heartbeats, so no
/// follower campaigns and the term stays. (Slowing the leader's raft
/// thread the same way, `raftAfterSave`, makes the followers elect a new
/// leader: the check can fail.)
#[tokio::test(flavor = "multi_thread")]
async fn slow_apply_keeps_the_leader() {
    if !is_oxcd() {
        return;
    }
    bounded(async {
        let c = Cluster::builder(3)
            .env("OXCD_FAILPOINTS_HTTP", "1")
            .start()
            .await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let before = view(&c, leader).await;
        arm(
            &c.member(leader).client_url(),
            "applyBeforeEntry",
            "1*sleep(3000)",
        )
        .await;
        let mut client = c.client_of(leader).await;
        let t0 = Instant::now();
        client.put("slow", "v", None).await.expect("put");
        let took = t0.elapsed();
        // Proof that the put's apply was the slow one.
        assert!(
            took >= Duration::from_millis(2900),
            "put took only {took:?}"
        );
        for i in 0..3 {
            assert_eq!(
                view(&c, i).await,
                before,
                "member {i} saw an election during the slow apply\n{}",
                c.logs()
            );
        }
    })
    .await;
}

/// Puts until the member crashes (at most `limit`); returns the
/// acknowledged ones (key → (value, revision)) and the keys in doubt.
async fn put_until_crash(
    client: &mut Client,
    prefix: &str,
    limit: usize,
) -> (BTreeMap<String, (String, i64)>, Vec<String>) {
    let mut acked = BTreeMap::new();
    for n in 0..limit {
        let (k, v) = (format!("{prefix}{n:03}"), format!("v{n}"));
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.put(k.clone(), v.clone(), None),
        )
        .await
        {
            Ok(Ok(r)) => {
                let rev = r.header().map_or(0, |h| h.revision());
                acked.insert(k, (v, rev));
            }
            _ => return (acked, vec![k]),
        }
    }
    (acked, Vec::new())
}

/// Every acknowledged put is there with its value and revision; a put in
/// doubt is there whole or not at all.
async fn check_survivors(
    client: &mut Client,
    prefix: &str,
    acked: &BTreeMap<String, (String, i64)>,
    doubt: &[String],
) {
    let got = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("get after restart");
    let have: BTreeMap<String, (String, i64)> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8 key").to_string(),
                (
                    kv.value_str().expect("utf-8 value").to_string(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect();
    for (k, want) in acked {
        assert_eq!(have.get(k), Some(want), "acknowledged {k} lost or changed");
    }
    for (k, (v, _)) in &have {
        if !acked.contains_key(k) {
            assert!(doubt.contains(k), "{k} was never written");
            assert!(v.starts_with('v'), "{k} holds {v:?}");
        }
    }
}

/// Crashes a single member at `point` (armed after five puts), then
/// restarts it and checks the survivors; it must take new writes after.
async fn crash_single_member_at(point: &str, flags: &[&str]) {
    fail_single_member_at(point, "crash", CRASH_STATUS, "crashing", flags).await;
}

/// Arms `point` with `term` after five puts, puts until the member exits
/// with `status` having logged `failpoint <point>: <says>`, then restarts
/// it and checks the survivors; it must take new writes after.
async fn fail_single_member_at(point: &str, term: &str, status: i32, says: &str, flags: &[&str]) {
    let mut c = Cluster::builder(1)
        .env("OXCD_FAILPOINTS_HTTP", "1")
        .flags(flags)
        .start()
        .await;
    let url = c.member(0).client_url();
    let mut client = c.client_of(0).await;
    let (mut acked, _) = put_until_crash(&mut client, "a/", 5).await;
    assert_eq!(acked.len(), 5);
    arm(&url, point, term).await;
    let (more, doubt) = put_until_crash(&mut client, "b/", 50).await;
    acked.extend(more);
    let exit = c.member_mut(0).wait_exit(CRASH_BOUND).await;
    assert_eq!(
        exit.code(),
        Some(status),
        "{point}: exit {exit:?}\n{}",
        c.logs()
    );
    assert!(
        c.logs().contains(&format!("failpoint {point}: {says}")),
        "{point} did not fire"
    );
    c.restart(0).await;
    let mut client = c.client_of(0).await;
    check_survivors(&mut client, "", &acked, &doubt).await;
    client
        .put("after", "crash", None)
        .await
        .expect("put after restart");
}

macro_rules! crash_tests {
    ($($test:ident: $point:literal $(, $flag:literal)*;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $test() {
            if !is_oxcd() {
                return;
            }
            bounded(crash_single_member_at($point, &[$($flag),*])).await;
        }
    )*};
}

crash_tests! {
    crash_before_wal_save: "raftBeforeSave";
    crash_before_wal_fsync: "walBeforeSync";
    crash_after_wal_fsync: "walAfterSync";
    crash_after_wal_save: "raftAfterSave";
    crash_before_apply: "applyBeforeEntry";
    crash_before_publish: "applyBeforePublish";
    crash_after_publish: "applyAfterPublish";
    crash_before_backend_commit: "backendBeforeCommit";
    crash_after_backend_commit: "backendAfterCommit";
    crash_before_snapshot_file: "raftBeforeSaveSnap", "--snapshot-count", "8";
    crash_after_snapshot_file: "raftAfterSaveSnap", "--snapshot-count", "8";
}

/// A WAL fsync that fails stops the member (etcd exits too: what reached
/// the disk is unknown); the restart replays what was durable.
#[tokio::test(flavor = "multi_thread")]
async fn wal_fsync_failure_stops_the_member_and_loses_nothing() {
    if !is_oxcd() {
        return;
    }
    bounded(fail_single_member_at(
        "walBeforeSync",
        "1*error",
        1,
        "failing the call",
        &[],
    ))
    .await;
}

/// A backend file fsync that fails stops the member (etcd: "failed to
/// commit tx"); the restart replays the WAL over the backend.
#[tokio::test(flavor = "multi_thread")]
async fn backend_fsync_failure_stops_the_member_and_loses_nothing() {
    if !is_oxcd() {
        return;
    }
    bounded(fail_single_member_at(
        "backendSync",
        "1*error",
        1,
        "failing the call",
        &[],
    ))
    .await;
}

/// A backend file write that fails, the same.
#[tokio::test(flavor = "multi_thread")]
async fn backend_write_failure_stops_the_member_and_loses_nothing() {
    if !is_oxcd() {
        return;
    }
    bounded(fail_single_member_at(
        "backendWrite",
        "1*error",
        1,
        "failing the call",
        &[],
    ))
    .await;
}

/// Waits until member `i` holds exactly what member `j` holds under
/// `prefix` (serializable reads of each).
async fn wait_same(c: &Cluster, i: usize, j: usize, prefix: &str) {
    let deadline = Instant::now() + CONVERGE_BOUND;
    let serial = || GetOptions::new().with_prefix().with_serializable();
    loop {
        let mut a = c.client_of(i).await;
        let mut b = c.client_of(j).await;
        let (ra, rb) = (
            a.get(prefix, Some(serial())).await,
            b.get(prefix, Some(serial())).await,
        );
        if let (Ok(ra), Ok(rb)) = (ra, rb) {
            let pairs = |r: &etcd_client::GetResponse| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
                r.kvs()
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.mod_revision()))
                    .collect()
            };
            if pairs(&ra) == pairs(&rb) && !ra.kvs().is_empty() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "member {i} did not catch up with member {j} within {CONVERGE_BOUND:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A follower that crashes while installing the leader's snapshot (before
/// or after the backend swap) restarts, installs it again and catches up.
async fn crash_follower_installing_snapshot(point: &str) {
    let mut c = Cluster::builder(3)
        .flags(&["--snapshot-count", "10"])
        .start()
        .await;
    let leader = c.wait_leader(ELECTION_BOUND).await;
    let follower = (leader + 1) % 3;
    c.stop(follower).await;
    let live = (0..3).find(|i| *i != follower).unwrap_or(leader);
    let mut client = c.client_of(live).await;
    for n in 0..60 {
        client
            .put(format!("s/{n:03}"), format!("v{n}"), None)
            .await
            .expect("put while the follower is down");
    }
    c.member_mut(follower)
        .set_env("OXCD_FAILPOINTS", Some(&format!("{point}=crash")));
    let log = c.restart_expecting_exit(follower, &[]).await;
    assert!(
        log.contains(&format!("failpoint {point}: crashing")),
        "{point} did not fire:\n{log}"
    );
    c.member_mut(follower).set_env("OXCD_FAILPOINTS", None);
    c.restart(follower).await;
    wait_same(&c, follower, live, "s/").await;
    let mut client = c.client_of(follower).await;
    client
        .put("after", "crash", None)
        .await
        .expect("put after restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_snapshot_restore() {
    if !is_oxcd() {
        return;
    }
    bounded(crash_follower_installing_snapshot("applyBeforeRestore")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_snapshot_restore() {
    if !is_oxcd() {
        return;
    }
    bounded(crash_follower_installing_snapshot("applyAfterRestore")).await;
}
