//! A lean path for the hot unary KV calls (Range, Put, DeleteRange, Txn).
//!
//! tonic's generated server runs each unary call through its streaming
//! machinery: a `Streaming` decoder with its own buffer, an encoder body
//! that polls a one-item stream, compression negotiation, and several
//! boxed futures. For a put at 1000 clients that was about a fifth of the
//! server's CPU, as much as the whole raft thread. A unary call is one
//! length-prefixed message each way, so this module reads it straight
//! from the HTTP/2 body (usually one DATA frame, sliced without a copy),
//! calls the same [`KvService`] method tonic would, and answers with one
//! DATA frame and the `grpc-status` trailer.
//!
//! The wire contract is gRPC's and matches what grpc-go (etcd) answers:
//! errors are trailers-only responses, an oversized message gets
//! ResourceExhausted `grpc: received message larger than max (N vs. M)`.
//! Calls with a `grpc-encoding` (compressed messages) keep going through
//! tonic, which knows how to refuse them.

use super::kv::KvService;
use super::GrpcFuture;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use oxcd_api::etcdserverpb::kv_server::Kv;
use oxcd_io::Gather;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX_LEN: usize = 5;

/// The KV methods served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
}

impl KvMethod {
    /// The method a request path names, if it is served here.
    pub(crate) fn from_path(path: &str) -> Option<KvMethod> {
        match path {
            "/etcdserverpb.KV/Range" => Some(KvMethod::Range),
            "/etcdserverpb.KV/Put" => Some(KvMethod::Put),
            "/etcdserverpb.KV/DeleteRange" => Some(KvMethod::DeleteRange),
            "/etcdserverpb.KV/Txn" => Some(KvMethod::Txn),
            _ => None,
        }
    }
}

/// Whether the call may take this path: only uncompressed messages.
pub(crate) fn takes_fast_path<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get("grpc-encoding")
        .is_none_or(|v| v.as_bytes() == b"identity")
}

/// Serves one unary KV call; `max` is the largest request message taken.
pub(crate) fn serve<B>(
    svc: Arc<KvService>,
    method: KvMethod,
    req: http::Request<B>,
    max: usize,
    metrics: Option<super::metrics::CallMetrics>,
) -> GrpcFuture
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let mut received = 0;
        let answer = match read_message(body, max).await {
            Ok(msg) => {
                received = PREFIX_LEN + msg.len();
                let meta = MetadataMap::from_headers(parts.headers);
                let ext = parts.extensions;
                match method {
                    KvMethod::Range => call(msg, meta, ext, |r| svc.range(r)).await,
                    KvMethod::Put => call(msg, meta, ext, |r| svc.put(r)).await,
                    KvMethod::DeleteRange => call(msg, meta, ext, |r| svc.delete_range(r)).await,
                    KvMethod::Txn => call(msg, meta, ext, |r| svc.txn(r)).await,
                }
            }
            Err(status) => Err(status),
        };
        // Counted here, where the status is known, rather than by
        // wrapping the body (this is the hot path).
        Ok(match answer {
            Ok((meta, frame)) => {
                if let Some(m) = metrics {
                    m.finish_unary(0, received, frame.len());
                }
                ok_response(meta, frame)
            }
            Err(status) => {
                if let Some(m) = metrics {
                    m.finish_unary(status.code() as usize, received, 0);
                }
                status.into_http()
            }
        })
    })
}

/// Decodes the request, runs the handler, encodes its answer as one
/// length-prefixed frame.
async fn call<M, R, F, Fut>(
    msg: Bytes,
    meta: MetadataMap,
    ext: http::Extensions,
    handler: F,
) -> Result<(MetadataMap, Bytes), Status>
where
    M: prost::Message + Default,
    R: prost::Message,
    F: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let m = M::decode(msg).map_err(|e| Status::internal(e.to_string()))?;
    let (meta, resp, _) = handler(tonic::Request::from_parts(meta, ext, m))
        .await?
        .into_parts();
    Ok((meta, encode(&resp)?))
}

/// `resp` behind the gRPC prefix.
fn encode<R: prost::Message>(resp: &R) -> Result<Bytes, Status> {
    let len = resp.encoded_len();
    let prefix = u32::try_from(len)
        .ok()
        .filter(|l| *l <= i32::MAX as u32)
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "grpc: trying to send message larger than max ({len} vs. {})",
                i32::MAX
            ))
        })?;
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    resp.encode(&mut buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(buf.freeze())
}

