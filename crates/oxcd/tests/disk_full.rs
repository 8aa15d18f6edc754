//! A full disk is survivable (better than etcd, which exits on ENOSPC):
//! the member stops taking writes with etcd's NoSpace error and a NOSPACE
//! alarm before the disk fills, keeps serving reads, takes writes again
//! once space is freed, and loses no acknowledged write.
//!
//! The data dir lives on a small tmpfs mounted by the test, so it needs
//! root (and runs against oxcd only: etcd exits instead).

mod common;

use common::{bounded, Cluster};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_stops_writes_with_nospace_and_they_resume_when_freed() {
    if std::env::var_os("OXCD_TEST_SERVER").is_some() {
        eprintln!("skipped with OXCD_TEST_SERVER: etcd exits on a full disk");
        return;
    }
    let Some(fs) = Tmpfs::mount("48m") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    bounded(async {
        // Ballast the test frees later, to give the member its space back.
        let ballast = fs.path().join("ballast");
        std::fs::write(&ballast, vec![1u8; 16 << 20]).expect("ballast");
        let mut cluster = Cluster::builder(1)
            .base_dir(fs.path())
            .flags(&["--quota-backend-bytes", "-1"])
            .env("OXCD_WAL_SEGMENT_BYTES", "1048576")
            .start()
            .await;
        let mut c = cluster.client_of(0).await;
        let value = vec![7u8; 64 << 10];
        let mut acked = Vec::new();
        let mut refused = None;
        for i in 0..2000 {
            match c.put(format!("k{i:05}"), value.clone(), None).await {
                Ok(_) => acked.push(i),
                Err(e) => {
                    refused = Some(common::grpc_status(e));
                    break;
                }
            }
        }
        let refused = refused.expect("the disk never ran low");
        assert_eq!(
            refused.message(),
            "etcdserver: mvcc: database space exceeded"
        );
        assert!(!acked.is_empty());
        eprintln!(
            "{} puts of 64 KiB acknowledged before the disk ran low",
            acked.len()
        );
        // The member is alive, reads work, the alarm is up.
        let id = cluster.member_id(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = cluster.etcdctl(&["alarm", "list"]).await;
            if list.ok() == format!("memberID:{id} alarm:NOSPACE \n") {
                break;
            }
            assert!(Instant::now() < deadline, "no NOSPACE alarm: {list:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = format!("k{:05}", acked[acked.len() - 1]);
        let r = c.get(last.as_str(), None).await.expect("read while full");
        assert_eq!(r.kvs()[0].value(), value.as_slice());

        // Freeing space brings writes back by themselves.
        std::fs::remove_file(&ballast).expect("free the ballast");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if c.put("after", "ok", None).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "writes did not resume");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(cluster.etcdctl(&["alarm", "list"]).await.ok(), "");

        // Every acknowledged write survives a restart.
        cluster.stop(0).await;
        cluster.restart(0).await;
        let mut c = cluster.client_of(0).await;
        for i in &acked {
            let r = c.get(format!("k{i:05}"), None).await.expect("get");
            assert_eq!(r.kvs().len(), 1, "acknowledged k{i:05} lost");
        }
        let r = c.get("after", None).await.expect("get");
        assert_eq!(r.kvs()[0].value(), b"ok");
    })
    .await;
}
