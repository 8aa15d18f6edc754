//! A fault-injecting TCP proxy for peer traffic, on 127.0.0.1.
//!
//! One [`Proxy`] sits in front of one member's peer listener: the member
//! listens on its own peer port but advertises the proxy's port, so every
//! peer connection *to* that member passes through its proxy.
//!
//! Two faults, which combine:
//! - [`Proxy::set`] with [`Mode::Blackhole`] stops every connection to the
//!   member (its inbound peer traffic);
//! - [`Proxy::block_origins`] stops only the connections opened by the
//!   given processes. The proxy finds a connection's origin the way `ss -p`
//!   does: the client socket's inode from `/proc/net/tcp`, then which of
//!   the given pids holds a descriptor for it (`/proc/<pid>/fd`).
//!
//! One member's proxy alone gives a one-way fault, and which way depends
//! on the server's transport:
//! - oxcd: each member dials every peer and sends its messages on the
//!   stream it dialed (`crates/oxcd-raft/src/transport.rs`), so a member's
//!   proxy carries every message addressed *to* that member; the return
//!   direction carries only HTTP/2 acknowledgements.
//! - etcd: a member dials its peers' `/raft/stream/*` endpoints and the
//!   peer writes messages back on that connection, so a member's proxy
//!   carries mostly what that member *sends* (and pipeline POSTs to it).
//!
//! A full partition of member X (the harness's `Cluster::isolate`) is
//! therefore both: X's proxy blackholed, and every other proxy blocking
//! the connections X opens. That cuts every byte between X and the others
//! whichever way the server streams.
//!
//! Blocking models a partition that silently drops packets (iptables
//! DROP): bytes already in flight and new bytes stay where they are (the
//! proxy stops reading, so the sender's socket buffers fill up), and new
//! connections are accepted but carry nothing, as a SYN retransmitted
//! until the network heals would. Nothing is reset. When the fault is
//! lifted, forwarding resumes where it stopped, as TCP's retransmission
//! does after a short partition; a server that wants to notice a dead
//! connection must use its own timeouts, as over a real network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways (unless the origin is blocked).
    Pass,
    /// Forward nothing, cut nothing (a silent partition).
    Blackhole,
}

/// The faults in force; every connection watches them.
#[derive(Clone, Debug)]
struct Faults {
    mode: Mode,
    /// Processes whose connections are stopped.
    blocked_origins: Vec<u32>,
}

/// A TCP proxy from `127.0.0.1:port()` to `127.0.0.1:<target>`. Dropping it
/// closes the listener and every proxied connection.
pub struct Proxy {
    port: u16,
    faults: watch::Sender<Faults>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:port` and forwards to `127.0.0.1:target`, starting in
    /// [`Mode::Pass`]. Must be called inside a tokio runtime, which then
    /// runs the proxy.
    pub fn start(port: u16, target: u16) -> std::io::Result<Proxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let (faults, watch_rx) = watch::channel(Faults {
            mode: Mode::Pass,
            blocked_origins: Vec::new(),
        });
        let task = tokio::spawn(accept_loop(listener, port, target, watch_rx));
        Ok(Proxy { port, faults, task })
    }

    /// The port the proxy listens on (what the member advertises).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches every current and future connection to `mode`.
    pub fn set(&self, mode: Mode) {
        self.faults.send_modify(|f| f.mode = mode);
    }

    /// Stops every current and future connection opened by one of `pids`
    /// (and lets the others flow); an empty list lifts the block.
    pub fn block_origins(&self, pids: Vec<u32>) {
        self.faults.send_modify(|f| f.blocked_origins = pids);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so
        // aborting it drops them too.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    target: u16,
    faults: watch::Receiver<Faults>,
) {
    let mut conns = JoinSet::new();
    loop {
        let inbound = tokio::select! {
            r = listener.accept() => r,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((inbound, from)) = inbound else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let origin = Arc::new(Origin {
            inode: socket_inode(from.port(), port),
            owned_by: Mutex::new(HashMap::new()),
        });
        conns.spawn(proxy_conn(inbound, target, origin, faults.clone()));
    }
}

/// Forwards one connection both ways until either side closes.
async fn proxy_conn(
    inbound: TcpStream,
    target: u16,
    origin: Arc<Origin>,
    faults: watch::Receiver<Faults>,
) {
    // A member that is down refuses the upstream connection; so does the
    // proxy then, by closing the inbound one.
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (up_r, up_w) = upstream.into_split();
    tokio::select! {
        () = pump(in_r, up_w, origin.clone(), faults.clone()) => {}
        () = pump(up_r, in_w, origin, faults) => {}
    }
}

/// Copies `from` to `to`, holding the bytes while the faults stop this
/// connection; returns at EOF or on any error.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    origin: Arc<Origin>,
    mut faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if faults.wait_for(|f| origin.passes(f)).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A partition that began while the read was pending holds these
        // bytes too.
        if faults.wait_for(|f| origin.passes(f)).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Who opened a proxied connection, found lazily per blocked pid.
struct Origin {
    /// The inode of the connecting (client) socket; `None` if it was not
    /// found, and then no origin block applies to it.
    inode: Option<u64>,
    /// pid -> whether that process holds the client socket. A socket never
    /// moves between our member processes, so answers are kept.
    owned_by: Mutex<HashMap<u32, bool>>,
}

impl Origin {
    fn passes(&self, f: &Faults) -> bool {
        f.mode == Mode::Pass && !f.blocked_origins.iter().any(|&pid| self.opened_by(pid))
    }

    fn opened_by(&self, pid: u32) -> bool {
        let Some(inode) = self.inode else {
            return false;
        };
        let mut owned = self.owned_by.lock().unwrap_or_else(|e| e.into_inner());
        *owned
            .entry(pid)
            .or_insert_with(|| pid_holds_socket(pid, inode))
    }
}

/// The inode of the IPv4 TCP socket `127.0.0.1:local_port` connected to
/// `127.0.0.1:remote_port`, from `/proc/net/tcp` (hex ports, inode in the
/// tenth column).
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let matches = port(f.get(1)?)? == local_port && port(f.get(2)?)? == remote_port;
        matches.then(|| f.get(9)?.parse().ok()).flatten()
    })
}

/// Whether process `pid` has a descriptor for socket `inode`.
fn pid_holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
}
