//! `oxcd grpc-proxy start` (etcd 3.4's L7 gRPC proxy) in front of a
//! cluster: KV, the serializable-read cache, watch coalescing, watch
//! history, leases, `--namespace`, member loss, the empty-CN rule for its
//! client certificate, `--advertise-client-url` and its HTTP endpoints.
//!
//! Every expectation was checked against etcd 3.4.23's own proxy
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`: members and proxy are both etcd).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bounded, free_port, http_get, server_binary, Cluster, CtlOutput, ETCDCTL};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchResponse,
    WatchStream,
};
use tokio::sync::mpsc;

/// Bound for one expected watch message, keep-alive reply or log line.
const STEP: Duration = Duration::from_secs(15);

/// Interval of the polls below.
const POLL: Duration = Duration::from_millis(50);

/// The readiness line of etcd's `grpc-proxy start`.
const READY_LINE: &str = "started gRPC proxy";

/// One `grpc-proxy start` process and its stderr lines as they arrive.
/// Killed (SIGKILL, by pid) and reaped on drop.
struct GrpcProxy {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    /// `127.0.0.1:port` of `--listen-addr`.
    addr: String,
    /// `http://127.0.0.1:port` of `--metrics-addr`, when asked for.
    metrics_url: Option<String>,
    /// The process's working directory (etcd's proxy never writes to its
    /// default `--data-dir=default.proxy` unless asked to, but a stray file
    /// must not land in the source tree).
    _cwd: tempfile::TempDir,
}

impl GrpcProxy {
    /// Starts a proxy to `endpoints` (`host:port`) with `flags` added, and
    /// waits until it logs that it started.
    async fn start(endpoints: &[String], flags: &[&str]) -> GrpcProxy {
        GrpcProxy::launch(endpoints, flags, false).await
    }

    /// Like [`GrpcProxy::start`], with a `--metrics-addr` too.
    async fn start_with_metrics(endpoints: &[String], flags: &[&str]) -> GrpcProxy {
        GrpcProxy::launch(endpoints, flags, true).await
    }

    async fn launch(endpoints: &[String], flags: &[&str], metrics: bool) -> GrpcProxy {
        let mut last = String::new();
        for _ in 0..3 {
            let mut p = GrpcProxy::spawn(endpoints, flags, metrics);
            match p.wait_line(READY_LINE, STEP).await {
                Ok(_) => return p,
                // Someone took a port since `free_port` looked.
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("grpc-proxy did not start:\n{log}"),
            }
        }
        panic!("grpc-proxy failed to start three times (ports in use):\n{last}");
    }

