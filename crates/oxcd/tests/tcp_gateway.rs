//! `oxcd gateway start` (etcd's L4 gateway, issue 16 item 1) in front of a
//! 3-member cluster: etcdctl and a Rust client work through it; an
//! endpoint that refuses is deactivated and skipped, and comes back after
//! `--retry-delay` once it answers again.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bounded, free_port, server_binary, Cluster};

/// The gateway process and its log lines as they arrive.
struct Gateway {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    addr: String,
}

impl Gateway {
    fn start(endpoints: &[String], retry_delay: &str) -> Gateway {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(server_binary())
            .args([
                "gateway",
                &format!("--endpoints={}", endpoints.join(",")),
                "start",
                "--listen-addr",
                &addr,
                "--retry-delay",
                retry_delay,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut g = Gateway {
            child,
            lines,
            seen: Vec::new(),
            addr,
        };
        g.wait_for("ready to proxy client requests");
        g
    }

    /// Waits (bounded) for a log line containing `text`; returns it.
    fn wait_for(&mut self, text: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        let until = Instant::now() + Duration::from_secs(20);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no log line {text:?}; saw {:?}", self.seen);
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.addr))
            .args(["--dial-timeout=5s", "--command-timeout=10s"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn clients_reach_the_cluster_through_the_gateway_and_dead_endpoints_are_skipped() {
    bounded(async {
        let mut c = Cluster::start(3).await;
        // A port nothing listens on comes first: it is deactivated.
        let dead = format!("127.0.0.1:{}", free_port());
        let mut eps = vec![dead.clone()];
        eps.extend(c.endpoints().iter().map(|e| format!("http://{e}")));
        let mut g = Gateway::start(&eps, "300ms");
        let ready = g.wait_for("ready to proxy client requests");
        assert!(ready.contains(&dead), "{ready}");

        assert_eq!(g.etcdctl(&["put", "foo", "bar"]).trim(), "OK");
        let line = g.wait_for("deactivated endpoint");
        assert!(line.contains(&dead), "{line}");
        let mut client = etcd_client::Client::connect([g.addr.as_str()], None)
            .await
            .unwrap();
        for i in 0..20 {
            client.put(format!("k{i}"), "v", None).await.unwrap();
        }
        let r = client.get("foo", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"bar");

        // A follower goes down (not the leader: that would be an election,
        // not the gateway's business): every new connection still gets
        // through, to a member that answers.
        let leader = c.wait_leader(Duration::from_secs(10)).await;
        let down = (leader + 1) % 3;
        c.members[down].kill9();
        for i in 0..6 {
            let v = format!("after-kill-{i}");
            assert_eq!(g.etcdctl(&["put", "x", &v]).trim(), "OK");
            assert!(g.etcdctl(&["get", "x"]).contains(&v));
        }
        // It comes back: reactivated after the retry delay.
        c.members[down].restart().await;
        let line = g.wait_for(&format!(
            "\"msg\":\"activated\",\"address\":\"{}\"",
            c.endpoints()[down]
        ));
        assert!(line.starts_with("{\"level\":\"info\""), "{line}");
    })
    .await;
}

#[test]
fn refuses_srv_domains_without_records_and_endpoints_that_are_itself() {
    let run = |args: &[&str]| {
        let out = Command::new(server_binary())
            .arg("gateway")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        // etcd prints some refusals on stdout, some on stderr.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    };
    // `.invalid` never resolves: etcd's error for no SRV records at all.
    let err = run(&["start", "--discovery-srv=nothing.invalid"]);
    assert!(err.contains("dns lookup errors"), "{err}");
    let err = run(&[
        "start",
        "--listen-addr=127.0.0.1:23790",
        "--endpoints=127.0.0.1:23790",
    ]);
    assert!(
        err.contains("should not resolve to the gateway listen addr"),
        "{err}"
    );
}
