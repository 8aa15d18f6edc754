//! The raft glue of a member (etcd's `etcdserver/raft.go`, `bootstrap.go`
//! raft half, `server.go` snapshot and publish parts): starting the raft
//! loop and the apply stage ([`boot`]), the server's half of raft
//! snapshots ([`snapshot`]), linearizable read indexes ([`read_index`]),
//! and publishing this member's attributes once it has joined
//! ([`publish`]).

pub mod boot;
pub mod publish;
pub mod read_index;
pub mod snapshot;