/// Reads the one request message from the body, without its prefix.
/// Stops at the end of the message: a unary client sends nothing after it.
async fn read_message<B>(body: B, max: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    let mut body = std::pin::pin!(body);
    let mut got = Gather::default();
    loop {
        let have = got.as_slice();
        if let Some(len) = message_len(have, max)? {
            if have.len() >= PREFIX_LEN + len {
                let mut all = got.into_bytes();
                all.advance(PREFIX_LEN);
                let extra = all.len() > len;
                all.truncate(len);
                // Like grpc-go and tonic, read the request to its end: a
                // stream left open would be reset once the answer is sent.
                if extra || !at_end(body.as_mut()).await? {
                    return Err(Status::internal(
                        "grpc: client streaming protocol violation: get <nil>, want <EOF>",
                    ));
                }
                return Ok(all);
            }
        }
        match body.frame().await {
            None if have.is_empty() => return Err(Status::internal("Missing request message.")),
            None => return Err(Status::internal("grpc: unexpected end of request message")),
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            Some(Ok(frame)) => {
                // Trailers from a client are skipped: nothing more comes.
                if let Ok(data) = frame.into_data() {
                    got.push(data);
                }
            }
        }
    }
}

/// Reads what follows the message; false if that is more data.
async fn at_end<B>(mut body: Pin<&mut B>) -> Result<bool, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    if body.is_end_stream() {
        return Ok(true);
    }
    loop {
        match body.frame().await {
            None => return Ok(true),
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(_) => return Ok(false),
                // Trailers end the request.
                Err(_) => return Ok(true),
            },
        }
    }
}

/// The message length the prefix announces, once the prefix is there.
fn message_len(have: &[u8], max: usize) -> Result<Option<usize>, Status> {
    if have.len() < PREFIX_LEN {
        return Ok(None);
    }
    match have[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "grpc: compressed flag set with identity or empty encoding",
            ))
        }
        _ => return Err(Status::internal("grpc: received unexpected payload format")),
    }
    let len = u32::from_be_bytes([have[1], have[2], have[3], have[4]]) as usize;
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max})"
        )));
    }
    Ok(Some(len))
}

fn ok_response(meta: MetadataMap, frame: Bytes) -> http::Response<tonic::body::Body> {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut resp = http::Response::new(tonic::body::Body::new(UnaryBody {
        data: Some(frame),
        trailers: Some(trailers),
    }));
    let mut headers = meta.into_headers();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    *resp.headers_mut() = headers;
    resp
}

