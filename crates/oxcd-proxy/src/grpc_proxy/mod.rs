//! `grpc-proxy start`: etcd's L7 proxy. Clients speak the whole v3 API to
//! the proxy; the proxy speaks it to the cluster, sharing what many
//! clients ask alike:
//!
//! - [`kv`]: serializable ranges answered from a cache ([`cache`]) that
//!   writes through the proxy invalidate;
//! - [`watch`]: client watches on one range share one upstream watch;
//! - [`lease`]: keep-alives share one upstream stream;
//! - [`passthrough`]: Cluster, Maintenance, Auth, Lock, Election;
//! - [`namespace`]: `--namespace`, applied between clients and cluster;
//! - [`register`]: `--resolver-prefix` registration;
//! - [`upstream`]: the connections to the cluster and their fail-over.
//!
//! The listener serves gRPC and, on the same port, `/health`, `/metrics`
//! (forwarded from a member, as etcd's proxy does) and `/proxy/metrics`
//! (the proxy's own), over TLS when configured. TLS settings arrive built
//! (the `oxcd` binary reads the flags and files).

// Messages are cloned alike whether prost made them `Copy` or not (that
// changes with their fields), so the forwarding code reads the same.
#![allow(clippy::clone_on_copy)]

pub mod cache;
pub mod kv;
pub mod lease;
pub mod metrics;
pub mod namespace;
pub mod passthrough;
pub mod register;
pub mod upstream;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use oxcd_api::etcdserverpb::auth_server::AuthServer;
use oxcd_api::etcdserverpb::cluster_server::ClusterServer;
use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::kv_server::KvServer;
use oxcd_api::etcdserverpb::lease_server::LeaseServer;
use oxcd_api::etcdserverpb::maintenance_server::MaintenanceServer;
use oxcd_api::etcdserverpb::watch_server::WatchServer;
use oxcd_api::etcdserverpb::RangeRequest;
use oxcd_api::v3electionpb::election_server::ElectionServer;
use oxcd_api::v3lockpb::lock_server::LockServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::Routes;

use metrics::Metrics;
use namespace::Namespace;
use upstream::Upstream;

/// Where etcd's proxy logs from.
const CALLER: &str = "etcdmain/grpc_proxy.go";

/// One zap-style log line of the gRPC proxy.
pub(crate) fn log(level: &str, msg: &str, fields: serde_json::Value) {
    crate::log::line(level, CALLER, msg, fields);
}

