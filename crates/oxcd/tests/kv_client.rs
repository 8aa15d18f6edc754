//! The KV service over gRPC with the `etcd-client` crate: every Range option,
//! `Put` / `DeleteRange` options, Txn compares and validation errors, with
//! their exact gRPC codes and messages (etcd 3.4.23 is the reference).

mod common;

use std::fmt::Debug;

use common::{bounded, grpc_status, Member};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;
use CompareOp::{Equal, Greater, Less, NotEqual};

fn keys(resp: &GetResponse) -> Vec<String> {
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn header_rev(rev: Option<&etcd_client::ResponseHeader>) -> i64 {
    rev.expect("response has a header").revision()
}

/// Asserts that `result` failed with exactly this gRPC code and message.
fn assert_status<T: Debug>(result: Result<T, etcd_client::Error>, code: Code, message: &str) {
    let status = grpc_status(result.expect_err("request must fail"));
    assert_eq!(
        (status.code(), status.message()),
        (code, message),
        "{status:?}"
    );
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let resp = c.put(key, value, None).await.expect("put");
    header_rev(resp.header())
}

async fn get(c: &mut Client, key: impl Into<Vec<u8>>, opts: GetOptions) -> GetResponse {
    c.get(key, Some(opts)).await.expect("get")
}

/// Keys a..d at revisions 2..=5.
async fn abcd(c: &mut Client) {
    for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let want = 2 + i64::try_from(i).expect("small index");
        assert_eq!(put(c, k, &format!("v{k}")).await, want);
    }
}

#[tokio::test]
async fn range_end_forms() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        abcd(&mut c).await;

        let single = get(&mut c, "b", GetOptions::new()).await;
        assert_eq!(keys(&single), ["b"]);
        assert_eq!(single.kvs()[0].value(), b"vb");
        assert_eq!(single.count(), 1);
        assert_eq!(header_rev(single.header()), 5);

        let half_open = get(&mut c, "b", GetOptions::new().with_range("d")).await;
        assert_eq!(keys(&half_open), ["b", "c"]);
        // range_end "\0" means every key >= key.
        let from = get(&mut c, "b", GetOptions::new().with_range(vec![0u8])).await;
        assert_eq!(keys(&from), ["b", "c", "d"]);
        // key "\0" with range_end "\0" is the whole keyspace.
        let all = get(&mut c, vec![0u8], GetOptions::new().with_range(vec![0u8])).await;
        assert_eq!(keys(&all), ["a", "b", "c", "d"]);
        assert_eq!(all.count(), 4);
        // range_end <= key: empty, not an error.
        let backwards = get(&mut c, "c", GetOptions::new().with_range("a")).await;
        assert!(backwards.kvs().is_empty());
        assert_eq!(backwards.count(), 0);
        let equal = get(&mut c, "c", GetOptions::new().with_range("c")).await;
        assert!(equal.kvs().is_empty());
        let missing = get(&mut c, "zz", GetOptions::new()).await;
        assert!(missing.kvs().is_empty());
        assert_eq!((missing.count(), missing.more()), (0, false));

        put(&mut c, "ab", "vab").await;
        let prefix = get(&mut c, "a", GetOptions::new().with_prefix()).await;
        assert_eq!(keys(&prefix), ["a", "ab"]);
        // A prefix ending in 0xff increments the previous byte.
        put(&mut c, "a\u{7f}", "x").await;
        let raw = get(&mut c, vec![b'a', 0xff], GetOptions::new().with_prefix()).await;
        assert!(raw.kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn range_limit_more_count() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        abcd(&mut c).await;

        let r = get(&mut c, "a", GetOptions::new().with_from_key().with_limit(2)).await;
        assert_eq!(keys(&r), ["a", "b"]);
        assert!(r.more());
        assert_eq!(r.count(), 4, "count ignores the limit");
        let r = get(&mut c, "a", GetOptions::new().with_from_key().with_limit(3)).await;
        assert!(r.more());
        let r = get(&mut c, "a", GetOptions::new().with_from_key().with_limit(4)).await;
        assert_eq!(r.kvs().len(), 4);
        assert!(!r.more());
        let r = get(&mut c, "a", GetOptions::new().with_from_key().with_limit(0)).await;
        assert_eq!(r.kvs().len(), 4);
        assert!(!r.more());
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_limit(-1),
        )
        .await;
        assert_eq!(r.kvs().len(), 4, "a negative limit means no limit");

        // count is taken before the min/max filters.
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_min_mod_revision(4),
        )
        .await;
        assert_eq!(keys(&r), ["c", "d"]);
        assert_eq!(r.count(), 4);
        let r = get(
            &mut c,
            "a",
            GetOptions::new()
                .with_from_key()
                .with_min_mod_revision(3)
                .with_limit(1),
        )
        .await;
        assert_eq!(keys(&r), ["b"]);
        assert!(r.more());

        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_count_only(),
        )
        .await;
        assert!(r.kvs().is_empty());
        assert_eq!(r.count(), 4);
        assert!(!r.more());
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_keys_only(),
        )
        .await;
        assert_eq!(keys(&r), ["a", "b", "c", "d"]);
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));
        assert_eq!(r.kvs()[3].mod_revision(), 5, "keys_only keeps the metadata");
        assert_eq!(r.kvs()[3].version(), 1);
        let r = get(&mut c, "b", GetOptions::new().with_serializable()).await;
        assert_eq!(r.kvs()[0].value(), b"vb");
        assert_eq!(header_rev(r.header()), 5);
    })
    .await;
}

