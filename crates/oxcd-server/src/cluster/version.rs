//! The cluster version (etcd's `monitorVersions`): the leader asks every
//! member for its server version and replicates the lowest one, cut to
//! `major.minor.0`, as a v2 `PUT /0/version`.
//!
//! etcd 3.4 members read the cluster version only from that entry (or a
//! snapshot's v2 store). Without it, etcd members of a cluster led by
//! oxcd report `not_decided` and cannot tell a downgrade; with it, they
//! log `set initial cluster version` as under an etcd leader. As in etcd,
//! the version only goes up, and only once every member answered.

use crate::core::Core;
use crate::version::SERVER_VERSION;
use oxcd_raft::transport::Transport;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the leader checks (etcd: `rafthttp.ConnWriteTimeout - 1s`).
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(4);
/// How long one member's `/version` may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A `major.minor` version, the part a cluster version is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinorVersion {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
}

impl MinorVersion {
    /// Reads the `major.minor` of a semantic version (`3.4.23`, `3.4.0`,
    /// `3.5.0-alpha.0`); `None` if it is not one.
    pub fn parse(v: &str) -> Option<Self> {
        let mut parts = v.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?;
        let digits = patch.split(['-', '+']).next()?;
        digits.parse::<u64>().ok()?;
        Some(MinorVersion { major, minor })
    }

    /// The cluster version string etcd replicates: `major.minor.0`.
    pub fn cluster_version(self) -> String {
        format!("{}.{}.0", self.major, self.minor)
    }
}

/// What the leader should replicate, given the current cluster version
/// and every member's server version (`None` for a member that did not
/// answer): the lowest version, if it is above the current one.
pub fn decide(current: Option<&str>, members: &[Option<String>]) -> Option<MinorVersion> {
    let mut lowest: Option<MinorVersion> = None;
    for v in members {
        let v = MinorVersion::parse(v.as_deref()?)?;
        lowest = Some(lowest.map_or(v, |l| l.min(v)));
    }
    let lowest = lowest?;
    match current.and_then(MinorVersion::parse) {
        Some(cur) if cur >= lowest => None,
        _ => Some(lowest),
    }
}

/// Runs the check every [`MONITOR_INTERVAL`] while this member leads,
/// until `shutdown`.
pub async fn run(core: Arc<Core>, transport: Arc<Transport>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if core.leader() != core.member.id {
            continue;
        }
        let versions = member_versions(&core, &transport).await;
        let current = core.members.cluster_version();
        let Some(next) = decide(current.as_deref(), &versions) else {
            continue;
        };
        let next = next.cluster_version();
        use crate::version::major_minor;
        match &current {
            None => tracing::info!(
                target: "etcdserver",
                zap = "setting up initial cluster version",
                cluster_version = %major_minor(&next),
                "setting up the initial cluster version to {}",
                major_minor(&next)
            ),
            Some(from) => tracing::info!(
                target: "etcdserver",
                zap = "updating cluster version",
                from = %major_minor(from),
                to = %major_minor(&next),
                "updating the cluster version from {} to {}",
                major_minor(from),
                major_minor(&next)
            ),
        }
        let entry = super::v2::cluster_version_entry(core.writes.next_request_id(), &next);
        if let Err(e) = core.writes.propose_raw(entry) {
            tracing::warn!(error = %e, "could not propose the cluster version");
        }
    }
}

/// Every member's server version: this one's own, the others' from their
/// peer `/version`.
async fn member_versions(core: &Core, transport: &Transport) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for m in core.members.list() {
        if m.id == core.member.id {
            out.push(Some(SERVER_VERSION.to_string()));
            continue;
        }
        let mut found = None;
        for url in &m.peer_urls {
            let ask = transport.call(
                url,
                http::Method::GET,
                "/version",
                bytes::Bytes::new(),
                "text/plain",
            );
            if let Ok(Ok((status, body))) = tokio::time::timeout(ASK_TIMEOUT, ask).await {
                if status.is_success() {
                    found = server_version(&body);
                    if found.is_some() {
                        break;
                    }
                }
            }
        }
        if found.is_none() {
            tracing::debug!(member = %format!("{:x}", m.id), "cannot get the version of member");
        }
        out.push(found);
    }
    out
}

/// The `etcdserver` field of a `/version` answer.
fn server_version(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Versions {
        etcdserver: String,
    }
    serde_json::from_slice::<Versions>(body)
        .ok()
        .map(|v| v.etcdserver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(vs: &[&str]) -> Vec<Option<String>> {
        vs.iter().map(|v| Some(v.to_string())).collect()
    }

    #[test]
    fn the_lowest_minor_of_every_member_going_up_only() {
        assert_eq!(
            decide(None, &some(&["3.4.23", "3.4.0", "3.5.1"])).map(MinorVersion::cluster_version),
            Some("3.4.0".into())
        );
        assert_eq!(decide(Some("3.4.0"), &some(&["3.4.23", "3.4.9"])), None);
        assert_eq!(
            decide(Some("3.4.0"), &some(&["3.5.0", "3.5.2"])).map(MinorVersion::cluster_version),
            Some("3.5.0".into())
        );
        // Never down, and nothing while a member is unknown.
        assert_eq!(decide(Some("3.5.0"), &some(&["3.4.23"])), None);
        assert_eq!(decide(None, &[Some("3.4.23".into()), None]), None);
        assert_eq!(decide(None, &some(&["3.x"])), None);
    }

    #[test]
    fn versions_parse_like_semver() {
        assert_eq!(
            MinorVersion::parse("3.5.0-alpha.0"),
            Some(MinorVersion { major: 3, minor: 5 })
        );
        assert_eq!(MinorVersion::parse("3.4"), None);
        assert_eq!(
            server_version(br#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#),
            Some("3.4.23".into())
        );
        assert_eq!(server_version(b"404 page not found"), None);
    }
}