    fn spawn(endpoints: &[String], flags: &[&str], metrics: bool) -> GrpcProxy {
        let cwd = tempfile::Builder::new()
            .prefix("oxcd-bbx-proxy-")
            .tempdir()
            .expect("create temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics_url = metrics.then(|| format!("http://127.0.0.1:{}", free_port()));
        let mut cmd = Command::new(server_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--listen-addr={addr}"));
        if let Some(url) = &metrics_url {
            cmd.arg(format!("--metrics-addr={url}"));
        }
        let mut child = cmd
            .args(flags)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", server_binary().display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        GrpcProxy {
            child,
            lines,
            seen: Vec::new(),
            addr,
            metrics_url,
            _cwd: cwd,
        }
    }

    /// Waits for a log line containing `text` and returns it; `Err(log)` if
    /// the process closes its stderr (exits) first or `within` passes.
    async fn wait_line(&mut self, text: &str, within: Duration) -> Result<String, String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return Ok(l.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return Ok(l);
                    }
                }
                Ok(None) => return Err(format!("proxy exited; its log:\n{}", self.log())),
                Err(_) => {
                    return Err(format!(
                        "no log line {text:?} within {within:?}; log so far:\n{}",
                        self.log()
                    ))
                }
            }
        }
    }

    fn log(&self) -> String {
        format!(
            "== {} grpc-proxy stderr ==\n{}",
            server_binary().display(),
            self.seen.join("\n")
        )
    }

    /// `http://` + `--listen-addr`.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the proxy alone.
    async fn client(&self) -> Client {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10));
        Client::connect([self.url()], Some(opts))
            .await
            .unwrap_or_else(|e| panic!("connect to the proxy at {}: {e}", self.addr))
    }

    /// The real etcdctl with `--endpoints` the proxy.
    async fn etcdctl(&self, args: &[&str]) -> CtlOutput {
        etcdctl_at(&self.addr, args).await
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs etcdctl (v3 API) against `endpoint` alone, bounded in time.
async fn etcdctl_at(endpoint: &str, args: &[&str]) -> CtlOutput {
    let mut cmd = tokio::process::Command::new(ETCDCTL);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(["--dial-timeout=3s", "--command-timeout=8s"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} took longer than 20 s"))
        .expect("run etcdctl");
    CtlOutput {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of `key`, if any.
async fn value_of(c: &mut Client, key: &str, opts: Option<GetOptions>) -> Option<String> {
    let r = c
        .get(key, opts)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    r.kvs()
        .first()
        .map(|kv| kv.value_str().expect("utf-8 value").to_string())
}

/// A serializable get of `key`.
async fn sget(c: &mut Client, key: &str) -> Option<String> {
    value_of(c, key, Some(GetOptions::new().with_serializable())).await
}

/// Keys (and values) of a serializable prefix range.
async fn sget_prefix(c: &mut Client, prefix: &str) -> Vec<(String, String)> {
    let r = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap_or_else(|e| panic!("get --prefix {prefix}: {e}"));
    kvs(r.kvs())
}

fn kvs(kvs: &[etcd_client::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key_str().expect("utf-8 key").to_string(),
                kv.value_str().expect("utf-8 value").to_string(),
            )
        })
        .collect()
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
        .header()
        .expect("header")
        .revision()
}

async fn next(ws: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(STEP, ws.message())
        .await
        .expect("watch message in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// One event as a watcher saw it: (type, key, value, mod_revision).
type Ev = (EventType, String, String, i64);

fn evs(r: &WatchResponse) -> Vec<Ev> {
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

/// Opens a watch and waits for its `created` response; returns the stream
/// and the created response's header revision.
async fn watch_created(
    c: &mut Client,
    key: &str,
    opts: Option<WatchOptions>,
) -> (WatchStream, i64) {
    let mut ws = c.watch(key, opts).await.expect("watch");
    let created = next(&mut ws).await;
    assert!(
        created.created() && !created.canceled(),
        "first message is the creation: {created:?}"
    );
    let rev = created.header().map_or(0, |h| h.revision());
    (ws, rev)
}

/// Reads events until one with `mod_revision >= last` arrived; returns all
/// of them (responses without events, e.g. progress, are skipped).
async fn events_until(ws: &mut WatchStream, last: i64) -> Vec<Ev> {
    let mut out: Vec<Ev> = Vec::new();
    while out.last().is_none_or(|e| e.3 < last) {
        let r = next(ws).await;
        assert!(!r.canceled(), "watch cancelled after {out:?}: {r:?}");
        out.extend(evs(&r));
    }
    out
}

/// The previous values (`prev_kv`) of the next `n` events.
async fn prev_values(ws: &mut WatchStream, n: usize) -> Vec<Option<String>> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(ws).await;
        for e in r.events() {
            out.push(
                e.prev_kv()
                    .map(|kv| kv.value_str().expect("utf-8 value").to_string()),
            );
        }
    }
    out
}

/// The value of a sample of the Prometheus text `body` (`name value`,
/// without labels).
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `etcd_debugging_mvcc_watcher_total` (watchers open on that member) of
/// every member, running or not (a stopped member counts 0).
async fn watchers_per_member(c: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..c.len() {
        if !c.member(i).is_running() {
            out.push(0);
            continue;
        }
        let (code, body) = http_get(&c.member(i).client_url(), "/metrics").await;
        assert_eq!(code, 200, "GET /metrics on member {i}");
        let n = metric(&body, "etcd_debugging_mvcc_watcher_total")
            .unwrap_or_else(|| panic!("no etcd_debugging_mvcc_watcher_total on member {i}"));
        out.push(n as u64);
    }
    out
}

/// Watchers per member once the proxy serves (a round trip through it
/// went well): what the proxy watches for its own purposes.
async fn upstream_baseline(c: &Cluster, p: &GrpcProxy) -> Vec<u64> {
    let mut pc = p.client().await;
    pc.get("baseline", None)
        .await
        .expect("get through the proxy");
    watchers_per_member(c).await
}

/// Polls until `cond(value of probe)` holds; returns that value. Panics with
/// the last value when `within` passes.
async fn poll_until<T: std::fmt::Debug, F, Fut>(
    what: &str,
    within: Duration,
    mut probe: F,
    cond: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let v = probe().await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last seen {v:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn kv_through_proxy() {
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        let mut pc = p.client().await;

        let rev = put(&mut pc, "k1", "v1").await;
        assert_eq!(value_of(&mut pc, "k1", None).await.as_deref(), Some("v1"));
        for i in 0..c.len() {
            let mut direct = c.client_of(i).await;
            let r = direct.get("k1", None).await.expect("direct get");
            assert_eq!(kvs(r.kvs()), [("k1".to_string(), "v1".to_string())]);
            assert_eq!(r.kvs()[0].mod_revision(), rev, "member {i}");
        }
        // A key written directly is read through the proxy.
        let mut direct = c.client_of(1).await;
        put(&mut direct, "k2", "x").await;
        assert_eq!(value_of(&mut pc, "k2", None).await.as_deref(), Some("x"));

        // Delete through the proxy, with the previous value.
        let d = pc
            .delete("k1", Some(DeleteOptions::new().with_prev_key()))
            .await
            .expect("delete");
        assert_eq!(d.deleted(), 1);
        assert_eq!(kvs(d.prev_kvs()), [("k1".to_string(), "v1".to_string())]);
        assert_eq!(value_of(&mut direct, "k1", None).await, None);

        // Txn: the compare holds, the success branch runs.
        let txn = Txn::new()
            .when([Compare::value("k2", CompareOp::Equal, "x")])
            .and_then([TxnOp::put("k2", "y", None), TxnOp::get("k2", None)])
            .or_else([TxnOp::put("k3", "failure", None)]);
        let t = pc.txn(txn.clone()).await.expect("txn");
        assert!(t.succeeded());
        match &t.op_responses()[..] {
            [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => {
                assert_eq!(kvs(g.kvs()), [("k2".to_string(), "y".to_string())]);
            }
            other => panic!("success branch responses: {other:?}"),
        }
        // The same txn again: the compare fails, the failure branch runs.
        let t = pc.txn(txn).await.expect("txn");
        assert!(!t.succeeded());
        assert!(matches!(&t.op_responses()[..], [TxnOpResponse::Put(_)]));
        assert_eq!(
            value_of(&mut direct, "k2", None).await.as_deref(),
            Some("y")
        );
        assert_eq!(
            value_of(&mut direct, "k3", None).await.as_deref(),
            Some("failure")
        );

        // The real etcdctl through the proxy.
        assert_eq!(p.etcdctl(&["put", "ctl", "hello"]).await.ok(), "OK\n");
        assert_eq!(p.etcdctl(&["get", "ctl"]).await.ok(), "ctl\nhello\n");
        assert_eq!(
            value_of(&mut direct, "ctl", None).await.as_deref(),
            Some("hello")
        );
        assert_eq!(p.etcdctl(&["get", "k2"]).await.ok(), "k2\ny\n");
        assert_eq!(p.etcdctl(&["del", "ctl"]).await.ok(), "1\n");
        assert_eq!(p.etcdctl(&["get", "ctl"]).await.ok(), "");
    })
    .await;
}

/// Serializable reads are answered from the proxy's cache; every write the
/// proxy forwards (put, delete-range, txn) invalidates what it touches.
///
/// The proxy fronts one member only: a serializable read is that member's
/// local view, and a member answers a write only once it applied it, so the
/// read after a write must see it. With several endpoints a serializable
/// read may reach a follower that has not applied the write yet, and etcd's
/// proxy would then cache the stale answer.
#[tokio::test]
async fn serializable_cache_invalidated_by_writes() {
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&[c.member(1).endpoint()], &[]).await;
        let mut pc = p.client().await;

        put(&mut pc, "ck", "v1").await;
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v1"));
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v1"));
        put(&mut pc, "ck", "v2").await;
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v2"));
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v2"));

        // etcdctl's serializable reads, and a put through etcdctl.
        let sctl = ["get", "ck", "--consistency=s"];
        assert_eq!(p.etcdctl(&sctl).await.ok(), "ck\nv2\n");
        assert_eq!(p.etcdctl(&sctl).await.ok(), "ck\nv2\n");
        assert_eq!(p.etcdctl(&["put", "ck", "v3"]).await.ok(), "OK\n");
        assert_eq!(p.etcdctl(&sctl).await.ok(), "ck\nv3\n");
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v3"));

        // A cached prefix range and the writes under it.
        for k in ["cp/a", "cp/b", "cp/c"] {
            put(&mut pc, k, k).await;
        }
        let all = |keys: &[&str]| -> Vec<(String, String)> {
            keys.iter()
                .map(|k| (k.to_string(), k.to_string()))
                .collect()
        };
        assert_eq!(
            sget_prefix(&mut pc, "cp/").await,
            all(&["cp/a", "cp/b", "cp/c"])
        );
        assert_eq!(
            sget_prefix(&mut pc, "cp/").await,
            all(&["cp/a", "cp/b", "cp/c"])
        );
        put(&mut pc, "cp/d", "cp/d").await;
        assert_eq!(
            sget_prefix(&mut pc, "cp/").await,
            all(&["cp/a", "cp/b", "cp/c", "cp/d"])
        );
        assert_eq!(sget(&mut pc, "cp/c").await.as_deref(), Some("cp/c"));
        // Delete-range [cp/a, cp/c) through the proxy.
        let d = pc
            .delete("cp/a", Some(DeleteOptions::new().with_range("cp/c")))
            .await
            .expect("delete range");
        assert_eq!(d.deleted(), 2);
        assert_eq!(sget_prefix(&mut pc, "cp/").await, all(&["cp/c", "cp/d"]));
        // A single-key delete drops both the key's and the range's entry.
        pc.delete("cp/c", None).await.expect("delete");
        assert_eq!(sget(&mut pc, "cp/c").await, None);
        assert_eq!(sget_prefix(&mut pc, "cp/").await, all(&["cp/d"]));

        // Txn put (success branch) invalidates.
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v3"));
        let t = pc
            .txn(Txn::new().and_then([TxnOp::put("ck", "v4", None)]))
            .await
            .expect("txn");
        assert!(t.succeeded());
        assert_eq!(sget(&mut pc, "ck").await.as_deref(), Some("v4"));
        // Txn delete invalidates, the prefix range too.
        assert_eq!(sget_prefix(&mut pc, "cp/").await, all(&["cp/d"]));
        let t = pc
            .txn(
                Txn::new()
                    .when([Compare::value("ck", CompareOp::Equal, "v4")])
                    .and_then([
                        TxnOp::delete("ck", None),
                        TxnOp::delete("cp/", Some(DeleteOptions::new().with_prefix())),
                    ]),
            )
            .await
            .expect("txn");
        assert!(t.succeeded());
        assert_eq!(sget(&mut pc, "ck").await, None);
        assert_eq!(sget_prefix(&mut pc, "cp/").await, all(&[]));
        // Txn failure branch put invalidates.
        assert_eq!(sget(&mut pc, "tk").await, None);
        let t = pc
            .txn(
                Txn::new()
                    .when([Compare::value("tk", CompareOp::Equal, "never")])
                    .or_else([TxnOp::put("tk", "from-failure", None)]),
            )
            .await
            .expect("txn");
        assert!(!t.succeeded());
        assert_eq!(sget(&mut pc, "tk").await.as_deref(), Some("from-failure"));
        // A delete through etcdctl invalidates as well.
        assert_eq!(p.etcdctl(&["del", "tk"]).await.ok(), "1\n");
        assert_eq!(sget(&mut pc, "tk").await, None);

        // The cache is real: it only hears of writes through the proxy. A
        // write that bypasses it leaves serializable reads through the
        // proxy stale (etcd 3.4 behaves so) until a linearizable read
        // through the proxy, whose answer is cached, or a write through it.
        let mut direct = c.client_of(1).await;
        put(&mut pc, "stale", "1").await;
        assert_eq!(sget(&mut pc, "stale").await.as_deref(), Some("1"));
        put(&mut direct, "stale", "2").await;
        assert_eq!(
            sget(&mut pc, "stale").await.as_deref(),
            Some("1"),
            "a serializable read is answered from the proxy's cache"
        );
        assert_eq!(value_of(&mut pc, "stale", None).await.as_deref(), Some("2"));
        assert_eq!(sget(&mut pc, "stale").await.as_deref(), Some("2"));
    })
    .await;
}

/// Many watchers of one key through the proxy share few watchers on the
/// cluster, and each still sees every event once, in order.
#[tokio::test]
async fn watch_coalescing() {
    const CLIENTS: usize = 5;
    const PER_CLIENT: usize = 10;
    const WATCHERS: usize = CLIENTS * PER_CLIENT;
    const PUTS: usize = 20;
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        // The proxy may watch for its own purposes (etcd's watches
        // `__lostleader` twice, to notice a lost leader): only what the
        // clients' watchers add counts.
        let base = upstream_baseline(&c, &p).await;
        let mut streams = Vec::new();
        for _ in 0..CLIENTS {
            let mut pc = p.client().await;
            for _ in 0..PER_CLIENT {
                streams.push(watch_created(&mut pc, "co", None).await.0);
            }
        }
        let added = |w: &Vec<u64>| w.iter().sum::<u64>().saturating_sub(base.iter().sum());
        let created = watchers_per_member(&c).await;
        eprintln!("upstream watchers: {base:?} before, {created:?} after creating {WATCHERS}");
        let settled = poll_until(
            "upstream watchers coalesce",
            Duration::from_secs(20),
            || watchers_per_member(&c),
            |w| added(w) <= COALESCED_BOUND,
        )
        .await;
        eprintln!("upstream watchers once coalesced: {settled:?}");

        let mut pc = p.client().await;
        let mut want = Vec::new();
        for i in 0..PUTS {
            let v = format!("v{i}");
            let r = put(&mut pc, "co", &v).await;
            want.push((EventType::Put, "co".to_string(), v, r));
        }
        // A last put fences the stream: nothing may come between the 20
        // events and it (no duplicate of a late event either).
        let last = put(&mut pc, "co", "end").await;
        want.push((EventType::Put, "co".to_string(), "end".to_string(), last));
        let mut tasks = Vec::new();
        for mut ws in streams {
            tasks.push(tokio::spawn(async move {
                let got = events_until(&mut ws, last).await;
                (ws, got)
            }));
        }
        // The streams stay open for the count below.
        let mut open = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let (ws, got) = t.await.expect("watcher task");
            assert_eq!(got, want, "watcher {i}");
            open.push(ws);
        }
        let after = watchers_per_member(&c).await;
        eprintln!("upstream watchers after the puts: {after:?}");
        assert!(added(&after) <= COALESCED_BOUND, "{base:?} -> {after:?}");
        drop(open);
    })
    .await;
}