#[tokio::test]
async fn range_min_max_revision_filters() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        abcd(&mut c).await; // a..d created at 2..=5
        put(&mut c, "a", "va2").await; // a: create 2, mod 6
        let all = || GetOptions::new().with_all_keys();

        let r = get(&mut c, vec![0u8], all().with_min_mod_revision(5)).await;
        assert_eq!(keys(&r), ["a", "d"]);
        let r = get(&mut c, vec![0u8], all().with_max_mod_revision(3)).await;
        assert_eq!(keys(&r), ["b"]);
        let r = get(
            &mut c,
            vec![0u8],
            all().with_min_mod_revision(3).with_max_mod_revision(4),
        )
        .await;
        assert_eq!(keys(&r), ["b", "c"]);
        let r = get(&mut c, vec![0u8], all().with_min_create_revision(4)).await;
        assert_eq!(keys(&r), ["c", "d"]);
        let r = get(&mut c, vec![0u8], all().with_max_create_revision(2)).await;
        assert_eq!(keys(&r), ["a"]);
        assert_eq!(r.count(), 4);
        let r = get(
            &mut c,
            vec![0u8],
            all()
                .with_min_create_revision(3)
                .with_max_create_revision(3),
        )
        .await;
        assert_eq!(keys(&r), ["b"]);
    })
    .await;
}

#[tokio::test]
async fn range_at_revision() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        abcd(&mut c).await;
        put(&mut c, "a", "va2").await; // 6
        c.delete("b", None).await.expect("delete"); // 7

        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_revision(3),
        )
        .await;
        assert_eq!(keys(&r), ["a", "b"]);
        assert_eq!(r.kvs()[0].value(), b"va");
        assert_eq!(header_rev(r.header()), 7, "header is the current revision");
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_revision(6),
        )
        .await;
        assert_eq!(keys(&r), ["a", "b", "c", "d"]);
        assert_eq!(r.kvs()[0].value(), b"va2");
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_revision(7),
        )
        .await;
        assert_eq!(keys(&r), ["a", "c", "d"]);
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_revision(1),
        )
        .await;
        assert!(r.kvs().is_empty());
        let r = get(
            &mut c,
            "a",
            GetOptions::new().with_from_key().with_revision(-5),
        )
        .await;
        assert_eq!(r.kvs().len(), 3, "revision <= 0 means current");

        assert_status(
            c.get("a", Some(GetOptions::new().with_revision(8))).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
    })
    .await;
}

