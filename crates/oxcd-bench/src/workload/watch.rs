//! `watch`: etcd benchmark's `watch.go`. Phase 1 opens `--streams` streams
//! and creates `--watch-per-stream` watchers on each (watcher w watches key
//! w % `--watched-key-total`), timing each creation. Phase 2 writes
//! `--put-total` puts on the watched keys at `--put-rate` and waits (at most
//! [`EVENT_GRACE`] after the last put) for every event to arrive.
//!
//! The summary's latencies are watcher creation times; the put phase and
//! the event counts are in `extra`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oxcd_api::etcdserverpb::PutRequest;
use tokio::task::JoinSet;

use super::watch_stream::WatchStream;
use super::{at_least, drive, Plan};
use crate::cli::WatchOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::keys::{encode_key, random_value};
use crate::progress::Progress;
use crate::report::{Recorder, Summary};

/// How long to wait for outstanding events after the last put.
pub const EVENT_GRACE: Duration = Duration::from_secs(10);

/// A stream with the key index of each watcher created on it.
type Created = (Recorder, Option<(WatchStream, Vec<u64>)>);

/// Runs the watch benchmark until done or `deadline`.
///
/// # Errors
/// Invalid sizes, or [`BenchError::Unimplemented`] when the server lacks
/// the Watch service.
pub async fn run(
    conns: &Conns,
    opts: &WatchOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    at_least("--streams", opts.streams, 1)?;
    at_least("--watch-per-stream", opts.watch_per_stream, 1)?;
    at_least("--watched-key-total", opts.watched_key_total, 1)?;
    at_least("--key-size", opts.key_size, 1)?;
    let keys: Arc<Vec<Bytes>> = Arc::new(
        (0..opts.watched_key_total)
            .map(|n| encode_key(n, opts.key_size))
            .collect(),
    );

    let started = Instant::now();
    let (streams, create_rec, watchers_on) = create_watchers(conns, opts, &keys, deadline).await;
    let create_time = started.elapsed();
    if create_rec.saw_unimplemented() {
        return Err(BenchError::Unimplemented {
            service: "Watch",
            message: "watch stream refused".into(),
        });
    }

    let received = Arc::new(AtomicU64::new(0));
    // Responses, to tell how a server packs events (one per revision and
    // watcher, or several revisions of a watcher that fell behind).
    let responses = Arc::new(AtomicU64::new(0));
    // The counting tasks only count: no wake-up or select per response,
    // so that the generator's cost per response (which a server that
    // packs fewer events per response pays more of) stays small. They are
    // aborted once the run ends.
    let mut counters = JoinSet::new();
    for mut stream in streams {
        let (received, responses) = (received.clone(), responses.clone());
        counters.spawn(async move {
            while let Ok(Some(resp)) = stream.next().await {
                received.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
                responses.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let expected = Arc::new(AtomicU64::new(0));
    let puts_started = Instant::now();
    let puts = put_phase(conns, opts, keys, watchers_on, expected.clone(), deadline).await;
    let grace = deadline.min(Instant::now() + EVENT_GRACE);
    // Checked every millisecond: at most that much is added to a run of
    // seconds.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while received.load(Ordering::Relaxed) < expected.load(Ordering::Relaxed)
        && Instant::now() < grace
    {
        tick.tick().await;
    }
    let events_time = puts_started.elapsed().as_secs_f64();
    counters.shutdown().await;

    let got = received.load(Ordering::Relaxed);
    let want = expected.load(Ordering::Relaxed);
    let watchers = (opts.streams * opts.watch_per_stream) as u64;
    Ok(Summary::new("watch", watchers, create_time, &create_rec)
        .with_extra("puts_ok", puts.ok)
        .with_extra("put_errors", puts.errors)
        .with_extra("put_ops_per_sec", puts.ops_per_sec)
        .with_extra("put_p99_ms", puts.latency.p99_ms)
        .with_extra("events_expected", want)
        .with_extra("events_received", got)
        .with_extra("responses_received", responses.load(Ordering::Relaxed))
        .with_extra(
            "events_per_sec",
            if events_time > 0.0 {
                got as f64 / events_time
            } else {
                0.0
            },
        ))
}

/// Phase 1: every stream in parallel, its watchers one after another.
/// Returns the open streams, the creation latencies, and how many watchers
/// watch each key.
async fn create_watchers(
    conns: &Conns,
    opts: &WatchOpts,
    keys: &Arc<Vec<Bytes>>,
    deadline: Instant,
) -> (Vec<WatchStream>, Recorder, Vec<u64>) {
    let per_stream = opts.watch_per_stream;
    let progress = Progress::new((opts.streams * per_stream) as u64, "watchers");
    let mut tasks: JoinSet<Created> = JoinSet::new();
    for s in 0..opts.streams {
        let (channel, keys_for, progress) = (conns.channel_for(s), keys.clone(), progress.clone());
        let n_keys = keys.len() as u64;
        let key_of = move |j: usize| ((s * per_stream + j) as u64) % n_keys;
        let prefix = opts.prefix;
        let watched = move |k: u64| {
            let key: Bytes = keys_for[k as usize].clone();
            let end = if prefix {
                super::watch_stream::prefix_end(&key)
            } else {
                Bytes::new()
            };
            (key, end)
        };
        tasks.spawn(async move {
            let mut rec = Recorder::new();
            let work = async {
                let first = key_of(0);
                let (mut stream, took) = WatchStream::open(channel, watched(first)).await?;
                rec.ok(took);
                progress.inc();
                let mut created = vec![first];
                for j in 1..per_stream {
                    let k = key_of(j);
                    match stream.create(watched(k)).await {
                        Ok(took) => {
                            rec.ok(took);
                            created.push(k);
                        }
                        Err(status) => rec.status(&status),
                    }
                    progress.inc();
                }
                Ok::<_, tonic::Status>((stream, created))
            };
            match tokio::time::timeout_at(deadline.into(), work).await {
                Ok(Ok(done)) => (rec, Some(done)),
                Ok(Err(status)) => {
                    rec.status(&status);
                    (rec, None)
                }
                Err(_) => {
                    rec.failure("deadline");
                    (rec, None)
                }
            }
        });
    }
    let mut streams = Vec::new();
    let mut all = Recorder::new();
    let mut watchers_on = vec![0u64; keys.len()];
    while let Some(done) = tasks.join_next().await {
        let Ok((rec, open)) = done else {
            all.failure("worker panicked");
            continue;
        };
        all.merge(&rec);
        if let Some((stream, created)) = open {
            for k in created {
                watchers_on[k as usize] += 1;
            }
            streams.push(stream);
        }
    }
    progress.finish();
    (streams, all, watchers_on)
}

/// Phase 2: put i writes key i % keys; each acknowledged put adds the
/// number of watchers on its key to `expected`.
async fn put_phase(
    conns: &Conns,
    opts: &WatchOpts,
    keys: Arc<Vec<Bytes>>,
    watchers_on: Vec<u64>,
    expected: Arc<AtomicU64>,
    deadline: Instant,
) -> Summary {
    let clients = conns.kv_clients();
    let value = random_value(opts.val_size);
    let plan = Plan {
        command: "watch-put",
        clients: clients.len(),
        total: opts.put_total,
        rate: opts.put_rate,
        deadline,
        until: None,
    };
    drive(plan, move |client, i| {
        let kv = clients[client].clone();
        let k = (i % keys.len() as u64) as usize;
        let req = PutRequest {
            key: keys[k].clone(),
            value: value.clone(),
            ..Default::default()
        };
        let (fan_out, expected) = (watchers_on[k], expected.clone());
        async move {
            kv.put(&req).await?;
            expected.fetch_add(fan_out, Ordering::Relaxed);
            Ok(())
        }
    })
    .await
}
