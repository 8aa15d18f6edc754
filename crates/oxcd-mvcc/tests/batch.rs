//! Batch mode: a group of write transactions shares one backend commit
//! and becomes visible to readers only when the batch ends.

use std::time::Duration;

use oxcd_mvcc::{BackendConfig, KvStore, RangeOptions};

fn cfg() -> BackendConfig {
    BackendConfig {
        batch_interval: Duration::ZERO,
        batch_limit: 10_000,
    }
}

fn put(store: &KvStore, key: &str, value: &str, index: u64) -> i64 {
    let mut t = store.write();
    t.put(key.as_bytes(), value.as_bytes(), 0).unwrap();
    t.end(Some(index)).unwrap().rev
}

fn get(store: &KvStore, key: &str) -> Option<String> {
    let r = store
        .read()
        .unwrap()
        .range(key.as_bytes(), &[], RangeOptions::default())
        .unwrap();
    r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[test]
fn readers_see_a_batch_only_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    put(&store, "a", "0", 1);
    store.begin_batch();
    assert_eq!(put(&store, "a", "1", 2), 3);
    assert_eq!(put(&store, "b", "1", 3), 4);
    // The writer builds on its own group: the previous value of `a` comes
    // from the open backend transaction.
    let mut t = store.write();
    let prev = t
        .range(b"a", &[], RangeOptions::default())
        .unwrap()
        .kvs
        .pop()
        .unwrap();
    t.put(b"a", b"2", 0).unwrap();
    assert_eq!(prev.value.as_ref(), b"1");
    assert_eq!(prev.mod_revision, 3);
    assert_eq!(prev.version, 2);
    let r = t.range(b"b", &[], RangeOptions::default()).unwrap();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(t.end(Some(4)).unwrap().rev, 5);
    // Readers still see the state before the batch.
    assert_eq!(store.rev(), 2);
    assert_eq!(get(&store, "a").as_deref(), Some("0"));
    assert_eq!(get(&store, "b"), None);
    store.end_batch();
    assert_eq!(store.rev(), 5);
    assert_eq!(get(&store, "a").as_deref(), Some("2"));
    assert_eq!(get(&store, "b").as_deref(), Some("1"));
    assert_eq!(store.consistent_index(), 4);
}

#[test]
fn compaction_inside_a_batch_sees_the_group_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    store.begin_batch();
    put(&store, "a", "1", 1);
    put(&store, "a", "2", 2);
    // Revision 3 exists only in the batch; compacting to it is allowed,
    // as it would be on a member that applied the entries one by one.
    store.compact(3).unwrap();
    assert_eq!(store.rev(), 3);
    put(&store, "a", "3", 4);
    store.end_batch();
    assert_eq!(store.rev(), 4);
    assert_eq!(get(&store, "a").as_deref(), Some("3"));
    let old = store.read().unwrap().range(
        b"a",
        &[],
        RangeOptions {
            rev: 2,
            ..Default::default()
        },
    );
    assert!(old.is_err(), "revision 2 is compacted");
}

#[test]
fn an_ended_batch_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = KvStore::open(&path, cfg()).unwrap();
        store.begin_batch();
        for i in 1..=100u64 {
            put(&store, &format!("k{i}"), &i.to_string(), i);
        }
        store.end_batch();
        store.sync().unwrap();
    }
    let store = KvStore::open(&path, cfg()).unwrap();
    assert_eq!(store.rev(), 101);
    assert_eq!(store.consistent_index(), 100);
    assert_eq!(get(&store, "k77").as_deref(), Some("77"));
}

#[test]
fn readers_merge_staged_and_committed_records_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = KvStore::open(&dir.path().join("db"), cfg()).unwrap();
    store.begin_batch();
    put(&store, "a", "1", 1);
    put(&store, "b", "1", 2);
    store.end_batch();
    // Committed: revisions 2 and 3. Then staged only: 4 and 5.
    store.sync().unwrap();
    store.begin_batch();
    put(&store, "a", "2", 3);
    put(&store, "c", "1", 4);
    store.end_batch();
    let before_commit = store.read().unwrap();
    // A commit after the reader began: its snapshot lacks 4 and 5, but it
    // still holds the staged generation they are in.
    store.sync().unwrap();
    let after_commit = store.read().unwrap();
    for r in [&before_commit, &after_commit] {
        let events = r.events(1, 0, 0).unwrap();
        let revs: Vec<i64> = events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(revs, vec![2, 3, 4, 5]);
        let a = r.range(b"a", &[], RangeOptions::default()).unwrap();
        assert_eq!(a.kvs[0].value.as_ref(), b"2");
        let c = r.range(b"c", &[], RangeOptions::default()).unwrap();
        assert_eq!(c.kvs.len(), 1);
    }
    // A limited scan stops at a revision boundary inside the staged part.
    let events = before_commit.events(3, 0, 1).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kv.as_ref().unwrap().mod_revision, 3);
}
