//! The fault-injecting TCP proxy in front of one member's peer listener.
//!
//! Each member listens for peers on its own port but advertises its
//! proxy's port, so every peer connection *to* that member passes through
//! the proxy. A partition of member X must cut both directions whatever way
//! the server streams (oxcd sends on the connections it dials; etcd's
//! rafthttp also receives on them), so it is two faults together:
//! - X's own proxy is [`Proxy::cut`]: every connection to X is closed and
//!   new ones are closed as soon as they are accepted;
//! - every other proxy [`Proxy::block_origins`] X's pid: the connections
//!   X itself opened are closed and refused likewise.
//!
//! A one-way fault keeps every connection open but drops the bytes going
//! one way: a *mute* member's bytes reach no peer, a *deaf* member hears no
//! peer. Bytes are dropped per direction of each connection, whoever
//! dialed it, so it holds for both peer protocols: on X's own proxy the
//! member is the upstream side ([`Proxy::mute_target`],
//! [`Proxy::deaf_target`]); on the others, the inbound side of the
//! connections X opened ([`Proxy::mute_origins`], [`Proxy::deaf_origins`]).
//!
//! A connection's origin is found as `ss -p` does it: the inode of the
//! dialing socket from `/proc/net/tcp`, then which process holds a
//! descriptor for that inode (`/proc/<pid>/fd`). Closing (rather than
//! holding bytes) models a partition that refuses connections; servers
//! then retry with their own backoff, as over a real network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The faults in force; every connection watches them.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Every connection to the member is refused.
    cut: bool,
    /// Connections opened by these processes are refused.
    blocked_origins: Vec<u32>,
    /// Bytes from the member to its peers are dropped.
    mute_target: bool,
    /// Bytes from peers to the member are dropped.
    deaf_target: bool,
    /// Bytes sent by these processes on connections they opened are dropped.
    mute_origins: Vec<u32>,
    /// Bytes to these processes on connections they opened are dropped.
    deaf_origins: Vec<u32>,
}

/// A proxy from `127.0.0.1:port()` to `127.0.0.1:<target>`. Dropping it
/// closes the listener and every proxied connection.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    faults: watch::Sender<Faults>,
    /// Connections whose origin could not be found in /proc: an origin
    /// block cannot stop them, so a partition would leak.
    unattributed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Binds `127.0.0.1:port` (0 picks a free one) and forwards to
    /// `127.0.0.1:target`. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The bind fails.
    pub fn start(port: u16, target: u16) -> std::io::Result<Proxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let (faults, rx) = watch::channel(Faults::default());
        let unattributed = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            port,
            target,
            rx,
            unattributed.clone(),
        ));
        Ok(Proxy {
            port,
            faults,
            unattributed,
            task,
        })
    }

    /// The port the proxy listens on (what the member advertises).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts (`true`) or restores every connection to the member.
    pub fn cut(&self, cut: bool) {
        self.faults.send_modify(|f| f.cut = cut);
    }

    /// Refuses every connection opened by one of `pids`; an empty list
    /// lifts the block.
    pub fn block_origins(&self, pids: Vec<u32>) {
        self.faults.send_modify(|f| f.blocked_origins = pids);
    }

    /// Drops (`true`) or passes again every byte the member sends.
    pub fn mute_target(&self, mute: bool) {
        self.faults.send_modify(|f| f.mute_target = mute);
    }

    /// Drops (`true`) or passes again every byte sent to the member.
    pub fn deaf_target(&self, deaf: bool) {
        self.faults.send_modify(|f| f.deaf_target = deaf);
    }

    /// Drops what `pids` send on connections they opened; an empty list
    /// lifts it.
    pub fn mute_origins(&self, pids: Vec<u32>) {
        self.faults.send_modify(|f| f.mute_origins = pids);
    }

    /// Drops what is sent to `pids` on connections they opened; an empty
    /// list lifts it.
    pub fn deaf_origins(&self, pids: Vec<u32>) {
        self.faults.send_modify(|f| f.deaf_origins = pids);
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
    }

    /// How many connections so far had no origin found in /proc.
    pub fn unattributed(&self) -> usize {
        self.unattributed.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting
        // it drops them and closes their sockets.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    port: u16,
    target: u16,
    faults: watch::Receiver<Faults>,
    unattributed: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok((inbound, from)) = accepted else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let inode = socket_inode(from.port(), port);
        if inode.is_none() {
            unattributed.fetch_add(1, Ordering::Relaxed);
        }
        let origin = Origin {
            inode,
            held_by: Mutex::new(HashMap::new()),
        };
        conns.spawn(forward(inbound, target, origin, faults.clone()));
    }
}

/// Forwards one connection both ways until either side closes or a fault
/// stops it; returning drops (closes) both sockets.
async fn forward(
    mut inbound: TcpStream,
    target: u16,
    origin: Origin,
    mut faults: watch::Receiver<Faults>,
) {
    if !origin.passes(&faults.borrow_and_update()) {
        return;
    }
    // A member that is down refuses the upstream connection; the proxy
    // then closes the inbound one, as the member itself would.
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (from_peer, to_peer) = inbound.split();
    let (from_member, to_member) = upstream.split();
    let (to, back) = (faults.clone(), faults.clone());
    let both_ways = async {
        tokio::join!(
            pump(from_peer, to_member, || origin
                .drops_to_member(&to.borrow())),
            pump(from_member, to_peer, || origin
                .drops_from_member(&back.borrow())),
        )
    };
    tokio::select! {
        _ = both_ways => {}
        _ = faults.wait_for(|f| !origin.passes(f)) => {}
    }
}

