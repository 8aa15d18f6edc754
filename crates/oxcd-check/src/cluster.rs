//! The cluster under test: either members this checker starts itself from
//! a server binary (oxcd or etcd; both take etcd's flags), or an existing
//! cluster given by its client endpoints.
//!
//! Contracts:
//! - A member's process is only ever signalled by its pid, and only by the
//!   [`Member`] that spawned it; dropping a [`Member`] SIGKILLs it.
//! - Every member's peer traffic passes its [`Proxy`] (it advertises the
//!   proxy's port), so partitions need no privileges.
//! - Every wait is a poll against a deadline.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::client::MemberClient;
use crate::error::Error;
use crate::proxy::Proxy;

/// How long a member may take to serve clients after a (re)start.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Interval of readiness polls.
const POLL: Duration = Duration::from_millis(50);

/// Raft timings that keep elections (and thus nemesis recovery) short:
/// etcd's defaults are 100 ms and 1000 ms.
const FAST_RAFT: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "500"];

/// What every member of a started cluster gets besides the flags the
/// checker always sets: extra flags (e.g. `--snapshot-count`) and
/// environment (e.g. `OXCD_FAILPOINTS_HTTP=1` for the disk nemesis).
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Extra command-line flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// Whether `binary` is oxcd (its `--version` says `oxcd`), asked once with
/// a bounded wait; anything else (etcd, no answer) is `false`.
pub fn is_oxcd(binary: &Path) -> bool {
    let Ok(mut child) = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    out.contains("oxcd")
}

/// One member process started by the checker.
#[derive(Debug)]
pub struct Member {
    /// `m{i}`.
    pub name: String,
    /// The member's client port.
    pub client_port: u16,
    /// The member's own peer listener (not advertised).
    pub peer_port: u16,
    /// The proxy in front of `peer_port`, whose port is advertised.
    pub proxy: Proxy,
    data_dir: PathBuf,
    log_dir: PathBuf,
    binary: PathBuf,
    /// `--initial-cluster ...` and the rest, the same on every start
    /// (until the membership nemesis re-adds the member).
    cluster_args: Vec<String>,
    options: StartOptions,
    child: Option<Child>,
    paused: bool,
    incarnation: u32,
}