#[tokio::test]
async fn range_sorting() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        // Key order a<b<c; create order c,b,a; value order c<a<b.
        put(&mut c, "c", "x").await; // 2
        put(&mut c, "b", "z").await; // 3
        put(&mut c, "a", "y").await; // 4
        put(&mut c, "c", "w").await; // 5: c has version 2 and the newest mod
        let sorted = |target, order| GetOptions::new().with_from_key().with_sort(target, order);
        let cases = [
            (SortTarget::Key, SortOrder::None, ["a", "b", "c"]),
            (SortTarget::Key, SortOrder::Ascend, ["a", "b", "c"]),
            (SortTarget::Key, SortOrder::Descend, ["c", "b", "a"]),
            (SortTarget::Create, SortOrder::Ascend, ["c", "b", "a"]),
            (SortTarget::Create, SortOrder::Descend, ["a", "b", "c"]),
            (SortTarget::Mod, SortOrder::Ascend, ["b", "a", "c"]),
            (SortTarget::Mod, SortOrder::Descend, ["c", "a", "b"]),
            (SortTarget::Value, SortOrder::Ascend, ["c", "a", "b"]),
            (SortTarget::Value, SortOrder::Descend, ["b", "a", "c"]),
            // Order NONE with another target sorts ascending on that target.
            (SortTarget::Mod, SortOrder::None, ["b", "a", "c"]),
            (SortTarget::Create, SortOrder::None, ["c", "b", "a"]),
            (SortTarget::Value, SortOrder::None, ["c", "a", "b"]),
        ];
        for (target, order, want) in cases {
            let r = get(&mut c, "a", sorted(target, order)).await;
            assert_eq!(keys(&r), want, "{target:?} {order:?}");
        }
        let r = get(&mut c, "a", sorted(SortTarget::Version, SortOrder::Descend)).await;
        assert_eq!(keys(&r)[0], "c");
        // The limit applies after sorting; more and count still hold.
        let r = get(
            &mut c,
            "a",
            sorted(SortTarget::Mod, SortOrder::Descend).with_limit(1),
        )
        .await;
        assert_eq!(keys(&r), ["c"]);
        assert!(r.more());
        assert_eq!(r.count(), 3);
    })
    .await;
}