/// How many watchers on the cluster 50 watchers of one key, from 5
/// connections, through the proxy may cost. etcd 3.4's proxy: 1, once each
/// new broadcast's creation reached it (a current-revision watcher never
/// joins an established broadcast directly, it is moved over after).
const COALESCED_BOUND: u64 = 2;

#[tokio::test]
async fn watch_history_and_prefix() {
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        let mut pc = p.client().await;
        let mut direct = c.client_of(2).await;

        // History: a watcher from a past revision gets the past events.
        let r1 = put(&mut direct, "h", "1").await;
        let r2 = put(&mut direct, "h", "2").await;
        let r3 = direct
            .delete("h", None)
            .await
            .expect("delete")
            .header()
            .expect("header")
            .revision();
        let r4 = put(&mut direct, "h", "4").await;
        let (mut ws, created) = watch_created(
            &mut pc,
            "h",
            Some(WatchOptions::new().with_start_revision(r1)),
        )
        .await;
        assert_eq!(created, r4, "created header: the current revision");
        let h = |t, v: &str, r| (t, "h".to_string(), v.to_string(), r);
        assert_eq!(
            events_until(&mut ws, r4).await,
            [
                h(EventType::Put, "1", r1),
                h(EventType::Put, "2", r2),
                h(EventType::Delete, "", r3),
                h(EventType::Put, "4", r4),
            ]
        );
        // ... and then the live ones.
        let r5 = put(&mut pc, "h", "5").await;
        assert_eq!(
            events_until(&mut ws, r5).await,
            [h(EventType::Put, "5", r5)]
        );
        // From the middle of the history.
        let (mut mid, _) = watch_created(
            &mut pc,
            "h",
            Some(WatchOptions::new().with_start_revision(r3)),
        )
        .await;
        assert_eq!(
            events_until(&mut mid, r5).await,
            [
                h(EventType::Delete, "", r3),
                h(EventType::Put, "4", r4),
                h(EventType::Put, "5", r5),
            ]
        );
        // Both, caught up, get the next event once.
        let r6 = put(&mut direct, "h", "6").await;
        for w in [&mut ws, &mut mid] {
            assert_eq!(events_until(w, r6).await, [h(EventType::Put, "6", r6)]);
        }

        // Prefix: only keys under it.
        let (mut pre, _) =
            watch_created(&mut pc, "pre/", Some(WatchOptions::new().with_prefix())).await;
        let a = put(&mut direct, "pre/a", "a").await;
        put(&mut direct, "other", "o").await;
        put(&mut direct, "pre", "no-slash").await;
        put(&mut direct, "pre0", "after-prefix").await;
        let b = put(&mut pc, "pre/b/c", "bc").await;
        assert_eq!(
            events_until(&mut pre, b).await,
            [
                (EventType::Put, "pre/a".to_string(), "a".to_string(), a),
                (EventType::Put, "pre/b/c".to_string(), "bc".to_string(), b),
            ]
        );

        // prev_kv only for the watcher that asked.
        let (mut with_prev, _) =
            watch_created(&mut pc, "pk", Some(WatchOptions::new().with_prev_key())).await;
        let (mut without, _) = watch_created(&mut pc, "pk", None).await;
        put(&mut pc, "pk", "1").await;
        put(&mut pc, "pk", "2").await;
        let del = pc
            .delete("pk", None)
            .await
            .expect("delete")
            .header()
            .expect("header")
            .revision();
        assert_eq!(
            prev_values(&mut with_prev, 3).await,
            [None, Some("1".to_string()), Some("2".to_string())]
        );
        assert_eq!(prev_values(&mut without, 3).await, [None, None, None]);
        // Nothing more is pending on either: the next event is the next put.
        let fence = put(&mut pc, "pk", "3").await;
        assert!(fence > del);
        for ws in [&mut with_prev, &mut without] {
            let got = events_until(ws, fence).await;
            assert_eq!(
                got,
                [(EventType::Put, "pk".to_string(), "3".to_string(), fence)]
            );
        }
    })
    .await;
}

