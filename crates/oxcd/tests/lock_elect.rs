//! Locks and elections, black-box: the real `etcdctl lock` / `etcdctl
//! elect` (clientv3's recipes over KV, Watch and Lease), and the
//! `v3lockpb.Lock` / `v3electionpb.Election` services through `etcd-client`,
//! with etcd's exact error texts (code Unknown).
//!
//! Every expectation was checked against etcd 3.4
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bounded, grpc_status, Member, ETCDCTL};
use etcd_client::{
    Client, GetOptions, LeaderKey, LeaseGrantOptions, LockOptions, ProclaimOptions, ResignOptions,
};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tonic::Code;

/// How long an acquisition may take once the previous holder is gone
/// (a lease expiry included: TTL + the 500 ms expiry loop + slack).
const HANDOVER: Duration = Duration::from_secs(10);

/// A long-running etcdctl (`lock`, `elect`), read line by line.
struct Ctl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Ctl {
    fn spawn(m: &Member, args: &[&str]) -> Ctl {
        let mut child = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", m.endpoint()))
            .arg("--dial-timeout=3s")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("piped stdout");
        Ctl {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next stdout line, waiting at most `within`.
    async fn line(&mut self, within: Duration) -> String {
        match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(other) => panic!("etcdctl output ended: {other:?}"),
            Err(_) => panic!("no etcdctl output within {within:?}"),
        }
    }

    /// Asserts that nothing is printed for a short while (a negative
    /// check, not a synchronisation: callers first wait for the state
    /// that makes output impossible).
    async fn assert_silent(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.lines.next_line()).await;
        assert!(r.is_err(), "unexpected etcdctl output: {r:?}");
    }

    /// SIGINT (a clean shutdown: etcdctl releases what it holds), then
    /// waits for the exit.
    async fn interrupt(mut self) {
        let pid = self.child.id().expect("etcdctl is running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill -INT");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("etcdctl exits after SIGINT")
            .expect("wait for etcdctl");
    }

    /// SIGKILL: whatever it holds stays until its lease expires.
    async fn kill9(mut self) {
        self.child.kill().await.expect("SIGKILL etcdctl");
    }
}

async fn keys(c: &mut Client, prefix: &str) -> Vec<String> {
    let opts = GetOptions::new().with_prefix().with_keys_only();
    c.get(prefix, Some(opts))
        .await
        .expect("get prefix")
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

/// Polls until exactly `n` keys are under `prefix`.
async fn wait_keys(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let until = Instant::now() + HANDOVER;
    loop {
        let ks = keys(c, prefix).await;
        if ks.len() == n {
            return ks;
        }
        assert!(
            Instant::now() < until,
            "expected {n} keys under {prefix:?}, have {ks:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn grant(c: &mut Client, ttl: i64) -> i64 {
    c.lease_grant(ttl, None::<LeaseGrantOptions>)
        .await
        .expect("grant")
        .id()
}

#[tokio::test]
async fn etcdctl_lock_hands_over_on_interrupt_and_on_expiry() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut holder = Ctl::spawn(&m, &["lock", "--ttl=3", "mylock"]);
        let k1 = holder.line(HANDOVER).await;
        assert!(k1.starts_with("mylock/"), "{k1:?}");
        assert_eq!(holder.line(HANDOVER).await, "", "the lock key's value");

        let mut second = Ctl::spawn(&m, &["lock", "--ttl=3", "mylock"]);
        wait_keys(&mut c, "mylock/", 2).await;
        second.assert_silent().await;
        holder.interrupt().await;
        let k2 = second.line(HANDOVER).await;
        assert!(k2.starts_with("mylock/") && k2 != k1, "{k1:?} then {k2:?}");
        assert_eq!(wait_keys(&mut c, "mylock/", 1).await, [k2.as_str()]);

        // A holder that dies keeps the lock until its lease expires.
        let mut third = Ctl::spawn(&m, &["lock", "--ttl=3", "mylock"]);
        wait_keys(&mut c, "mylock/", 2).await;
        second.line(HANDOVER).await; // the empty value line
        third.assert_silent().await;
        second.kill9().await;
        let k3 = third.line(HANDOVER).await;
        assert!(k3.starts_with("mylock/") && k3 != k2, "{k2:?} then {k3:?}");
        third.interrupt().await;
        wait_keys(&mut c, "mylock/", 0).await;
    })
    .await;
}

