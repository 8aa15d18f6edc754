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

/// Starts the real etcd as single member `name` on `data`, and waits
/// (bounded) until it serves a read; the process dies with the handle.
async fn start_etcd(
    name: &str,
    data: &std::path::Path,
    cport: u16,
    pport: u16,
) -> (tokio::process::Child, etcd_client::Client) {
    let client_url = format!("http://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let etcd = tokio::process::Command::new(ETCD)
        .args([
            "--name",
            name,
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
            &format!("{name}={peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if let Ok(mut c) = etcd_client::Client::connect([client_url.as_str()], None).await {
            if c.get("a", None).await.is_ok() {
                return (etcd, c);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("etcd did not serve {}", data.display());
}

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
        // `oxcd snapshot status` (offline, etcdutl-style) agrees with
        // etcdctl on every field.
        let ours = std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
            .args(["snapshot", "status", file_s, "-w", "json"])
            .output()
            .unwrap();
        assert!(ours.status.success(), "{ours:?}");
        let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        assert_eq!(ours, st);

        if !std::path::Path::new(ETCD).exists() {
            eprintln!("skipping the restore half: no {ETCD}");
            return;
        }
        let (cport, pport) = (free_port(), free_port());
        let peer = format!("http://127.0.0.1:{pport}");
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
        let (mut etcd, mut rc) = start_etcd("r", &data, cport, pport).await;
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

/// oxcd's bbolt reader on a backend written by the real etcd 3.4 (its own
/// page layout: freelist, inline buckets, split pages): every bucket
/// etcd keeps is there, and the key bucket holds one row per revision.
#[tokio::test]
async fn reads_a_backend_written_by_etcd() {
    if !std::path::Path::new(ETCD).exists() {
        eprintln!("skipping: no {ETCD}");
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("e.etcd");
        let (cport, pport) = (free_port(), free_port());
        let (mut etcd, mut c) = start_etcd("e", &data, cport, pport).await;
        // Enough rows to split pages, values big enough to overflow one.
        for i in 0..2000 {
            c.put(format!("k{i:05}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        c.put("big", vec![b'b'; 10_000], None).await.unwrap();
        c.delete("k00000", None).await.unwrap();
        c.lease_grant(60, None).await.unwrap();
        let status = c.status().await.unwrap();
        let member_id = status.header().unwrap().member_id();
        let cluster_id = status.header().unwrap().cluster_id();
        // SIGTERM (etcd commits its batch on a clean stop), then read.
        let pid = etcd.id().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), etcd.wait()).await;
        let bytes = std::fs::read(data.join("member/snap/db")).unwrap();
        let f = oxcd_etcd_format::bolt::BoltFile::parse(&bytes).unwrap();
        for b in [
            "alarm",
            "auth",
            "authRoles",
            "authUsers",
            "cluster",
            "key",
            "lease",
            "members",
            "members_removed",
            "meta",
        ] {
            assert!(f.bucket(b.as_bytes()).is_some(), "bucket {b} missing");
        }
        let keys = f.bucket(b"key").unwrap();
        assert_eq!(keys.len(), 2002, "2001 puts and a delete");
        assert!(keys.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert!(keys.iter().any(|(_, v)| v.len() > 10_000));
        assert_eq!(f.bucket(b"lease").unwrap().len(), 1);
        let meta = f.bucket(b"meta").unwrap();
        assert!(meta.iter().any(|(k, _)| k == b"consistent_index"));
        assert_eq!(f.bucket(b"members").unwrap().len(), 1);

        // And its WAL: the IDs, the whole log with its CRC chain, the
        // proposals as etcd wrote them.
        let wal = oxcd_etcd_format::wal::read_dir(&data.join("member/wal")).unwrap();
        assert_eq!((wal.node_id, wal.cluster_id), (member_id, cluster_id));
        let puts: Vec<Vec<u8>> = wal
            .entries
            .iter()
            .filter(|e| e.kind == 0 && !e.data.is_empty())
            .filter_map(|e| {
                <oxcd_api::etcdserverpb::InternalRaftRequest as prost::Message>::decode(
                    e.data.as_slice(),
                )
                .ok()
            })
            .filter_map(|r| r.put.map(|p| p.key.to_vec()))
            .collect();
        assert_eq!(puts.len(), 2001, "every put is in the log");
        assert_eq!(puts.last().map(Vec::as_slice), Some(&b"big"[..]));
        assert!(
            wal.entries.iter().any(|e| e.kind == 1),
            "the bootstrap conf change"
        );
        assert!(wal.entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        let last = wal.entries.last().unwrap().index;
        assert_eq!(wal.hard_state.unwrap().commit, last);
        // A flipped byte in a record breaks the CRC chain and is refused.
        let files = oxcd_etcd_format::wal::wal_files(&data.join("member/wal")).unwrap();
        let mut bytes = std::fs::read(&files[0]).unwrap();
        bytes[200] ^= 0x40;
        std::fs::write(&files[0], bytes).unwrap();
        let err = oxcd_etcd_format::wal::read_dir(&data.join("member/wal")).unwrap_err();
        assert!(err.to_string().contains(".wal"), "{err}");
    })
    .await;
}