/// Why the proxy could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A flag's value is unusable.
    #[error("{0}")]
    Config(String),
    /// A listener could not be opened or failed.
    #[error("{what} {addr}: {source}")]
    Listen {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Everything `grpc-proxy start` was told.
#[derive(Clone)]
pub struct GrpcProxyConfig {
    /// `--listen-addr` (host:port).
    pub listen_addr: String,
    /// `--endpoints`.
    pub endpoints: Vec<String>,
    /// TLS to the cluster (`--cert/--key/--cacert`,
    /// `--insecure-skip-tls-verify`).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS to clients (`--cert-file/--key-file/--trusted-ca-file`,
    /// `--auto-tls`, `--listen-cipher-suites`).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// `--metrics-addr` as host:port and whether it is `https`.
    pub metrics_addr: Option<(String, bool)>,
    /// `--advertise-client-url`.
    pub advertise_client_url: String,
    /// `--resolver-prefix`.
    pub resolver_prefix: String,
    /// `--resolver-ttl` in seconds.
    pub resolver_ttl: i64,
    /// `--namespace`.
    pub namespace: String,
    /// `--max-send-bytes`.
    pub max_send_bytes: usize,
    /// `--max-recv-bytes`.
    pub max_recv_bytes: usize,
    /// `--max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// Extra HTTP routes on the listener (`--enable-pprof`).
    pub extra_routes: Option<Router>,
}

impl std::fmt::Debug for GrpcProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcProxyConfig")
            .field("listen_addr", &self.listen_addr)
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What the HTTP endpoints need.
#[derive(Clone)]
struct Http {
    up: Arc<Upstream>,
    metrics: Metrics,
    /// TLS for fetching a member's `/metrics` (HTTP/1, no ALPN).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Runs the proxy until its listener fails. Logs `started gRPC proxy`
/// once it accepts clients.
pub async fn run(cfg: GrpcProxyConfig) -> Result<(), ProxyError> {
    let up = Arc::new(Upstream::new(
        &cfg.endpoints,
        cfg.client_tls.clone(),
        Duration::from_secs(5),
    )?);
    let ns = Namespace::new(&cfg.namespace);
    let metrics = Metrics::new();
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .map_err(|source| ProxyError::Listen {
            what: "listen",
            addr: cfg.listen_addr.clone(),
            source,
        })?;
    log(
        "info",
        "listening for gRPC proxy client requests",
        serde_json::json!({ "address": cfg.listen_addr }),
    );
    let http = Http {
        up: up.clone(),
        metrics: metrics.clone(),
        tls: cfg.client_tls.as_ref().map(|c| {
            let mut c = (**c).clone();
            c.alpn_protocols.clear();
            Arc::new(c)
        }),
    };
    let router =
        services(&cfg, up.clone(), ns.clone(), metrics.clone()).merge(http_routes(http.clone()));
    let router = match cfg.extra_routes.clone() {
        Some(extra) => router.merge(extra),
        None => router,
    };
    if !cfg.resolver_prefix.is_empty() {
        tokio::spawn(register::keep_registered(
            up.clone(),
            ns.clone(),
            cfg.resolver_prefix.clone(),
            cfg.advertise_client_url.clone(),
            cfg.resolver_ttl,
        ));
    }
    if let Some((addr, https)) = &cfg.metrics_addr {
        let ml = TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Listen {
                what: "metrics listen",
                addr: addr.clone(),
                source,
            })?;
        log(
            "info",
            "gRPC proxy listening for metrics",
            serde_json::json!({ "address": addr }),
        );
        let tls = if *https { cfg.server_tls.clone() } else { None };
        let app = http_routes(http);
        tokio::spawn(async move {
            let _ = accept_loop(ml, tls, app, u32::MAX).await;
        });
    }
    log(
        "info",
        "started gRPC proxy",
        serde_json::json!({ "address": cfg.listen_addr }),
    );
    accept_loop(
        listener,
        cfg.server_tls.clone(),
        router,
        cfg.max_concurrent_streams,
    )
    .await
    .map_err(|source| ProxyError::Listen {
        what: "serve",
        addr: cfg.listen_addr.clone(),
        source,
    })
}

/// The eight gRPC services over the cluster.
fn services(cfg: &GrpcProxyConfig, up: Arc<Upstream>, ns: Namespace, metrics: Metrics) -> Router {
    let (send, recv) = (cfg.max_send_bytes, cfg.max_recv_bytes);
    macro_rules! limits {
        ($server:expr) => {
            $server
                .max_encoding_message_size(send)
                .max_decoding_message_size(recv)
        };
    }
    let cluster = passthrough::ClusterProxy {
        up: up.clone(),
        advertise: cfg.advertise_client_url.clone(),
        resolver_prefix: cfg.resolver_prefix.clone(),
        ns: ns.clone(),
    };
    let mut b = Routes::builder();
    b.add_service(limits!(KvServer::new(kv::KvProxy::new(
        up.clone(),
        ns.clone(),
        metrics.clone()
    ))));
    b.add_service(limits!(WatchServer::new(watch::WatchProxy::new(
        up.clone(),
        ns.clone(),
        metrics
    ))));
    b.add_service(limits!(LeaseServer::new(lease::LeaseProxy::new(
        up.clone(),
        ns.clone()
    ))));
    b.add_service(limits!(ClusterServer::new(cluster)));
    b.add_service(limits!(MaintenanceServer::new(
        passthrough::MaintenanceProxy { up: up.clone() }
    )));
    b.add_service(limits!(AuthServer::new(passthrough::AuthProxy {
        up: up.clone()
    })));
    b.add_service(limits!(LockServer::new(passthrough::LockProxy {
        up: up.clone(),
        ns: ns.clone()
    })));
    b.add_service(limits!(ElectionServer::new(passthrough::ElectionProxy {
        up,
        ns
    })));
    b.routes().into_axum_router()
}

/// `/health`, `/metrics` and `/proxy/metrics`.
fn http_routes(http: Http) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(upstream_metrics))
        .route("/proxy/metrics", get(own_metrics))
        .with_state(http)
}

