//! Becoming ready (etcd's `EtcdServer.publish` and the readiness log
//! lines): wait for a leader, then replicate this member's name and client
//! URLs through raft until they are applied, then log the lines tooling
//! waits for (`enabled capabilities for version`, `published`). `ready to
//! serve client requests` is the client listeners' line (embed), logged when
//! they start serving, after the initial corruption check.

use crate::core::Core;
use crate::version::API_VERSION;
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
    // The zap line for the version is the apply stage's, where it is set.
    tracing::info!(
        target: "etcdserver/membership",
        capnslog_only = true,
        "set the initial cluster version to {API_VERSION}"
    );
    tracing::info!(
        target: "etcdserver/api",
        zap = "enabled capabilities for version",
        cluster_version = API_VERSION,
        "enabled capabilities for version {API_VERSION}"
    );
    let me = core.member.clone();
    loop {
        // etcd 3.4's form, which etcd members of a mixed cluster apply.
        let req = crate::cluster::v2::publish_entry(
            core.writes.next_request_id(),
            me.id,
            &me.name,
            &me.client_urls,
        );
        if let Err(e) = core.writes.propose_raw(req) {
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
    let attributes = format!(
        "{{Name:{} ClientURLs:[{}]}}",
        me.name,
        me.client_urls.join(" ")
    );
    tracing::info!(
        target: "etcdserver",
        zap = "published local member to cluster through raft",
        local_member_id = %format!("{:x}", me.id),
        local_member_attributes = %attributes,
        request_path = %format!("/0/members/{:x}/attributes", me.id),
        cluster_id = %format!("{:x}", core.cluster_id),
        "published {attributes} to cluster {:x}",
        core.cluster_id
    );
    true
}