#[tokio::test]
async fn lease_keepalive_through_proxy() {
    const TTL: i64 = 5;
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        let mut pc = p.client().await;
        let id = pc.lease_grant(TTL, None).await.expect("grant").id();
        pc.put("leased", "v", Some(PutOptions::new().with_lease(id)))
            .await
            .expect("put with lease");

        // Three keep-alive streams, each on its own connection, take turns
        // once a second for longer than the TTL.
        let mut keepers = Vec::new();
        for _ in 0..3 {
            let mut kc = p.client().await;
            let (keeper, stream) = kc.lease_keep_alive(id).await.expect("keep-alive stream");
            keepers.push((kc, keeper, stream));
        }
        let until = Instant::now() + Duration::from_secs(TTL as u64 + 3);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut turn = 0;
        while Instant::now() < until {
            tick.tick().await;
            let (_, keeper, stream) = &mut keepers[turn % 3];
            keeper.keep_alive().await.expect("send keep-alive");
            let r = tokio::time::timeout(STEP, stream.message())
                .await
                .expect("keep-alive reply in time")
                .expect("keep-alive stream error")
                .expect("keep-alive stream ended");
            assert_eq!(r.id(), id);
            assert!(r.ttl() > 0 && r.ttl() <= TTL, "{r:?}");
            turn += 1;
        }
        let mut direct = c.client_of(0).await;
        assert_eq!(
            value_of(&mut direct, "leased", None).await.as_deref(),
            Some("v")
        );

        let t = pc
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(t.id(), id);
        assert_eq!(t.granted_ttl(), TTL);
        assert!(t.ttl() > 0 && t.ttl() <= TTL, "{t:?}");
        assert_eq!(t.keys(), [b"leased".to_vec()]);

        pc.lease_revoke(id).await.expect("revoke");
        assert_eq!(value_of(&mut direct, "leased", None).await, None);
        let t = pc.lease_time_to_live(id, None).await.expect("time to live");
        assert_eq!(t.ttl(), -1, "a revoked lease: {t:?}");
        drop(keepers);
    })
    .await;
}