/// Healthy when a range through the proxy gets an answer within a second
/// (permission denied is an answer), as etcd's proxy checks.
async fn health(State(h): State<Http>) -> Response {
    let r = RangeRequest {
        key: bytes::Bytes::from_static(b"a"),
        ..Default::default()
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(1),
        h.up.unary(true, |ch| {
            let r = r.clone();
            async move { KvClient::new(ch).range(r).await }
        }),
    )
    .await;
    let healthy = match answer {
        Ok(Ok(_)) => true,
        Ok(Err(s)) => s.message() == "etcdserver: permission denied",
        Err(_) => false,
    };
    let body = if healthy {
        r#"{"health":"true"}"#
    } else {
        r#"{"health":"false"}"#
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn own_metrics(State(h): State<Http>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
        .into_response()
}

/// A member's `/metrics`, as etcd 3.4's proxy answers it: the current
/// endpoint's, fetched over HTTP/1.0.
async fn upstream_metrics(State(h): State<Http>) -> Response {
    let (i, _) = h.up.channel();
    let ep = h.up.endpoints()[i].clone();
    match tokio::time::timeout(Duration::from_secs(5), fetch_metrics(&ep, h.tls.clone())).await {
        Ok(Ok(body)) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error\n").into_response(),
    }
}

async fn fetch_metrics(
    endpoint: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> std::io::Result<Vec<u8>> {
    let hostport = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let tcp = TcpStream::connect(&hostport).await?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
    let mut raw = Vec::new();
    match tls {
        Some(cfg) => {
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport.as_str(), |(h, _)| h)
                .to_string();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let mut s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            s.write_all(request.as_bytes()).await?;
            s.read_to_end(&mut raw).await?;
        }
        None => {
            let mut s = tcp;
            s.write_all(request.as_bytes()).await?;
            s.read_to_end(&mut raw).await?;
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP answer"))?;
    if !raw.starts_with(b"HTTP/1.1 200") && !raw.starts_with(b"HTTP/1.0 200") {
        return Err(std::io::Error::other("member answered an error"));
    }
    Ok(raw.split_off(split + 4))
}

/// Accepts connections and serves HTTP/1 and HTTP/2 (gRPC) on each, over
/// TLS when given.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    max_streams: u32,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                log(
                    "warn",
                    "failed to accept a connection",
                    serde_json::json!({ "error": e.to_string() }),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(a) => match tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await
                {
                    Ok(Ok(s)) => serve_conn(TokioIo::new(s), app, max_streams).await,
                    Ok(Err(e)) => log_rejected(remote, &e),
                    Err(_) => {}
                },
                None => serve_conn(TokioIo::new(tcp), app, max_streams).await,
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}

fn log_rejected(remote: SocketAddr, e: &std::io::Error) {
    log(
        "warn",
        "rejected connection",
        serde_json::json!({ "remote-addr": remote.to_string(), "error": e.to_string() }),
    );
}

async fn serve_conn<I>(io: I, app: Router, max_streams: u32)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Keepalive pings find dead clients (their watches then end); they
    // need a timer, without which hyper refuses the connection.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .keep_alive_interval(Some(Duration::from_secs(120)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let svc = TowerToHyperService::new(app);
    let _ = builder.serve_connection(io, svc).await;
}
