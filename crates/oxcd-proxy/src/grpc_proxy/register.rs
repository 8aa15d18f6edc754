//! `--resolver-prefix` / `--resolver-ttl`: the proxy registers its
//! advertised URL in the cluster under `<prefix>/<url>`, on a lease it
//! keeps alive, in the format of etcd's endpoint manager
//! (`{"Op":0,"Addr":…,"Metadata":"{\"name\":…}"}`), so clients resolving
//! the prefix — and `MemberList` through any registered proxy — find every
//! live proxy. A lost lease is registered again, at most once a second.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::lease_client::LeaseClient;
use oxcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, Member, PutRequest, RangeRequest,
};
use tonic::{Request, Status};

use super::namespace::Namespace;
use super::upstream::{upcall, Upstream};

/// This host's name, the `name` of a registered proxy.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The registration record's value.
fn record(addr: &str) -> String {
    // Written by hand to keep etcd's field order (a JSON map would sort).
    let meta = serde_json::json!({ "name": hostname() }).to_string();
    format!(
        r#"{{"Op":0,"Addr":{},"Metadata":{}}}"#,
        serde_json::Value::from(addr),
        serde_json::Value::from(meta)
    )
}

/// Keeps `addr` registered under `prefix` with a `ttl`-second lease until
/// the task is dropped.
pub async fn keep_registered(
    up: Arc<Upstream>,
    ns: Namespace,
    prefix: String,
    addr: String,
    ttl: i64,
) {
    loop {
        match register_once(&up, &ns, &prefix, &addr, ttl).await {
            Ok(()) => super::log(
                "warn",
                "session expired; possible network partition or server restart",
                serde_json::json!({ "prefix": prefix }),
            ),
            Err(e) => super::log(
                "warn",
                "failed to create a session",
                serde_json::json!({ "error": e.message() }),
            ),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One lease: grant, put, keep alive until the lease is gone.
async fn register_once(
    up: &Upstream,
    ns: &Namespace,
    prefix: &str,
    addr: &str,
    ttl: i64,
) -> Result<(), Status> {
    let (_, ch) = up.channel();
    let lease = LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await?
        .into_inner();
    let key = format!("{prefix}/{addr}");
    let mut put = PutRequest {
        key: Bytes::from(key.into_bytes()),
        value: Bytes::from(record(addr).into_bytes()),
        lease: lease.id,
        ..Default::default()
    };
    ns.put_req(&mut put)?;
    KvClient::new(ch.clone()).put(put).await?;
    super::log(
        "info",
        "registered session with lease",
        serde_json::json!({ "addr": addr, "lease-ttl": ttl }),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut answers = LeaseClient::new(ch)
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let every = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    loop {
        if tx
            .send(LeaseKeepAliveRequest { id: lease.id })
            .await
            .is_err()
        {
            return Ok(());
        }
        match answers.message().await? {
            Some(a) if a.ttl > 0 => {}
            _ => return Ok(()),
        }
        tokio::time::sleep(every).await;
    }
}

/// The proxies registered under `prefix`, as members with one client URL.
pub async fn registered<T>(
    up: &Upstream,
    ns: &Namespace,
    prefix: &str,
    from: &Request<T>,
) -> Result<Vec<Member>, Status> {
    let start = format!("{prefix}/");
    let mut end = start.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut r = RangeRequest {
        key: Bytes::from(start.into_bytes()),
        range_end: Bytes::from(end),
        serializable: true,
        ..Default::default()
    };
    ns.range_req(&mut r)?;
    let kvs = up
        .unary(true, upcall!(KvClient, range, from, r))
        .await?
        .into_inner()
        .kvs;
    Ok(kvs
        .iter()
        .filter_map(|kv| {
            let v: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
            let addr = v.get("Addr")?.as_str()?.to_string();
            let name = v
                .get("Metadata")
                .and_then(|m| m.as_str())
                .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
                .and_then(|m| m.get("name")?.as_str().map(str::to_string))
                .unwrap_or_default();
            Some(Member {
                name,
                client_ur_ls: vec![addr],
                ..Default::default()
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_etcds_endpoint_update() {
        let r = record("127.0.0.1:23790");
        assert!(
            r.starts_with(r#"{"Op":0,"Addr":"127.0.0.1:23790","Metadata":"{\"name\":"#),
            "{r}"
        );
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["Op"], 0);
        assert_eq!(v["Addr"], "127.0.0.1:23790");
        let meta: serde_json::Value =
            serde_json::from_str(v["Metadata"].as_str().unwrap()).unwrap();
        assert!(meta.get("name").is_some());
    }
}