#[tokio::test]
async fn namespace_isolation() {
    bounded(async {
        let c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &["--namespace=/ns/"]).await;
        let mut pc = p.client().await;
        let mut direct = c.client_of(0).await;

        put(&mut pc, "a", "1").await;
        assert_eq!(
            value_of(&mut direct, "/ns/a", None).await.as_deref(),
            Some("1")
        );
        assert_eq!(value_of(&mut direct, "a", None).await, None);
        // Outside the namespace: invisible through the proxy.
        put(&mut direct, "b", "outside").await;
        put(&mut direct, "/nsx", "sibling").await;
        put(&mut direct, "/ns", "no-slash").await;
        assert_eq!(value_of(&mut pc, "b", None).await, None);
        // Inside it: visible, without the prefix.
        put(&mut direct, "/ns/c", "3").await;
        assert_eq!(value_of(&mut pc, "c", None).await.as_deref(), Some("3"));

        let inside = vec![
            ("a".to_string(), "1".to_string()),
            ("c".to_string(), "3".to_string()),
        ];
        let r = pc
            .get("", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get all");
        assert_eq!(kvs(r.kvs()), inside);
        let r = pc
            .get("", Some(GetOptions::new().with_from_key()))
            .await
            .expect("get from key");
        assert_eq!(kvs(r.kvs()), inside);
        assert_eq!(
            p.etcdctl(&["get", "", "--from-key"]).await.ok(),
            "a\n1\nc\n3\n"
        );
        assert_eq!(
            p.etcdctl(&["get", "", "--prefix", "--keys-only"])
                .await
                .ok(),
            "a\n\nc\n\n"
        );

        // Watch: keys arrive without the prefix; writes outside are not seen.
        let (mut ws, _) = watch_created(&mut pc, "", Some(WatchOptions::new().with_prefix())).await;
        let w1 = put(&mut pc, "w", "through-proxy").await;
        put(&mut direct, "outside-2", "x").await;
        let w2 = put(&mut direct, "/ns/z", "direct").await;
        assert_eq!(
            events_until(&mut ws, w2).await,
            [
                (
                    EventType::Put,
                    "w".to_string(),
                    "through-proxy".to_string(),
                    w1
                ),
                (EventType::Put, "z".to_string(), "direct".to_string(), w2),
            ]
        );

        // Txn compares and writes inside the namespace.
        let t = pc
            .txn(
                Txn::new()
                    .when([Compare::value("a", CompareOp::Equal, "1")])
                    .and_then([TxnOp::put("t", "yes", None), TxnOp::get("a", None)])
                    .or_else([TxnOp::put("t", "no", None)]),
            )
            .await
            .expect("txn");
        assert!(t.succeeded(), "compare on a inside /ns/");
        match &t.op_responses()[..] {
            [TxnOpResponse::Put(_), TxnOpResponse::Get(g)] => {
                assert_eq!(kvs(g.kvs()), [("a".to_string(), "1".to_string())]);
            }
            other => panic!("txn responses: {other:?}"),
        }
        assert_eq!(
            value_of(&mut direct, "/ns/t", None).await.as_deref(),
            Some("yes")
        );
        assert_eq!(value_of(&mut direct, "t", None).await, None);
        // "b" exists outside only: compared inside, it does not exist.
        let t = pc
            .txn(
                Txn::new()
                    .when([Compare::version("b", CompareOp::Greater, 0)])
                    .and_then([TxnOp::put("seen-b", "wrong", None)]),
            )
            .await
            .expect("txn");
        assert!(!t.succeeded(), "b outside /ns/ is not b inside it");

        // Delete everything, as the proxy's client sees it.
        let d = pc
            .delete("", Some(DeleteOptions::new().with_prefix().with_prev_key()))
            .await
            .expect("delete all");
        let mut gone: Vec<String> = d
            .prev_kvs()
            .iter()
            .map(|kv| kv.key_str().expect("utf-8").to_string())
            .collect();
        gone.sort();
        assert_eq!(gone, ["a", "c", "t", "w", "z"]);
        assert_eq!(d.deleted(), 5);
        let r = direct
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .expect("direct get all");
        assert_eq!(
            kvs(r.kvs()),
            [
                ("/ns".to_string(), "no-slash".to_string()),
                ("/nsx".to_string(), "sibling".to_string()),
                ("b".to_string(), "outside".to_string()),
                ("outside-2".to_string(), "x".to_string()),
            ]
        );
    })
    .await;
}

