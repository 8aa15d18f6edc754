//! Sending and receiving backend snapshots over `Peer/Snapshot` (etcd's
//! `rafthttp/snapshot_sender.go` and the snapshot handler in
//! `rafthttp/http.go`).
//!
//! A transfer is one client stream of [`SnapshotChunk`]s: the first carries
//! the encoded raft `MsgSnapshot`, every chunk a slice of the backend file
//! in order, the last one `last = true`. The sender exports the backend to
//! a scratch file (a consistent copy, see [`BackendSource`]), streams it in
//! [`CHUNK_BYTES`] slices and reports the outcome to raft. The receiver
//! writes `member/snap/<index>.snap.db.tmp`, syncs it, renames it to
//! `<index>.snap.db`, and only then gives the raft message to raft, which
//! makes the raft loop install that file (etcd's order: the db is on disk
//! before raft sees the snapshot).

use crate::tls_error::{self, Side};
use oxcd_api::oxcdpeerpb::peer_client::PeerClient;
use oxcd_api::oxcdpeerpb::SnapshotChunk;
use prost::bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

/// Bytes of backend per chunk (well under the peer server's 64 MiB
/// message limit, small enough to keep memory flat).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Produces the backend file a lagging follower is sent.
pub trait BackendSource: Send + Sync + 'static {
    /// Writes a consistent copy of the whole backend to `dst` (replacing
    /// it) and returns the raft index it reflects (its consistent index).
    /// Blocks on disk I/O.
    ///
    /// # Errors
    /// Whatever the backend reports, as text for the logs.
    fn export(&self, dst: &Path) -> Result<u64, String>;

    /// [`Self::export`] in etcd's format (a bbolt file with etcd's
    /// buckets), for an etcd follower. Blocks on disk I/O.
    ///
    /// # Errors
    /// As for [`Self::export`]; by default, that etcd's format is not made.
    fn export_etcd(&self, _dst: &Path) -> Result<u64, String> {
        Err("this backend cannot be sent to an etcd member".into())
    }

    /// A raft snapshot's data (oxcd's member list) as an etcd follower
    /// reads it: etcd's v2 store.
    ///
    /// # Errors
    /// Data that does not decode; by default, that it cannot be converted.
    fn etcd_snapshot_data(&self, _data: &[u8]) -> Result<Vec<u8>, String> {
        Err("this snapshot cannot be sent to an etcd member".into())
    }
}

/// Receives the outcome of a snapshot transfer (raft's `ReportSnapshot`).
pub trait SnapshotReport: Send + Sync + 'static {
    /// `ok`: the follower saved the snapshot and handed it to raft.
    fn report(&self, to: u64, ok: bool);
}

/// One snapshot to send.
pub struct SnapshotJob {
    /// The follower.
    pub to: u64,
    /// The raft snapshot's index.
    pub index: u64,
    /// The encoded raft `MsgSnapshot`.
    pub message: Bytes,
    /// Where the backend copy comes from.
    pub backend: Arc<dyn BackendSource>,
    /// Where the copy is written while it is sent (`member/snap`).
    pub scratch_dir: PathBuf,
    /// Told how it went.
    pub report: Arc<dyn SnapshotReport>,
}

/// Where a transfer goes and how to reach it.
pub(crate) struct Route {
    /// Whether the follower is an etcd member (etcd's snapshot endpoint).
    pub etcd: bool,
    pub from: u64,
    pub cluster_id: u64,
    pub urls: Vec<String>,
    pub tls: crate::transport::PeerTls,
}

/// Runs one transfer to the end and reports it; never panics.
pub(crate) async fn send(route: Route, job: SnapshotJob) {
    let (to, index) = (job.to, job.index);
    let scratch = job
        .scratch_dir
        .join(format!("{to:016x}-{index:016x}.snap.db.send"));
    tracing::info!("sending database snapshot [index: {index}, to: {to:x}]");
    let counted = crate::metrics::get().snapshot_send.track(to);
    let result = if route.etcd {
        crate::rafthttp::link::send_snapshot(&route, &job, &scratch).await
    } else {
        send_steps(&route, &job, &scratch).await
    };
    let _ = tokio::fs::remove_file(&scratch).await;
    if result.is_ok() {
        counted.ok();
    }
    match &result {
        Ok(bytes) => tracing::info!(
            "sent database snapshot [index: {index}, to: {to:x}, size: {bytes} bytes]"
        ),
        Err(e) => tracing::warn!(
            "database snapshot [index: {index}, to: {to:x}] failed to be sent out: {e}"
        ),
    }
    job.report.report(to, result.is_ok());
}

async fn send_steps(route: &Route, job: &SnapshotJob, scratch: &Path) -> Result<u64, String> {
    let backend = job.backend.clone();
    let dst = scratch.to_path_buf();
    tokio::task::spawn_blocking(move || backend.export(&dst))
        .await
        .map_err(|e| format!("export task: {e}"))??;
    let mut last_err = String::from("no peer URL");
    for url in &route.urls {
        let channel = match crate::transport::connect(url, &route.tls).await {
            Ok(c) => c,
            Err(e) => {
                last_err = format!("{url}: {}", tls_error::describe(&e, Side::Client));
                continue;
            }
        };
        return stream_file(route, job, scratch, PeerClient::new(channel)).await;
    }
    Err(last_err)
}

