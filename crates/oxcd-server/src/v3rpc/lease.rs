//! The `etcdserverpb.Lease` service (etcd's `v3rpc/lease.go` and the
//! lease half of `etcdserver/v3_server.go`).
//!
//! Grant and Revoke go through the write path. KeepAlive and TimeToLive
//! are answered by the leader's lessor, which alone tracks expiry:
//! renewals are not replicated, so any other member forwards them to the
//! leader ([`crate::cluster::forward`]), as etcd's `LeaseRenew` and
//! `LeaseTimeToLive` do. Leases lists the local lessor, as etcd does.

use crate::core::Core;
use crate::lessor;
use futures::Stream;
use oxcd_api::etcdserverpb::lease_server::Lease;
use oxcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use oxcd_api::oxcdpeerpb::forward_client::ForwardClient;
use oxcd_api::EtcdError;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status, Streaming};

/// Server-chosen lease IDs are request IDs masked to 63 bits, so they are
/// positive.
const LEASE_ID_MASK: u64 = (1 << 63) - 1;

/// How long the leader waits for its applied index to reach its commit
/// index before answering a lease request (etcd's `applyTimeout`).
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// The keepalive response stream.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// gRPC handler for lease requests.
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    /// Creates the service over shared member state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// A server-chosen ID for a grant: non-zero and not in use.
    fn new_lease_id(&self) -> i64 {
        loop {
            let id = (self.core.writes.next_request_id() & LEASE_ID_MASK) as i64;
            if id != 0 && !self.core.lessor.contains(id) {
                return id;
            }
        }
    }
}