/// The member the proxy watches through dies: the proxy's watchers move
/// to another member without losing or repeating an event.
#[tokio::test]
async fn member_loss_keeps_watches() {
    const WATCHERS: usize = 6;
    bounded(async {
        let mut c = Cluster::start(3).await;
        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        let base = upstream_baseline(&c, &p).await;
        let mut streams = Vec::new();
        let mut markers = Vec::new();
        for _ in 0..2 {
            let mut pc = p.client().await;
            for _ in 0..WATCHERS / 2 {
                let opts = WatchOptions::new().with_prefix();
                streams.push(watch_created(&mut pc, "ml/", Some(opts)).await.0);
            }
            // Watchers of other keys make the member that holds the
            // proxy's watchers stand out (etcd's proxy has one upstream
            // watcher per key, all on one stream to one member).
            for i in 0..4 {
                markers.push(
                    watch_created(&mut pc, format!("marker/{i}").as_str(), None)
                        .await
                        .0,
                );
            }
        }
        let mut pc = p.client().await;
        let mut first = 0;
        let mut before_kill = 0;
        for i in 0..10 {
            before_kill = put(&mut pc, &format!("ml/{i}"), "before").await;
            if i == 0 {
                first = before_kill;
            }
        }
        // Every watcher is live: the upstream watch exists.
        let mut seen: Vec<Vec<Ev>> = Vec::new();
        for ws in &mut streams {
            seen.push(events_until(ws, before_kill).await);
        }
        // The member holding the proxy's upstream watchers is the one to
        // kill: the one whose watchers grew the most.
        let grown = |w: &Vec<u64>| -> Vec<u64> {
            w.iter()
                .zip(&base)
                .map(|(n, b)| n.saturating_sub(*b))
                .collect()
        };
        let per_member = poll_until(
            "the proxy's watchers show up on some member",
            Duration::from_secs(10),
            || watchers_per_member(&c),
            |w| grown(w).iter().any(|n| *n > 0),
        )
        .await;
        let delta = grown(&per_member);
        let victim = (0..c.len())
            .max_by_key(|&i| delta[i])
            .expect("three members");
        eprintln!(
            "upstream watchers per member {base:?} -> {per_member:?}: killing member {victim}"
        );
        c.kill9(victim);
        let writer = (victim + 1) % c.len();

        // Writes go on through a surviving member (retried across the
        // election, should the victim have led).
        let mut last = before_kill;
        for i in 10..30 {
            let key = format!("ml/{i}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let mut w = c.quick_client_of(writer, Duration::from_secs(2)).await;
                match w.put(key.as_str(), "after", None).await {
                    Ok(r) => {
                        last = r.header().expect("header").revision();
                        break;
                    }
                    Err(e) => assert!(Instant::now() < deadline, "put {key}: {e}"),
                }
                tokio::time::sleep(POLL).await;
            }
        }
        // KV through the proxy works again.
        poll_until(
            "a put through the proxy",
            Duration::from_secs(30),
            || async {
                let mut pc = p.client().await;
                tokio::time::timeout(Duration::from_secs(3), pc.put("after-loss", "ok", None))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false)
            },
            |ok| *ok,
        )
        .await;
        assert_eq!(
            value_of(&mut pc, "after-loss", None).await.as_deref(),
            Some("ok")
        );

        // What happened under ml/, from a surviving member's own history
        // (a retried put may have been applied twice; that is history too).
        let mut direct = c.client_of(writer).await;
        let (mut truth, _) = watch_created(
            &mut direct,
            "ml/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await;
        let want = events_until(&mut truth, last).await;
        assert!(want.len() >= 30, "{want:?}");
        // A fence after everything: nothing may come between `last` and it.
        let fence = put(&mut direct, "ml/fence", "end").await;
        let mut want_all = want.clone();
        want_all.push((
            EventType::Put,
            "ml/fence".to_string(),
            "end".to_string(),
            fence,
        ));
        for (i, (mut ws, mut got)) in streams.into_iter().zip(seen).enumerate() {
            got.extend(events_until(&mut ws, fence).await);
            assert_eq!(got, want_all, "watcher {i} through the proxy");
        }
        drop(markers);
    })
    .await;
}

