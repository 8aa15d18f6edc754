//! Replication seen from outside: clusters of real member processes on
//! 127.0.0.1, driven with the real `etcdctl` and `etcd-client`, with members
//! killed, stopped and restarted.
//!
//! Every expectation was checked against etcd 3.4.23
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`), with 50 ms heartbeats and a 500 ms
//! election timeout ([`common::FAST_RAFT`]). The default `--snapshot-count`
//! is kept except in `caught_up_through_snapshot`, where the leader sends
//! the returning follower a snapshot (etcd and oxcd alike).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    bounded, grpc_status, local_dump, server_binary, Cluster, ELECTION_TIMEOUT, UNHEALTHY,
};
use etcd_client::{Client, ConnectOptions, GetOptions};
use serde_json::Value;

/// A leader must be agreed on within this many election timeouts (each is
/// randomised to 1-2x; pre-vote and a loaded 2-core machine add more).
const ELECTION_BOUND: Duration = ELECTION_TIMEOUT.saturating_mul(10);

/// How long the members may take to agree on revision and hash.
const CONVERGE_BOUND: Duration = Duration::from_secs(15);

/// Interval of the tests' own polls.
const POLL: Duration = Duration::from_millis(25);

/// Whether the server under test is the reference etcd (for checks of its
/// log lines, which oxcd need not copy).
fn is_real_etcd() -> bool {
    server_binary() != Path::new(env!("CARGO_BIN_EXE_oxcd"))
}

/// Polls a serializable get of `key` on member `i` until it returns `value`.
async fn wait_visible(c: &Cluster, i: usize, key: &str, value: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut client = c.client_of(i).await;
    loop {
        let r = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .unwrap_or_else(|e| panic!("serializable get on member {i}: {e}"));
        if r.kvs().first().map(|kv| kv.value()) == Some(value.as_bytes()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key}={value} not visible on member {i} within {within:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Writes `n` keys `{prefix}{i:05}` through `client`, from `tasks`
/// concurrent tasks; returns the highest revision acknowledged.
async fn write_keys(client: &Client, prefix: &str, n: usize, tasks: usize) -> i64 {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = client.clone();
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            let mut max_rev = 0;
            for i in (t..n).step_by(tasks) {
                let r = client
                    .put(format!("{prefix}{i:05}"), format!("v{i}"), None)
                    .await
                    .unwrap_or_else(|e| panic!("put {prefix}{i:05}: {e}"));
                max_rev = max_rev.max(r.header().expect("header").revision());
            }
            max_rev
        }));
    }
    let mut max_rev = 0;
    for h in handles {
        max_rev = max_rev.max(h.await.expect("writer task"));
    }
    max_rev
}

#[tokio::test]
async fn three_members_form_a_cluster() {
    bounded(async {
        let c = Cluster::start(3).await;

        // member list: three started members with our names and URLs.
        let mut expected: Vec<String> = (0..3)
            .map(|i| {
                let m = c.member(i);
                format!(
                    "{:x}, started, {}, {}, {}, false",
                    c.member_id(i),
                    m.name,
                    m.peer_url(),
                    m.client_url()
                )
            })
            .collect();
        expected.sort();
        let out = c.etcdctl(&["member", "list"]).await;
        let mut lines: Vec<String> = out.ok().lines().map(str::to_string).collect();
        lines.sort();
        assert_eq!(lines, expected);

        let j = c.etcdctl(&["member", "list", "-w", "json"]).await.json();
        let members = j["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "{j}");
        for i in 0..3 {
            let m = c.member(i);
            let entry = members
                .iter()
                .find(|e| e["ID"].as_u64() == Some(c.member_id(i)))
                .unwrap_or_else(|| panic!("member {i} missing in {j}"));
            assert_eq!(entry["name"], m.name.as_str(), "{j}");
            assert_eq!(entry["peerURLs"], serde_json::json!([m.peer_url()]), "{j}");
            assert_eq!(
                entry["clientURLs"],
                serde_json::json!([m.client_url()]),
                "{j}"
            );
        }

        // endpoint status on all: one common leader, one common term.
        let leader = c.wait_leader(ELECTION_BOUND).await;
        assert_eq!(c.leader_index().await, Some(leader));
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            let j = c
                .etcdctl(&["endpoint", "status", "-w", "json"])
                .await
                .json();
            let entries = j.as_array().expect("array of endpoint statuses");
            assert_eq!(entries.len(), 3, "{j}");
            let views: Vec<(Value, Value)> = entries
                .iter()
                .map(|e| {
                    (
                        e["Status"]["leader"].clone(),
                        e["Status"]["raftTerm"].clone(),
                    )
                })
                .collect();
            // (Compared with each other, not with `leader`: a loaded machine
            // may see an extra election in between.)
            let leader_id = views[0].0.as_u64().unwrap_or(0);
            if c.index_of(leader_id).is_some() && views.iter().all(|v| *v == views[0]) {
                break;
            }
            assert!(Instant::now() < deadline, "no common leader/term: {j}");
            tokio::time::sleep(POLL).await;
        }

        // A put on member 0 is visible on 1 and 2: at once with a
        // linearizable get, eventually with a serializable one.
        let mut c0 = c.client_of(0).await;
        let rev = c0
            .put("replicated", "yes", None)
            .await
            .expect("put on member 0")
            .header()
            .expect("header")
            .revision();
        for i in 1..3 {
            let mut client = c.client_of(i).await;
            let r = client
                .get("replicated", None)
                .await
                .expect("linearizable get");
            assert!(r.header().expect("header").revision() >= rev);
            let kv = &r.kvs()[0];
            assert_eq!(kv.value(), b"yes");
            assert_eq!(kv.mod_revision(), rev);
            wait_visible(&c, i, "replicated", "yes", CONVERGE_BOUND).await;
        }

        // Same revision and hash everywhere, as etcdctl shows it too.
        let rev = c.wait_converged(CONVERGE_BOUND).await;
        let j = c
            .etcdctl(&[
                "endpoint",
                "hashkv",
                "--rev",
                &rev.to_string(),
                "-w",
                "json",
            ])
            .await
            .json();
        let hashes: Vec<&Value> = j
            .as_array()
            .expect("array")
            .iter()
            .map(|e| &e["HashKV"]["hash"])
            .collect();
        assert_eq!(hashes.len(), 3, "{j}");
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{j}");
    })
    .await;
}

/// One acknowledged put of the write load.
struct Ack {
    key: String,
    value: String,
    revision: i64,
    at: Instant,
}

/// Per-writer outcome: acknowledged puts, failed attempts, distinct errors.
struct WriterReport {
    acks: Vec<Ack>,
    failures: usize,
    errors: Vec<String>,
}

/// If no put succeeds for this long, writes did not resume.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// Puts `count` keys; each attempt gets its own key, so an attempt that
/// failed for the client but still committed cannot be mistaken for an
/// acknowledged one. On an error the writer moves to the next endpoint.
async fn writer(
    urls: Vec<String>,
    task: usize,
    count: usize,
    acked: Arc<AtomicUsize>,
) -> WriterReport {
    let mut clients: Vec<Option<Client>> = vec![None; urls.len()];
    let mut at = task % urls.len();
    let mut report = WriterReport {
        acks: Vec::new(),
        failures: 0,
        errors: Vec::new(),
    };
    let mut last_success = Instant::now();
    for n in 0..count {
        for attempt in 0.. {
            let key = format!("load/{task}/{n:04}/{attempt}");
            let value = format!("v{task}-{n}-{attempt}");
            if clients[at].is_none() {
                let opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_secs(2));
                clients[at] = Client::connect([urls[at].as_str()], Some(opts)).await.ok();
            }
            let result = match clients[at].as_mut() {
                Some(client) => client.put(key.clone(), value.clone(), None).await,
                None => Err(etcd_client::Error::InvalidArgs("connect failed".into())),
            };
            match result {
                Ok(r) => {
                    report.acks.push(Ack {
                        key,
                        value,
                        revision: r.header().expect("header").revision(),
                        at: Instant::now(),
                    });
                    acked.fetch_add(1, Ordering::Relaxed);
                    last_success = Instant::now();
                    break;
                }
                Err(e) => {
                    report.failures += 1;
                    let text = match e {
                        etcd_client::Error::GRpcStatus(s) => {
                            format!("{:?}: {}", s.code(), s.message())
                        }
                        other => other.to_string(),
                    };
                    if !report.errors.contains(&text) {
                        report.errors.push(text);
                    }
                    assert!(
                        last_success.elapsed() < WRITE_STALL,
                        "writer {task}: no put succeeded for {WRITE_STALL:?}; errors {:?}",
                        report.errors
                    );
                    clients[at] = None;
                    at = (at + 1) % urls.len();
                    // Retry pacing, not synchronisation: a refused
                    // connection fails at once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    report
}

#[tokio::test]
async fn leader_kill_under_write_load() {
    bounded(async {
        const TASKS: usize = 4;
        const PER_TASK: usize = 750;
        let mut c = Cluster::start(3).await;
        let old_leader = c.wait_leader(ELECTION_BOUND).await;
        let urls: Vec<String> = c.members.iter().map(|m| m.client_url()).collect();

        let acked = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let writers: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(writer(urls.clone(), t, PER_TASK, acked.clone())))
            .collect();

        // Kill -9 the leader a third of the way in.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.load(Ordering::Relaxed) < TASKS * PER_TASK / 3 {
            assert!(Instant::now() < deadline, "write load did not get going");
            tokio::time::sleep(POLL).await;
        }
        let killed_at = Instant::now();
        let acked_before_kill = acked.load(Ordering::Relaxed);
        c.kill9(old_leader);
        let new_leader = c.wait_leader(ELECTION_BOUND).await;
        let election = killed_at.elapsed();
        assert_ne!(new_leader, old_leader);

        let mut acks = Vec::new();
        let mut failures = 0;
        let mut errors: Vec<String> = Vec::new();
        for w in writers {
            let report = w.await.expect("writer task");
            acks.extend(report.acks);
            failures += report.failures;
            for e in report.errors {
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
        assert_eq!(acks.len(), TASKS * PER_TASK);
        // The longest stretch without an acknowledgement after the kill.
        let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
        times.push(killed_at);
        times.sort();
        let outage = times
            .windows(2)
            .filter(|w| w[1] > killed_at)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        eprintln!(
            "leader m{old_leader} killed after {acked_before_kill} acks at {:?}; new leader \
             m{new_leader} agreed after {election:?}; longest write gap {outage:?}; \
             {failures} failed attempts; errors seen: {errors:#?}; load took {:?}",
            killed_at - started,
            started.elapsed()
        );
        assert!(outage < WRITE_STALL, "writes stalled for {outage:?}");

        // Every acknowledged write is on every live member, with its value
        // at its revision, and the live members agree on everything.
        let max_acked = acks.iter().map(|a| a.revision).max().expect("acks");
        let rev = c.wait_converged(CONVERGE_BOUND).await;
        assert!(rev >= max_acked, "converged at {rev} < acked {max_acked}");
        let mut dumps = Vec::new();
        for i in c.live() {
            let dump = local_dump(&c, i, "load/").await;
            for a in &acks {
                assert_eq!(
                    dump.get(&a.key),
                    Some(&(a.value.clone(), a.revision)),
                    "acknowledged {} missing or different on member {i}",
                    a.key
                );
            }
            dumps.push(dump);
        }
        assert!(dumps.iter().all(|d| *d == dumps[0]));

        // The killed member comes back and catches up: same revision, same
        // hash, same keys.
        c.restart(old_leader).await;
        let after = c.wait_converged(CONVERGE_BOUND).await;
        assert_eq!(after, rev, "nothing was written meanwhile");
        assert_eq!(local_dump(&c, old_leader, "load/").await, dumps[0]);
    })
    .await;
}

#[tokio::test]
async fn minority_cannot_serve_linearizable_reads() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let mut client = c.client_of(leader).await;
        client.put("minority", "v1", None).await.expect("put");

        // Stop both followers: the leader is left alone. (It steps down
        // once it misses a quorum for an election timeout, check-quorum.)
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        for &f in &followers {
            c.stop(f).await;
        }
        let survivor = leader;
        let deadline = Instant::now() + ELECTION_BOUND;
        loop {
            let st = c
                .status_of(survivor)
                .await
                .expect("survivor answers Status");
            if st.leader() == 0 {
                assert_eq!(st.errors(), ["etcdserver: no leader"]);
                break;
            }
            assert!(Instant::now() < deadline, "survivor still claims a leader");
            tokio::time::sleep(POLL).await;
        }

        // Serializable reads are served from the local store.
        let r = client
            .get("minority", Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get on the minority");
        assert_eq!(r.kvs()[0].value(), b"v1");
        let out = c
            .etcdctl_on(survivor, &["get", "minority", "--consistency=s"])
            .await;
        assert_eq!(out.ok(), "minority\nv1\n");

        // Linearizable reads and writes fail: etcd answers after its
        // request timeout (5 s + 2 election timeouts = 6 s here). All three
        // run at once to keep the test short.
        let bound = Duration::from_secs(12);
        let mut reader = c.quick_client_of(survivor, bound).await;
        let mut putter = c.quick_client_of(survivor, bound).await;
        let t0 = Instant::now();
        let (read, write, ctl) = tokio::join!(
            async {
                let r = reader.get("minority", None).await;
                (r, t0.elapsed())
            },
            async {
                let r = putter.put("minority", "v2", None).await;
                (r, t0.elapsed())
            },
            c.etcdctl_on(survivor, &["get", "minority"]),
        );
        let (read, read_took) = read;
        let read = grpc_status(read.expect_err("linearizable get on a minority"));
        let (write, write_took) = write;
        let write = grpc_status(write.expect_err("put on a minority"));
        eprintln!(
            "minority: linearizable get -> {:?} {:?} after {read_took:?}; put -> {:?} {:?} \
             after {write_took:?}; etcdctl get -> {:?} after {:?}",
            read.code(),
            read.message(),
            write.code(),
            write.message(),
            ctl.err(),
            t0.elapsed()
        );
        assert!(read_took < bound && write_took < bound);
        assert_eq!(read.code(), tonic::Code::Unavailable);
        assert_eq!(read.message(), "etcdserver: request timed out");
        // etcd 3.4 reports the proposal's own timeout (the client-side
        // `--command-timeout` never fires first here).
        assert!(
            matches!(
                (write.code(), write.message()),
                (tonic::Code::Unavailable, "etcdserver: request timed out")
                    | (tonic::Code::Unknown, "context deadline exceeded")
            ),
            "put on a minority: {write:?}"
        );
        // etcdctl retries until its --command-timeout (8 s) expires; the
        // last attempt ends on the client's deadline or on the server's
        // (`Error: rpc error: code = Unknown desc = context deadline
        // exceeded`), whichever notices first.
        assert!(ctl.err().ends_with("context deadline exceeded"), "{ctl:#?}");

        // A client that requires a leader is refused at once.
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(5))
            .with_require_leader(true);
        let mut strict = Client::connect([c.member(survivor).client_url()], Some(opts))
            .await
            .expect("connect");
        let t1 = Instant::now();
        let err = grpc_status(
            strict
                .get("minority", Some(GetOptions::new().with_serializable()))
                .await
                .expect_err("require-leader get without a leader"),
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "etcdserver: no leader");
        assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());

        // Bring the followers back: a leader again, reads and writes work.
        for &f in &followers {
            c.restart(f).await;
        }
        c.wait_leader(ELECTION_BOUND).await;
        for i in 0..3 {
            let mut client = c.client_of(i).await;
            let r = client
                .get("minority", None)
                .await
                .expect("linearizable get");
            // The put above may or may not have committed after all.
            assert!(matches!(r.kvs()[0].value(), b"v1" | b"v2"));
        }
        c.client_of(followers[0])
            .await
            .put("minority", "v3", None)
            .await
            .expect("put after recovery");
        c.wait_converged(CONVERGE_BOUND).await;
        for i in 0..3 {
            wait_visible(&c, i, "minority", "v3", CONVERGE_BOUND).await;
        }
    })
    .await;
}

