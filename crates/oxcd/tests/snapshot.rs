//! Raft snapshots seen from outside: with a small `--snapshot-count` a
//! member writes `member/snap/*.snap` files, purges WAL segments beyond
//! `--max-wals` and snapshot files beyond `--max-snapshots`, and restarts
//! by replaying only the WAL tail after its newest snapshot; a follower
//! that missed entries the leader has compacted away catches up through a
//! snapshot transfer (backend file over the peer port).
//!
//! `OXCD_WAL_SEGMENT_BYTES` (an oxcd test knob, not an etcd setting)
//! shrinks WAL segments from 64 MB so that a few thousand writes span many.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{bounded, local_dump, Cluster, ELECTION_TIMEOUT};
use etcd_client::Client;

const ELECTION_BOUND: Duration = ELECTION_TIMEOUT.saturating_mul(10);
const CONVERGE_BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

/// Files in `dir` whose names end with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// Writes `n` keys `{prefix}{i:05}` = `{value}{i}` one after the other;
/// returns the last revision.
async fn write_keys(client: &mut Client, prefix: &str, value: &str, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        let r = client
            .put(format!("{prefix}{i:05}"), format!("{value}{i}"), None)
            .await
            .unwrap_or_else(|e| panic!("put {prefix}{i:05}: {e}"));
        rev = r.header().expect("header").revision();
    }
    rev
}

/// The `(entries, index)` of the restart's `replaying N WAL entries after
/// index M` line.
fn replay_line(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().find(|l| l.contains("replaying "))?;
    let rest = line.split("replaying ").nth(1)?;
    let mut words = rest.split_whitespace();
    let entries = words.next()?.parse().ok()?;
    let index = rest.split("after index ").nth(1)?;
    let index = index
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((entries, index))
}

#[tokio::test]
async fn restart_replays_only_the_wal_tail_after_snapshots() {
    bounded(async {
        const WRITES: usize = 1500;
        let mut c = Cluster::builder(1)
            .flags(&[
                "--snapshot-count",
                "50",
                "--max-wals",
                "2",
                "--max-snapshots",
                "2",
            ])
            .env("OXCD_WAL_SEGMENT_BYTES", "65536")
            .start()
            .await;
        c.wait_leader(ELECTION_BOUND).await;
        let mut client = c.client_of(0).await;
        // ~300 bytes per entry: ~450 KB of WAL, about 7 segments of 64 KiB.
        let value = "x".repeat(256);
        let last = write_keys(&mut client, "tail/", &value, WRITES).await;

        let member_dir = c.member(0).data_dir().join("member");
        let snaps = files_ending(&member_dir.join("snap"), ".snap");
        assert!(
            !snaps.is_empty() && snaps.len() <= 2,
            "expected 1..=2 snapshot files (--max-snapshots 2), got {snaps:?}"
        );
        let wals = files_ending(&member_dir.join("wal"), ".wal");
        assert!(
            wals.len() <= 3,
            "expected old WAL segments purged (--max-wals 2), got {wals:?}"
        );
        assert!(
            !wals.iter().any(|w| w.starts_with("0000000000000000-")),
            "the first WAL segment should have been purged: {wals:?}"
        );

        c.kill9(0);
        c.restart(0).await;
        let log = c.member(0).log();
        let (entries, index) =
            replay_line(&log).unwrap_or_else(|| panic!("no replay line in the log:\n{log}"));
        assert!(index > 0, "restart did not start from a snapshot:\n{log}");
        assert!(
            entries <= 200,
            "restart replayed {entries} entries after index {index}, expected only the tail"
        );
        assert!(log.contains("recovered from snapshot at index"), "{log}");

        let dump = local_dump(&c, 0, "tail/").await;
        assert_eq!(dump.len(), WRITES);
        for (i, (k, (v, _))) in dump.iter().enumerate() {
            assert_eq!(k, &format!("tail/{i:05}"));
            assert_eq!(v, &format!("{value}{i}"));
        }
        let mut client = c.client_of(0).await;
        let r = client.get("tail/", None).await.expect("get after restart");
        assert_eq!(r.header().expect("header").revision(), last);
        // And the member keeps working.
        let r = client.put("after", "restart", None).await.expect("put");
        assert_eq!(r.header().expect("header").revision(), last + 1);
    })
    .await;
}