/// etcd's e2e `TestGrpcproxyAndCommonName`: the proxy's client certificate
/// (`--cert`) must have an empty Common Name.
#[tokio::test]
async fn common_name_cert_refused() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    bounded(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, body: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).expect("write");
            p.display().to_string()
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "proxy test ca");
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
        let leaf = |cn: Option<&str>| {
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
            p.distinguished_name = DistinguishedName::new();
            match cn {
                Some(cn) => p.distinguished_name.push(DnType::CommonName, cn),
                None => p.distinguished_name.push(DnType::OrganizationName, "oxcd"),
            }
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &ca).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let ca_file = write("ca.crt", ca.pem());
        let (crt, key) = leaf(Some("proxy-client"));
        let (named_crt, named_key) = (write("named.crt", crt), write("named.key", key));
        let (crt, key) = leaf(None);
        let (anon_crt, anon_key) = (write("anon.crt", crt), write("anon.key", key));
        // Nothing listens there: etcd's proxy starts without reaching it.
        let upstream = format!("127.0.0.1:{}", free_port());

        let mut cmd = tokio::process::Command::new(server_binary());
        cmd.args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={upstream}"))
            .arg(format!("--listen-addr=127.0.0.1:{}", free_port()))
            .args([
                "--cert", &named_crt, "--key", &named_key, "--cacert", &ca_file,
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(STEP, cmd.output())
            .await
            .expect("the proxy exits in time")
            .expect("run the proxy");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr.contains("cert has non empty Common Name (proxy-client)"),
            "{stderr}"
        );

        let mut p = GrpcProxy::start(
            &[upstream],
            &[
                "--cert", &anon_crt, "--key", &anon_key, "--cacert", &ca_file,
            ],
        )
        .await;
        // Started, and still running.
        assert!(
            p.child.try_wait().expect("try_wait").is_none(),
            "{}",
            p.log()
        );
        tokio::net::TcpStream::connect(&p.addr)
            .await
            .expect("the proxy accepts connections");
        assert!(
            p.child.try_wait().expect("try_wait").is_none(),
            "{}",
            p.log()
        );
    })
    .await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read the hostname")
        .trim()
        .to_string()
}