#[tokio::test]
async fn follower_restart_catches_up() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        c.stop(follower).await;

        let client = c.client_of(leader).await;
        let last = write_keys(&client, "catchup/", 500, 4).await;

        c.restart(follower).await;
        let rev = c.wait_converged(CONVERGE_BOUND).await;
        assert_eq!(rev, last);
        let dump = local_dump(&c, follower, "catchup/").await;
        assert_eq!(dump.len(), 500);
        assert_eq!(dump, local_dump(&c, leader, "catchup/").await);
    })
    .await;
}

#[tokio::test]
async fn peer_auto_tls_cluster_replicates() {
    bounded(async {
        let c = Cluster::builder(3).peer_auto_tls().start().await;
        let j = c.etcdctl(&["member", "list", "-w", "json"]).await.json();
        for m in j["members"].as_array().expect("members") {
            let url = m["peerURLs"][0].as_str().expect("peer URL");
            assert!(url.starts_with("https://127.0.0.1:"), "{j}");
        }
        c.wait_leader(ELECTION_BOUND).await;
        c.client_of(2)
            .await
            .put("over-tls", "yes", None)
            .await
            .expect("put");
        for i in 0..3 {
            let mut client = c.client_of(i).await;
            let r = client.get("over-tls", None).await.expect("get");
            assert_eq!(r.kvs()[0].value(), b"yes");
        }
        c.wait_converged(CONVERGE_BOUND).await;
    })
    .await;
}

