//! Becoming ready (etcd's `EtcdServer.publish` and the readiness log
//! lines): wait for a leader, then replicate this member's name and client
//! URLs through raft until they are applied, then log the lines tooling
//! waits for (`enabled capabilities for version`, `published`).

use crate::core::Core;
use crate::version::API_VERSION;
use oxcd_api::etcdserverpb::{InternalRaftRequest, RequestHeader};
use oxcd_api::membershippb::{Attributes, ClusterMemberAttrSetRequest};
use prost::Message;
use std::time::Duration;

/// How long one publish attempt waits to see itself applied.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// Returns once this member has a leader and its attributes are applied.
/// Returns early (false) if the raft loop stops.
pub async fn become_ready(core: &Core) -> bool {
    let mut status = core.writes.node().watch_status();
    if status.wait_for(|s| s.leader != 0).await.is_err() {
        return false;
    }
    tracing::info!("etcdserver/membership: set the initial cluster version to {API_VERSION}");
    tracing::info!("etcdserver/api: enabled capabilities for version {API_VERSION}");
    let me = core.member.clone();
    loop {
        let req = InternalRaftRequest {
            header: Some(RequestHeader {
                id: core.writes.next_request_id(),
                ..Default::default()
            }),
            cluster_member_attr_set: Some(ClusterMemberAttrSetRequest {
                member_id: me.id,
                member_attributes: Some(Attributes {
                    name: me.name.clone(),
                    client_urls: me.client_urls.clone(),
                }),
            }),
            ..Default::default()
        };
        if let Err(e) = core.writes.propose_raw(req.encode_to_vec()) {
            tracing::warn!(error = %e, "could not publish member attributes; retrying");
        }
        let published = core
            .members
            .wait_until(PUBLISH_RETRY, |ms| {
                ms.iter()
                    .any(|m| m.id == me.id && m.name == me.name && m.client_urls == me.client_urls)
            })
            .await;
        if published {
            break;
        }
        if status.has_changed().is_err() {
            return false;
        }
    }
    tracing::info!(
        "etcdserver: published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
        me.name,
        me.client_urls.join(" "),
        core.cluster_id
    );
    tracing::info!("embed: ready to serve client requests");
    true
}
