//! Crash consistency: a child process (this test binary re-run with an
//! environment variable) writes and then aborts without any cleanup, like
//! kill -9. The parent reopens the file and checks it is consistent.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oxcd_mvcc::{BackendConfig, KvStore, RangeOptions};

const DIR_VAR: &str = "OXCD_MVCC_CRASH_DIR";
const MODE_VAR: &str = "OXCD_MVCC_CRASH_MODE";
const SYNCED: u64 = 50;
const TOTAL: u64 = 120;
const COMPACT_KEYS: u64 = 3 * oxcd_mvcc::COMPACTION_BATCH as u64;

fn cfg() -> BackendConfig {
    BackendConfig {
        batch_interval: Duration::ZERO,
        batch_limit: 10_000,
    }
}

/// Entry i (raft index i) puts `k{i}` in its own transaction.
fn apply(store: &KvStore, i: u64) {
    let mut t = store.write();
    t.put(format!("k{i}").as_bytes(), i.to_string().as_bytes(), 0)
        .unwrap();
    t.end(Some(i)).unwrap();
}

/// The child's side; does nothing unless started by a parent test.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(DIR_VAR), std::env::var(MODE_VAR)) else {
        return;
    };
    let store = KvStore::open(&Path::new(&dir).join("db"), cfg()).unwrap();
    match mode.as_str() {
        "writes" => {
            for i in 1..=TOTAL {
                apply(&store, i);
                if i == SYNCED {
                    store.sync().unwrap();
                }
            }
        }
        "compaction" => {
            for i in 1..=COMPACT_KEYS {
                // Overwrite a few keys many times: lots to delete.
                let mut t = store.write();
                t.put(
                    format!("k{}", i % 7).as_bytes(),
                    i.to_string().as_bytes(),
                    0,
                )
                .unwrap();
                t.end(Some(i)).unwrap();
            }
            store.sync().unwrap();
            let s2 = store.clone();
            let c = store.rev() - 1;
            std::thread::spawn(move || s2.compact(c));
            let deadline = Instant::now() + Duration::from_secs(30);
            while store.compact_rev() != c && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
        other => panic!("unknown mode {other}"),
    }
    std::process::abort();
}

fn run_child(dir: &Path, mode: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir)
        .env(MODE_VAR, mode)
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
}

#[test]
fn kill_after_unsynced_writes_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    run_child(dir.path(), "writes");
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    let ci = store.consistent_index();
    // Everything synced survived; whatever else survived is described
    // exactly by the consistent index stored with it.
    assert!(ci >= SYNCED, "consistent index {ci}");
    assert!(ci <= TOTAL);
    assert_eq!(store.rev(), ci as i64 + 1);
    let r = store.read().unwrap();
    let all = r.range(b"k", b"l", RangeOptions::default()).unwrap();
    assert_eq!(all.count, ci as i64);
    for kv in &all.kvs {
        let i: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
        assert_eq!(kv.mod_revision, i as i64 + 1);
    }
    drop(r);
    // The replay of the lost entries applies on top cleanly.
    for i in ci + 1..=TOTAL {
        apply(&store, i);
    }
    assert_eq!(store.rev(), TOTAL as i64 + 1);
}

#[test]
fn kill_during_compaction_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    run_child(dir.path(), "compaction");
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    let c = COMPACT_KEYS as i64; // rev() - 1 in the child
    assert_eq!(store.rev(), COMPACT_KEYS as i64 + 1);
    assert_eq!(
        store.compact_rev(),
        c,
        "the scheduled compaction was finished at open"
    );
    let opts = RangeOptions {
        rev: c,
        ..Default::default()
    };
    let r = store.read().unwrap();
    let got = r.range(b"k", b"l", opts).unwrap();
    assert_eq!(got.count, 7);
    // Only the kept revisions remain on disk: a fresh store from the same
    // file has one revision per key at or below c, plus the newest one.
    drop(r);
    drop(store);
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    let last = store.read().unwrap().events(c + 1, 0, 0).unwrap();
    assert_eq!(last.len(), 1);
    let h = store.hash_kv(0).unwrap();
    assert_eq!(h.compact_rev, c);
}