#[tokio::test]
async fn etcdctl_lock_runs_a_command_while_holding() {
    bounded(async {
        let m = Member::start().await;
        let out = m
            .etcdctl(&[
                "lock",
                "cmdlock",
                "--",
                "sh",
                "-c",
                "echo held $ETCD_LOCK_KEY",
            ])
            .await;
        let line = out.ok().trim().to_string();
        assert!(line.starts_with("held cmdlock/"), "{line:?}");
        let mut c = m.client().await;
        assert!(keys(&mut c, "cmdlock/").await.is_empty(), "released after");
    })
    .await;
}

#[tokio::test]
async fn etcdctl_elect_and_observe() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut observer = Ctl::spawn(&m, &["elect", "-l", "el"]);
        let mut p1 = Ctl::spawn(&m, &["elect", "el", "p1"]);
        let key1 = p1.line(HANDOVER).await;
        assert!(key1.starts_with("el/"), "{key1:?}");
        assert_eq!(p1.line(HANDOVER).await, "p1");
        assert_eq!(observer.line(HANDOVER).await, key1);
        assert_eq!(observer.line(HANDOVER).await, "p1");

        let mut p2 = Ctl::spawn(&m, &["elect", "el", "p2"]);
        wait_keys(&mut c, "el/", 2).await;
        p2.assert_silent().await;
        p1.interrupt().await;
        let key2 = p2.line(HANDOVER).await;
        assert!(key2.starts_with("el/") && key2 != key1, "{key2:?}");
        assert_eq!(p2.line(HANDOVER).await, "p2");
        assert_eq!(observer.line(HANDOVER).await, key2);
        assert_eq!(observer.line(HANDOVER).await, "p2");
        p2.interrupt().await;
        observer.interrupt().await;
        wait_keys(&mut c, "el/", 0).await;
    })
    .await;
}

#[tokio::test]
async fn lock_service_waits_for_the_holder() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let l1 = grant(&mut c, 60).await;
        let l2 = grant(&mut c, 60).await;
        let r1 = c
            .lock("svc", Some(LockOptions::new().with_lease(l1)))
            .await
            .expect("lock 1");
        assert_eq!(r1.key(), format!("svc/{l1:x}").as_bytes());
        let kv1 = c.get(r1.key(), None).await.expect("get").kvs()[0].clone();
        assert_eq!(kv1.lease(), l1);
        assert_eq!(kv1.value(), b"");
        let h1 = r1.header().expect("header").revision();
        assert_eq!(h1, kv1.create_revision(), "uncontended: the txn's header");

        // Locking again with the same lease finds the held key at once.
        let again = c
            .lock("svc", Some(LockOptions::new().with_lease(l1)))
            .await
            .expect("relock");
        assert_eq!(again.key(), r1.key());

        let mut c2 = m.client().await;
        let waiter = tokio::spawn(async move {
            c2.lock("svc", Some(LockOptions::new().with_lease(l2)))
                .await
                .expect("lock 2")
        });
        wait_keys(&mut c, "svc/", 2).await;
        assert!(!waiter.is_finished(), "the second locker must wait");
        let un = c.unlock(r1.key()).await.expect("unlock");
        let unlock_rev = un.header().expect("header").revision();
        let r2 = tokio::time::timeout(HANDOVER, waiter)
            .await
            .expect("second locker acquires")
            .expect("join");
        assert_eq!(r2.key(), format!("svc/{l2:x}").as_bytes());
        assert!(r2.header().expect("header").revision() >= unlock_rev);

        // Revoking the holder's lease hands over too.
        let l3 = grant(&mut c, 60).await;
        let mut c3 = m.client().await;
        let waiter = tokio::spawn(async move {
            c3.lock("svc", Some(LockOptions::new().with_lease(l3)))
                .await
                .expect("lock 3")
        });
        wait_keys(&mut c, "svc/", 2).await;
        c.lease_revoke(l2).await.expect("revoke");
        let r3 = tokio::time::timeout(HANDOVER, waiter)
            .await
            .expect("third locker acquires")
            .expect("join");
        assert_eq!(r3.key(), format!("svc/{l3:x}").as_bytes());
    })
    .await;
}

