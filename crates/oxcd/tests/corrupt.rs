//! Corruption checks between members (etcd's `TestEtcdCorruptHash`, on
//! oxcd's own backend file): a member whose stored values were altered
//! while it was down is refused at start by
//! `--experimental-initial-corrupt-check`, and found by the leader's
//! `--experimental-corrupt-check-time`, which raises CORRUPT.
//!
//! These tests edit oxcd's backend file (redb), so they run against oxcd
//! only; etcd's own e2e test does the same to its bbolt file.

mod common;

use common::{bounded, Cluster};
use oxcd_api::mvccpb::KeyValue;
use prost::Message;
use redb::{ReadableTable, TableDefinition};
use std::path::Path;
use std::time::{Duration, Instant};

const KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");

fn oxcd_only(test: &str) -> bool {
    if std::env::var_os("OXCD_TEST_SERVER").is_some() {
        eprintln!("{test}: skipped with OXCD_TEST_SERVER (it edits oxcd's backend file)");
        return true;
    }
    false
}

/// Adds one to the first byte of every stored value, keeping the file a
/// valid redb file (as etcd's test rewrites its bbolt file).
fn corrupt_values(data_dir: &Path) {
    let db = redb::Database::open(data_dir.join("member/snap/db")).expect("open backend");
    let tx = db.begin_write().expect("begin write");
    {
        let mut t = tx.open_table(KEY).expect("key table");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = t
            .iter()
            .expect("scan")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        for (k, v) in rows {
            let mut kv = KeyValue::decode(v.as_slice()).expect("KeyValue");
            if kv.value.is_empty() {
                continue;
            }
            let mut value = kv.value.to_vec();
            value[0] = value[0].wrapping_add(1);
            kv.value = value.into();
            t.insert(k.as_slice(), kv.encode_to_vec().as_slice())
                .expect("rewrite");
        }
    }
    tx.commit().expect("commit");
}

/// Writes `k0`..`k9` through member `via`, then waits (bounded) until
/// member `i` serves them.
async fn write_ten_keys(cluster: &Cluster, via: usize, i: usize) {
    let mut c = cluster.client_of(via).await;
    for k in 0..10 {
        c.put(format!("k{k}"), format!("v{k}"), None)
            .await
            .expect("put");
    }
    let rev = c
        .get("k9", None)
        .await
        .expect("get")
        .header()
        .expect("h")
        .revision();
    wait_applied(cluster, i, rev).await;
}

/// Polls (bounded) until member `i` serves revision `rev`.
async fn wait_applied(cluster: &Cluster, i: usize, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.local_revision(i).await != Some(rev) {
        assert!(Instant::now() < deadline, "member {i} never caught up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn initial_check_refuses_a_member_whose_data_differs() {
    if oxcd_only("initial_check_refuses_a_member_whose_data_differs") {
        return;
    }
    bounded(async {
        let mut cluster = Cluster::builder(3)
            .flags(&["--experimental-initial-corrupt-check"])
            .start()
            .await;
        // Every member has applied the puts before member 0 stops.
        write_ten_keys(&cluster, 1, 0).await;
        cluster.stop(0).await;
        corrupt_values(&cluster.member(0).data_dir());
        let log = cluster.restart_expecting_exit(0, &[]).await;
        let id = format!("{:x}", cluster.member_id(0));
        assert!(
            log.contains(&format!("{id} found data inconsistency with peers")),
            "{log}"
        );
    })
    .await;
}

#[tokio::test]
async fn periodic_check_raises_corrupt_for_the_member_that_differs() {
    if oxcd_only("periodic_check_raises_corrupt_for_the_member_that_differs") {
        return;
    }
    bounded(async {
        let mut cluster = Cluster::builder(3)
            .flags(&["--experimental-corrupt-check-time", "300ms"])
            .start()
            .await;
        let leader = cluster.wait_leader(Duration::from_secs(10)).await;
        let victim = (leader + 1) % 3;
        write_ten_keys(&cluster, leader, victim).await;
        assert_eq!(cluster.etcdctl(&["alarm", "list"]).await.ok(), "");
        cluster.stop(victim).await;
        corrupt_values(&cluster.member(victim).data_dir());
        cluster.restart(victim).await;
        // The leader blames the member that differs; should the victim have
        // become leader meanwhile, it blames the others (as etcd's check,
        // which cannot tell either).
        let want = if cluster.wait_leader(Duration::from_secs(10)).await == leader {
            format!("memberID:{} alarm:CORRUPT \n", cluster.member_id(victim))
        } else {
            "alarm:CORRUPT".to_string()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = cluster.etcdctl_on(leader, &["alarm", "list"]).await;
            if list.ok().contains(&want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no CORRUPT alarm: {list:?}\nleader:\n{}\nvictim:\n{}",
                cluster.member(leader).log(),
                cluster.member(victim).log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Writes are refused cluster-wide, reads still served.
        let put = cluster.etcdctl_on(leader, &["put", "x", "y"]).await;
        assert_eq!(put.err(), "Error: etcdserver: corrupt cluster");
        let get = cluster
            .etcdctl_on(leader, &["get", "k1", "--print-value-only"])
            .await;
        assert_eq!(get.ok(), "v1\n");
    })
    .await;
}
