//! Maintenance as an operator uses it: alarms (`etcdctl alarm`), the space
//! quota, `/health` under alarms, Status errors.
//!
//! Every expectation here holds for etcd 3.4.23 too
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, grpc_status, http_get, Cluster, Member};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, PutOptions};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

async fn alarm(c: &mut Client, action: AlarmAction, at: AlarmType, member: u64) -> Vec<(u64, i32)> {
    let mut opts = AlarmOptions::new();
    opts.with_member(member);
    let r = c.alarm(action, at, Some(opts)).await.expect("alarm");
    r.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm() as i32))
        .collect()
}

async fn member_id(c: &mut Client) -> u64 {
    c.status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id()
}

async fn current_rev(c: &mut Client) -> i64 {
    c.status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .revision()
}

#[tokio::test]
async fn nospace_alarm_gates_writes_persists_and_disarms() {
    bounded(async {
        let mut m = Member::start().await;
        let mut c = m.client().await;
        let id = member_id(&mut c).await;
        c.put("k", "v", None).await.expect("put before the alarm");
        let (code, body) = http_get(&m.client_url(), "/health").await;
        assert_eq!((code, body.as_str()), (200, r#"{"health":"true"}"#));

        let raised = alarm(&mut c, AlarmAction::Activate, AlarmType::Nospace, id).await;
        assert_eq!(raised, [(id, AlarmType::Nospace as i32)]);
        let list = m.etcdctl(&["alarm", "list"]).await;
        assert_eq!(list.ok(), format!("memberID:{id} alarm:NOSPACE \n"));

        // Writes that add data are refused; reads, deletes, read-only txns
        // and compaction still work.
        let e = m.etcdctl(&["put", "k2", "v"]).await;
        assert_eq!(e.err(), format!("Error: {NO_SPACE}"));
        let e = grpc_status(
            c.lease_grant(60, None)
                .await
                .expect_err("grant under NOSPACE"),
        );
        assert_eq!(e.message(), NO_SPACE);
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            m.etcdctl(&["get", "k", "--print-value-only"]).await.ok(),
            "v\n"
        );
        let txn = m
            .etcdctl_stdin(&["txn"], "value(\"k\") = \"v\"\n\nget k\n\n\n")
            .await;
        assert_eq!(txn.ok(), "SUCCESS\n\nk\nv\n");
        assert_eq!(m.etcdctl(&["del", "k"]).await.ok(), "1\n");
        let rev = current_rev(&mut c).await;
        c.compact(rev, None)
            .await
            .expect("compaction under NOSPACE");

        let st = c.status().await.expect("status");
        assert_eq!(st.errors(), [format!("memberID:{id} alarm:NOSPACE ")]);
        let (code, body) = http_get(&m.client_url(), "/health").await;
        assert_eq!((code, body.as_str()), (503, "{\"health\":\"false\"}\n"));
        let (code, _) = http_get(&m.client_url(), "/health?exclude=NOSPACE").await;
        assert_eq!(code, 200);

        // The alarm is replicated state: it survives a restart.
        m.stop_graceful(std::time::Duration::from_secs(10)).await;
        m.restart().await;
        assert_eq!(
            m.etcdctl(&["alarm", "list"]).await.ok(),
            format!("memberID:{id} alarm:NOSPACE \n")
        );
        assert_eq!(
            m.etcdctl(&["put", "k3", "v"]).await.err(),
            format!("Error: {NO_SPACE}")
        );

        // Disarm answers what it cleared; writes work again.
        assert_eq!(
            m.etcdctl(&["alarm", "disarm"]).await.ok(),
            format!("memberID:{id} alarm:NOSPACE \n")
        );
        assert_eq!(m.etcdctl(&["alarm", "list"]).await.ok(), "");
        assert_eq!(m.etcdctl(&["put", "k4", "v"]).await.ok(), "OK\n");
        let mut c = m.client().await;
        c.lease_grant(60, None).await.expect("grant after disarm");
        // Clearing an alarm that is not raised answers nothing.
        assert!(
            alarm(&mut c, AlarmAction::Deactivate, AlarmType::Nospace, id)
                .await
                .is_empty()
        );
        assert!(c.status().await.expect("status").errors().is_empty());
    })
    .await;
}

#[tokio::test]
async fn corrupt_alarm_refuses_writes_but_serves_reads() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let id = member_id(&mut c).await;
        c.put("k", "v", None).await.expect("put");
        alarm(&mut c, AlarmAction::Activate, AlarmType::Corrupt, id).await;
        let e = m.etcdctl(&["put", "k", "w"]).await;
        assert_eq!(e.err(), "Error: etcdserver: corrupt cluster");
        let e = m.etcdctl(&["del", "k"]).await;
        assert_eq!(e.err(), "Error: etcdserver: corrupt cluster");
        let e = grpc_status(c.compact(1, None).await.expect_err("compact under CORRUPT"));
        assert_eq!(e.message(), "etcdserver: corrupt cluster");
        assert_eq!(
            m.etcdctl(&["get", "k", "--print-value-only"]).await.ok(),
            "v\n"
        );
        assert_eq!(
            m.etcdctl(&["alarm", "list"]).await.ok(),
            format!("memberID:{id} alarm:CORRUPT \n")
        );
        let (code, _) = http_get(&m.client_url(), "/health").await;
        assert_eq!(code, 503);
        alarm(&mut c, AlarmAction::Deactivate, AlarmType::Corrupt, id).await;
        assert_eq!(m.etcdctl(&["put", "k", "w"]).await.ok(), "OK\n");
    })
    .await;
}

