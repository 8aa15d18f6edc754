//! A minimal etcd v3 client over tonic and oxcd-api's generated types:
//! one lazily connected channel per member, the four KV calls, lease
//! grant, status and the conversions of responses into [`history`] terms.
//!
//! Written against the wire types (not a client library) so that every
//! field the checkers need (header revision, mod revision) is visible, and
//! nothing retries behind the checker's back: a retried write would make
//! one recorded operation two applied ones.
//!
//! [`history`]: crate::history

use std::time::Duration;

use oxcd_api::etcdserverpb::{
    cluster_client::ClusterClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, response_op, CompactionRequest, Compare,
    DefragmentRequest, DeleteRangeRequest, LeaseGrantRequest, Member, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberRemoveRequest, PutRequest, RangeRequest,
    RangeResponse, RequestOp, StatusRequest, StatusResponse, TxnRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::history::{Kv, Outcome, Request, Response, TxnCompare};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connected channel to one member. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MemberClient {
    /// `http://host:port`.
    pub url: String,
    channel: Channel,
}

impl MemberClient {
    /// A channel to `url` that connects on first use and reconnects after
    /// failures; every request is bounded by `timeout`.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(url: &str, timeout: Duration) -> Result<MemberClient, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad endpoint {url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .tcp_nodelay(true);
        Ok(MemberClient {
            url: url.to_string(),
            channel: endpoint.connect_lazy(),
        })
    }

    /// The underlying channel (for the watch stream).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs one request and classifies its outcome. Cancel-safe: dropping
    /// the future abandons the request (its outcome is then unknown).
    pub async fn execute(&self, request: &Request) -> Outcome {
        let is_write = !matches!(request, Request::Get { .. });
        let result = match request {
            Request::Put { key, value, lease } => self.put(key, value, *lease).await,
            Request::Get { key, serializable } => self.get(key, *serializable).await,
            Request::Delete { key } => self.delete(key).await,
            Request::Txn {
                key,
                compare,
                value,
            } => self.txn(key, compare, value).await,
            Request::LeaseGrant { ttl } => self.lease_grant(*ttl).await,
        };
        match result {
            Ok(response) => Outcome::Ok { response },
            Err(status) => classify(&status, is_write),
        }
    }

    async fn put(&self, key: &str, value: &str, lease: i64) -> Result<Response, tonic::Status> {
        let req = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            lease,
            ..Default::default()
        };
        let resp = KvClient::new(self.channel()).put(req).await?.into_inner();
        Ok(Response::Put {
            revision: header_revision(resp.header.as_ref())?,
        })
    }

    async fn get(&self, key: &str, serializable: bool) -> Result<Response, tonic::Status> {
        let req = RangeRequest {
            key: key.as_bytes().to_vec().into(),
            serializable,
            ..Default::default()
        };
        let resp = KvClient::new(self.channel()).range(req).await?.into_inner();
        range_to_get(&resp)
    }

    async fn delete(&self, key: &str) -> Result<Response, tonic::Status> {
        let req = DeleteRangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let resp = KvClient::new(self.channel())
            .delete_range(req)
            .await?
            .into_inner();
        Ok(Response::Delete {
            revision: header_revision(resp.header.as_ref())?,
            deleted: resp.deleted,
        })
    }

    async fn txn(
        &self,
        key: &str,
        cmp: &TxnCompare,
        value: &str,
    ) -> Result<Response, tonic::Status> {
        let key_bytes: prost::bytes::Bytes = key.as_bytes().to_vec().into();
        let (target, union) = match cmp {
            TxnCompare::ModRevision { revision } => (
                compare::CompareTarget::Mod,
                compare::TargetUnion::ModRevision(*revision),
            ),
            TxnCompare::Value { value } => (
                compare::CompareTarget::Value,
                compare::TargetUnion::Value(value.as_bytes().to_vec().into()),
            ),
        };
        let req = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: target as i32,
                key: key_bytes.clone(),
                range_end: Default::default(),
                target_union: Some(union),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key_bytes.clone(),
                    value: value.as_bytes().to_vec().into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key_bytes,
                    ..Default::default()
                })),
            }],
        };
        let resp = KvClient::new(self.channel()).txn(req).await?.into_inner();
        let revision = header_revision(resp.header.as_ref())?;
        let kv = if resp.succeeded {
            None
        } else {
            let range = resp.responses.first().and_then(|r| match &r.response {
                Some(response_op::Response::ResponseRange(range)) => Some(range),
                _ => None,
            });
            let Some(range) = range else {
                return Err(malformed("txn else branch without a range response"));
            };
            first_kv(range)?
        };
        Ok(Response::Txn {
            revision,
            succeeded: resp.succeeded,
            kv,
        })
    }

    async fn lease_grant(&self, ttl: i64) -> Result<Response, tonic::Status> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        let resp = LeaseClient::new(self.channel())
            .lease_grant(req)
            .await?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(tonic::Status::unknown(resp.error));
        }
        Ok(Response::LeaseGrant {
            revision: header_revision(resp.header.as_ref())?,
            id: resp.id,
        })
    }

    /// The member's `Status`.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn status(&self) -> Result<StatusResponse, tonic::Status> {
        Ok(MaintenanceClient::new(self.channel())
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// A raft entry that changes nothing: a txn whose compare (version 1
    /// of a key never written) fails, with an empty else branch. It goes
    /// through raft (its then branch writes) but creates no revision, so
    /// it lengthens the log without touching the checked history.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn filler(&self) -> Result<(), tonic::Status> {
        let key: prost::bytes::Bytes = b"oxcd-check-filler-never-written".to_vec().into();
        let req = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Version as i32,
                key: key.clone(),
                range_end: Default::default(),
                target_union: Some(compare::TargetUnion::Version(1)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        KvClient::new(self.channel()).txn(req).await?;
        Ok(())
    }

    /// Compacts the key space up to `revision` (logical only: the
    /// nemesis wants compaction during load, not a wait for the disk).
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn compact(&self, revision: i64) -> Result<(), tonic::Status> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        KvClient::new(self.channel()).compact(req).await?;
        Ok(())
    }

    /// Defragments this member's backend.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn defragment(&self) -> Result<(), tonic::Status> {
        MaintenanceClient::new(self.channel())
            .defragment(DefragmentRequest {})
            .await?;
        Ok(())
    }

    /// The cluster's members as this member knows them (linearizable).
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn member_list(&self) -> Result<Vec<Member>, tonic::Status> {
        Ok(ClusterClient::new(self.channel())
            .member_list(MemberListRequest { linearizable: true })
            .await?
            .into_inner()
            .members)
    }

    /// Removes member `id` from the cluster.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn member_remove(&self, id: u64) -> Result<(), tonic::Status> {
        ClusterClient::new(self.channel())
            .member_remove(MemberRemoveRequest { id })
            .await?;
        Ok(())
    }

    /// Adds a voting member with `peer_url`.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn member_add(&self, peer_url: &str) -> Result<MemberAddResponse, tonic::Status> {
        Ok(ClusterClient::new(self.channel())
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.to_string()],
                is_learner: false,
            })
            .await?
            .into_inner())
    }

    /// A range over `[key, range_end)` at `revision` (0: current),
    /// linearizable unless `serializable`.
    ///
    /// # Errors
    /// The gRPC status of a failed call.
    pub async fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: i64,
        serializable: bool,
    ) -> Result<RangeResponse, tonic::Status> {
        let req = RangeRequest {
            key: key.to_vec().into(),
            range_end: range_end.to_vec().into(),
            revision,
            serializable,
            ..Default::default()
        };
        Ok(KvClient::new(self.channel()).range(req).await?.into_inner())
    }
}

