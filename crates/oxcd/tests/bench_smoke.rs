//! Smoke test of the load generator (`oxcd-bench`) against a real oxcd
//! process: small put, range and txn-put runs must complete every request
//! without an error, and the watch and lease workloads must either run
//! cleanly or report the service as unimplemented. Not a timed test:
//! performance is measured by `bench/compare.sh`, not here.

mod common;

use std::time::{Duration, Instant};

use common::tls::{tls_files, TlsMember};
use common::{bounded, Member};
use oxcd_bench::cli::{
    ClientKind, CompactOpts, ConnectOpts, Consistency, LeaseOpts, PutOpts, RangeOpts, TxnPutOpts,
    WatchLatencyOpts,
};
use oxcd_bench::{workload, BenchError, Conns, GlobalOpts, Summary};

fn assert_clean(what: &str, s: &Summary, total: u64) {
    assert_eq!((s.ok, s.errors), (total, 0), "{what}: {s:?}");
    assert!(!s.timed_out && !s.unimplemented, "{what}: {s:?}");
}

/// `total` reads of every key.
fn range_all(total: u64, consistency: Consistency) -> RangeOpts {
    RangeOpts {
        key: None,
        end: None,
        total,
        consistency,
        limit: 0,
        count_only: false,
        all: true,
        key_space_size: None,
    }
}

/// 40 puts on 10 keys through `conns`, every one acknowledged.
async fn forty_puts(what: &str, conns: &Conns, deadline: Instant) {
    let put = PutOpts {
        total: 40,
        key_space_size: 10,
        ..PutOpts::default()
    };
    let s = workload::put::run(conns, &put, deadline)
        .await
        .expect("put");
    assert_clean(what, &s, 40);
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
            let range = range_all(50, consistency);
            let s = workload::range::run(&conns, &range, deadline)
                .await
                .expect("range");
            assert_clean("range", &s, 50);
        }
        // Random keys of a key space, and a key space of none refused.
        let mut random = RangeOpts {
            all: false,
            key_space_size: Some(10),
            ..range_all(30, Consistency::Linearizable)
        };
        let s = workload::range::run(&conns, &random, deadline)
            .await
            .expect("range of random keys");
        assert_clean("range of random keys", &s, 30);
        random.key_space_size = Some(0);
        assert!(workload::range::run(&conns, &random, deadline)
            .await
            .is_err());

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

        let compact = CompactOpts {
            revisions: 200,
            key_space_size: 10,
            rate: 1000,
            idle_total: 20,
            total: 100_000,
            ..CompactOpts::default()
        };
        let s = workload::compact::run(&conns, &compact, deadline)
            .await
            .expect("compact");
        // The phase ends when the compaction returns, long before --total.
        assert_eq!(s.errors, 0, "{s:?}");
        assert!(!s.timed_out && s.total < 100_000, "{s:?}");
        assert!(s.extra["compacted_revision"].as_i64() > Some(200), "{s:?}");
        assert_eq!(s.extra["idle_ops"], 20, "{s:?}");
        let client = member.client().await;
        let old = client
            .clone()
            .kv_client()
            .get("x", Some(etcd_client::GetOptions::new().with_revision(100)))
            .await;
        assert!(
            old.is_err_and(|e| e
                .to_string()
                .contains("required revision has been compacted")),
            "the history below the compacted revision is gone"
        );

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

/// Over TLS with a client certificate (`--cacert/--cert/--key`), against a
/// member that requires one: the KV workloads and `connect` (a new TLS
/// connection per operation) complete without an error; without a client
/// certificate the member refuses the dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_speaks_tls_with_client_certificates() {
    bounded(async {
        let f = tls_files();
        let member = TlsMember::start(&f).await;
        let global = GlobalOpts {
            endpoints: vec![member.endpoint()],
            conns: 2,
            clients: 4,
            tls_cacert: Some(f.ca.clone().into()),
            tls_cert: Some(f.client_crt.clone().into()),
            tls_key: Some(f.client_key.clone().into()),
            ..GlobalOpts::default()
        };
        let conns = Conns::connect(&global).await.expect("dial oxcd over TLS");
        let deadline = Instant::now() + Duration::from_secs(60);
        forty_puts("put over TLS", &conns, deadline).await;
        let connect = ConnectOpts {
            total: 20,
            rate: 0,
            key: "foo".into(),
        };
        let s = workload::connect::run(&conns, &connect, deadline)
            .await
            .expect("connect");
        assert_clean("connect over TLS", &s, 20);

        // TLS 1.3 lets the client finish its handshake before the server
        // checks the certificate, so the refusal may only show on the
        // first request.
        let refused = |global: GlobalOpts| async move {
            match Conns::connect(&global).await {
                Err(_) => true,
                Ok(conns) => {
                    let one = PutOpts {
                        total: 1,
                        ..PutOpts::default()
                    };
                    let s = workload::put::run(&conns, &one, deadline)
                        .await
                        .expect("put");
                    s.ok == 0
                }
            }
        };
        let no_identity = GlobalOpts {
            tls_cert: None,
            tls_key: None,
            ..global.clone()
        };
        assert!(
            refused(no_identity.clone()).await,
            "a member with --client-cert-auth refuses a client without a certificate"
        );
        let plain = GlobalOpts {
            tls_cacert: None,
            ..no_identity
        };
        assert!(refused(plain).await, "plaintext to a TLS-only member fails");
    })
    .await;
}

/// `--client tonic`: the unary KV workloads through tonic's own client,
/// plain and over TLS with a client certificate; the streaming workloads
/// refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_kv_through_tonic() {
    bounded(async {
        let member = Member::start().await;
        let global = GlobalOpts {
            endpoints: vec![member.endpoint()],
            conns: 2,
            clients: 4,
            client: ClientKind::Tonic,
            ..GlobalOpts::default()
        };
        let conns = Conns::connect(&global).await.expect("dial oxcd");
        let deadline = Instant::now() + Duration::from_secs(60);
        forty_puts("put through tonic", &conns, deadline).await;
        let range = range_all(20, Consistency::Linearizable);
        let s = workload::range::run(&conns, &range, deadline)
            .await
            .expect("range");
        assert_clean("range through tonic", &s, 20);
        let cli = oxcd_bench::Cli {
            global: global.clone(),
            command: oxcd_bench::Command::LeaseKeepalive(LeaseOpts::default()),
        };
        assert!(matches!(
            oxcd_bench::run(&cli).await,
            Err(BenchError::InvalidArgs(_))
        ));

        let f = tls_files();
        let tls_member = TlsMember::start(&f).await;
        let tls = GlobalOpts {
            endpoints: vec![tls_member.endpoint()],
            tls_cacert: Some(f.ca.clone().into()),
            tls_cert: Some(f.client_crt.clone().into()),
            tls_key: Some(f.client_key.clone().into()),
            ..global
        };
        let conns = Conns::connect(&tls).await.expect("dial oxcd over TLS");
        forty_puts("put through tonic over TLS", &conns, deadline).await;
    })
    .await;
}