/// Copies `from` to `to` until `from` ends (then shuts `to`'s write side,
/// as `copy_bidirectional` does) or either fails; a chunk read while
/// `drop_now()` holds is read and dropped.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    drop_now: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if !drop_now() && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Who opened a proxied connection, found lazily per pid asked about.
struct Origin {
    /// Inode of the dialing socket; `None` if not found.
    inode: Option<u64>,
    /// pid -> holds the dialing socket. A socket does not move between
    /// member processes, so answers are kept.
    held_by: Mutex<HashMap<u32, bool>>,
}

impl Origin {
    fn passes(&self, f: &Faults) -> bool {
        !f.cut && !f.blocked_origins.iter().any(|&pid| self.opened_by(pid))
    }

    /// Whether bytes from the dialing side to the member are dropped.
    fn drops_to_member(&self, f: &Faults) -> bool {
        f.deaf_target || f.mute_origins.iter().any(|&pid| self.opened_by(pid))
    }

    /// Whether bytes from the member to the dialing side are dropped.
    fn drops_from_member(&self, f: &Faults) -> bool {
        f.mute_target || f.deaf_origins.iter().any(|&pid| self.opened_by(pid))
    }

    fn opened_by(&self, pid: u32) -> bool {
        let Some(inode) = self.inode else {
            return false;
        };
        let mut held = self.held_by.lock().unwrap_or_else(|e| e.into_inner());
        *held
            .entry(pid)
            .or_insert_with(|| pid_holds_socket(pid, inode))
    }
}

/// The inode of the IPv4 socket `127.0.0.1:local_port` connected to
/// `127.0.0.1:remote_port`, from `/proc/net/tcp` (hex ports; inode is the
/// tenth column).
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local = port_of(cols.get(1)?)?;
        let remote = port_of(cols.get(2)?)?;
        if local == local_port && remote == remote_port {
            cols.get(9)?.parse().ok()
        } else {
            None
        }
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

/// Whether this system lets the proxy find connection origins (Linux
/// `/proc`); the partition nemesis refuses to run without it.
pub fn origins_supported() -> Result<(), String> {
    std::fs::read_to_string("/proc/net/tcp")
        .map_err(|e| format!("cannot read /proc/net/tcp: {e}"))?;
    std::fs::read_dir(format!("/proc/{}/fd", std::process::id()))
        .map_err(|e| format!("cannot list /proc/<pid>/fd: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes pass, and a cut closes the live connection and refuses new
    /// ones until it is lifted.
    #[tokio::test]
    async fn cut_closes_and_refuses() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let target = echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = Proxy::start(0, target).expect("start proxy");
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");

        proxy.cut(true);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "cut must close: {read:?}"
        );
        let mut c2 = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("accepts, then closes");
        let read = tokio::time::timeout(Duration::from_secs(5), c2.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "refused: {read:?}");

        proxy.cut(false);
        let mut c3 = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect after heal");
        c3.write_all(b"pong").await.expect("write");
        c3.read_exact(&mut buf).await.expect("echo after heal");
        assert_eq!(&buf, b"pong");
        assert_eq!(proxy.unattributed(), 0, "origins found in /proc");
    }

    /// A one-way fault keeps the connection open and drops one direction
    /// only: the dialer's bytes (deaf member) or the member's (mute).
    #[tokio::test]
    async fn one_way_faults_drop_one_direction() {
        // The "member": answers each 4-byte message with "ack!" and
        // reports what it received.
        let member = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = member.local_addr().expect("addr").port();
        let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel::<[u8; 4]>();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = member.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let mut m = [0u8; 4];
                    while s.read_exact(&mut m).await.is_ok() {
                        let _ = got_tx.send(m);
                        if s.write_all(b"ack!").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start(0, target).expect("start proxy");
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect");
        let mut ack = [0u8; 4];
        let quiet = Duration::from_millis(300);

        // Mute: the member receives, its answer is dropped.
        proxy.mute_target(true);
        c.write_all(b"one?").await.expect("write");
        assert_eq!(got.recv().await, Some(*b"one?"));
        assert!(
            tokio::time::timeout(quiet, c.read_exact(&mut ack))
                .await
                .is_err(),
            "a mute member's answer must not arrive"
        );
        proxy.heal();

        // Deaf: the member receives nothing, the connection stays open.
        proxy.deaf_target(true);
        c.write_all(b"two?").await.expect("write to a deaf member");
        assert!(
            tokio::time::timeout(quiet, got.recv()).await.is_err(),
            "a deaf member must not receive"
        );
        proxy.heal();

        // Healed, on the same connection.
        c.write_all(b"six?").await.expect("write after heal");
        assert_eq!(got.recv().await, Some(*b"six?"));
        c.read_exact(&mut ack).await.expect("ack after heal");
        assert_eq!(&ack, b"ack!");

        // On origins: this test process opened the connection.
        proxy.mute_origins(vec![std::process::id()]);
        c.write_all(b"ten?").await.expect("write");
        assert!(
            tokio::time::timeout(quiet, got.recv()).await.is_err(),
            "bytes from a muted origin must not arrive"
        );
        proxy.heal();
        c.write_all(b"end?").await.expect("write");
        assert_eq!(got.recv().await, Some(*b"end?"));
    }
}
