//! The KV API as the real `etcdctl` (3.4) sees it: exact output text,
//! `-w json` fields and error lines, against a single member.
//!
//! Every expectation was checked against etcd 3.4.23
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`). etcdctl 3.4 has no `--count-only`
//! (that flag is 3.5), so `count` is checked through `-w json` here and
//! through `count_only` in `kv_client.rs`.

mod common;

use common::{b64, bounded, Member};
use serde_json::Value;

fn rev(j: &Value) -> i64 {
    j["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {j}"))
}

/// Field `name` of the `idx`-th kv; missing numeric fields are 0 (omitted).
fn kv_field(j: &Value, idx: usize, name: &str) -> Value {
    j["kvs"][idx][name].clone()
}

#[tokio::test]
async fn put_get_simple_and_json() {
    bounded(async {
        let m = Member::start().await;
        assert_eq!(m.etcdctl(&["put", "foo", "bar"]).await.ok(), "OK\n");
        assert_eq!(m.etcdctl(&["get", "foo"]).await.ok(), "foo\nbar\n");

        let j = m.etcdctl(&["get", "foo", "-w", "json"]).await.json();
        // An empty store is at revision 1; the first write makes it 2.
        assert_eq!(rev(&j), 2);
        assert!(j["header"]["cluster_id"].as_u64().unwrap() != 0, "{j}");
        assert!(j["header"]["member_id"].as_u64().unwrap() != 0, "{j}");
        assert!(j["header"]["raft_term"].as_u64().unwrap() >= 1, "{j}");
        assert_eq!(j["count"], 1);
        assert_eq!(j["kvs"].as_array().unwrap().len(), 1);
        assert_eq!(kv_field(&j, 0, "key"), b64(b"foo"));
        assert_eq!(kv_field(&j, 0, "value"), b64(b"bar"));
        assert_eq!(kv_field(&j, 0, "create_revision"), 2);
        assert_eq!(kv_field(&j, 0, "mod_revision"), 2);
        assert_eq!(kv_field(&j, 0, "version"), 1);
        assert_eq!(kv_field(&j, 0, "lease"), Value::Null, "lease 0 is omitted");

        // A second put keeps create_revision and bumps version.
        let j = m.etcdctl(&["put", "foo", "baz", "-w", "json"]).await.json();
        assert_eq!(rev(&j), 3);
        let j = m.etcdctl(&["get", "foo", "-w", "json"]).await.json();
        assert_eq!(kv_field(&j, 0, "create_revision"), 2);
        assert_eq!(kv_field(&j, 0, "mod_revision"), 3);
        assert_eq!(kv_field(&j, 0, "version"), 2);
        assert_eq!(kv_field(&j, 0, "value"), b64(b"baz"));

        // A missing key prints nothing; in JSON, kvs and count are omitted.
        assert_eq!(m.etcdctl(&["get", "nope"]).await.ok(), "");
        let j = m.etcdctl(&["get", "nope", "-w", "json"]).await.json();
        assert_eq!(rev(&j), 3);
        assert_eq!(j["kvs"], Value::Null, "{j}");
        assert_eq!(j["count"], Value::Null, "{j}");

        // Empty values are allowed.
        assert_eq!(m.etcdctl(&["put", "empty", ""]).await.ok(), "OK\n");
        assert_eq!(m.etcdctl(&["get", "empty"]).await.ok(), "empty\n\n");
    })
    .await;
}

async fn abc_foo(m: &Member) {
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("foo", "bar")] {
        assert_eq!(m.etcdctl(&["put", k, v]).await.ok(), "OK\n");
    }
}

#[tokio::test]
async fn get_range_options() {
    bounded(async {
        let m = Member::start().await;
        abc_foo(&m).await; // revisions 2..=5

        assert_eq!(m.etcdctl(&["get", "a", "--prefix"]).await.ok(), "a\n1\n");
        assert_eq!(
            m.etcdctl(&["get", "f", "--prefix"]).await.ok(),
            "foo\nbar\n"
        );
        assert_eq!(
            m.etcdctl(&["get", "b", "--from-key"]).await.ok(),
            "b\n2\nc\n3\nfoo\nbar\n"
        );
        // Explicit range_end: half-open [a, c).
        assert_eq!(m.etcdctl(&["get", "a", "c"]).await.ok(), "a\n1\nb\n2\n");
        // range_end <= key is an empty result, not an error.
        assert_eq!(m.etcdctl(&["get", "c", "a"]).await.ok(), "");
        // Empty prefix / from-key "" mean the whole keyspace.
        assert_eq!(
            m.etcdctl(&["get", "", "--prefix", "--keys-only"])
                .await
                .ok(),
            "a\n\nb\n\nc\n\nfoo\n\n"
        );
        assert_eq!(
            m.etcdctl(&["get", "", "--from-key", "--limit", "2"])
                .await
                .ok(),
            "a\n1\nb\n2\n"
        );

        // limit: more is set and count is the whole range.
        let j = m
            .etcdctl(&["get", "a", "--from-key", "--limit", "2", "-w", "json"])
            .await
            .json();
        assert_eq!(j["kvs"].as_array().unwrap().len(), 2);
        assert_eq!(j["more"], true);
        assert_eq!(j["count"], 4);
        let j = m
            .etcdctl(&["get", "a", "--from-key", "--limit", "4", "-w", "json"])
            .await
            .json();
        assert_eq!(j["more"], Value::Null, "more=false is omitted: {j}");
        assert_eq!(j["count"], 4);

        assert_eq!(
            m.etcdctl(&["get", "a", "--from-key", "--keys-only"])
                .await
                .ok(),
            "a\n\nb\n\nc\n\nfoo\n\n"
        );
        assert_eq!(
            m.etcdctl(&["get", "a", "--from-key", "--print-value-only"])
                .await
                .ok(),
            "1\n2\n3\nbar\n"
        );
        let j = m
            .etcdctl(&["get", "a", "--keys-only", "-w", "json"])
            .await
            .json();
        assert_eq!(kv_field(&j, 0, "key"), b64(b"a"));
        assert_eq!(kv_field(&j, 0, "value"), Value::Null, "{j}");
    })
    .await;
}

#[tokio::test]
async fn get_at_revision() {
    bounded(async {
        let m = Member::start().await;
        abc_foo(&m).await; // revisions 2..=5
        assert_eq!(m.etcdctl(&["put", "a", "11"]).await.ok(), "OK\n"); // 6
        assert_eq!(m.etcdctl(&["del", "b"]).await.ok(), "1\n"); // 7

        assert_eq!(m.etcdctl(&["get", "a", "--rev=2"]).await.ok(), "a\n1\n");
        assert_eq!(m.etcdctl(&["get", "a", "--rev=6"]).await.ok(), "a\n11\n");
        assert_eq!(m.etcdctl(&["get", "a", "--rev=1"]).await.ok(), "");
        assert_eq!(
            m.etcdctl(&["get", "a", "--from-key", "--rev=6", "--keys-only"])
                .await
                .ok(),
            "a\n\nb\n\nc\n\nfoo\n\n"
        );
        assert_eq!(
            m.etcdctl(&["get", "a", "--from-key", "--keys-only"])
                .await
                .ok(),
            "a\n\nc\n\nfoo\n\n"
        );
        // A past-revision read still reports the current revision.
        let j = m
            .etcdctl(&["get", "a", "--rev=3", "-w", "json"])
            .await
            .json();
        assert_eq!(rev(&j), 7);
        assert_eq!(kv_field(&j, 0, "value"), b64(b"1"));

        assert_eq!(
            m.etcdctl(&["get", "a", "--rev=8"]).await.err(),
            "Error: etcdserver: mvcc: required revision is a future revision"
        );
    })
    .await;
}

#[tokio::test]
async fn get_sorted() {
    bounded(async {
        let m = Member::start().await;
        // Key order a<b<c, create order c,b,a; value order differs from both.
        for (k, v) in [("c", "x"), ("b", "z"), ("a", "y")] {
            m.etcdctl(&["put", k, v]).await.ok();
        }
        m.etcdctl(&["put", "c", "w"]).await.ok(); // c: version 2, newest mod
        let keys = |out: &str| -> Vec<String> {
            out.lines()
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let get = |extra: &'static [&'static str]| {
            let mut args = vec!["get", "a", "--from-key"];
            args.extend_from_slice(extra);
            let m = &m;
            async move { m.etcdctl(&args).await.ok().to_string() }
        };
        assert_eq!(
            keys(&get(&["--sort-by=KEY", "--order=DESCEND"]).await),
            ["c", "b", "a"]
        );
        assert_eq!(keys(&get(&["--order=DESCEND"]).await), ["c", "b", "a"]);
        assert_eq!(keys(&get(&["--sort-by=CREATE"]).await), ["c", "b", "a"]);
        assert_eq!(
            keys(&get(&["--sort-by=CREATE", "--order=DESCEND"]).await),
            ["a", "b", "c"]
        );
        assert_eq!(
            keys(&get(&["--sort-by=MODIFY", "--order=DESCEND"]).await),
            ["c", "a", "b"]
        );
        assert_eq!(
            keys(&get(&["--sort-by=MODIFY", "--order=ASCEND"]).await),
            ["b", "a", "c"]
        );
        assert_eq!(keys(&get(&["--sort-by=VALUE"]).await), ["c", "a", "b"]);
        assert_eq!(
            keys(&get(&["--sort-by=VALUE", "--order=DESCEND"]).await),
            ["b", "a", "c"]
        );
        assert_eq!(
            keys(&get(&["--sort-by=VERSION", "--order=DESCEND", "--limit=1"]).await),
            ["c"]
        );
        // The limit applies after sorting.
        assert_eq!(
            get(&["--sort-by=MODIFY", "--order=DESCEND", "--limit=2"]).await,
            "c\nw\na\ny\n"
        );
    })
    .await;
}

#[tokio::test]
async fn del_variants() {
    bounded(async {
        let m = Member::start().await;
        abc_foo(&m).await; // revisions 2..=5
        for (k, v) in [("p1", "x"), ("p2", "y"), ("q", "z")] {
            m.etcdctl(&["put", k, v]).await.ok(); // 6..=8
        }
        assert_eq!(m.etcdctl(&["del", "nokey"]).await.ok(), "0\n");
        // Deleting nothing does not move the revision.
        let j = m.etcdctl(&["del", "nokey", "-w", "json"]).await.json();
        assert_eq!(rev(&j), 8);
        assert_eq!(j["deleted"], Value::Null, "deleted 0 is omitted: {j}");

        assert_eq!(m.etcdctl(&["del", "a"]).await.ok(), "1\n"); // 9
        assert_eq!(
            m.etcdctl(&["del", "b", "--prev-kv"]).await.ok(),
            "1\nb\n2\n"
        ); // 10
        assert_eq!(m.etcdctl(&["del", "p", "--prefix"]).await.ok(), "2\n"); // 11
        let j = m
            .etcdctl(&["del", "c", "g", "--prev-kv", "-w", "json"])
            .await
            .json(); // 12: [c, g) holds c and foo
        assert_eq!(rev(&j), 12);
        assert_eq!(j["deleted"], 2);
        let prev = j["prev_kvs"].as_array().unwrap();
        assert_eq!(prev.len(), 2);
        assert_eq!(prev[0]["key"], b64(b"c"));
        assert_eq!(prev[0]["value"], b64(b"3"));
        assert_eq!(prev[0]["mod_revision"], 4);
        assert_eq!(prev[1]["key"], b64(b"foo"));
        assert_eq!(m.etcdctl(&["get", "", "--prefix"]).await.ok(), "q\nz\n");

        // A deleted key comes back as a new generation.
        m.etcdctl(&["put", "a", "again"]).await.ok(); // 13
        let j = m.etcdctl(&["get", "a", "-w", "json"]).await.json();
        assert_eq!(kv_field(&j, 0, "create_revision"), 13);
        assert_eq!(kv_field(&j, 0, "version"), 1);
        // `del --from-key` with "" clears everything.
        assert_eq!(m.etcdctl(&["del", "", "--from-key"]).await.ok(), "2\n");
    })
    .await;
}

#[tokio::test]
async fn put_prev_kv_and_ignore_flags() {
    bounded(async {
        let m = Member::start().await;
        // No previous kv: only OK.
        assert_eq!(
            m.etcdctl(&["put", "foo", "bar", "--prev-kv"]).await.ok(),
            "OK\n"
        );
        assert_eq!(
            m.etcdctl(&["put", "foo", "baz", "--prev-kv"]).await.ok(),
            "OK\nfoo\nbar\n"
        );
        let j = m
            .etcdctl(&["put", "foo", "qux", "--prev-kv", "-w", "json"])
            .await
            .json();
        assert_eq!(rev(&j), 4);
        assert_eq!(j["prev_kv"]["value"], b64(b"baz"));
        assert_eq!(j["prev_kv"]["version"], 2);

        // --ignore-value keeps the value and still makes a new revision.
        assert_eq!(
            m.etcdctl(&["put", "foo", "--ignore-value"]).await.ok(),
            "OK\n"
        );
        let j = m.etcdctl(&["get", "foo", "-w", "json"]).await.json();
        assert_eq!(kv_field(&j, 0, "value"), b64(b"qux"));
        assert_eq!(kv_field(&j, 0, "mod_revision"), 5);
        assert_eq!(kv_field(&j, 0, "version"), 4);

        assert_eq!(
            m.etcdctl(&["put", "missing", "--ignore-value"]).await.err(),
            "Error: etcdserver: key not found"
        );
        assert_eq!(
            m.etcdctl(&["put", "missing", "v", "--ignore-lease"])
                .await
                .err(),
            "Error: etcdserver: key not found"
        );
        // The failed puts did not write anything.
        assert_eq!(m.etcdctl(&["get", "missing"]).await.ok(), "");
        assert_eq!(
            m.etcdctl(&["put", "foo", "new", "--ignore-lease"])
                .await
                .ok(),
            "OK\n"
        );
        assert_eq!(
            m.etcdctl(&["get", "foo", "--print-value-only"]).await.ok(),
            "new\n"
        );
        let j = m.etcdctl(&["get", "foo", "-w", "json"]).await.json();
        assert_eq!(rev(&j), 6);
    })
    .await;
}

#[tokio::test]
async fn empty_key_is_rejected() {
    bounded(async {
        let m = Member::start().await;
        for args in [&["put", "", "x"][..], &["get", ""], &["del", ""]] {
            assert_eq!(
                m.etcdctl(args).await.err(),
                "Error: etcdserver: key is not provided",
                "etcdctl {args:?}"
            );
        }
    })
    .await;
}

/// etcdctl's interactive prompts go to stdout before the result.
const TXN_PROMPTS: &str =
    "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

#[tokio::test]
async fn txn_interactive() {
    bounded(async {
        let m = Member::start().await;
        m.etcdctl(&["put", "foo", "bar"]).await.ok(); // 2
        m.etcdctl(&["put", "c", "3"]).await.ok(); // 3

        let out = m
            .etcdctl_stdin(
                &["txn", "-i"],
                "value(\"foo\") = \"bar\"\n\nput foo won\nget foo\n\nput foo lost\n\n",
            )
            .await;
        assert_eq!(out.ok(), format!("{TXN_PROMPTS}SUCCESS\n\nOK\n\nfoo\nwon\n"));

        // mod("foo") is now 4, so the compare fails and the else branch runs.
        let out = m
            .etcdctl_stdin(
                &["txn", "-i"],
                "mod(\"foo\") < \"4\"\n\nput foo never\n\ndel c\nget foo\n\n",
            )
            .await;
        assert_eq!(out.ok(), format!("{TXN_PROMPTS}FAILURE\n\n1\n\nfoo\nwon\n"));
        assert_eq!(m.etcdctl(&["get", "c"]).await.ok(), "");

        // Several writes in one txn share one revision.
        let out = m
            .etcdctl_stdin(
                &["txn", "-i", "-w", "json"],
                "create(\"x\") = \"0\"\nversion(\"foo\") = \"2\"\n\nput x 1\nput y 2\ndel foo\n\n\n",
            )
            .await;
        let json_line = out.ok().strip_prefix(TXN_PROMPTS).expect("prompts first");
        let j: Value = serde_json::from_str(json_line.trim()).expect("txn json");
        assert_eq!(j["succeeded"], true);
        assert_eq!(rev(&j), 6);
        let responses = j["responses"].as_array().unwrap();
        assert_eq!(responses.len(), 3);
        assert_eq!(responses[0]["Response"]["ResponsePut"]["header"]["revision"], 6, "{j}");
        assert_eq!(responses[2]["Response"]["ResponseDeleteRange"]["deleted"], 1);
        let j = m.etcdctl(&["get", "x", "z", "-w", "json"]).await.json();
        assert_eq!(kv_field(&j, 0, "mod_revision"), 6);
        assert_eq!(kv_field(&j, 1, "mod_revision"), 6);

        // A read-only txn does not move the revision.
        let out = m
            .etcdctl_stdin(&["txn", "-i", "-w", "json"], "\nget x\n\n\n")
            .await;
        let j: Value =
            serde_json::from_str(out.ok().strip_prefix(TXN_PROMPTS).unwrap().trim()).unwrap();
        assert_eq!(rev(&j), 6);
        assert_eq!(j["succeeded"], true);
    })
    .await;
}

#[tokio::test]
async fn compaction() {
    bounded(async {
        let m = Member::start().await;
        for v in ["v2", "v3", "v4", "v5", "v6"] {
            m.etcdctl(&["put", "k", v]).await.ok(); // revisions 2..=6
        }
        assert_eq!(
            m.etcdctl(&["compact", "4"]).await.ok(),
            "compacted revision 4\n"
        );
        let compacted = "Error: etcdserver: mvcc: required revision has been compacted";
        assert_eq!(m.etcdctl(&["get", "k", "--rev=3"]).await.err(), compacted);
        // The compact revision itself is still readable.
        assert_eq!(m.etcdctl(&["get", "k", "--rev=4"]).await.ok(), "k\nv4\n");
        assert_eq!(m.etcdctl(&["get", "k", "--rev=5"]).await.ok(), "k\nv5\n");
        // Compacting at or below the compact revision again is an error.
        assert_eq!(m.etcdctl(&["compact", "4"]).await.err(), compacted);
        assert_eq!(m.etcdctl(&["compact", "2"]).await.err(), compacted);
        assert_eq!(
            m.etcdctl(&["compact", "100"]).await.err(),
            "Error: etcdserver: mvcc: required revision is a future revision"
        );
        // Compacting at the current revision is allowed; --physical waits.
        assert_eq!(
            m.etcdctl(&["compact", "6", "--physical"]).await.ok(),
            "compacted revision 6\n"
        );
        assert_eq!(m.etcdctl(&["get", "k", "--rev=5"]).await.err(), compacted);
        assert_eq!(m.etcdctl(&["get", "k"]).await.ok(), "k\nv6\n");
        // Compaction does not make a new revision.
        let j = m.etcdctl(&["get", "k", "-w", "json"]).await.json();
        assert_eq!(rev(&j), 6);
    })
    .await;
}

#[tokio::test]
async fn endpoint_and_member_commands() {
    bounded(async {
        let m = Member::start().await;
        m.etcdctl(&["put", "a", "1"]).await.ok();

        let j = m
            .etcdctl(&["endpoint", "status", "-w", "json"])
            .await
            .json();
        let entry = &j[0];
        assert_eq!(entry["Endpoint"], m.endpoint());
        let st = &entry["Status"];
        let member_id = st["header"]["member_id"].as_u64().unwrap();
        assert_ne!(member_id, 0);
        assert_eq!(
            st["leader"].as_u64(),
            Some(member_id),
            "single member leads: {st}"
        );
        assert_eq!(st["header"]["revision"], 2);
        let version = st["version"].as_str().unwrap();
        assert!(version.starts_with("3.4."), "server version {version}");
        assert!(st["dbSize"].as_i64().unwrap() > 0, "{st}");
        assert!(st["raftTerm"].as_u64().unwrap() >= 1, "{st}");
        let raft_index = st["raftIndex"].as_u64().unwrap();
        assert!(raft_index >= 2, "{st}");
        assert_eq!(st["raftAppliedIndex"].as_u64(), Some(raft_index), "{st}");

        let id_hex = format!("{member_id:x}");
        let simple = m.etcdctl(&["endpoint", "status"]).await;
        let prefix = format!("{}, {id_hex}, {version}, ", m.endpoint());
        assert!(simple.ok().starts_with(&prefix), "{simple:#?}");
        assert!(
            simple.ok().ends_with(", \n"),
            "no errors column: {simple:#?}"
        );

        let health = m.etcdctl(&["endpoint", "health"]).await;
        let want = format!(
            "{} is healthy: successfully committed proposal: took = ",
            m.endpoint()
        );
        // etcdctl 3.4 prints the health line on stderr, not stdout.
        assert_eq!(health.ok(), "");
        assert!(health.stderr.starts_with(&want), "{health:#?}");

        assert_eq!(
            m.etcdctl(&["member", "list"]).await.ok(),
            format!(
                "{id_hex}, started, {}, {}, {}, false\n",
                m.name,
                m.peer_url(),
                m.client_url()
            )
        );
        let j = m.etcdctl(&["member", "list", "-w", "json"]).await.json();
        assert_eq!(j["header"]["member_id"].as_u64(), Some(member_id));
        assert_eq!(
            j["header"]["revision"],
            Value::Null,
            "cluster RPCs carry no revision"
        );
        let members = j["members"].as_array().unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0]["ID"].as_u64(), Some(member_id));
        assert_eq!(members[0]["name"], m.name.as_str());
        assert_eq!(members[0]["peerURLs"][0], m.peer_url());
        assert_eq!(members[0]["clientURLs"][0], m.client_url());
        assert_eq!(members[0]["isLearner"], Value::Null);
    })
    .await;
}
