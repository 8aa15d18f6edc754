//! Leases, black-box: the real `etcdctl lease ...` commands with their exact
//! output, and the `etcd-client` crate for grant/revoke errors, expiry,
//! keepalive and restarts.
//!
//! Every expectation was checked against etcd 3.4
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use std::time::{Duration, Instant};

use common::{bounded, grpc_status, Cluster, Member};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions,
    WatchOptions, WatchStream,
};
use tonic::Code;

/// etcd's minimum TTL with the default timings (heartbeat 100 ms,
/// election 1000 ms).
const MIN_TTL: i64 = 2;

/// How late an expiry may be noticed: the 500 ms expiry loop, plus the
/// revoke's round trip and test scheduling.
const EXPIRY_SKEW: Duration = Duration::from_millis(1500);

fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// Parses `lease <hex> granted with TTL(<n>s)`.
fn granted_id(out: &str) -> i64 {
    let hex = out
        .strip_prefix("lease ")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"));
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("bad lease id {hex:?}: {e}"))
}

async fn keys_with_prefix(c: &mut Client, prefix: &str) -> Vec<String> {
    c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_keys_only()),
    )
    .await
    .expect("get prefix")
    .kvs()
    .iter()
    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
    .collect()
}

/// Polls until no key with `prefix` is left; returns when that happened.
async fn wait_gone(c: &mut Client, prefix: &str, deadline: Duration) -> Instant {
    let until = Instant::now() + deadline;
    loop {
        if keys_with_prefix(c, prefix).await.is_empty() {
            return Instant::now();
        }
        assert!(
            Instant::now() < until,
            "keys under {prefix:?} still there after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A watch on `prefix`, or `None` when the server has no Watch service.
async fn try_watch(c: &mut Client, prefix: &str) -> Option<WatchStream> {
    let opts = WatchOptions::new().with_prefix();
    match tokio::time::timeout(Duration::from_secs(5), c.watch(prefix, Some(opts))).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == Code::Unimplemented => None,
        Ok(Err(e)) => panic!("watch {prefix:?}: {e}"),
        Err(_) => panic!("watch {prefix:?} did not start"),
    }
}

#[tokio::test]
async fn etcdctl_lease_commands() {
    bounded(async {
        let m = Member::start().await;
        let out = m.etcdctl(&["lease", "grant", "100"]).await;
        let id = granted_id(out.ok());
        assert_eq!(
            out.ok(),
            format!("lease {} granted with TTL(100s)\n", hex(id))
        );
        assert!(id > 0, "server-chosen IDs are positive");
        let lid = hex(id);

        assert_eq!(
            m.etcdctl(&["put", "foo", "bar", "--lease", &lid])
                .await
                .ok(),
            "OK\n"
        );
        assert_eq!(
            m.etcdctl(&["put", "zoo", "bar", "--lease", &lid])
                .await
                .ok(),
            "OK\n"
        );
        // Re-putting without a lease detaches the key.
        m.etcdctl(&["put", "moved", "x", "--lease", &lid])
            .await
            .ok();
        m.etcdctl(&["put", "moved", "y"]).await.ok();

        let out = m.etcdctl(&["lease", "timetolive", &lid, "--keys"]).await;
        let text = out.ok();
        assert!(
            text == format!(
                "lease {lid} granted with TTL(100s), remaining(99s), attached keys([foo zoo])\n"
            ) || text
                == format!(
                "lease {lid} granted with TTL(100s), remaining(100s), attached keys([foo zoo])\n"
            ),
            "{text:?}"
        );
        let j = m
            .etcdctl(&["lease", "timetolive", &lid, "-w", "json"])
            .await
            .json();
        assert_eq!(j["granted-ttl"], 100);
        assert_eq!(j["id"], id);
        assert!(j["ttl"].as_i64().unwrap() >= 98, "{j}");

        // put --ignore-lease keeps the lease while the value changes.
        assert_eq!(
            m.etcdctl(&["put", "foo", "bar2", "--ignore-lease"])
                .await
                .ok(),
            "OK\n"
        );
        let j = m.etcdctl(&["get", "foo", "-w", "json"]).await.json();
        assert_eq!(j["kvs"][0]["lease"], id, "{j}");
        assert_eq!(
            m.etcdctl(&["put", "nokey", "v", "--ignore-lease"])
                .await
                .err(),
            "Error: etcdserver: key not found"
        );

        assert_eq!(
            m.etcdctl(&["lease", "keep-alive", "--once", &lid])
                .await
                .ok(),
            format!("lease {lid} keepalived with TTL(100)\n")
        );
        assert_eq!(
            m.etcdctl(&["lease", "keep-alive", "--once", "1234"])
                .await
                .err(),
            "Error: etcdserver: requested lease not found"
        );

        let second = granted_id(m.etcdctl(&["lease", "grant", "1"]).await.ok());
        let list = m.etcdctl(&["lease", "list"]).await;
        let mut lines: Vec<&str> = list.ok().lines().collect();
        assert_eq!(lines.remove(0), "found 2 leases");
        lines.sort_unstable();
        let mut want = vec![lid.clone(), hex(second)];
        want.sort();
        assert_eq!(lines, want);

        assert_eq!(
            m.etcdctl(&["lease", "revoke", &lid]).await.ok(),
            format!("lease {lid} revoked\n")
        );
        assert_eq!(
            m.etcdctl(&["get", "", "--prefix", "--keys-only"])
                .await
                .ok(),
            "moved\n\n"
        );
        assert_eq!(
            m.etcdctl(&["lease", "revoke", &lid]).await.err(),
            "Error: failed to revoke lease (etcdserver: requested lease not found)"
        );
        assert_eq!(
            m.etcdctl(&["lease", "timetolive", &lid]).await.ok(),
            format!("lease {lid} already expired\n")
        );
        let j = m
            .etcdctl(&["lease", "timetolive", "1234", "-w", "json"])
            .await
            .json();
        assert_eq!(
            (j["id"].as_i64(), j["ttl"].as_i64()),
            (Some(0x1234), Some(-1)),
            "{j}"
        );
        assert_eq!(
            m.etcdctl(&["put", "a", "b", "--lease", "1234"]).await.err(),
            "Error: etcdserver: requested lease not found"
        );
        assert_eq!(
            m.etcdctl(&["lease", "grant", "9000000001"]).await.err(),
            "Error: failed to grant lease (etcdserver: too large lease TTL)"
        );
    })
    .await;
}

#[tokio::test]
async fn grant_revoke_and_lookup_errors() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;

        let r = c.lease_grant(1, None).await.expect("grant");
        assert_eq!(r.ttl(), MIN_TTL, "TTLs below the minimum are raised");
        let r = c.lease_grant(-7, None).await.expect("grant");
        assert_eq!(r.ttl(), MIN_TTL);
        assert_eq!(
            r.header().expect("header").revision(),
            1,
            "grants make no revision"
        );

        let r = c
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x77)))
            .await
            .expect("grant with an ID");
        assert_eq!((r.id(), r.ttl()), (0x77, 30));
        let s = grpc_status(
            c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x77)))
                .await
                .expect_err("duplicate ID"),
        );
        assert_eq!(
            (s.code(), s.message()),
            (Code::FailedPrecondition, "etcdserver: lease already exists")
        );
        let s = grpc_status(
            c.lease_grant(9_000_000_001, None)
                .await
                .expect_err("TTL too large"),
        );
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: too large lease TTL")
        );
        let big = c
            .lease_grant(9_000_000_000, None)
            .await
            .expect("largest TTL")
            .id();

        let s = grpc_status(c.lease_revoke(0x1234).await.expect_err("unknown revoke"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "etcdserver: requested lease not found")
        );
        // TimeToLive and KeepAlive of an unknown lease are not errors.
        let t = c.lease_time_to_live(0x1234, None).await.expect("ttl");
        assert_eq!((t.id(), t.ttl(), t.granted_ttl()), (0x1234, -1, 0));
        // etcd-client turns the first answer's TTL 0 into this error.
        assert!(matches!(
            c.lease_keep_alive(0x1234).await,
            Err(etcd_client::Error::LeaseKeepAliveError(_))
        ));

        let t = c
            .lease_time_to_live(0x77, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert_eq!(t.granted_ttl(), 30);
        assert!((29..=30).contains(&t.ttl()), "{t:?}");
        assert!(t.keys().is_empty());

        // A revoke with no keys makes no revision; one with keys makes one.
        let r = c.lease_revoke(0x77).await.expect("revoke");
        assert_eq!(r.header().expect("header").revision(), 1);
        let leases = c.leases().await.expect("leases");
        let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
        assert!(ids.contains(&big) && !ids.contains(&0x77), "{ids:?}");
        assert_eq!(ids.last(), Some(&big), "sorted by expiry");
    })
    .await;
}