/// etcd's `TestCtlV3Alarm` with a Rust client: fill the backend past a
/// small quota, then recover with compact, defrag and disarm.
#[tokio::test]
async fn quota_exceeded_raises_nospace_until_space_is_freed() {
    bounded(async {
        let cluster = Cluster::builder(1)
            .flags(&["--quota-backend-bytes", "53248"])
            .start()
            .await;
        let m = cluster.member(0);
        let mut c = m.client().await;
        let id = member_id(&mut c).await;
        c.put("small", "a".repeat(64), None)
            .await
            .expect("small put");
        let big = "b".repeat(4096);
        let mut refused = None;
        for _ in 0..500 {
            if let Err(e) = c.put("big", big.as_str(), None).await {
                refused = Some(grpc_status(e));
                break;
            }
        }
        let refused = refused.expect("the quota was never reached");
        assert_eq!(refused.message(), NO_SPACE);
        assert_eq!(
            m.etcdctl(&["alarm", "list"]).await.ok(),
            format!("memberID:{id} alarm:NOSPACE \n")
        );
        let e = m.etcdctl(&["put", "small2", "x"]).await;
        assert_eq!(e.err(), format!("Error: {NO_SPACE}"));

        let rev = current_rev(&mut c).await;
        let out = m
            .etcdctl(&["compact", &rev.to_string(), "--physical"])
            .await;
        assert_eq!(out.ok(), format!("compacted revision {rev}\n"));
        let out = m.etcdctl(&["defrag"]).await;
        assert!(
            out.ok().starts_with("Finished defragmenting etcd member["),
            "{out:?}"
        );
        let out = m.etcdctl(&["alarm", "disarm"]).await;
        assert_eq!(out.ok(), format!("memberID:{id} alarm:NOSPACE \n"));
        c.put("small3", "a".repeat(64), Some(PutOptions::new()))
            .await
            .expect("put after recovery");
        let st = c.status().await.expect("status");
        assert!(
            st.raft_used_db_size() < 53248,
            "in use after compact + defrag: {}",
            st.raft_used_db_size()
        );
    })
    .await;
}