#[tokio::test]
async fn put_options() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;

        let r = c
            .put("k", "v1", Some(PutOptions::new().with_prev_key()))
            .await
            .expect("put");
        assert!(r.prev_key().is_none());
        assert_eq!(header_rev(r.header()), 2);
        let r = c
            .put("k", "v2", Some(PutOptions::new().with_prev_key()))
            .await
            .expect("put");
        let prev = r.prev_key().expect("prev kv");
        assert_eq!(
            (prev.value(), prev.version(), prev.mod_revision()),
            (&b"v1"[..], 1, 2)
        );

        // ignore_value keeps the value, makes a new revision and version.
        let r = c
            .put("k", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .expect("ignore_value put");
        assert_eq!(header_rev(r.header()), 4);
        let kv = get(&mut c, "k", GetOptions::new()).await.kvs()[0].clone();
        assert_eq!(
            (kv.value(), kv.version(), kv.mod_revision()),
            (&b"v2"[..], 3, 4)
        );
        assert_status(
            c.put("k", "x", Some(PutOptions::new().with_ignore_value()))
                .await,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        );
        assert_status(
            c.put("nokey", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );

        // ignore_lease keeps the attached lease while the value changes.
        let lease = c.lease_grant(60, None).await.expect("lease grant").id();
        c.put("l", "a", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put with lease");
        c.put("l", "b", Some(PutOptions::new().with_ignore_lease()))
            .await
            .expect("ignore_lease put");
        let kv = get(&mut c, "l", GetOptions::new()).await.kvs()[0].clone();
        assert_eq!((kv.value(), kv.lease()), (&b"b"[..], lease));
        c.put("l", "c", None).await.expect("plain put");
        let kv = get(&mut c, "l", GetOptions::new()).await.kvs()[0].clone();
        assert_eq!(kv.lease(), 0, "a plain put detaches the lease");
        assert_status(
            c.put(
                "l",
                "d",
                Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
            )
            .await,
            Code::InvalidArgument,
            "etcdserver: lease is provided",
        );
        assert_status(
            c.put("nokey", "v", Some(PutOptions::new().with_ignore_lease()))
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        assert_status(
            c.put("k", "v", Some(PutOptions::new().with_lease(0x1234_5678)))
                .await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );

        // An empty value is fine; an empty key is not.
        c.put("empty", "", None).await.expect("empty value");
        assert_eq!(
            get(&mut c, "empty", GetOptions::new()).await.kvs()[0].value(),
            b""
        );
        assert_status(
            c.put("", "v", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        assert_status(
            c.get("", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        assert_status(
            c.delete("", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
    })
    .await;
}

#[tokio::test]
async fn delete_range_options() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        abcd(&mut c).await; // 2..=5

        let r = c.delete("zz", None).await.expect("delete nothing");
        assert_eq!(r.deleted(), 0);
        assert_eq!(header_rev(r.header()), 5, "no-op delete keeps the revision");

        let r = c
            .delete(
                "b",
                Some(DeleteOptions::new().with_range("d").with_prev_key()),
            )
            .await
            .expect("delete range");
        assert_eq!(r.deleted(), 2);
        assert_eq!(
            header_rev(r.header()),
            6,
            "one revision for the whole range"
        );
        let prev: Vec<_> = r
            .prev_kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value()))
            .collect();
        assert_eq!(prev, [(&b"b"[..], &b"vb"[..]), (&b"c"[..], &b"vc"[..])]);

        let r = c.delete("a", None).await.expect("delete");
        assert_eq!(r.deleted(), 1);
        assert!(r.prev_kvs().is_empty(), "prev_kvs only when asked");
        let r = c
            .delete("a", Some(DeleteOptions::new().with_from_key()))
            .await
            .expect("delete from key");
        assert_eq!(r.deleted(), 1);
        assert_eq!(header_rev(r.header()), 8);
        let all = get(&mut c, vec![0u8], GetOptions::new().with_all_keys()).await;
        assert!(all.kvs().is_empty());
    })
    .await;
}

#[tokio::test]
async fn txn_compares() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        put(&mut c, "k", "m").await; // 2
        put(&mut c, "k", "m").await; // 3: create 2, mod 3, version 2
        put(&mut c, "k2", "z").await; // 4
        let lease = c.lease_grant(60, None).await.expect("lease").id();
        c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put leased"); // 5

        let cases: Vec<(Compare, bool)> = vec![
            (Compare::value("k", Equal, "m"), true),
            (Compare::value("k", NotEqual, "m"), false),
            (Compare::value("k", Greater, "l"), true),
            (Compare::value("k", Less, "l"), false),
            (Compare::version("k", Equal, 2), true),
            (Compare::version("k", Greater, 2), false),
            (Compare::create_revision("k", Equal, 2), true),
            (Compare::create_revision("k", Less, 3), true),
            (Compare::mod_revision("k", Equal, 3), true),
            (Compare::mod_revision("k", NotEqual, 3), false),
            (Compare::lease("leased", Equal, lease), true),
            (Compare::lease("k", Equal, 0), true),
            (Compare::lease("k", Greater, 0), false),
            // A missing key compares as a zero KV...
            (Compare::version("missing", Equal, 0), true),
            (Compare::create_revision("missing", Equal, 0), true),
            (Compare::mod_revision("missing", Less, 1), true),
            (Compare::lease("missing", Equal, 0), true),
            // ...but a VALUE compare on it is always false.
            (Compare::value("missing", Equal, ""), false),
            (Compare::value("missing", NotEqual, "x"), false),
            // With a range, every key must satisfy the compare.
            (Compare::version("k", Greater, 0).with_prefix(), true),
            (Compare::version("k", Equal, 2).with_prefix(), false),
            (Compare::value("a", Greater, "a").with_range("l"), true),
            (Compare::value("k", Equal, "m").with_range("k2"), true),
            (Compare::value("k", Equal, "m").with_range("k3"), false),
            (Compare::value("q", Equal, "m").with_range("r"), false),
        ];
        for (cmp, want) in cases {
            let r = c
                .txn(Txn::new().when([cmp.clone()]))
                .await
                .expect("compare-only txn");
            assert_eq!(r.succeeded(), want, "{cmp:?}");
            assert_eq!(
                header_rev(r.header()),
                5,
                "read-only txn keeps the revision"
            );
        }

        // Compares are ANDed; an empty compare list succeeds.
        let r = c
            .txn(Txn::new().when([
                Compare::value("k", Equal, "m"),
                Compare::version("k2", Equal, 7),
            ]))
            .await
            .expect("txn");
        assert!(!r.succeeded());
        let r = c.txn(Txn::new()).await.expect("empty txn");
        assert!(r.succeeded());
        assert!(r.op_responses().is_empty());
    })
    .await;
}

