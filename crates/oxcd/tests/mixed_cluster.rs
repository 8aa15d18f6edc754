//! Mixed clusters of real etcd 3.4 and oxcd members (issue 19): the members
//! of a running etcd cluster are replaced one at a time by oxcd, which boots
//! on the stopped member's data dir with the same flags and then speaks
//! etcd's peer protocol (rafthttp) with the etcd members still running.
//! Beyond that: a fresh member of the binary under test joins an etcd
//! cluster as a learner and changes its membership in turn, database
//! snapshots cross between the kinds, and peers talk auto-TLS.
//! Needs the real etcd (`/usr/bin/etcd`); each test is skipped with a
//! message without it.
//!
//! The replacement is [`server_binary`], so `OXCD_TEST_SERVER=/usr/bin/etcd`
//! "replaces" members with etcd itself: the tests then check themselves
//! against the reference.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, run_etcdctl, server_binary, FAST_RAFT, STOP_DEADLINE, UNHEALTHY};
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseTimeToLiveOptions, PutOptions,
    StatusResponse, WatchOptions,
};

const ETCD: &str = "/usr/bin/etcd";

/// Upper bound for one test body; a rolling replacement takes three
/// restarts, more than [`common::TEST_DEADLINE`] allows for.
const TEST_DEADLINE: Duration = Duration::from_secs(180);

/// How long a member may take to serve serializable and linearizable reads.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// How long the members may take to agree on a leader, and how long one
/// request may keep failing (e.g. across an election) before a test fails.
const SETTLE_DEADLINE: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(50);

/// Keys written before the first replacement.
const EARLY_KEYS: usize = 50;

/// Most puts the background writer makes.
const MAX_WRITES: usize = 2000;

fn have_etcd() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    eprintln!("skipped: no {ETCD} to form a mixed cluster with");
    false
}

async fn bounded<F: Future<Output = ()>>(body: F) {
    let finished = tokio::time::timeout(TEST_DEADLINE, body).await;
    assert!(
        finished.is_ok(),
        "test exceeded its deadline of {TEST_DEADLINE:?}"
    );
}

/// What every member of a cluster is started with besides its own name,
/// ports and the cluster's membership.
#[derive(Clone, Default)]
struct Setup {
    /// Further flags, e.g. `--snapshot-count`.
    flags: Vec<String>,
    /// `https://` peer URLs and `--peer-auto-tls`.
    peer_tls: bool,
}

/// One member of the cluster, run by etcd or by the binary under test: the
/// same name, data dir, ports and flags whichever runs it.
struct Proc {
    bin: PathBuf,
    name: String,
    /// Holds `data/` and one log per start.
    dir: PathBuf,
    cport: u16,
    pport: u16,
    /// `--initial-cluster`.
    cluster: String,
    /// `--initial-cluster-state`: `new`, or `existing` for added members.
    state: &'static str,
    token: String,
    setup: Setup,
    /// Starts so far; each start logs to its own file.
    starts: u32,
    child: Option<Child>,
    /// The member ID, as its own `Status` reported it once ready.
    id: u64,
}

