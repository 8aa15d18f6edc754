//! Smoke test of the load generator (`oxcd-bench`) against a real oxcd
//! process: small put, range and txn-put runs must complete every request
//! without an error, and the watch and lease workloads must either run
//! cleanly or report the service as unimplemented. Not a timed test:
//! performance is measured by `bench/compare.sh`, not here.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, Member};
use oxcd_bench::cli::{Consistency, LeaseOpts, PutOpts, RangeOpts, TxnPutOpts, WatchLatencyOpts};
use oxcd_bench::{workload, BenchError, Conns, GlobalOpts, Summary};

fn assert_clean(what: &str, s: &Summary, total: u64) {
    assert_eq!((s.ok, s.errors), (total, 0), "{what}: {s:?}");
    assert!(!s.timed_out && !s.unimplemented, "{what}: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_workloads_run_against_oxcd() {
    bounded(async {
        let member = Member::start().await;
        let global = GlobalOpts {
            endpoints: vec![member.endpoint()],
            conns: 2,
            clients: 4,
            ..GlobalOpts::default()
        };
        let conns = Conns::connect(&global).await.expect("dial oxcd");
        let deadline = Instant::now() + Duration::from_secs(60);

        let put = PutOpts {
            total: 50,
            val_size: 64,
            key_space_size: 10,
            ..PutOpts::default()
        };
        let s = workload::put::run(&conns, &put, deadline)
            .await
            .expect("put");
        assert_clean("put", &s, 50);

        for consistency in [Consistency::Linearizable, Consistency::Serializable] {
            let range = RangeOpts {
                key: "\0".into(),
                end: Some("\0".into()),
                total: 50,
                consistency,
                limit: 0,
                count_only: false,
            };
            let s = workload::range::run(&conns, &range, deadline)
                .await
                .expect("range");
            assert_clean("range", &s, 50);
        }

        let txn = TxnPutOpts {
            total: 20,
            txn_ops: 3,
            key_space_size: 10,
            ..TxnPutOpts::default()
        };
        let s = workload::txn_put::run(&conns, &txn, deadline)
            .await
            .expect("txn-put");
        assert_clean("txn-put", &s, 20);

        let wl = WatchLatencyOpts {
            total: 5,
            put_rate: 0,
            watchers: 2,
            streams: 1,
            ..WatchLatencyOpts::default()
        };
        match workload::watch_latency::run(&conns, &wl, deadline).await {
            Ok(s) => assert_clean("watch-latency", &s, 10),
            Err(BenchError::Unimplemented { .. }) => {}
            Err(e) => panic!("watch-latency: {e}"),
        }

        let lease = LeaseOpts {
            total: 10,
            ..LeaseOpts::default()
        };
        match workload::lease::run(&conns, &lease, deadline).await {
            Ok(s) => assert_clean("lease-keepalive", &s, 10),
            Err(BenchError::Unimplemented { .. }) => {}
            Err(e) => panic!("lease-keepalive: {e}"),
        }
    })
    .await;
}
