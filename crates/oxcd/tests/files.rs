//! Files as private as etcd's: the data dir and every directory under it
//! 0700, every file 0600; an existing data dir that others may read is
//! kept, with etcd's warning.
//!
//! Holds for etcd 3.4.23 too (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, Member};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn modes(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = e.metadata().expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        out.push((e.path().display().to_string(), mode, meta.is_dir()));
        if meta.is_dir() {
            modes(&e.path(), out);
        }
    }
}

#[tokio::test]
async fn data_dir_files_are_private() {
    bounded(async {
        let mut m = Member::start().await;
        m.etcdctl(&["put", "k", "v"]).await.ok();
        let data = m.data_dir();
        assert_eq!(
            std::fs::metadata(&data)
                .expect("data dir")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let mut all = Vec::new();
        modes(&data.join("member"), &mut all);
        assert!(all.iter().any(|(p, _, _)| p.ends_with(".wal")), "{all:?}");
        assert!(
            all.iter().any(|(p, _, _)| p.ends_with("snap/db")),
            "{all:?}"
        );
        for (path, mode, is_dir) in &all {
            let want = if *is_dir { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{path} is {mode:o}");
        }

        // A data dir opened up by its owner is kept, with a warning.
        m.kill9();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        m.restart().await;
        assert!(
            m.log().contains("check file permission"),
            "no permission warning in:\n{}",
            m.log()
        );
    })
    .await;
}