#[tokio::test]
async fn lock_service_lease_zero_and_errors() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        // No lease: the server's session grants one of 60 s.
        let r = c.lock("zero", None).await.expect("lock without lease");
        let kv = c.get(r.key(), None).await.expect("get").kvs()[0].clone();
        assert_ne!(kv.lease(), 0);
        assert_eq!(r.key(), format!("zero/{:x}", kv.lease()).as_bytes());
        let ttl = c.lease_time_to_live(kv.lease(), None).await.expect("ttl");
        assert_eq!(ttl.granted_ttl(), 60);

        let err = c
            .lock("nolease", Some(LockOptions::new().with_lease(0x1234)))
            .await
            .map(|_| ())
            .expect_err("unknown lease");
        let s = grpc_status(err);
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.message(), "etcdserver: requested lease not found");

        let s = grpc_status(c.unlock("").await.map(|_| ()).expect_err("empty key"));
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.message(), "etcdserver: key is not provided");
        // Unlocking a key that is not there is fine.
        c.unlock("zero/none").await.expect("unlock absent key");
    })
    .await;
}

#[tokio::test]
async fn cancelled_lock_wait_releases_the_waiters_key() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let l1 = grant(&mut c, 60).await;
        let l2 = grant(&mut c, 60).await;
        c.lock("cx", Some(LockOptions::new().with_lease(l1)))
            .await
            .expect("lock 1");
        let mut c2 = m.client().await;
        let waiter =
            tokio::spawn(
                async move { c2.lock("cx", Some(LockOptions::new().with_lease(l2))).await },
            );
        wait_keys(&mut c, "cx/", 2).await;
        // The client gives up: etcd's mutex deletes its key after a
        // failed wait.
        waiter.abort();
        assert_eq!(wait_keys(&mut c, "cx/", 1).await, [format!("cx/{l1:x}")]);
    })
    .await;
}

fn leader_key(r: &etcd_client::CampaignResponse) -> LeaderKey {
    r.leader().expect("campaign returns the leader key").clone()
}

#[tokio::test]
async fn election_service_campaign_proclaim_leader_resign() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let l1 = grant(&mut c, 60).await;
        let l2 = grant(&mut c, 60).await;

        let s = grpc_status(c.leader("ele").await.map(|_| ()).expect_err("no leader"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "election: no leader")
        );

        let r1 = c.campaign("ele", "v1", l1).await.expect("campaign 1");
        let lk1 = leader_key(&r1);
        assert_eq!(lk1.name(), b"ele");
        assert_eq!(lk1.key(), format!("ele/{l1:x}").as_bytes());
        assert_eq!(lk1.lease(), l1);
        assert_eq!(lk1.rev(), r1.header().expect("header").revision());

        let mut observe = c.observe("ele").await.expect("observe");
        let first = observe.message().await.expect("observe").expect("leader");
        assert_eq!(first.kv().expect("kv").value(), b"v1");

        let leader = c.leader("ele").await.expect("leader");
        let kv = leader.kv().expect("kv");
        assert_eq!((kv.key(), kv.value()), (lk1.key(), &b"v1"[..]));
        assert_eq!(kv.create_revision(), lk1.rev());

        let opts = ProclaimOptions::new().with_leader(lk1.clone());
        let p = c.proclaim("v2", Some(opts)).await.expect("proclaim");
        let seen = observe.message().await.expect("observe").expect("update");
        assert_eq!(seen.kv().expect("kv").value(), b"v2");
        assert_eq!(
            seen.header().expect("header").revision(),
            p.header().expect("header").revision()
        );
        assert_eq!(
            c.leader("ele")
                .await
                .expect("leader")
                .kv()
                .expect("kv")
                .value(),
            b"v2"
        );

        // A second candidate waits; the first resigns; the second leads.
        let mut c2 = m.client().await;
        let waiter = tokio::spawn(async move { c2.campaign("ele", "w", l2).await.expect("c2") });
        wait_keys(&mut c, "ele/", 2).await;
        assert!(!waiter.is_finished(), "the second candidate must wait");
        let opts = ResignOptions::new().with_leader(lk1.clone());
        c.resign(Some(opts)).await.expect("resign");
        let r2 = tokio::time::timeout(HANDOVER, waiter)
            .await
            .expect("second candidate wins")
            .expect("join");
        let lk2 = leader_key(&r2);
        assert_eq!(lk2.key(), format!("ele/{l2:x}").as_bytes());
        let seen = observe
            .message()
            .await
            .expect("observe")
            .expect("new leader");
        let kv = seen.kv().expect("kv");
        assert_eq!((kv.key(), kv.value()), (lk2.key(), &b"w"[..]));

        // The old key no longer leads.
        let opts = ProclaimOptions::new().with_leader(lk1.clone());
        let s = grpc_status(
            c.proclaim("x", Some(opts))
                .await
                .map(|_| ())
                .expect_err("stale"),
        );
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "election: not leader")
        );
        // Resigning with a stale key changes nothing and succeeds.
        let opts = ResignOptions::new().with_leader(lk1);
        c.resign(Some(opts)).await.expect("stale resign");
        assert_eq!(keys(&mut c, "ele/").await, [format!("ele/{l2:x}")]);
    })
    .await;
}

