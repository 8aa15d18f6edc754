//! Durability across restarts of one member: a graceful stop keeps the whole
//! store; a SIGKILL in the middle of a write stream keeps every acknowledged
//! write, with its revision, and the revision sequence continues.
//!
//! SIGKILL does not drop the OS page cache, so the crash test catches
//! acknowledging before the write reached the OS (in-process buffering), not
//! a missing fsync; fsync ordering is covered by the WAL's own crash tests.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{bounded, grpc_status, Member};
use etcd_client::{Client, GetOptions, GetResponse};
use tokio::sync::mpsc;

/// Snapshot of the whole keyspace: key -> (value, create, mod, version).
type Dump = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;

async fn dump(c: &mut Client) -> (Dump, i64) {
    let r = c
        .get(vec![0u8], Some(GetOptions::new().with_all_keys()))
        .await
        .expect("range over all keys");
    (to_dump(&r), r.header().expect("header").revision())
}

fn to_dump(r: &GetResponse) -> Dump {
    r.kvs()
        .iter()
        .map(|kv| {
            let meta = (
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            );
            (kv.key().to_vec(), meta)
        })
        .collect()
}

/// Puts, overwrites and deletes; returns the revision after the last write.
async fn mixed_workload(c: &mut Client, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        let r = c
            .put(format!("key/{i:04}"), format!("v{i}"), None)
            .await
            .expect("put");
        rev = r.header().expect("header").revision();
        if i % 7 == 3 {
            let r = c
                .put(format!("key/{i:04}"), format!("w{i}"), None)
                .await
                .expect("put");
            rev = r.header().expect("header").revision();
        }
        if i % 11 == 5 {
            let r = c.delete(format!("key/{i:04}"), None).await.expect("delete");
            rev = r.header().expect("header").revision();
        }
    }
    rev
}

#[tokio::test]
async fn graceful_restart_keeps_everything() {
    bounded(async {
        let mut m = Member::start().await;
        let mut c = m.client().await;
        let last = mixed_workload(&mut c, 200).await;
        c.compact(50, None).await.expect("compact");
        let (before, rev) = dump(&mut c).await;
        assert_eq!(rev, last);
        let old = c
            .get("key/0030", Some(GetOptions::new().with_revision(60)))
            .await
            .expect("read at a kept revision");
        drop(c);

        let status = m.stop_graceful(Duration::from_secs(15)).await;
        // After closing cleanly the server re-raises SIGTERM, as etcd does
        // (a shell sees 143).
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15),
            "exit: {status}\n{}",
            m.log()
        );
        m.restart().await;
        let mut c = m.client().await;

        let (after, rev_after) = dump(&mut c).await;
        assert_eq!(rev_after, last, "the revision survives the restart");
        assert_eq!(after, before);
        let old_again = c
            .get("key/0030", Some(GetOptions::new().with_revision(60)))
            .await
            .expect("history survives the restart");
        assert_eq!(to_dump(&old_again), to_dump(&old));
        // The compaction survives too.
        let status = grpc_status(
            c.get("key/0001", Some(GetOptions::new().with_revision(49)))
                .await
                .expect_err("compacted revision"),
        );
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        // And the next write continues the sequence.
        let r = c.put("next", "1", None).await.expect("put after restart");
        assert_eq!(r.header().expect("header").revision(), last + 1);
    })
    .await;
}

/// Total writes the loop attempts, and how many acknowledgements to wait for
/// before killing the member.
const WRITES: usize = 2000;
const KILL_AFTER: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_acknowledged_writes() {
    bounded(async {
        let mut m = Member::start().await;
        let mut c = m.client().await;
        let start_rev = {
            let r = c.get("x", None).await.expect("get");
            r.header().expect("header").revision()
        };

        // Sequential puts from one task; each acknowledgement is reported
        // with the revision the server gave it.
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, i64)>();
        let mut writer_client = c.clone();
        let writer = tokio::spawn(async move {
            for i in 0..WRITES {
                let put = writer_client.put(format!("k/{i:05}"), format!("v{i}"), None);
                match tokio::time::timeout(Duration::from_secs(10), put).await {
                    Ok(Ok(r)) => {
                        let rev = r.header().expect("header").revision();
                        if tx.send((i, rev)).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });

        let mut acked: Vec<(usize, i64)> = Vec::new();
        while acked.len() < KILL_AFTER {
            let ack = rx.recv().await.expect("writer stopped before the kill");
            acked.push(ack);
        }
        m.kill9();
        // The writer now fails (connection lost) or times out; drain what it
        // acknowledged before that.
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("writer ends after the kill")
            .expect("writer task");
        while let Ok(ack) = rx.try_recv() {
            acked.push(ack);
        }
        drop(c);

        // Acknowledged puts got consecutive revisions after start_rev.
        for (n, &(i, rev)) in acked.iter().enumerate() {
            assert_eq!(i, n, "acks arrive in order");
            assert_eq!(rev, start_rev + 1 + i64::try_from(i).unwrap(), "put {i}");
        }

        m.restart().await;
        let mut c = m.client().await;
        let (store, rev) = dump(&mut c).await;
        let last_acked = acked.last().expect("at least one ack").1;
        // At most the one in-flight put may have landed beyond the acks.
        assert!(
            rev == last_acked || rev == last_acked + 1,
            "revision {rev} after restart, last acknowledged {last_acked}"
        );
        assert!(store.len() == acked.len() || store.len() == acked.len() + 1);
        for &(i, rev) in &acked {
            let key = format!("k/{i:05}").into_bytes();
            let (value, create, modr, version) = store
                .get(&key)
                .unwrap_or_else(|| panic!("acknowledged put {i} lost"));
            assert_eq!(value, format!("v{i}").as_bytes());
            assert_eq!((*create, *modr, *version), (rev, rev, 1), "put {i}");
        }
        if store.len() > acked.len() {
            let i = acked.len();
            let (value, _, modr, _) = &store[format!("k/{i:05}").as_bytes()];
            assert_eq!((value.as_slice(), *modr), (format!("v{i}").as_bytes(), rev));
        }
        let r = c.put("after", "1", None).await.expect("put after restart");
        assert_eq!(r.header().expect("header").revision(), rev + 1);

        // A second crash right after restart loses nothing either.
        m.kill9();
        m.restart().await;
        let mut c = m.client().await;
        let (again, rev_again) = dump(&mut c).await;
        assert_eq!(rev_again, rev + 1);
        assert_eq!(again.len(), store.len() + 1);
    })
    .await;
}
