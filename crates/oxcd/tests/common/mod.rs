//! Black-box harness: spawns a real single-member server process and drives it
//! with the real `etcdctl` and with the `etcd-client` crate.
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

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, GetOptions};
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
fn free_port() -> u16 {
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

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
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
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(format!("{}={}", self.name, self.peer_url()))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", server_binary().display()));
        self.child = Some(child);
    }

    /// Polls until the member is ready; `Err(log)` if it exits or the
    /// deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Err(format!("server exited early with {status}\n{}", self.log()));
            }
            if self.log().contains("ready to serve client requests") || self.probe().await {
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
            client.get("probe", Some(GetOptions::new())).await.ok()
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
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < until,
                "server did not exit within {deadline:?} of SIGTERM\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the member again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.spawn();
        if let Err(log) = self.wait_ready().await {
            panic!("member did not become ready after restart:\n{log}");
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

async fn run_etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> CtlOutput {
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
