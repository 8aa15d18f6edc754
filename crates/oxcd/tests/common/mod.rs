//! Black-box harness: spawns real server processes, a single member
//! ([`Member`]) or a multi-member cluster ([`Cluster`]), and drives them with
//! the real `etcdctl` and with the `etcd-client` crate.
//!
//! The server binary is `$OXCD_TEST_SERVER` when set (for example
//! `/usr/bin/etcd`, to validate the suite against the reference), otherwise
//! the `oxcd` binary built by cargo. Both receive etcd's own flags.
//!
//! Contracts:
//! - Every member gets its own temp data dir and its own pair of ports;
//!   tests may run in parallel (within and across test binaries).
//! - Readiness is a poll against a deadline: the log line
//!   `ready to serve client requests`, or a successful `Status` + `Get`.
//! - A `Member` only ever signals the process it spawned, by pid, and kills it
//!   (SIGKILL) on drop.
//! - Every helper that waits is bounded in time.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

pub mod proxy;
pub mod tls;

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, GetOptions, StatusResponse};
use proxy::{Mode, Proxy};
use tokio::io::AsyncWriteExt;

/// The real etcdctl (3.4) is the client-side oracle for output formats.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// How long a member may take to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Upper bound for one test body (see [`bounded`]).
pub const TEST_DEADLINE: Duration = Duration::from_secs(90);

/// Upper bound for one etcdctl invocation (its own `--command-timeout` is 5 s).
const ETCDCTL_DEADLINE: Duration = Duration::from_secs(20);

/// Interval of readiness / exit polls. Polling against a deadline, never a
/// bare sleep, is how tests wait (STYLE rule 10).
const POLL: Duration = Duration::from_millis(25);

/// Ports come from 10000..32000: below Linux's ephemeral range (32768+), so
/// outgoing connections of other processes do not take them. The start is
/// seeded per process, and each candidate is checked by binding it.
const PORT_LOW: u16 = 10_000;
const PORT_SPAN: u16 = 22_000;
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Runs a test body with the suite-wide deadline; panics on expiry.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    let finished = tokio::time::timeout(TEST_DEADLINE, body).await;
    assert!(
        finished.is_ok(),
        "test exceeded its deadline of {TEST_DEADLINE:?}"
    );
}

fn port_seed() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = std::process::id().wrapping_mul(7919) ^ nanos;
    u16::try_from(mix % u32::from(PORT_SPAN)).expect("remainder of a u16 span fits in u16")
}

/// Returns a port that was free a moment ago and that this process has not
/// handed out before.
pub fn free_port() -> u16 {
    // Seed once; a lost race only means two threads both seed, which is fine.
    if NEXT_PORT.load(Ordering::Relaxed) == 0 {
        let _ =
            NEXT_PORT.compare_exchange(0, port_seed().max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..PORT_SPAN {
        let offset = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % PORT_SPAN;
        let port = PORT_LOW + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_LOW}..{}", PORT_LOW + PORT_SPAN);
}

/// The server binary under test.
pub fn server_binary() -> PathBuf {
    match std::env::var_os("OXCD_TEST_SERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_oxcd")),
    }
}

/// One single-member cluster, owned by the test.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Kept alive for the member's lifetime; removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Number of processes started so far; each incarnation logs to its own
    /// files, so readiness only looks at the current one.
    incarnation: u32,
    /// `http` or `https` (peer TLS) for the peer URL.
    peer_scheme: &'static str,
    /// Membership flags (`--initial-cluster`, token, state) of a cluster
    /// member; empty means a single-member cluster of its own.
    cluster_args: Vec<String>,
    /// Further flags given on every start (e.g. raft timings, peer TLS).
    extra_args: Vec<String>,
    /// Flags for the next start only (e.g. `--force-new-cluster`).
    once_args: Vec<String>,
    /// Environment variables set on every start (e.g. hidden test knobs).
    envs: Vec<(String, String)>,
    /// Probe readiness with a serializable Get (a learner refuses
    /// linearizable reads).
    serializable_probe: bool,
    /// The fault-injecting proxy in front of the peer listener, if any: the
    /// member then advertises the proxy's port instead of its own.
    proxy: Option<Proxy>,
}

