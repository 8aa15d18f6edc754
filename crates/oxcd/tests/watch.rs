//! The Watch service, black-box: the real `etcdctl watch` (plain,
//! `--rev`, `--prefix`, `--prev-kv`, interactive) and the `etcd-client`
//! crate (bursts, slow readers, compaction, ids, filters, progress).
//!
//! Every expectation was checked against etcd 3.4.23
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{bounded, Member, ETCDCTL};
use etcd_client::{
    Client, CompactionOptions, EventType, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Bound for one expected watch message or output line.
const STEP: Duration = Duration::from_secs(15);

/// A long-running `etcdctl watch`, killed on drop.
struct CtlWatch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stdin: Option<tokio::process::ChildStdin>,
}

impl CtlWatch {
    fn spawn(m: &Member, args: &[&str]) -> CtlWatch {
        let mut cmd = tokio::process::Command::new(ETCDCTL);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", m.endpoint()))
            .arg("--dial-timeout=3s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("piped stdout");
        CtlWatch {
            stdin: child.stdin.take(),
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next `n` lines of output.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = tokio::time::timeout(STEP, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no output after {out:?}"))
                .expect("read etcdctl output")
                .unwrap_or_else(|| panic!("etcdctl exited after {out:?}"));
            out.push(line);
        }
        out
    }

    /// Types one line into `watch -i`, keeping stdin open.
    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write etcdctl stdin");
        stdin.flush().await.expect("flush etcdctl stdin");
    }
}

impl Drop for CtlWatch {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn next(ws: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(STEP, ws.message())
        .await
        .expect("watch message in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

fn rev(r: &WatchResponse) -> i64 {
    r.header().expect("header").revision()
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    let r = c.put(k, v, None).await.expect("put");
    r.header().expect("header").revision()
}

/// `(type, key, value, mod_revision)` of each event.
fn evs(r: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            (
                e.event_type(),
                kv.key_str().expect("utf-8 key").to_string(),
                kv.value_str().expect("utf-8 value").to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

#[tokio::test]
async fn etcdctl_watch_rev_and_prev_kv() {
    bounded(async {
        let m = Member::start().await;
        m.etcdctl(&["put", "foo", "bar"]).await.ok();
        m.etcdctl(&["put", "foo", "baz"]).await.ok();
        m.etcdctl(&["del", "foo"]).await.ok();
        let mut w = CtlWatch::spawn(&m, &["watch", "foo", "--rev", "1", "--prev-kv"]);
        // With --prev-kv the previous kv is printed before the new one; a
        // delete's kv has an empty value.
        let want = [
            "PUT", "foo", "bar", //
            "PUT", "foo", "bar", "foo", "baz", //
            "DELETE", "foo", "baz", "foo", "",
        ];
        assert_eq!(w.lines(want.len()).await, want);

        let mut w = CtlWatch::spawn(&m, &["watch", "foo", "--rev", "3", "-w", "json"]);
        let j: serde_json::Value = serde_json::from_str(&w.lines(1).await[0]).expect("json");
        assert_eq!(
            j["Header"]["revision"], 4,
            "catch-up header: store revision"
        );
        assert_eq!(j["Events"].as_array().map(Vec::len), Some(2), "{j}");
        assert_eq!(j["Events"][1]["type"], 1);
        assert_eq!(j["Events"][1]["kv"]["mod_revision"], 4);
        assert_eq!(j["Events"][1]["kv"]["value"], serde_json::Value::Null);
    })
    .await;
}

#[tokio::test]
async fn etcdctl_watch_prefix_and_range() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let r0 = put(&mut c, "key0", "old").await;
        let from = (r0 + 1).to_string();
        let mut prefix = CtlWatch::spawn(&m, &["watch", "key", "--prefix", "--rev", &from]);
        let mut range = CtlWatch::spawn(&m, &["watch", "key1", "key3", "--rev", "1"]);
        put(&mut c, "key1", "one").await;
        put(&mut c, "key2", "two").await;
        put(&mut c, "key3", "three").await;
        put(&mut c, "other", "x").await;
        put(&mut c, "key4", "four").await;
        assert_eq!(
            range.lines(6).await,
            ["PUT", "key1", "one", "PUT", "key2", "two"]
        );
        assert_eq!(
            prefix.lines(12).await,
            [
                "PUT", "key1", "one", "PUT", "key2", "two", //
                "PUT", "key3", "three", "PUT", "key4", "four"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn etcdctl_watch_interactive() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let r = put(&mut c, "a", "1").await;
        let mut w = CtlWatch::spawn(&m, &["watch", "-i"]);
        w.type_line("watch a --rev 1").await;
        assert_eq!(w.lines(3).await, ["PUT", "a", "1"]);
        w.type_line(&format!("watch b --prefix --rev {}", r + 1))
            .await;
        // Both watchers now run in the same etcdctl process.
        put(&mut c, "b/x", "2").await;
        assert_eq!(w.lines(3).await, ["PUT", "b/x", "2"]);
        put(&mut c, "a", "3").await;
        assert_eq!(w.lines(3).await, ["PUT", "a", "3"]);
    })
    .await;
}

#[tokio::test]
async fn burst_of_10k_writes_seen_once_in_order() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut ws = c
            .watch("burst/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        let created = next(&mut ws).await;
        assert!(created.created());
        let start = rev(&created) + 1;

        const WRITERS: usize = 32;
        const TOTAL: usize = 10_000;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..TOTAL).step_by(WRITERS) {
                    c.put(format!("burst/{i}"), format!("v{i}"), None)
                        .await
                        .expect("put");
                }
            }));
        }
        let mut revs = Vec::with_capacity(TOTAL);
        while revs.len() < TOTAL {
            let r = next(&mut ws).await;
            let events = evs(&r);
            assert!(!events.is_empty(), "unexpected empty response {r:?}");
            assert!(
                events.iter().all(|e| e.3 == rev(&r)),
                "live header revision is the write's"
            );
            revs.extend(events.iter().map(|e| e.3));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
        let want: Vec<i64> = (start..start + TOTAL as i64).collect();
        assert_eq!(revs, want, "every write exactly once, in order");
    })
    .await;
}

