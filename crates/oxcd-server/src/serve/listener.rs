//! Binding listen URLs and serving one router on them.
//!
//! One listener per URL (`http://`, `https://`, `unix://`, `unixs://`). Each
//! accepted connection is served by hyper's auto builder, which speaks
//! HTTP/1.1 and HTTP/2 on the same socket: gRPC arrives as HTTP/2, curl and
//! the JSON gateway as HTTP/1 (etcd's cmux does the same job).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;
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

/// Serves `router` on `bound` until `shutdown` fires. Connections are
/// tracked by `tasks` so that close can wait for them.
pub async fn serve(bound: Bound, router: Router, shutdown: CancellationToken, tasks: TaskTracker) {
    let acceptor = bound.tls.clone().map(TlsAcceptor::from);
    loop {
        let accepted: io::Result<Box<dyn Conn>> = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = accept(&bound.socket) => r,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(url = %bound.url, error = %e, "accept failed");
                // Out of file descriptors and the like: back off briefly.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            match acceptor {
                Some(a) => match a.accept(stream).await {
                    Ok(tls) => serve_conn(tls, router, shutdown).await,
                    Err(e) => tracing::warn!(error = %e, "TLS handshake failed"),
                },
                None => serve_conn(stream, router, shutdown).await,
            }
        });
    }
}

/// A byte stream a connection can run over.
trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

async fn accept(socket: &Socket) -> io::Result<Box<dyn Conn>> {
    Ok(match socket {
        Socket::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Socket::Unix(l) => Box::new(l.accept().await?.0),
    })
}

async fn serve_conn<S>(stream: S, router: Router, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(u32::MAX)
        .enable_connect_protocol();
    let svc = TowerToHyperService::new(router);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