#[tokio::test]
async fn killed_follower_catches_up_through_snapshot_transfer() {
    bounded(async {
        const WRITES: usize = 600;
        let mut c = Cluster::builder(3)
            .flags(&["--snapshot-count", "50"])
            .start()
            .await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        let mut client = c.client_of(leader).await;
        write_keys(&mut client, "early/", "e", 20).await;
        c.kill9(follower);

        // Several snapshots; the leader keeps only 50 entries behind each.
        let last = write_keys(&mut client, "late/", "v", WRITES).await;
        client.delete("early/00000", None).await.expect("delete");
        let last = last + 1;

        c.restart(follower).await;
        let deadline = Instant::now() + CONVERGE_BOUND;
        loop {
            if c.local_revision(follower).await == Some(last) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "follower did not reach revision {last}\n{}",
                c.logs()
            );
            tokio::time::sleep(POLL).await;
        }
        let rev = c.wait_converged(CONVERGE_BOUND).await;
        assert_eq!(rev, last);
        let dump = local_dump(&c, follower, "").await;
        assert_eq!(dump.len(), WRITES + 19);
        assert_eq!(dump, local_dump(&c, leader, "").await);

        // It got there by a snapshot, not by entries.
        let leader_log = c.member(leader).log();
        assert!(
            leader_log.contains("sent database snapshot [index:"),
            "the leader sent no snapshot:\n{leader_log}"
        );
        let follower_log = c.member(follower).log();
        assert!(
            follower_log.contains("applied snapshot at index"),
            "the follower applied no snapshot:\n{follower_log}"
        );

        // The restored follower keeps replicating.
        let r = client.put("after", "snapshot", None).await.expect("put");
        let rev = r.header().expect("header").revision();
        let deadline = Instant::now() + CONVERGE_BOUND;
        while c.local_revision(follower).await != Some(rev) {
            assert!(Instant::now() < deadline, "follower stopped replicating");
            tokio::time::sleep(POLL).await;
        }
        let snap_dir = c.member(follower).data_dir().join("member").join("snap");
        assert!(
            files_ending(&snap_dir, ".snap.db").is_empty(),
            "the installed snapshot backend was not cleaned up"
        );

        // And it restarts from what it installed: the received snapshot
        // and the WAL after it.
        c.kill9(follower);
        c.restart(follower).await;
        let log = c.member(follower).log();
        assert!(log.contains("recovered from snapshot at index"), "{log}");
        assert_eq!(c.wait_converged(CONVERGE_BOUND).await, rev);
        assert_eq!(
            local_dump(&c, follower, "").await,
            local_dump(&c, leader, "").await
        );
    })
    .await;
}

/// Between snapshots the leader keeps only a bounded tail of the log in
/// memory (oxcd's deviation from etcd, which keeps every entry since the
/// last snapshot). A follower that needs an entry the leader dropped from
/// memory makes it take a snapshot on demand and catches up through it,
/// long before `--snapshot-count` (the default 100000 here) is reached.
#[tokio::test]
async fn follower_behind_the_in_memory_log_gets_an_on_demand_snapshot() {
    bounded(async {
        // 1000 entries are kept in memory (the floor); the log is compacted
        // once it holds more than 2000 applied entries.
        const WRITES: usize = 2600;
        let mut c = Cluster::builder(3)
            .flags(&["--experimental-snapshot-catchup-entries", "100"])
            .start()
            .await;
        let leader = c.wait_leader(ELECTION_BOUND).await;
        let follower = (leader + 1) % 3;
        let mut client = c.client_of(leader).await;
        c.kill9(follower);
        let last = write_keys(&mut client, "k/", "v", WRITES).await;
        let leader_log = c.member(leader).log();
        assert!(
            !leader_log.contains("saved snapshot at index"),
            "no --snapshot-count snapshot is expected yet:\n{leader_log}"
        );

        c.restart(follower).await;
        let deadline = Instant::now() + CONVERGE_BOUND;
        while c.local_revision(follower).await != Some(last) {
            assert!(
                Instant::now() < deadline,
                "follower did not reach revision {last}\n{}",
                c.logs()
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(
            local_dump(&c, follower, "").await,
            local_dump(&c, leader, "").await
        );
        let leader_log = c.member(leader).log();
        assert!(
            leader_log.contains("saved snapshot at index")
                && leader_log.contains("sent database snapshot [index:"),
            "the leader should have snapshotted on demand and sent it:\n{leader_log}"
        );
    })
    .await;
}