#[tokio::test]
async fn expiry_deletes_attached_keys_in_one_revision() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut watch = try_watch(&mut c, "exp/").await;

        let granted = Instant::now();
        let id = c.lease_grant(MIN_TTL, None).await.expect("grant").id();
        for k in ["exp/b", "exp/a", "exp/c"] {
            c.put(k, "v", Some(PutOptions::new().with_lease(id)))
                .await
                .expect("put with lease");
        }
        c.put("exp/plain", "v", None).await.expect("plain put"); // rev 5
        let gone = wait_gone_leased(&mut c).await;
        let elapsed = gone - granted;
        assert!(
            elapsed >= Duration::from_secs(MIN_TTL as u64) - Duration::from_millis(100),
            "expired too early: {elapsed:?}"
        );
        assert!(
            elapsed <= Duration::from_secs(MIN_TTL as u64) + EXPIRY_SKEW,
            "expired too late: {elapsed:?}"
        );
        let r = c.get("exp/plain", None).await.expect("get");
        assert_eq!(r.kvs().len(), 1, "keys without the lease stay");
        assert_eq!(
            r.header().expect("header").revision(),
            6,
            "the three deletes share one revision"
        );
        let t = c.lease_time_to_live(id, None).await.expect("ttl");
        assert_eq!(t.ttl(), -1, "an expired lease is gone");

        if let Some(w) = watch.as_mut() {
            let mut deletes = Vec::new();
            while deletes.len() < 3 {
                let resp = tokio::time::timeout(Duration::from_secs(5), w.message())
                    .await
                    .expect("watch events in time")
                    .expect("watch stream")
                    .expect("watch response");
                for e in resp.events() {
                    if e.event_type() == EventType::Delete {
                        let kv = e.kv().expect("kv");
                        deletes.push((kv.key_str().expect("utf8").to_owned(), kv.mod_revision()));
                    }
                }
            }
            assert_eq!(
                deletes,
                [
                    ("exp/a".into(), 6),
                    ("exp/b".into(), 6),
                    ("exp/c".into(), 6)
                ],
                "one DELETE per key, sorted, at one revision"
            );
        }
    })
    .await;
}