/// One DATA frame, then the trailers.
struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::etcdserverpb::PutRequest;
    use prost::Message as _;

    fn framed(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    /// A body that hands out the given chunks one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&[u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
    }

    #[tokio::test]
    async fn message_in_one_frame_or_split_anywhere() {
        let req = PutRequest {
            key: Bytes::from_static(b"foo"),
            value: Bytes::from(vec![7u8; 300]),
            ..Default::default()
        }
        .encode_to_vec();
        let wire = framed(&req);
        let whole = read_message(chunks(&[&wire]), 1 << 20).await.unwrap();
        assert_eq!(&whole[..], &req[..]);
        // A second message is a protocol violation.
        let two = [&wire[..], &wire[..]].concat();
        let e = read_message(chunks(&[&two]), 1 << 20).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = read_message(chunks(&[&wire, b"x"]), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        for cut in [1, 4, 5, 6, 100, wire.len() - 1] {
            let (a, b) = wire.split_at(cut);
            let got = read_message(chunks(&[a, &[], b]), 1 << 20).await.unwrap();
            assert_eq!(&got[..], &req[..], "split at {cut}");
        }
    }

    #[tokio::test]
    async fn bad_messages_get_grpc_errors() {
        let e = read_message(chunks(&[]), 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = read_message(chunks(&[&[0, 0, 0]]), 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = read_message(chunks(&[&framed(&[1; 10])[..8]]), 100)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = read_message(chunks(&[&framed(&[1; 101])]), 100)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "grpc: received message larger than max (101 vs. 100)"
        );
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        let e = read_message(chunks(&[&compressed]), 100).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        let empty = read_message(chunks(&[&framed(b"")]), 100).await.unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn answer_is_prefixed_frame() {
        let r = PutRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        };
        let f = encode(&r).unwrap();
        assert_eq!(&f[..], &framed(&r.encode_to_vec())[..]);
    }

    mod fuzz {
        use super::*;
        use crate::damage::{damaged, damages};
        use oxcd_api::etcdserverpb::{
            compare, request_op, Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest,
        };
        use proptest::prelude::*;

        fn read(chunks: &[Vec<u8>], max: usize) -> Result<Bytes, Status> {
            let body = Chunks(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect());
            futures::executor::block_on(read_message(body, max))
        }

        /// Decodes `msg` as each of the four requests, as `call` does.
        fn decode_all(msg: &[u8]) {
            let _ = RangeRequest::decode(msg);
            let _ = PutRequest::decode(msg);
            let _ = DeleteRangeRequest::decode(msg);
            let _ = TxnRequest::decode(msg);
        }

        /// A Txn holding `depth` levels of nested Txns.
        fn nested_txn(depth: usize) -> TxnRequest {
            let mut t = TxnRequest::default();
            for _ in 0..depth {
                t = TxnRequest {
                    compare: vec![Compare {
                        key: b"k".to_vec().into(),
                        target_union: Some(compare::TargetUnion::Version(1)),
                        ..Compare::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestTxn(t)),
                    }],
                    failure: Vec::new(),
                };
            }
            t
        }

        fn request() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                (
                    prop::collection::vec(any::<u8>(), 0..16),
                    any::<i64>(),
                    any::<bool>()
                )
                    .prop_map(|(key, lease, prev_kv)| PutRequest {
                        key: key.into(),
                        value: vec![7; 40].into(),
                        lease,
                        prev_kv,
                        ..PutRequest::default()
                    }
                    .encode_to_vec()),
                (any::<i64>(), any::<i64>()).prop_map(|(limit, revision)| RangeRequest {
                    key: b"a".to_vec().into(),
                    range_end: b"\0".to_vec().into(),
                    limit,
                    revision,
                    ..RangeRequest::default()
                }
                .encode_to_vec()),
                (0usize..4).prop_map(|d| nested_txn(d).encode_to_vec()),
            ]
        }

        /// The wire bytes of `msg` behind its prefix.
        fn framed_with(flag: u8, len: u32, msg: &[u8]) -> Vec<u8> {
            let mut v = vec![flag];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(msg);
            v
        }

        /// Cuts `bytes` at the given points.
        fn cut(bytes: &[u8], at: &[prop::sample::Index]) -> Vec<Vec<u8>> {
            let mut points: Vec<usize> = at.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.extend([0, bytes.len()]);
            points.sort_unstable();
            points
                .windows(2)
                .map(|w| bytes[w[0]..w[1]].to_vec())
                .collect()
        }

        /// Nesting past what prost takes (100 messages: 50 Txns, each a
        /// TxnRequest in a RequestOp) is an error, not a stack overflow,
        /// on a test thread's 2 MiB stack.
        #[test]
        fn deeply_nested_txns_are_refused() {
            let deep = nested_txn(150).encode_to_vec();
            assert!(TxnRequest::decode(deep.as_slice()).is_err());
            let ok = nested_txn(45).encode_to_vec();
            assert!(TxnRequest::decode(ok.as_slice()).is_ok());
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

            /// Any bytes in any chunks: a message within the limit, or a
            /// gRPC error.
            #[test]
            fn arbitrary_bodies_read_or_refuse(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
                max in 0usize..200,
            ) {
                match read(&chunks, max) {
                    Ok(msg) => {
                        prop_assert!(msg.len() <= max);
                        decode_all(&msg);
                    }
                    Err(s) => prop_assert!(
                        matches!(s.code(), tonic::Code::Internal | tonic::Code::ResourceExhausted),
                        "{s:?}"
                    ),
                }
            }

            /// A request framed as a client sends it, cut anywhere, maybe
            /// damaged: read back whole, or refused; what is read decodes
            /// or fails without a panic.
            #[test]
            fn framed_requests_read_or_refuse(
                req in request(),
                at in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                damage in prop::option::of(damages(3)),
            ) {
                let wire = framed(&req);
                prop_assert_eq!(read(&cut(&wire, &at), 1 << 20).unwrap(), Bytes::from(req.clone()));
                if let Some(d) = damage {
                    let bad = damaged(wire, &d);
                    if let Ok(msg) = read(&cut(&bad, &at), 1 << 20) {
                        decode_all(&msg);
                    }
                    decode_all(&damaged(req, &d));
                }
            }

            /// A declared length past the limit is refused from the prefix
            /// alone, before the body is waited for or buffered.
            #[test]
            fn a_length_past_the_limit_is_refused_at_once(
                len in 101u32..,
                body in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let wire = framed_with(0, len, &body);
                let e = read(&[wire[..PREFIX_LEN].to_vec(), body], 100).unwrap_err();
                prop_assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                prop_assert_eq!(
                    e.message(),
                    format!("grpc: received message larger than max ({len} vs. 100)")
                );
            }
        }
    }
}
