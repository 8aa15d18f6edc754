//! One Watch stream: a bidirectional call fed from an mpsc sender, with
//! watchers created one at a time (create, then wait for `created`).

use std::time::{Duration, Instant};

use crate::h2chan::H2Channel;
use bytes::Bytes;
use oxcd_api::etcdserverpb::watch_client::WatchClient;
use oxcd_api::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// An open Watch stream. Dropping it closes the request side, which ends
/// the call.
pub(crate) struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    inbound: Streaming<WatchResponse>,
}

/// What a watcher watches: a key, and the end of its range (empty for the
/// key alone).
pub(crate) type Watched = (Bytes, Bytes);

fn create_request((key, range_end): Watched) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key,
                range_end,
                ..Default::default()
            },
        )),
    }
}

/// The range end of a prefix watch on `prefix` (clientv3 `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and what follows
/// dropped; `"\0"` (every key from it on) if every byte is 0xff.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

fn closed() -> Status {
    Status::unavailable("watch stream closed")
}

impl WatchStream {
    /// Opens a stream whose first watcher watches `key`, and returns once
    /// that watcher is created, with the time it took.
    ///
    /// # Errors
    /// The call's status (`Unimplemented` when the server lacks Watch), a
    /// cancelled create, or the stream closing first.
    pub(crate) async fn open(
        channel: H2Channel,
        key: Watched,
    ) -> Result<(WatchStream, Duration), Status> {
        let (tx, rx) = mpsc::channel(16);
        let t0 = Instant::now();
        // Queue the first create before the call: a server may hold back its
        // response headers until the first message arrives.
        tx.send(create_request(key)).await.map_err(|_| closed())?;
        let inbound = WatchClient::new(channel)
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut stream = WatchStream { tx, inbound };
        stream.await_created().await?;
        Ok((stream, t0.elapsed()))
    }

    /// Creates one more watcher on `key` and returns the time until the
    /// server confirmed it.
    ///
    /// # Errors
    /// As [`WatchStream::open`].
    pub(crate) async fn create(&mut self, key: Watched) -> Result<Duration, Status> {
        let t0 = Instant::now();
        self.tx
            .send(create_request(key))
            .await
            .map_err(|_| closed())?;
        self.await_created().await?;
        Ok(t0.elapsed())
    }

    /// Skips responses until the next `created` one. Events that arrive
    /// meanwhile are dropped: workloads create every watcher before writing.
    async fn await_created(&mut self) -> Result<(), Status> {
        loop {
            let resp = self.inbound.message().await?.ok_or_else(closed)?;
            if resp.canceled {
                return Err(Status::failed_precondition(format!(
                    "watch canceled: {}",
                    resp.cancel_reason
                )));
            }
            if resp.created {
                return Ok(());
            }
        }
    }

    /// The next response, or `None` once the server ends the stream.
    ///
    /// # Errors
    /// The stream's status. Cancel-safe (tonic's `Streaming::message` is).
    pub(crate) async fn next(&mut self) -> Result<Option<WatchResponse>, Status> {
        self.inbound.message().await
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends_as_clientv3_computes_them() {
        assert_eq!(&prefix_end(b"abc")[..], b"abd");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff\xff")[..], b"\0");
    }
}
