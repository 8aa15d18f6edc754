//! Unit tests of the watchable store's groups. The store is built without
//! its background thread; each test runs the sync and victim passes
//! itself, so every step is deterministic.

use std::time::Duration;

use oxcd_api::mvccpb::event::EventType;

use super::*;
use crate::backend::BackendConfig;
use crate::watcher::{WatchError, AUTO_WATCH_ID};

struct Fixture {
    _dir: tempfile::TempDir,
    kv: KvStore,
    hub: WatchableStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = BackendConfig {
        batch_interval: Duration::ZERO,
        batch_limit: 10_000,
    };
    let kv = KvStore::open(&dir.path().join("db"), cfg).expect("open store");
    let hub = WatchableStore::without_loop(kv.clone());
    Fixture { _dir: dir, kv, hub }
}

impl Fixture {
    /// One write transaction, published like the apply thread does.
    fn write(&self, f: impl FnOnce(&mut crate::WriteTxn)) -> i64 {
        let mut t = self.kv.write();
        f(&mut t);
        let out = t.end(None).expect("commit");
        self.hub.notify(out.events);
        out.rev
    }

    fn put(&self, k: &str, v: &str) -> i64 {
        self.write(|t| {
            t.put(k.as_bytes(), v.as_bytes(), 0).expect("put");
        })
    }

    fn del(&self, k: &str) -> i64 {
        self.write(|t| {
            t.delete_range(k.as_bytes(), b"").expect("delete");
        })
    }

    /// Puts without telling the watchers (the group is not durable yet).
    fn put_unpublished(&self, k: &str, v: &str) -> Vec<Event> {
        let mut t = self.kv.write();
        t.put(k.as_bytes(), v.as_bytes(), 0).expect("put");
        t.end(None).expect("commit").events
    }
}

fn drain(rx: &mut crate::WatchReceiver) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    while let Ok(r) = rx.try_recv() {
        out.push(r);
    }
    out
}

/// `(key, mod_revision, is_delete)` of every event, in order.
fn events(rs: &[WatchResponse]) -> Vec<(String, i64, bool)> {
    rs.iter()
        .flat_map(|r| r.events.iter())
        .map(|e| {
            let kv = e.kv.as_ref().expect("event kv");
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                e.r#type == EventType::Delete as i32,
            )
        })
        .collect()
}