#[tokio::test]
async fn caught_up_through_snapshot() {
    bounded(async {
        // etcd keeps 5000 entries behind a snapshot for slow followers
        // (SnapshotCatchUpEntries), so a follower that misses more than
        // that must be sent the leader's snapshot.
        const WRITES: usize = 6000;
        let mut c = Cluster::builder(3)
            .flags(&["--snapshot-count", "100"])
            .start()
            .await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        c.stop(follower).await;

        let client = c.client_of(leader).await;
        let last = write_keys(&client, "snap/", WRITES, 8).await;

        c.restart(follower).await;
        let rev = c.wait_converged(CONVERGE_BOUND).await;
        assert_eq!(rev, last);
        let dump = local_dump(&c, follower, "snap/").await;
        assert_eq!(dump.len(), WRITES);
        assert_eq!(dump, local_dump(&c, leader, "snap/").await);
        // Make sure the test exercised what it is named for.
        let log = c.member(leader).log();
        let sent = if is_real_etcd() {
            log.contains("database snapshot [index:") && log.contains("sent out successfully")
        } else {
            log.contains("sent database snapshot [index:")
        };
        assert!(sent, "the leader sent no snapshot:\n{log}");
    })
    .await;
}

#[tokio::test]
async fn learner_joins_and_is_promoted() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        c.wait_leader(ELECTION_BOUND).await;
        let client = c.client_of(0).await;
        write_keys(&client, "before-learner/", 100, 2).await;

        // (etcdctl prints IDs in `Member ... added/promoted/removed` lines
        // with Go's `%16x`: space-padded to 16 columns.)
        let l = c.add_member(true).await;
        let id = format!("{:x}", c.member_id(l));
        let out = c.etcdctl_on(0, &["member", "list"]).await;
        let line = out
            .ok()
            .lines()
            .find(|line| line.starts_with(&id))
            .unwrap_or_else(|| panic!("learner missing: {out:#?}"));
        assert!(line.ends_with(", true"), "{line}");

        // A learner serves serializable reads only.
        let mut lc = c.client_of(l).await;
        let err = grpc_status(
            lc.get("before-learner/00000", None)
                .await
                .expect_err("linearizable get on a learner"),
        );
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "etcdserver: rpc not supported for learner");
        wait_visible(&c, l, "before-learner/00099", "v99", CONVERGE_BOUND).await;
        let st = c.status_of(l).await.expect("learner status");
        assert!(st.is_learner());

        // Promotion succeeds once the learner has caught up (etcd refuses
        // before: "can only promote a learner member which is in sync with
        // leader").
        let deadline = Instant::now() + CONVERGE_BOUND;
        loop {
            let out = c.etcdctl_on(0, &["member", "promote", &id]).await;
            if out.success {
                assert!(
                    out.stdout.starts_with(&format!(
                        "Member {:16x} promoted in cluster ",
                        c.member_id(l)
                    )),
                    "{out:#?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "promote never succeeded: {out:#?}"
            );
            tokio::time::sleep(POLL).await;
        }
        let out = c.etcdctl_on(0, &["member", "list"]).await;
        assert_eq!(out.ok().lines().count(), 4);
        assert!(
            out.ok().lines().all(|line| line.ends_with(", false")),
            "{out:#?}"
        );
        // The promotion is committed once etcdctl returns; the promoted
        // member itself stops refusing when it applies the change.
        let deadline = Instant::now() + CONVERGE_BOUND;
        let r = loop {
            match lc.get("before-learner/00000", None).await {
                Ok(r) => break r,
                Err(e) => {
                    let st = grpc_status(e);
                    assert_eq!(
                        st.message(),
                        "etcdserver: rpc not supported for learner",
                        "get after promotion: {st:?}"
                    );
                    assert!(Instant::now() < deadline, "still a learner: {st:?}");
                    tokio::time::sleep(POLL).await;
                }
            }
        };
        assert_eq!(r.kvs()[0].value(), b"v0");
        c.wait_converged(CONVERGE_BOUND).await;
    })
    .await;
}

