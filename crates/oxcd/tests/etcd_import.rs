//! Booting oxcd on etcd's data directories (issue 14, item 2): a stopped
//! etcd 3.4 member's `--data-dir`, what `etcdctl snapshot restore` wrote,
//! and a whole 3-member etcd cluster restarted as oxcd members. Data is
//! made by the real etcd (`/usr/bin/etcd`, Debian's `etcd-server`, which
//! CI installs); each test is skipped with a message without it.
//!
//! Also the refusals: a directory a running etcd holds, a corrupt WAL, an
//! etcd v2 directory; each names the file and leaves etcd's files as they
//! were. And the crash windows of the import itself.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bounded, free_port, server_binary};
use etcd_client::{Client, GetOptions, PutOptions};

const ETCD: &str = "/usr/bin/etcd";

fn have_etcd() -> bool {
    if Path::new(ETCD).exists() {
        return true;
    }
    eprintln!("skipping: no {ETCD} to make etcd's files with");
    false
}

/// One member of a local cluster: real etcd or oxcd, same flags.
struct Proc {
    bin: PathBuf,
    name: String,
    data: PathBuf,
    cport: u16,
    pport: u16,
    cluster: String,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Proc {
    fn new(bin: &Path, name: &str, data: &Path, ports: (u16, u16), cluster: &str) -> Proc {
        Proc {
            bin: bin.to_path_buf(),
            name: name.into(),
            data: data.to_path_buf(),
            cport: ports.0,
            pport: ports.1,
            cluster: cluster.into(),
            log: data.with_extension("log"),
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cport)
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.pport);
        let mut a: Vec<String> = [
            "--name",
            &self.name,
            "--data-dir",
            self.data.to_str().unwrap(),
            "--listen-client-urls",
            &self.url(),
            "--advertise-client-urls",
            &self.url(),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &self.cluster,
            "--initial-cluster-token",
            "import-test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = std::process::Command::new(&self.bin)
            .args(self.args(extra))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Runs to completion (a start that must fail); returns its output.
    fn run_expecting_exit(&self) -> String {
        self.run_expecting_exit_with(&[], &[])
    }

    /// [`Proc::run_expecting_exit`] with environment variables set and
    /// `extra` flags.
    fn run_expecting_exit_with(&self, env: &[(&str, &str)], extra: &[&str]) -> String {
        let mut child = std::process::Command::new(&self.bin)
            .args(self.args(extra))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                assert!(!status.success(), "the start was meant to fail");
                return String::from_utf8_lossy(&out.stderr).into_owned()
                    + &String::from_utf8_lossy(&out.stdout);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit", self.bin.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn client(&self) -> Client {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Client::connect([self.url()], None).await {
                if c.get("probe", None).await.is_ok() {
                    return c;
                }
            }
            assert!(
                Instant::now() < until,
                "{} does not serve on {}:\n{}",
                self.bin.display(),
                self.url(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and wait for the exit, as an operator stops a member.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let until = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} ignored SIGTERM", self.bin.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A single member "m" of `bin` on `data`, on free ports.
fn single(bin: &Path, data: &Path) -> Proc {
    let ports = (free_port(), free_port());
    let cluster = format!("m=http://127.0.0.1:{}", ports.1);
    Proc::new(bin, "m", data, ports, &cluster)
}

/// Members "a", "b", "c" of `bin`, each on `<dir>/<name>`, on free ports.
fn three(bin: &Path, dir: &Path) -> Vec<Proc> {
    let names = ["a", "b", "c"];
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let cluster = cluster_of(&names, &ports);
    names
        .iter()
        .zip(&ports)
        .map(|(n, p)| Proc::new(bin, n, &dir.join(n), *p, &cluster))
        .collect()
}

impl Proc {
    /// The same member (name, directory, ports, cluster) run by `bin`.
    fn as_run_by(&self, bin: &Path) -> Proc {
        Proc::new(
            bin,
            &self.name,
            &self.data,
            (self.cport, self.pport),
            &self.cluster,
        )
    }
}

/// Every file under `dir` with its bytes' hash: to show etcd's files were
/// not touched.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u32> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), crc32(&bytes));
            }
        }
    }
    out
}

