//! `--discovery-srv` for `gateway start` and `grpc-proxy start`: the
//! endpoints come from DNS SRV records (`_etcd-client._tcp.<domain>`).
//!
//! The records are served by a small DNS server in this test on
//! 127.0.0.99:53; each proxy runs in a mount namespace of its own
//! (`unshare --mount`) where `/etc/resolv.conf` names that server, so the
//! proxy uses the system resolver configuration exactly as in production
//! and the host's resolver is untouched. Needs root (port 53, mounts):
//! without it the test says so and does nothing.
//!
//! Checked against etcd's own gateway and proxy with
//! `OXCD_TEST_SERVER=/usr/bin/etcd`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bounded, free_port, server_binary, Cluster, ETCDCTL};
use hickory_proto::op::{Message, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const DNS: &str = "127.0.0.99:53";
const DOMAIN: &str = "example.test";

/// Whether this process may bind port 53 and make mount namespaces.
fn privileged() -> bool {
    rustix::process::geteuid().is_root()
}

/// Serves SRV and A records for [`DOMAIN`] until the test ends: the
/// plain client service points at `m1.example.test:<port>`, which is
/// 127.0.0.1; everything else does not exist.
fn dns_server(port: u16) -> std::net::UdpSocket {
    let sock = std::net::UdpSocket::bind(DNS).expect("bind 127.0.0.99:53");
    let serving = sock.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = serving.recv_from(&mut buf) else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let reply = answer(&req, port);
            if let Ok(bytes) = reply.to_vec() {
                let _ = serving.send_to(&bytes, from);
            }
        }
    });
    sock
}

fn answer(req: &Message, port: u16) -> Message {
    let mut reply = Message::response(req.metadata.id, req.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&req.metadata);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_available = true;
    reply.queries = req.queries.clone();
    let mut found = false;
    for q in &req.queries {
        let name = q.name().to_utf8().to_ascii_lowercase();
        let srv_name = format!("_etcd-client._tcp.{DOMAIN}.");
        let host = format!("m1.{DOMAIN}.");
        if q.query_type() == RecordType::SRV && name == srv_name {
            let target = Name::from_ascii(&host).expect("valid name");
            reply.answers.push(Record::from_rdata(
                q.name().clone(),
                5,
                RData::SRV(SRV::new(0, 0, port, target)),
            ));
            found = true;
        } else if name == host {
            if q.query_type() == RecordType::A {
                reply.answers.push(Record::from_rdata(
                    q.name().clone(),
                    5,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
            found = true;
        }
    }
    if !found {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}

/// A proxy process run in its own mount namespace with the test's
/// resolv.conf; its stderr lines as they arrive.
struct Proxy {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proxy {
    fn start(resolv: &Path, args: &[&str]) -> Proxy {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec \"$@\"",
            resolv.display()
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--", "sh", "-c", &script, "sh"])
            .arg(server_binary())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proxy {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `text`; panics with the log.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.seen.iter().any(|l| l.contains(text)) {
                return;
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(l);
            }
        }
        panic!("no {text:?} in:\n{}", self.seen.join("\n"));
    }

    /// Waits (bounded) for the process to exit; its code and log.
    fn exit(&mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.seen.push(l);
                }
                return (status.code(), self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("still running:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both proxies find the member through SRV records; a domain with no
/// records ends the process with etcd's error; without
/// `--insecure-discovery` the plain-http record is dropped and the
/// `--endpoints` list is used instead.
#[tokio::test]
async fn proxies_find_the_cluster_through_srv_records() {
    if !privileged() {
        eprintln!("skipped: needs root for port 53 and unshare --mount");
        return;
    }
    bounded(async {
        let cluster = Cluster::start(1).await;
        let member = cluster.endpoints()[0].clone();
        let port: u16 = member
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("member port");
        let _dns = dns_server(port);
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv,
            "nameserver 127.0.0.99\noptions timeout:1 attempts:2\n",
        )
        .expect("write resolv.conf");

        // The L4 gateway.
        let gw = format!("127.0.0.1:{}", free_port());
        let mut g = Proxy::start(
            &resolv,
            &[
                "gateway",
                "start",
                "--discovery-srv",
                DOMAIN,
                "--insecure-discovery",
                "--listen-addr",
                &gw,
            ],
        );
        g.wait_for("ready to proxy client requests");
        assert!(
            // etcd keeps the SRV target's final dot (`m1.example.test.:P`).
            g.seen
                .iter()
                .any(|l| l.contains(&format!("m1.{DOMAIN}")) && l.contains(&format!(":{port}"))),
            "the gateway names the discovered endpoint:\n{}",
            g.seen.join("\n")
        );
        etcdctl(&gw, &["put", "srv-gw", "1"]);
        assert_eq!(
            etcdctl(&member, &["get", "srv-gw", "--print-value-only"]),
            "1\n"
        );

        // The gRPC proxy.
        let gp = format!("127.0.0.1:{}", free_port());
        let mut p = Proxy::start(
            &resolv,
            &[
                "grpc-proxy",
                "start",
                "--discovery-srv",
                DOMAIN,
                "--insecure-discovery",
                "--listen-addr",
                &gp,
                "--endpoints",
                "127.0.0.1:1",
            ],
        );
        p.wait_for("started gRPC proxy");
        etcdctl(&gp, &["put", "srv-proxy", "2"]);
        assert_eq!(
            etcdctl(&member, &["get", "srv-proxy", "--print-value-only"]),
            "2\n"
        );

        // No records at all: etcd's error, exit 1.
        let mut none = Proxy::start(
            &resolv,
            &[
                "grpc-proxy",
                "start",
                "--discovery-srv",
                "nothing.test",
                "--listen-addr",
                &format!("127.0.0.1:{}", free_port()),
            ],
        );
        let (code, log) = none.exit();
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("dns lookup errors"), "{log}");

        // Secure discovery drops the http record; --endpoints stays in use.
        let gw2 = format!("127.0.0.1:{}", free_port());
        let mut g2 = Proxy::start(
            &resolv,
            &[
                "gateway",
                "start",
                "--discovery-srv",
                DOMAIN,
                "--endpoints",
                &member,
                "--listen-addr",
                &gw2,
            ],
        );
        g2.wait_for("ready to proxy client requests");
        etcdctl(&gw2, &["put", "srv-gw2", "3"]);
        assert_eq!(
            etcdctl(&member, &["get", "srv-gw2", "--print-value-only"]),
            "3\n"
        );
        drop(cluster);
    })
    .await;
}
