//! Behaviour of the store through its public API (etcd semantics of
//! ETCD-FACTS §5: revisions, generations, range options, compaction,
//! hashing, persistence).

use std::path::{Path, PathBuf};
use std::time::Duration;

use oxcd_api::mvccpb::{event::EventType, KeyValue};
use oxcd_mvcc::{BackendConfig, KvStore, MvccError, RangeOptions};

/// No background flusher: tests decide when data becomes durable.
fn cfg() -> BackendConfig {
    BackendConfig {
        batch_interval: Duration::ZERO,
        batch_limit: 10_000,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn fixture() -> (Fixture, KvStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = KvStore::open(&path, cfg()).unwrap();
    (Fixture { _dir: dir, path }, store)
}

fn reopen(path: &Path, store: KvStore) -> KvStore {
    drop(store);
    KvStore::open(path, cfg()).unwrap()
}

fn put(s: &KvStore, k: &str, v: &str) -> i64 {
    let mut t = s.write();
    t.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    t.end(None).unwrap().rev
}

fn del(s: &KvStore, k: &str, end: &str) -> (i64, usize) {
    let mut t = s.write();
    let n = t.delete_range(k.as_bytes(), end.as_bytes()).unwrap().len();
    (t.end(None).unwrap().rev, n)
}

fn get(s: &KvStore, k: &str, rev: i64) -> Option<KeyValue> {
    let opts = RangeOptions {
        rev,
        ..Default::default()
    };
    s.read()
        .unwrap()
        .range(k.as_bytes(), b"", opts)
        .unwrap()
        .kvs
        .pop()
}

fn keys(s: &KvStore, k: &[u8], end: &[u8], opts: RangeOptions) -> (Vec<String>, i64) {
    let r = s.read().unwrap().range(k, end, opts).unwrap();
    let ks = r
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect();
    (ks, r.count)
}

#[test]
fn revision_numbering() {
    let (_f, s) = fixture();
    assert_eq!(s.rev(), 1, "empty store is at revision 1");
    assert_eq!(s.compact_rev(), -1);
    assert_eq!(put(&s, "a", "1"), 2, "first write gives 2");

    let mut t = s.write();
    assert_eq!(t.rev(), 2);
    t.put(b"b", b"1", 0).unwrap();
    assert_eq!(t.rev(), 3);
    t.put(b"c", b"1", 0).unwrap();
    t.delete_range(b"a", b"").unwrap();
    let out = t.end(None).unwrap();
    assert_eq!(out.rev, 3, "a txn is one revision");
    assert_eq!(out.events.len(), 3);
    let types: Vec<i32> = out.events.iter().map(|e| e.r#type).collect();
    assert_eq!(
        types,
        vec![
            EventType::Put as i32,
            EventType::Put as i32,
            EventType::Delete as i32
        ]
    );
    let d = out.events[2].kv.as_ref().unwrap();
    assert_eq!((&d.key[..], d.mod_revision), (&b"a"[..], 3));

    assert_eq!(
        del(&s, "nope", ""),
        (3, 0),
        "no-op delete keeps the revision"
    );
    let t = s.write();
    assert_eq!(
        t.end(Some(9)).unwrap().rev,
        3,
        "empty txn keeps the revision"
    );
    assert_eq!(s.rev(), 3);
    assert_eq!(s.consistent_index(), 9);
}

#[test]
fn create_mod_version_across_generations() {
    let (_f, s) = fixture();
    put(&s, "k", "v1"); // 2
    put(&s, "k", "v2"); // 3
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    del(&s, "k", ""); // 4
    assert!(get(&s, "k", 0).is_none());
    put(&s, "k", "v3"); // 5
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    assert_eq!(&kv.value[..], b"v3");
    // History stays readable.
    assert_eq!(&get(&s, "k", 2).unwrap().value[..], b"v1");
    assert!(get(&s, "k", 4).is_none());
    assert!(get(&s, "k", 1).is_none());
}

#[test]
fn put_builds_on_prev_version_and_lease() {
    let (_f, s) = fixture();
    let mut t = s.write();
    t.put(b"k", b"v1", 7).unwrap();
    let prev = t
        .range(b"k", &[], RangeOptions::default())
        .unwrap()
        .kvs
        .pop()
        .unwrap();
    t.put(b"k", b"v2", 0).unwrap();
    assert_eq!(
        (&prev.value[..], prev.lease, prev.version),
        (&b"v1"[..], 7, 1)
    );
    t.end(None).unwrap();
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!((kv.version, kv.lease, kv.create_revision), (2, 0, 2));
}

#[test]
fn write_txn_sees_its_own_writes() {
    let (_f, s) = fixture();
    put(&s, "a", "old"); // 2
    let mut t = s.write();
    let r = t.range(b"a", b"", RangeOptions::default()).unwrap();
    assert_eq!((r.rev, &r.kvs[0].value[..]), (2, &b"old"[..]));
    t.put(b"a", b"new", 0).unwrap();
    t.put(b"b", b"x", 0).unwrap();
    let r = t.range(b"a", b"\0", RangeOptions::default()).unwrap();
    assert_eq!(r.rev, 3);
    assert_eq!(r.count, 2);
    assert_eq!(&r.kvs[0].value[..], b"new");
    // Outside readers do not see the uncommitted txn.
    assert_eq!(&get(&s, "a", 0).unwrap().value[..], b"old");
    let deleted = t.delete_range(b"a", b"c").unwrap();
    assert_eq!(deleted.len(), 2);
    assert_eq!(&deleted[0].value[..], b"new");
    assert_eq!(
        t.range(b"a", b"\0", RangeOptions::default()).unwrap().count,
        0
    );
    t.end(None).unwrap();
    assert_eq!(s.rev(), 3);
    assert!(get(&s, "a", 0).is_none());
}

#[test]
fn dropped_write_txn_changes_nothing() {
    let (_f, s) = fixture();
    put(&s, "a", "1");
    {
        let mut t = s.write();
        t.put(b"a", b"2", 0).unwrap();
        t.put(b"n", b"x", 0).unwrap();
        t.delete_range(b"a", b"").unwrap();
    }
    assert_eq!(s.rev(), 2);
    assert_eq!(s.index_len(), 1);
    assert_eq!(&get(&s, "a", 0).unwrap().value[..], b"1");
    assert_eq!(put(&s, "a", "3"), 3);
    assert_eq!(get(&s, "a", 0).unwrap().version, 2);
}

#[test]
fn range_options() {
    let (_f, s) = fixture();
    for k in ["a", "b", "c", "d"] {
        put(&s, k, k);
    } // revisions 2..=5
    let none = RangeOptions::default();
    let all = (
        vec!["a", "b", "c", "d"]
            .into_iter()
            .map(String::from)
            .collect(),
        4,
    );
    assert_eq!(keys(&s, b"\0", b"\0", none), all);
    assert_eq!(keys(&s, b"a", b"\0", none), all);
    assert_eq!(
        keys(&s, b"b", b"d", none),
        (vec!["b".into(), "c".into()], 2)
    );
    assert_eq!(
        keys(&s, b"c", b"b", none),
        (vec![], 0),
        "end < key is empty"
    );
    assert_eq!(
        keys(&s, b"c", b"c", none),
        (vec![], 0),
        "end == key is empty"
    );
    assert_eq!(keys(&s, b"zz", b"", none), (vec![], 0));
    let limit2 = RangeOptions { limit: 2, ..none };
    assert_eq!(
        keys(&s, b"a", b"\0", limit2),
        (vec!["a".into(), "b".into()], 4)
    );
    let count = RangeOptions {
        count_only: true,
        ..none
    };
    assert_eq!(keys(&s, b"a", b"\0", count), (vec![], 4));
    let at3 = RangeOptions { rev: 3, ..none };
    assert_eq!(
        keys(&s, b"a", b"\0", at3),
        (vec!["a".into(), "b".into()], 2)
    );
    let r = s.read().unwrap().range(b"a", b"\0", at3).unwrap();
    assert_eq!(r.rev, 5, "a read in the past reports the current revision");
    let future = RangeOptions { rev: 6, ..none };
    let err = s.read().unwrap().range(b"a", b"", future).unwrap_err();
    assert!(matches!(
        err,
        MvccError::FutureRev {
            requested: 6,
            current_rev: 5
        }
    ));
}

#[test]
fn read_txn_is_a_snapshot() {
    let (_f, s) = fixture();
    put(&s, "a", "1");
    let r = s.read().unwrap();
    put(&s, "a", "2");
    put(&s, "b", "2");
    let got = r.range(b"a", b"\0", RangeOptions::default()).unwrap();
    assert_eq!((got.rev, got.count), (2, 1));
    assert_eq!(&got.kvs[0].value[..], b"1");
}

#[test]
fn compaction_rules() {
    let (_f, s) = fixture();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "b", "1"); // 4
    del(&s, "b", ""); // 5
    put(&s, "c", "1"); // 6
    assert!(matches!(s.compact(7), Err(MvccError::FutureRev { .. })));
    s.compact(5).unwrap();
    assert_eq!(s.compact_rev(), 5);
    assert!(
        matches!(s.compact(5), Err(MvccError::Compacted { .. })),
        "equal is compacted"
    );
    assert!(matches!(s.compact(4), Err(MvccError::Compacted { .. })));
    // Reads at the compact revision work, below it fail.
    assert_eq!(&get(&s, "a", 5).unwrap().value[..], b"2");
    let at4 = RangeOptions {
        rev: 4,
        ..Default::default()
    };
    let err = s.read().unwrap().range(b"a", b"", at4).unwrap_err();
    assert!(matches!(
        err,
        MvccError::Compacted {
            requested: 4,
            compact_rev: 5
        }
    ));
    // The tombstoned key is gone from the index entirely.
    assert_eq!(s.index_len(), 2);
    assert_eq!(
        keys(
            &s,
            b"\0",
            b"\0",
            RangeOptions {
                rev: 5,
                ..Default::default()
            }
        )
        .1,
        1
    );
    // Compacting at the current revision is allowed.
    s.compact(6).unwrap();
    assert_eq!(get(&s, "c", 0).unwrap().create_revision, 6);
    assert_eq!(s.rev(), 6);
}

#[test]
fn fresh_store_compacts_once_at_zero_or_one() {
    let (_f, s) = fixture();
    s.compact(0).unwrap();
    assert_eq!(s.compact_rev(), 0);
    s.compact(1).unwrap();
    assert!(matches!(s.compact(1), Err(MvccError::Compacted { .. })));
}

#[test]
fn compaction_deletes_from_backend_in_batches() {
    let (f, s) = fixture();
    let n = 2 * oxcd_mvcc::COMPACTION_BATCH + 10;
    for i in 0..n {
        put(&s, "k", &i.to_string());
    }
    put(&s, "gone", "x");
    del(&s, "gone", "");
    let r = s.read().unwrap();
    assert_eq!(r.events(2, 0, 0).unwrap().len(), n + 2);
    drop(r);
    s.compact(s.rev()).unwrap();
    let r = s.read().unwrap();
    assert!(matches!(
        r.events(2, 0, 0),
        Err(MvccError::Compacted { .. })
    ));
    drop(r);
    // Only the newest revision of "k" is left on disk: after a reopen the
    // index has exactly that.
    let s = reopen(&f.path, s);
    assert_eq!(s.index_len(), 1);
    let kv = get(&s, "k", 0).unwrap();
    assert_eq!(kv.version, n as i64);
    assert_eq!(kv.create_revision, 2);
    assert_eq!(s.rev() as usize, n + 3);
    assert_eq!(s.compact_rev() as usize, n + 3);
}

#[test]
fn hash_is_stable_and_ignores_compaction() {
    let (_f, s) = fixture();
    put(&s, "a", "1");
    put(&s, "b", "1");
    put(&s, "a", "2");
    del(&s, "b", "");
    put(&s, "c", "1"); // rev 6
    let h6 = s.hash_kv(0).unwrap();
    assert_eq!((h6.current_rev, h6.compact_rev), (6, -1));
    assert_eq!(s.hash_kv(6).unwrap(), h6);
    let h4 = s.hash_kv(4).unwrap();
    assert_ne!(h4.hash, h6.hash);
    assert!(matches!(s.hash_kv(7), Err(MvccError::FutureRev { .. })));

    // A second store fed the same history hashes the same.
    let (_f2, s2) = fixture();
    put(&s2, "a", "1");
    put(&s2, "b", "1");
    put(&s2, "a", "2");
    del(&s2, "b", "");
    put(&s2, "c", "1");
    assert_eq!(s2.hash_kv(0).unwrap().hash, h6.hash);

    // Compaction changes what is hashed (the dropped revisions), and two
    // members compacted at the same revision agree (what etcd's corruption
    // check compares).
    s.compact(5).unwrap();
    assert_ne!(s.hash_kv(6).unwrap().hash, s2.hash_kv(6).unwrap().hash);
    assert!(matches!(s.hash_kv(5), Err(MvccError::Compacted { .. })));
    s2.compact(5).unwrap();
    assert_eq!(s2.hash_kv(6).unwrap(), s.hash_kv(6).unwrap());
}

#[test]
fn hash_matches_etcd_formula_by_hand() {
    // One put of "foo"="bar" at revision 2: crc32c("key" ‖ revkey ‖ kv).
    use prost::Message;
    let (_f, s) = fixture();
    put(&s, "foo", "bar");
    let kv = KeyValue {
        key: b"foo".to_vec().into(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
        value: b"bar".to_vec().into(),
        lease: 0,
    };
    let mut h = oxcd_mvcc::Crc32c::new();
    h.update(b"key");
    h.update(&oxcd_mvcc::Revision::new(2, 0).to_key(false));
    h.update(&kv.encode_to_vec());
    assert_eq!(s.hash_kv(0).unwrap().hash, h.finish());
}

#[test]
fn reopen_restores_everything() {
    let (f, s) = fixture();
    put(&s, "a", "1"); // 2
    put(&s, "b", "1"); // 3
    del(&s, "a", ""); // 4
    put(&s, "a", "2"); // 5
    let mut t = s.write();
    t.put(b"c", b"1", 5).unwrap();
    t.end(Some(77)).unwrap(); // 6
    s.compact(3).unwrap();
    let hash = s.hash_kv(0).unwrap();
    s.sync().unwrap();
    let s = reopen(&f.path, s);
    assert_eq!(s.rev(), 6);
    assert_eq!(s.compact_rev(), 3);
    assert_eq!(s.consistent_index(), 77);
    assert_eq!(s.hash_kv(0).unwrap(), hash);
    let a = get(&s, "a", 0).unwrap();
    assert_eq!((a.create_revision, a.version), (5, 1));
    assert!(get(&s, "a", 4).is_none());
    assert_eq!(&get(&s, "a", 3).unwrap().value[..], b"1");
    assert_eq!(get(&s, "c", 0).unwrap().lease, 5);
    assert_eq!(put(&s, "b", "2"), 7);
    assert_eq!(get(&s, "b", 0).unwrap().version, 2);
}

#[test]
fn reopen_after_everything_compacted_keeps_revision() {
    let (f, s) = fixture();
    put(&s, "a", "1"); // 2
    del(&s, "a", ""); // 3
    s.compact(3).unwrap();
    let s = reopen(&f.path, s);
    assert_eq!((s.rev(), s.compact_rev()), (3, 3));
    assert_eq!(put(&s, "a", "2"), 4);
}

#[test]
fn consistent_index_without_changes_persists_on_sync() {
    let (f, s) = fixture();
    put(&s, "a", "1");
    s.write().end(Some(5)).unwrap();
    s.sync().unwrap();
    let s = reopen(&f.path, s);
    assert_eq!(s.consistent_index(), 5);
}

#[test]
fn events_reproduce_history() {
    let (_f, s) = fixture();
    let mut t = s.write();
    t.put(b"a", b"1", 0).unwrap();
    t.put(b"b", b"1", 0).unwrap();
    let first = t.end(None).unwrap();
    let mut t = s.write();
    t.delete_range(b"a", b"\0").unwrap();
    let second = t.end(None).unwrap();
    let r = s.read().unwrap();
    let all = r.events(1, 0, 0).unwrap();
    assert_eq!(all, [first.events.clone(), second.events.clone()].concat());
    // A page never splits a transaction.
    assert_eq!(r.events(1, 0, 1).unwrap(), first.events);
    assert_eq!(r.events(3, 0, 0).unwrap(), second.events);
    assert_eq!(r.events(2, 3, 0).unwrap(), first.events);
}

#[test]
fn store_is_send_sync_and_txns_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<KvStore>();
    send::<oxcd_mvcc::WriteTxn>();
    send::<oxcd_mvcc::ReadTxn>();
}

#[test]
fn concurrent_readers_and_writer() {
    let (_f, s) = fixture();
    put(&s, "k", "0");
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 1..200 {
                put(&s, "k", &i.to_string());
            }
        })
    };
    for _ in 0..200 {
        let r = s.read().unwrap();
        let kv = r
            .range(b"k", b"", RangeOptions::default())
            .unwrap()
            .kvs
            .pop()
            .unwrap();
        assert!(kv.mod_revision <= r.rev());
        assert_eq!(kv.version, kv.mod_revision - 1);
    }
    writer.join().unwrap();
    assert_eq!(s.rev(), 201);
}

