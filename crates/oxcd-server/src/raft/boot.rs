//! Starting raft for a member (etcd's `bootstrap.go` raft half and
//! `raft.go` `startNode` / `restartNode`):
//!
//! - a new member creates its WAL (metadata: member and cluster ID) and
//!   writes the bootstrap log, one committed `AddNode` per initial member;
//! - a restarting member loads its newest snapshot that the WAL recorded
//!   (`member/snap/<term>-<index>.snap`), restores the member list from it,
//!   and opens the WAL there, so only the entries after it are replayed;
//!   the applier skips what the backend already holds (its consistent
//!   index);
//! - then the peer transport, the raft loop and the apply stage (its own
//!   thread, fed by the loop over a channel) start, and the write path is
//!   assembled around them.

use crate::apply::quota::Quota;
use crate::apply::stage::ApplyStage;
use crate::apply::Applier;
use crate::cluster::bootstrap::{Identity, Layout};
use crate::cluster::membership::Members;
use crate::config::{ClusterState, Config, TlsInfo};
use crate::embed::StartError;
use crate::lessor::Lessor;
use crate::propose::{WritePath, WritePathParts};
use crate::raft::read_index::ReadIndex;
use crate::wait::Waiters;
use oxcd_api::oxcdpeerpb::peer_server::PeerServer;
use oxcd_mvcc::{KvStore, WatchableStore};
use oxcd_raft::fs::{Fs, OsFs};
use oxcd_raft::node::{self, NodeConfig, NodeInbox, Restored, SnapshotSettings};
use oxcd_raft::snap::Snapshotter;
use oxcd_raft::transport::{skip_verify_config, PeerService, PeerTls, Transport};
use oxcd_raft::wal::{self, SnapshotMarker, Wal, WalOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity};

/// What starting raft needs from the member being started.
pub struct RaftBoot<'a> {
    /// The validated configuration.
    pub cfg: &'a Config,
    /// The data dir layout.
    pub layout: &'a Layout,
    /// This member and its initial cluster.
    pub identity: &'a Identity,
    /// The MVCC store the applier writes to.
    pub store: KvStore,
    /// The lessor the applier and leadership changes drive.
    pub lessor: Lessor,
    /// Where applied events go.
    pub watchable: WatchableStore,
    /// The shared member list.
    pub members: Members,
    /// The raised alarms, loaded from the store.
    pub alarms: crate::apply::alarm::Alarms,
    /// Users, roles and permissions, loaded from the store.
    pub auth: crate::auth::store::AuthStore,
    /// Simple tokens, registered as Authenticate entries apply.
    pub tokens: Option<crate::auth::tokens::SimpleTokens>,
}

/// The running raft half of a member.
pub struct Raft {
    /// Proposals and linearizable reads.
    pub writes: WritePath,
    /// Links to the other members.
    pub transport: Arc<Transport>,
    /// Free space of the WAL's and the backend's file systems.
    pub disk: crate::disk_guard::DiskGuard,
    /// The apply stage's thread; it ends after the raft loop, once it has
    /// applied everything the loop handed over.
    pub apply_stage: std::thread::JoinHandle<()>,
}

/// etcd's request timeout: 5 s plus two election timeouts.
pub fn request_timeout(cfg: &Config) -> Duration {
    Duration::from_secs(5) + 2 * Duration::from_millis(cfg.election_timeout_ms)
}