#[test]
fn synced_watcher_gets_live_events_of_its_range() {
    let f = fixture();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let single = ws
        .watch(AUTO_WATCH_ID, b"foo", b"", 0, Filters::default())
        .unwrap();
    let prefix = ws
        .watch(AUTO_WATCH_ID, b"a/", b"a0", 0, Filters::default())
        .unwrap();
    let from = ws
        .watch(AUTO_WATCH_ID, b"m", b"\0", 0, Filters::default())
        .unwrap();
    assert_eq!((single, prefix, from), (0, 1, 2));
    assert_eq!(f.hub.group_sizes(), (3, 0, 0));

    let r2 = f.put("foo", "1");
    f.put("a/x", "2");
    f.put("bar", "3");
    f.del("foo");
    let got = drain(&mut rx);
    let for_id = |id| {
        got.iter()
            .filter(|r| r.watch_id == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        events(&for_id(single)),
        [("foo".into(), r2, false), ("foo".into(), r2 + 3, true)]
    );
    assert_eq!(events(&for_id(prefix)), [("a/x".into(), r2 + 1, false)]);
    assert!(for_id(from).is_empty(), "bar < m, a/x < m");
    let live = &for_id(single)[0];
    assert!(live.live);
    assert_eq!(live.revision, r2, "live header revision is the write's");
    // A DELETE event's kv carries the key and the delete's revision only.
    let del = &for_id(single)[1].events[0];
    let kv = del.kv.as_ref().unwrap();
    assert!(kv.value.is_empty() && kv.create_revision == 0 && kv.version == 0);
}

#[test]
fn filters_drop_events_and_empty_responses() {
    let f = fixture();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let no_put = Filters {
        no_put: true,
        no_delete: false,
    };
    let no_del = Filters {
        no_put: false,
        no_delete: true,
    };
    let a = ws.watch(AUTO_WATCH_ID, b"k", b"", 0, no_put).unwrap();
    let b = ws.watch(AUTO_WATCH_ID, b"k", b"", 0, no_del).unwrap();
    f.put("k", "v");
    let d = f.del("k");
    let got = drain(&mut rx);
    assert_eq!(
        got.len(),
        2,
        "no response with only filtered events: {got:?}"
    );
    assert_eq!(got[0].watch_id, b);
    assert_eq!(events(&got[..1]), [("k".into(), d - 1, false)]);
    assert_eq!(got[1].watch_id, a);
    assert_eq!(events(&got[1..]), [("k".into(), d, true)]);
}

#[test]
fn unsynced_watcher_catches_up_then_joins_synced() {
    let f = fixture();
    let first = f.put("k", "0");
    for i in 1..1500 {
        f.put("k", &i.to_string());
    }
    // A transaction's events share one revision and are never split.
    let txn_rev = f.write(|t| {
        t.put(b"k", b"t1", 0).unwrap();
        t.put(b"k2", b"t2", 0).unwrap();
    });
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let id = ws.watch(7, b"k", b"l", first, Filters::default()).unwrap();
    assert_eq!(id, 7);
    assert_eq!(f.hub.group_sizes(), (0, 1, 0));

    let out = f.hub.sync_watchers();
    assert_eq!(out.remaining, 1, "1501 revisions need two passes");
    let batch1 = drain(&mut rx);
    assert_eq!(batch1.len(), 1);
    assert_eq!(batch1[0].events.len(), MAX_REVS_PER_SYNC as usize);
    assert_eq!(
        batch1[0].revision, txn_rev,
        "catch-up header is the store revision"
    );
    assert!(!batch1[0].live);

    let out = f.hub.sync_watchers();
    assert_eq!(out.remaining, 0);
    assert_eq!(f.hub.group_sizes(), (1, 0, 0));
    let batch2 = drain(&mut rx);
    let all = events(&[batch1, batch2].concat());
    let revs: Vec<i64> = all.iter().map(|e| e.1).collect();
    let mut want: Vec<i64> = (first..=txn_rev).collect();
    want.push(txn_rev);
    assert_eq!(revs, want, "every revision once, in order");
    assert_eq!(all.last().unwrap().0, "k2");

    let live = f.put("k1", "x");
    assert_eq!(events(&drain(&mut rx)), [("k1".into(), live, false)]);
}

#[test]
fn unpublished_writes_are_not_seen_until_notify() {
    let f = fixture();
    let r = f.put("k", "a");
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    ws.watch(AUTO_WATCH_ID, b"k", b"", r, Filters::default())
        .unwrap();
    let pending = f.put_unpublished("k", "b");
    f.hub.sync_watchers();
    assert_eq!(events(&drain(&mut rx)), [("k".into(), r, false)]);
    assert_eq!(
        f.hub.group_sizes(),
        (1, 0, 0),
        "synced at the published revision"
    );
    f.hub.notify(pending);
    assert_eq!(events(&drain(&mut rx)), [("k".into(), r + 1, false)]);
    assert_eq!(f.hub.rev(), r + 1);
}

#[test]
fn full_channel_makes_a_victim_without_losing_or_duplicating() {
    let f = fixture();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    ws.watch(AUTO_WATCH_ID, b"k", b"", 0, Filters::default())
        .unwrap();
    let n = STREAM_CHANNEL_CAPACITY as i64 + 50;
    let first = f.rev_after_puts(n);
    assert_eq!(
        f.hub.group_sizes(),
        (0, 0, 1),
        "the 129th response did not fit"
    );

    // Nothing moves while the channel is still full.
    assert_eq!(f.hub.move_victims(), 0);
    let mut got = drain(&mut rx);
    assert_eq!(f.hub.move_victims(), 1);
    assert_eq!(
        f.hub.group_sizes(),
        (0, 1, 0),
        "missed revisions: back to unsynced"
    );
    f.hub.sync_watchers();
    assert_eq!(f.hub.group_sizes(), (1, 0, 0));
    got.extend(drain(&mut rx));
    let revs: Vec<i64> = events(&got).iter().map(|e| e.1).collect();
    assert_eq!(revs, (first..first + n).collect::<Vec<_>>());
}

/// A stream's channel counts published groups, not watchers: many
/// watchers on one stream get one write each without filling it, and a
/// full stream turns every watcher in the batch that did not fit into a
/// victim, each caught up on its own without a loss or a duplicate.
#[test]
fn one_batch_per_stream_and_group() {
    let f = fixture();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let watchers = 3 * STREAM_CHANNEL_CAPACITY;
    for _ in 0..watchers {
        ws.watch(AUTO_WATCH_ID, b"k", b"", 0, Filters::default())
            .unwrap();
    }
    let first = f.rev_after_puts(2);
    assert_eq!(f.hub.group_sizes(), (watchers, 0, 0), "no victim");

    let n = STREAM_CHANNEL_CAPACITY as i64;
    f.rev_after_puts(n);
    assert_eq!(
        f.hub.group_sizes(),
        (0, 0, watchers),
        "the group after the 128th did not fit: every watcher of it waits"
    );
    let mut got = drain(&mut rx);
    assert_eq!(f.hub.move_victims(), watchers);
    f.hub.sync_watchers();
    assert_eq!(f.hub.group_sizes(), (watchers, 0, 0));
    got.extend(drain(&mut rx));
    let mut per_watcher: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for r in &got {
        for e in &r.events {
            per_watcher
                .entry(r.watch_id)
                .or_default()
                .push(revision_of(e));
        }
    }
    assert_eq!(per_watcher.len(), watchers);
    let want: Vec<i64> = (first..first + n + 2).collect();
    assert!(per_watcher.values().all(|revs| *revs == want));
}

impl Fixture {
    /// `n` puts of key `k`; returns the first revision.
    fn rev_after_puts(&self, n: i64) -> i64 {
        let first = self.kv.rev() + 1;
        for i in 0..n {
            self.put("k", &i.to_string());
        }
        first
    }
}

#[test]
fn compacted_start_gets_a_notice_and_is_removed() {
    let f = fixture();
    let first = f.rev_after_puts(5);
    f.kv.compact(first + 2).unwrap();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let gone = ws
        .watch(AUTO_WATCH_ID, b"k", b"", first, Filters::default())
        .unwrap();
    let ok = ws
        .watch(AUTO_WATCH_ID, b"k", b"", first + 2, Filters::default())
        .unwrap();
    f.hub.sync_watchers();
    let got = drain(&mut rx);
    let notice = got.iter().find(|r| r.watch_id == gone).expect("notice");
    assert_eq!(notice.compact_revision, first + 2);
    assert_eq!(notice.revision, 0);
    assert!(notice.events.is_empty());
    // Watching from exactly the compact revision works: its put survives.
    let from_c = got.iter().find(|r| r.watch_id == ok).expect("events");
    let revs: Vec<i64> = events(std::slice::from_ref(from_c))
        .iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(revs, [first + 2, first + 3, first + 4]);
    assert_eq!(f.hub.group_sizes(), (1, 0, 0), "compacted watcher removed");
    assert!(ws.cancel(gone), "the stream still knows the id");
    assert!(ws.cancel(ok));
    assert_eq!(f.hub.group_sizes(), (0, 0, 0));
}

#[test]
fn prev_kv_reads_the_revision_before() {
    let f = fixture();
    let r1 = f.put("k", "one");
    f.put("k", "two");
    f.del("k");
    f.put("k", "three");
    let mut evs = f.kv.read().unwrap().events(r1, 0, 0).unwrap();
    f.hub.fill_prev_kv(&mut evs);
    let prev: Vec<Option<&[u8]>> = evs
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|kv| &kv.value[..]))
        .collect();
    assert_eq!(
        prev,
        [None, Some(&b"one"[..]), Some(&b"two"[..]), None],
        "creations have none; a put after a delete is a creation"
    );
    // Compacted history: prev_kv is silently missing.
    f.put("k", "four");
    let mut evs = f.kv.read().unwrap().events(r1 + 4, 0, 0).unwrap();
    f.kv.compact(r1 + 4).unwrap();
    f.hub.fill_prev_kv(&mut evs);
    assert_eq!(evs[0].prev_kv, None);
}