fn crc32(b: &[u8]) -> u32 {
    // FNV is enough to tell files apart here.
    let mut h: u32 = 0x811c_9dc5;
    for x in b {
        h = (h ^ u32::from(*x)).wrapping_mul(0x0100_0193);
    }
    h
}

/// key, value, create and mod revision, version, lease.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);
/// key, value.
type Pair = (Vec<u8>, Vec<u8>);

/// What a client sees of a member's data, for comparing etcd and oxcd.
#[derive(Debug, PartialEq)]
struct Seen {
    kvs: Vec<Kv>,
    revision: i64,
    cluster_id: u64,
    member_id: u64,
    old_read: Result<Vec<Pair>, String>,
    compacted_read: String,
    leases: Vec<(i64, i64)>,
    users: Vec<String>,
    roles: Vec<String>,
    alice_roles: Vec<String>,
    members: Vec<(u64, String, Vec<String>, Vec<String>)>,
}

async fn observe(c: &mut Client, compacted_at: i64) -> Seen {
    let all = c
        .get("", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let header = all.header().unwrap();
    let kvs = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    let old_read = c
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(compacted_at + 5),
            ),
        )
        .await
        .map(|r| {
            r.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
                .collect()
        })
        .map_err(|e| e.to_string());
    let compacted_read = c
        .get(
            "k1",
            Some(GetOptions::new().with_revision(compacted_at - 1)),
        )
        .await
        .map_or_else(|e| e.to_string(), |_| "served".into());
    let mut leases = Vec::new();
    for l in c.leases().await.unwrap().leases() {
        let t = c.lease_time_to_live(l.id(), None).await.unwrap();
        leases.push((l.id(), t.granted_ttl()));
    }
    let users = c.user_list().await.unwrap().users().to_vec();
    let roles = c.role_list().await.unwrap().roles().to_vec();
    let alice_roles = c.user_get("alice").await.unwrap().roles().to_vec();
    let mut members: Vec<_> = c
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| {
            (
                m.id(),
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.client_urls().to_vec(),
            )
        })
        .collect();
    members.sort();
    Seen {
        kvs,
        revision: header.revision(),
        cluster_id: header.cluster_id(),
        member_id: header.member_id(),
        old_read,
        compacted_read,
        leases,
        users,
        roles,
        alice_roles,
        members,
    }
}