#[tokio::test]
async fn member_remove_shrinks_cluster() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let gone = (leader + 1) % 3;
        let id = format!("{:x}", c.member_id(gone));
        let out = c
            .etcdctl_retrying(&["member", "remove", &id], &[UNHEALTHY], CONVERGE_BOUND)
            .await;
        assert!(
            out.ok().starts_with(&format!(
                "Member {:16x} removed from cluster ",
                c.member_id(gone)
            )),
            "{out:#?}"
        );
        // The removed member learns of it and exits.
        let status = c.wait_exit(gone, Duration::from_secs(10)).await;
        assert!(
            status.is_some(),
            "removed member still running\n{}",
            c.logs()
        );

        let out = c.etcdctl(&["member", "list"]).await;
        assert_eq!(out.ok().lines().count(), 2, "{out:#?}");
        assert!(!out.ok().contains(&id));
        let mut client = c.client_of(leader).await;
        client
            .put("after-remove", "ok", None)
            .await
            .expect("put on two members");
        c.wait_converged(CONVERGE_BOUND).await;
    })
    .await;
}

#[tokio::test]
async fn move_leader_transfers_leadership() {
    bounded(async {
        let c = Cluster::start(3).await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let target = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let target_id = format!("{:x}", c.member_id(target));

        // etcdctl looks for the leader among the endpoints it is given.
        let out = c.etcdctl_on(other, &["move-leader", &target_id]).await;
        assert!(
            out.err().starts_with("Error: no leader endpoint given at "),
            "{out:#?}"
        );

        let out = c.etcdctl(&["move-leader", &target_id]).await;
        assert_eq!(
            out.ok(),
            format!(
                "Leadership transferred from {:x} to {target_id}\n",
                c.member_id(leader)
            )
        );
        assert_eq!(c.wait_leader(ELECTION_BOUND).await, target);
        c.client_of(leader)
            .await
            .put("after-move", "ok", None)
            .await
            .expect("put after move-leader");
    })
    .await;
}

