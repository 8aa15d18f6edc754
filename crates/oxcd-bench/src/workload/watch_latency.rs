//! `watch-latency`: etcd benchmark's `watch_latency.go`. `--watchers`
//! watchers, spread round-robin over `--streams` streams, all watch one
//! key; `--total` puts on it run one at a time at `--put-rate`. For each
//! put, the latency of every watcher is the time from the put's
//! acknowledgement to that watcher's receipt of the event (the event may
//! beat the acknowledgement; that counts as the 1 µs floor).
//!
//! The summary counts events (total = puts × watchers); a watcher that has
//! not seen a put's event [`EVENT_WAIT`] after the ack counts one error.
//! Put latencies, and etcd's own measure (put *sent* to event received),
//! are in `extra`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use oxcd_api::etcdserverpb::PutRequest;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::watch_stream::WatchStream;
use super::{at_least, Pacer};
use crate::cli::WatchLatencyOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::keys::{encode_key, random_value};
use crate::progress::Progress;
use crate::report::{Recorder, Summary};

/// How long each watcher may take to see a put's event after the ack.
pub const EVENT_WAIT: Duration = Duration::from_secs(5);

/// (mod revision of the event, when a watcher received it).
type Seen = (i64, Instant);

/// What the put loop measures.
struct Measured {
    /// Put acknowledged → event received, per watcher (the summary).
    events: Recorder,
    /// Put sent → event received, per watcher (etcd's `watch-latency`).
    from_send: Recorder,
    /// Put round trips.
    puts: Recorder,
    elapsed: Duration,
}

/// Runs the watch-latency benchmark until done or `deadline`.
///
/// # Errors
/// Invalid sizes; [`BenchError::Unimplemented`] when the server lacks the
/// Watch or KV service; a stream that cannot be opened.
pub async fn run(
    conns: &Conns,
    opts: &WatchLatencyOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    at_least("--watchers", opts.watchers, 1)?;
    at_least("--streams", opts.streams, 1)?;
    at_least("--key-size", opts.key_size, 1)?;
    let key = encode_key(0, opts.key_size);
    let streams = opts.streams.min(opts.watchers);
    let mut opened = JoinSet::new();
    for s in 0..streams {
        let count = opts.watchers / streams + usize::from(s < opts.watchers % streams);
        let (channel, key) = (conns.channel_for(s), key.clone());
        opened.spawn(async move {
            let (mut stream, _) = WatchStream::open(channel, (key.clone(), Bytes::new())).await?;
            for _ in 1..count {
                stream.create((key.clone(), Bytes::new())).await?;
            }
            Ok::<_, tonic::Status>(stream)
        });
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let cancel = CancellationToken::new();
    let mut readers = JoinSet::new();
    let opening = tokio::time::timeout_at(deadline.into(), async {
        while let Some(done) = opened.join_next().await {
            let stream = done
                .map_err(|_| BenchError::Setup {
                    what: "open watch stream",
                    status: tonic::Status::internal("task panicked"),
                })?
                .map_err(|s| BenchError::setup("Watch", "create watchers", s))?;
            readers.spawn(forward_events(stream, tx.clone(), cancel.clone()));
        }
        Ok::<_, BenchError>(())
    });
    opening
        .await
        .map_err(|_| BenchError::Deadline("watcher creation"))??;
    drop(tx);

    let m = put_loop(conns, opts, &mut rx, deadline).await?;
    cancel.cancel();
    readers.shutdown().await;
    let total = opts.total.saturating_mul(opts.watchers as u64);
    Ok(Summary::new("watch-latency", total, m.elapsed, &m.events)
        .with_extra("watchers", opts.watchers as u64)
        .with_extra("puts_ok", m.puts.ok_count())
        .with_extra("put_p50_ms", m.puts.latency().p50_ms)
        .with_extra("put_p99_ms", m.puts.latency().p99_ms)
        .with_extra("from_send_p50_ms", m.from_send.latency().p50_ms)
        .with_extra("from_send_p99_ms", m.from_send.latency().p99_ms))
}

/// Forwards the mod revision of every event on `stream` until cancelled or
/// the stream ends.
async fn forward_events(
    mut stream: WatchStream,
    tx: mpsc::UnboundedSender<Seen>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            resp = stream.next() => {
                let Ok(Some(resp)) = resp else { return };
                let at = Instant::now();
                for ev in resp.events {
                    let rev = ev.kv.map_or(0, |kv| kv.mod_revision);
                    if tx.send((rev, at)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The puts, one at a time, each followed by collecting its events.
async fn put_loop(
    conns: &Conns,
    opts: &WatchLatencyOpts,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    deadline: Instant,
) -> Result<Measured, BenchError> {
    let kv = conns.kv_for(0);
    let req = PutRequest {
        key: encode_key(0, opts.key_size),
        value: random_value(opts.val_size),
        ..Default::default()
    };
    let (mut events, mut from_send, mut puts) = (Recorder::new(), Recorder::new(), Recorder::new());
    let pacer = Pacer::new(opts.put_rate);
    let progress = Progress::new(opts.total, "watch-latency");
    let started = Instant::now();
    for i in 0..opts.total {
        if Instant::now() >= deadline {
            break;
        }
        pacer.wait(i).await;
        let t0 = Instant::now();
        let rev = match tokio::time::timeout_at(deadline.into(), kv.put(&req)).await {
            Ok(Ok(resp)) => resp.header.map_or(0, |h| h.revision),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                return Err(BenchError::setup("KV", "put", status));
            }
            Ok(Err(status)) => {
                puts.status(&status);
                events.failure("put failed");
                continue;
            }
            Err(_) => {
                puts.failure("deadline");
                break;
            }
        };
        let acked = Instant::now();
        puts.ok(acked - t0);
        let until = deadline.min(acked + EVENT_WAIT);
        let times = Times {
            sent: t0,
            acked,
            until,
        };
        collect_events(rx, rev, opts.watchers, times, &mut events, &mut from_send).await;
        progress.inc();
    }
    progress.finish();
    Ok(Measured {
        events,
        from_send,
        puts,
        elapsed: started.elapsed(),
    })
}

/// When one put was sent and acknowledged, and how long its events may take.
#[derive(Clone, Copy)]
struct Times {
    sent: Instant,
    acked: Instant,
    until: Instant,
}

/// Takes `want` events of revision `rev` off `rx`, recording each one's
/// delay after the ack (`rec`) and after the send (`from_send`); events of
/// older revisions (late ones of a put already counted as missing) are
/// skipped.
async fn collect_events(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    rev: i64,
    want: usize,
    times: Times,
    rec: &mut Recorder,
    from_send: &mut Recorder,
) {
    let mut got = 0;
    while got < want {
        match tokio::time::timeout_at(times.until.into(), rx.recv()).await {
            Ok(Some((r, at))) if r == rev => {
                rec.ok(at.saturating_duration_since(times.acked));
                from_send.ok(at.saturating_duration_since(times.sent));
                got += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                for _ in got..want {
                    rec.failure("event missing");
                }
                return;
            }
        }
    }
}
