//! A gRPC channel straight on one HTTP/2 connection (the `h2` crate).
//!
//! A load generator must cost as little CPU as it can: on a shared machine
//! whatever it burns the server under test lacks. tonic's `Channel` queues
//! every request to a worker task (`tower::Buffer`), and hyper's HTTP/2
//! client spawns a task per request (and another to pipe its body). Here
//! a unary call ([`H2Channel::unary`]) runs on the caller's own task: it
//! opens a stream, queues the one length-prefixed message with the end of
//! the stream, and reads the answer and its `grpc-status` trailer. The
//! streaming services (watch, lease keep-alive) go through tonic's
//! generated clients, for which [`H2Channel`] is a `tower::Service` that
//! pipes the request body from a task, as hyper does.
//!
//! Writes go through [`Coalesce`], as a gRPC-Go client batches them. Both
//! servers are driven through the same channel, so the comparison stays
//! fair.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::RecvStream;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use oxcd_io::{Coalesce, Gather};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::Status;

/// The windows hyper's HTTP/2 client uses by default (what this channel
/// replaced): 2 MiB per stream, 5 MiB per connection.
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;

/// One HTTP/2 connection to an endpoint, usable by any number of clients.
#[derive(Clone)]
pub struct H2Channel {
    send: SendRequest<Bytes>,
    scheme: Scheme,
    authority: Authority,
    /// The auth token every call carries (`--user`), as gRPC metadata.
    token: Option<HeaderValue>,
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
    /// The endpoint is not `http://host:port` or `https://host:port`.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// An `https://` endpoint without a TLS configuration (`--cacert`).
    #[error("{0}: https needs --cacert")]
    NoTls(String),
    /// TCP connect failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/2 handshake failed.
    #[error("{0}")]
    Http(#[from] h2::Error),
}

impl H2Channel {
    /// Connects to `url` (`http://host:port`, or `https://host:port` with
    /// `tls`) over TCP with `TCP_NODELAY`, runs the TLS handshake for https
    /// (the server name is the URL's host) and the HTTP/2 handshake, all
    /// within `timeout`. The connection is driven by a spawned task that
    /// ends when every clone is dropped.
    ///
    /// # Errors
    /// A malformed URL, https without `tls`, a failed or timed-out connect,
    /// a failed handshake.
    pub async fn dial(
        url: &str,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<H2Channel, DialError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| DialError::Endpoint(e.to_string()))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| DialError::Endpoint(format!("{url}: no host:port")))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(tls.ok_or_else(|| DialError::NoTls(url.to_string()))?),
            _ => return Err(DialError::Endpoint(format!("{url}: not http or https"))),
        };
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            match tls {
                None => handshake(tcp).await,
                Some(cfg) => {
                    let host = authority.host().trim_matches(|c| c == '[' || c == ']');
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| DialError::Endpoint(format!("{url}: {e}")))?;
                    let stream = TlsConnector::from(cfg.clone()).connect(name, tcp).await?;
                    handshake(stream).await
                }
            }
        };
        let send = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out"))??;
        Ok(H2Channel {
            send,
            scheme,
            authority,
            token: None,
        })
    }

    /// Sends `token` (an etcd auth token) with every later call.
    ///
    /// # Errors
    /// A token that is not a valid header value.
    pub fn set_token(&mut self, token: &str) -> Result<(), http::header::InvalidHeaderValue> {
        self.token = Some(HeaderValue::from_str(token)?);
        Ok(())
    }

    /// The auth token this connection's calls carry, if any.
    pub fn token(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    /// The absolute URI of `path` on this connection's endpoint.
    fn uri(&self, path: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).unwrap_or_default()
    }

    /// One unary gRPC call of `path` (e.g. `/etcdserverpb.KV/Put`) on the
    /// caller's task.
    ///
    /// # Errors
    /// The server's gRPC status, or `Unavailable`/`Internal` for transport
    /// and framing failures.
    pub async fn unary<Req, Resp>(&self, path: &'static str, req: &Req) -> Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let len = req.encoded_len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(u32::try_from(len).map_err(|_| Status::internal("request too large"))?);
        req.encode(&mut frame)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut head = http::Request::new(());
        *head.method_mut() = http::Method::POST;
        *head.uri_mut() = self.uri(PathAndQuery::from_static(path));
        let headers = head.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some(t) = &self.token {
            headers.insert("token", t.clone());
        }

        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (response, mut body) = send.send_request(head, false).map_err(transport)?;
        body.send_data(frame.freeze(), true).map_err(transport)?;
        let response = response.await.map_err(transport)?;
        if let Some(status) = Status::from_header_map(response.headers()) {
            // Trailers-only: an error (or an empty answer, which is one).
            return Err(if status.code() == tonic::Code::Ok {
                Status::internal("an OK answer without a message")
            } else {
                status
            });
        }
        let mut recv = response.into_body();
        let message = read_message(&mut recv).await?;
        let trailers = recv.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() == tonic::Code::Ok => {}
            Some(status) => return Err(status),
            None => return Err(Status::internal("answer without grpc-status")),
        }
        Resp::decode(message).map_err(|e| Status::internal(e.to_string()))
    }
}

/// The HTTP/2 handshake on `io`, and a task driving the connection.
async fn handshake<T>(io: T) -> Result<SendRequest<Bytes>, DialError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .handshake::<_, Bytes>(Coalesce::new(io))
        .await?;
    tokio::spawn(async move {
        // The connection ends when the server closes it or every sender
        // is gone; either way there is no one to tell.
        let _ = conn.await;
    });
    Ok(send)
}

/// The one length-prefixed message of an answer, without its prefix.
async fn read_message(recv: &mut RecvStream) -> Result<Bytes, Status> {
    let mut got = Gather::default();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.push(chunk);
    }
    let mut all = got.into_bytes();
    if all.len() < 5 || all[0] != 0 {
        return Err(Status::internal("malformed answer message"));
    }
    let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
    all.advance(5);
    if all.len() != len {
        return Err(Status::internal("answer message length mismatch"));
    }
    Ok(all)
}

fn transport(e: h2::Error) -> Status {
    Status::unavailable(e.to_string())
}

impl tower::Service<http::Request<Body>> for H2Channel {
    type Response = http::Response<RecvBody>;
    type Error = h2::Error;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<RecvBody>, h2::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        // Readiness is awaited per call, on a clone of the sender.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // tonic gives an origin-form URI (the method path); HTTP/2 needs
        // :scheme and :authority as well.
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = self.uri(path);
        if let Some(t) = &self.token {
            parts.headers.insert("token", t.clone());
        }
        let send = self.send.clone();
        Box::pin(async move {
            let mut send = send.ready().await?;
            let eos = body.is_end_stream();
            let (response, stream) =
                send.send_request(http::Request::from_parts(parts, ()), eos)?;
            if !eos {
                tokio::spawn(pipe(body, stream));
            }
            let response = response.await?;
            Ok(response.map(|recv| RecvBody {
                recv,
                data_done: false,
            }))
        })
    }
}

/// Sends a streaming request body; ends quietly if the stream is gone.
async fn pipe(body: Body, mut stream: h2::SendStream<Bytes>) {
    let mut body = std::pin::pin!(body);
    loop {
        match body.frame().await {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(_)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if stream.send_data(data, false).is_err() {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                    }
                    return;
                }
            },
        }
    }
}

/// An answer's body for tonic: the DATA frames, then the trailers; the
/// flow-control window is released as data is taken.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
}

impl HttpBody for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}
