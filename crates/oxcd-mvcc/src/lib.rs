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
//! | `restore` | `mvcc/kvstore.go` (`restore`) | rebuilding the index at open |
//! | `txn` | `mvcc/kvstore_txn.go` | [`ReadTxn`], [`WriteTxn`], range |
//! | `compact` | `mvcc/kvstore_compaction.go` | [`KvStore::compact`] |
//! | `events` | `mvcc/watchable_store.go` (`syncWatchers` scan) | [`ReadTxn::events`]: history as events for watchers |
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
//! store.sync()?; // durable before acknowledging
//! let r = store.read()?.range(b"foo", b"", RangeOptions::default())?;
//! assert_eq!(r.kvs[0].mod_revision, outcome.rev);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
mod compact;
pub mod error;
mod events;
mod hash;
pub mod index;
mod key_index;
mod kvstore;
mod restore;
pub mod revision;
mod txn;

pub use backend::BackendConfig;
pub use compact::COMPACTION_BATCH;
pub use error::MvccError;
pub use hash::{Crc32c, HashKv};
pub use index::KeyRange;
pub use kvstore::KvStore;
pub use revision::Revision;
pub use txn::{RangeOptions, RangeResult, ReadTxn, TxnOutcome, WriteTxn};
