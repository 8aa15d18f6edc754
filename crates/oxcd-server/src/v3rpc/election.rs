//! The `v3electionpb.Election` service (etcd
//! `etcdserver/api/v3election/election.go`), running the election recipe
//! of `clientv3/concurrency/election.go` on this member's own key space.
//!
//! An election named `n` is the set of keys under `n/`; each candidate owns
//! `n/<lease in hex>` (its value is what it proclaims), and the leader is
//! the candidate whose key was created first. A [`LeaderKey`] proves
//! leadership by the key's create revision: Proclaim and Resign act only
//! while that very key still exists.
//!
//! Every error is sent with code Unknown and its etcd text (see
//! [`to_status`]).

use crate::apply::Request;
use crate::auth::Identity;
use crate::core::Core;
use crate::v3rpc::concurrency::{
    self, created_at, delete_op, first_created, get_op, is_delete, put_op, range_kvs,
    session_lease, to_status, wait_deletes, Cleanup, KeyWatch,
};
use bytes::Bytes;
use futures::Stream;
use oxcd_api::etcdserverpb::{ResponseHeader, TxnRequest};
use oxcd_api::mvccpb::KeyValue;
use oxcd_api::v3electionpb::election_server::Election;
use oxcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use oxcd_api::EtcdError;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// `ErrElectionNotLeader`.
const NOT_LEADER: &str = "election: not leader";
/// `ErrElectionNoLeader`.
const NO_LEADER: &str = "election: no leader";
/// `ErrMissingLeaderKey` of the election server.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

/// gRPC handler for election requests.
pub struct ElectionService {
    core: Arc<Core>,
}

impl ElectionService {
    /// Creates the service over shared member state.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// The response stream of one Observe call.
pub type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = ObserveStream;

    /// Waits until the caller leads. Cancel-safe: a caller that gives up
    /// while waiting resigns, as etcd's election does on a cancelled wait.
    async fn campaign(
        &self,
        request: GrpcRequest<CampaignRequest>,
    ) -> Result<GrpcResponse<CampaignResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let r = request.into_inner();
        let resp = campaign(&self.core, &who, r).await.map_err(to_status)?;
        Ok(GrpcResponse::new(resp))
    }

    async fn proclaim(
        &self,
        request: GrpcRequest<ProclaimRequest>,
    ) -> Result<GrpcResponse<ProclaimResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        let lease = session_lease(&self.core, &who, leader.lease)
            .await
            .map_err(to_status)?;
        let header = proclaim(&self.core, &who, &leader.key, leader.rev, lease, r.value)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: GrpcRequest<LeaderRequest>,
    ) -> Result<GrpcResponse<LeaderResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let prefix = [&request.into_inner().name[..], b"/"].concat();
        let resp = concurrency::range(&self.core, &who, first_created(&prefix))
            .await
            .map_err(to_status)?;
        let kv = resp.kvs.into_iter().next();
        if kv.is_none() {
            return Err(Status::unknown(NO_LEADER));
        }
        Ok(GrpcResponse::new(LeaderResponse {
            header: resp.header,
            kv,
        }))
    }

    async fn observe(
        &self,
        request: GrpcRequest<LeaderRequest>,
    ) -> Result<GrpcResponse<Self::ObserveStream>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let prefix = [&request.into_inner().name[..], b"/"].concat();
        let observer = Observer {
            core: self.core.clone(),
            who,
            prefix,
            out: VecDeque::new(),
            leader: None,
            done: false,
        };
        let stream = futures::stream::unfold(observer, |mut o| async move {
            o.next().await.map(|m| (Ok(m), o))
        });
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: GrpcRequest<ResignRequest>,
    ) -> Result<GrpcResponse<ResignResponse>, Status> {
        let who = self.core.who_of(&request).await.map_err(to_status)?;
        let r = request.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER_KEY))?;
        // etcd opens a session here too, granting a lease for lease 0.
        session_lease(&self.core, &who, leader.lease)
            .await
            .map_err(to_status)?;
        let header = resign(&self.core, &who, &leader.key, leader.rev)
            .await
            .map_err(to_status)?;
        Ok(GrpcResponse::new(ResignResponse {
            header: Some(header),
        }))
    }
}