/// NOSPACE raised through one member is every member's, and stays after a
/// member restarts.
#[tokio::test]
async fn alarms_are_replicated_to_every_member() {
    bounded(async {
        let mut cluster = Cluster::start(3).await;
        let mut c0 = cluster.client_of(0).await;
        let id1 = cluster.member_id(1);
        alarm(&mut c0, AlarmAction::Activate, AlarmType::Nospace, id1).await;
        for i in 0..3 {
            let list = cluster.etcdctl_on(i, &["alarm", "list"]).await;
            assert_eq!(
                list.ok(),
                format!("memberID:{id1} alarm:NOSPACE \n"),
                "member {i}"
            );
            let e = cluster.etcdctl_on(i, &["put", "k", "v"]).await;
            assert_eq!(e.err(), format!("Error: {NO_SPACE}"), "member {i}");
        }
        cluster.stop(2).await;
        cluster.restart(2).await;
        let mut c2 = cluster.client_of(2).await;
        let st = c2.status().await.expect("status");
        assert!(
            st.errors()
                .contains(&format!("memberID:{id1} alarm:NOSPACE ")),
            "{:?}",
            st.errors()
        );
        let out = cluster.etcdctl_on(2, &["alarm", "disarm"]).await;
        assert_eq!(out.ok(), format!("memberID:{id1} alarm:NOSPACE \n"));
        for i in 0..3 {
            let put = cluster.etcdctl_on(i, &["put", "k", "v"]).await;
            assert_eq!(put.ok(), "OK\n", "member {i}");
        }
    })
    .await;
}

/// Polls (bounded) until a read at `rev` fails as compacted.
async fn wait_compacted(c: &mut Client, rev: i64, within: std::time::Duration) -> tonic::Status {
    let deadline = std::time::Instant::now() + within;
    loop {
        let opts = etcd_client::GetOptions::new().with_revision(rev);
        match c.get("k", Some(opts)).await {
            Err(e) => return grpc_status(e),
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok(_) => panic!("revision {rev} was not compacted within {within:?}"),
        }
    }
}

/// `--auto-compaction-mode periodic` with a Go-duration retention: the
/// history older than one retention is compacted by itself.
#[tokio::test]
async fn periodic_auto_compaction_drops_old_history() {
    bounded(async {
        let cluster = Cluster::builder(1)
            .flags(&[
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "1s",
            ])
            .start()
            .await;
        let mut c = cluster.client_of(0).await;
        for i in 0..10 {
            c.put("k", format!("v{i}"), None).await.expect("put");
        }
        let e = wait_compacted(&mut c, 2, std::time::Duration::from_secs(20)).await;
        assert_eq!(
            e.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        // The newest value is never compacted away.
        let r = c.get("k", None).await.expect("get");
        assert_eq!(r.kvs()[0].value(), b"v9");
    })
    .await;
}

/// `--auto-compaction-mode revision`: keeps the last N revisions. etcd
/// looks every 5 minutes and has no flag to shorten it, so this test runs
/// against oxcd only, with its test knob.
#[tokio::test]
async fn revision_auto_compaction_keeps_the_last_revisions() {
    if std::env::var_os("OXCD_TEST_SERVER").is_some() {
        eprintln!("skipped with OXCD_TEST_SERVER (etcd's revision compactor waits 5 min)");
        return;
    }
    bounded(async {
        let cluster = Cluster::builder(1)
            .flags(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "5",
            ])
            .env("OXCD_TEST_REVISION_COMPACTION_INTERVAL_MS", "200")
            .start()
            .await;
        let mut c = cluster.client_of(0).await;
        for i in 0..20 {
            c.put("k", format!("v{i}"), None).await.expect("put");
        }
        // Revision 21 is current: compacted at 16, so 15 is gone and 16 stays.
        wait_compacted(&mut c, 15, std::time::Duration::from_secs(20)).await;
        let opts = etcd_client::GetOptions::new().with_revision(16);
        let r = c.get("k", Some(opts)).await.expect("revision 16 is kept");
        assert_eq!(r.kvs()[0].value(), b"v14");
    })
    .await;
}