impl Member {
    /// Starts a fresh member and waits until it serves clients.
    /// Retries with new ports if the first ones were taken in the meantime.
    pub async fn start() -> Member {
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("oxcd-bbx-")
                .tempdir()
                .expect("create temp dir");
            let mut member = Member {
                name: "m0".to_string(),
                client_port: free_port(),
                peer_port: free_port(),
                dir,
                child: None,
                incarnation: 0,
                peer_scheme: "http",
                cluster_args: Vec::new(),
                extra_args: Vec::new(),
                once_args: Vec::new(),
                envs: Vec::new(),
                serializable_probe: false,
                proxy: None,
            };
            member.spawn();
            match member.wait_ready().await {
                Ok(()) => return member,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("member did not become ready:\n{log}"),
            }
        }
        panic!("member failed to start three times (ports in use):\n{last_log}");
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The URL the member listens on for peers.
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }

    /// The peer URL the member advertises (its proxy's, if it has one).
    pub fn advertised_peer_url(&self) -> String {
        match &self.proxy {
            Some(p) => format!("{}://127.0.0.1:{}", self.peer_scheme, p.port()),
            None => self.peer_url(),
        }
    }

    /// Switches the proxy in front of this member's peer listener (its
    /// inbound traffic for oxcd); panics if the member has none.
    pub fn set_peer_proxy(&self, mode: Mode) {
        self.peer_proxy().set(mode);
    }

    /// The proxy in front of this member's peer listener; panics if the
    /// member has none (see [`ClusterBuilder::peer_proxies`]).
    pub fn peer_proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("member was started without a peer proxy")
    }

    /// Whether a process of this member is running (not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `host:port` as etcdctl's `--endpoints` and its output spell it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self, stream: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{stream}-{}.log", self.incarnation))
    }

    /// The current incarnation's stderr and stdout.
    pub fn log(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "== {} (incarnation {}) stderr ==\n{}\n== stdout ==\n{}",
            server_binary().display(),
            self.incarnation,
            read(&self.log_path("stderr")),
            read(&self.log_path("stdout"))
        )
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "member is already running");
        self.incarnation += 1;
        let stderr = File::create(self.log_path("stderr")).expect("create stderr log");
        let stdout = File::create(self.log_path("stdout")).expect("create stdout log");
        let mut cmd = Command::new(server_binary());
        // Only our flags configure the member, not the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.advertised_peer_url());
        if self.cluster_args.is_empty() {
            cmd.arg("--initial-cluster").arg(format!(
                "{}={}",
                self.name,
                self.advertised_peer_url()
            ));
        } else {
            cmd.args(&self.cluster_args);
        }
        cmd.args(&self.extra_args)
            .args(std::mem::take(&mut self.once_args))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", server_binary().display()));
        self.child = Some(child);
    }

    /// One readiness check: `Ok(true)` when ready, `Err(log)` if the process
    /// has exited.
    async fn poll_ready(&mut self) -> Result<bool, String> {
        if let Some(status) = self.try_exit_status() {
            return Err(format!("server exited early with {status}\n{}", self.log()));
        }
        Ok(self.log().contains("ready to serve client requests") || self.probe().await)
    }

    /// Polls until the member is ready; `Err(log)` if it exits or the
    /// deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if self.poll_ready().await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {READY_DEADLINE:?}\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ready means Status answers and a linearizable Get succeeds.
    async fn probe(&self) -> bool {
        let attempt = async {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(300))
                .with_timeout(Duration::from_millis(700));
            let mut client = Client::connect([self.client_url()], Some(opts))
                .await
                .ok()?;
            client.status().await.ok()?;
            let opts = if self.serializable_probe {
                GetOptions::new().with_serializable()
            } else {
                GetOptions::new()
            };
            client.get("probe", Some(opts)).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(_))
        )
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("try_wait on our own child")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("member is running").id()
    }

    /// A client with bounded connect and request timeouts.
    pub async fn client(&self) -> Client {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10));
        Client::connect([self.client_url()], Some(opts))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.client_url(), self.log()))
    }

    /// SIGKILL, then reap. The member can be restarted afterwards.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("member is running");
        child.kill().expect("SIGKILL our own child");
        child.wait().expect("reap our own child");
    }

    /// SIGTERM, then wait (polling) for the exit; panics past the deadline.
    pub async fn stop_graceful(&mut self, deadline: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        self.wait_exit(deadline).await
    }

    /// Starts the member again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.spawn();
        if let Err(log) = self.wait_ready().await {
            panic!("member did not become ready after restart:\n{log}");
        }
    }

    /// Like [`Member::restart`], with `flags` added for this start only
    /// (e.g. `--force-new-cluster`).
    pub async fn restart_with(&mut self, flags: &[&str]) {
        self.once_args = flags.iter().map(|f| (*f).to_string()).collect();
        self.restart().await;
    }

    /// Starts the member again with `flags` for this start only, expecting
    /// it to exit before it becomes ready; returns its log.
    pub async fn restart_expecting_exit(&mut self, flags: &[&str]) -> String {
        self.once_args = flags.iter().map(|f| (*f).to_string()).collect();
        self.spawn();
        match self.wait_ready().await {
            Ok(()) => panic!("member became ready:\n{}", self.log()),
            Err(log) => {
                assert!(
                    self.try_exit_status().is_some(),
                    "member still running:\n{log}"
                );
                self.child = None;
                log
            }
        }
    }

    /// Waits (bounded, polling) until the member exits on its own, e.g. at
    /// a crash failpoint, and reaps it; it can be restarted afterwards.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let until = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < until,
                "member did not exit within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sets (or with `None` removes) an environment variable for the
    /// member's next starts.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.envs.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.envs.push((key.to_string(), v.to_string()));
        }
    }

    /// Runs etcdctl against this member.
    pub async fn etcdctl(&self, args: &[&str]) -> CtlOutput {
        self.etcdctl_stdin(args, "").await
    }

    /// Runs etcdctl against this member, feeding `stdin` (e.g. `txn -i`).
    pub async fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        run_etcdctl(&self.endpoint(), args, stdin).await
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one etcdctl invocation printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.success, "etcdctl failed: {self:#?}");
        &self.stdout
    }

    /// Asserts failure and returns the `Error: ...` line etcdctl printed last
    /// (the lines before it are the client's retry warnings).
    pub fn err(&self) -> &str {
        assert!(!self.success, "etcdctl unexpectedly succeeded: {self:#?}");
        self.stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_else(|| panic!("no `Error:` line: {self:#?}"))
    }

    /// Parses stdout as JSON (for `-w json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok().trim())
            .unwrap_or_else(|e| panic!("etcdctl output is not JSON ({e}): {self:#?}"))
    }
}

