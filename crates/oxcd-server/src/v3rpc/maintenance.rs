//! The `etcdserverpb.Maintenance` service (etcd's `v3rpc/maintenance.go`).
//! Snapshot streams an etcd backend file (see `snapshot`); everything
//! answers as etcd does.

use crate::auth::raw_error;
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

    /// etcd's `authMaintenanceServer.isAuthenticated`: Hash, HashKV,
    /// Snapshot and Defragment are for root only, and refused with the
    /// auth package's raw errors (gRPC Unknown, `auth: …`).
    async fn admin_only<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let who = self.core.who_of(r).await.map_err(raw_error)?;
        self.core.auth_view().check_admin(&who).map_err(raw_error)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Every action goes through raft, as in etcd, so a listing is
    /// linearizable and a raise or clear reaches every member.
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // The token must resolve (raw auth error if not); no permission
        // is needed.
        let who = self.core.who_of(&r).await.map_err(raw_error)?;
        let resp = self.core.writes.propose_as(r.into_inner(), &who).await?;
        Ok(Response::new(resp))
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
            errors: {
                let mut errors = Vec::new();
                if st.leader == 0 {
                    errors.push(oxcd_api::EtcdError::NoLeader.message().to_string());
                }
                errors.extend(c.alarms.status_errors());
                errors
            },
            db_size_in_use: c.store.db_size_in_use() as i64,
            is_learner: c.is_learner(),
            db_size_quota: self.quota_bytes,
            ..Default::default()
        }))
    }

    /// Defragments this member's backend only (not through raft), off the
    /// async threads, while it keeps serving (writers wait only for the
    /// final switch, see `oxcd_mvcc`'s `defrag`). Answers `{}` with no
    /// header, as etcd does.
    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin_only(&r).await?;
        tracing::info!("starting defragment");
        let store = self.core.store.clone();
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|e| Status::internal(format!("defragment task: {e}")))?;
        match done {
            Ok((before, after)) => {
                tracing::info!(
                    current_db_size_bytes = before,
                    new_db_size_bytes = after,
                    took = ?started.elapsed(),
                    "finished defragmenting the storage backend"
                );
                Ok(Response::new(DefragmentResponse::default()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to defragment");
                Err(oxcd_api::EtcdError::Unknown(e.to_string()).into())
            }
        }
    }

    /// etcd's whole-backend hash, off the async threads.
    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin_only(&r).await?;
        let store = self.core.store.clone();
        let (hash, rev) = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Status::internal(format!("hash task: {e}")))?
            .map_err(crate::apply::mvcc_error)?;
        Ok(Response::new(HashResponse {
            header: Some(self.core.header(rev)),
            hash,
        }))
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.admin_only(&r).await?;
        let rev = r.into_inner().revision;
        let store = self.core.store.clone();
        let h = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| Status::internal(format!("hashkv task: {e}")))?
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
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin_only(&r).await?;
        let rx = super::snapshot::stream(&self.core);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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

    /// etcd 3.5's Downgrade, for a cluster that cannot downgrade: oxcd
    /// speaks the 3.4 cluster version and no older one, so a well-formed
    /// target is refused as etcd refuses a version it cannot go back to,
    /// and there is never a downgrade to cancel.
    async fn downgrade(
        &self,
        r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        use oxcd_api::etcdserverpb::downgrade_request::DowngradeAction;
        use oxcd_api::EtcdError;
        let r = r.into_inner();
        match DowngradeAction::try_from(r.action) {
            Ok(DowngradeAction::Validate | DowngradeAction::Enable) => {
                if !is_cluster_version(&r.version) {
                    return Err(EtcdError::WrongDowngradeVersionFormat.into());
                }
                Err(EtcdError::InvalidDowngradeTargetVersion.into())
            }
            Ok(DowngradeAction::Cancel) => Err(EtcdError::NoInflightDowngrade.into()),
            Err(_) => Err(Status::unimplemented("etcdserver: unknown method")),
        }
    }
}

/// Whether `v` reads as `major.minor` or `major.minor.patch` (etcd 3.5's
/// `convertToClusterVersion`).
fn is_cluster_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn downgrade_versions() {
        assert!(super::is_cluster_version("3.4"));
        assert!(super::is_cluster_version("3.4.0"));
        assert!(!super::is_cluster_version("3"));
        assert!(!super::is_cluster_version("3.x"));
        assert!(!super::is_cluster_version(""));
    }
}