#[test]
fn stream_ids_duplicates_and_empty_ranges() {
    let f = fixture();
    let (mut ws, _rx) = f.hub.new_watch_stream();
    let d = Filters::default();
    assert_eq!(ws.watch(1, b"a", b"", 0, d), Ok(1));
    assert_eq!(ws.watch(AUTO_WATCH_ID, b"a", b"", 0, d), Ok(0));
    assert_eq!(ws.watch(AUTO_WATCH_ID, b"a", b"", 0, d), Ok(2), "skips 1");
    assert_eq!(ws.watch(-1, b"a", b"", 0, d), Ok(-1));
    assert_eq!(ws.watch(2, b"a", b"", 0, d), Err(WatchError::DuplicateId));
    assert_eq!(ws.watch(9, b"b", b"a", 0, d), Err(WatchError::EmptyRange));
    assert_eq!(ws.watch(9, b"b", b"b", 0, d), Err(WatchError::EmptyRange));
    assert_eq!(f.hub.group_sizes(), (4, 0, 0));
    assert!(ws.cancel(1));
    assert!(!ws.cancel(1));
    drop(ws);
    assert_eq!(
        f.hub.group_sizes(),
        (0, 0, 0),
        "dropping the stream cancels"
    );
}

#[test]
fn responses_of_a_cancelled_watcher_are_not_current() {
    let f = fixture();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    ws.watch(5, b"k", b"", 0, Filters::default()).unwrap();
    f.put("k", "v");
    ws.cancel(5);
    ws.watch(5, b"k", b"", 0, Filters::default()).unwrap();
    let stale = drain(&mut rx);
    assert_eq!(stale.len(), 1);
    assert!(!ws.is_current(&stale[0]));
    f.put("k", "w");
    assert!(ws.is_current(&drain(&mut rx)[0]));
}