#[tokio::test]
async fn txn_branches_nested_and_one_revision() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        put(&mut c, "k", "v").await; // 2

        let txn = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v")])
            .and_then([
                TxnOp::put("x", "1", None),
                TxnOp::put("y", "2", None),
                TxnOp::get("x", None),
                TxnOp::delete("k", Some(DeleteOptions::new().with_prev_key())),
            ])
            .or_else([TxnOp::put("never", "1", None)]);
        let r = c.txn(txn).await.expect("txn");
        assert!(r.succeeded());
        assert_eq!(header_rev(r.header()), 3, "a txn is one revision");
        let ops = r.op_responses();
        assert_eq!(ops.len(), 4);
        let TxnOpResponse::Put(p) = &ops[0] else {
            panic!("{ops:?}")
        };
        assert_eq!(header_rev(p.header()), 3);
        let TxnOpResponse::Get(g) = &ops[2] else {
            panic!("{ops:?}")
        };
        assert_eq!(g.kvs()[0].value(), b"1", "a range sees the txn's own put");
        assert_eq!(g.kvs()[0].mod_revision(), 3);
        let TxnOpResponse::Delete(d) = &ops[3] else {
            panic!("{ops:?}")
        };
        assert_eq!((d.deleted(), d.prev_kvs()[0].value()), (1, &b"v"[..]));
        let xy = get(&mut c, "x", GetOptions::new().with_range("z")).await;
        assert!(xy.kvs().iter().all(|kv| kv.mod_revision() == 3));
        assert_eq!(xy.kvs().len(), 2);
        assert!(get(&mut c, "never", GetOptions::new())
            .await
            .kvs()
            .is_empty());

        // Failure branch, with a nested txn inside it.
        let inner = Txn::new()
            .when([Compare::version("x", CompareOp::Equal, 1)])
            .and_then([TxnOp::put("inner", "yes", None)])
            .or_else([TxnOp::put("inner", "no", None)]);
        let outer = Txn::new()
            .when([Compare::version("k", CompareOp::Greater, 0)])
            .and_then([TxnOp::put("never", "1", None)])
            .or_else([TxnOp::put("z", "1", None), TxnOp::txn(inner)]);
        let r = c.txn(outer).await.expect("nested txn");
        assert!(!r.succeeded());
        assert_eq!(header_rev(r.header()), 4);
        let ops = r.op_responses();
        let TxnOpResponse::Txn(nested) = &ops[1] else {
            panic!("{ops:?}")
        };
        assert!(nested.succeeded());
        assert_eq!(nested.op_responses().len(), 1);
        let inner_kv = get(&mut c, "inner", GetOptions::new()).await.kvs()[0].clone();
        assert_eq!(
            (inner_kv.value(), inner_kv.mod_revision()),
            (&b"yes"[..], 4)
        );
        assert_eq!(
            get(&mut c, "z", GetOptions::new()).await.kvs()[0].mod_revision(),
            4
        );

        // A txn whose executed branch changes nothing keeps the revision.
        let r = c
            .txn(Txn::new().and_then([TxnOp::delete("absent", None), TxnOp::get("x", None)]))
            .await
            .expect("no-op txn");
        assert_eq!(header_rev(r.header()), 4);
    })
    .await;
}

