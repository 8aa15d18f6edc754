//! A second watch client for `bench/grpc-proxy.sh`, on the third-party
//! `etcd-client` crate (tonic channels, its own watch stream handling), so
//! that a watch result does not rest on oxcd-bench alone.
//!
//! ```text
//! etcd_client_watch WATCH_ENDPOINT PUT_ENDPOINT WATCHERS STREAMS KEYS PUTS [PUT_CLIENTS]
//! ```
//! Opens STREAMS watch streams over max(1, STREAMS / 10) connections to
//! WATCH_ENDPOINT and WATCHERS watchers on them: watcher w is on stream
//! w / ceil(WATCHERS / STREAMS) and watches key w % KEYS (keys
//! `ecw/000000`…), so with 10 000 watchers, 100 streams and 100 keys every
//! stream watches every key once, as oxcd-bench's `watch` lays them out.
//! Each stream sends its next create once the last is answered, as etcd's
//! clientv3 does. When every watcher is created, PUT_CLIENTS tasks
//! (default 10) share PUTS unpaced puts (put i writes key i % KEYS,
//! 256-byte values) sent straight to PUT_ENDPOINT, not through
//! WATCH_ENDPOINT; each acknowledged put adds the number of watchers on its
//! key to the events expected. It waits for the rest of the events at most
//! 10 s after the last put.
//!
//! Prints one JSON line: watchers created and canceled, events expected
//! and received, events whose key is not the key of the watch id they came
//! with (`wrong_events`), events/s (events received over the time from the
//! first put to the last event received), puts ok and failed, put p99 in
//! ms. The run is bounded: 60 s to create the watchers, 10 s per put, 300 s
//! for all puts, 10 s of grace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, WatchResponse};
use tokio::sync::Notify;

/// Counters shared by the stream readers.
#[derive(Default)]
struct Counts {
    created: AtomicU64,
    canceled: AtomicU64,
    received: AtomicU64,
    wrong: AtomicU64,
    /// Nanoseconds since the start of the run of the last event received.
    last_event_ns: AtomicU64,
}

fn key(k: usize) -> String {
    format!("ecw/{k:06}")
}

