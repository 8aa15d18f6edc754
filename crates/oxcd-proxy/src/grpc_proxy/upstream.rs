//! The proxy's connections to the cluster: one lazily dialled HTTP/2
//! channel per `--endpoints` entry, one of them current. A call that fails
//! for want of a connection moves the proxy to the next endpoint; reads are
//! retried there at once, writes only when the request provably never left
//! (the connection was refused), so a write is never applied twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::ProxyError;

/// The metadata a client's call carries that the cluster must see too:
/// the auth token and etcd's "require a leader" marker.
const FORWARDED: &[&str] = &["token", "hasleader"];

/// The cluster behind the proxy.
pub struct Upstream {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Upstream {
    /// Channels to every endpoint (`host:port`, or an `http`/`https` URL),
    /// over TLS when `tls` is given (which an `https` URL needs). Nothing
    /// is dialled yet.
    pub fn new(
        endpoints: &[String],
        tls: Option<Arc<rustls::ClientConfig>>,
        dial_timeout: Duration,
    ) -> Result<Upstream, ProxyError> {
        if endpoints.is_empty() {
            return Err(ProxyError::Config("no endpoints given".into()));
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        let mut shown = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let (https, hostport) = split_scheme(ep)?;
            if https && tls.is_none() {
                return Err(ProxyError::Config(format!(
                    "endpoint {ep:?} is https but no client TLS is configured"
                )));
            }
            let tls = tls.clone();
            let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
                .map_err(|e| ProxyError::Config(format!("bad endpoint {ep:?}: {e}")))?
                .connect_timeout(dial_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            let connector = Connector {
                hostport: hostport.clone(),
                tls,
            };
            channels.push(endpoint.connect_with_connector_lazy(connector));
            shown.push(ep.clone());
        }
        Ok(Upstream {
            endpoints: shown,
            channels,
            current: AtomicUsize::new(0),
        })
    }

    /// The endpoints as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The current endpoint's index and channel.
    pub fn channel(&self) -> (usize, Channel) {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        (i, self.channels[i].clone())
    }

    /// Moves off endpoint `i` after a connection failure there (unless
    /// another caller already moved).
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.channels.len();
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.channels.len() > 1
        {
            tracing_like_warn(&self.endpoints[i], &self.endpoints[next]);
        }
    }

    /// One unary call with fail-over: `call` gets a channel and builds the
    /// request each time it is tried. `repeatable` calls (reads) are tried
    /// on every endpoint; others only while the connection was refused.
    pub async fn unary<R, F, Fut>(&self, repeatable: bool, call: F) -> Result<R, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let mut last = None;
        for _ in 0..self.channels.len() {
            let (i, ch) = self.channel();
            match call(ch).await {
                Err(s) if is_connection_failure(&s) => {
                    self.failed(i);
                    if !repeatable && !never_sent(&s) {
                        return Err(s);
                    }
                    last = Some(s);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no endpoint available")))
    }
}

/// The closure [`Upstream::unary`] wants for one call: `Client::method`
/// with `msg`, carrying the metadata of the client's request `from`.
macro_rules! upcall {
    ($client:ident, $method:ident, $from:expr, $msg:expr) => {
        |ch| {
            let r = $crate::grpc_proxy::upstream::forward($from, $msg.clone());
            async move {
                $client::new(ch)
                    .max_decoding_message_size(usize::MAX)
                    .$method(r)
                    .await
            }
        }
    };
}
pub(crate) use upcall;

/// Copies the client's auth token and leader requirement onto an upstream
/// request.
pub fn forward<T, U>(from: &Request<T>, msg: U) -> Request<U> {
    let mut req = Request::new(msg);
    copy_metadata(from.metadata(), req.metadata_mut());
    req
}

/// [`forward`] for a stream's metadata kept apart from its request.
pub fn copy_metadata(from: &tonic::metadata::MetadataMap, to: &mut tonic::metadata::MetadataMap) {
    for key in FORWARDED {
        if let Some(v) = from.get(*key) {
            to.insert(*key, v.clone());
        }
    }
}

/// The auth token a call carries, if any (part of the range cache's key).
pub fn token_of(md: &tonic::metadata::MetadataMap) -> Vec<u8> {
    md.get("token")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default()
}

/// A failure of the connection, not an answer of the cluster: etcd's own
/// `Unavailable` errors (no leader, leader changed, …) start with
/// `etcdserver:` and are passed on as they are.
pub fn is_connection_failure(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => !s.message().starts_with("etcdserver:"),
        Code::Unknown | Code::Internal | Code::Cancelled => {
            let m = s.message();
            m.contains("transport error")
                || m.contains("connection")
                || m.contains("h2 protocol error")
                || m.contains("broken pipe")
        }
        _ => false,
    }
}

/// Whether the request certainly never reached a member: the connection
/// could not be made at all.
fn never_sent(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    [
        "connection refused",
        "tcp connect",
        "error trying to connect",
        "no route to host",
        "network is unreachable",
    ]
    .iter()
    .any(|p| m.contains(p))
}

fn tracing_like_warn(from: &str, to: &str) {
    super::log(
        "warn",
        "switching endpoint after a connection failure",
        serde_json::json!({ "from": from, "to": to }),
    );
}

/// `https://h:p` → (true, "h:p"); `http://h:p` and `h:p` → (false, "h:p").
fn split_scheme(ep: &str) -> Result<(bool, String), ProxyError> {
    let (https, rest) = if let Some(r) = ep.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = ep.strip_prefix("http://") {
        (false, r)
    } else if ep.contains("://") {
        return Err(ProxyError::Config(format!(
            "endpoint {ep:?}: only http and https are supported"
        )));
    } else {
        (false, ep)
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || !hostport.contains(':') {
        return Err(ProxyError::Config(format!(
            "endpoint {ep:?} has no host:port"
        )));
    }
    Ok((https, hostport.to_string()))
}

/// A byte stream to a member, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Dials one member: TCP, then TLS with the proxy's own client config
/// (which, unlike tonic's, can skip verification for
/// `--insecure-skip-tls-verify`).
#[derive(Clone)]
struct Connector {
    hostport: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let hostport = self.hostport.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&hostport).await?;
            tcp.set_nodelay(true)?;
            let Some(cfg) = tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
            };
            let host = hostport
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(&hostport)
                .to_string();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Io>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_clientv3() {
        assert_eq!(
            split_scheme("127.0.0.1:2379").unwrap(),
            (false, "127.0.0.1:2379".into())
        );
        assert_eq!(split_scheme("https://h:1/").unwrap(), (true, "h:1".into()));
        assert!(split_scheme("unix://x").is_err());
        assert!(split_scheme("http://").is_err());
    }

    #[test]
    fn etcd_unavailable_errors_are_answers() {
        assert!(!is_connection_failure(&Status::unavailable(
            "etcdserver: no leader"
        )));
        assert!(is_connection_failure(&Status::unavailable(
            "tcp connect error: Connection refused (os error 111)"
        )));
        assert!(!is_connection_failure(&Status::not_found("x")));
        let refused = Status::unavailable("Connection refused (os error 111)");
        assert!(is_connection_failure(&refused) && never_sent(&refused));
        assert!(!never_sent(&Status::unavailable("h2 protocol error")));
    }
}