/// `Election.Campaign`: puts the candidate's key with its value (or, if
/// this lease is already a candidate, proclaims the value), then waits out
/// every older candidate.
async fn campaign(
    core: &Arc<Core>,
    who: &Identity,
    r: CampaignRequest,
) -> Result<CampaignResponse, EtcdError> {
    let lease = session_lease(core, who, r.lease).await?;
    let prefix = [&r.name[..], b"/"].concat();
    let key = concurrency::candidate_key(&prefix, lease);
    let t = TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![put_op(&key, r.value.clone(), lease)],
        failure: vec![get_op(&key)],
    };
    let resp = concurrency::txn(core, who, t).await?;
    let header = resp.header.unwrap_or_else(|| core.header(0));
    let mut rev = header.revision;
    if !resp.succeeded {
        let existing = range_kvs(&resp, 0)?.first();
        if let Some(kv) = existing {
            rev = kv.create_revision;
            if kv.value != r.value {
                if let Err(e) = proclaim(core, who, &key, rev, lease, r.value.clone()).await {
                    let _ = resign(core, who, &key, rev).await;
                    return Err(e);
                }
            }
        }
    }
    let resign_req = Request::Txn(resign_txn(&key, rev));
    let cleanup = Cleanup::new(core.clone(), who.clone(), resign_req);
    let waited = wait_deletes(core, who, &prefix, rev - 1).await;
    // Only a cancelled wait resigns; after any other failure the key stays.
    cleanup.disarm();
    waited?;
    Ok(CampaignResponse {
        header: Some(header),
        leader: Some(LeaderKey {
            name: r.name,
            key,
            rev,
            lease,
        }),
    })
}

/// `Election.Proclaim`: sets the leader key's value, if it is still the
/// key created at `rev`.
async fn proclaim(
    core: &Core,
    who: &Identity,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<ResponseHeader, EtcdError> {
    let t = TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![put_op(key, value, lease)],
        failure: vec![],
    };
    let resp = concurrency::txn(core, who, t).await?;
    if !resp.succeeded {
        return Err(EtcdError::Unknown(NOT_LEADER.into()));
    }
    Ok(resp.header.unwrap_or_else(|| core.header(0)))
}

/// `Election.Resign`: deletes the leader key if it is still the key
/// created at `rev`.
async fn resign(
    core: &Core,
    who: &Identity,
    key: &Bytes,
    rev: i64,
) -> Result<ResponseHeader, EtcdError> {
    let resp = concurrency::txn(core, who, resign_txn(key, rev)).await?;
    Ok(resp.header.unwrap_or_else(|| core.header(0)))
}

fn resign_txn(key: &Bytes, rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![delete_op(key)],
        failure: vec![],
    }
}

/// One Observe call (`Election.observe`): reports the leader, then every
/// new value of its key; when the key goes, finds (or waits for) the next
/// leader. Owned by the response stream, so a client that goes away drops
/// it, and with it its watcher.
struct Observer {
    core: Arc<Core>,
    /// The caller: every read is made on its behalf.
    who: Identity,
    prefix: Vec<u8>,
    /// Responses ready to send, in order.
    out: VecDeque<LeaderResponse>,
    /// The watch on the current leader's key, from just after the revision
    /// last reported; `None` while there is no known leader.
    leader: Option<KeyWatch>,
    /// The stream ends once `out` is drained.
    done: bool,
}

impl Observer {
    /// The next message; `None` ends the stream. As in etcd, a failed read
    /// or watch ends the stream without an error.
    async fn next(&mut self) -> Option<LeaderResponse> {
        loop {
            if let Some(m) = self.out.pop_front() {
                return Some(m);
            }
            if self.done {
                return None;
            }
            let step = match self.leader.take() {
                None => self.find_leader().await,
                Some(watch) => self.follow_leader(watch).await,
            };
            if let Err(e) = step {
                tracing::debug!(error = %e.message(), "election observe ends");
                self.done = true;
            }
        }
    }

    /// Reads the leader, or waits for the first PUT under the prefix;
    /// queues it and starts watching its key.
    async fn find_leader(&mut self) -> Result<(), EtcdError> {
        let resp = concurrency::range(&self.core, &self.who, first_created(&self.prefix)).await?;
        let header = resp.header.unwrap_or_else(|| self.core.header(0));
        let (rev, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (header.revision, kv),
            None => self.first_put(header.revision).await?,
        };
        let watch = KeyWatch::new(&self.core.watchable, &kv.key, &[], rev + 1)?;
        self.push(rev, kv);
        self.leader = Some(watch);
        Ok(())
    }

    /// The first PUT under the prefix from `rev` on, with its revision.
    async fn first_put(&self, rev: i64) -> Result<(i64, KeyValue), EtcdError> {
        let end = concurrency::prefix_end(&self.prefix);
        let mut watch = KeyWatch::new(&self.core.watchable, &self.prefix, &end, rev)?;
        loop {
            for (_, ev) in watch.next().await? {
                if let (false, Some(kv)) = (is_delete(&ev), ev.kv.as_ref()) {
                    return Ok((kv.mod_revision, kv.clone()));
                }
            }
        }
    }

    /// Queues every new value of the leader key; forgets the leader when
    /// its key is deleted.
    async fn follow_leader(&mut self, mut watch: KeyWatch) -> Result<(), EtcdError> {
        for (rev, ev) in watch.next().await? {
            if is_delete(&ev) {
                return Ok(());
            }
            if let Some(kv) = ev.kv.as_ref() {
                self.push(rev, kv.clone());
            }
        }
        self.leader = Some(watch);
        Ok(())
    }

    fn push(&mut self, rev: i64, kv: KeyValue) {
        self.out.push_back(LeaderResponse {
            header: Some(self.core.header(rev)),
            kv: Some(kv),
        });
    }
}