#[tokio::test]
async fn force_new_cluster_recovers_from_lost_quorum() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        c.wait_leader(ELECTION_BOUND).await;
        let client = c.client_of(0).await;
        let last = write_keys(&client, "precious/", 50, 2).await;
        c.wait_converged(CONVERGE_BOUND).await;

        // Two members are lost for good; the third restarts as a cluster
        // of its own, keeping the data.
        c.kill9(1);
        c.kill9(2);
        c.stop(0).await;
        c.restart_with(0, &["--force-new-cluster"]).await;

        let out = c.etcdctl_on(0, &["member", "list"]).await;
        let lines: Vec<&str> = out.ok().lines().collect();
        assert_eq!(lines.len(), 1, "{out:#?}");
        assert!(lines[0].starts_with(&format!("{:x}, started, m0, ", c.member_id(0))));
        let mut client = c.client_of(0).await;
        let r = client
            .get("precious/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("linearizable get");
        assert_eq!(r.kvs().len(), 50);
        assert!(r.header().expect("header").revision() >= last);
        client.put("after-force", "ok", None).await.expect("put");
    })
    .await;
}

/// `--peer-client-cert-file/-key-file` (etcd 3.5): the identity a member
/// shows when it dials a peer. Every member requires the peer CN `dialer`
/// (`--peer-cert-allowed-cn`); the server certificate says `listener`, so
/// the cluster forms only if members dial with the client certificate.
/// oxcd only: etcd 3.4 does not know the flag.
#[tokio::test]
async fn peers_dial_with_their_client_certificate() {
    if std::env::var_os("OXCD_TEST_SERVER").is_some_and(|s| !s.is_empty()) {
        return;
    }
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    bounded(async {
        let test_ca = common::tls::TestCa::new("peer ca");
        let ca_file = test_ca.ca_file.clone();
        let hosts = ["127.0.0.1", "localhost"];
        let (srv_crt, srv_key) = test_ca.leaf(
            "server",
            Some("listener"),
            &hosts,
            vec![ServerAuth, ClientAuth],
        );
        let (cli_crt, cli_key) = test_ca.leaf(
            "client",
            Some("dialer"),
            &hosts,
            vec![ServerAuth, ClientAuth],
        );
        let c = Cluster::builder(3)
            .peer_https()
            .flags(&[
                "--peer-cert-file",
                &srv_crt,
                "--peer-key-file",
                &srv_key,
                "--peer-trusted-ca-file",
                &ca_file,
                "--peer-client-cert-auth",
                "--peer-cert-allowed-cn",
                "dialer",
                "--peer-client-cert-file",
                &cli_crt,
                "--peer-client-key-file",
                &cli_key,
            ])
            .start()
            .await;
        let mut client = c.client_of(0).await;
        client
            .put("k", "v", None)
            .await
            .expect("a put through the TLS cluster");
    })
    .await;
}
