//! The `etcdserverpb.Maintenance` service (etcd's `v3rpc/maintenance.go`).
//! Status, HashKV and Alarm answer truthfully; defrag, snapshot, hash,
//! move-leader and downgrade belong to later issues and answer
//! `Unimplemented`.

use crate::core::Core;
use crate::version::SERVER_VERSION;
use oxcd_api::etcdserverpb::maintenance_server::Maintenance;
use oxcd_api::etcdserverpb::*;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// gRPC handler for maintenance requests.
pub struct MaintenanceService {
    core: Arc<Core>,
    quota_bytes: i64,
}

impl MaintenanceService {
    /// Creates the service; `quota_bytes` is the effective backend quota.
    pub fn new(core: Arc<Core>, quota_bytes: i64) -> Self {
        Self { core, quota_bytes }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarms are raised yet (quota/corruption checks come with the
        // maintenance issue); etcd sends Alarm responses without a header.
        Ok(Response::new(AlarmResponse::default()))
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let c = &self.core;
        let st = c.writes.status();
        Ok(Response::new(StatusResponse {
            header: Some(c.header(c.store.rev())),
            version: SERVER_VERSION.to_string(),
            db_size: c.store.db_size().unwrap_or(0) as i64,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: if st.leader == 0 {
                vec![oxcd_api::EtcdError::NoLeader.message().to_string()]
            } else {
                Vec::new()
            },
            db_size_in_use: c.store.db_size_in_use() as i64,
            is_learner: c.is_learner(),
            db_size_quota: self.quota_bytes,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented(
            "oxcd: defragment is not implemented yet",
        ))
    }

    async fn hash(&self, _r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(Status::unimplemented("oxcd: hash is not implemented yet"))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let rev = r.into_inner().revision;
        let h = self
            .core
            .store
            .hash_kv(rev)
            .map_err(crate::apply::mvcc_error)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.core.header(h.current_rev)),
            hash: h.hash,
            compact_revision: h.compact_rev,
            ..Default::default()
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented(
            "oxcd: snapshot is not implemented yet",
        ))
    }

    async fn move_leader(
        &self,
        r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = r.into_inner().target_id;
        let c = &self.core;
        if !c.writes.is_leader() {
            return Err(oxcd_api::EtcdError::NotLeader.into());
        }
        match c.members.get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(oxcd_api::EtcdError::BadLeaderTransferee.into()),
        }
        c.writes.move_leader(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: Some(c.header(c.store.rev())),
        }))
    }

    async fn downgrade(
        &self,
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented("oxcd: downgrade is not implemented"))
    }
}