#[test]
fn progress_only_for_synced_watchers() {
    let f = fixture();
    let r = f.put("k", "v");
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    let synced = ws
        .watch(AUTO_WATCH_ID, b"k", b"", 0, Filters::default())
        .unwrap();
    let behind = ws
        .watch(AUTO_WATCH_ID, b"x", b"", r, Filters::default())
        .unwrap();
    ws.request_progress(synced);
    ws.request_progress(behind);
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].watch_id, got[0].revision), (synced, r));
    assert!(got[0].events.is_empty());
}

#[test]
fn future_start_waits_for_its_revision() {
    let f = fixture();
    let now = f.kv.rev();
    let (mut ws, mut rx) = f.hub.new_watch_stream();
    ws.watch(AUTO_WATCH_ID, b"k", b"", now + 3, Filters::default())
        .unwrap();
    f.put("k", "1");
    f.put("k", "2");
    assert!(drain(&mut rx).is_empty());
    f.put("k", "3");
    assert_eq!(events(&drain(&mut rx)), [("k".into(), now + 3, false)]);
}

#[test]
fn background_loop_catches_up_and_stops_with_the_last_handle() {
    let f = fixture();
    let first = f.rev_after_puts(3);
    let hub = WatchableStore::new(f.kv.clone()).unwrap();
    let (mut ws, mut rx) = hub.new_watch_stream();
    ws.watch(AUTO_WATCH_ID, b"k", b"", first, Filters::default())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let got = loop {
        if let Ok(r) = rx.try_recv() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no catch-up response");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(got.events.len(), 3);
    let weak = Arc::downgrade(&hub.inner);
    drop(ws);
    drop(hub);
    while weak.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "sync thread kept the store"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn closed_resolves_after_close() {
    let f = fixture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let early = tokio::time::timeout(Duration::from_millis(20), f.hub.closed()).await;
        assert!(early.is_err(), "not closed yet");
        f.hub.close();
        tokio::time::timeout(Duration::from_secs(5), f.hub.closed())
            .await
            .expect("closed after close");
    });
}