impl Member {
    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The peer URL the member advertises (its proxy's).
    pub fn advertised_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port())
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a process is running (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("{}.{}.log", self.name, self.incarnation))
    }

    /// How many times `needle` occurs in the current incarnation's log.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.log_path()).map_or(0, |t| t.matches(needle).count())
    }

    /// The last `lines` lines of the current incarnation's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn spawn(&mut self) -> Result<(), Error> {
        self.incarnation += 1;
        let log = File::create(self.log_path())
            .map_err(|e| Error::io(format!("create {}", self.log_path().display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("clone log file", e))?;
        let mut cmd = Command::new(&self.binary);
        // Only our flags configure the member, not the caller's ETCD_* env.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(self.advertised_peer_url())
            .args(&self.cluster_args)
            .args(FAST_RAFT)
            .args(&self.options.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            path: self.binary.clone(),
            reason: e.to_string(),
        })?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// `Some(status text)` if the process has exited (it is reaped then,
    /// and counts as not running).
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// Polls until the process exits on its own, at most `within`;
    /// `Some(status text)` if it did.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if !self.is_running() || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Removes the data dir (the member must not be running): the
    /// membership nemesis re-adds it as a new, empty member.
    ///
    /// # Errors
    /// The member runs, or the removal fails.
    pub fn wipe_data(&mut self) -> Result<(), String> {
        if self.is_running() {
            return Err(format!("{} is running; not wiping its data", self.name));
        }
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("remove {}: {e}", self.data_dir.display())),
        }
    }

    /// Starts the member (again) as a new member of an existing cluster
    /// whose members are `initial_cluster` (`name=peer-url,...`); later
    /// restarts keep these flags (they are ignored once data exists).
    ///
    /// # Errors
    /// It cannot be started.
    pub fn spawn_joining(&mut self, initial_cluster: String) -> Result<(), Error> {
        self.cluster_args = vec![
            "--initial-cluster".into(),
            initial_cluster,
            "--initial-cluster-state".into(),
            "existing".into(),
        ];
        self.spawn()
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    ///
    /// # Errors
    /// Not running, or the signal was refused.
    pub fn pause(&mut self, stop: bool) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| format!("bad pid {pid}"))?;
        let sig = if stop { Signal::STOP } else { Signal::CONT };
        kill_process(pid, sig).map_err(|e| format!("signal {} ({pid:?}): {e}", self.name))?;
        self.paused = stop;
        Ok(())
    }

    /// Polls until the member answers `Status` and a linearizable range.
    ///
    /// # Errors
    /// [`Error::NotReady`] with the log tail: it exited or timed out.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), Error> {
        let client =
            MemberClient::new(&self.client_url(), Duration::from_secs(1)).map_err(Error::Config)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Err(Error::NotReady(format!(
                    "{} exited with {status}; log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            if probe(&client).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady(format!(
                    "{} not ready within {within:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Ready means `Status` answers and a linearizable read succeeds (so the
/// member has a leader and has applied up to the read index).
pub async fn probe(client: &MemberClient) -> Result<(), String> {
    let attempt = async {
        client.status().await.map_err(|e| e.message().to_string())?;
        client
            .range(b"oxcd-check-probe", b"", 0, false)
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// A cluster of members started by the checker.
#[derive(Debug)]
pub struct Cluster {
    /// Members by index.
    pub members: Vec<Member>,
}

/// A free port on 127.0.0.1 at the time of asking.
fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("bind a probe port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("probe port address", e))
}

impl Cluster {
    /// Starts `size` members of `binary` under `dir` (data in `dir/m{i}`,
    /// logs in `dir/logs`) and waits until all serve clients. Retries with
    /// new ports if a port was taken in the meantime.
    ///
    /// # Errors
    /// The binary cannot be started, or members do not become ready.
    pub async fn start(
        binary: &Path,
        size: usize,
        dir: &Path,
        options: &StartOptions,
    ) -> Result<Cluster, Error> {
        if size == 0 {
            return Err(Error::Config("a cluster needs at least one member".into()));
        }
        let mut last = None;
        for attempt in 0..3 {
            let base = dir.join(format!("attempt{attempt}"));
            let mut cluster = Cluster::spawn_all(binary, size, &base, options)?;
            match cluster.wait_all_ready().await {
                Ok(()) => return Ok(cluster),
                Err(e) if e.to_string().contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::NotReady("ports kept being taken".into())))
    }

    fn spawn_all(
        binary: &Path,
        size: usize,
        base: &Path,
        options: &StartOptions,
    ) -> Result<Cluster, Error> {
        let log_dir = base.join("logs");
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| Error::io(format!("create {}", log_dir.display()), e))?;
        let token = format!(
            "oxcd-check-{}-{}",
            std::process::id(),
            base.display().to_string().len()
        );
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let peer_port = free_port()?;
            let proxy = Proxy::start(0, peer_port).map_err(|e| Error::io("start peer proxy", e))?;
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port,
                proxy,
                data_dir: base.join(format!("m{i}")),
                log_dir: log_dir.clone(),
                binary: binary.to_path_buf(),
                cluster_args: Vec::new(),
                options: options.clone(),
                child: None,
                paused: false,
                incarnation: 0,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.advertised_peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster_args = vec![
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
            ];
            m.spawn()?;
        }
        Ok(Cluster { members })
    }

    async fn wait_all_ready(&mut self) -> Result<(), Error> {
        for m in &mut self.members {
            m.wait_ready(READY_DEADLINE).await?;
        }
        Ok(())
    }

    /// Client URLs by member index.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILL member `i`.
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
    }

    /// Starts member `i` again on its data dir, without waiting.
    ///
    /// # Errors
    /// It cannot be started.
    pub fn spawn(&mut self, i: usize) -> Result<(), Error> {
        let m = &mut self.members[i];
        if m.is_running() {
            return Ok(());
        }
        m.spawn()
    }

    /// Starts member `i` again on its data dir and waits until it serves.
    ///
    /// # Errors
    /// It cannot be started or does not become ready.
    pub async fn restart(&mut self, i: usize) -> Result<(), Error> {
        let m = &mut self.members[i];
        if !m.is_running() {
            m.spawn()?;
        }
        m.wait_ready(READY_DEADLINE).await
    }

    /// Partitions member `i` from every other member, both ways.
    pub fn isolate(&self, i: usize) {
        self.members[i].proxy.cut(true);
        let pid: Vec<u32> = self.members[i].pid().into_iter().collect();
        for (j, m) in self.members.iter().enumerate() {
            if j != i {
                m.proxy.block_origins(pid.clone());
            }
        }
    }

    /// Cuts one direction of member `i`'s links to every peer, connections
    /// kept open: with `deaf` it hears no peer, else no peer hears it.
    pub fn one_way(&self, i: usize, deaf: bool) {
        let pid: Vec<u32> = self.members[i].pid().into_iter().collect();
        for (j, m) in self.members.iter().enumerate() {
            match (j == i, deaf) {
                (true, true) => m.proxy.deaf_target(true),
                (true, false) => m.proxy.mute_target(true),
                (false, true) => m.proxy.deaf_origins(pid.clone()),
                (false, false) => m.proxy.mute_origins(pid.clone()),
            }
        }
    }

    /// Lifts every partition, both-way and one-way.
    pub fn heal_all(&self) {
        for m in &self.members {
            m.proxy.heal();
        }
    }

    /// Peer connections no proxy could attribute to a process.
    pub fn unattributed_connections(&self) -> usize {
        self.members.iter().map(|m| m.proxy.unattributed()).sum()
    }

    /// The index of the member that calls itself leader with the highest
    /// term, asking every running, unpaused member once.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() || m.is_paused() {
                continue;
            }
            let Ok(client) = MemberClient::new(&m.client_url(), Duration::from_secs(1)) else {
                continue;
            };
            let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(2), client.status()).await
            else {
                continue;
            };
            let own = st.header.as_ref().map_or(0, |h| h.member_id);
            if own != 0 && st.leader == own && best.is_none_or(|(t, _)| st.raft_term > t) {
                best = Some((st.raft_term, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Heals partitions, resumes paused members and restarts killed ones,
    /// then waits until every member serves linearizable reads.
    ///
    /// # Errors
    /// A member cannot be resumed or does not become ready.
    pub async fn recover_all(&mut self) -> Result<(), Error> {
        self.heal_all();
        for m in &mut self.members {
            if m.is_paused() {
                m.pause(false).map_err(Error::Heal)?;
            }
        }
        for i in 0..self.members.len() {
            self.restart(i).await?;
        }
        Ok(())
    }

    /// The last lines of every member's log, for error reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| format!("== {} ==\n{}", m.name, m.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Checks that every endpoint of an existing cluster answers `Status` and
/// a linearizable read.
///
/// # Errors
/// [`Error::Unreachable`] naming the endpoints that do not answer.
pub async fn check_reachable(urls: &[String]) -> Result<(), Error> {
    let mut bad = Vec::new();
    for url in urls {
        let client = MemberClient::new(url, Duration::from_secs(2))
            .map_err(|e| Error::Unreachable(e.to_string()))?;
        if let Err(e) = probe(&client).await {
            bad.push(format!("{url}: {e}"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Unreachable(format!(
            "these endpoints do not serve linearizable reads: {}",
            bad.join("; ")
        )))
    }
}
