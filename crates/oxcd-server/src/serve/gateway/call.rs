//! A gRPC call made in process: the gateway hands the [`GrpcRouter`] the
//! same HTTP/2-shaped request a remote client would send (length-prefixed
//! protobuf messages, metadata as headers) and reads the answer the same
//! way, so every check a gRPC call meets (leader, learner, size limits,
//! auth, quota) is met by a JSON call too.

use crate::v3rpc::GrpcRouter;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use std::convert::Infallible;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX_LEN: usize = 5;

/// Frames one encoded message for the gRPC wire.
pub(super) fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PREFIX_LEN + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// The request messages of a call: all known at once (unary and server
/// streams), or sent while the call runs (client and bidi streams).
pub(super) enum Outbound {
    Once(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

/// Starts the call to `path` with `metadata` as its gRPC metadata and
/// returns the answer's messages.
pub(super) async fn start(
    mut grpc: GrpcRouter,
    path: &'static str,
    metadata: HeaderMap,
    outbound: Outbound,
) -> Replies {
    let body: http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> = match outbound {
        Outbound::Once(msg) => http_body_util::Full::new(msg).boxed_unsync(),
        Outbound::Stream(rx) => http_body_util::StreamBody::new(
            ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
        )
        .boxed_unsync(),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_static(path);
    *req.version_mut() = http::Version::HTTP_2;
    let headers = req.headers_mut();
    *headers = metadata;
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let Ok(resp) = grpc.call(req).await;
    let (parts, body) = resp.into_parts();
    Replies {
        // A trailers-only answer carries its status in the headers.
        early: tonic::Status::from_header_map(&parts.headers),
        body,
        buf: BytesMut::new(),
        done: false,
    }
}

/// The answer's messages, then its status.
pub(super) struct Replies {
    early: Option<tonic::Status>,
    body: tonic::body::Body,
    buf: BytesMut,
    done: bool,
}

impl Replies {
    /// The next message; `Ok(None)` once the call ended with OK, `Err` with
    /// the status it ended with otherwise.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.done {
            return Ok(None);
        }
        if let Some(s) = self.early.take() {
            self.done = true;
            return finish(s);
        }
        loop {
            if let Some(msg) = self.split_message()? {
                return Ok(Some(msg));
            }
            match self.body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(f) => {
                        self.done = true;
                        let status = f
                            .trailers_ref()
                            .and_then(tonic::Status::from_header_map)
                            .unwrap_or_else(|| tonic::Status::internal("missing grpc-status"));
                        return finish(status);
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Err(tonic::Status::internal(e.to_string()));
                }
                None => {
                    self.done = true;
                    return Err(tonic::Status::internal("stream ended without a status"));
                }
            }
        }
    }

    fn split_message(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(tonic::Status::internal("compressed gRPC message"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if self.buf.len() - PREFIX_LEN < len {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

fn finish(status: tonic::Status) -> Result<Option<Bytes>, tonic::Status> {
    if status.code() == tonic::Code::Ok {
        Ok(None)
    } else {
        Err(status)
    }
}
