//! Binding listen URLs and serving one router on them.
//!
//! One listener per URL (`http://`, `https://`, `unix://`, `unixs://`). Each
//! accepted connection is served by hyper's auto builder, which speaks
//! HTTP/1.1 and HTTP/2 on the same socket: gRPC arrives as HTTP/2, curl and
//! the JSON gateway as HTTP/1 (etcd's cmux does the same job).

use super::Dispatch;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use oxcd_raft::tls_error::{self, Side};
use rustls::server::Acceptor;
use rustls::ServerConfig;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// A bound socket.
pub enum Socket {
    /// TCP, from `http://host:port` or `https://host:port`.
    Tcp(TcpListener),
    /// A Unix socket, from `unix://name` or `unixs://name`.
    Unix(UnixListener),
}

/// A bound listen URL, with TLS if its scheme asks for it.
pub struct Bound {
    /// The URL as given on the command line.
    pub url: Url,
    /// The socket accepting connections.
    pub socket: Socket,
    /// Present for `https`/`unixs`.
    pub tls: Option<Arc<ServerConfig>>,
}

/// Whether a URL's scheme asks for TLS.
pub fn is_secure(url: &Url) -> bool {
    matches!(url.scheme(), "https" | "unixs")
}

/// Binds `url`. For Unix sockets the "host:port" part names the socket file,
/// as in etcd; a stale file from an earlier run is removed first.
pub async fn bind(url: &Url, tls: Option<Arc<ServerConfig>>) -> io::Result<Bound> {
    let host = url.host_str().unwrap_or_default();
    let socket = match url.scheme() {
        "unix" | "unixs" => {
            let path = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => format!("{host}{}", url.path()),
            };
            let _ = std::fs::remove_file(&path);
            Socket::Unix(UnixListener::bind(&path).map_err(|e| with_addr(e, &path))?)
        }
        _ => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = url.port_or_known_default().unwrap_or(0);
            let addr = format!(
                "{}:{port}",
                if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                }
            );
            Socket::Tcp(
                TcpListener::bind(&addr)
                    .await
                    .map_err(|e| with_addr(e, &addr))?,
            )
        }
    };
    Ok(Bound {
        url: url.clone(),
        socket,
        tls,
    })
}

/// Errors in etcd's wording: `listen tcp 127.0.0.1:2379: bind: address already in use`.
fn with_addr(e: io::Error, addr: &str) -> io::Error {
    let what = match e.kind() {
        io::ErrorKind::AddrInUse => "bind: address already in use".to_string(),
        _ => e.to_string(),
    };
    io::Error::new(e.kind(), format!("listen tcp {addr}: {what}"))
}

/// How a connection ends when the member shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Stop taking new requests and let those in flight finish (clients).
    Drain,
    /// Drop the connection at once (peers: their raft streams never end
    /// on their own, and raft messages may be lost at any time anyway).
    Drop,
}

/// Serves `router` (a [`Dispatch`]) on `bound` until `shutdown` fires.
/// Connections are tracked by `tasks` so that close can wait for them.
pub async fn serve(
    bound: Bound,
    router: Dispatch,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    on_shutdown: OnShutdown,
) {
    let mut failed: u64 = 0;
    let mut last_report: Option<std::time::Instant> = None;
    loop {
        let accepted: io::Result<(Box<dyn Conn>, String)> = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = accept(&bound.socket) => r,
        };
        let (stream, remote) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly,
                // and say so once per interval with a count, not per try.
                failed += 1;
                if last_report.is_none_or(|t| t.elapsed() >= ACCEPT_REPORT_INTERVAL) {
                    tracing::warn!(
                        url = %bound.url,
                        error = %e,
                        failures = failed,
                        "accept failed"
                    );
                    last_report = Some(std::time::Instant::now());
                    failed = 0;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let tls = bound.tls.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match tls {
                Some(config) => {
                    let shook = tokio::time::timeout(
                        idle_connection_timeout(),
                        handshake(stream, config, &remote),
                    );
                    if let Ok(Some(tls)) = shook.await {
                        // A verified client certificate's CN names the
                        // caller of requests without a token.
                        let cn = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| super::tls::leaf_cn(leaf))
                            .map(|cn| crate::auth::ClientCn(cn.into()));
                        let router = router.for_connection(true, cn);
                        serve_conn(tls, router, shutdown, on_shutdown).await;
                    }
                }
                None => serve_conn(stream, router, shutdown, on_shutdown).await,
            }
        });
    }
}

