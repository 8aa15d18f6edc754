//! The JSON gateway under `/v3/`, driven with curl as etcd's own e2e tests
//! and shell scripts drive it: encoding (base64 bytes, int64 as strings,
//! proto field names, zero values left out), streams, HTTP statuses and
//! error bodies.
//!
//! Every expectation here holds for etcd 3.4.23 too
//! (`OXCD_TEST_SERVER=/usr/bin/etcd`).

mod common;

use common::{b64, bounded, Cluster, Member};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;

/// What curl got: the status code and the body.
struct Reply {
    code: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// POSTs `body` to `path` with curl, for at most `max_time` (streams never
/// end on their own, so curl's time limit ends them).
async fn curl(m: &Member, method: &str, path: &str, body: &str, max_time: Duration) -> Reply {
    let url = format!("{}{path}", m.client_url());
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-X", method, "-o", "-", "-w", "\n%{http_code}"])
        .args(["-m", &format!("{}", max_time.as_secs_f64())])
        .args(["--data-binary", body, &url])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(max_time + Duration::from_secs(5), out)
        .await
        .expect("curl hung")
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        code: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

/// Whether the tests run against another server (etcd): the oxcd-only
/// ones then return at once.
fn against_other_server() -> bool {
    std::env::var_os("OXCD_TEST_SERVER").is_some_and(|s| !s.is_empty())
}

/// One oxcd member with the test knob `knob` set to `millis`, and its
/// client address as `host:port`.
async fn member_with_knob(knob: &str, millis: &str) -> (Cluster, String) {
    let c = Cluster::builder(1).env(knob, millis).start().await;
    let addr = c
        .member(0)
        .client_url()
        .trim_start_matches("http://")
        .to_string();
    (c, addr)
}

async fn post(m: &Member, path: &str, body: &str) -> Reply {
    curl(m, "POST", path, body, Duration::from_secs(10)).await
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v}"))
}

#[tokio::test]
async fn kv_routes_speak_grpc_gateway_json() {
    bounded(async {
        let m = Member::start().await;
        let put = post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
        assert_eq!(put.code, 200, "{}", put.body);
        let rev: i64 = str_field(&put.json(), &["header", "revision"])
            .parse()
            .expect("revision is an int64 string");

        let got = post(&m, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await.json();
        let kv = &got["kvs"][0];
        assert_eq!(kv["key"], "Zm9v");
        assert_eq!(kv["value"], "YmFy");
        assert_eq!(kv["mod_revision"], rev.to_string());
        assert_eq!(kv["version"], "1");
        assert_eq!(got["count"], "1");
        // Zero values are left out: no lease, no `more`.
        assert!(kv.get("lease").is_none() && got.get("more").is_none(), "{got}");

        // Either field name and either number form are accepted.
        let prefix = format!(r#"{{"key":"{}","rangeEnd":"{}","limit":"1"}}"#, b64(b"f"), b64(b"g"));
        let got = post(&m, "/v3/kv/range", &prefix).await.json();
        assert_eq!(got["kvs"].as_array().map(Vec::len), Some(1), "{got}");
        let missing = post(&m, "/v3/kv/range", r#"{"key":"bm9wZQ=="}"#).await.json();
        assert!(missing.get("kvs").is_none() && missing.get("count").is_none());

        // etcd's e2e TestV3CurlTxn.
        let txn = r#"{"compare":[{"key":"YmF6","result":"EQUAL","target":"CREATE","create_revision":0}],"success":[{"request_put":{"key":"YmF6","value":"cXV4"}}]}"#;
        let t = post(&m, "/v3/kv/txn", txn).await.json();
        assert_eq!(t["succeeded"], true);
        assert_eq!(
            t["responses"][0]["response_put"]["header"]["revision"],
            (rev + 1).to_string()
        );
        let del = post(&m, "/v3/kv/deleterange", r#"{"key":"YmF6","prev_kv":true}"#).await.json();
        assert_eq!(del["deleted"], "1");
        assert_eq!(del["prev_kvs"][0]["value"], "cXV4");

        let future = post(&m, "/v3/kv/compaction", r#"{"revision":"1000"}"#).await;
        assert_eq!(future.code, 400);
        assert_eq!(
            future.json(),
            serde_json::json!({"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11})
        );
        let compact = post(&m, "/v3/kv/compaction", &format!(r#"{{"revision":{rev}}}"#)).await;
        assert_eq!(compact.code, 200, "{}", compact.body);
        // v3beta is an alias in 3.4.
        let beta = post(&m, "/v3beta/kv/range", r#"{"key":"Zm9v"}"#).await.json();
        assert_eq!(beta["kvs"][0]["value"], "YmFy");
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_grpc_gateway_statuses() {
    bounded(async {
        let m = Member::start().await;
        let unknown = post(&m, "/v3/kv/nope", "{}").await;
        assert_eq!((unknown.code, unknown.body.as_str()), (404, "Not Found\n"));
        let alpha = post(&m, "/v3alpha/kv/range", "{}").await;
        assert_eq!((alpha.code, alpha.body.as_str()), (404, "404 page not found\n"));
        let get = curl(&m, "GET", "/v3/kv/range", "", Duration::from_secs(10)).await;
        assert_eq!(get.code, 405);
        for body in [r#"{"key":"#, r#"{"key":123}"#, r#"{"key":"!!"}"#] {
            let r = post(&m, "/v3/kv/range", body).await;
            assert_eq!(r.code, 400, "{body}: {}", r.body);
            assert_eq!(r.json()["code"], 3, "{body}: {}", r.body);
        }
        // The malformed txn of etcd's TestV3CurlTxn (it once crashed etcd):
        // an operation without a request.
        let malformed = r#"{"compare":[{"result":0,"target":1,"key":"Zm9v","TargetUnion":null}],"success":[{"Request":{"RequestPut":{"key":"Zm9v","value":"YmFy"}}}]}"#;
        let r = post(&m, "/v3/kv/txn", malformed).await;
        assert!(r.json().get("error").is_some(), "{}", r.body);
        // Lock and election errors are code 2, HTTP 500.
        let r = post(&m, "/v3/election/proclaim", r#"{"value":"djI="}"#).await;
        assert_eq!(r.code, 500);
        assert_eq!(
            r.body,
            r#"{"error":"\"leader\" field must be provided","message":"\"leader\" field must be provided","code":2}"#
        );
        // The member is still fine.
        assert_eq!(post(&m, "/v3/kv/put", r#"{"key":"YQ==","value":"Yg=="}"#).await.code, 200);
    })
    .await;
}

#[tokio::test]
async fn streams_answer_one_result_object_per_message() {
    bounded(async {
        let m = Member::start().await;
        assert_eq!(
            post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#)
                .await
                .code,
            200
        );
        // etcd's e2e TestV3CurlWatch: the stream stays open, curl's time
        // limit ends it.
        let w = curl(
            &m,
            "POST",
            "/v3/watch",
            r#"{"create_request":{"key":"Zm9v","start_revision":1}}"#,
            Duration::from_secs(2),
        )
        .await;
        let lines: Vec<Value> = w
            .body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{}", w.body);
        assert_eq!(lines[0]["result"]["created"], true);
        assert_eq!(lines[1]["result"]["events"][0]["kv"]["value"], "YmFy");
        // A PUT event has the zero type, so no `type` field.
        assert!(lines[1]["result"]["events"][0].get("type").is_none());

        // A first stream object that does not decode: code 2, HTTP 500.
        let bad = curl(
            &m,
            "POST",
            "/v3/watch",
            r#"{"create_request":{"key":123}}"#,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(bad.code, 500, "{}", bad.body);
        assert_eq!(bad.json()["code"], 2, "{}", bad.body);

        // Two request objects in one body: two keep-alives, and the
        // keep-alive stream ends with the body.
        let lease = post(&m, "/v3/lease/grant", r#"{"TTL":60}"#).await.json();
        let id = str_field(&lease, &["ID"]).to_string();
        assert_eq!(lease["TTL"], "60");
        let body = format!(r#"{{"ID":"{id}"}} {{"ID":{id}}}"#);
        let ka = curl(
            &m,
            "POST",
            "/v3/lease/keepalive",
            &body,
            Duration::from_secs(5),
        )
        .await;
        let answers: Vec<Value> = ka
            .body
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(answers.len(), 2, "{}", ka.body);
        assert!(answers
            .iter()
            .all(|a| a["result"]["ID"] == id.as_str() && a["result"]["TTL"] == "60"));

        let ttl = post(
            &m,
            "/v3/kv/lease/timetolive",
            &format!(r#"{{"ID":{id},"keys":true}}"#),
        )
        .await
        .json();
        assert_eq!(ttl["grantedTTL"], "60");
        let leases = post(&m, "/v3/lease/leases", "{}").await.json();
        assert_eq!(leases["leases"][0]["ID"], id.as_str());
        assert_eq!(
            post(&m, "/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#))
                .await
                .code,
            200
        );
        let gone = post(&m, "/v3/lease/timetolive", &format!(r#"{{"ID":"{id}"}}"#))
            .await
            .json();
        assert_eq!(gone["TTL"], "-1");
    })
    .await;
}

#[tokio::test]
async fn cluster_maintenance_lock_and_election_routes() {
    bounded(async {
        let m = Member::start().await;
        let members = post(&m, "/v3/cluster/member/list", "{}").await.json();
        let me = &members["members"][0];
        assert_eq!(me["name"], m.name.as_str());
        assert_eq!(me["clientURLs"][0], m.client_url().as_str());
        let status = post(&m, "/v3/maintenance/status", "{}").await.json();
        assert_eq!(status["leader"], me["ID"]);
        assert!(status["dbSize"].as_str().is_some(), "{status}");
        assert_eq!(
            post(&m, "/v3/maintenance/alarm", "{}").await.json(),
            serde_json::json!({})
        );
        assert_eq!(post(&m, "/v3/maintenance/defragment", "{}").await.code, 200);
        // Hash's hash is a uint32: a JSON number.
        let hash = post(&m, "/v3/maintenance/hash", "{}").await.json();
        assert!(hash["hash"].is_u64(), "{hash}");

        let lease = post(&m, "/v3/lease/grant", r#"{"TTL":30}"#).await.json();
        let id = str_field(&lease, &["ID"]).to_string();
        let lock = post(
            &m,
            "/v3/lock/lock",
            &format!(r#"{{"name":"{}","lease":"{id}"}}"#, b64(b"l")),
        )
        .await
        .json();
        let key = str_field(&lock, &["key"]).to_string();
        assert!(key.len() > 4, "{lock}");
        assert_eq!(
            post(&m, "/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#))
                .await
                .code,
            200
        );

        // etcd's e2e TestV3CurlCampaignNoTLS.
        let c = post(
            &m,
            "/v3/election/campaign",
            &format!(
                r#"{{"name":"{}","value":"{}","lease":"{id}"}}"#,
                b64(b"/election"),
                b64(b"v1")
            ),
        )
        .await
        .json();
        let leader = c["leader"].clone();
        assert_eq!(leader["name"], b64(b"/election").as_str());
        let proclaim = serde_json::json!({"leader": leader, "value": b64(b"v2")});
        assert_eq!(
            post(&m, "/v3/election/proclaim", &proclaim.to_string())
                .await
                .code,
            200
        );
        let l = post(
            &m,
            "/v3/election/leader",
            &format!(r#"{{"name":"{}"}}"#, b64(b"/election")),
        )
        .await
        .json();
        assert_eq!(l["kv"]["value"], b64(b"v2").as_str());
        let resign = serde_json::json!({"leader": leader});
        assert_eq!(
            post(&m, "/v3/election/resign", &resign.to_string())
                .await
                .code,
            200
        );
    })
    .await;
}

/// A watch whose client goes away while its request body is still open
/// gives its stream back: with `--max-concurrent-streams 1` the next
/// gateway call still gets through. oxcd only: against etcd 3.4 this
/// sequence does not complete within the test's deadline.
#[tokio::test]
async fn an_abandoned_stream_gives_its_slot_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if against_other_server() {
        return;
    }
    bounded(async {
        let c = Cluster::builder(1).flags(&["--max-concurrent-streams", "1"]).start().await;
        let m = c.member(0);
        let addr = m.client_url().trim_start_matches("http://").to_string();
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let create = r#"{"create_request":{"key":"Zm9v"}}"#;
            let head = format!(
                "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{create}\r\n",
                create.len()
            );
            s.write_all(head.as_bytes()).await.expect("send");
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("created") {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            drop(s);
            let r = post(m, "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
            assert_eq!(r.code, 200, "{}", r.body);
        }
    })
    .await;
}

/// etcd's access rules for HTTP on the client port: CORS headers on every
/// answer and preflights answered, and `--host-whitelist` refusing plain
/// HTTP for other Host names (DNS rebinding, CVE-2018-5702).
#[tokio::test]
async fn cors_and_host_whitelist() {
    bounded(async {
        let c = Cluster::builder(1)
            .flags(&["--host-whitelist", "localhost,127.0.0.1"])
            .start()
            .await;
        let url = c.member(0).client_url();
        let run = |args: Vec<String>| async move {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-i", "-m", "10"])
                .args(args)
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).to_lowercase()
        };
        let pre = run(vec![
            "-X".into(),
            "OPTIONS".into(),
            format!("{url}/v3/kv/range"),
        ])
        .await;
        assert!(pre.starts_with("http/1.1 200"), "{pre}");
        assert!(pre.contains("access-control-allow-origin: *"), "{pre}");
        let health = run(vec![format!("{url}/health")]).await;
        assert!(
            health.contains("access-control-allow-methods: post, get, options, put, delete"),
            "{health}"
        );
        let refused = run(vec![
            "-H".into(),
            "Host: evil.example".into(),
            format!("{url}/health"),
        ])
        .await;
        assert!(refused.starts_with("http/1.1 421"), "{refused}");
        assert!(refused.contains("cve-2018-5702"), "{refused}");
    })
    .await;
}

/// A connection that never sends a byte is closed after a while (30 s;
/// the test knob shortens it), so idle sockets cannot pile up; one that
/// spoke stays open. oxcd only: etcd keeps silent connections for ever.
#[tokio::test]
async fn silent_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if against_other_server() {
        return;
    }
    bounded(async {
        let (_member, addr) = member_with_knob("OXCD_TEST_IDLE_CONNECTION_TIMEOUT_MS", "300").await;
        let mut silent = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("a silent connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closes without answering");
        // A keep-alive HTTP/1 connection that spoke is served again later.
        let mut talking = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        for _ in 0..2 {
            talking.write_all(req.as_bytes()).await.expect("send");
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("{\"health\":\"true\"}") {
                let n = talking.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
    })
    .await;
}

/// A WebSocket on the gateway as etcd's grpc-websocket-proxy: a socket to
/// `/v3/watch` is a watch stream whose messages are request objects and
/// whose answers come back one text message each; a unary route answers
/// its first message and closes; an unknown route answers "Not Found".
#[tokio::test]
async fn websocket_streams_and_unary_routes() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    bounded(async {
        let m = Member::start().await;
        let ws_url = |path: &str| format!("{}{path}", m.client_url().replacen("http", "ws", 1));
        let (mut watch, _) = tokio_tungstenite::connect_async(ws_url("/v3/watch"))
            .await
            .expect("websocket to /v3/watch");
        watch
            .send(Message::text(r#"{"create_request":{"key":"Zm9v"}}"#))
            .await
            .expect("send");
        let created = next_json(&mut watch).await.expect("created");
        assert_eq!(created["result"]["created"], true, "{created}");
        // A second watch on the same socket, as on a gRPC stream.
        watch
            .send(Message::text(r#"{"create_request":{"key":"YmF6"}}"#))
            .await
            .expect("send");
        let second = next_json(&mut watch).await.expect("created");
        assert_eq!(second["result"]["created"], true, "{second}");
        assert_eq!(second["result"]["watch_id"], "1", "{second}");

        assert_eq!(
            post(&m, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#)
                .await
                .code,
            200
        );
        let event = next_json(&mut watch).await.expect("event");
        assert_eq!(
            event["result"]["events"][0]["kv"]["value"], "YmFy",
            "{event}"
        );
        watch.close(None).await.expect("close");

        // Unary: the first message is the request; the answer comes back
        // and the socket closes.
        let (mut range, _) = tokio_tungstenite::connect_async(ws_url("/v3/kv/range"))
            .await
            .expect("websocket to /v3/kv/range");
        range
            .send(Message::text(r#"{"key":"Zm9v"}"#))
            .await
            .expect("send");
        let got = next_json(&mut range).await.expect("range answer");
        assert_eq!(got["kvs"][0]["value"], "YmFy", "{got}");
        assert!(next_json(&mut range).await.is_none(), "the socket closes");

        let (mut nowhere, _) = tokio_tungstenite::connect_async(ws_url("/v3/no/such"))
            .await
            .expect("websocket to an unknown route");
        nowhere.send(Message::text("{}")).await.ok();
        let text = next_text(&mut nowhere).await.expect("an answer");
        assert_eq!(text.trim(), "Not Found");
    })
    .await;
}

/// The next text message of a socket, `None` once it closes.
async fn next_text<S>(ws: &mut S) -> Option<String>
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Binary(b)) => return Some(String::from_utf8_lossy(&b).into_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn next_json<S>(ws: &mut S) -> Option<Value>
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    let text = next_text(ws).await?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// A client that trickles the body of a unary call is answered 408 and
/// disconnected after a while (30 s; the test knob shortens it), so slow
/// bodies cannot hold connections for ever. oxcd only: etcd waits for
/// ever (`bench/slow-clients.sh`, scenario `body`).
#[tokio::test]
async fn a_trickled_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if against_other_server() {
        return;
    }
    bounded(async {
        let (c, addr) = member_with_knob("OXCD_TEST_BODY_READ_TIMEOUT_MS", "300").await;
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n{{\"key\":"
        );
        s.write_all(head.as_bytes()).await.expect("send");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .await
            .expect("read until the server closes");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        // Nothing was written.
        let r = post(c.member(0), "/v3/kv/range", r#"{"key":"Zm9v"}"#).await;
        assert_eq!(r.code, 200, "{}", r.body);
        assert!(r.json().get("kvs").is_none(), "{}", r.body);
    })
    .await;
}