#[tokio::test]
async fn slow_watcher_still_gets_everything() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut ws = c
            .watch("slow/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        let start = rev(&next(&mut ws).await) + 1;
        // ~6 MiB of events while nobody reads: far more than the HTTP/2
        // windows and the server's per-stream buffer hold.
        const N: usize = 3000;
        let value = "x".repeat(2048);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (mut c, value) = (c.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                for i in (w..N).step_by(8) {
                    c.put(format!("slow/{i}"), value.as_str(), None)
                        .await
                        .expect("put");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer task");
        }
        let mut revs = Vec::with_capacity(N);
        while revs.len() < N {
            revs.extend(evs(&next(&mut ws).await).iter().map(|e| e.3));
        }
        assert_eq!(revs, (start..start + N as i64).collect::<Vec<_>>());
        // And the watcher is live again afterwards.
        let r = put(&mut c, "slow/last", "v").await;
        assert_eq!(evs(&next(&mut ws).await)[0].3, r);
    })
    .await;
}

#[tokio::test]
async fn watch_from_compacted_revision_is_cancelled() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let r1 = put(&mut c, "k", "1").await;
        put(&mut c, "k", "2").await;
        let r3 = put(&mut c, "k", "3").await;
        c.compact(r3, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact");
        let mut ws = c
            .watch("k", Some(WatchOptions::new().with_start_revision(r1)))
            .await
            .expect("watch");
        let created = next(&mut ws).await;
        assert!(created.created() && !created.canceled());
        assert_eq!(rev(&created), r3);
        let cancel = next(&mut ws).await;
        assert!(cancel.canceled(), "{cancel:?}");
        assert_eq!(cancel.compact_revision(), r3);
        assert_eq!(cancel.watch_id(), created.watch_id());
        assert_eq!(rev(&cancel), 0, "compaction notice has header revision 0");
        assert!(cancel.events().is_empty());

        // Exactly at the compact revision is fine.
        ws.watch("k", Some(WatchOptions::new().with_start_revision(r3)))
            .await
            .expect("watch");
        assert!(next(&mut ws).await.created());
        let got = next(&mut ws).await;
        assert_eq!(evs(&got), [(EventType::Put, "k".into(), "3".into(), r3)]);
    })
    .await;
}

