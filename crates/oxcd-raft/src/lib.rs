//! Consensus plumbing for oxcd: the WAL, snapshot files, raft storage and
//! the peer transport.
//!
//! Not built yet: a single-member oxcd commits writes straight to the MVCC
//! backend with an fsync per batch (see `oxcd-server`'s applier). The
//! replication issue fills this crate in; ARCHITECTURE.md describes its room.
