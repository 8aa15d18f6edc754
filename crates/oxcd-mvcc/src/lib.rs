//! The revisioned key space of oxcd (etcd's `mvcc` package).
//!
//! Every change to the key space gets a revision; a read can ask for the
//! key space as of any revision not yet compacted. This crate offers
//! revisioned read and write transactions only: etcd's request semantics
//! (Range sorting and filters, Put `ignore_*`, Txn compares, duplicate-key
//! checks, leases) live above it, in `oxcd-server`'s applier.
//!
//! # Map
//!
//! | module | etcd file | what |
//! |---|---|---|
//! | [`revision`] | `mvcc/revision.go` | `(main, sub)` revisions and their 17-byte on-disk keys |
//! | `key_index` | `mvcc/key_index.go` | one key's generations of revisions: put, tombstone, get, since, compact, keep |
//! | [`index`] | `mvcc/index.go` | key → generations, ordered (`BTreeMap`), plus the range conventions |
//! | [`backend`] | `mvcc/backend/` | the redb file: tables, on-disk layout, commit (durability) policy |
//! | `kvstore` | `mvcc/kvstore.go` | [`KvStore`]: open, revisions, locking |
//! | `lease_table` | `lease/lessor.go` (`lease` bucket) | [`LeaseRecord`]s written by [`WriteTxn::put_lease`], read by [`KvStore::leases`] |
//! | `alarm_table` | `etcdserver/api/v3alarm/alarms.go` (`alarm` bucket) | raised alarms, written by [`WriteTxn::put_alarm`], read by [`KvStore::alarms`] |
//! | `auth_table` | `auth/store.go` (`auth`, `authUsers`, `authRoles` buckets) | auth records, written by [`WriteTxn::put_auth`], read by [`KvStore::auth_records`] |
//! | `restore` | `mvcc/kvstore.go` (`restore`) | rebuilding the index at open |
//! | `txn` | `mvcc/kvstore_txn.go` | [`ReadTxn`], [`WriteTxn`], range |
//! | `defrag` | `mvcc/backend/backend.go` (`defrag`) | [`KvStore::defragment`]: an online copy into a fresh file, then a short switch |
//! | `compact` | `mvcc/kvstore_compaction.go` | [`KvStore::compact`] |
//! | `events` | `mvcc/watchable_store.go` (`syncWatchers` scan) | [`ReadTxn::events`]: history as events for watchers |
//! | `watcher` | `mvcc/watcher.go` | one watcher, its range, filters, and the [`WatchResponse`] a stream receives |
//! | `watcher_group` | `mvcc/watcher_group.go` | watchers by key; fan-out of events per watcher |
//! | `watchable_store` | `mvcc/watchable_store.go` | [`WatchableStore`]: synced / unsynced / victim groups, `notify`, catch-up |
//! | `watch_stream` | `mvcc/watcher.go` (`watchStream`) | [`WatchStream`]: one client stream's watchers and ids |
//! | `export` | `mvcc/backend/backend.go` (`Snapshot`) | [`KvStore::export_view`]: whole tables by name, as of one commit, for the Snapshot RPC |
//! | `snapshot` | `mvcc/backend/backend.go` (`Snapshot`), `etcdserver/server.go` (`applySnapshot`) | [`KvStore::export_to`], [`KvStore::replace_from`]: whole-backend copies for raft snapshots |
//! | `hash` | `mvcc/kvstore.go` (`HashByRev`) | [`KvStore::hash_kv`] with CRC-32C |
//! | [`error`] | `mvcc/kv.go` errors | [`MvccError`] |
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> Result<(), oxcd_mvcc::MvccError> {
//! use oxcd_mvcc::{BackendConfig, KvStore, RangeOptions};
//! let store = KvStore::open(std::path::Path::new("db"), BackendConfig::default())?;
//! let mut txn = store.write();
//! txn.put(b"foo", b"bar", 0)?;
//! let outcome = txn.end(Some(42))?; // raft index 42 applied
//! store.sync()?; // on disk (the server relies on its WAL instead)
//! let r = store.read()?.range(b"foo", b"", RangeOptions::default())?;
//! assert_eq!(r.kvs[0].mod_revision, outcome.rev);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod alarm_table;
mod auth_table;
pub mod backend;
mod backend_file;
pub mod background;
mod compact;
#[cfg(test)]
#[path = "../../oxcd-etcd-format/src/damage.rs"]
mod damage;
mod defrag;
pub mod error;
mod events;
mod export;
mod hash;
pub mod id_hash;
pub mod import;
pub mod index;
mod key_index;
mod kvstore;
mod lease_table;
pub mod metrics;
mod restore;
pub mod revision;
mod snapshot;
mod txn;
mod watch_stream;
mod watchable_store;
mod watcher;
mod watcher_group;

pub use auth_table::{AuthRecords, AuthTable};
pub use backend::BackendConfig;
pub use compact::COMPACTION_BATCH;
pub use error::MvccError;
pub use export::ExportView;
pub use hash::{Crc32c, HashKv};
pub use index::KeyRange;
pub use kvstore::{KvStore, LeaseKeys};
pub use lease_table::LeaseRecord;
pub use revision::Revision;
pub use txn::{RangeOptions, RangeResult, ReadTxn, TxnOutcome, WriteTxn};
pub use watch_stream::{WatchReceiver, WatchStream};
pub use watchable_store::{
    WatchableStore, MAX_REVS_PER_SYNC, MAX_WATCHERS_PER_SYNC, STREAM_CHANNEL_CAPACITY, VICTIM_RETRY,
};
pub use watcher::{
    revision_of, Filters, WatchError, WatchEvent, WatchId, WatchResponse, WatcherKey, AUTO_WATCH_ID,
};
