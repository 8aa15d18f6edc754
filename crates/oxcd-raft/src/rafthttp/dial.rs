//! HTTP/1.1 requests to an etcd peer URL (`http`, `https`, `unix`,
//! `unixs`), one connection per request as etcd's stream dialler does.

use crate::transport::PeerTls;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// How long a connection attempt may take (etcd's `DialTimeout` is 1 s
/// in tests and the peer dial timeout in production).
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request to a peer failed before an HTTP answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The URL cannot be dialled.
    #[error("bad peer URL {0}")]
    BadUrl(String),
    /// Nothing accepted the connection (refused, unreachable, timed out).
    #[error("{0}")]
    Connect(String),
    /// Connected, but the TLS handshake or the HTTP exchange failed.
    #[error("{0}")]
    Io(String),
    /// `https` with a TLS setup oxcd cannot use for etcd's protocol yet.
    #[error("https peers need --peer-auto-tls for etcd's peer protocol in this build")]
    TlsUnsupported,
}

/// Splits a peer URL into how to connect and the `Host` to send.
fn target(url: &str) -> Result<(Conn, String), DialError> {
    let bad = || DialError::BadUrl(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default().to_string();
    if authority.is_empty() {
        return Err(bad());
    }
    let conn = match scheme {
        "http" => Conn::Tcp,
        "https" => Conn::Tls,
        "unix" | "unixs" => Conn::Unix,
        _ => return Err(bad()),
    };
    Ok((conn, authority))
}

enum Conn {
    Tcp,
    Tls,
    Unix,
}

/// Sends `req` (its URI a path only) to the peer at `base_url` over a new
/// HTTP/1.1 connection and returns the answer, whose body streams.
pub async fn send<B>(
    base_url: &str,
    tls: &PeerTls,
    mut req: http::Request<B>,
) -> Result<http::Response<Incoming>, DialError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (conn, authority) = target(base_url)?;
    let io = |e: std::io::Error| DialError::Io(e.to_string());
    let connect = |e: std::io::Error| DialError::Connect(e.to_string());
    req.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(&authority).map_err(|_| DialError::BadUrl(base_url.into()))?,
    );
    macro_rules! exchange {
        ($stream:expr) => {{
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($stream))
                .await
                .map_err(|e| DialError::Io(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
                .send_request(req)
                .await
                .map_err(|e| DialError::Io(e.to_string()))
        }};
    }
    match conn {
        Conn::Tcp => {
            let s = tokio::time::timeout(
                DIAL_TIMEOUT,
                tokio::net::TcpStream::connect(authority.clone()),
            )
            .await
            .map_err(|_| DialError::Connect(format!("dial tcp {authority}: i/o timeout")))?
            .map_err(connect)?;
            let _ = s.set_nodelay(true);
            exchange!(s)
        }
        Conn::Unix => {
            let s = tokio::time::timeout(
                DIAL_TIMEOUT,
                tokio::net::UnixStream::connect(authority.clone()),
            )
            .await
            .map_err(|_| DialError::Connect(format!("dial unix {authority}: i/o timeout")))?
            .map_err(connect)?;
            exchange!(s)
        }
        Conn::Tls => {
            let (PeerTls::SkipVerify(cfg) | PeerTls::Verified(_, Some(cfg))) = tls else {
                return Err(DialError::TlsUnsupported);
            };
            // etcd's peer protocol is HTTP/1.1: no h2 in ALPN.
            let mut cfg = (**cfg).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let host = authority
                .rsplit_once(':')
                .map_or(authority.as_str(), |(h, _)| h)
                .to_string();
            let tcp = tokio::time::timeout(
                DIAL_TIMEOUT,
                tokio::net::TcpStream::connect(authority.clone()),
            )
            .await
            .map_err(|_| DialError::Connect(format!("dial tcp {authority}: i/o timeout")))?
            .map_err(connect)?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| DialError::Io(e.to_string()))?;
            let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(io)?;
            exchange!(s)
        }
    }
}

/// A request to `path` with the peer protocol's identifying headers.
pub fn request(
    method: http::Method,
    path: &str,
    id: &Identity,
    body: Bytes,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header(super::headers::FROM, format!("{:x}", id.from))
        .header(super::headers::SERVER_VERSION, super::SERVER_VERSION)
        .header(
            super::headers::MIN_CLUSTER_VERSION,
            super::MIN_CLUSTER_VERSION,
        )
        .header(super::headers::CLUSTER_ID, format!("{:x}", id.cluster_id))
        .header(super::headers::TO, format!("{:x}", id.to));
    if !body.is_empty() {
        b = b.header(http::header::CONTENT_TYPE, "application/protobuf");
    }
    b.body(Full::new(body))
        .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
}

/// Who is asking whom, for the headers.
#[derive(Clone, Debug)]
pub struct Identity {
    /// This member.
    pub from: u64,
    /// The peer.
    pub to: u64,
    /// The cluster.
    pub cluster_id: u64,
}

/// `GET path` on the peer at `base_url`: the status, headers and body
/// (etcd's `/members`, `/version`).
///
/// # Errors
/// The request could not be made or its answer not read.
pub async fn get(
    base_url: &str,
    tls: &PeerTls,
    path: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), DialError> {
    use http_body_util::BodyExt;
    let req = http::Request::get(path)
        .body(Full::new(Bytes::new()))
        .map_err(|_| DialError::BadUrl(path.to_string()))?;
    let resp = send(base_url, tls, req).await?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(DIAL_TIMEOUT * 5, body.collect())
        .await
        .map_err(|_| DialError::Io("read: i/o timeout".into()))?
        .map_err(|e| DialError::Io(e.to_string()))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}
