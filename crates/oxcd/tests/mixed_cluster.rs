//! Mixed clusters of real etcd 3.4 and oxcd members (issue 19): the members
//! of a running etcd cluster are replaced one at a time by oxcd, which boots
//! on the stopped member's data dir with the same flags and then speaks
//! etcd's peer protocol (rafthttp) with the etcd members still running.
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

use common::{free_port, run_etcdctl, server_binary, FAST_RAFT, STOP_DEADLINE};
use etcd_client::{Client, ConnectOptions, GetOptions, StatusResponse};

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

/// One member of the cluster, run by etcd or by the binary under test: the
/// same name, data dir, ports and flags whichever runs it.
struct Proc {
    bin: PathBuf,
    name: String,
    /// Holds `data/` and one log per start.
    dir: PathBuf,
    cport: u16,
    pport: u16,
    cluster: String,
    token: String,
    /// Starts so far; each start logs to its own file.
    starts: u32,
    child: Option<Child>,
    /// The member ID, as its own `Status` reported it once ready.
    id: u64,
}

impl Proc {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cport)
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
        let peer = format!("http://127.0.0.1:{}", self.pport);
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
            .arg("new")
            .args(FAST_RAFT)
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

/// Puts through member `i`, retried while it errs, bounded.
async fn put(procs: &[Proc], i: usize, key: &str, value: &str) {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let attempt = async {
            let mut c = connect(&procs[i].url(), Duration::from_secs(3))
                .await
                .ok_or_else(|| "cannot connect".to_string())?;
            c.put(key, value, None).await.map_err(|e| e.to_string())
        };
        let result = tokio::time::timeout(Duration::from_secs(4), attempt)
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        match result {
            Ok(_) => return,
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
    let names = ["a", "b", "c"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let cluster = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| format!("{n}=http://127.0.0.1:{}", p.1))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!(
        "mixed-{}-{}",
        std::process::id(),
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut procs: Vec<Proc> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| {
            let member_dir = dir.join(n);
            std::fs::create_dir_all(&member_dir).expect("create member dir");
            Proc {
                bin: PathBuf::from(ETCD),
                name: (*n).to_string(),
                dir: member_dir,
                cport: p.0,
                pport: p.1,
                cluster: cluster.clone(),
                token: token.clone(),
                starts: 0,
                child: None,
                id: 0,
            }
        })
        .collect();
    for p in &mut procs {
        p.spawn();
    }
    for i in 0..procs.len() {
        wait_ready(&mut procs, i).await;
    }
    procs
}

/// Stops member `i` (SIGTERM), starts `bin` on its data dir with the same
/// flags and waits until it serves reads; it must keep its member ID.
async fn replace(procs: &mut [Proc], i: usize, bin: &Path) {
    let id = procs[i].id;
    procs[i].stop().await;
    procs[i].bin = bin.to_path_buf();
    procs[i].spawn();
    wait_ready(procs, i).await;
    assert_eq!(
        procs[i].id,
        id,
        "{} reports another member ID than before its replacement",
        procs[i].label()
    );
}

/// Polls until every running member names the same leader in the same term
/// and that leader is running; returns its index.
async fn wait_leader(procs: &[Proc]) -> usize {
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
                return i;
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

/// The member IDs `member list` shows through member `i`.
async fn member_ids(procs: &[Proc], i: usize) -> BTreeSet<u64> {
    let until = Instant::now() + SETTLE_DEADLINE;
    loop {
        let attempt = async {
            let mut c = connect(&procs[i].url(), Duration::from_secs(3)).await?;
            c.member_list().await.ok()
        };
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(4), attempt).await {
            return r.members().iter().map(|m| m.id()).collect();
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
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(Writer::run(urls, stop.clone(), acked.clone()));
        Writer { stop, acked, task }
    }

    async fn run(urls: Vec<String>, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> Vec<usize> {
        let mut clients: Vec<Option<Client>> = vec![None; urls.len()];
        let mut acks = Vec::new();
        let mut turn = 0;
        // Paced, so the writes span the replacements.
        let mut pace = tokio::time::interval(Duration::from_millis(10));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0;
        while n < MAX_WRITES && !stop.load(Ordering::Relaxed) {
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
        assert!(!acks.is_empty(), "the writer got no put acknowledged");
        wait_leader(&procs).await;
        for i in 0..procs.len() {
            let kvs = range(&procs, i, "w/").await;
            let wrong: Vec<(String, Option<String>)> = acks
                .iter()
                .filter(|&&n| {
                    kvs.get(&write_key(n)).map(|(v, _)| v.clone()) != Some(write_value(n))
                })
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
                logs(&procs)
            );
        }
    })
    .await;
}

#[tokio::test]
async fn oxcd_leader_serves_etcd_followers() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = etcd_cluster(dir.path()).await;
        let leader = wait_leader(&procs).await;
        let ox = (0..3).find(|&i| i != leader).expect("a follower");
        replace(&mut procs, ox, &server_binary()).await;
        let etcds: Vec<usize> = (0..3).filter(|&i| i != ox).collect();

        // Ask the current leader to hand over to the oxcd member, until the
        // members agree it leads.
        let target = format!("{:x}", procs[ox].id);
        let until = Instant::now() + SETTLE_DEADLINE;
        loop {
            let leader = wait_leader(&procs).await;
            if leader == ox {
                break;
            }
            let out = run_etcdctl(&procs[leader].endpoint(), &["move-leader", &target], "").await;
            assert!(
                Instant::now() < until,
                "{} did not become leader within {SETTLE_DEADLINE:?}; last \
                 `etcdctl move-leader {target}` through {}: {out:#?}\n{}",
                procs[ox].label(),
                procs[leader].label(),
                logs(&procs)
            );
            tokio::time::sleep(POLL).await;
        }

        for &e in &etcds {
            let key = format!("via/{}", procs[e].name);
            put(&procs, e, &key, "through-an-etcd-follower").await;
            for r in 0..procs.len() {
                expect_value(&procs, r, &key, "through-an-etcd-follower").await;
            }
        }
        put(&procs, ox, "via/leader", "through-the-oxcd-leader").await;
        for r in 0..procs.len() {
            expect_value(&procs, r, "via/leader", "through-the-oxcd-leader").await;
        }
        assert_eq!(
            wait_leader(&procs).await,
            ox,
            "leadership left {} during the writes",
            procs[ox].label()
        );
    })
    .await;
}