#[tokio::test]
async fn watch_ids_cancel_and_errors() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let cur = put(&mut c, "x", "0").await;
        let mut ws = c.watch("a", None).await.expect("watch");
        let first = next(&mut ws).await;
        assert_eq!(
            (first.watch_id(), first.created(), rev(&first)),
            (0, true, cur)
        );

        let ids = WatchOptions::new().with_watch_id(2);
        ws.watch("a", Some(ids)).await.expect("watch");
        assert_eq!(next(&mut ws).await.watch_id(), 2);
        ws.watch("a", None).await.expect("watch");
        assert_eq!(next(&mut ws).await.watch_id(), 1, "auto ids count from 0");
        ws.watch("a", None).await.expect("watch");
        assert_eq!(next(&mut ws).await.watch_id(), 3, "auto ids skip used ones");
        ws.watch("a", Some(WatchOptions::new().with_watch_id(-1)))
            .await
            .expect("watch");
        let neg = next(&mut ws).await;
        assert!(neg.created() && !neg.canceled());
        assert_eq!(neg.watch_id(), -1, "-1 is accepted as an explicit id");

        ws.watch("a", Some(WatchOptions::new().with_watch_id(2)))
            .await
            .expect("watch");
        let dup = next(&mut ws).await;
        assert!(dup.created() && dup.canceled());
        assert_eq!(dup.watch_id(), -1);
        assert_eq!(
            dup.cancel_reason(),
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        ws.watch("b", Some(WatchOptions::new().with_range("a")))
            .await
            .expect("watch");
        let empty = next(&mut ws).await;
        assert!(empty.created() && empty.canceled());
        assert_eq!(empty.watch_id(), -1);
        assert_eq!(empty.cancel_reason(), "mvcc: watcher range is empty");

        ws.cancel(2).await.expect("cancel");
        let cancelled = next(&mut ws).await;
        assert_eq!((cancelled.watch_id(), cancelled.canceled()), (2, true));
        assert!(!cancelled.created());
        assert_eq!(rev(&cancelled), cur);
        // Unknown ids get no reply: the next message is the progress reply.
        ws.cancel(77).await.expect("cancel");
        ws.request_progress().await.expect("progress");
        let progress = next(&mut ws).await;
        assert_eq!(progress.watch_id(), -1);
        assert!(!progress.canceled() && !progress.created());

        // Watchers 0, 1, 3 and -1 are on "a"; a put reaches each once.
        let r = put(&mut c, "a", "v").await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let got = next(&mut ws).await;
            assert_eq!(rev(&got), r);
            seen.push(got.watch_id());
        }
        seen.sort_unstable();
        assert_eq!(seen, [-1, 0, 1, 3]);
    })
    .await;
}

#[tokio::test]
async fn filters_and_prev_kv() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let no_put = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut])
            .with_prev_key();
        let mut deletes = c.watch("f/", Some(no_put)).await.expect("watch");
        next(&mut deletes).await;
        let no_del = WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoDelete]);
        let mut puts = c.watch("f/", Some(no_del)).await.expect("watch");
        next(&mut puts).await;

        let r1 = put(&mut c, "f/1", "one").await;
        c.delete("f/1", None).await.expect("delete");
        let r3 = put(&mut c, "f/2", "two").await;

        let got = next(&mut puts).await;
        assert_eq!(
            evs(&got),
            [(EventType::Put, "f/1".into(), "one".into(), r1)]
        );
        let got = next(&mut puts).await;
        assert_eq!(
            evs(&got),
            [(EventType::Put, "f/2".into(), "two".into(), r3)]
        );

        let got = next(&mut deletes).await;
        assert_eq!(
            evs(&got),
            [(EventType::Delete, "f/1".into(), String::new(), r1 + 1)]
        );
        let prev = got.events()[0].prev_kv().expect("prev_kv of the delete");
        assert_eq!((prev.value(), prev.mod_revision()), (&b"one"[..], r1));
    })
    .await;
}

#[tokio::test]
async fn progress_request_answers_at_once() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut ws = c.watch("p", None).await.expect("watch");
        next(&mut ws).await;
        let r = put(&mut c, "other", "v").await;
        ws.request_progress().await.expect("progress");
        let got = next(&mut ws).await;
        assert_eq!(got.watch_id(), -1);
        assert_eq!(rev(&got), r);
        assert!(got.events().is_empty() && !got.canceled() && !got.created());
    })
    .await;
}

#[tokio::test]
async fn txn_events_share_one_message() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let mut ws = c
            .watch("t/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        next(&mut ws).await;
        put(&mut c, "t/c", "0").await;
        next(&mut ws).await;
        let txn = etcd_client::Txn::new().and_then([
            etcd_client::TxnOp::put("t/a", "1", None),
            etcd_client::TxnOp::put("t/b", "2", None),
            etcd_client::TxnOp::delete("t/c", None),
        ]);
        let r = c.txn(txn).await.expect("txn");
        let r = r.header().expect("header").revision();
        let got = next(&mut ws).await;
        let types: Vec<(EventType, String, i64)> =
            evs(&got).into_iter().map(|e| (e.0, e.1, e.3)).collect();
        assert_eq!(
            types,
            [
                (EventType::Put, "t/a".into(), r),
                (EventType::Put, "t/b".into(), r),
                (EventType::Delete, "t/c".into(), r)
            ]
        );
    })
    .await;
}