#[tokio::test]
async fn txn_validation_errors() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        let puts = |n: usize| -> Vec<TxnOp> {
            (0..n)
                .map(|i| TxnOp::put(format!("k{i}"), "v", None))
                .collect()
        };

        let r = c
            .txn(Txn::new().and_then(puts(128)))
            .await
            .expect("128 ops");
        assert_eq!(header_rev(r.header()), 2);
        let too_many = "etcdserver: too many operations in txn request";
        assert_status(
            c.txn(Txn::new().and_then(puts(129))).await,
            Code::InvalidArgument,
            too_many,
        );
        assert_status(
            c.txn(Txn::new().or_else(puts(129))).await,
            Code::InvalidArgument,
            too_many,
        );
        let compares: Vec<_> = (0..129)
            .map(|i| Compare::version(format!("k{i}"), CompareOp::Equal, 1))
            .collect();
        assert_status(
            c.txn(Txn::new().when(compares)).await,
            Code::InvalidArgument,
            too_many,
        );

        let dup = "etcdserver: duplicate key given in txn request";
        assert_status(
            c.txn(Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]))
                .await,
            Code::InvalidArgument,
            dup,
        );
        assert_status(
            c.txn(Txn::new().and_then([
                TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
                TxnOp::put("b", "2", None),
            ]))
            .await,
            Code::InvalidArgument,
            dup,
        );
        // A put in a nested txn is checked against the parent branch.
        let nested = Txn::new().and_then([TxnOp::put("a", "2", None)]);
        assert_status(
            c.txn(Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::txn(nested)]))
                .await,
            Code::InvalidArgument,
            dup,
        );
        // Overlapping deletes, and one key in both branches, are fine.
        c.txn(Txn::new().and_then([
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("c"))),
            TxnOp::delete("b", Some(DeleteOptions::new().with_range("d"))),
        ]))
        .await
        .expect("overlapping deletes");
        c.txn(
            Txn::new()
                .and_then([TxnOp::put("a", "1", None)])
                .or_else([TxnOp::put("a", "2", None)]),
        )
        .await
        .expect("same key in success and failure");
        let nested = Txn::new()
            .and_then([TxnOp::put("n", "1", None)])
            .or_else([TxnOp::put("n", "2", None)]);
        c.txn(Txn::new().and_then([TxnOp::txn(nested)]))
            .await
            .expect("nested branches may share keys");

        assert_status(
            c.txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
                .await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        // Apply-time failures leave no partial effect.
        let before = header_rev(get(&mut c, "a", GetOptions::new()).await.header());
        assert_status(
            c.txn(Txn::new().and_then([
                TxnOp::put("partial", "1", None),
                TxnOp::put("nokey", "", Some(PutOptions::new().with_ignore_value())),
            ]))
            .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        let after = get(&mut c, "partial", GetOptions::new()).await;
        assert!(after.kvs().is_empty());
        assert_eq!(header_rev(after.header()), before);
    })
    .await;
}

