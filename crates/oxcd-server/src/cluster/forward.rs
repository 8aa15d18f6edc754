//! Requests only the leader can answer, forwarded to it over the peer URLs:
//! lease renewals and TimeToLive (the leader's lessor alone tracks expiry;
//! etcd's `LeaseRenew` / `LeaseTimeToLive` in `etcdserver/v3_server.go`
//! with `lease/leasehttp`) and learner promotion (only the leader knows
//! the learner's progress; `PromoteMember` in `etcdserver/server.go`).
//!
//! Client side, [`Forwarder::to_leader`]: wait for a leader, try each of
//! its peer URLs, and go on until an answer, an error the caller calls
//! final, or the request timeout (`etcdserver: request timed out`). No
//! leader for the whole time gives `etcdserver: no leader`, as etcd's
//! `waitLeader` does.
//!
//! Server side, [`ForwardService`] (`oxcdpeerpb.Forward` on the peer
//! listener): a member that is not the leader refuses with
//! `etcdserver: not leader`, which makes the caller look again.

use crate::core::Core;
use oxcd_api::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberPromoteRequest, MemberPromoteResponse,
};
use oxcd_api::oxcdpeerpb::forward_client::ForwardClient;
use oxcd_api::oxcdpeerpb::forward_server::{Forward, ForwardServer};
use oxcd_api::EtcdError;
use oxcd_raft::transport::Transport;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// How a round over a member's peer URLs ended.
enum Tried<T> {
    /// An answer, a final error, or the deadline.
    Answered(Result<T, EtcdError>),
    /// No URL answered; the last error, if any.
    Unanswered(Option<EtcdError>),
}

/// A forwarded request as etcd's peer protocol carries it: a protobuf
/// body posted to `path`, and how to read the answer.
pub struct HttpCall<T> {
    /// `/leases`, `/leases/internal` or `/members/promote/<id>`.
    pub path: String,
    /// The body's media type.
    pub content_type: &'static str,
    /// The encoded request.
    pub body: bytes::Bytes,
    /// Reads the answer from its status and body.
    pub decode: fn(http::StatusCode, &[u8]) -> Result<T, EtcdError>,
}

/// Pause before asking again when no leader URL answered.
const RETRY: Duration = Duration::from_millis(50);

/// Sends requests to the current leader.
pub struct Forwarder {
    transport: Arc<Transport>,
    /// One channel per peer URL; tonic channels reconnect by themselves.
    channels: Mutex<HashMap<String, Channel>>,
    /// etcd's request timeout (5 s + 2 election timeouts).
    timeout: Duration,
}