/// Counts the events of `resp` (and those whose key is not the key its
/// watch id was created for); true when there were any.
fn count_events(
    resp: &WatchResponse,
    key_of: &HashMap<i64, Vec<u8>>,
    counts: &Counts,
    t0: Instant,
) -> bool {
    let n = resp.events().len() as u64;
    if n == 0 {
        return false;
    }
    let want = key_of.get(&resp.watch_id()).map(Vec::as_slice);
    let wrong = resp
        .events()
        .iter()
        .filter(|e| e.kv().map(|kv| kv.key()) != want)
        .count() as u64;
    counts.wrong.fetch_add(wrong, Ordering::Relaxed);
    counts.received.fetch_add(n, Ordering::Relaxed);
    counts
        .last_event_ns
        .fetch_max(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    true
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!(
            "usage: {} WATCH_ENDPOINT PUT_ENDPOINT WATCHERS STREAMS KEYS PUTS [PUT_CLIENTS]",
            args[0]
        );
        std::process::exit(2);
    }
    let (watch_ep, put_ep) = (args[1].clone(), args[2].clone());
    let watchers: usize = args[3].parse()?;
    let streams: usize = args[4].parse()?;
    let keys: usize = args[5].parse()?;
    let puts: usize = args[6].parse()?;
    let put_clients: usize = args.get(7).map_or(Ok(10), |s| s.parse())?;
    if watchers == 0 || streams == 0 || keys == 0 || put_clients == 0 {
        return Err("WATCHERS, STREAMS, KEYS and PUT_CLIENTS must be positive".into());
    }
    let opts = || ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    let conns = (streams / 10).max(1);
    let mut pool = Vec::with_capacity(conns);
    for _ in 0..conns {
        pool.push(Client::connect([watch_ep.as_str()], Some(opts())).await?);
    }

    let t0 = Instant::now();
    let counts = Arc::new(Counts::default());
    let notify = Arc::new(Notify::new());
    let mut watchers_on = vec![0u64; keys];
    let mut readers = Vec::with_capacity(streams);
    let per_stream = watchers.div_ceil(streams);
    for s in 0..streams {
        let mine: Vec<usize> = (s * per_stream..((s + 1) * per_stream).min(watchers))
            .map(|w| w % keys)
            .collect();
        if mine.is_empty() {
            continue;
        }
        for &k in &mine {
            watchers_on[k] += 1;
        }
        let mut client = pool[s % conns].clone();
        let (counts, notify) = (counts.clone(), notify.clone());
        readers.push(tokio::spawn(async move {
            let mut stream = client.watch(key(mine[0]), None).await?;
            let mut key_of: HashMap<i64, Vec<u8>> = HashMap::new();
            // As etcd's clientv3 does, the next create goes out only once
            // the previous one is answered: a created response names the
            // watch id, not the key, and a proxy may answer creates on
            // different keys out of order (etcd 3.4's does, when one key
            // already has its upstream watch and another does not).
            for (j, &k) in mine.iter().enumerate() {
                if j > 0 {
                    stream.watch(key(k), None).await?;
                }
                loop {
                    let resp = stream
                        .message()
                        .await?
                        .ok_or("watch stream closed while creating")?;
                    count_events(&resp, &key_of, &counts, t0);
                    if resp.canceled() {
                        counts.canceled.fetch_add(1, Ordering::Relaxed);
                    }
                    if resp.created() {
                        key_of.insert(resp.watch_id(), key(k).into_bytes());
                        counts.created.fetch_add(1, Ordering::Relaxed);
                        notify.notify_waiters();
                        break;
                    }
                }
            }
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    counts.canceled.fetch_add(1, Ordering::Relaxed);
                }
                if count_events(&resp, &key_of, &counts, t0) {
                    notify.notify_waiters();
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }

    // Every watcher created, or 60 s.
    let create_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wake = notify.notified();
        if counts.created.load(Ordering::Relaxed) >= watchers as u64 {
            break;
        }
        if tokio::time::timeout_at(create_deadline.into(), wake)
            .await
            .is_err()
        {
            break;
        }
    }
    let create_secs = t0.elapsed().as_secs_f64();

    let putter = Client::connect([put_ep.as_str()], Some(opts())).await?;
    let watchers_on = Arc::new(watchers_on);
    let expected = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let put_deadline = Instant::now() + Duration::from_secs(300);
    let puts_start = t0.elapsed();
    let mut tasks = Vec::with_capacity(put_clients);
    for _ in 0..put_clients {
        let mut client = putter.clone();
        let (next, expected, watchers_on) = (next.clone(), expected.clone(), watchers_on.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= puts || Instant::now() >= put_deadline {
                    break;
                }
                let k = i % keys;
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.put(key(k), vec![b'x'; 256], None),
                )
                .await;
                if let Ok(Ok(_)) = r {
                    lat.push(t.elapsed());
                    expected.fetch_add(watchers_on[k], Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut put_errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        put_errors += e;
    }
    let puts_secs = (t0.elapsed() - puts_start).as_secs_f64();

    let grace = Instant::now() + Duration::from_secs(10);
    loop {
        let wake = notify.notified();
        if counts.received.load(Ordering::Relaxed) >= expected.load(Ordering::Relaxed) {
            break;
        }
        if tokio::time::timeout_at(grace.into(), wake).await.is_err() {
            break;
        }
    }
    // A reader still running is a stream still open; one that ended, ended
    // early: the server closed its stream, or it failed.
    let mut stream_errors = 0;
    for (s, r) in readers.into_iter().enumerate() {
        if r.is_finished() {
            stream_errors += 1;
            match r.await {
                Ok(Ok(())) => eprintln!("stream {s}: closed by the server"),
                Ok(Err(e)) => eprintln!("stream {s}: {e}"),
                Err(e) => eprintln!("stream {s}: reader failed: {e}"),
            }
        } else {
            r.abort();
        }
    }

    let received = counts.received.load(Ordering::Relaxed);
    let last = Duration::from_nanos(counts.last_event_ns.load(Ordering::Relaxed));
    let events_secs = last.saturating_sub(puts_start).as_secs_f64();
    lat.sort();
    let p99 = lat
        .get(((lat.len() as f64 * 0.99) as usize).min(lat.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!(
        "{{\"watchers\":{watchers},\"watchers_created\":{},\"watchers_canceled\":{},\"create_secs\":{create_secs:.3},\
         \"events_expected\":{},\"events_received\":{received},\"wrong_events\":{},\
         \"events_per_sec\":{:.0},\"events_secs\":{events_secs:.3},\"puts_ok\":{},\"put_errors\":{put_errors},\
         \"put_secs\":{puts_secs:.3},\"put_p99_ms\":{p99:.3},\"stream_errors\":{stream_errors}}}",
        counts.created.load(Ordering::Relaxed),
        counts.canceled.load(Ordering::Relaxed),
        expected.load(Ordering::Relaxed),
        counts.wrong.load(Ordering::Relaxed),
        if events_secs > 0.0 {
            received as f64 / events_secs
        } else {
            0.0
        },
        lat.len(),
    );
    Ok(())
}