fn malformed(what: &str) -> tonic::Status {
    tonic::Status::internal(format!("malformed response: {what}"))
}

fn header_revision(
    header: Option<&oxcd_api::etcdserverpb::ResponseHeader>,
) -> Result<i64, tonic::Status> {
    header
        .map(|h| h.revision)
        .ok_or_else(|| malformed("no response header"))
}

fn range_to_get(resp: &RangeResponse) -> Result<Response, tonic::Status> {
    Ok(Response::Get {
        revision: header_revision(resp.header.as_ref())?,
        kv: first_kv(resp)?,
    })
}

fn first_kv(resp: &RangeResponse) -> Result<Option<Kv>, tonic::Status> {
    if resp.kvs.len() > 1 {
        return Err(malformed("more than one kv for a single-key range"));
    }
    Ok(resp.kvs.first().map(|kv| Kv {
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        mod_revision: kv.mod_revision,
    }))
}

/// Sorts a failed call into "definitely not applied" and "maybe applied".
/// Reads never change state, so for them the difference does not matter.
/// For writes only errors the server returns before proposing count as
/// definite; a timeout, a lost connection or a leader change while waiting
/// may hide an applied write.
fn classify(status: &tonic::Status, is_write: bool) -> Outcome {
    let error = format!("{:?}: {}", status.code(), status.message());
    let definite = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Unimplemented
    );
    if definite || !is_write {
        Outcome::Fail { error }
    } else {
        Outcome::Unknown { error }
    }
}

/// The end of the range of every key with prefix `prefix` (etcd's
/// `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