impl LeaseService {
    /// With auth on, listing a lease's keys needs READ on each of them
    /// (etcd's later `checkLeaseTimeToLive`, the fix of CVE-2023-32082;
    /// etcd 3.4 lists them to anyone). Key attachments are replicated, so
    /// this member's lessor knows them without asking the leader.
    async fn permit_key_listing(
        &self,
        request: &GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<(), Status> {
        let view = self.core.auth_view();
        if !view.enabled() {
            return Ok(());
        }
        let who = self.core.who_of(request).await?;
        for key in self
            .core
            .lessor
            .keys(request.get_ref().id)
            .unwrap_or_default()
        {
            view.check_key(&who, crate::auth::permissions::Access::Read, &key, b"")?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: GrpcRequest<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let mut r = request.into_inner();
        if r.id == 0 {
            r.id = self.new_lease_id();
        }
        let mut resp = self.core.writes.propose_as(r, &who).await?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: GrpcRequest<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        let who = self.core.who_of(&request).await?;
        let r = request.into_inner();
        let mut resp = self.core.writes.propose_as(r, &who).await?;
        self.core.stamp(&mut resp.header);
        Ok(GrpcResponse::new(resp))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Answers each `{ID}` with `{header, ID, TTL}`: the granted TTL, or 0
    /// for an unknown, revoked or expired lease. The stream ends when the
    /// client closes its side; dropping it stops everything.
    async fn lease_keep_alive(
        &self,
        request: GrpcRequest<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<Self::LeaseKeepAliveStream>, Status> {
        let core = self.core.clone();
        let out = futures::stream::unfold(Some(request.into_inner()), move |inbound| {
            let core = core.clone();
            async move {
                let mut inbound = inbound?;
                let req = match inbound.message().await {
                    Ok(Some(req)) => req,
                    Ok(None) => return None,
                    Err(status) => {
                        super::metrics::stream_receive_failed(&status, "lease-keepalive");
                        return None;
                    }
                };
                let answer = keep_alive_once(&core, req.id).await;
                let next = answer.is_ok().then_some(inbound);
                Some((answer, next))
            }
        });
        Ok(GrpcResponse::new(Box::pin(out)))
    }

    async fn lease_time_to_live(
        &self,
        request: GrpcRequest<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        if request.get_ref().keys {
            self.permit_key_listing(&request).await?;
        }
        let r = request.into_inner();
        let id = r.id;
        let answer = if self.core.writes.is_leader() {
            time_to_live_as_leader(&self.core, r).await
        } else {
            let http = crate::cluster::peer_http::time_to_live_call(r);
            let call = |mut c: ForwardClient<_>| async move {
                Ok(c.lease_time_to_live(r).await?.into_inner())
            };
            let is_final = |e: &EtcdError| *e == EtcdError::LeaseNotFound;
            self.core
                .forwarder
                .to_leader_or_etcd(&self.core, call, Some(&http), is_final)
                .await
        };
        let header = Some(self.core.header(self.core.store.rev()));
        let resp = match answer {
            Ok(resp) => LeaseTimeToLiveResponse { header, ..resp },
            // etcd answers an unknown lease with TTL -1, not an error.
            Err(EtcdError::LeaseNotFound) => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                ..Default::default()
            },
            Err(e) => return Err(e.into()),
        };
        Ok(GrpcResponse::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: GrpcRequest<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        let leases = self
            .core
            .lessor
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(GrpcResponse::new(LeaseLeasesResponse {
            header: Some(self.core.header(self.core.store.rev())),
            leases,
        }))
    }
}

/// One keepalive answer. The header is taken before the renewal, so its
/// revision is never past a revoke the renewal lost to (etcd does the same).
async fn keep_alive_once(core: &Core, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let header = Some(core.header(core.store.rev()));
    let renewed = if core.writes.is_leader() {
        renew_as_leader(core, id).await
    } else {
        let call = |mut c: ForwardClient<_>| async move {
            Ok(c.lease_renew(LeaseKeepAliveRequest { id })
                .await?
                .into_inner()
                .ttl)
        };
        let is_final = |e: &EtcdError| *e == EtcdError::LeaseNotFound;
        let http = crate::cluster::peer_http::renew_call(id);
        core.forwarder
            .to_leader_or_etcd(core, call, Some(&http), is_final)
            .await
    };
    let ttl = match renewed {
        Ok(ttl) => ttl,
        Err(EtcdError::LeaseNotFound) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(LeaseKeepAliveResponse { header, id, ttl })
}

/// Renews lease `id` on this member's lessor, which must be the leader's;
/// answers its granted TTL.
///
/// # Errors
/// [`EtcdError::LeaseNotFound`], [`EtcdError::TimeoutWaitAppliedIndex`],
/// or a timeout waiting for an expired lease's revoke.
pub(crate) async fn renew_as_leader(core: &Core, id: i64) -> Result<i64, EtcdError> {
    wait_applied(core).await?;
    // A recorded remaining TTL is reset through raft before the renewal,
    // so no later leader counts from it (etcd 3.5's `Renew`).
    if let Some(reset) = core.lessor.renewal_checkpoint(id) {
        lessor::propose_checkpoint(&core.writes, reset).await;
    }
    core.lessor.renew(id).await
}

/// Lease `r.id`'s remaining TTL on this member's lessor, which must be the
/// leader's.
///
/// # Errors
/// [`EtcdError::LeaseNotFound`] or [`EtcdError::TimeoutWaitAppliedIndex`].
pub(crate) async fn time_to_live_as_leader(
    core: &Core,
    r: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, EtcdError> {
    wait_applied(core).await?;
    let t = core
        .lessor
        .time_to_live(r.id, r.keys)
        .ok_or(EtcdError::LeaseNotFound)?;
    Ok(LeaseTimeToLiveResponse {
        header: Some(core.header(core.store.rev())),
        id: r.id,
        ttl: t.ttl,
        granted_ttl: t.granted_ttl,
        keys: t.keys.into_iter().map(Into::into).collect(),
    })
}

/// Waits until what was committed when the request arrived is applied, so
/// the lessor has seen every grant and revoke before it (etcd's
/// `waitAppliedIndex`).
async fn wait_applied(core: &Core) -> Result<(), EtcdError> {
    let commit = core.writes.status().commit;
    match tokio::time::timeout(APPLY_WAIT, core.writes.wait_applied(commit)).await {
        Ok(r) => r,
        Err(_) => Err(EtcdError::TimeoutWaitAppliedIndex),
    }
}