impl Forwarder {
    /// Forwards over `transport`'s peer connections, giving up after
    /// `timeout`.
    pub fn new(transport: Arc<Transport>, timeout: Duration) -> Self {
        Self {
            transport,
            channels: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Runs `call` against the leader until it answers or fails with an
    /// error `is_final` accepts.
    ///
    /// Cancel-safe: dropping the future abandons the request.
    ///
    /// # Errors
    /// The final error; [`EtcdError::NoLeader`] if no leader was known
    /// before the timeout; [`EtcdError::Timeout`] if the leader did not
    /// answer in time.
    pub async fn to_leader<T, F, Fut>(
        &self,
        core: &Core,
        call: F,
        is_final: fn(&EtcdError) -> bool,
    ) -> Result<T, EtcdError>
    where
        F: Fn(ForwardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.to_leader_or_etcd(core, call, None, is_final).await
    }

    /// [`Self::to_leader`], with `http` as the request when the leader is
    /// an etcd member (etcd's `/leases` endpoints on its peer URLs).
    pub async fn to_leader_or_etcd<T, F, Fut>(
        &self,
        core: &Core,
        call: F,
        http: Option<&HttpCall<T>>,
        is_final: fn(&EtcdError) -> bool,
    ) -> Result<T, EtcdError>
    where
        F: Fn(ForwardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let leader = wait_leader(core, deadline).await?;
            let urls = core
                .members
                .get(leader)
                .map(|m| m.peer_urls)
                .unwrap_or_default();
            let tried = match http.filter(|_| self.transport.speaks_etcd(leader)) {
                Some(http) => self.try_urls_http(urls, deadline, http, is_final).await,
                None => self.try_urls(urls, deadline, &call, is_final).await,
            };
            if let Tried::Answered(r) = tried {
                return r;
            }
            if Instant::now() + RETRY >= deadline {
                return Err(EtcdError::Timeout);
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Whether member `id` speaks only etcd's peer protocol.
    pub fn speaks_etcd(&self, id: u64) -> bool {
        self.transport.speaks_etcd(id)
    }

    /// `GET /members/hashkv` on etcd member `id` (etcd's corruption check):
    /// a JSON `HashKVRequest` body, a JSON answer.
    ///
    /// # Errors
    /// The member's refusal (its text), or no URL answering in `timeout`.
    pub async fn etcd_hash_kv(
        &self,
        core: &Core,
        id: u64,
        rev: i64,
        timeout: Duration,
    ) -> Result<oxcd_api::etcdserverpb::HashKvResponse, EtcdError> {
        let urls = core
            .members
            .get(id)
            .map(|m| m.peer_urls)
            .unwrap_or_default();
        let body = bytes::Bytes::from(serde_json::json!({ "revision": rev }).to_string());
        let mut last = EtcdError::Timeout;
        for url in urls {
            let call = self.transport.call(
                &url,
                http::Method::GET,
                "/members/hashkv",
                body.clone(),
                "application/json",
            );
            match tokio::time::timeout(timeout, call).await {
                Err(_) => return Err(EtcdError::Timeout),
                Ok(Err(e)) => last = EtcdError::Unknown(e),
                Ok(Ok((status, b))) if status == http::StatusCode::OK => {
                    return super::peer_http::hash_kv_from_json(&b)
                        .ok_or_else(|| EtcdError::Unknown("undecodable hashKV answer".into()))
                }
                Ok(Ok((_, b))) => {
                    return Err(EtcdError::Unknown(
                        String::from_utf8_lossy(&b).trim_end().to_string(),
                    ))
                }
            }
        }
        Err(last)
    }

    /// Runs `call` once against member `id`, on the first of its peer URLs
    /// that answers within `timeout`.
    ///
    /// # Errors
    /// The member's error; [`EtcdError::Timeout`] if none of its URLs
    /// answered in time.
    pub async fn to_member<T, F, Fut>(
        &self,
        core: &Core,
        id: u64,
        timeout: Duration,
        call: F,
    ) -> Result<T, EtcdError>
    where
        F: Fn(ForwardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + timeout;
        let urls = core
            .members
            .get(id)
            .map(|m| m.peer_urls)
            .unwrap_or_default();
        match self.try_urls(urls, deadline, &call, |_| false).await {
            Tried::Answered(r) => r,
            Tried::Unanswered(last) => Err(last.unwrap_or(EtcdError::Timeout)),
        }
    }

    /// Tries `urls` in turn until one answers, or fails with an error
    /// `is_final` accepts, or `deadline` passes (`Timeout`).
    async fn try_urls<T, F, Fut>(
        &self,
        urls: Vec<String>,
        deadline: Instant,
        call: &F,
        is_final: impl Fn(&EtcdError) -> bool,
    ) -> Tried<T>
    where
        F: Fn(ForwardClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for url in urls {
            let attempt = async {
                let channel = self.channel(&url).await.ok()?;
                Some(call(ForwardClient::new(channel)).await)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Tried::Answered(Err(EtcdError::Timeout)),
                Ok(Some(Ok(v))) => return Tried::Answered(Ok(v)),
                Ok(Some(Err(status))) => {
                    let e = EtcdError::from_status(&status)
                        .unwrap_or_else(|| EtcdError::Unknown(status.message().into()));
                    if is_final(&e) {
                        return Tried::Answered(Err(e));
                    }
                    last = Some(e);
                }
                Ok(None) => {}
            }
        }
        Tried::Unanswered(last)
    }

    /// [`Self::try_urls`] over etcd's HTTP peer endpoints.
    async fn try_urls_http<T>(
        &self,
        urls: Vec<String>,
        deadline: Instant,
        http: &HttpCall<T>,
        is_final: impl Fn(&EtcdError) -> bool,
    ) -> Tried<T> {
        let mut last = None;
        for url in urls {
            let attempt = self.transport.call(
                &url,
                http::Method::POST,
                &http.path,
                http.body.clone(),
                http.content_type,
            );
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Tried::Answered(Err(EtcdError::Timeout)),
                Ok(Err(_)) => {}
                Ok(Ok((status, body))) => match (http.decode)(status, &body) {
                    Ok(v) => return Tried::Answered(Ok(v)),
                    Err(e) if is_final(&e) => return Tried::Answered(Err(e)),
                    Err(e) => last = Some(e),
                },
            }
        }
        Tried::Unanswered(last)
    }

    async fn channel(&self, url: &str) -> Result<Channel, tonic::transport::Error> {
        if let Some(c) = lock(&self.channels).get(url) {
            return Ok(c.clone());
        }
        let c = self.transport.channel(url).await?;
        lock(&self.channels).insert(url.to_string(), c.clone());
        Ok(c)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A map of cached channels cannot be left half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The leader's ID, waiting (until `deadline`) for one to be elected.
async fn wait_leader(core: &Core, deadline: Instant) -> Result<u64, EtcdError> {
    let mut status = core.writes.node().watch_status();
    let waited = tokio::time::timeout_at(deadline, status.wait_for(|s| s.leader != 0)).await;
    match waited {
        Ok(Ok(s)) => Ok(s.leader),
        Ok(Err(_)) => Err(EtcdError::Stopped),
        Err(_) => Err(EtcdError::NoLeader),
    }
}

/// The `oxcdpeerpb.Forward` routes, for the peer listener. Routed by hand,
/// not through `tonic::service::Routes`, whose router brings a fallback
/// that the peer router already has.
pub fn routes(core: Arc<Core>) -> axum::Router {
    use tonic::server::NamedService;
    let path = format!("/{}/{{*method}}", ForwardServer::<ForwardService>::NAME);
    axum::Router::new().route_service(&path, ForwardServer::new(ForwardService { core }))
}

/// Answers forwarded requests when this member leads.
pub struct ForwardService {
    core: Arc<Core>,
}

impl ForwardService {
    fn require_leader(&self) -> Result<(), Status> {
        if self.core.writes.is_leader() {
            Ok(())
        } else {
            Err(EtcdError::NotLeader.into())
        }
    }
}

#[tonic::async_trait]
impl Forward for ForwardService {
    async fn lease_renew(
        &self,
        r: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.require_leader()?;
        let id = r.into_inner().id;
        let ttl = crate::v3rpc::lease::renew_as_leader(&self.core, id).await?;
        Ok(Response::new(LeaseKeepAliveResponse {
            header: Some(self.core.header(self.core.store.rev())),
            id,
            ttl,
        }))
    }

    async fn lease_time_to_live(
        &self,
        r: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.require_leader()?;
        let resp = crate::v3rpc::lease::time_to_live_as_leader(&self.core, r.into_inner()).await?;
        Ok(Response::new(resp))
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let members =
            crate::v3rpc::cluster::promote_as_leader(&self.core, r.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.core.header(0)),
            members,
        }))
    }

    async fn hash_kv(
        &self,
        r: Request<oxcd_api::etcdserverpb::HashKvRequest>,
    ) -> Result<Response<oxcd_api::etcdserverpb::HashKvResponse>, Status> {
        let rev = r.into_inner().revision;
        let store = self.core.store.clone();
        let h = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| Status::internal(format!("hash task: {e}")))?
            .map_err(crate::apply::mvcc_error)?;
        Ok(Response::new(oxcd_api::etcdserverpb::HashKvResponse {
            header: Some(self.core.header(h.current_rev)),
            hash: h.hash,
            compact_revision: h.compact_rev,
            ..Default::default()
        }))
    }
}
