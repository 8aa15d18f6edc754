//! Starting and stopping one oxcd member (etcd's `embed` package).
//!
//! [`start`] follows etcd's `embed.StartEtcd`:
//! 1. check or create the data dir (`member/{snap,wal}`, mode 0700);
//! 2. load or derive this member's identity and the member list;
//! 3. open the MVCC backend and start the write path;
//! 4. bind peer and client listeners (so a busy port fails start-up);
//! 5. become ready: log etcd's readiness lines, then serve.
//!
//! [`Etcd::close`] stops in the reverse order: stop accepting, let
//! in-flight connections finish (bounded), stop the raft loop, let the
//! apply stage finish what it was handed, and make the backend durable.

use crate::auth::tokens::SimpleTokens;
use crate::auth::TokenProvider;
use crate::cluster::bootstrap;
use crate::cluster::forward::Forwarder;
use crate::cluster::membership::{cluster_id, InitialCluster, Member, Members};
use crate::cluster::reconfig::ReconfigCheck;
use crate::config::{url_string, ClusterState, Config, TlsInfo};
use crate::core::Core;
use crate::lessor::{self, Lessor};
use crate::raft::{boot as raft_boot, publish};
use crate::serve::listener::{self, Bound};
use crate::serve::tls::suites::TlsPolicy;
use crate::serve::tls::{self, TlsSettings};
use crate::v3rpc::{self, GrpcLimits};
use oxcd_mvcc::{BackendConfig, KvStore, WatchableStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long close waits for in-flight connections.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data dir could not be created, read or locked.
    #[error("{0}")]
    DataDir(#[from] bootstrap::BootstrapError),
    /// The initial cluster or this member's place in it is wrong.
    #[error("{0}")]
    Membership(#[from] crate::cluster::membership::MembershipError),
    /// The backend would not open.
    #[error("cannot open backend: {0}")]
    Backend(#[from] oxcd_mvcc::MvccError),
    /// TLS material is missing or invalid.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// A listener could not be bound.
    #[error("{0}")]
    Listen(std::io::Error),
    /// A background thread could not be started.
    #[error("cannot start a background thread: {0}")]
    Thread(std::io::Error),
    /// The WAL or the raft loop could not be started.
    #[error("{0}")]
    Raft(String),
    /// The initial corruption check found this member's data differs from
    /// its peers' (`--experimental-initial-corrupt-check`).
    #[error("{0}")]
    Corrupt(String),
    /// `--auth-token` cannot be used.
    #[error("{0}")]
    Auth(String),
    /// The data dir holds etcd's files and they cannot be imported.
    #[error("cannot import etcd data directory: {0}")]
    Import(#[from] crate::etcd_files::ImportError),
}

/// A running member.
pub struct Etcd {
    /// State shared with the services (for in-process tests and tools).
    pub core: Arc<Core>,
    transport: Arc<oxcd_raft::transport::Transport>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Joined at close, after the raft loop stopped.
    apply_stage: std::thread::JoinHandle<()>,
}

/// The token provider `--auth-token` asks for.
fn token_provider(cfg: &Config) -> Result<TokenProvider, StartError> {
    use crate::auth::tokens::{parse_auth_token, TokenKind};
    match parse_auth_token(&cfg.auth_token).map_err(|e| StartError::Auth(e.into()))? {
        TokenKind::None => Ok(TokenProvider::None),
        TokenKind::Simple => {
            tracing::warn!(
                "simple token is not cryptographically signed; use --auth-token jwt in production"
            );
            let t = SimpleTokens::new(Duration::from_secs(cfg.auth_token_ttl));
            t.start_sweeper();
            Ok(TokenProvider::Simple(t))
        }
        TokenKind::Jwt(opts) => {
            let jwt = crate::auth::jwt::Jwt::from_options(&opts).map_err(StartError::Auth)?;
            Ok(TokenProvider::Jwt(Arc::new(jwt)))
        }
    }
}

/// Starts a member from `cfg` (already validated) and returns once it
/// has joined its cluster and serves clients.
pub async fn start(cfg: Config) -> Result<Etcd, StartError> {
    for flag in cfg.unimplemented_flags_set() {
        tracing::warn!("--{flag} is accepted but not acted on by this version of oxcd");
    }
    oxcd_failpoint::init_from_env();
    // etcd's files become oxcd's before anything opens them.
    let import_cfg = cfg.clone();
    tokio::task::spawn_blocking(move || crate::etcd_files::import_if_etcd(&import_cfg))
        .await
        .map_err(|e| StartError::Thread(std::io::Error::other(e)))??;
    let layout = bootstrap::prepare_data_dir(&cfg.data_dir)?;
    let Listeners {
        peers,
        clients,
        http_clients,
        metrics,
    } = bind_listeners(&cfg, &layout).await?;
    let joined = match cfg.initial_cluster_state {
        ClusterState::Existing if !layout.identity_path().exists() => {
            Some(join_identity(&cfg, &layout).await?)
        }
        _ => None,
    };
    let identity = bootstrap::load_or_create_identity(&layout, || match joined {
        Some(id) => Ok(id),
        None => initial_identity(&cfg),
    })?;
    let store = KvStore::open(&layout.backend_path(), backend_config(&cfg))?;
    let lessor = start_lessor(&cfg, &store)?;
    let alarms = crate::apply::alarm::Alarms::load(&store)?;
    let auth_store = crate::auth::store::AuthStore::load(&store)?;
    let auth = crate::auth::AuthHandle {
        view: auth_store.view(),
        hasher: crate::auth::password::Hasher::new(
            u32::try_from(cfg.bcrypt_cost).unwrap_or(u32::MAX),
        ),
        tokens: token_provider(&cfg)?,
    };
    log_quota(cfg.quota_backend_bytes);
    let watchable = WatchableStore::new(store.clone()).map_err(StartError::Thread)?;
    let members = Members::new(identity.members.clone());
    let raft = raft_boot::start(raft_boot::RaftBoot {
        cfg: &cfg,
        layout: &layout,
        identity: &identity,
        store: store.clone(),
        lessor: lessor.clone(),
        watchable: watchable.clone(),
        members: members.clone(),
        alarms: alarms.clone(),
        auth: auth_store,
        tokens: auth.tokens.simple(),
    })?;
    let disk = raft.disk.clone();
    let core = Arc::new(Core {
        store,
        writes: raft.writes,
        watchable,
        lessor,
        // What this start publishes, as etcd's `publish`: the name and
        // client URLs of this configuration, whatever was stored before
        // (a restored or imported member may have none stored).
        member: Member {
            name: cfg.name.clone(),
            client_urls: cfg.advertise_client_urls.iter().map(url_string).collect(),
            ..identity.member.clone()
        },
        members,
        cluster_id: identity.cluster_id,
        max_txn_ops: cfg.max_txn_ops as usize,
        reconfig: ReconfigCheck::new(
            raft.transport.clone(),
            cfg.strict_reconfig_check,
            usize::try_from(cfg.experimental_max_learners).unwrap_or(1),
        ),
        forwarder: Forwarder::new(raft.transport.clone(), raft_boot::request_timeout(&cfg)),
        alarms,
        auth,
    });
    let etcd = Etcd {
        core: core.clone(),
        transport: raft.transport,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        apply_stage: raft.apply_stage,
    };
    crate::v3rpc::metrics::init_with(cfg.metrics == "extensive");
    crate::metrics::init();
    let scrape = Arc::new(crate::metrics::Scrape::new(
        core.clone(),
        crate::apply::quota::effective_bytes(cfg.quota_backend_bytes),
    ));
    // Peers first: the other members need this one to elect a leader.
    let peer_router = raft_boot::peer_routes(&core.writes, &core.members, &etcd.transport, &layout)
        .merge(crate::cluster::forward::routes(core.clone()))
        .merge(crate::cluster::peer_http::routes(core.clone()))
        .merge(crate::serve::http::routes(core.clone(), scrape.clone()))
        .fallback(crate::serve::fallback);
    let peer_router = crate::serve::Dispatch::router(peer_router);
    for b in peers {
        etcd.spawn_serve(b, peer_router.clone(), "peer");
    }
    if !publish::become_ready(&core).await {
        return Err(StartError::Raft(
            "the raft loop stopped before the member was ready".into(),
        ));
    }
    let transport = etcd.transport.clone();
    let shutdown = etcd.shutdown.clone();
    etcd.tasks.spawn(async move {
        // Ends with the member: close waits for every tracked task.
        tokio::select! {
            _ = transport.removed() => crate::apply::stage::removed_exit(),
            _ = shutdown.cancelled() => {}
        }
    });
    etcd.tasks.spawn(crate::cluster::version::run(
        core.clone(),
        etcd.transport.clone(),
        etcd.shutdown.clone(),
    ));
    etcd.tasks.spawn(lessor::run_expiry(
        core.lessor.clone(),
        core.writes.clone(),
        core.auth.view.clone(),
        etcd.shutdown.clone(),
    ));
    etcd.tasks.spawn(crate::disk_guard::run(
        disk,
        core.writes.clone(),
        core.alarms.clone(),
        core.member.id,
        etcd.shutdown.clone(),
    ));
    let timeout = raft_boot::request_timeout(&cfg);
    if cfg.experimental_initial_corrupt_check {
        if let Err(e) = crate::corrupt::initial_check(&core, timeout).await {
            etcd.close().await;
            return Err(StartError::Corrupt(e));
        }
    }
    if !cfg.experimental_corrupt_check_time.is_zero() {
        etcd.tasks.spawn(crate::corrupt::run_periodic(
            core.clone(),
            cfg.experimental_corrupt_check_time,
            timeout,
            etcd.shutdown.clone(),
        ));
    }
    match cfg.auto_compaction() {
        Ok(mode) => {
            etcd.tasks.spawn(crate::compactor::run(
                mode,
                core.store.clone(),
                core.writes.clone(),
                etcd.shutdown.clone(),
            ));
        }
        // Validated before start; a config built by hand may still be off.
        Err(e) => tracing::warn!(error = %e, "auto-compaction disabled"),
    }
    let limits = grpc_limits(&cfg);
    let grpc = v3rpc::routes(core.clone(), limits);
    etcd.tasks.spawn(v3rpc::health::follow(
        core.clone(),
        grpc.health_reporter(),
        etcd.shutdown.clone(),
    ));
    let mut http = crate::serve::http::routes(core.clone(), scrape.clone());
    if cfg.enable_pprof {
        tracing::info!("pprof is enabled under /debug/pprof");
        http = http.merge(crate::serve::pprof::routes());
    }
    if cfg.enable_grpc_gateway {
        http = http.merge(crate::serve::gateway::routes(
            grpc.clone(),
            limits.max_recv_bytes,
            cfg.max_concurrent_streams,
        ));
    }
    let port = crate::serve::ClientPort {
        max_streams: cfg.max_concurrent_streams,
        // etcd pings an idle client connection every interval and closes
        // it when the ping goes unanswered for the timeout; 0 turns it off.
        keepalive: (!cfg.grpc_keepalive_interval.is_zero()
            && !cfg.grpc_keepalive_timeout.is_zero())
        .then_some((cfg.grpc_keepalive_interval, cfg.grpc_keepalive_timeout)),
        access: crate::serve::access::Access::new(&cfg.cors, &cfg.host_whitelist)
            .with_auth(core.auth.view.clone()),
    };
    // `--listen-client-http-urls` (etcd 3.5) serve HTTP only: the gateway,
    // /health, /metrics and the rest, no gRPC.
    let http_only = crate::serve::Dispatch::client(None, http.clone(), port.clone());
    let client_router = crate::serve::Dispatch::client(Some(grpc), http, port);
    for b in clients {
        etcd.spawn_serve(b, client_router.clone(), "client");
    }
    let metrics_router = crate::serve::Dispatch::router(
        crate::serve::http::metrics_routes(core.clone(), scrape).fallback(crate::serve::fallback),
    );
    for b in metrics {
        etcd.spawn_serve(b, metrics_router.clone(), "metrics");
    }
    for b in http_clients {
        etcd.spawn_serve(b, http_only.clone(), "client");
    }
    Ok(etcd)
}

/// The bound listeners, by what they serve.
struct Listeners {
    peers: Vec<Bound>,
    clients: Vec<Bound>,
    /// `--listen-client-http-urls`: HTTP only.
    http_clients: Vec<Bound>,
    /// `--listen-metrics-urls`: `/metrics` and health only.
    metrics: Vec<Bound>,
}

/// Binds every peer and client URL, so that a busy port fails start-up.
async fn bind_listeners(cfg: &Config, layout: &bootstrap::Layout) -> Result<Listeners, StartError> {
    let policy = tls_policy(cfg);
    let (peer, client) = (&layout.peer_fixtures(), &layout.client_fixtures());
    Ok(Listeners {
        peers: bind_all(&cfg.listen_peer_urls, &cfg.peer_tls, &policy, peer).await?,
        clients: bind_all(&cfg.listen_client_urls, &cfg.client_tls, &policy, client).await?,
        // etcd serves https metrics and HTTP-only URLs with the client TLS
        // settings.
        http_clients: bind_all(
            &cfg.listen_client_http_urls,
            &cfg.client_tls,
            &policy,
            client,
        )
        .await?,
        metrics: bind_all(&cfg.listen_metrics_urls, &cfg.client_tls, &policy, client).await?,
    })
}

/// Binds `urls`, the `https` ones with TLS from `info`.
async fn bind_all(
    urls: &[url::Url],
    info: &TlsInfo,
    policy: &TlsPolicy,
    fixtures: &std::path::Path,
) -> Result<Vec<Bound>, StartError> {
    let tls = listener_tls(info, policy, fixtures, urls)?;
    let mut bound = Vec::new();
    for u in urls {
        let t = listener::is_secure(u).then(|| tls.clone()).flatten();
        bound.push(listener::bind(u, t).await.map_err(StartError::Listen)?);
    }
    Ok(bound)
}

fn grpc_limits(cfg: &Config) -> GrpcLimits {
    GrpcLimits {
        max_recv_bytes: cfg.max_request_bytes as usize + oxcd_api::limits::GRPC_OVERHEAD_BYTES,
        quota_bytes: crate::apply::quota::effective_bytes(cfg.quota_backend_bytes),
        watch_progress_interval: v3rpc::watch::progress_interval(
            cfg.experimental_watch_progress_notify_interval,
        ),
    }
}

/// A listener's address as etcd logs it (Go's `Listener.Addr()`:
/// `host:port`, no scheme).
fn listen_address(u: &url::Url) -> String {
    let host = u.host_str().unwrap_or("");
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

impl Etcd {
    fn spawn_serve(&self, b: Bound, router: crate::serve::Dispatch, kind: &'static str) {
        if kind == "client" {
            // Per client listener, as etcd's serve(): tooling waits for it,
            // so it comes only once requests are answered.
            tracing::info!(
                zap = "ready to serve client requests",
                "ready to serve client requests"
            );
        }
        match (kind, b.tls.is_some()) {
            ("client", true) => tracing::info!(
                zap = "serving client traffic securely",
                address = %listen_address(&b.url),
                "serving client requests on {}",
                listen_address(&b.url)
            ),
            ("client", false) => tracing::info!(
                zap = "serving client traffic insecurely; this is strongly discouraged!",
                address = %listen_address(&b.url),
                "serving insecure client requests on {}, this is strongly discouraged!",
                listen_address(&b.url)
            ),
            ("metrics", _) => tracing::info!("listening for metrics on {}", url_string(&b.url)),
            _ => tracing::info!("listening for peers on {}", url_string(&b.url)),
        }
        let (shutdown, tasks) = (self.shutdown.clone(), self.tasks.clone());
        let on_shutdown = if kind == "peer" {
            listener::OnShutdown::Drop
        } else {
            listener::OnShutdown::Drain
        };
        self.tasks
            .spawn(listener::serve(b, router, shutdown, tasks, on_shutdown));
    }

    /// Stops the member:
    /// 1. end watch streams (they never end on their own);
    /// 2. stop accepting and let connections finish (bounded);
    /// 3. stop the peer links and the raft loop, which closes the WAL;
    /// 4. wait for the apply stage to end, then commit the backend durably.
    pub async fn close(self) {
        self.core.watchable.close();
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {CLOSE_GRACE:?}; closing anyway");
        }
        self.transport.stop();
        let node = self.core.writes.node();
        let stopped = node.send(oxcd_raft::node::Input::Stop).is_ok()
            && tokio::time::timeout(CLOSE_GRACE, node.stopped())
                .await
                .is_ok();
        // The apply stage ends once it has applied what the stopped loop
        // handed over; then nothing applies any more: make the backend
        // durable, so that the next start finds it current instead of
        // replaying the WAL.
        let store = self.core.store.clone();
        let apply_stage = self.apply_stage;
        let finish = move || {
            if stopped && apply_stage.join().is_err() {
                tracing::warn!("the apply stage panicked");
            }
            store.sync()
        };
        match tokio::task::spawn_blocking(finish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "final backend commit failed"),
            Err(e) => tracing::warn!(error = %e, "final backend commit did not run"),
        }
    }
}

/// etcd's start-up lines about the backend quota.
fn log_quota(quota_backend_bytes: i64) {
    use crate::apply::quota::{effective_bytes, MAX_QUOTA_BYTES};
    let bytes = effective_bytes(quota_backend_bytes);
    if bytes < 0 {
        tracing::info!(quota_size_bytes = bytes, "disabled backend quota");
    } else if quota_backend_bytes == 0 {
        tracing::info!(
            quota_size_bytes = bytes,
            "enabled backend quota with default value"
        );
    } else {
        if bytes > MAX_QUOTA_BYTES {
            tracing::warn!(
                quota_size_bytes = bytes,
                quota_maximum_size_bytes = MAX_QUOTA_BYTES,
                "quota exceeds the maximum value"
            );
        }
        tracing::info!(quota_size_bytes = bytes, "enabled backend quota");
    }
}

/// Loads the leases and makes the lessor primary: a single member is its
/// own leader from the start, and like etcd's new leader it gives every
/// lease its TTL plus one election timeout from now (so leases survive a
/// restart with their time refreshed, or, with checkpoints, counting from
/// their last checkpointed remaining TTL).
fn start_lessor(cfg: &Config, store: &KvStore) -> Result<Lessor, StartError> {
    let min_ttl = lessor::min_lease_ttl(cfg.election_ticks(), cfg.heartbeat_interval_ms);
    let lessor = Lessor::recover(store, min_ttl)?;
    if cfg.experimental_enable_lease_checkpoint {
        lessor.enable_checkpoints(
            lessor::checkpoint_interval(),
            cfg.experimental_enable_lease_checkpoint_persist,
        );
    }
    lessor.promote(Duration::from_millis(cfg.election_timeout_ms));
    Ok(lessor)
}

/// Who this member is when it joins a running cluster
/// (`--initial-cluster-state existing`): the cluster ID and member list
/// come from the other members (etcd's `GetClusterFromRemotePeers`), and
/// this member is the one added with its advertised peer URLs.
async fn join_identity(
    cfg: &Config,
    layout: &bootstrap::Layout,
) -> Result<bootstrap::Identity, StartError> {
    let mine: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(url_string)
        .collect();
    let ic = InitialCluster::parse(&cfg.initial_cluster)?;
    let others: Vec<String> = ic
        .by_name
        .values()
        .flatten()
        .filter(|u| !mine.contains(u))
        .cloned()
        .collect();
    let tls = raft_boot::peer_client_tls(&cfg.peer_tls, &layout.peer_fixtures())?;
    // oxcd members answer oxcd's protocol, etcd members etcd's `/members`.
    let (cluster_id, mut members) = match oxcd_raft::transport::fetch_members(&others, &tls).await {
        Ok(remote) => (
            remote.cluster_id,
            remote
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name,
                    peer_urls: m.peer_urls,
                    client_urls: m.client_urls,
                    is_learner: m.is_learner,
                })
                .collect::<Vec<Member>>(),
        ),
        Err(e) => crate::cluster::peer_http::fetch_members(&others, &tls)
            .await
            .map_err(|etcd| {
                StartError::Raft(format!(
                    "cannot fetch cluster info from peer urls: {} (etcd's /members: {etcd})",
                    e.message()
                ))
            })?,
    };
    let mut sorted_mine = mine.clone();
    sorted_mine.sort();
    let me = members
        .iter_mut()
        .find(|m| {
            let mut p = m.peer_urls.clone();
            p.sort();
            p == sorted_mine
        })
        .ok_or_else(|| {
            StartError::Raft(format!(
                "member with peer URLs {} has not been added to the cluster (use member add first)",
                mine.join(",")
            ))
        })?;
    me.name = cfg.name.clone();
    me.client_urls = cfg.advertise_client_urls.iter().map(url_string).collect();
    let member = me.clone();
    members.sort_by_key(|m| m.id);
    Ok(bootstrap::Identity {
        member,
        members,
        cluster_id,
    })
}

/// The member list and IDs a brand-new member derives from its flags.
fn initial_identity(cfg: &Config) -> Result<bootstrap::Identity, StartError> {
    let advertised: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(url_string)
        .collect();
    let ic = InitialCluster::parse(&cfg.initial_cluster)?;
    let mut members = ic.members(&cfg.name, &advertised, &cfg.initial_cluster_token)?;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cid = cluster_id(&ids);
    let client_urls: Vec<String> = cfg.advertise_client_urls.iter().map(url_string).collect();
    let mut own: Option<Member> = None;
    for m in &mut members {
        if m.name == cfg.name {
            m.client_urls = client_urls.clone();
            own = Some(m.clone());
        } else {
            // Not yet published: etcd lists such members without a name.
            m.name.clear();
        }
    }
    let member = own.ok_or_else(
        || crate::cluster::membership::MembershipError::NameNotFound {
            name: cfg.name.clone(),
        },
    )?;
    Ok(bootstrap::Identity {
        member,
        members,
        cluster_id: cid,
    })
}

fn listener_tls(
    info: &TlsInfo,
    policy: &TlsPolicy,
    fixtures: &std::path::Path,
    urls: &[url::Url],
) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    if !urls.iter().any(listener::is_secure) {
        return Ok(None);
    }
    let settings = tls_settings(info, policy);
    if settings.has_cert() {
        return Ok(Some(settings.server_config()?));
    }
    if info.auto_tls {
        let hosts: Vec<String> = urls
            .iter()
            .filter_map(|u| u.host_str().map(String::from))
            .collect();
        let mut s = tls::self_signed(fixtures, &hosts)?;
        s.client_cert_auth = false;
        s.policy = policy.clone();
        return Ok(Some(s.server_config()?));
    }
    Err(tls::TlsError::Missing.into())
}

