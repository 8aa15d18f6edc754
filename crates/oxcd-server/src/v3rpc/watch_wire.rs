//! The Watch RPC on the wire: responses whose events are spliced in
//! already encoded, and the gRPC glue that serves them.
//!
//! A write watched by many watchers is sent in as many `WatchResponse`s.
//! Encoding each of them whole re-encodes the same `Event` (key, value,
//! revisions) once per watcher; at 1 000 watchers of one key that was a
//! quarter of the server's CPU. Here an event is encoded once
//! ([`WatchEvent::encoded`]) and every response that carries it copies
//! those bytes after its own few header fields. The bytes on the wire are
//! exactly what encoding the whole message would give: `events` (field 11)
//! is the last field of `WatchResponse`, and prost writes fields in order.
//!
//! tonic's generated `WatchServer` only takes `WatchResponse` items, so
//! the service is mounted here with its own codec; requests are decoded
//! by prost as before, and limits, status codes and compression refusal
//! are tonic's.

use super::watch::{Session, WatchService};
use super::GrpcFuture;
use bytes::BufMut;
use oxcd_api::etcdserverpb::{WatchRequest, WatchResponse};
use oxcd_mvcc::WatchEvent;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use std::sync::Arc;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstDecoder;

/// The field number of `WatchResponse.events`.
const EVENTS_FIELD: u32 = 11;

/// The encoder's buffer: large enough that the 32 KiB tonic gathers before
/// yielding a chunk rarely needs the buffer to grow (each growth is a
/// reallocation and a copy).
const ENCODE_BUFFER: usize = 64 * 1024;
const YIELD_THRESHOLD: usize = 32 * 1024;

/// One response of a Watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchOut {
    /// A response encoded as it is (creates, cancels, progress, and events
    /// that were changed for their watcher: `prev_kv`, fragments).
    Message(WatchResponse),
    /// `head` (which has no events) followed by `events`, each spliced in
    /// from its shared encoding.
    Events {
        head: WatchResponse,
        events: Vec<Arc<WatchEvent>>,
    },
}

impl WatchOut {
    /// The message as a plain `WatchResponse` (tests, and callers that
    /// want the structure rather than the bytes).
    pub fn into_response(self) -> WatchResponse {
        match self {
            WatchOut::Message(m) => m,
            WatchOut::Events { mut head, events } => {
                head.events = events.iter().map(|e| (**e).clone()).collect();
                head
            }
        }
    }

    /// Writes the message's protobuf encoding to `dst`.
    fn encode_to(&self, dst: &mut impl BufMut) {
        match self {
            WatchOut::Message(m) => m.encode_raw(dst),
            WatchOut::Events { head, events } => {
                head.encode_raw(dst);
                for e in events {
                    let bytes = e.encoded();
                    encode_key(EVENTS_FIELD, WireType::LengthDelimited, dst);
                    encode_varint(bytes.len() as u64, dst);
                    dst.put_slice(bytes);
                }
            }
        }
    }

    /// The length of [`WatchOut::encode_to`]'s output.
    fn encoded_len(&self) -> usize {
        match self {
            WatchOut::Message(m) => m.encoded_len(),
            WatchOut::Events { head, events } => {
                let key = encoded_len_varint(u64::from(EVENTS_FIELD << 3));
                head.encoded_len()
                    + events
                        .iter()
                        .map(|e| {
                            let n = e.encoded().len();
                            key + encoded_len_varint(n as u64) + n
                        })
                        .sum::<usize>()
            }
        }
    }
}

/// Encodes [`WatchOut`]s; decodes `WatchRequest`s with prost, as before.
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchCodec;

/// The encoding half of [`WatchCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WatchEncoder;

impl Encoder for WatchEncoder {
    type Item = WatchOut;
    type Error = Status;

    fn encode(&mut self, item: WatchOut, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode_to(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

impl Codec for WatchCodec {
    type Encode = WatchOut;
    type Decode = WatchRequest;
    type Encoder = WatchEncoder;
    type Decoder = ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> WatchEncoder {
        WatchEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<WatchRequest> {
        ProstDecoder::default()
    }
}

/// The `etcdserverpb.Watch` service, mounted with [`WatchCodec`].
#[derive(Clone)]
pub struct WatchServer {
    svc: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchServer {
    /// Serves `svc`, refusing request messages above
    /// `max_decoding_message_size` as tonic does.
    pub fn new(svc: WatchService, max_decoding_message_size: usize) -> Self {
        WatchServer {
            svc: Arc::new(svc),
            max_decoding_message_size,
        }
    }

    /// Serves one call to the Watch service.
    pub fn call<B>(&self, req: http::Request<B>) -> GrpcFuture
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            let status = crate::serve::unknown_method(req.uri().path());
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let method = WatchMethod(self.svc.clone());
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec)
                .apply_max_message_size_config(Some(max), Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

struct WatchMethod(Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = WatchOut;
    type ResponseStream = Session;
    type Future = tonic::codegen::BoxFuture<Response<Session>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { Ok(Response::new(svc.open(request).await)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::etcdserverpb::ResponseHeader;
    use oxcd_api::mvccpb::{Event, KeyValue};

    fn event(rev: i64, value: &[u8]) -> Arc<WatchEvent> {
        Arc::new(WatchEvent::new(Event {
            kv: Some(KeyValue {
                key: b"key".to_vec().into(),
                value: value.to_vec().into(),
                create_revision: 2,
                mod_revision: rev,
                version: 3,
                lease: 0,
            }),
            ..Default::default()
        }))
    }

    /// Spliced events give the very bytes prost gives for the whole
    /// message, so any client decodes them as before.
    #[test]
    fn spliced_events_encode_like_the_whole_message() {
        let head = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 7,
                member_id: 9,
                revision: 12,
                raft_term: 3,
            }),
            watch_id: 4,
            ..Default::default()
        };
        for events in [
            vec![],
            vec![event(12, b"v")],
            vec![event(11, &[0u8; 300]), event(12, b"")],
        ] {
            let out = WatchOut::Events {
                head: head.clone(),
                events,
            };
            let mut spliced = Vec::new();
            out.encode_to(&mut spliced);
            assert_eq!(spliced.len(), out.encoded_len());
            let whole = out.clone().into_response().encode_to_vec();
            assert_eq!(spliced, whole);
            assert_eq!(
                WatchResponse::decode(&spliced[..]).unwrap(),
                out.into_response()
            );
        }
    }
}