#[tokio::test]
async fn request_too_large() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        // The limit is 1.5 MiB on the whole marshalled request; 1 MiB passes.
        c.put("small", vec![b'x'; 1024 * 1024], None)
            .await
            .expect("1 MiB put");
        assert_status(
            c.put("big", vec![b'x'; 1_600_000], None).await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        assert_status(
            c.txn(Txn::new().and_then([
                TxnOp::put("t1", vec![b'x'; 800_000], None),
                TxnOp::put("t2", vec![b'x'; 800_000], None),
            ]))
            .await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
        // Above the gRPC limit (--max-request-bytes + 512 KiB) the gRPC
        // layer refuses the message itself, in grpc-go's words. The
        // PutRequest is 2 200 000 value bytes plus 11 of framing and key.
        assert_status(
            c.put("huge", vec![b'x'; 2_200_000], None).await,
            Code::ResourceExhausted,
            "grpc: received message larger than max (2200011 vs. 2097152)",
        );
        assert!(get(&mut c, "big", GetOptions::new()).await.kvs().is_empty());
        assert!(get(&mut c, "huge", GetOptions::new())
            .await
            .kvs()
            .is_empty());
        let r = get(&mut c, "small", GetOptions::new()).await;
        assert_eq!(r.kvs()[0].value().len(), 1024 * 1024);
        assert_eq!(header_rev(r.header()), 2);
    })
    .await;
}

#[tokio::test]
async fn compaction_errors() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        for i in 2..=6 {
            put(&mut c, "k", &format!("v{i}")).await;
        }
        put(&mut c, "gone", "x").await; // 7
        c.delete("gone", None).await.expect("delete"); // 8

        let r = c.compact(5, None).await.expect("compact 5");
        assert_eq!(header_rev(r.header()), 8);
        let compacted = "etcdserver: mvcc: required revision has been compacted";
        let future = "etcdserver: mvcc: required revision is a future revision";
        assert_status(
            c.get("k", Some(GetOptions::new().with_revision(4))).await,
            Code::OutOfRange,
            compacted,
        );
        let r = get(&mut c, "k", GetOptions::new().with_revision(5)).await;
        assert_eq!(r.kvs()[0].value(), b"v5", "the compact revision is kept");
        assert_status(c.compact(5, None).await, Code::OutOfRange, compacted);
        assert_status(c.compact(3, None).await, Code::OutOfRange, compacted);
        assert_status(c.compact(9, None).await, Code::OutOfRange, future);
        assert_status(
            c.get("k", Some(GetOptions::new().with_revision(9))).await,
            Code::OutOfRange,
            future,
        );
        // Compacting at the current revision drops the tombstoned key.
        c.compact(8, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact at current");
        let r = get(&mut c, "k", GetOptions::new().with_revision(8)).await;
        assert_eq!(r.kvs()[0].value(), b"v6");
        let r = get(&mut c, "gone", GetOptions::new().with_revision(8)).await;
        assert!(r.kvs().is_empty());
        assert_status(
            c.get("k", Some(GetOptions::new().with_revision(7))).await,
            Code::OutOfRange,
            compacted,
        );
        // A compaction in a txn range is checked too.
        assert_status(
            c.txn(Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(2)))]))
                .await,
            Code::OutOfRange,
            compacted,
        );
        assert_eq!(put(&mut c, "k", "after").await, 9);
    })
    .await;
}

#[tokio::test]
async fn fresh_store_compaction() {
    bounded(async {
        let m = Member::start().await;
        let mut c = m.client().await;
        // A fresh store is at revision 1 with no compaction yet: compacting
        // at 1 succeeds once; then it is the compact revision.
        let r = c
            .compact(1, None)
            .await
            .expect("compact 1 on a fresh store");
        assert_eq!(header_rev(r.header()), 1);
        assert_status(
            c.compact(1, None).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_eq!(put(&mut c, "k", "v").await, 2);
    })
    .await;
}