/// The listener's view of the configured TLS files (empty path = unset).
fn tls_settings(t: &TlsInfo, policy: &TlsPolicy) -> TlsSettings {
    let path = |p: &std::path::Path| (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
    TlsSettings {
        cert_file: path(&t.cert_file),
        key_file: path(&t.key_file),
        trusted_ca_file: path(&t.trusted_ca_file),
        client_cert_auth: t.client_cert_auth,
        allowed_cn: Some(t.allowed_cn.clone()).filter(|s| !s.is_empty()),
        allowed_hostname: Some(t.allowed_hostname.clone()).filter(|s| !s.is_empty()),
        crl_file: path(&t.crl_file),
        policy: policy.clone(),
    }
}

/// `--cipher-suites`, `--tls-min-version`, `--tls-max-version`: one policy
/// for every listener, as in etcd.
fn tls_policy(cfg: &Config) -> TlsPolicy {
    TlsPolicy {
        cipher_suites: cfg.cipher_suites.clone(),
        min_version: cfg.tls_min_version.clone(),
        max_version: cfg.tls_max_version.clone(),
    }
}

/// `--backend-batch-interval` / `--backend-batch-limit`, where 0 means
/// etcd's defaults (100 ms, 10 000 writes).
fn backend_config(cfg: &Config) -> BackendConfig {
    let d = BackendConfig::default();
    BackendConfig {
        batch_interval: if cfg.backend_batch_interval.is_zero() {
            d.batch_interval
        } else {
            cfg.backend_batch_interval
        },
        batch_limit: u64::try_from(cfg.backend_batch_limit)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(d.batch_limit),
    }
}