/// Waits until the leased `exp/{a,b,c}` keys are gone.
async fn wait_gone_leased(c: &mut Client) -> Instant {
    let until = Instant::now() + Duration::from_secs(MIN_TTL as u64) + Duration::from_secs(5);
    loop {
        let keys = keys_with_prefix(c, "exp/").await;
        if keys == ["exp/plain"] {
            return Instant::now();
        }
        assert!(Instant::now() < until, "leased keys still there: {keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn keepalive_keeps_a_lease_past_its_ttl() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let id = c.lease_grant(MIN_TTL, None).await.expect("grant").id();
        c.put("ka/k", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put");
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keepalive");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3 * MIN_TTL as u64) {
            keeper.keep_alive().await.expect("send keepalive");
            let ka = stream.message().await.expect("answer").expect("one answer");
            assert_eq!((ka.id(), ka.ttl()), (id, MIN_TTL), "TTL is the granted TTL");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(keys_with_prefix(&mut c, "ka/").await, ["ka/k"]);
        let t = c.lease_time_to_live(id, None).await.expect("ttl");
        assert!((1..=MIN_TTL).contains(&t.ttl()), "{t:?}");

        // Once the keepalives stop, the lease expires.
        drop(keeper);
        drop(stream);
        wait_gone(
            &mut c,
            "ka/",
            Duration::from_secs(MIN_TTL as u64) + EXPIRY_SKEW + Duration::from_secs(2),
        )
        .await;
        assert!(
            matches!(
                c.lease_keep_alive(id).await,
                Err(etcd_client::Error::LeaseKeepAliveError(_))
            ),
            "a revoked lease renews with TTL 0"
        );
    })
    .await;
}

#[tokio::test]
async fn leases_survive_a_restart() {
    bounded(async {
        let mut m = Member::start().await;
        let mut c = m.client().await;
        let long = c.lease_grant(60, None).await.expect("grant").id();
        let short = c.lease_grant(MIN_TTL, None).await.expect("grant").id();
        c.put("r/long1", "v", Some(PutOptions::new().with_lease(long)))
            .await
            .expect("put");
        c.put("r/long2", "v", Some(PutOptions::new().with_lease(long)))
            .await
            .expect("put");
        c.put("r/short", "v", Some(PutOptions::new().with_lease(short)))
            .await
            .expect("put");
        c.put("r/moved", "v", Some(PutOptions::new().with_lease(long)))
            .await
            .expect("put");
        c.put("r/moved", "w", None).await.expect("detach by put");
        m.kill9();
        m.restart().await;
        let mut c = m.client().await;

        let t = c
            .lease_time_to_live(long, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("ttl");
        assert_eq!(t.granted_ttl(), 60);
        assert!((58..=61).contains(&t.ttl()), "the TTL restarts: {t:?}");
        let mut keys: Vec<&[u8]> = t.keys().iter().map(Vec::as_slice).collect();
        keys.sort_unstable();
        assert_eq!(keys, [&b"r/long1"[..], b"r/long2"]);
        let mut ids: Vec<i64> = c
            .leases()
            .await
            .expect("leases")
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort_unstable();
        let mut want = vec![long, short];
        want.sort_unstable();
        assert_eq!(ids, want);

        // The short lease still expires, deleting its re-attached key.
        let until = Instant::now() + Duration::from_secs(MIN_TTL as u64 + 6);
        while keys_with_prefix(&mut c, "r/short").await.len() == 1 {
            assert!(Instant::now() < until, "restored short lease never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Revoking the long one deletes exactly its keys.
        c.lease_revoke(long).await.expect("revoke after restart");
        assert_eq!(keys_with_prefix(&mut c, "r/").await, ["r/moved"]);
        c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(short)))
            .await
            .expect("an expired ID can be granted again");
    })
    .await;
}

/// Checkpoint flags plus the hidden knob that shortens etcd's fixed 5 min
/// checkpoint interval to 1 s, so the tests below are oxcd-only.
const CHECKPOINTS: &[&str] = &[
    "--experimental-enable-lease-checkpoint",
    "--experimental-enable-lease-checkpoint-persist",
];
const INTERVAL_ENV: &str = "OXCD_TEST_LEASE_CHECKPOINT_INTERVAL_MS";

/// etcd's checkpoint interval cannot be shortened (3.4 has no flag), so a
/// test that waits for checkpoints runs against oxcd only.
fn skip_for_etcd(test: &str) -> bool {
    if std::env::var_os("OXCD_TEST_SERVER").is_some() {
        eprintln!("{test}: skipped with OXCD_TEST_SERVER (etcd's checkpoint interval is 5 min)");
        return true;
    }
    false
}

async fn ttl_of(c: &mut Client, id: i64) -> i64 {
    let t = c.lease_time_to_live(id, None).await.expect("ttl");
    assert_eq!(t.granted_ttl(), 60);
    t.ttl()
}

/// With persisted checkpoints a restarted member counts from the last
/// checkpointed remaining TTL; a keepalive resets it to the full TTL. (Without
/// the flags a restart gives the full TTL: `leases_survive_a_restart`.)
#[tokio::test]
async fn checkpointed_ttl_survives_a_restart() {
    if skip_for_etcd("checkpointed_ttl_survives_a_restart") {
        return;
    }
    bounded(async {
        let mut cl = Cluster::builder(1)
            .flags(CHECKPOINTS)
            .env(INTERVAL_ENV, "1000")
            .start()
            .await;
        let mut c = cl.client_of(0).await;
        let id = c.lease_grant(60, None).await.expect("grant").id();
        tokio::time::sleep(Duration::from_millis(4500)).await;
        cl.kill9(0);
        cl.restart(0).await;
        let mut c = cl.client_of(0).await;
        let ttl = ttl_of(&mut c, id).await;
        assert!(
            (50..=58).contains(&ttl),
            "counts from a checkpoint (the full TTL would show 59-60): {ttl}"
        );

        // A keepalive resets the checkpoint through raft before renewing.
        let (mut keeper, mut stream) = c.lease_keep_alive(id).await.expect("keepalive");
        keeper.keep_alive().await.expect("send");
        let ka = stream.message().await.expect("recv").expect("answer");
        assert_eq!(ka.ttl(), 60);
        drop((keeper, stream));
        // A graceful stop: after kill -9 the last backend commits are
        // replayed from the WAL only after start-up promoted the lessor.
        cl.stop(0).await;
        cl.restart(0).await;
        let mut c = cl.client_of(0).await;
        let renewed = ttl_of(&mut c, id).await;
        // Checkpoints go on after the renewal, so a checkpoint may already
        // have been taken from the fresh 60 s; it is still above the old one.
        assert!(
            renewed > ttl && renewed >= 57,
            "counts from the renewal, not the old checkpoint: {renewed} vs {ttl}"
        );
    })
    .await;
}

/// Without persistence (etcd 3.4's checkpoints) the remaining TTL lives in
/// every member's memory, so a new leader counts from it.
#[tokio::test]
async fn checkpointed_ttl_survives_a_leader_change() {
    if skip_for_etcd("checkpointed_ttl_survives_a_leader_change") {
        return;
    }
    bounded(async {
        let mut cl = Cluster::builder(3)
            .flags(&CHECKPOINTS[..1])
            .env(INTERVAL_ENV, "1000")
            .start()
            .await;
        let bound = Duration::from_secs(10);
        let leader = cl.wait_leader(bound).await;
        let mut c = cl.client_of(leader).await;
        let id = c.lease_grant(60, None).await.expect("grant").id();
        tokio::time::sleep(Duration::from_millis(4500)).await;
        cl.kill9(leader);
        let leader = cl.wait_leader(bound).await;
        let mut c = cl.client_of(leader).await;
        let ttl = ttl_of(&mut c, id).await;
        assert!(
            (50..=58).contains(&ttl),
            "a new leader counts from the checkpoint, not 60 s: {ttl}"
        );
    })
    .await;
}