#[tokio::test]
async fn election_service_errors_and_recampaign() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let missing = "\"leader\" field must be provided";
        let s = grpc_status(
            c.proclaim("v", None)
                .await
                .map(|_| ())
                .expect_err("proclaim"),
        );
        assert_eq!((s.code(), s.message()), (Code::Unknown, missing));
        let s = grpc_status(c.resign(None).await.map(|_| ()).expect_err("resign"));
        assert_eq!((s.code(), s.message()), (Code::Unknown, missing));
        let s = grpc_status(
            c.campaign("e2", "v", 0x4321)
                .await
                .map(|_| ())
                .expect_err("unknown lease"),
        );
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unknown, "etcdserver: requested lease not found")
        );

        // Campaigning again with the same lease keeps the key and its
        // revision, and proclaims the new value.
        let l = grant(&mut c, 60).await;
        let r1 = c.campaign("e2", "a", l).await.expect("campaign");
        let r2 = c.campaign("e2", "b", l).await.expect("campaign again");
        assert_eq!(leader_key(&r2).rev(), leader_key(&r1).rev());
        let kv = c
            .leader("e2")
            .await
            .expect("leader")
            .kv()
            .expect("kv")
            .clone();
        assert_eq!(kv.value(), b"b");

        // Lease 0: the server grants a 60 s lease for the candidacy.
        let r = c.campaign("e3", "z", 0).await.expect("campaign lease 0");
        let lk = leader_key(&r);
        assert_ne!(lk.lease(), 0);
        let ttl = c.lease_time_to_live(lk.lease(), None).await.expect("ttl");
        assert_eq!(ttl.granted_ttl(), 60);
    })
    .await;
}

#[tokio::test]
async fn observe_waits_for_a_first_leader() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        // etcd sends the response headers with the first message, so the
        // call itself waits for a leader.
        let mut c1 = m.client().await;
        let first = tokio::spawn(async move {
            let mut observe = c1.observe("later").await.expect("observe");
            let msg = observe.message().await.expect("observe").expect("message");
            (observe, msg)
        });
        let l = grant(&mut c, 60).await;
        let put = c.put("later/x", "first", None).await.expect("put");
        let (mut observe, seen) = tokio::time::timeout(HANDOVER, first)
            .await
            .expect("observe reports the first leader")
            .expect("join");
        let kv = seen.kv().expect("kv");
        assert_eq!((kv.key(), kv.value()), (&b"later/x"[..], &b"first"[..]));
        assert_eq!(
            seen.header().expect("header").revision(),
            put.header().expect("header").revision()
        );
        // A deleted leader is replaced by the next candidate.
        let mut c3 = m.client().await;
        let candidate =
            tokio::spawn(async move { c3.campaign("later", "second", l).await.expect("campaign") });
        wait_keys(&mut c, "later/", 2).await;
        c.delete("later/x", None).await.expect("delete");
        tokio::time::timeout(HANDOVER, candidate)
            .await
            .expect("candidate wins")
            .expect("join");
        let seen = observe.message().await.expect("observe").expect("message");
        assert_eq!(seen.kv().expect("kv").value(), b"second");
    })
    .await;
}

#[tokio::test]
async fn waiting_lockers_and_observers_do_not_block_shutdown() {
    bounded(async {
        let mut m = Member::start().await;
        let mut c = m.client().await;
        let l1 = grant(&mut c, 60).await;
        let l2 = grant(&mut c, 60).await;
        c.lock("stop", Some(LockOptions::new().with_lease(l1)))
            .await
            .expect("lock 1");
        c.campaign("stopel", "v", l1).await.expect("campaign");
        let mut c2 = m.client().await;
        let locker = tokio::spawn(async move {
            let _ = c2
                .lock("stop", Some(LockOptions::new().with_lease(l2)))
                .await;
        });
        let mut c3 = m.client().await;
        let mut observe = c3.observe("stopel").await.expect("observe");
        observe.message().await.expect("observe").expect("leader");
        wait_keys(&mut c, "stop/", 2).await;
        // etcd 3.4 exits by re-raising SIGTERM, so only the exit counts.
        m.stop_graceful(Duration::from_secs(15)).await;
        tokio::time::timeout(HANDOVER, locker)
            .await
            .expect("the waiting call ends with the member")
            .expect("join");
    })
    .await;
}
