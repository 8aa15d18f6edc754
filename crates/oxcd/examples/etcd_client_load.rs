//! A second load generator for the benchmarks, on the third-party
//! `etcd-client` crate (tonic channels, its own auth handling), so that a
//! result does not rest on oxcd-bench alone.
//!
//! ```text
//! etcd_client_load ENDPOINT put|range CLIENTS TOTAL [USER:PASSWORD]
//! ```
//! CLIENTS tasks share TOTAL requests (put: 8-byte keys over 100 000,
//! 256-byte values; range: linearizable get of `foo`), over
//! max(1, CLIENTS / 10) connections. Prints one JSON line: ops/s, p50 and
//! p99 in ms, errors. The run is bounded: each request has a 10 s timeout
//! and the whole run 300 s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: {} ENDPOINT put|range CLIENTS TOTAL [USER:PASSWORD]",
            args[0]
        );
        std::process::exit(2);
    }
    let (endpoint, op) = (args[1].clone(), args[2].clone());
    let clients: usize = args[3].parse()?;
    let total: usize = args[4].parse()?;
    let user = args
        .get(5)
        .and_then(|u| u.split_once(':'))
        .map(|(u, p)| (u.to_string(), p.to_string()));
    let conns = (clients / 10).max(1);
    let mut pool = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut opts = ConnectOptions::new().with_timeout(Duration::from_secs(10));
        if let Some((u, p)) = &user {
            opts = opts.with_user(u.clone(), p.clone());
        }
        pool.push(Client::connect([endpoint.as_str()], Some(opts)).await?);
    }
    if op == "range" {
        pool[0].put("foo", vec![b'v'; 256], None).await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut client = pool[c % conns].clone();
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                let key = format!("{:08}", rand_key());
                let t = Instant::now();
                let r = match op.as_str() {
                    "put" => tokio::time::timeout(
                        Duration::from_secs(10),
                        client.put(key, vec![b'x'; 256], None),
                    )
                    .await
                    .map(|r| r.map(|_| ())),
                    _ => tokio::time::timeout(Duration::from_secs(10), client.get("foo", None))
                        .await
                        .map(|r| r.map(|_| ())),
                };
                match r {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"ops_per_sec\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"ok\":{},\"errors\":{}}}",
        lat.len() as f64 / secs,
        q(0.5),
        q(0.99),
        lat.len(),
        errors
    );
    Ok(())
}

/// A key in 0..100 000, cheap and good enough for spreading puts.
fn rand_key() -> u32 {
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = const { Cell::new(0x9e37_79b9_7f4a_7c15) });
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % 100_000) as u32
    })
}