/// Runs etcdctl (v3 API) against `endpoint` alone, feeding `stdin`,
/// bounded by [`ETCDCTL_DEADLINE`].
pub async fn run_etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> CtlOutput {
    let mut cmd = tokio::process::Command::new(ETCDCTL);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=8s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn etcdctl");
    let mut input = child.stdin.take().expect("piped stdin");
    let bytes = stdin.as_bytes().to_vec();
    let run = async move {
        // Writing and closing stdin must not block reading the output.
        let feed = async move {
            let _ = input.write_all(&bytes).await;
            drop(input);
        };
        let ((), out) = tokio::join!(feed, child.wait_with_output());
        out
    };
    let out = tokio::time::timeout(ETCDCTL_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} exceeded {ETCDCTL_DEADLINE:?}"))
        .expect("wait for etcdctl");
    CtlOutput {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Standard base64 (with padding), as etcdctl's `-w json` prints bytes.
pub fn b64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The gRPC status inside an etcd-client error; panics on any other error.
pub fn grpc_status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Raft timings that keep multi-member tests fast: 50 ms heartbeats and a
/// 500 ms election timeout (etcd's defaults are 100 ms and 1 s).
pub const FAST_RAFT: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// The election timeout [`FAST_RAFT`] configures.
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

/// etcd's refusal of a membership change (`--strict-reconfig-check`) while
/// some member has not been connected for 5 s, e.g. just after start-up.
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";

/// How long a member may take to exit after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Starts a proxy to `127.0.0.1:target` on a free port.
fn start_proxy(target: u16) -> Proxy {
    let mut last = None;
    for _ in 0..10 {
        match Proxy::start(free_port(), target) {
            Ok(p) => return p,
            // Someone took the port since `free_port` looked.
            Err(e) => last = Some(e),
        }
    }
    panic!("cannot bind a peer proxy: {last:?}");
}

/// Distinguishes the clusters of one test process (the token also carries
/// the pid and the clock, so clusters of different processes differ too).
static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// How a [`Cluster`] is started: size, flags for every member, flags for
/// single members, peer TLS.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    size: usize,
    flags: Vec<String>,
    member_flags: Vec<Vec<String>>,
    peer_auto_tls: bool,
    /// Peer URLs are `https`, with certificates given by `flags`.
    peer_https: bool,
    envs: Vec<(String, String)>,
    peer_proxies: bool,
    /// Where the members' directories are made (default: the system's
    /// temp dir).
    base_dir: Option<PathBuf>,
}

impl ClusterBuilder {
    /// `size` members with [`FAST_RAFT`] timings and etcd's other defaults.
    pub fn new(size: usize) -> ClusterBuilder {
        assert!(size >= 1, "a cluster has at least one member");
        ClusterBuilder {
            size,
            flags: FAST_RAFT.iter().map(|f| (*f).to_string()).collect(),
            member_flags: vec![Vec::new(); size],
            peer_auto_tls: false,
            peer_https: false,
            envs: Vec::new(),
            peer_proxies: false,
            base_dir: None,
        }
    }

    /// Makes the members' data (and log) directories under `base`.
    pub fn base_dir(mut self, base: &Path) -> ClusterBuilder {
        self.base_dir = Some(base.to_path_buf());
        self
    }

    /// Puts a fault-injecting [`Proxy`] in front of every member's peer
    /// listener (see [`Cluster::isolate`]).
    pub fn peer_proxies(mut self) -> ClusterBuilder {
        self.peer_proxies = true;
        self
    }

    /// Adds `flags` to every member's command line (after [`FAST_RAFT`]).
    pub fn flags(mut self, flags: &[&str]) -> ClusterBuilder {
        self.flags.extend(flags.iter().map(|f| (*f).to_string()));
        self
    }

    /// Adds `flags` to member `i`'s command line only.
    pub fn member_flags(mut self, i: usize, flags: &[&str]) -> ClusterBuilder {
        self.member_flags[i].extend(flags.iter().map(|f| (*f).to_string()));
        self
    }

    /// Sets environment variable `key` for every member (members added
    /// later do not get it).
    pub fn env(mut self, key: &str, value: &str) -> ClusterBuilder {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Peer URLs in `https`, with the certificate flags given by
    /// [`ClusterBuilder::flags`].
    pub fn peer_https(mut self) -> ClusterBuilder {
        self.peer_https = true;
        self
    }

    /// Peers talk TLS: `https://` peer URLs and `--peer-auto-tls`.
    pub fn peer_auto_tls(mut self) -> ClusterBuilder {
        self.peer_auto_tls = true;
        self
    }

    /// Starts every member and waits until all serve clients. Retries with
    /// fresh ports (and a fresh token) if some port was taken meanwhile.
    pub async fn start(self) -> Cluster {
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut cluster = self.spawn_all();
            match cluster.wait_all_ready().await {
                Ok(()) => {
                    cluster.learn_ids().await;
                    return cluster;
                }
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("cluster did not become ready:\n{log}"),
            }
        }
        panic!("cluster failed to start three times (ports in use):\n{last_log}");
    }

    fn spawn_all(&self) -> Cluster {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let token = format!(
            "oxcd-bbx-{}-{}-{nanos}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let peer_scheme = if self.peer_auto_tls || self.peer_https {
            "https"
        } else {
            "http"
        };
        let mut common_flags = self.flags.clone();
        if self.peer_auto_tls {
            common_flags.push("--peer-auto-tls".to_string());
        }
        let mut members: Vec<Member> = (0..self.size)
            .map(|i| {
                let mut b = tempfile::Builder::new();
                b.prefix("oxcd-bbx-");
                let dir = match &self.base_dir {
                    Some(base) => b.tempdir_in(base),
                    None => b.tempdir(),
                }
                .expect("create temp dir");
                let mut extra_args = common_flags.clone();
                extra_args.extend(self.member_flags[i].iter().cloned());
                let peer_port = free_port();
                Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port,
                    dir,
                    child: None,
                    incarnation: 0,
                    peer_scheme,
                    cluster_args: Vec::new(),
                    extra_args,
                    once_args: Vec::new(),
                    envs: self.envs.clone(),
                    serializable_probe: false,
                    proxy: self.peer_proxies.then(|| start_proxy(peer_port)),
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster_args = vec![
                "--initial-cluster".to_string(),
                initial_cluster.clone(),
                "--initial-cluster-token".to_string(),
                token.clone(),
                "--initial-cluster-state".to_string(),
                "new".to_string(),
            ];
            m.spawn();
        }
        Cluster {
            members,
            ids: Vec::new(),
            token,
            common_flags,
            peer_scheme,
        }
    }
}

/// A multi-member cluster of real server processes on 127.0.0.1, owned by
/// the test. Members are `m0`, `m1`, ... with their own ports, data dirs and
/// logs. Dropping it SIGKILLs every member still running (by pid, through
/// [`Member`]'s drop).
pub struct Cluster {
    pub members: Vec<Member>,
    /// Member IDs by index, learned from `Status` once the cluster is ready.
    ids: Vec<u64>,
    token: String,
    /// Flags every member got (for members added later).
    common_flags: Vec<String>,
    peer_scheme: &'static str,
}

impl Cluster {
    /// `size` members with [`FAST_RAFT`] timings.
    pub async fn start(size: usize) -> Cluster {
        ClusterBuilder::new(size).start().await
    }

    pub fn builder(size: usize) -> ClusterBuilder {
        ClusterBuilder::new(size)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Member `i`'s ID (as `Status` and `member list` report it).
    pub fn member_id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    /// Index of the member with ID `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&x| x == id)
    }

    /// Indexes of the members whose process is running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// `host:port` of every member, running or not, in index order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `host:port` of the running members.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.live()
            .into_iter()
            .map(|i| self.members[i].endpoint())
            .collect()
    }

    /// A client of member `i` alone.
    pub async fn client_of(&self, i: usize) -> Client {
        self.members[i].client().await
    }

    /// A client with a short request timeout, for loops that must notice a
    /// dead or leaderless member quickly.
    pub async fn quick_client_of(&self, i: usize, timeout: Duration) -> Client {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(timeout);
        Client::connect([self.members[i].client_url()], Some(opts))
            .await
            .unwrap_or_else(|e| panic!("connect to member {i}: {e}"))
    }

    /// `Status` of member `i`, or `None` if it does not answer within 2 s.
    pub async fn status_of(&self, i: usize) -> Option<StatusResponse> {
        let url = self.members[i].client_url();
        let attempt = async move {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_millis(1500));
            let mut client = Client::connect([url], Some(opts)).await.ok()?;
            client.status().await.ok()
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
    }

    /// The running member that reports itself as leader (`Status.leader` is
    /// its own member ID); the highest term wins if a deposed leader has not
    /// noticed yet. One pass, no waiting.
    pub async fn leader_index(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.live() {
            let Some(st) = self.status_of(i).await else {
                continue;
            };
            let own = st.header().map_or(0, |h| h.member_id());
            if own != 0 && st.leader() == own && best.is_none_or(|(t, _)| st.raft_term() > t) {
                best = Some((st.raft_term(), i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Polls until every running member names the same leader in the same
    /// term and that leader is running; returns its index.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut views = Vec::new();
            for i in self.live() {
                let view = self
                    .status_of(i)
                    .await
                    .map(|st| (st.leader(), st.raft_term()));
                views.push(view);
            }
            if let Some(Some((leader, term))) = views.first().copied() {
                let agreed = views.iter().all(|v| *v == Some((leader, term)));
                if agreed && leader != 0 {
                    if let Some(i) = self.index_of(leader) {
                        if self.members[i].is_running() {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}; last (leader, term) per live member: \
                 {views:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Partitions member `i` from the others, both ways: its proxy is
    /// blackholed and every other proxy stops the connections member `i`
    /// opens (see [`proxy`]); needs [`ClusterBuilder::peer_proxies`].
    pub fn isolate(&self, i: usize) {
        self.members[i].set_peer_proxy(Mode::Blackhole);
        let pid = self.members[i].pid();
        for (j, m) in self.members.iter().enumerate() {
            if j != i {
                m.peer_proxy().block_origins(vec![pid]);
            }
        }
    }

    /// Blackholes only member `i`'s own proxy: a one-way fault whose
    /// direction depends on the server's transport (see [`proxy`]).
    pub fn isolate_inbound(&self, i: usize) {
        self.members[i].set_peer_proxy(Mode::Blackhole);
    }

    /// Lifts every fault [`Cluster::isolate`] or
    /// [`Cluster::isolate_inbound`] set for member `i`.
    pub fn heal(&self, i: usize) {
        self.members[i].set_peer_proxy(Mode::Pass);
        for (j, m) in self.members.iter().enumerate() {
            if j != i {
                m.peer_proxy().block_origins(Vec::new());
            }
        }
    }

    /// Member `i`, to change how it is started next.
    pub fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    /// SIGKILL member `i` (by pid) and reap it.
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }

    /// SIGTERM member `i` and wait (bounded) for its exit.
    pub async fn stop(&mut self, i: usize) -> ExitStatus {
        self.members[i].stop_graceful(STOP_DEADLINE).await
    }

    /// Starts member `i` again with its data dir, ports and flags. It must
    /// be able to reach a quorum to become ready.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].restart().await;
    }

    /// See [`Member::restart_expecting_exit`].
    pub async fn restart_expecting_exit(&mut self, i: usize, flags: &[&str]) -> String {
        self.members[i].restart_expecting_exit(flags).await
    }

    /// Like [`Cluster::restart`], with `flags` added for this start only.
    pub async fn restart_with(&mut self, i: usize, flags: &[&str]) {
        self.members[i].restart_with(flags).await;
    }

    /// Runs etcdctl with `--endpoints` listing every running member.
    pub async fn etcdctl(&self, args: &[&str]) -> CtlOutput {
        run_etcdctl(&self.live_endpoints().join(","), args, "").await
    }

    /// Runs etcdctl (all running members) until it succeeds or fails with
    /// an error containing none of `transient`; bounded by `within`.
    pub async fn etcdctl_retrying(
        &self,
        args: &[&str],
        transient: &[&str],
        within: Duration,
    ) -> CtlOutput {
        let deadline = Instant::now() + within;
        loop {
            let out = self.etcdctl(args).await;
            let retry = !out.success && transient.iter().any(|t| out.stderr.contains(t));
            if !retry || Instant::now() >= deadline {
                return out;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs etcdctl against member `i` alone.
    pub async fn etcdctl_on(&self, i: usize, args: &[&str]) -> CtlOutput {
        self.members[i].etcdctl(args).await
    }

    /// Member `i`'s current revision as its own store has it (a
    /// serializable read), or `None` if it does not answer.
    pub async fn local_revision(&self, i: usize) -> Option<i64> {
        let url = self.members[i].client_url();
        let attempt = async move {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_millis(1500));
            let mut client = Client::connect([url], Some(opts)).await.ok()?;
            let r = client
                .get("probe", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            Some(r.header()?.revision())
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
    }

    /// Polls until every running member has the same revision and the same
    /// `HashKV` at it; returns that revision. Only meaningful while nothing
    /// writes.
    pub async fn wait_converged(&self, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            let mut revs = Vec::new();
            for i in self.live() {
                revs.push(self.local_revision(i).await);
            }
            let mut hashes = Vec::new();
            if let Some(Some(rev)) = revs.first().copied() {
                if revs.iter().all(|r| *r == Some(rev)) {
                    for i in self.live() {
                        hashes.push(self.hash_kv_of(i, rev).await);
                    }
                    let first = hashes[0];
                    if first.is_some() && hashes.iter().all(|h| *h == first) {
                        return rev;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge within {within:?}: revisions {revs:?}, \
                 (hash, compact revision) {hashes:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Member `i`'s `HashKV` at `rev`: (hash, compact revision).
    pub async fn hash_kv_of(&self, i: usize, rev: i64) -> Option<(u32, i64)> {
        let url = self.members[i].client_url();
        let attempt = async move {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(3));
            let mut client = Client::connect([url], Some(opts)).await.ok()?;
            let r = client.hash_kv(rev).await.ok()?;
            Some((r.hash(), r.compact_version()))
        };
        tokio::time::timeout(Duration::from_secs(4), attempt)
            .await
            .ok()
            .flatten()
    }

    /// Adds a member through `etcdctl member add` (as a learner if asked),
    /// starts it with `--initial-cluster-state existing` and waits until it
    /// serves clients. Returns its index.
    pub async fn add_member(&mut self, learner: bool) -> usize {
        let i = self.len();
        let dir = tempfile::Builder::new()
            .prefix("oxcd-bbx-")
            .tempdir()
            .expect("create temp dir");
        let mut m = Member {
            name: format!("m{i}"),
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            child: None,
            incarnation: 0,
            peer_scheme: self.peer_scheme,
            cluster_args: Vec::new(),
            extra_args: self.common_flags.clone(),
            once_args: Vec::new(),
            envs: Vec::new(),
            serializable_probe: learner,
            proxy: None,
        };
        let peer_urls = format!("--peer-urls={}", m.peer_url());
        let mut args = vec!["member", "add", m.name.as_str(), peer_urls.as_str()];
        if learner {
            args.push("--learner");
        }
        let out = self
            .etcdctl_retrying(&args, &[UNHEALTHY], READY_DEADLINE)
            .await;
        // etcdctl prints the environment the new member needs, e.g.
        // ETCD_INITIAL_CLUSTER="m0=http://...,m3=http://...".
        let initial_cluster = out
            .ok()
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in {out:#?}"))
            .to_string();
        m.cluster_args = vec![
            "--initial-cluster".to_string(),
            initial_cluster,
            "--initial-cluster-token".to_string(),
            self.token.clone(),
            "--initial-cluster-state".to_string(),
            "existing".to_string(),
        ];
        m.spawn();
        if let Err(log) = m.wait_ready().await {
            panic!("added member did not become ready:\n{log}\n{}", self.logs());
        }
        let id = self.own_id(&m).await;
        self.members.push(m);
        self.ids.push(id);
        i
    }

    /// Forgets member `i` after it was removed from the cluster: waits
    /// (bounded) for its process to exit, which etcd does once it learns of
    /// its removal, and SIGKILLs it if it has not.
    pub async fn wait_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.members[i].try_exit_status() {
                self.members[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every member's current log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("==== {} ====\n{}", m.name, m.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Polls, for every ready member, until all serve clients; the first
    /// member that exits or the deadline ends the wait with `Err(logs)`.
    async fn wait_all_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut ready = vec![false; self.len()];
        loop {
            for (i, done) in ready.iter_mut().enumerate() {
                if !*done {
                    match self.members[i].poll_ready().await {
                        Ok(r) => *done = r,
                        Err(log) => return Err(format!("member m{i}: {log}\n{}", self.logs())),
                    }
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not all ready after {READY_DEADLINE:?} (ready: {ready:?})\n{}",
                    self.logs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reads every member's ID from its own `Status`.
    async fn learn_ids(&mut self) {
        let mut ids = Vec::new();
        for m in &self.members {
            ids.push(self.own_id(m).await);
        }
        self.ids = ids;
    }

    async fn own_id(&self, m: &Member) -> u64 {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let mut client = m.client().await;
            if let Ok(st) = client.status().await {
                if let Some(h) = st.header() {
                    return h.member_id();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not report its member ID\n{}",
                m.name,
                m.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// key -> (value, mod_revision) for every key under `prefix`, as member `i`'s
/// own store has it (a serializable range).
pub async fn local_dump(
    c: &Cluster,
    i: usize,
    prefix: &str,
) -> std::collections::BTreeMap<String, (String, i64)> {
    let mut client = c.client_of(i).await;
    let r = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap_or_else(|e| panic!("serializable range on member {i}: {e}"));
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect()
}

/// A plain HTTP/1.1 GET of `path` on `client_url` (`http://host:port`):
/// the status code and the body. Bounded by [`ETCDCTL_DEADLINE`].
pub async fn http_get(client_url: &str, path: &str) -> (u16, String) {
    http_request(client_url, "GET", path, "").await
}

/// A plain HTTP/1.1 request with a text body, as [`http_get`].
pub async fn http_request(client_url: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let addr = client_url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {client_url}"))
        .to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async move {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = tokio::time::timeout(ETCDCTL_DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} exceeded {ETCDCTL_DEADLINE:?}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, body)
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
