//! OpenStack's etcd3gw, a JSON-gateway client from PyPI, drives a member
//! through `scripts/etcd3gw_check.py`: keys, transactions (create,
//! replace), leases, locks, watches, status and members. The test makes
//! its own venv (once, under Cargo's target tmp dir) and installs a pinned
//! etcd3gw into it.
//!
//! Holds for etcd 3.4.23 too (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{bounded, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ETCD3GW: &str = "etcd3gw==2.7.0";

/// The venv's python, made on first use. Several test processes may ask
/// at once, so the venv is built aside and renamed into place.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join("etcd3gw-venv");
    let py = venv.join("bin/python");
    if py.exists() {
        return py;
    }
    let building = root.join(format!("etcd3gw-venv.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&building)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3 -m venv failed: install python3-venv");
    let ok = Command::new(building.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", ETCD3GW])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "pip install {ETCD3GW} failed (PyPI reachable?)");
    if std::fs::rename(&building, &venv).is_err() {
        // Another process got there first.
        let _ = std::fs::remove_dir_all(&building);
    }
    py
}

#[tokio::test]
async fn etcd3gw_works_against_the_gateway() {
    let py = tokio::task::spawn_blocking(python).await.expect("venv");
    bounded(async move {
        let c = Cluster::builder(1).start().await;
        let url = c.member(0).client_url();
        let (host, port) = url
            .trim_start_matches("http://")
            .rsplit_once(':')
            .expect("host:port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/etcd3gw_check.py");
        let run = tokio::process::Command::new(py)
            .arg(script)
            .args([host, port])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("etcd3gw check hung")
            .expect("run python");
        assert!(
            out.status.success(),
            "etcd3gw check failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("etcd3gw: ok"));
    })
    .await;
}