/// Runs the server side of a TLS handshake. A failure is logged as etcd
/// does (`rejected connection from "<addr>" (error "<Go wording>",
/// ServerName "<SNI>")`), e.g. `client certificate authentication failed`
/// for a peer refused by `--peer-cert-allowed-cn`.
async fn handshake(
    stream: Box<dyn Conn>,
    config: Arc<ServerConfig>,
    remote: &str,
) -> Option<tokio_rustls::server::TlsStream<Box<dyn Conn>>> {
    let start = match LazyConfigAcceptor::new(Acceptor::default(), stream).await {
        Ok(s) => s,
        Err(e) => {
            log_rejected(remote, &e, "");
            return None;
        }
    };
    let server_name = start.client_hello().server_name().unwrap_or("").to_string();
    match start.into_stream(config).into_fallible().await {
        Ok(tls) => Some(tls),
        Err((e, io)) => {
            log_rejected(remote, &e, &server_name);
            linger(io).await;
            None
        }
    }
}

/// How long a refused connection is kept half-open after the alert.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Closes a connection whose handshake failed so that the peer reads the
/// alert: send FIN after it, then drain what the peer already sent (a TLS
/// 1.3 client sends application data right after its certificate) until
/// it closes or [`LINGER`] passes. Closing with unread data would send a
/// reset instead, and the peer would see `broken pipe` rather than
/// `remote error: tls: bad certificate`.
async fn linger(mut io: Box<dyn Conn>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn log_rejected(remote: &str, e: &io::Error, server_name: &str) {
    let error = tls_error::describe(e, Side::Server);
    tracing::warn!(
        "rejected connection from {remote:?} (error {error:?}, ServerName {server_name:?})"
    );
}

/// A byte stream a connection can run over.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// Accepts one connection, with the remote address as Go prints it.
async fn accept(socket: &Socket) -> io::Result<(Box<dyn Conn>, String)> {
    Ok(match socket {
        Socket::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            let _ = s.set_nodelay(true);
            (Box::new(s), addr.to_string())
        }
        Socket::Unix(l) => {
            let (s, addr) = l.accept().await?;
            let addr = addr
                .as_pathname()
                .map_or_else(|| "@".to_string(), |p| p.display().to_string());
            (Box::new(s), addr)
        }
    })
}

/// Longest an HTTP/1 client may take to send its request headers (Go's
/// servers in etcd have no limit; hyper's default needs a timer).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a new connection may stay silent (no TLS handshake, no first
/// byte) before it is closed, so idle sockets cannot pile up without
/// bound. The test knob `OXCD_TEST_IDLE_CONNECTION_TIMEOUT_MS` shortens it.
fn idle_connection_timeout() -> std::time::Duration {
    std::env::var("OXCD_TEST_IDLE_CONNECTION_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(HEADER_READ_TIMEOUT, std::time::Duration::from_millis)
}

/// A stream that notes whether anything was read from it yet.
struct FirstRead<S> {
    inner: S,
    got: Arc<std::sync::atomic::AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstRead<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.got.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstRead<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How often a listener that keeps failing to accept says so.
const ACCEPT_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve_conn<S>(
    stream: S,
    router: Dispatch,
    shutdown: CancellationToken,
    on_shutdown: OnShutdown,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(router.max_streams)
        .enable_connect_protocol();
    // A client that never finishes its request headers (slowloris) is
    // dropped instead of holding a connection for ever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    if let Some((interval, timeout)) = router.keepalive {
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(interval))
            .keep_alive_timeout(timeout);
    }
    let svc = TowerToHyperService::new(router);
    let got = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = FirstRead {
        inner: stream,
        got: got.clone(),
    };
    let stream = super::authority::FixAuthority::new(oxcd_io::Coalesce::new(stream));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let silent = async {
        tokio::time::sleep(idle_connection_timeout()).await;
        if got.load(std::sync::atomic::Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with error");
            }
        }
        () = silent => tracing::debug!("closing a connection that sent nothing"),
        _ = shutdown.cancelled() => {
            if on_shutdown == OnShutdown::Drain {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