/// Opens or creates the WAL, starts the transport and the raft loop.
pub fn start(b: RaftBoot<'_>) -> Result<Raft, StartError> {
    let cfg = b.cfg;
    let me = b.identity.member.id;
    let cid = b.identity.cluster_id;
    let fs: Arc<dyn Fs> = Arc::new(OsFs);
    let snapshotter = Snapshotter::new(fs.clone(), &snap_dir(b.layout));
    let restored = open_or_bootstrap(&b, &fs, &snapshotter)?;
    let snap_index = restored
        .snapshot
        .as_ref()
        .map_or(0, |s| s.get_metadata().index);
    // No transfer runs yet: scratch copies and uninstallable backends left
    // by a crash can go.
    oxcd_raft::snapshot_transfer::remove_stale(&snap_dir(b.layout), snap_index, true);
    if let Some(s) = &restored.snapshot {
        b.members
            .restore_snapshot(&s.data)
            .map_err(|e| StartError::Raft(e.to_string()))?;
    }
    let transport = Transport::new(
        me,
        cid,
        peer_client_tls(&cfg.peer_tls, &b.layout.peer_fixtures())?,
    );
    for m in b.members.list().into_iter().filter(|m| m.id != me) {
        transport.add_peer(m.id, m.peer_urls);
    }
    let timeout = request_timeout(cfg);
    let waiters = Arc::new(Waiters::default());
    waiters.start_sweeper(timeout);
    let reads = ReadIndex::new(timeout, me);
    let (applied_tx, applied_rx) = watch::channel(0);
    let quota = Quota::new(cfg.quota_backend_bytes, b.store.clone());
    let (over_quota_tx, over_quota_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = ApplyStage {
        applier: Applier::new(b.store.clone(), b.lessor.clone())
            .with_alarms(b.alarms.clone(), quota.clone())
            .with_auth(b.auth, b.tokens),
        skip_until: b.store.consistent_index(),
        waiters: waiters.clone(),
        reads: reads.clone(),
        applied: applied_tx,
        sink: Arc::new(b.watchable.clone()),
        members: b.members.clone(),
        lessor: b.lessor.clone(),
        transport: transport.clone(),
        member_id: me,
        election_timeout: Duration::from_millis(cfg.election_timeout_ms),
        events: Vec::new(),
        done: Vec::new(),
        batch_open: false,
        snap: crate::raft::snapshot::SnapshotParts {
            store: b.store.clone(),
            watchable: b.watchable.clone(),
        },
        over_quota: over_quota_tx,
    };
    let snaps = SnapshotSettings {
        count: cfg.snapshot_count,
        catch_up_entries: cfg
            .snapshot_catchup_entries
            .min(SnapshotSettings::catch_up_for(cfg.snapshot_count)),
        max_snapshots: usize::try_from(cfg.max_snapshots).unwrap_or(usize::MAX),
        max_wals: usize::try_from(cfg.max_wals).unwrap_or(usize::MAX),
        snapshotter,
        fs,
        backend: Arc::new(crate::raft::snapshot::StoreExporter(
            b.store.clone(),
            b.members.clone(),
        )),
    };
    let node_cfg = NodeConfig {
        id: me,
        tick: Duration::from_millis(cfg.heartbeat_interval_ms.max(1)),
        election_ticks: cfg.election_ticks().max(2) as usize,
        pre_vote: cfg.pre_vote,
    };
    let waiters_for_raiser = waiters.clone();
    let disk = crate::disk_guard::DiskGuard::new(
        vec![wal_dir(cfg, b.layout), snap_dir(b.layout)],
        wal_options().segment_size,
    );
    let (node, to_apply) = node::start(node_cfg, restored, snaps, transport.clone())
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let apply_stage = app
        .spawn(to_apply)
        .map_err(|e| StartError::Raft(format!("cannot start the apply stage: {e}")))?;
    reads.set_node(node.clone());
    let writes = WritePath::new(WritePathParts {
        node,
        waiters,
        reads,
        applied: applied_rx,
        member_id: me,
        max_request_bytes: cfg.max_request_bytes as usize,
        request_timeout: timeout,
        quota: Some(quota),
        disk: Some(disk.clone()),
    });
    tokio::spawn(raise_over_quota(
        over_quota_rx,
        writes.clone(),
        waiters_for_raiser,
        b.alarms.clone(),
    ));
    Ok(Raft {
        writes,
        transport,
        disk,
        apply_stage,
    })
}

/// Raises NOSPACE for writes that went over the quota at apply, then
/// answers them (etcd raises the alarm before the proposer learns of it,
/// so an `alarm list` after the error shows it). Ends when the raft loop
/// drops its sender.
async fn raise_over_quota(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, crate::wait::Outcome)>,
    writes: WritePath,
    waiters: Arc<Waiters>,
    alarms: crate::apply::alarm::Alarms,
) {
    while let Some((id, outcome)) = rx.recv().await {
        if !alarms.nospace() {
            writes.raise_nospace().await;
        }
        waiters.trigger(id, outcome);
    }
}

fn wal_dir(cfg: &Config, layout: &Layout) -> PathBuf {
    if cfg.wal_dir.as_os_str().is_empty() {
        layout.member_dir().join("wal")
    } else {
        cfg.wal_dir.clone()
    }
}