impl Proc {
    /// Member `name` run by `bin` under `base/name`, on fresh ports; its
    /// `cluster` is still to be set.
    fn new(base: &Path, name: &str, bin: &Path, token: &str, setup: &Setup) -> Proc {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).expect("create member dir");
        Proc {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            dir,
            cport: free_port(),
            pport: free_port(),
            cluster: String::new(),
            state: "new",
            token: token.to_string(),
            setup: setup.clone(),
            starts: 0,
            child: None,
            id: 0,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cport)
    }

    fn peer_url(&self) -> String {
        let scheme = if self.setup.peer_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.pport)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.cport)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.log", self.name, self.starts))
    }

    /// `a (/usr/bin/etcd)`: which member, run by what.
    fn label(&self) -> String {
        format!("{} ({})", self.name, self.bin.display())
    }

    fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.label());
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).expect("create log");
        let peer = self.peer_url();
        let mut cmd = Command::new(&self.bin);
        // Only our flags configure the member, not the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg(self.state)
            .args(FAST_RAFT)
            .args(&self.setup.flags)
            .args(self.setup.peer_tls.then_some("--peer-auto-tls"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// The current start's log, last lines only.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(60);
        lines[from..].join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("try_wait on our own child")
    }

    /// SIGTERM, as an operator stops a member, then wait (bounded).
    async fn stop(&mut self) {
        let pid = self.child.as_ref().expect("member is running").id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} ({}) failed", self.label());
        let until = Instant::now() + STOP_DEADLINE;
        while self.exited().is_none() {
            assert!(
                Instant::now() < until,
                "{} did not exit within {STOP_DEADLINE:?} of SIGTERM:\n{}",
                self.label(),
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
        self.child = None;
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("member is running");
        child.kill().expect("SIGKILL our own child");
        child.wait().expect("reap our own child");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every member's current log tail, for failure messages.
fn logs(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| {
            format!(
                "==== {} (start {}) ====\n{}",
                p.label(),
                p.starts,
                p.log_tail()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A client of `url` alone with short timeouts, or `None`.
async fn connect(url: &str, timeout: Duration) -> Option<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(timeout);
    let connecting = Client::connect([url], Some(opts));
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .ok()?
        .ok()
}

/// key -> (value, mod revision) under `prefix` through `url`, or why not.
async fn try_range(
    url: &str,
    prefix: &str,
    serializable: bool,
) -> Result<BTreeMap<String, (String, i64)>, String> {
    let attempt = async {
        let mut c = connect(url, Duration::from_secs(3))
            .await
            .ok_or_else(|| "cannot connect".to_string())?;
        let mut opts = GetOptions::new().with_prefix();
        if serializable {
            opts = opts.with_serializable();
        }
        let r = c.get(prefix, Some(opts)).await.map_err(|e| e.to_string())?;
        Ok(r.kvs()
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
            .collect())
    };
    tokio::time::timeout(Duration::from_secs(4), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()))
}

/// A linearizable range under `prefix` through member `i`, retried while it
/// errs (an election may be under way), bounded.
async fn range(procs: &[Proc], i: usize, prefix: &str) -> BTreeMap<String, (String, i64)> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        match try_range(&procs[i].url(), prefix, false).await {
            Ok(kvs) => return kvs,
            Err(e) => assert!(
                Instant::now() < until,
                "linearizable range {prefix:?} through {} kept failing for \
                 {SETTLE_DEADLINE:?}: {e}\n{}",
                procs[i].label(),
                logs(procs)
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asserts a linearizable get of `key` through member `i` returns `value`.
async fn expect_value(procs: &[Proc], i: usize, key: &str, value: &str) {
    let kvs = range(procs, i, key).await;
    assert_eq!(
        kvs.get(key).map(|(v, _)| v.as_str()),
        Some(value),
        "linearizable get of {key:?} through {}\n{}",
        procs[i].label(),
        logs(procs)
    );
}

/// Puts through member `i`, retried while it errs, bounded; returns the
/// put's revision.
async fn put(procs: &[Proc], i: usize, key: &str, value: &str) -> i64 {
    put_with(procs, i, key, value, None).await
}

/// [`put`] with options (e.g. a lease).
async fn put_with(
    procs: &[Proc],
    i: usize,
    key: &str,
    value: &str,
    opts: Option<PutOptions>,
) -> i64 {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let attempt = async {
            let mut c = connect(&procs[i].url(), Duration::from_secs(3))
                .await
                .ok_or_else(|| "cannot connect".to_string())?;
            c.put(key, value, opts.clone())
                .await
                .map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(Duration::from_secs(4), attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        match result {
            Ok(r) => return r.header().map_or(0, |h| h.revision()),
            Err(e) => assert!(
                Instant::now() < until,
                "put {key:?} through {} kept failing for {SETTLE_DEADLINE:?}: {e}\n{}",
                procs[i].label(),
                logs(procs)
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn status(url: &str) -> Option<StatusResponse> {
    let attempt = async {
        let mut c = connect(url, Duration::from_millis(1500)).await?;
        c.status().await.ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Polls until member `i` answers a serializable and a linearizable get
/// (so it has joined a quorum); learns its ID. Panics if it exits.
async fn wait_ready(procs: &mut [Proc], i: usize) {
    wait_serving(procs, i, true).await;
}

/// [`wait_ready`], for a learner too when not `linearizable`: learners
/// serve serializable reads only.
async fn wait_serving(procs: &mut [Proc], i: usize, linearizable: bool) {
    let until = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = procs[i].exited() {
            procs[i].child = None;
            panic!(
                "{} exited with {status} before it served clients\n{}",
                procs[i].label(),
                logs(procs)
            );
        }
        let url = procs[i].url();
        let serializable = try_range(&url, "probe", true).await;
        let linearizable = match &serializable {
            Ok(_) if !linearizable => Ok(BTreeMap::new()),
            Ok(_) => try_range(&url, "probe", false).await,
            Err(e) => Err(format!("(serializable failed first) {e}")),
        };
        if serializable.is_ok() && linearizable.is_ok() {
            if let Some(id) = status(&url)
                .await
                .and_then(|s| s.header().map(|h| h.member_id()))
            {
                procs[i].id = id;
                return;
            }
        }
        assert!(
            Instant::now() < until,
            "{} not ready within {READY_DEADLINE:?}: serializable get {:?}, \
             linearizable get {:?}\n{}",
            procs[i].label(),
            serializable.err(),
            linearizable.err(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Members "a", "b", "c" run by etcd under `dir`, all serving clients.
async fn etcd_cluster(dir: &Path) -> Vec<Proc> {
    etcd_cluster_with(dir, &Setup::default()).await
}

/// [`etcd_cluster`] with `setup`.
async fn etcd_cluster_with(dir: &Path, setup: &Setup) -> Vec<Proc> {
    let token = format!(
        "mixed-{}-{}",
        std::process::id(),
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut procs: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| Proc::new(dir, n, Path::new(ETCD), &token, setup))
        .collect();
    let cluster = procs
        .iter()
        .map(|p| format!("{}={}", p.name, p.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    for p in &mut procs {
        p.cluster = cluster.clone();
        p.spawn();
    }
    for i in 0..procs.len() {
        wait_ready(&mut procs, i).await;
    }
    procs
}

/// Starts `bin` as the stopped member `i` on its data dir with the same
/// flags and waits until it serves reads; it must keep its member ID.
async fn respawn(procs: &mut [Proc], i: usize, bin: &Path) {
    let id = procs[i].id;
    procs[i].bin = bin.to_path_buf();
    procs[i].spawn();
    wait_ready(procs, i).await;
    assert_eq!(
        procs[i].id,
        id,
        "{} reports another member ID than before its restart",
        procs[i].label()
    );
}

/// Stops member `i` (SIGTERM) and starts `bin` in its place ([`respawn`]).
async fn replace(procs: &mut [Proc], i: usize, bin: &Path) {
    procs[i].stop().await;
    respawn(procs, i, bin).await;
}

/// Kills member `i` (SIGKILL) and starts it again with the same binary and
/// flags ([`respawn`]).
async fn crash_and_restart(procs: &mut [Proc], i: usize) {
    procs[i].kill9();
    let bin = procs[i].bin.clone();
    respawn(procs, i, &bin).await;
}

/// Members "a", "b", "c" under `dir`, started by etcd, one follower then
/// replaced by the binary under test; returns them and that member's index.
async fn mixed_cluster(dir: &Path) -> (Vec<Proc>, usize) {
    mixed_cluster_with(dir, &Setup::default()).await
}

/// [`mixed_cluster`] with `setup`.
async fn mixed_cluster_with(dir: &Path, setup: &Setup) -> (Vec<Proc>, usize) {
    let mut procs = etcd_cluster_with(dir, setup).await;
    let leader = wait_leader(&procs).await;
    let ox = (0..3).find(|&i| i != leader).expect("a follower");
    replace(&mut procs, ox, &server_binary()).await;
    (procs, ox)
}

/// Polls until every running member names the same leader in the same term
/// and that leader is running; returns its index.
async fn wait_leader(procs: &[Proc]) -> usize {
    wait_leader_term(procs).await.0
}

/// [`wait_leader`], with the term they agree on.
async fn wait_leader_term(procs: &[Proc]) -> (usize, u64) {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let mut views = Vec::new();
        for p in procs.iter().filter(|p| p.is_running()) {
            let view = status(&p.url()).await.map(|s| (s.leader(), s.raft_term()));
            views.push((p.name.clone(), view));
        }
        if let Some((_, Some((leader, term)))) = views.first().cloned() {
            let agreed = views.iter().all(|(_, v)| *v == Some((leader, term)));
            let live = procs.iter().position(|p| p.is_running() && p.id == leader);
            if let (true, Some(i)) = (agreed && leader != 0, live) {
                return (i, term);
            }
        }
        assert!(
            Instant::now() < until,
            "running members did not agree on a running leader within \
             {SETTLE_DEADLINE:?}; (leader, term) per member: {views:?}; IDs: {:?}\n{}",
            procs.iter().map(|p| (&p.name, p.id)).collect::<Vec<_>>(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Asks the leader to hand over to member `to` (`etcdctl move-leader`) until
/// the members agree it leads.
async fn move_leader(procs: &[Proc], to: usize) {
    let target = format!("{:x}", procs[to].id);
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let leader = wait_leader(procs).await;
        if leader == to {
            return;
        }
        let out = run_etcdctl(&procs[leader].endpoint(), &["move-leader", &target], "").await;
        assert!(
            Instant::now() < until,
            "{} did not become leader within {SETTLE_DEADLINE:?}; last \
             `etcdctl move-leader {target}` through {}: {out:#?}\n{}",
            procs[to].label(),
            procs[leader].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The member IDs `member list` shows through member `i`.
async fn member_ids(procs: &[Proc], i: usize) -> BTreeSet<u64> {
    ids_of(&member_view(procs, i).await)
}

/// One member as `member list` shows it: (ID, name, peer URLs, client
/// URLs, is learner).
type MemberRow = (u64, String, Vec<String>, Vec<String>, bool);

fn ids_of(view: &[MemberRow]) -> BTreeSet<u64> {
    view.iter().map(|m| m.0).collect()
}

/// The members `member list` shows through member `i`, by ID.
async fn member_view(procs: &[Proc], i: usize) -> Vec<MemberRow> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let attempt = async {
            let mut c = connect(&procs[i].url(), Duration::from_secs(3)).await?;
            c.member_list().await.ok()
        };
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(4), attempt).await {
            let mut view: Vec<MemberRow> = r
                .members()
                .iter()
                .map(|m| {
                    (
                        m.id(),
                        m.name().to_string(),
                        m.peer_urls().to_vec(),
                        m.client_urls().to_vec(),
                        m.is_learner(),
                    )
                })
                .collect();
            view.sort();
            return view;
        }
        assert!(
            Instant::now() < until,
            "member list through {} kept failing\n{}",
            procs[i].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn one_etcd_member_replaced_by_oxcd_rejoins_the_running_cluster() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = etcd_cluster(dir.path()).await;
        let ids: BTreeSet<u64> = procs.iter().map(|p| p.id).collect();
        for k in 0..EARLY_KEYS {
            put(&procs, k % 3, &format!("early/{k:02}"), &format!("v{k}")).await;
        }
        let leader = wait_leader(&procs).await;
        let before = range(&procs, leader, "early/").await;
        assert_eq!(before.len(), EARLY_KEYS, "etcd lost early keys");

        let ox = (0..3).find(|&i| i != leader).expect("a follower");
        replace(&mut procs, ox, &server_binary()).await;
        let etcds: Vec<usize> = (0..3).filter(|&i| i != ox).collect();

        let through_ox = range(&procs, ox, "early/").await;
        assert_eq!(
            through_ox,
            before,
            "{} serves other (value, mod revision)s than etcd did",
            procs[ox].label()
        );
        let through_etcd = range(&procs, etcds[0], "early/").await;
        assert_eq!(through_etcd, before, "{} changed", procs[etcds[0]].label());

        put(&procs, ox, "put/through-oxcd", "from-oxcd").await;
        for &e in &etcds {
            expect_value(&procs, e, "put/through-oxcd", "from-oxcd").await;
        }
        put(&procs, etcds[0], "put/through-etcd", "from-etcd").await;
        expect_value(&procs, ox, "put/through-etcd", "from-etcd").await;

        for i in [ox, etcds[0], etcds[1]] {
            assert_eq!(
                member_ids(&procs, i).await,
                ids,
                "member list through {}",
                procs[i].label()
            );
        }

        // Without the etcd leader, etcd and oxcd must elect one of them.
        let leader = wait_leader(&procs).await;
        let victim = if leader == ox {
            eprintln!("oxcd leads already; killing an etcd follower instead");
            etcds[0]
        } else {
            leader
        };
        procs[victim].kill9();
        let new_leader = wait_leader(&procs).await;
        eprintln!(
            "after killing {}: {} leads",
            procs[victim].name,
            procs[new_leader].label()
        );
        let live: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        for &w in &live {
            let key = format!("after-kill/{}", procs[w].name);
            put(&procs, w, &key, "ok").await;
            for &r in &live {
                expect_value(&procs, r, &key, "ok").await;
            }
        }
    })
    .await;
}

/// A background writer: puts `w/NNNNN` keys in order, round-robin over the
/// members, retrying a key through the next member until acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<usize>>,
}

fn write_key(n: usize) -> String {
    format!("w/{n:05}")
}

fn write_value(n: usize) -> String {
    format!("value-{n}")
}

impl Writer {
    fn start(urls: Vec<String>) -> Writer {
        Writer::start_up_to(urls, MAX_WRITES)
    }

    /// [`Writer::start`], making at most `max` puts.
    fn start_up_to(urls: Vec<String>, max: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(Writer::run(urls, max, stop.clone(), acked.clone()));
        Writer { stop, acked, task }
    }

    async fn run(
        urls: Vec<String>,
        max: usize,
        stop: Arc<AtomicBool>,
        acked: Arc<AtomicUsize>,
    ) -> Vec<usize> {
        let mut clients: Vec<Option<Client>> = vec![None; urls.len()];
        let mut acks = Vec::new();
        let mut turn = 0;
        // Paced, so the writes span the replacements.
        let mut pace = tokio::time::interval(Duration::from_millis(10));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0;
        while n < max && !stop.load(Ordering::Relaxed) {
            pace.tick().await;
            let m = turn % urls.len();
            turn += 1;
            if clients[m].is_none() {
                clients[m] = connect(&urls[m], Duration::from_secs(2)).await;
            }
            let Some(c) = clients[m].as_mut() else {
                continue;
            };
            let sent = tokio::time::timeout(
                Duration::from_secs(3),
                c.put(write_key(n), write_value(n), None),
            )
            .await;
            if let Ok(Ok(_)) = sent {
                acks.push(n);
                acked.fetch_add(1, Ordering::Relaxed);
                n += 1;
            } else {
                // A put that failed may still commit: retrying it writes the
                // same value, and only acknowledged keys are checked.
                clients[m] = None;
            }
        }
        acks
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further puts are acknowledged, or the
    /// writer has made all its puts.
    async fn wait_progress(&self, more: usize, what: &str, procs: &[Proc]) {
        let want = self.acked() + more;
        let until = Instant::now() + SETTLE_DEADLINE;
        while self.acked() < want && !self.task.is_finished() {
            assert!(
                Instant::now() < until,
                "the writer got no {more} puts acknowledged {what} within \
                 {SETTLE_DEADLINE:?} ({} so far)\n{}",
                self.acked(),
                logs(procs)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn finish(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

#[tokio::test]
async fn rolling_replacement_of_all_three_members_keeps_every_write() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = etcd_cluster(dir.path()).await;
        let writer = Writer::start(procs.iter().map(Proc::url).collect());
        writer
            .wait_progress(20, "by the etcd cluster", &procs)
            .await;
        for i in 0..procs.len() {
            replace(&mut procs, i, &server_binary()).await;
            let leader = wait_leader(&procs).await;
            eprintln!(
                "replaced {}; {} leads; {} puts acknowledged",
                procs[i].name,
                procs[leader].label(),
                writer.acked()
            );
            let what = format!("after replacing {}", procs[i].label());
            writer.wait_progress(20, &what, &procs).await;
        }
        let acks = writer.finish().await;
        assert_acked_everywhere(&procs, &acks).await;
    })
    .await;
}

/// Every put the writer got acknowledged (`acks`) is present, with its
/// value, in a linearizable range through each member.
async fn assert_acked_everywhere(procs: &[Proc], acks: &[usize]) {
    assert!(!acks.is_empty(), "the writer got no put acknowledged");
    wait_leader(procs).await;
    for i in 0..procs.len() {
        let kvs = range(procs, i, "w/").await;
        let wrong: Vec<(String, Option<String>)> = acks
            .iter()
            .filter(|&&n| kvs.get(&write_key(n)).map(|(v, _)| v.clone()) != Some(write_value(n)))
            .map(|&n| (write_key(n), kvs.get(&write_key(n)).map(|(v, _)| v.clone())))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} acknowledged puts are missing or wrong through {}; \
             first ones (key, value found): {:?}\n{}",
            wrong.len(),
            acks.len(),
            procs[i].label(),
            &wrong[..wrong.len().min(10)],
            logs(procs)
        );
    }
}

#[tokio::test]
async fn oxcd_leader_serves_etcd_followers() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (procs, ox) = mixed_cluster(dir.path()).await;
        oxcd_leads_etcd_followers(&procs, ox).await;
    })
    .await;
}

/// Puts `key` through member `via` and reads it back (linearizable)
/// through every running member.
async fn put_read_everywhere(procs: &[Proc], via: usize, key: &str, value: &str) {
    put(procs, via, key, value).await;
    for r in (0..procs.len()).filter(|&r| procs[r].is_running()) {
        expect_value(procs, r, key, value).await;
    }
}

/// Moves leadership to member `ox`; then writes through each other member
/// and through `ox` must be read everywhere, and `ox` must keep leading.
async fn oxcd_leads_etcd_followers(procs: &[Proc], ox: usize) {
    move_leader(procs, ox).await;
    for e in (0..procs.len()).filter(|&e| e != ox) {
        let key = format!("via/{}", procs[e].name);
        put_read_everywhere(procs, e, &key, "through-an-etcd-follower").await;
    }
    put_read_everywhere(procs, ox, "via/leader", "through-the-oxcd-leader").await;
    assert_eq!(
        wait_leader(procs).await,
        ox,
        "leadership left {} during the writes",
        procs[ox].label()
    );
}

/// Bound on one client call the tests expect to succeed at once.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Awaits client call `f` to member `i`, bounded by [`CALL_DEADLINE`];
/// panics on an error or timeout, naming `what` and the member.
async fn call<T, F>(procs: &[Proc], i: usize, what: &str, f: F) -> T
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(CALL_DEADLINE, f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!(
            "{what} through {} failed: {e:?}\n{}",
            procs[i].label(),
            logs(procs)
        ),
        Err(_) => panic!(
            "{what} through {} got no answer within {CALL_DEADLINE:?}\n{}",
            procs[i].label(),
            logs(procs)
        ),
    }
}

/// A client of member `i` alone without a per-request timeout (it would
/// cut streams short), retried while connecting fails, bounded.
async fn stream_client(procs: &[Proc], i: usize) -> Client {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        let connecting = Client::connect([procs[i].url()], Some(opts));
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), connecting).await {
            return c;
        }
        assert!(
            Instant::now() < until,
            "cannot connect to {} within {SETTLE_DEADLINE:?}\n{}",
            procs[i].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// TTL of the leases the lease test grants, in seconds.
const LEASE_TTL: i64 = 5;

/// How long a lease is kept alive: well past its TTL.
const KEEP_ALIVE_FOR: Duration = Duration::from_secs(8);

const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);

/// How long after its last renewal an unrenewed lease's keys may outlive
/// its TTL: the leader's expiry check and the revoke's commit.
const EXPIRY_SLACK: Duration = Duration::from_secs(4);

/// A lease ID no test grants.
const UNKNOWN_LEASE: i64 = 0x0bad_cafe;

/// TimeToLive of a lease nobody granted, through member `i`: etcd answers
/// TTL -1, not an error.
async fn expect_unknown_lease(procs: &[Proc], i: usize) {
    let mut c = stream_client(procs, i).await;
    let what = format!("TimeToLive of unknown lease {UNKNOWN_LEASE:x}");
    let r = call(procs, i, &what, c.lease_time_to_live(UNKNOWN_LEASE, None)).await;
    assert_eq!(
        (r.id(), r.ttl()),
        (UNKNOWN_LEASE, -1),
        "{what} through {}: {r:?}",
        procs[i].label()
    );
}

/// Through member `via` only: grants a lease of [`LEASE_TTL`], attaches
/// `key`, keeps the lease alive past its TTL and asks its TimeToLive; the
/// key must outlive the TTL, on every member. Then stops the keepalives:
/// the key must be gone from every member once the TTL has run out.
async fn lease_kept_alive_then_expired(procs: &[Proc], via: usize, key: &str) {
    let label = procs[via].label();
    let mut c = stream_client(procs, via).await;
    let id = call(procs, via, "LeaseGrant", c.lease_grant(LEASE_TTL, None))
        .await
        .id();
    put_with(
        procs,
        via,
        key,
        "leased",
        Some(PutOptions::new().with_lease(id)),
    )
    .await;

    let what = format!("LeaseKeepAlive of {id:x}");
    let (mut keeper, mut answers) = call(procs, via, &what, c.lease_keep_alive(id)).await;
    let until = Instant::now() + KEEP_ALIVE_FOR;
    let mut last_renewal;
    loop {
        last_renewal = Instant::now();
        let renewal = async {
            keeper.keep_alive().await?;
            answers.message().await
        };
        let answer = call(procs, via, &what, renewal).await;
        let Some(answer) = answer else {
            panic!("{what} through {label}: the stream ended\n{}", logs(procs));
        };
        assert_eq!(
            (answer.id(), answer.ttl()),
            (id, LEASE_TTL),
            "{what} through {label}: {answer:?}\n{}",
            logs(procs)
        );
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
    }

    for i in 0..procs.len() {
        expect_value(procs, i, key, "leased").await;
    }
    let what = format!("TimeToLive of {id:x}");
    let with_keys = Some(LeaseTimeToLiveOptions::new().with_keys());
    let ttl = call(procs, via, &what, c.lease_time_to_live(id, with_keys)).await;
    assert!(
        ttl.id() == id
            && ttl.granted_ttl() == LEASE_TTL
            && ttl.ttl() > 0
            && ttl.ttl() <= LEASE_TTL
            && ttl.keys() == [key.as_bytes().to_vec()],
        "{what} through {label} while kept alive: {ttl:?}\n{}",
        logs(procs)
    );

    drop(keeper);
    drop(answers);
    let deadline = last_renewal + Duration::from_secs(LEASE_TTL as u64) + EXPIRY_SLACK;
    for i in 0..procs.len() {
        loop {
            let kvs = range(procs, i, key).await;
            if kvs.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{key:?} (lease {id:x}, TTL {LEASE_TTL} s) still present through {} \
                 {:?} after the last keepalive\n{}",
                procs[i].label(),
                last_renewal.elapsed(),
                logs(procs)
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let ttl = call(procs, via, &what, c.lease_time_to_live(id, None)).await;
    assert_eq!(
        ttl.ttl(),
        -1,
        "{what} through {label} once expired: {ttl:?}\n{}",
        logs(procs)
    );
}

#[tokio::test]
async fn leases_are_kept_alive_and_expire_across_both_kinds() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (procs, ox) = mixed_cluster(dir.path()).await;
        let etcds: Vec<usize> = (0..3).filter(|&i| i != ox).collect();

        // A: etcd leads; the oxcd follower forwards renewals and
        // TimeToLive to it.
        if wait_leader(&procs).await == ox {
            move_leader(&procs, etcds[0]).await;
        }
        for i in 0..procs.len() {
            expect_unknown_lease(&procs, i).await;
        }
        lease_kept_alive_then_expired(&procs, ox, "lease/via-oxcd-follower").await;

        // B: oxcd leads; an etcd follower forwards them to it.
        move_leader(&procs, ox).await;
        for i in 0..procs.len() {
            expect_unknown_lease(&procs, i).await;
        }
        lease_kept_alive_then_expired(&procs, etcds[0], "lease/via-etcd-follower").await;
        assert_eq!(
            wait_leader(&procs).await,
            ox,
            "leadership left {} during the lease test",
            procs[ox].label()
        );
    })
    .await;
}

/// Puts the watch test makes.
const WATCHED_PUTS: usize = 100;

/// (key, mod revision) of the put events `stream` delivers until `n` have
/// arrived and no more follow for a moment (so duplicates show), bounded.
async fn collect_puts(
    mut stream: etcd_client::WatchStream,
    n: usize,
) -> Result<Vec<(String, i64)>, String> {
    let mut events = Vec::new();
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let wait = if events.len() < n {
            until.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(500)
        };
        let message = match tokio::time::timeout(wait, stream.message()).await {
            Err(_) if events.len() >= n => return Ok(events),
            Err(_) => {
                return Err(format!(
                    "only {} events within {SETTLE_DEADLINE:?}",
                    events.len()
                ))
            }
            Ok(Err(e)) => return Err(format!("after {} events: {e:?}", events.len())),
            Ok(Ok(None)) => return Err(format!("stream ended after {} events", events.len())),
            Ok(Ok(Some(m))) => m,
        };
        if message.canceled() {
            return Err(format!(
                "watch canceled after {} events: {message:?}",
                events.len()
            ));
        }
        for e in message.events() {
            let Some(kv) = e.kv() else {
                return Err(format!("an event without a key-value: {e:?}"));
            };
            if e.event_type() != EventType::Put {
                return Err(format!("a {:?} event: {e:?}", e.event_type()));
            }
            events.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
}

/// Opens a watch of `prefix` from revision `from` through member `i`, waits
/// until it is created and collects its events ([`collect_puts`]) in a task.
async fn spawn_watch(
    procs: &[Proc],
    i: usize,
    prefix: &str,
    from: i64,
) -> tokio::task::JoinHandle<Result<Vec<(String, i64)>, String>> {
    let mut c = stream_client(procs, i).await;
    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
    let what = format!("Watch of {prefix:?}");
    let mut stream = call(procs, i, &what, c.watch(prefix, Some(opts))).await;
    let created = call(procs, i, &what, stream.message()).await;
    assert!(
        created
            .as_ref()
            .is_some_and(|m| m.created() && !m.canceled()),
        "{what} through {}: first answer {created:?}",
        procs[i].label()
    );
    tokio::spawn(async move {
        let _client = c;
        collect_puts(stream, WATCHED_PUTS).await
    })
}

#[tokio::test]
async fn watches_through_either_kind_see_writes_through_the_other() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (procs, ox) = mixed_cluster(dir.path()).await;
        let etcd = (0..3).find(|&i| i != ox).expect("an etcd member");

        // Both watches start after the current revision, so they see
        // exactly the puts below, whenever each is created.
        let mut c = stream_client(&procs, etcd).await;
        let now = call(&procs, etcd, "Get", c.get("watched/", None)).await;
        let from = now.header().map_or(0, |h| h.revision()) + 1;
        let watches = [
            (ox, spawn_watch(&procs, ox, "watched/", from).await),
            (etcd, spawn_watch(&procs, etcd, "watched/", from).await),
        ];

        let mut expected = Vec::new();
        for n in 0..WATCHED_PUTS {
            let key = format!("watched/{n:03}");
            let through = if n % 2 == 0 { ox } else { etcd };
            let revision = put(&procs, through, &key, "v").await;
            expected.push((key, revision));
        }
        assert!(
            expected.windows(2).all(|w| w[0].1 < w[1].1),
            "put revisions do not increase: {expected:?}"
        );

        for (i, watch) in watches {
            let seen = tokio::time::timeout(SETTLE_DEADLINE + CALL_DEADLINE, watch)
                .await
                .expect("watch collector outlived its own deadline")
                .expect("watch collector task")
                .unwrap_or_else(|e| {
                    panic!("watch through {}: {e}\n{}", procs[i].label(), logs(&procs))
                });
            let first_diff = seen.iter().zip(&expected).position(|(s, e)| s != e);
            assert!(
                seen == expected,
                "the watch through {} saw {} events, not the {} puts in revision \
                 order exactly once; first difference at index {first_diff:?}: saw {:?}, \
                 put {:?}\n{}",
                procs[i].label(),
                seen.len(),
                expected.len(),
                first_diff.map(|d| &seen[d]),
                first_diff.map(|d| &expected[d]),
                logs(&procs)
            );
        }
    })
    .await;
}

#[tokio::test]
async fn kill9_of_the_oxcd_member_and_restart_loses_nothing() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (mut procs, ox) = mixed_cluster(dir.path()).await;
        let writer = Writer::start(procs.iter().map(Proc::url).collect());
        writer
            .wait_progress(20, "by the mixed cluster", &procs)
            .await;

        crash_and_restart(&mut procs, ox).await;
        let what = format!("after restarting {}", procs[ox].label());
        writer.wait_progress(20, &what, &procs).await;

        let leader = wait_leader(&procs).await;
        eprintln!(
            "killing the leader {}; {} puts acknowledged",
            procs[leader].label(),
            writer.acked()
        );
        crash_and_restart(&mut procs, leader).await;
        let now = wait_leader(&procs).await;
        eprintln!(
            "restarted {}; {} leads; {} puts acknowledged",
            procs[leader].name,
            procs[now].label(),
            writer.acked()
        );
        let what = format!("after restarting the leader {}", procs[leader].label());
        writer.wait_progress(20, &what, &procs).await;

        let acks = writer.finish().await;
        assert_acked_everywhere(&procs, &acks).await;
    })
    .await;
}

/// Runs etcdctl against `endpoints` (comma-separated) until it succeeds,
/// retrying while it fails with an error containing one of `transient`,
/// bounded by [`SETTLE_DEADLINE`]; returns its stdout.
async fn etcdctl_until_ok(
    procs: &[Proc],
    endpoints: &str,
    args: &[&str],
    transient: &[&str],
) -> String {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let out = run_etcdctl(endpoints, args, "").await;
        if out.success {
            return out.stdout;
        }
        let retry = transient.iter().any(|t| out.stderr.contains(t));
        assert!(
            retry && Instant::now() < until,
            "`etcdctl {}` through {endpoints} failed (transient: {retry}, retried \
             for at most {SETTLE_DEADLINE:?}): {out:#?}\n{}",
            args.join(" "),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

fn endpoints(procs: &[Proc], members: &[usize]) -> String {
    members
        .iter()
        .map(|&i| procs[i].endpoint())
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds member `name`, run by `bin`, with `etcdctl member add` through
/// `via` (as a learner if asked; retried while etcd finds the cluster
/// unhealthy, as it does for ~5 s after start-up), starts it with
/// `--initial-cluster-state existing` and the `ETCD_INITIAL_CLUSTER`
/// etcdctl printed, and waits until it serves reads (serializable ones
/// only, for a learner). Returns its index.
async fn add_member(
    procs: &mut Vec<Proc>,
    via: &str,
    name: &str,
    bin: &Path,
    learner: bool,
) -> usize {
    let base = procs[0].dir.parent().expect("member dirs have a parent");
    let mut p = Proc::new(base, name, bin, &procs[0].token, &procs[0].setup);
    let peer_urls = format!("--peer-urls={}", p.peer_url());
    let mut args = vec!["member", "add", name, peer_urls.as_str()];
    if learner {
        args.push("--learner");
    }
    let out = etcdctl_until_ok(procs, via, &args, &[UNHEALTHY]).await;
    // Member 8e9e05c52164694d added to cluster ef37ad9dc622a7c4
    // ETCD_INITIAL_CLUSTER="a=http://...,d=http://..."
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("Member ")?.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("no member ID in `etcdctl member add` output:\n{out}"));
    p.cluster = out
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in `etcdctl member add`:\n{out}"))
        .to_string();
    p.state = "existing";
    p.spawn();
    procs.push(p);
    let i = procs.len() - 1;
    wait_serving(procs, i, !learner).await;
    if procs[i].id != id {
        // Seen once in about a dozen CI runs; the views and logs say whose
        // list disagrees.
        let mut views = String::new();
        for j in (0..procs.len()).filter(|&j| procs[j].is_running()) {
            let view = member_view(procs, j).await;
            views += &format!("{}: {view:?}\n", procs[j].label());
        }
        panic!(
            "{} reports member ID {:x}, `member add` gave it {id:x}:\n{out}\n{views}{}",
            procs[i].label(),
            procs[i].id,
            logs(procs)
        );
    }
    i
}

/// Polls until `member list` through every running member shows the same
/// members and `want` holds for them; returns what they show.
async fn wait_member_views(
    procs: &[Proc],
    what: &str,
    want: impl Fn(&[MemberRow]) -> bool,
) -> Vec<MemberRow> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let mut views = Vec::new();
        for i in (0..procs.len()).filter(|&i| procs[i].is_running()) {
            views.push((procs[i].name.clone(), member_view(procs, i).await));
        }
        let first = views[0].1.clone();
        if views.iter().all(|(_, v)| *v == first) && want(&first) {
            return first;
        }
        assert!(
            Instant::now() < until,
            "member lists {what} did not agree (or not as expected) within \
             {SETTLE_DEADLINE:?}; per member: {views:#?}\n{}",
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// How long a removed member may take to exit.
const REMOVED_EXIT_DEADLINE: Duration = Duration::from_secs(15);

/// Waits (bounded) until member `i`, removed from the cluster, exits.
async fn wait_removed_exit(procs: &mut [Proc], i: usize) {
    let until = Instant::now() + REMOVED_EXIT_DEADLINE;
    loop {
        if let Some(status) = procs[i].exited() {
            eprintln!("removed {} exited with {status}", procs[i].label());
            procs[i].child = None;
            return;
        }
        assert!(
            Instant::now() < until,
            "removed {} still runs {REMOVED_EXIT_DEADLINE:?} after its removal\n{}",
            procs[i].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Errors etcd answers `member promote` with while the learner lags.
const LEARNER_NOT_READY: &[&str] = &[
    "learner not ready",
    "can only promote a learner member which is in sync with leader",
];

#[tokio::test]
async fn an_oxcd_learner_joins_an_etcd_cluster_is_promoted_and_adds_an_etcd_member() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = etcd_cluster(dir.path()).await;
        for k in 0..EARLY_KEYS {
            put(&procs, k % 3, &format!("early/{k:02}"), &format!("v{k}")).await;
        }
        let before = range(&procs, 0, "early/").await;
        assert_eq!(before.len(), EARLY_KEYS, "etcd lost early keys");
        let etcd_endpoints = endpoints(&procs, &[0, 1, 2]);

        // A fresh learner, run by the binary under test, learns the
        // cluster from etcd and serves serializable reads of its data.
        let ox = add_member(&mut procs, &etcd_endpoints, "d", &server_binary(), true).await;
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let seen = try_range(&procs[ox].url(), "early/", true).await;
            if seen.as_ref() == Ok(&before) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the learner {} serves {seen:?} for \"early/\", not {before:?}\n{}",
                procs[ox].label(),
                logs(&procs)
            );
            tokio::time::sleep(POLL).await;
        }

        // The etcd leader promotes it; then it leads.
        let id = format!("{:x}", procs[ox].id);
        let args = ["member", "promote", id.as_str()];
        etcdctl_until_ok(&procs, &etcd_endpoints, &args, LEARNER_NOT_READY).await;
        wait_ready(&mut procs, ox).await;
        assert_eq!(
            range(&procs, ox, "early/").await,
            before,
            "linearizable range through the promoted {}",
            procs[ox].label()
        );
        move_leader(&procs, ox).await;

        // Through it, a fresh etcd member is added and joins.
        let via = procs[ox].endpoint();
        let e = add_member(&mut procs, &via, "e", Path::new(ETCD), false).await;
        assert_eq!(
            range(&procs, e, "early/").await,
            before,
            "linearizable range through the added {}",
            procs[e].label()
        );
        put_read_everywhere(&procs, e, "added/e", "through-the-added-etcd-member").await;
        let all: BTreeSet<u64> = procs.iter().map(|p| p.id).collect();
        assert_eq!(all.len(), 5, "member IDs: {all:?}");
        wait_member_views(&procs, "with the added etcd member", |v| {
            ids_of(v) == all && v.iter().all(|m| !m.4)
        })
        .await;

        // The oxcd leader removes it: it exits, and the list shrinks.
        let removed = format!("{:x}", procs[e].id);
        let args = ["member", "remove", removed.as_str()];
        etcdctl_until_ok(&procs, &via, &args, &[UNHEALTHY]).await;
        wait_removed_exit(&mut procs, e).await;
        let mut rest = all.clone();
        rest.remove(&procs[e].id);
        wait_member_views(&procs, "without the removed etcd member", |v| {
            ids_of(v) == rest
        })
        .await;
        assert_eq!(
            wait_leader(&procs).await,
            ox,
            "leadership left {}",
            procs[ox].label()
        );

        // An etcd member's peer URLs updated (through an etcd follower; a
        // second URL nobody listens on) read the same through both kinds.
        let extra = format!("http://127.0.0.1:{}", free_port());
        let urls = format!("--peer-urls={},{extra}", procs[0].peer_url());
        let updated = format!("{:x}", procs[0].id);
        let args = ["member", "update", updated.as_str(), urls.as_str()];
        etcdctl_until_ok(&procs, &procs[0].endpoint(), &args, &[UNHEALTHY]).await;
        let want: BTreeSet<String> = [procs[0].peer_url(), extra].into_iter().collect();
        let (a_id, a_name) = (procs[0].id, procs[0].name.clone());
        let view = wait_member_views(&procs, "after `member update`", |v| {
            v.iter().any(|m| {
                m.0 == a_id && m.1 == a_name && m.2.iter().cloned().collect::<BTreeSet<_>>() == want
            })
        })
        .await;
        eprintln!("member list after the update: {view:?}");
        put_read_everywhere(&procs, ox, "after/update", "ok").await;
    })
    .await;
}

/// `--snapshot-count` of the snapshot test: etcd snapshots every 100
/// entries and keeps 5 000 entries behind its snapshot for catch-up.
const SNAPSHOT_COUNT: &str = "100";

/// Puts made while a member is down: more than the 5 000 entries kept, so
/// the member can only catch up from a database snapshot.
const SNAPSHOT_WRITES: usize = 6_000;

/// Keys `k0`..`k999` the puts overwrite.
const SNAPSHOT_KEYS: usize = 1_000;

/// Concurrent clients making those puts.
const WRITERS: usize = 20;

/// How long those puts may take in all.
const WRITES_DEADLINE: Duration = Duration::from_secs(60);

/// Puts [`SNAPSHOT_WRITES`] values `{tag}-{n}` to keys `k0`..`k999` (each
/// overwritten) through member `via` from [`WRITERS`] concurrent clients,
/// each put retried until acknowledged, bounded by [`WRITES_DEADLINE`].
async fn overwrite_keys(procs: &[Proc], via: usize, tag: &str) {
    let started = Instant::now();
    let until = started + WRITES_DEADLINE;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let url = procs[via].url();
            let tag = tag.to_string();
            tokio::spawn(async move {
                let mut client: Option<Client> = None;
                let mut n = t;
                let mut last_error = String::new();
                while n < SNAPSHOT_WRITES {
                    if Instant::now() >= until {
                        return Err(format!("writer {t} stuck at put {n}: {last_error}"));
                    }
                    if client.is_none() {
                        client = connect(&url, Duration::from_secs(3)).await;
                    }
                    let Some(c) = client.as_mut() else {
                        last_error = "cannot connect".to_string();
                        tokio::time::sleep(POLL).await;
                        continue;
                    };
                    let key = format!("k{}", n % SNAPSHOT_KEYS);
                    let sent = tokio::time::timeout(
                        Duration::from_secs(4),
                        c.put(key, format!("{tag}-{n}"), None),
                    )
                    .await;
                    match sent {
                        Ok(Ok(_)) => n += WRITERS,
                        Ok(Err(e)) => last_error = e.to_string(),
                        Err(_) => last_error = "timed out".to_string(),
                    }
                    if !last_error.is_empty() {
                        client = None;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        let done = tokio::time::timeout(WRITES_DEADLINE + Duration::from_secs(5), task)
            .await
            .expect("a writer outlived its own deadline")
            .expect("writer task");
        if let Err(e) = done {
            panic!(
                "puts through {} failed: {e}\n{}",
                procs[via].label(),
                logs(procs)
            );
        }
    }
    eprintln!(
        "{SNAPSHOT_WRITES} puts through {} took {:?}",
        procs[via].label(),
        started.elapsed()
    );
}

/// Polls until a linearizable range of `prefix` through member `i` equals
/// the one through member `reference` (nothing writes meanwhile).
async fn wait_same_range(procs: &[Proc], i: usize, reference: usize, prefix: &str) {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let want = range(procs, reference, prefix).await;
        let seen = try_range(&procs[i].url(), prefix, false).await;
        let diff = match &seen {
            Ok(kvs) if *kvs == want => return,
            Ok(kvs) => format!(
                "{} keys, not {}; first difference: {:?}",
                kvs.len(),
                want.len(),
                want.iter()
                    .find(|(k, v)| kvs.get(*k) != Some(v))
                    .map(|(k, v)| (k, v, kvs.get(k)))
            ),
            Err(e) => e.clone(),
        };
        assert!(
            Instant::now() < until,
            "range {prefix:?} through {} did not match {} within \
             {SETTLE_DEADLINE:?}: {diff}\n{}",
            procs[i].label(),
            procs[reference].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

fn is_etcd(bin: &Path) -> bool {
    bin.file_name().is_some_and(|n| n == "etcd")
}

/// Asserts (polling its log briefly) that member `i` logged receiving a
/// database snapshot. That is the observable sign: with the log compacted
/// past where the member stopped, a snapshot is its only way to catch up,
/// and the lines name it. etcd 3.4 (capnslog) logs "applying snapshot at
/// index N..." and "finished applying incoming snapshot at index N"; oxcd
/// logs "receiving database snapshot [index: N, from: ...]".
async fn assert_snapshot_received(procs: &[Proc], i: usize) {
    let lines: &[&str] = if is_etcd(&procs[i].bin) {
        &["applying snapshot", "finished applying incoming snapshot"]
    } else {
        &["receiving database snapshot"]
    };
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(procs[i].log_path()).unwrap_or_default();
        let missing: Vec<&&str> = lines.iter().filter(|l| !log.contains(**l)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{} caught up without logging {missing:?} (no database snapshot \
             received?)\n{}",
            procs[i].label(),
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `HashKV` through `url` at the member's current revision: (revision,
/// hash, compact revision).
async fn hash_kv(url: &str) -> Option<(i64, u32, i64)> {
    let attempt = async {
        let mut c = connect(url, Duration::from_secs(3)).await?;
        let r = c.hash_kv(0).await.ok()?;
        Some((r.header()?.revision(), r.hash(), r.compact_version()))
    };
    tokio::time::timeout(Duration::from_secs(4), attempt)
        .await
        .ok()
        .flatten()
}

/// Polls until every running member answers `HashKV` with the same
/// revision, hash and compact revision (nothing writes meanwhile).
async fn wait_hash_kv_equal(procs: &[Proc]) {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let mut hashes = Vec::new();
        for p in procs.iter().filter(|p| p.is_running()) {
            hashes.push((p.name.clone(), hash_kv(&p.url()).await));
        }
        let first = hashes[0].1;
        if first.is_some() && hashes.iter().all(|(_, h)| *h == first) {
            eprintln!("HashKV (revision, hash, compact revision): {first:?}");
            return;
        }
        assert!(
            Instant::now() < until,
            "HashKV (revision, hash, compact revision) per member differs: \
             {hashes:?}\n{}",
            logs(procs)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every key `k0`..`k999` is there through every running member, with a
/// value of the last round of puts (`{tag}-...`).
async fn assert_all_keys(procs: &[Proc], tag: &str) {
    for i in (0..procs.len()).filter(|&i| procs[i].is_running()) {
        let kvs = range(procs, i, "k").await;
        let prefix = format!("{tag}-");
        let wrong: Vec<_> = (0..SNAPSHOT_KEYS)
            .map(|n| format!("k{n}"))
            .filter(|k| !kvs.get(k).is_some_and(|(v, _)| v.starts_with(&prefix)))
            .collect();
        assert!(
            wrong.is_empty() && kvs.len() == SNAPSHOT_KEYS,
            "through {}: {} keys; {} missing or not from the {tag:?} puts, first {:?}\n{}",
            procs[i].label(),
            kvs.len(),
            wrong.len(),
            &wrong[..wrong.len().min(10)],
            logs(procs)
        );
    }
}

#[tokio::test]
async fn database_snapshots_cross_between_oxcd_and_etcd() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            flags: vec!["--snapshot-count".to_string(), SNAPSHOT_COUNT.to_string()],
            peer_tls: false,
        };
        let (mut procs, ox) = mixed_cluster_with(dir.path(), &setup).await;
        let etcds: Vec<usize> = (0..3).filter(|&i| i != ox).collect();

        // etcd -> oxcd: the replaced member misses more than etcd keeps.
        procs[ox].stop().await;
        let leader = wait_leader(&procs).await;
        overwrite_keys(&procs, leader, "etcd").await;
        respawn(&mut procs, ox, &server_binary()).await;
        wait_same_range(&procs, ox, leader, "k").await;
        assert_snapshot_received(&procs, ox).await;
        assert_all_keys(&procs, "etcd").await;

        // oxcd -> etcd: an etcd follower misses more than oxcd keeps.
        move_leader(&procs, ox).await;
        let follower = etcds[0];
        procs[follower].stop().await;
        overwrite_keys(&procs, ox, "oxcd").await;
        respawn(&mut procs, follower, Path::new(ETCD)).await;
        wait_same_range(&procs, follower, ox, "k").await;
        assert_snapshot_received(&procs, follower).await;
        assert_all_keys(&procs, "oxcd").await;
        wait_hash_kv_equal(&procs).await;
    })
    .await;
}

#[tokio::test]
async fn peer_tls_mixed_cluster() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup {
            flags: Vec::new(),
            peer_tls: true,
        };
        let (procs, ox) = mixed_cluster_with(dir.path(), &setup).await;
        let etcd = (0..3).find(|&i| i != ox).expect("an etcd member");
        wait_member_views(&procs, "with https peer URLs", |v| {
            v.len() == 3
                && v.iter()
                    .all(|m| m.2.iter().all(|u| u.starts_with("https://")))
        })
        .await;
        put_read_everywhere(&procs, ox, "tls/via-oxcd", "from-oxcd").await;
        put_read_everywhere(&procs, etcd, "tls/via-etcd", "from-etcd").await;
        oxcd_leads_etcd_followers(&procs, ox).await;
    })
    .await;
}

/// The oxcd binary itself, whatever [`server_binary`] is: `export-etcd` is
/// its tool.
const OXCD: &str = env!("CARGO_BIN_EXE_oxcd");

/// How long `oxcd export-etcd` may take.
const EXPORT_DEADLINE: Duration = Duration::from_secs(30);

/// Most puts the writer of the rollback test makes: more than it manages
/// within [`TEST_DEADLINE`], so it writes throughout.
const ROLLBACK_WRITES: usize = 20_000;

/// Runs `oxcd export-etcd` (bounded) on the stopped member `i`'s data dir
/// and puts the etcd directory it writes in that dir's place; the oxcd one
/// is kept aside as `data.oxcd`.
async fn export_to_etcd(procs: &[Proc], i: usize) {
    let p = &procs[i];
    assert!(!p.is_running(), "{} still runs", p.label());
    let data = p.dir.join("data");
    let out = p.dir.join("data.exported");
    let log_path = p.dir.join(format!("{}.export.log", p.name));
    let log = std::fs::File::create(&log_path).expect("create export log");
    let command = format!(
        "{OXCD} export-etcd --data-dir {} --out {}",
        data.display(),
        out.display()
    );
    let mut child = Command::new(OXCD)
        .arg("export-etcd")
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{command}`: {e}"));
    let until = Instant::now() + EXPORT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on our own child") {
            break status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{command}` ran longer than {EXPORT_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.success(),
        "`{command}` exited with {status}:\n{output}\n{}",
        logs(procs)
    );
    eprintln!("{}: {}", p.name, output.trim());
    let aside = p.dir.join("data.oxcd");
    std::fs::rename(&data, &aside)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", data.display(), aside.display()));
    std::fs::rename(&out, &data)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", out.display(), data.display()));
}

/// One step's leadership: who led and in which term before and after it.
fn leadership_change(procs: &[Proc], before: (usize, u64), after: (usize, u64)) -> String {
    format!(
        "leader {} -> {}, term {} -> {} ({} elections)",
        procs[before.0].name,
        procs[after.0].name,
        before.1,
        after.1,
        after.1.saturating_sub(before.1)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_and_rollback_under_load_lose_nothing() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let mut procs = etcd_cluster(dir.path()).await;
        let urls: Vec<String> = procs.iter().map(Proc::url).collect();
        // Beside the writer, oxcd-check's workload through every member
        // (puts, reads of both kinds, deletes, txns, leases, watchers),
        // checked for linearizability, lost writes and watch order once
        // the replacements are over.
        let check = tokio::spawn(linearizability_check(urls.clone()));
        let writer = Writer::start_up_to(urls, ROLLBACK_WRITES);
        writer
            .wait_progress(20, "by the etcd cluster", &procs)
            .await;
        // Against etcd itself there is nothing to export: the "rollback"
        // restarts etcd on the same directory.
        let export = !is_etcd(&server_binary());
        let mut steps: Vec<String> = Vec::new();

        for i in 0..procs.len() {
            let before = wait_leader_term(&procs).await;
            replace(&mut procs, i, &server_binary()).await;
            let step = format!("replace {}", procs[i].name);
            let what = format!("after replacing {}", procs[i].label());
            record_step(&procs, &writer, &mut steps, step, &what, before, started).await;
        }

        for i in 0..procs.len() {
            let before = wait_leader_term(&procs).await;
            procs[i].stop().await;
            if export {
                export_to_etcd(&procs, i).await;
            }
            respawn(&mut procs, i, Path::new(ETCD)).await;
            let step = format!("roll back {}", procs[i].name);
            let what = format!("after rolling {} back", procs[i].label());
            record_step(&procs, &writer, &mut steps, step, &what, before, started).await;
        }

        let acks = writer.finish().await;
        eprintln!(
            "{} puts acknowledged; leadership per step: [{}]",
            acks.len(),
            steps.join("; ")
        );
        assert!(
            acks.len() < ROLLBACK_WRITES,
            "the writer made all its {ROLLBACK_WRITES} puts before the end \
             [{}]",
            steps.join("; ")
        );
        assert_acked_everywhere(&procs, &acks).await;
        wait_hash_kv_equal(&procs).await;
        let report = check
            .await
            .expect("the checker task panicked")
            .unwrap_or_else(|e| panic!("oxcd-check could not run: {e}\n{}", logs(&procs)));
        eprintln!("{}", report.summary());
        assert_eq!(
            report.exit_code(),
            0,
            "oxcd-check across [{}]:\n{}",
            steps.join("; "),
            report.summary()
        );
        eprintln!("took {:?}", started.elapsed());
    })
    .await;
}

/// Ends one replacement or roll-back step: records how leadership changed
/// since `before`, prints it, and waits until the writer gets 20 more puts
/// through (`what` names the step in the failure message).
async fn record_step(
    procs: &[Proc],
    writer: &Writer,
    steps: &mut Vec<String>,
    step: String,
    what: &str,
    before: (usize, u64),
    started: Instant,
) {
    let after = wait_leader_term(procs).await;
    let line = format!("{step}: {}", leadership_change(procs, before, after));
    eprintln!(
        "{line} ({:?}); {} puts acknowledged",
        started.elapsed(),
        writer.acked()
    );
    steps.push(line);
    let what = format!("{what} [{}]", steps.join("; "));
    writer.wait_progress(20, &what, procs).await;
}

/// How long oxcd-check's workload runs: about as long as the replacements
/// and roll-backs take (14–24 s on an unloaded machine); whatever of them
/// it covers is checked.
const CHECK_WORKLOAD: Duration = Duration::from_secs(24);

/// oxcd-check's workload against `urls` for [`CHECK_WORKLOAD`], then its
/// checks (linearizability, lost writes, watches, revisions).
async fn linearizability_check(
    urls: Vec<String>,
) -> Result<oxcd_check::report::Report, oxcd_check::Error> {
    let cfg = oxcd_check::run::Config {
        target: oxcd_check::run::Target::Endpoints(urls),
        clients: 4,
        watchers: 2,
        keys: 8,
        duration: CHECK_WORKLOAD,
        seed: 19,
        nemesis: oxcd_check::nemesis::Nemesis::None,
        op_timeout: Duration::from_secs(5),
        check_timeout: Duration::from_secs(60),
        selftest_stale_reads: false,
        snapshot_count: None,
    };
    oxcd_check::run::run(&cfg).await
}

/// The `etcdcluster` field of member `i`'s `/version`.
async fn cluster_version(procs: &[Proc], i: usize) -> String {
    let (status, body) = common::http_get(&procs[i].url(), "/version").await;
    assert_eq!(status, 200, "/version of {}: {body}", procs[i].label());
    let v: serde_json::Value = serde_json::from_str(&body).expect("/version is JSON");
    v["etcdcluster"].as_str().unwrap_or_default().to_string()
}

/// A cluster that never had an etcd member gives one added later the
/// cluster version: its leader replicates it as etcd's leader does
/// (`PUT /0/version`), so the etcd member reports `3.4.0`, not
/// `not_decided`, and logs that it set it.
#[tokio::test]
async fn the_leader_replicates_the_cluster_version_to_an_added_etcd_member() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("version-{}", std::process::id());
        let mut a = Proc::new(dir.path(), "a", &server_binary(), &token, &Setup::default());
        a.cluster = format!("a={}", a.peer_url());
        a.spawn();
        let mut procs = vec![a];
        wait_ready(&mut procs, 0).await;
        put(&procs, 0, "before", "the-etcd-member").await;

        let via = procs[0].endpoint();
        let e = add_member(&mut procs, &via, "e", Path::new(ETCD), false).await;
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let (ox, etcd) = (
                cluster_version(&procs, 0).await,
                cluster_version(&procs, e).await,
            );
            if ox == "3.4.0" && etcd == "3.4.0" {
                break;
            }
            assert!(
                Instant::now() < until,
                "cluster versions: {ox:?} through {}, {etcd:?} through {}\n{}",
                procs[0].label(),
                procs[e].label(),
                logs(&procs)
            );
            tokio::time::sleep(POLL).await;
        }
        let log = std::fs::read_to_string(procs[e].log_path()).unwrap_or_default();
        assert!(
            log.contains("initial cluster version"),
            "the etcd member did not log setting the cluster version:\n{}",
            procs[e].log_tail()
        );
        expect_value(&procs, e, "before", "the-etcd-member").await;
    })
    .await;
}
