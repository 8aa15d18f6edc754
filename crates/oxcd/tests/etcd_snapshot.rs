//! `etcdctl snapshot save` against the member, then etcd's own tools on
//! the file: `snapshot status` reads it, `snapshot restore` turns it into
//! a data directory, and the real etcd 3.4 boots on that directory with
//! every key, revision, lease and user (issue 14, item 1).
//!
//! Runs against oxcd and, with `OXCD_TEST_SERVER=/usr/bin/etcd`, against
//! etcd itself. Needs `/usr/bin/etcd` for the restore half (Debian's
//! `etcd-server`, which CI installs).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{bounded, free_port, Member};
use etcd_client::{GetOptions, PutOptions};

const ETCD: &str = "/usr/bin/etcd";

#[tokio::test]
async fn a_saved_snapshot_restores_and_boots_under_real_etcd() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        c.put("a", "1", None).await.unwrap();
        c.put("a", "2", None).await.unwrap();
        c.put("b", "gone", None).await.unwrap();
        c.delete("b", None).await.unwrap();
        let lease = c.lease_grant(600, None).await.unwrap().id();
        c.put(
            "c",
            vec![b'x'; 5000],
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
        for i in 0..300 {
            c.put(format!("many/{i:04}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        m.etcdctl(&["user", "add", "alice:pw"]).await.ok();
        m.etcdctl(&["role", "add", "r"]).await.ok();
        let rev = c.get("a", None).await.unwrap().header().unwrap().revision();

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.db");
        let file_s = file.to_str().unwrap();
        let saved = m.etcdctl(&["snapshot", "save", file_s]).await;
        assert!(saved.ok().contains("Snapshot saved at"), "{saved:?}");
        let len = std::fs::metadata(&file).unwrap().len();
        assert_eq!(len % 512, 32, "a page-sized file plus its sha256");

        let st = m
            .etcdctl(&["snapshot", "status", file_s, "-w", "json"])
            .await
            .json();
        assert_eq!(st["revision"].as_i64(), Some(rev), "{st}");
        // etcdctl counts the rows of every bucket: one per revision of a
        // key (304 puts and the delete), plus meta, lease, auth, members.
        let total = st["totalKey"].as_i64().unwrap_or_default();
        assert!((306..330).contains(&total), "{st}");

        if !std::path::Path::new(ETCD).exists() {
            eprintln!("skipping the restore half: no {ETCD}");
            return;
        }
        let (cport, pport) = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{pport}");
        let client_url = format!("http://127.0.0.1:{cport}");
        let data = dir.path().join("restored.etcd");
        let restored = m
            .etcdctl(&[
                "snapshot",
                "restore",
                file_s,
                "--name",
                "r",
                "--data-dir",
                data.to_str().unwrap(),
                "--initial-cluster",
                &format!("r={peer}"),
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .await;
        restored.ok();
        let mut etcd = tokio::process::Command::new(ETCD)
            .args([
                "--name",
                "r",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("r={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut rc = None;
        for _ in 0..200 {
            if let Ok(client) = etcd_client::Client::connect([client_url.as_str()], None).await {
                let mut client = client;
                if client.get("a", None).await.is_ok() {
                    rc = Some(client);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut rc = rc.expect("etcd did not serve the restored directory");
        let a = rc.get("a", None).await.unwrap();
        assert_eq!(a.kvs()[0].value(), b"2");
        assert_eq!(a.kvs()[0].version(), 2);
        assert!(rc.get("b", None).await.unwrap().kvs().is_empty());
        let cv = rc.get("c", None).await.unwrap();
        assert_eq!(cv.kvs()[0].value().len(), 5000);
        assert_eq!(cv.kvs()[0].lease(), lease);
        let ttl = rc.lease_time_to_live(lease, None).await.unwrap();
        assert!(ttl.ttl() > 0, "the lease lives on: {ttl:?}");
        let many = rc
            .get(
                "many/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(many.count(), 300);
        assert!(many.header().unwrap().revision() >= rev);
        let users = rc.user_list().await.unwrap();
        assert_eq!(users.users(), ["alice"]);
        let roles = rc.role_list().await.unwrap();
        assert_eq!(roles.roles(), ["r"]);
        etcd.kill().await.ok();
    })
    .await;
}

#[tokio::test]
async fn an_ordinary_user_cannot_save_a_snapshot() {
    bounded(async {
        let m = Member::start().await;
        for args in [
            &["user", "add", "root:root"][..],
            &["user", "grant-role", "root", "root"],
            &["user", "add", "u:pw"],
            &["auth", "enable"],
        ] {
            m.etcdctl(args).await.ok();
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        let f = file.to_str().unwrap();
        let out = m.etcdctl(&["--user", "u:pw", "snapshot", "save", f]).await;
        assert!(out.err().contains("permission denied"), "{out:?}");
        m.etcdctl(&["--user", "root:root", "snapshot", "save", f])
            .await
            .ok();
        // The temporary file is gone once sent.
        let leftovers: Vec<_> = std::fs::read_dir(m.data_dir().join("member/snap"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".snapshot-"))
            .collect();
        assert!(leftovers.is_empty());
    })
    .await;
}