#[test]
fn background_flusher_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let cfg = BackendConfig {
        batch_interval: Duration::from_millis(5),
        batch_limit: 10_000,
    };
    let s = KvStore::open(&path, cfg).unwrap();
    put(&s, "a", "1");
    assert!(s.db_size().unwrap() > 0);
    // Dropping the last handle stops the flusher and closes the file, so
    // an immediate reopen succeeds.
    drop(s);
    let s = KvStore::open(&path, cfg).unwrap();
    assert_eq!(s.rev(), 2);
    assert!(s.db_size_in_use() > 0);
    assert!(s.db_size_in_use() <= s.db_size().unwrap());
}

#[test]
fn restore_lists_the_keys_attached_to_leases_until_the_next_write() {
    let (f, s) = fixture();
    let mut t = s.write();
    t.put(b"a", b"1", 7).unwrap();
    t.put(b"b", b"1", 8).unwrap();
    t.put(b"c", b"1", 0).unwrap();
    t.end(None).unwrap();
    let mut t = s.write();
    t.put(b"b", b"2", 0).unwrap(); // detached by a put without a lease
    t.put(b"d", b"1", 9).unwrap();
    t.put(b"e", b"1", 9).unwrap();
    t.end(None).unwrap();
    let mut t = s.write();
    t.delete_range(b"a", &[]).unwrap(); // gone with its key
    t.put(b"e", b"2", 10).unwrap(); // moved to another lease
    t.end(None).unwrap();
    let s = reopen(&f.path, s);
    let mut keys = s.restored_lease_keys().unwrap().as_ref().clone();
    keys.sort();
    assert_eq!(keys, vec![(b"d".to_vec(), 9), (b"e".to_vec(), 10)]);
    put(&s, "x", "1");
    assert!(s.restored_lease_keys().is_none(), "stale after a write");
}
