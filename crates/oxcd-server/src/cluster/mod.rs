//! The cluster as a member sees it (etcd's `etcdserver/api/membership`,
//! `cluster_util.go`): this member's identity and the initial cluster
//! ([`bootstrap`]), the member list kept through raft ([`membership`]),
//! the safety checks on reconfiguration ([`reconfig`]), and forwarding
//! what only the leader can answer to the leader ([`forward`]).

pub mod bootstrap;
pub mod forward;
pub mod membership;
pub mod reconfig;