async fn stream_file(
    route: &Route,
    job: &SnapshotJob,
    scratch: &Path,
    mut client: PeerClient<tonic::transport::Channel>,
) -> Result<u64, String> {
    let mut file = tokio::fs::File::open(scratch)
        .await
        .map_err(|e| format!("open {}: {e}", scratch.display()))?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let head = SnapshotChunk {
        cluster_id: route.cluster_id,
        from: route.from,
        to: job.to,
        raft_message: job.message.clone(),
        data: Bytes::new(),
        last: false,
    };
    let call = tokio::spawn(async move { client.snapshot(ReceiverStream::new(rx)).await });
    let mut sent = 0u64;
    let mut chunk = head;
    loop {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let n = read_full(&mut file, &mut buf)
            .await
            .map_err(|e| format!("read {}: {e}", scratch.display()))?;
        buf.truncate(n);
        sent += n as u64;
        chunk.data = buf.into();
        chunk.last = n < CHUNK_BYTES;
        let last = chunk.last;
        if tx.send(chunk).await.is_err() {
            break;
        }
        if last {
            break;
        }
        chunk = SnapshotChunk::default();
    }
    drop(tx);
    let ack = call
        .await
        .map_err(|e| format!("snapshot call: {e}"))?
        .map_err(|s| s.message().to_string())?
        .into_inner();
    if ack.accepted {
        Ok(sent)
    } else {
        Err(format!("refused: {}", ack.reason))
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = file.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Removes leftovers of transfers from `dir`: received backends
/// (`<index>.snap.db`, `.tmp`) at or below `upto`, which raft can no longer
/// install, and, when `senders_too` (at start-up, when no transfer runs),
/// the sender's scratch copies. Returns the removed paths; errors are
/// logged, never fatal.
pub fn remove_stale(dir: &Path, upto: u64, senders_too: bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if name.ends_with(".snap.db.send") {
            senders_too
        } else if let Some(stem) = name
            .strip_suffix(".snap.db")
            .or_else(|| name.strip_suffix(".snap.db.tmp"))
        {
            crate::wal::parse_hex16(stem).is_some_and(|i| i <= upto)
        } else {
            false
        };
        if stale {
            let path = e.path();
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(err) => {
                    tracing::warn!(file = %path.display(), error = %err, "cannot remove stale snapshot file")
                }
            }
        }
    }
    removed
}

/// A received transfer: who sent it and the raft message to step.
pub(crate) struct Received {
    pub from: u64,
    pub message: Bytes,
}

/// Receives one transfer into `snap_dir`; `check` validates the first
/// chunk's (cluster, from, to). Returns the raft message once the file is
/// durably in place as `<index>.snap.db`.
pub(crate) async fn receive(
    snap_dir: &Path,
    stream: &mut Streaming<SnapshotChunk>,
    check: impl Fn(&SnapshotChunk) -> Result<(), Status>,
) -> Result<Received, Status> {
    use protobuf::Message as _;
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
    check(&first)?;
    let msg = raft::prelude::Message::parse_from_bytes(&first.raft_message)
        .map_err(|e| Status::invalid_argument(format!("undecodable snapshot message: {e}")))?;
    let index = msg.get_snapshot().get_metadata().index;
    tracing::info!(
        "receiving database snapshot [index: {index}, from: {:x}]",
        first.from
    );
    let counted = crate::metrics::get().snapshot_receive.track(first.from);
    let started = std::time::Instant::now();
    let path = snap_dir.join(format!("{index:016x}.snap.db"));
    let tmp = snap_dir.join(format!("{index:016x}.snap.db.tmp"));
    let written = write_file(&tmp, &first, stream).await;
    let size = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| Status::internal(format!("rename {}: {e}", tmp.display())))?;
    if let Ok(d) = tokio::fs::File::open(snap_dir).await {
        let _ = d.sync_all().await;
    }
    tracing::info!(
        "received and saved database snapshot [index: {index}, from: {:x}, size: {size} bytes]",
        first.from
    );
    counted.ok();
    crate::metrics::get()
        .snap_db_save
        .observe(started.elapsed().as_secs_f64());
    Ok(Received {
        from: first.from,
        message: first.raft_message,
    })
}

async fn write_file(
    tmp: &Path,
    first: &SnapshotChunk,
    stream: &mut Streaming<SnapshotChunk>,
) -> Result<u64, Status> {
    let io = |e: std::io::Error| Status::internal(format!("write {}: {e}", tmp.display()));
    // The received backend becomes member/snap/db: private, as etcd's.
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(io)?;
    f.write_all(&first.data).await.map_err(io)?;
    let mut size = first.data.len() as u64;
    let mut last = first.last;
    while !last {
        let c = stream
            .next()
            .await
            .ok_or_else(|| Status::aborted("snapshot stream ended early"))??;
        f.write_all(&c.data).await.map_err(io)?;
        size += c.data.len() as u64;
        last = c.last;
    }
    let syncing = std::time::Instant::now();
    f.sync_all().await.map_err(io)?;
    crate::metrics::get()
        .snap_db_fsync
        .observe(syncing.elapsed().as_secs_f64());
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_transfer_files_are_removed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in [
            "0000000000000005.snap.db",
            "0000000000000009.snap.db.tmp",
            "000000000000000a.snap.db",
            "0000000000000002-0000000000000005.snap.db.send",
            "0000000000000001-0000000000000005.snap",
            "db",
        ] {
            std::fs::write(dir.path().join(name), b"x")?;
        }
        let mut gone: Vec<String> = remove_stale(dir.path(), 9, false)
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            ["0000000000000005.snap.db", "0000000000000009.snap.db.tmp"]
        );
        assert_eq!(remove_stale(dir.path(), 0, true).len(), 1);
        assert!(dir.path().join("000000000000000a.snap.db").exists());
        assert!(dir.path().join("db").exists());
        Ok(())
    }
}