/// `MemberList` through the proxy: with an advertised client URL (etcd's
/// default is `127.0.0.1:23790`) the proxy answers itself, one member
/// named after the host; with `--advertise-client-url=""` it passes the
/// cluster's list through.
#[tokio::test]
async fn member_list_advertise() {
    bounded(async {
        let c = Cluster::start(3).await;
        let adv = format!("127.0.0.1:{}", free_port());
        let p = GrpcProxy::start(&c.endpoints(), &[&format!("--advertise-client-url={adv}")]).await;
        let r = p.client().await.member_list().await.expect("member list");
        assert_eq!(r.members().len(), 1, "{r:?}");
        let m = &r.members()[0];
        assert_eq!(m.client_urls(), std::slice::from_ref(&adv));
        assert_eq!(m.name(), hostname());
        assert_eq!(m.id(), 0);
        assert!(m.peer_urls().is_empty());
        let j = p.etcdctl(&["member", "list", "-w", "json"]).await.json();
        assert_eq!(j["members"][0]["clientURLs"][0], adv.as_str(), "{j}");

        let p = GrpcProxy::start(&c.endpoints(), &[]).await;
        let r = p.client().await.member_list().await.expect("member list");
        let urls: Vec<&[String]> = r.members().iter().map(|m| m.client_urls()).collect();
        assert_eq!(urls, [["127.0.0.1:23790".to_string()]], "etcd's default");

        let p = GrpcProxy::start(&c.endpoints(), &["--advertise-client-url="]).await;
        let r = p.client().await.member_list().await.expect("member list");
        let mut ids: Vec<u64> = r.members().iter().map(|m| m.id()).collect();
        ids.sort_unstable();
        let mut want: Vec<u64> = (0..3).map(|i| c.member_id(i)).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "{r:?}");
        let mut urls: Vec<String> = r
            .members()
            .iter()
            .flat_map(|m| m.client_urls().to_vec())
            .collect();
        urls.sort();
        let mut want: Vec<String> = (0..3).map(|i| c.member(i).client_url()).collect();
        want.sort();
        assert_eq!(urls, want);
    })
    .await;
}

/// `/health` and `/metrics` on `--metrics-addr` (and on `--listen-addr`).
#[tokio::test]
async fn health_and_metrics() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        let p = GrpcProxy::start_with_metrics(&c.endpoints(), &[]).await;
        let murl = p.metrics_url.clone().expect("metrics url");
        for url in [murl.as_str(), p.url().as_str()] {
            let (code, body) = http_get(url, "/health").await;
            assert_eq!(code, 200, "{url}/health: {body}");
            let j: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
            assert_eq!(j["health"], "true", "{url}: {body}");
        }
        // etcd 3.4's proxy serves a member's metrics on both addresses (it
        // fetches the member's /metrics for each request).
        for url in [murl.as_str(), p.url().as_str()] {
            let (code, body) = http_get(url, "/metrics").await;
            assert_eq!(code, 200, "{url}/metrics");
            assert!(
                body.contains("# TYPE etcd_server_has_leader gauge"),
                "{url}/metrics: {body}"
            );
            assert_eq!(metric(&body, "etcd_server_has_leader"), Some(1.0), "{url}");
        }

        // Without a quorum the proxy is not healthy (503, health "false"),
        // and it is again once a quorum is back.
        c.kill9(0);
        c.kill9(1);
        for url in [murl.as_str(), p.url().as_str()] {
            let (code, body) = poll_until(
                "/health turns false",
                Duration::from_secs(20),
                || http_get(url, "/health"),
                |(code, _)| *code != 200,
            )
            .await;
            assert_eq!(code, 503, "{url}/health: {body}");
            let j: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
            assert_eq!(j["health"], "false", "{url}: {body}");
        }
        c.restart(0).await;
        for url in [murl.as_str(), p.url().as_str()] {
            let (_, body) = poll_until(
                "/health turns true again",
                Duration::from_secs(20),
                || http_get(url, "/health"),
                |(code, _)| *code == 200,
            )
            .await;
            let j: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
            assert_eq!(j["health"], "true", "{url}: {body}");
        }
    })
    .await;
}