/// `--initial-cluster` for members `names` on `ports` (client, peer).
fn cluster_of(names: &[&str], ports: &[(u16, u16)]) -> String {
    names
        .iter()
        .zip(ports)
        .map(|(n, p)| format!("{n}=http://127.0.0.1:{}", p.1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits (bounded) until the member `c` talks to serves revision `want`
/// from its own store (a serializable read): it has applied everything.
async fn wait_applied(c: &mut Client, want: i64) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get("after/9", Some(GetOptions::new().with_serializable()))
            .await
            .unwrap();
        if r.header().unwrap().revision() >= want {
            return;
        }
        assert!(Instant::now() < until, "not applied up to {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every member of `procs` shows what `before` recorded of it (keys,
/// members, IDs, users, leases); the cluster has one leader and takes a
/// write that every member then serves.
async fn assert_same_cluster(procs: &[Proc], before: &[Seen], compact: i64) {
    for (p, b) in procs.iter().zip(before) {
        let mut c = p.client().await;
        let after = observe(&mut c, compact).await;
        assert_eq!(after.kvs, b.kvs);
        assert_eq!(after.members, b.members);
        assert_eq!(
            (after.cluster_id, after.member_id),
            (b.cluster_id, b.member_id)
        );
        assert_eq!(after.users, b.users);
        assert_eq!(after.leases, b.leases);
    }
    let mut c = procs[procs.len() - 1].client().await;
    c.put("written/after", "moved", None).await.unwrap();
    let mut leaders = std::collections::HashSet::new();
    for p in procs {
        let mut c = p.client().await;
        leaders.insert(c.status().await.unwrap().leader());
        let r = c.get("written/after", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"moved");
    }
    assert_eq!(leaders.len(), 1, "one leader: {leaders:?}");
    assert!(!leaders.contains(&0));
}

/// Writes keys with many revisions, a delete, a compaction, a lease with a
/// key on it, users and roles; returns the compaction revision.
async fn make_history(c: &mut Client) -> i64 {
    for i in 0..120 {
        c.put(format!("k{}", i % 7), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k3", None).await.unwrap();
    let lease = c.lease_grant(900, None).await.unwrap().id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.user_add("alice", "pw", None).await.unwrap();
    c.role_add("reader").await.unwrap();
    c.user_grant_role("alice", "reader").await.unwrap();
    let compact = 60;
    c.compact(compact, None).await.unwrap();
    for i in 0..10 {
        c.put(format!("after/{i}"), "y", None).await.unwrap();
    }
    compact
}

#[tokio::test]
async fn boots_on_a_stopped_etcd_members_data_dir_and_keeps_etcds_files() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.etcd");
        // A snapshot every 50 entries: the import starts from a snap file
        // and replays the WAL after it.
        let mut etcd = single(Path::new(ETCD), &data);
        etcd.spawn(&["--snapshot-count", "50"]);
        let mut c = etcd.client().await;
        let compact = make_history(&mut c).await;
        let before = observe(&mut c, compact).await;
        etcd.stop().await;
        let etcd_files = tree(&data.join("member"));
        assert!(
            etcd_files
                .keys()
                .any(|p| p.extension().is_some_and(|e| e == "snap")),
            "etcd took a raft snapshot: {etcd_files:?}"
        );

        let mut ox = etcd.as_run_by(&server_binary());
        ox.spawn(&[]);
        let mut c = ox.client().await;
        let after = observe(&mut c, compact).await;
        assert_eq!(after.kvs, before.kvs);
        assert_eq!(after.old_read, before.old_read);
        assert!(
            after.compacted_read.contains("compacted"),
            "{}",
            after.compacted_read
        );
        assert_eq!(after.compacted_read, before.compacted_read);
        assert_eq!(after.leases, before.leases);
        assert_eq!(
            (after.users.clone(), after.roles.clone()),
            (before.users.clone(), before.roles.clone())
        );
        assert_eq!(after.alice_roles, before.alice_roles);
        assert_eq!(after.members, before.members);
        assert_eq!(
            (after.cluster_id, after.member_id),
            (before.cluster_id, before.member_id)
        );
        assert_eq!(after.revision, before.revision);
        let lease = before.leases[0].0;
        let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
        assert!(ttl > 800, "the lease restarts from its TTL: {ttl}");
        assert!(ox.log_text().contains("imported the etcd data directory"));

        // etcd's files are beside oxcd's, byte for byte as etcd left them.
        assert_eq!(tree(&data.join("member.etcd")), etcd_files);

        // From here on oxcd runs on its own files.
        c.put("k1", "new", None).await.unwrap();
        ox.stop().await;
        ox.spawn(&[]);
        let mut c = ox.client().await;
        let k1 = c.get("k1", None).await.unwrap();
        assert_eq!(k1.kvs()[0].value(), b"new");
        assert_eq!(k1.header().unwrap().revision(), before.revision + 1);
        assert!(!ox.log_text().contains("importing"), "imported only once");
    })
    .await;
}

#[tokio::test]
async fn boots_on_a_restored_snapshot_from_either_server_and_either_restorer() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let etcd = || PathBuf::from(ETCD);
        // (server the snapshot is saved from, `snapshot restore` of
        // etcdctl or of oxcd)
        for (source, ours) in [
            (etcd(), false),
            (server_binary(), false),
            (etcd(), true),
            (server_binary(), true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let ports = (free_port(), free_port());
            let cluster = format!("s=http://127.0.0.1:{}", ports.1);
            let mut src = Proc::new(&source, "s", &dir.path().join("s"), ports, &cluster);
            src.spawn(&[]);
            let mut c = src.client().await;
            let compact = make_history(&mut c).await;
            let before = observe(&mut c, compact).await;
            let file = dir.path().join("backup.db");
            let save = std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &src.url(), "snapshot", "save"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(save.status.success(), "{save:?}");
            src.stop().await;

            let ports = (free_port(), free_port());
            let cluster = format!("r=http://127.0.0.1:{}", ports.1);
            let restored = dir.path().join("r");
            let restorer = if ours {
                server_binary()
            } else {
                PathBuf::from("etcdctl")
            };
            let out = std::process::Command::new(restorer)
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(&file)
                .args([
                    "--name",
                    "r",
                    "--data-dir",
                    restored.to_str().unwrap(),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    "import-test",
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{}", ports.1),
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains("added member"));
            let mut ox = Proc::new(&server_binary(), "r", &restored, ports, &cluster);
            ox.spawn(&[]);
            let mut c = ox.client().await;
            let after = observe(&mut c, compact).await;
            assert_eq!(after.kvs, before.kvs, "from {} ({ours})", source.display());
            assert_eq!(after.old_read, before.old_read);
            assert_eq!(after.leases, before.leases);
            assert_eq!(after.users, before.users);
            assert_eq!(after.alice_roles, before.alice_roles);
            assert_eq!(after.members.len(), 1);
            assert_eq!(after.members[0].1, "r");
            c.put("more", "1", None).await.unwrap();

            // A member added now joins from a snapshot, which must hold
            // it in its configuration (etcd's TestIssue6361): the restored
            // snapshot does not, so a new one is made.
            let ports2 = (free_port(), free_port());
            let peer2 = format!("http://127.0.0.1:{}", ports2.1);
            c.member_add([peer2.clone()], None).await.unwrap();
            let cluster2 = format!("{cluster},n={peer2}");
            let mut joined = Proc::new(
                &server_binary(),
                "n",
                &dir.path().join("n"),
                ports2,
                &cluster2,
            );
            joined.spawn(&["--initial-cluster-state", "existing"]);
            let mut c2 = joined.client().await;
            let more = c2.get("more", None).await.unwrap();
            assert_eq!(more.kvs()[0].value(), b"1");
            let k = c2
                .get("k", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            assert_eq!(k.kvs().len(), 6);
            joined.stop().await;
            ox.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_three_member_etcd_cluster_restarts_as_three_oxcd_members() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut etcds = three(Path::new(ETCD), dir.path());
        for e in &mut etcds {
            e.spawn(&["--snapshot-count", "40"]);
        }
        let mut c = etcds[0].client().await;
        let compact = make_history(&mut c).await;
        let mut before = Vec::new();
        for e in &etcds {
            let mut c = e.client().await;
            let want = c
                .get("after/9", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            wait_applied(&mut c, want).await;
            before.push(observe(&mut c, compact).await);
        }
        for e in &mut etcds {
            e.stop().await;
        }
        let mut oxs: Vec<Proc> = etcds
            .iter()
            .map(|e| e.as_run_by(&server_binary()))
            .collect();
        drop(etcds);
        for o in &mut oxs {
            o.spawn(&[]);
        }
        assert_same_cluster(&oxs, &before, compact).await;
    })
    .await;
}

#[tokio::test]
async fn refuses_a_directory_in_use_a_corrupt_wal_and_an_etcd_v2_directory_untouched() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.etcd");
        let mut etcd = single(Path::new(ETCD), &data);
        etcd.spawn(&[]);
        let mut c = etcd.client().await;
        c.put("a", "1", None).await.unwrap();

        // In use: etcd holds bbolt's lock on member/snap/db.
        let in_use = tree(&data.join("member")).len();
        let ox_ports = (free_port(), free_port());
        let ox_cluster = format!("m=http://127.0.0.1:{}", ox_ports.1);
        let ox = Proc::new(&server_binary(), "m", &data, ox_ports, &ox_cluster);
        let out = ox.run_expecting_exit();
        assert!(
            out.contains("member/snap/db") && out.contains("locked"),
            "{out}"
        );
        assert_eq!(tree(&data.join("member")).len(), in_use);
        assert!(!data.join("member.etcd").exists());
        etcd.stop().await;

        // A flipped byte in the WAL: refused, naming the WAL file.
        let wal_dir = data.join("member").join("wal");
        let wal = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "wal"))
            .unwrap();
        let mut bytes = std::fs::read(&wal).unwrap();
        bytes[200] ^= 0x55;
        std::fs::write(&wal, &bytes).unwrap();
        let files = tree(&data.join("member"));
        let out = ox.run_expecting_exit();
        assert!(out.contains(".wal"), "{out}");
        assert_eq!(tree(&data.join("member")), files, "nothing modified");
        assert!(!data.join("member.oxcd-import").exists());

        // An etcd 2 directory: a WAL, no v3 backend.
        std::fs::remove_file(data.join("member").join("snap").join("db")).unwrap();
        let out = ox.run_expecting_exit();
        assert!(out.contains("etcd v2 data directory"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn an_import_cut_short_is_redone_and_a_switch_cut_short_is_finished() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.etcd");
        let mut etcd = single(Path::new(ETCD), &data);
        etcd.spawn(&[]);
        let mut c = etcd.client().await;
        c.put("a", "1", None).await.unwrap();
        etcd.stop().await;

        // A build that stopped half way (no completion mark): redone.
        let work = data.join("member.oxcd-import");
        std::fs::create_dir_all(work.join("snap")).unwrap();
        std::fs::write(work.join("snap").join("db"), b"half a file").unwrap();
        let mut ox = etcd.as_run_by(&server_binary());
        ox.spawn(&[]);
        let mut c = ox.client().await;
        assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"1");
        c.put("b", "2", None).await.unwrap();
        ox.stop().await;
        assert!(!work.exists());

        // The crash between the two renames: etcd's files already moved
        // aside, the finished build not yet in place. The next start
        // completes the switch.
        std::fs::rename(data.join("member"), &work).unwrap();
        std::fs::write(work.join("IMPORT-DONE"), b"").unwrap();
        ox.spawn(&[]);
        let mut c = ox.client().await;
        assert_eq!(c.get("b", None).await.unwrap().kvs()[0].value(), b"2");
        assert!(data.join("member.etcd").exists());
        assert!(!work.exists());
    })
    .await;
}

/// Appends a torn record after the last record of the newest WAL file in
/// `wal_dir`: a frame that claims 1200 bytes, of which only the first 600
/// were written (the rest is still the preallocated zeros), as a crash
/// mid-write leaves it.
fn tear_wal(wal_dir: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    let last = files.last().expect("a WAL file");
    let mut data = std::fs::read(last).unwrap();
    let mut at = 0;
    while at + 8 <= data.len() {
        let field = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        if field == 0 {
            break;
        }
        at += 8 + (field & 0x00ff_ffff_ffff_ffff) as usize + ((field >> 56) & 0x7) as usize;
    }
    assert!(at + 8 + 1200 <= data.len(), "room in the preallocated file");
    data[at..at + 8].copy_from_slice(&1200u64.to_le_bytes());
    data[at + 8..at + 8 + 600].fill(0x11);
    std::fs::write(last, &data).unwrap();
}

/// etcd killed mid-write leaves a torn last WAL record, which etcd repairs
/// on its next start; oxcd's import keeps what is before it, as the repair
/// would, and tells so. (Checked against etcd itself first: it boots on
/// the same torn directory.)
#[tokio::test]
async fn imports_an_etcd_wal_with_a_torn_tail_as_etcd_repairs_it() {
    if !have_etcd() || server_binary() != Path::new(env!("CARGO_BIN_EXE_oxcd")) {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.etcd");
        let mut etcd = single(Path::new(ETCD), &data);
        etcd.spawn(&[]);
        let mut c = etcd.client().await;
        for i in 0..20 {
            c.put(format!("k{i:02}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        etcd.stop().await;
        tear_wal(&data.join("member").join("wal"));
        // etcd itself takes it (on a copy; its repair rewrites the file).
        let copy = dir.path().join("copy.etcd");
        assert!(std::process::Command::new("cp")
            .args(["-a", data.to_str().unwrap(), copy.to_str().unwrap()])
            .status()
            .unwrap()
            .success());
        let mut etcd_copy = single(Path::new(ETCD), &copy);
        etcd_copy.spawn(&[]);
        let mut c = etcd_copy.client().await;
        let n = c
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count();
        assert_eq!(n, 20, "etcd repaired its torn WAL");
        etcd_copy.stop().await;

        let mut ox = etcd.as_run_by(&server_binary());
        ox.spawn(&[]);
        let mut c = ox.client().await;
        let got = c
            .get("k", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        assert_eq!(got.count(), 20, "{}", ox.log_text());
        assert!(ox.log_text().contains("torn record"), "{}", ox.log_text());
        ox.stop().await;
    })
    .await;
}

/// The import's crash windows reached for real: oxcd crashes at each of
/// the import's failpoints (debug builds), with the WAL in `member/wal` and
/// with `--wal-dir`, and the next start finishes the import.
#[tokio::test]
async fn a_crash_at_each_import_failpoint_is_recovered() {
    if !have_etcd() || server_binary() != Path::new(env!("CARGO_BIN_EXE_oxcd")) {
        return;
    }
    bounded(async {
        let cases = [
            ("importBeforeSwitch", false),
            ("importBetweenRenames", false),
            ("importBeforeSwitch", true),
            ("importAfterWalSwitch", true),
            ("importBetweenRenames", true),
        ];
        for (point, own_wal_dir) in cases {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("m.etcd");
            let wal = dir.path().join("wal");
            let wal_flag = wal.to_str().unwrap().to_string();
            let extra: Vec<&str> = if own_wal_dir {
                vec!["--wal-dir", &wal_flag]
            } else {
                Vec::new()
            };
            let mut etcd = single(Path::new(ETCD), &data);
            etcd.spawn(&extra);
            let mut c = etcd.client().await;
            c.put("a", "1", None).await.unwrap();
            etcd.stop().await;
            let mut ox = etcd.as_run_by(&server_binary());
            let out = ox
                .run_expecting_exit_with(&[("OXCD_FAILPOINTS", &format!("{point}=crash"))], &extra);
            assert!(
                out.contains(&format!("failpoint {point}: crashing")),
                "{out}"
            );
            ox.spawn(&extra);
            let mut c = ox.client().await;
            let what = format!("{point}, --wal-dir: {own_wal_dir}");
            assert_eq!(
                c.get("a", None).await.unwrap().kvs()[0].value(),
                b"1",
                "{what}"
            );
            c.put("b", "2", None).await.unwrap();
            ox.stop().await;
            assert!(data.join("member.etcd").exists(), "{what}");
            assert!(!data.join("member.oxcd-import").exists(), "{what}");
            if own_wal_dir {
                assert!(dir.path().join("wal.etcd").exists(), "{what}");
                assert!(!dir.path().join("wal.oxcd-import").exists(), "{what}");
            }
            // oxcd runs on its own files from here on.
            ox.spawn(&extra);
            let mut c = ox.client().await;
            assert_eq!(
                c.get("b", None).await.unwrap().kvs()[0].value(),
                b"2",
                "{what}"
            );
            assert!(!ox.log_text().contains("importing"), "{what}");
            ox.stop().await;
        }
    })
    .await;
}

/// An etcd member with its WAL on a dedicated directory (`--wal-dir`, the
/// usual production setup) is imported: etcd's WAL is kept as
/// `<wal-dir>.etcd`, oxcd's WAL takes `<wal-dir>`.
#[tokio::test]
async fn imports_an_etcd_member_with_a_dedicated_wal_dir() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.etcd");
        let wal = dir.path().join("fast-disk").join("wal");
        let wal_flag = wal.to_str().unwrap().to_string();
        let mut etcd = single(Path::new(ETCD), &data);
        etcd.spawn(&["--wal-dir", &wal_flag, "--snapshot-count", "20"]);
        let mut c = etcd.client().await;
        let compact = make_history(&mut c).await;
        let before = observe(&mut c, compact).await;
        etcd.stop().await;
        let etcd_wal = tree(&wal);
        assert!(!data.join("member").join("wal").exists());

        let mut ox = etcd.as_run_by(&server_binary());
        ox.spawn(&["--wal-dir", &wal_flag]);
        let mut c = ox.client().await;
        let after = observe(&mut c, compact).await;
        assert_eq!(after.kvs, before.kvs);
        assert_eq!(after.revision, before.revision);
        assert_eq!(after.members, before.members);
        assert_eq!(
            tree(&wal.with_extension("etcd")),
            etcd_wal,
            "etcd's WAL kept as it was"
        );
        c.put("k1", "new", None).await.unwrap();
        ox.stop().await;
        ox.spawn(&["--wal-dir", &wal_flag]);
        let mut c = ox.client().await;
        assert_eq!(c.get("k1", None).await.unwrap().kvs()[0].value(), b"new");
        ox.stop().await;
    })
    .await;
}

#[test]
fn oxcd_snapshot_restore_refuses_what_etcdctl_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(server_binary())
            .args(["snapshot", "restore"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A page-sized file with a digest that does not match.
    let bad = dir.path().join("bad.db");
    let mut bytes = vec![0u8; 4096];
    bytes.extend_from_slice(&[7u8; 32]);
    std::fs::write(&bad, &bytes).unwrap();
    let target = dir.path().join("t");
    let err = run(&[
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(
        err.contains("expected sha256") && err.contains("bad.db"),
        "{err}"
    );
    assert!(!target.exists(), "nothing left behind");
    // No digest: only with --skip-hash-check; then it must be bbolt.
    std::fs::write(&bad, vec![0u8; 4096]).unwrap();
    let err = run(&[
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(err.contains("snapshot missing hash"), "{err}");
    let err = run(&[
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
        "--skip-hash-check",
    ]);
    assert!(err.contains("bbolt") || err.contains("magic"), "{err}");
    assert!(!target.exists());
    // An existing data dir is never written into.
    std::fs::create_dir(&target).unwrap();
    let err = run(&[
        bad.to_str().unwrap(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(err.contains("data-dir exists"), "{err}");
}

/// Runs `oxcd export-etcd`; returns (success, stdout + stderr).
fn export_etcd(data: &Path, out: &Path) -> (bool, String) {
    let o = std::process::Command::new(server_binary())
        .args(["export-etcd", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[tokio::test]
async fn export_etcd_writes_a_directory_the_real_etcd_boots_on() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.oxcd");
        // Raft snapshots every 50 entries: the member list comes from
        // oxcd's snapshot plus the WAL after it.
        let mut ox = single(&server_binary(), &data);
        ox.spawn(&["--snapshot-count", "50"]);
        let mut c = ox.client().await;
        let compact = make_history(&mut c).await;
        let before = observe(&mut c, compact).await;
        let out = dir.path().join("m.etcd");
        let (ok, msg) = export_etcd(&data, &out);
        assert!(
            !ok && msg.contains("running"),
            "refused while running: {msg}"
        );
        assert!(!out.exists());
        ox.stop().await;

        let (ok, msg) = export_etcd(&data, &out);
        assert!(ok, "{msg}");
        let mut etcd = Proc::new(
            Path::new(ETCD),
            "m",
            &out,
            (ox.cport, ox.pport),
            &ox.cluster,
        );
        etcd.spawn(&[]);
        let mut c = etcd.client().await;
        let after = observe(&mut c, compact).await;
        assert_eq!(after.kvs, before.kvs);
        assert_eq!(after.old_read, before.old_read);
        assert_eq!(after.compacted_read, before.compacted_read);
        assert_eq!(after.leases, before.leases);
        assert_eq!(after.users, before.users);
        assert_eq!(after.roles, before.roles);
        assert_eq!(after.alice_roles, before.alice_roles);
        assert_eq!(after.members, before.members);
        assert_eq!(
            (after.cluster_id, after.member_id, after.revision),
            (before.cluster_id, before.member_id, before.revision)
        );
        c.put("written/by", "etcd", None).await.unwrap();
        etcd.stop().await;
        // And back again: oxcd imports what etcd now holds.
        let mut ox = etcd.as_run_by(&server_binary());
        ox.spawn(&[]);
        let mut c = ox.client().await;
        let r = c.get("written/by", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"etcd");
        assert_eq!(r.header().unwrap().member_id(), before.member_id);
    })
    .await;
}

#[tokio::test]
async fn a_three_member_oxcd_cluster_exports_to_three_etcd_members() {
    if !have_etcd() {
        return;
    }
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut oxs = three(&server_binary(), dir.path());
        for o in &mut oxs {
            o.spawn(&["--snapshot-count", "40"]);
        }
        let mut c = oxs[0].client().await;
        let compact = make_history(&mut c).await;
        let want = c
            .get("after/9", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let mut before = Vec::new();
        for o in &oxs {
            let mut c = o.client().await;
            // Every member has applied everything before it is stopped.
            wait_applied(&mut c, want).await;
            before.push(observe(&mut c, compact).await);
        }
        for o in &mut oxs {
            o.stop().await;
        }
        let mut etcds = Vec::new();
        for o in &oxs {
            let out = o.data.with_extension("etcd");
            let (ok, msg) = export_etcd(&o.data, &out);
            assert!(ok, "{}: {msg}", o.name);
            let mut e = Proc::new(
                Path::new(ETCD),
                &o.name,
                &out,
                (o.cport, o.pport),
                &o.cluster,
            );
            e.spawn(&[]);
            etcds.push(e);
        }
        assert_same_cluster(&etcds, &before, compact).await;
    })
    .await;
}
