//! The Snapshot RPC (etcd's `maintenanceServer.Snapshot`): the backend as
//! an etcd bbolt file, streamed in 32 KiB chunks, then the file's SHA-256
//! as a last chunk, which `etcdctl snapshot save` checks and `snapshot
//! restore` expects (a file of `n × 4096 + 32` bytes).
//!
//! oxcd's tables are etcd's buckets byte for byte (see `oxcd_mvcc`'s
//! backend), so the file is written from one consistent read of them,
//! plus the buckets etcd keeps there and oxcd keeps elsewhere: `members`,
//! `members_removed` and `cluster`. It is built in a temporary file next
//! to the backend, off the async threads and without blocking writers,
//! and removed once sent or abandoned.
//!
//! Beyond etcd: a snapshot must not slow the writes going on. The file is
//! built on a thread of its own at the idle CPU policy (`SCHED_IDLE`), and its
//! dirty pages are written back every MiB, so that the WAL's next
//! fdatasync never waits for a gigabyte of snapshot data the file system
//! would otherwise flush with it (ext4's ordered journal commits).

use std::io::Read;
use std::path::{Path, PathBuf};

use oxcd_api::etcdserverpb::SnapshotResponse;
use oxcd_etcd_format::bolt::BoltWriter;
use oxcd_mvcc::ExportView;
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::membership::Member;
use crate::core::Core;

/// etcd's chunk size.
const CHUNK: usize = 32 * 1024;

/// The tables that are etcd buckets as they are (also what an import of
/// an etcd backend copies).
pub(crate) const TABLES: [&str; 7] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "key",
    "lease",
    "meta",
];

/// The cluster version the file records (`cluster` bucket).
const CLUSTER_VERSION: &str = "3.4.0";

/// Streams the snapshot: the receiver yields the chunks, then the
/// checksum; dropping it (the client went away) stops the sender, which
/// removes the temporary file.
pub fn stream(core: &Core) -> mpsc::Receiver<Result<SnapshotResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    let store = core.store.clone();
    let members = core.members.list();
    let removed = core.members.removed_ids();
    let fail = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            oxcd_mvcc::background::lower_this_thread("snapshot");
            let started = std::time::Instant::now();
            let tmp = TempFile(temp_path(store.path()));
            let result = store
                .export_view()
                .map_err(|e| e.to_string())
                .and_then(|view| {
                    write_file(&tmp.0, &view, &members, &removed, None).map_err(|e| e.to_string())
                });
            if let Err(e) = result {
                tracing::warn!(error = %e, "failed to build the database snapshot");
                let _ = tx.blocking_send(Err(Status::unknown(e)));
                return;
            }
            match send_file(&tmp.0, &tx) {
                // etcd times its backend snapshot from open to close: the
                // whole transfer.
                Ok(()) => crate::metrics::counters()
                    .backend_snapshot
                    .observe(started.elapsed().as_secs_f64()),
                Err(e) => tracing::warn!(error = %e, "failed to send the database snapshot"),
            }
        });
    if let Err(e) = spawned {
        let _ = fail.try_send(Err(Status::unavailable(format!(
            "cannot start the snapshot thread: {e}"
        ))));
    }
    rx
}

/// Bytes written between two write-backs of the snapshot file.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// A file whose dirty pages are written back (fdatasync) every
/// [`WRITEBACK_BYTES`], bounding what the file system holds dirty.
struct Throttled {
    file: std::fs::File,
    since_sync: u64,
}

impl std::io::Write for Throttled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_sync += n as u64;
        if self.since_sync >= WRITEBACK_BYTES {
            self.file.sync_data()?;
            self.since_sync = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl std::io::Seek for Throttled {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

/// Removes the temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_path(db: &Path) -> PathBuf {
    let n: u64 = rand::random();
    let name = format!(
        "{}.snapshot-{n:016x}.tmp",
        db.file_name().map_or("db".into(), |f| f.to_string_lossy())
    );
    db.with_file_name(name)
}

/// Writes the etcd backend file for `view` and the member list;
/// `rows_written` counts the table rows written (for a progress display).
pub(crate) fn write_file(
    path: &Path,
    view: &ExportView,
    members: &[Member],
    removed: &[u64],
    rows_written: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let file = Throttled {
        file: std::fs::File::create(path)?,
        since_sync: 0,
    };
    let file = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut w = BoltWriter::new(file)?;
    // Bucket names in byte order, as bbolt keeps them.
    let mut names: Vec<&str> = TABLES.to_vec();
    names.extend(["cluster", "members", "members_removed"]);
    names.sort_unstable();
    for name in names {
        let mut b = w.bucket(name.as_bytes())?;
        match name {
            "cluster" => b.put(b"clusterVersion", CLUSTER_VERSION.as_bytes())?,
            "members" => {
                let mut rows: Vec<(String, String)> = members.iter().map(member_row).collect();
                rows.sort();
                for (k, v) in rows {
                    b.put(k.as_bytes(), v.as_bytes())?;
                }
            }
            "members_removed" => {
                let mut ids: Vec<String> = removed.iter().map(|id| format!("{id:x}")).collect();
                ids.sort();
                for id in ids {
                    b.put(id.as_bytes(), b"removed")?;
                }
            }
            table => {
                let mut failed = None;
                view.for_each(table, |k, v| match b.put(k, v) {
                    Ok(()) => {
                        if let Some(n) = rows_written {
                            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
        }
        b.finish()?;
    }
    let mut file = w.finish()?;
    std::io::Write::flush(&mut file)?;
    Ok(())
}

/// A member as etcd's membership store saves it: key the hex ID, value
/// the JSON of `membership.Member`.
fn member_row(m: &Member) -> (String, String) {
    let mut v = serde_json::json!({"id": m.id, "peerURLs": m.peer_urls});
    if m.is_learner {
        v["isLearner"] = true.into();
    }
    if !m.name.is_empty() {
        v["name"] = m.name.clone().into();
    }
    if !m.client_urls.is_empty() {
        v["clientURLs"] = m.client_urls.clone().into();
    }
    (format!("{:x}", m.id), v.to_string())
}

/// Sends the file in chunks, then its SHA-256.
fn send_file(
    path: &Path,
    tx: &mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    tracing::info!(total_bytes = total, "sending database snapshot to client");
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < total {
        let mut n = 0;
        while n < CHUNK {
            let r = file.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            return Err("snapshot file ended early".into());
        }
        sent += n as u64;
        sha.update(&buf[..n]);
        let chunk = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: buf[..n].to_vec().into(),
            ..Default::default()
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Err("client went away".into());
        }
    }
    tracing::info!("sending database sha256 checksum to client");
    let digest = sha.finish();
    let last = SnapshotResponse {
        remaining_bytes: 0,
        blob: digest.as_ref().to_vec().into(),
        ..Default::default()
    };
    tx.blocking_send(Ok(last)).map_err(|_| "client went away")?;
    tracing::info!(
        total_bytes = total,
        "successfully sent database snapshot to client"
    );
    Ok(())
}
