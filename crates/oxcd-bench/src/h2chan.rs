//! A gRPC channel straight on one HTTP/2 connection.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of the connection: every
//! request is queued to a worker task and its answer handed back, two task
//! hops that cost the load generator CPU the servers under test then lack on
//! a shared machine. [`H2Channel`] calls hyper's HTTP/2 `SendRequest`
//! directly (it is `Clone` and multiplexes by itself), so a request costs
//! what the protocol needs and nothing more. Its writes go through
//! [`Coalesce`], as a gRPC-Go client batches them: without it every request
//! took two `writev` calls (HEADERS, then DATA). Both servers are driven through
//! the same channel, so the comparison stays fair.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oxcd_io::Coalesce;
use tonic::body::Body;

/// One HTTP/2 connection to an endpoint, usable by any number of clients.
#[derive(Clone)]
pub struct H2Channel {
    send: SendRequest<Body>,
    authority: Authority,
}

impl std::fmt::Debug for H2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Channel")
            .field("authority", &self.authority)
            .finish()
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The endpoint is not `http://host:port`.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// TCP connect failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl H2Channel {
    /// Connects to `url` (`http://host:port`) over TCP with `TCP_NODELAY`
    /// and runs the HTTP/2 handshake, both within `timeout`. The connection
    /// is driven by a spawned task that ends when every clone is dropped.
    ///
    /// # Errors
    /// A malformed URL, a failed or timed-out connect, a failed handshake.
    pub async fn dial(url: &str, timeout: Duration) -> Result<H2Channel, DialError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| DialError::Endpoint(e.to_string()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| DialError::Endpoint(format!("{url}: no host:port")))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(Coalesce::new(tcp)))
                .await?;
            tokio::spawn(async move {
                // The connection ends when the server closes it or every
                // sender is gone; either way there is no one to tell.
                let _ = conn.await;
            });
            Ok::<_, DialError>(send)
        };
        let send = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out"))??;
        Ok(H2Channel { send, authority })
    }
}

impl tower::Service<http::Request<Body>> for H2Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // tonic gives an origin-form URI (the method path); HTTP/2 needs
        // :scheme and :authority as well.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(req))
    }
}