/// `<data-dir>/member/snap`: snapshot files and the backend.
fn snap_dir(layout: &Layout) -> PathBuf {
    layout.member_dir().join("snap")
}

/// WAL tunables. `OXCD_WAL_SEGMENT_BYTES` (not an etcd setting; for tests
/// that need many segments) overrides etcd's 64 MB segment size.
pub(crate) fn wal_options() -> WalOptions {
    let mut opts = WalOptions::default();
    if let Some(n) = std::env::var("OXCD_WAL_SEGMENT_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n >= 4096)
    {
        opts.segment_size = n;
    }
    opts
}

/// The newest snapshot the WAL in `dir` recorded, if any (etcd 3.5's
/// `LoadNewestAvailable`, so that snapshot and WAL always line up).
pub(crate) fn load_snapshot(
    fs: &Arc<dyn Fs>,
    dir: &std::path::Path,
    snapshotter: &Snapshotter,
) -> Result<Option<raft::prelude::Snapshot>, StartError> {
    let markers = wal::valid_snapshot_markers(fs.as_ref(), dir)
        .map_err(|e| StartError::Raft(format!("cannot read the WAL in {}: {e}", dir.display())))?;
    match snapshotter.load_newest_available(&markers) {
        Ok(file) => {
            let snap =
                node::snapshot_from_file(&file).map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(
                "recovered from snapshot at index {} (term {})",
                file.index,
                file.term
            );
            Ok(Some(snap))
        }
        Err(oxcd_raft::SnapError::NoSnapshot) => Ok(None),
        Err(e) => Err(StartError::Raft(format!("cannot load snapshot: {e}"))),
    }
}

fn open_or_bootstrap(
    b: &RaftBoot<'_>,
    fs: &Arc<dyn Fs>,
    snapshotter: &Snapshotter,
) -> Result<Restored, StartError> {
    let fs = fs.clone();
    let dir = wal_dir(b.cfg, b.layout);
    if wal::exists(fs.as_ref(), &dir) {
        let snapshot = load_snapshot(&fs, &dir, snapshotter)?;
        let marker = snapshot
            .as_ref()
            .map_or(SnapshotMarker::default(), |s| SnapshotMarker {
                index: s.get_metadata().index,
                term: s.get_metadata().term,
            });
        let (mut w, mut replayed) = Wal::open(fs, &dir, marker, wal_options()).map_err(|e| {
            StartError::Raft(format!("cannot open the WAL in {}: {e}", dir.display()))
        })?;
        tracing::info!(
            "replaying {} WAL entries after index {}",
            replayed.entries.len(),
            marker.index
        );
        if b.cfg.force_new_cluster {
            let base: Vec<u64> = snapshot.as_ref().map_or(Vec::new(), |s| {
                let cs = s.get_metadata().get_conf_state();
                cs.voters.iter().chain(&cs.learners).copied().collect()
            });
            let removed =
                node::force_new_cluster(&mut w, &mut replayed, &base, b.identity.member.id)
                    .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::warn!(
                "forcing restart of member {:x} in cluster {:x}: removed {:x?} from the configuration",
                b.identity.member.id,
                b.identity.cluster_id,
                removed
            );
        }
        return Ok(Restored {
            wal: w,
            replayed,
            snapshot,
        });
    }
    if b.cfg.initial_cluster_state == ClusterState::Existing {
        // Joining: the leader sends the whole log, membership included.
        let meta = format!(
            r#"{{"member_id":"{:x}","cluster_id":"{:x}"}}"#,
            b.identity.member.id, b.identity.cluster_id
        );
        let w = Wal::create(fs, &dir, meta.as_bytes(), wal_options()).map_err(|e| {
            StartError::Raft(format!("cannot create the WAL in {}: {e}", dir.display()))
        })?;
        return Ok(Restored {
            wal: w,
            replayed: wal::WalContents::default(),
            snapshot: None,
        });
    }
    if b.store.consistent_index() > 0 {
        return Err(StartError::Raft(format!(
            "the backend holds applied data but the WAL in {} is missing; refusing to start",
            dir.display()
        )));
    }
    let meta = format!(
        r#"{{"member_id":"{:x}","cluster_id":"{:x}"}}"#,
        b.identity.member.id, b.identity.cluster_id
    );
    let mut w = Wal::create(fs, &dir, meta.as_bytes(), wal_options()).map_err(|e| {
        StartError::Raft(format!("cannot create the WAL in {}: {e}", dir.display()))
    })?;
    let boot: node::BootstrapMembers = b
        .identity
        .members
        .iter()
        .map(|m| (m.id, crate::cluster::conf_change::add_context(m)))
        .collect();
    let replayed = node::bootstrap(&mut w, &boot).map_err(|e| StartError::Raft(e.to_string()))?;
    Ok(Restored {
        wal: w,
        replayed,
        snapshot: None,
    })
}

/// Client-side TLS for `https` peer URLs, from the `--peer-*` settings.
/// With `--peer-auto-tls` (and no certificate files) the peers' certificates
/// are self-signed, so they are not verified, as in etcd.
pub(crate) fn peer_client_tls(
    t: &TlsInfo,
    fixtures: &std::path::Path,
) -> Result<PeerTls, StartError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StartError::Raft(format!("cannot read {}: {e}", p.display())))
    };
    let has_files = !t.cert_file.as_os_str().is_empty() && !t.key_file.as_os_str().is_empty();
    if t.auto_tls && !has_files {
        let (cert, key) = (fixtures.join("cert.pem"), fixtures.join("key.pem"));
        let identity = if cert.exists() && key.exists() {
            Some((read(&cert)?, read(&key)?))
        } else {
            None
        };
        let cfg =
            skip_verify_config(identity).map_err(|e| StartError::Raft(format!("peer TLS: {e}")))?;
        return Ok(PeerTls::SkipVerify(cfg));
    }
    let mut tls = ClientTlsConfig::new();
    let mut any = false;
    let mut ca: Option<Vec<u8>> = None;
    let mut identity: Option<(Vec<u8>, Vec<u8>)> = None;
    if !t.trusted_ca_file.as_os_str().is_empty() {
        let pem = read(&t.trusted_ca_file)?;
        tls = tls.ca_certificate(Certificate::from_pem(pem.clone()));
        ca = Some(pem);
        any = true;
    }
    // etcd 3.5's `--peer-client-cert-file/--peer-client-key-file`: the
    // identity this member shows when it dials a peer, when it must
    // differ from its server certificate.
    let has_client_files =
        !t.client_cert_file.as_os_str().is_empty() && !t.client_key_file.as_os_str().is_empty();
    if has_client_files {
        identity = Some((read(&t.client_cert_file)?, read(&t.client_key_file)?));
    } else if has_files {
        identity = Some((read(&t.cert_file)?, read(&t.key_file)?));
    }
    if let Some((cert, key)) = &identity {
        tls = tls.identity(TlsIdentity::from_pem(cert.clone(), key.clone()));
        any = true;
    }
    // etcd's own peer protocol (with etcd members) uses rustls directly.
    let etcd = match &ca {
        Some(pem) => Some(
            oxcd_raft::transport::verified_config(pem, identity)
                .map_err(|e| StartError::Raft(format!("peer TLS: {e}")))?,
        ),
        None => None,
    };
    Ok(if any {
        PeerTls::Verified(tls, etcd)
    } else {
        PeerTls::Plain
    })
}

/// The raft routes of the peer port: oxcd's peer protocol (gRPC) and
/// etcd's (`rafthttp`, HTTP/1.1). Received backend snapshots are saved in
/// `layout`'s `member/snap`.
pub fn peer_routes(
    writes: &WritePath,
    members: &Members,
    transport: &Arc<Transport>,
    layout: &Layout,
) -> axum::Router {
    let inbox = Arc::new(NodeInbox(writes.node().clone()));
    let etcd = oxcd_raft::rafthttp::serve::routes(
        transport.clone(),
        inbox.clone(),
        Arc::new(members.clone()),
        Some(snap_dir(layout)),
    );
    let svc = PeerService::new(transport.local_id(), transport.cluster_id(), inbox)
        .with_directory(Arc::new(members.clone()))
        .with_snap_dir(snap_dir(layout));
    etcd.merge(
        tonic::service::Routes::new(
            PeerServer::new(svc)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .into_axum_router(),
    )
}
