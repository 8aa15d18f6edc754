//! `oxcd gateway start`: etcd's L4 gateway (etcd's `proxy/tcpproxy`).
//!
//! Every client connection is joined to one cluster endpoint, picked round
//! robin among the active ones; bytes are copied both ways with a small
//! fixed buffer per direction, on the async runtime (no thread per
//! connection). An endpoint that refuses a connection is set inactive and
//! skipped; every `--retry-delay` the inactive ones are dialled again and
//! set active when they answer. A client connection for which no endpoint
//! answers is closed. Log lines are etcd 3.4's gateway's (zap JSON on
//! stderr): `ready to proxy client requests`, `deactivated endpoint`,
//! `activated`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// How long dialling one endpoint may take before the next is tried.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// What `oxcd gateway start` was given.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `--listen-addr`.
    pub listen_addr: String,
    /// `--endpoints`, as `host:port` (schemes stripped).
    pub endpoints: Vec<String>,
    /// `--retry-delay`: how long an endpoint stays inactive before it is
    /// dialled again.
    pub retry_delay: Duration,
}

/// Why the gateway cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The listen address cannot be bound.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// `--listen-addr`.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// No endpoints were given.
    #[error("no endpoints found")]
    NoEndpoints,
}

/// One zap-style JSON log line on stderr, as etcd's gateway writes:
/// `level`, `ts`, `caller`, `msg` first, then the fields.
fn log(level: &str, msg: &str, fields: serde_json::Value) {
    crate::log::line(level, "tcpproxy/userspace.go", msg, fields);
}

struct Remote {
    addr: String,
    inactive: AtomicBool,
}

/// The endpoints and the round-robin position.
struct Remotes {
    list: Vec<Remote>,
    next: AtomicUsize,
}

impl Remotes {
    /// The next active endpoint after the last pick, if any is active.
    fn pick(&self) -> Option<&Remote> {
        let n = self.list.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let r = &self.list[i];
            if !r.inactive.load(Ordering::Relaxed) {
                return Some(r);
            }
        }
        None
    }
}

/// Binds `--listen-addr` and proxies until `shutdown` completes.
///
/// # Errors
/// [`GatewayError`] if it cannot start; once serving it only logs.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    if cfg.endpoints.is_empty() {
        return Err(GatewayError::NoEndpoints);
    }
    let listener = TcpListener::bind(&cfg.listen_addr)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: cfg.listen_addr.clone(),
            source,
        })?;
    let remotes = Arc::new(Remotes {
        list: cfg
            .endpoints
            .iter()
            .map(|addr| Remote {
                addr: addr.clone(),
                inactive: AtomicBool::new(false),
            })
            .collect(),
        next: AtomicUsize::new(0),
    });
    log(
        "info",
        "ready to proxy client requests",
        serde_json::json!({ "endpoints": cfg.endpoints }),
    );
    let monitor = tokio::spawn(monitor(remotes.clone(), cfg.retry_delay));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(serve(conn, remotes.clone(), cfg.retry_delay));
                }
                Err(e) => {
                    log("warn", "failed to accept a connection", serde_json::json!({ "error": e.to_string() }));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    monitor.abort();
    Ok(())
}

/// Joins one client connection to an endpoint (etcd's `serve`).
async fn serve(mut conn: TcpStream, remotes: Arc<Remotes>, retry_delay: Duration) {
    let mut out = None;
    while let Some(r) = remotes.pick() {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&r.addr)).await {
            Ok(Ok(s)) => {
                out = Some(s);
                break;
            }
            Ok(Err(e)) => deactivate(r, &e.to_string(), retry_delay),
            Err(_) => deactivate(r, "dial timed out", retry_delay),
        }
    }
    let Some(mut out) = out else {
        // Nothing answers: the client sees its connection closed.
        return;
    };
    let _ = out.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut out).await;
}

fn deactivate(r: &Remote, error: &str, retry_delay: Duration) {
    if !r.inactive.swap(true, Ordering::Relaxed) {
        log(
            "warn",
            "deactivated endpoint",
            serde_json::json!({
                "address": r.addr,
                "interval": format!("{retry_delay:?}"),
                "error": error,
            }),
        );
    }
}

fn still_inactive(r: &Remote, retry_delay: Duration, error: &str) {
    log(
        "warn",
        "failed to activate endpoint (stay inactive for another interval)",
        serde_json::json!({
            "address": r.addr,
            "interval": format!("{retry_delay:?}"),
            "error": error,
        }),
    );
}

/// Every `retry_delay`, dials the inactive endpoints and reactivates those
/// that answer (etcd's `runMonitor`).
async fn monitor(remotes: Arc<Remotes>, retry_delay: Duration) {
    let mut tick = tokio::time::interval(retry_delay.max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        tick.tick().await;
        for r in remotes
            .list
            .iter()
            .filter(|r| r.inactive.load(Ordering::Relaxed))
        {
            match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&r.addr)).await {
                Ok(Ok(_)) => {
                    r.inactive.store(false, Ordering::Relaxed);
                    log(
                        "info",
                        "activated",
                        serde_json::json!({ "address": r.addr }),
                    );
                }
                Ok(Err(e)) => still_inactive(r, retry_delay, &e.to_string()),
                Err(_) => still_inactive(r, retry_delay, "dial timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remotes(n: usize) -> Remotes {
        Remotes {
            list: (0..n)
                .map(|i| Remote {
                    addr: format!("a{i}"),
                    inactive: AtomicBool::new(false),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[test]
    fn picks_round_robin_over_active_endpoints() {
        let r = remotes(3);
        let picked: Vec<String> = (0..4).map(|_| r.pick().unwrap().addr.clone()).collect();
        assert_eq!(picked, ["a0", "a1", "a2", "a0"]);
        r.list[1].inactive.store(true, Ordering::Relaxed);
        let picked: Vec<String> = (0..4).map(|_| r.pick().unwrap().addr.clone()).collect();
        assert!(!picked.contains(&"a1".to_string()), "{picked:?}");
        for x in &r.list {
            x.inactive.store(true, Ordering::Relaxed);
        }
        assert!(r.pick().is_none());
    }

    #[tokio::test]
    async fn a_refusing_endpoint_is_skipped_and_bytes_flow_both_ways() {
        // An echo server as the live endpoint; a closed port first.
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = GatewayConfig {
            listen_addr: format!("127.0.0.1:{port}"),
            endpoints: vec![dead, live],
            retry_delay: Duration::from_secs(60),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = tokio::spawn(run(cfg, async {
            let _ = stopped.await;
        }));
        let mut c = None;
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
                c = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..3 {
            let mut c = match c.take() {
                Some(c) => c,
                None => TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
            };
            c.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"ping");
        }
        let _ = stop.send(());
        gw.await.unwrap().unwrap();
    }
}
