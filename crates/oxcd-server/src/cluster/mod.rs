//! The cluster as a member sees it (etcd's `etcdserver/api/membership`,
//! `cluster_util.go`): this member's identity and the initial cluster
//! ([`bootstrap`]), the member list kept through raft ([`membership`]),
//! the safety checks on reconfiguration ([`reconfig`]), and forwarding
//! what only the leader can answer to the leader ([`forward`]; over
//! etcd's `/leases` endpoints with etcd members, [`peer_http`]), the v2
//! requests etcd 3.4 members replicate about the cluster ([`v2`]), and the
//! cluster version a leader replicates ([`version`]).

pub mod bootstrap;
pub mod conf_change;
pub mod forward;
pub mod membership;
pub mod peer_http;
pub mod reconfig;
pub mod v2;
pub mod version;
