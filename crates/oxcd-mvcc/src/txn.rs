//! Read and write transactions (mirrors etcd `mvcc/kvstore_txn.go`).
//!
//! Only revisioned storage lives here. etcd's request semantics (sorting,
//! revision filters, `ignore_value`/`ignore_lease`, compares, duplicate-key
//! checks, leases) are the applier's job, above this layer.

use std::sync::Arc;

use crate::backend::Snapshot;
use prost::Message;

use oxcd_api::mvccpb::{event::EventType, Event, KeyValue};

use crate::backend::{KeyLookup, Staged, KEY_TABLE};
use crate::error::{MvccError, Result};
use crate::index::KeyRange;
use crate::key_index::Found;
use crate::kvstore::Shared;
use crate::revision::Revision;

/// Options of a range read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many kvs are returned; `<= 0` means no limit. `count`
    /// is not affected.
    pub limit: i64,
    /// Read at this revision; `<= 0` means the transaction's revision.
    pub rev: i64,
    /// Return only `count`, no kvs.
    pub count_only: bool,
}

/// The answer to a range read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// The live keys in the range at the read revision, ascending by key,
    /// at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// The transaction's revision (not the read revision: etcd reports the
    /// store's revision even for a read in the past).
    pub rev: i64,
    /// The number of live keys in the range at the read revision, before
    /// the limit.
    pub count: i64,
}

/// A consistent snapshot at the revision that was current when it began.
/// Holds a redb read transaction: long-lived ones keep old pages from being
/// reused, so drop it when done.
pub struct ReadTxn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: Snapshot,
    /// Writes not yet committed to redb when this snapshot began.
    pub(crate) staged: Arc<Staged>,
    rev: i64,
    /// Ranges read, counted when the snapshot is dropped.
    ranges: std::sync::atomic::AtomicU64,
}

impl Drop for ReadTxn {
    fn drop(&mut self) {
        crate::metrics::Tally {
            ranges: *self.ranges.get_mut(),
            ..Default::default()
        }
        .flush();
    }
}

impl ReadTxn {
    pub(crate) fn begin(shared: Arc<Shared>) -> Result<ReadTxn> {
        let (rev, staged, tx) = {
            // In this order: the published revision, then the staged
            // generation, then the redb snapshot. Every revision up to
            // `rev` is then in `staged` or committed before `tx` began
            // (see `backend::Staged`).
            let st = shared.state();
            let rev = st.current_rev;
            let staged = shared.backend.staged();
            (rev, staged, shared.backend.begin_read()?)
        };
        Ok(ReadTxn {
            shared,
            tx,
            staged,
            rev,
            ranges: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The revision this snapshot reads at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// The compact revision at this moment (reads below it fail).
    pub fn compact_rev(&self) -> i64 {
        self.shared.state().compact_rev
    }

    /// Reads the keys of `[key, end)` (see [`KeyRange::new`] for the
    /// `end` conventions) as of `opts.rev`.
    ///
    /// # Errors
    /// [`MvccError::FutureRev`] when `opts.rev` is above this snapshot's
    /// revision, [`MvccError::Compacted`] when it is below the compact
    /// revision, backend or corruption errors when fetching values.
    pub fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.ranges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = lookup(&self.shared, KeyRange::new(key, end), self.rev, opts)?;
        let kvs = if found.entries.is_empty() {
            Vec::new()
        } else {
            let table = self
                .tx
                .open_table(KEY_TABLE)
                .map_err(|e| MvccError::backend("open key table", e))?;
            let staged = &self.staged;
            fetch_all(&table, &found.entries, |rev| staged.get_kv(rev))?
        };
        Ok(RangeResult {
            kvs,
            rev: self.rev,
            count: found.count as i64,
        })
    }
}

/// Index lookup result: what to fetch and how many keys matched.
struct Lookup {
    entries: Vec<(Vec<u8>, Found)>,
    count: usize,
}

/// Checks the read revision and resolves the range in the index, under
/// one state lock so that a compaction cannot slip in between.
fn lookup(
    shared: &Shared,
    range: KeyRange<'_>,
    cur_rev: i64,
    opts: RangeOptions,
) -> Result<Lookup> {
    if opts.rev > cur_rev {
        return Err(MvccError::FutureRev {
            requested: opts.rev,
            current_rev: cur_rev,
        });
    }
    let rev = if opts.rev <= 0 { cur_rev } else { opts.rev };
    let st = shared.state();
    if rev < st.compact_rev {
        return Err(MvccError::Compacted {
            requested: rev,
            compact_rev: st.compact_rev,
        });
    }
    if opts.count_only {
        let count = st.index.count(range, rev);
        return Ok(Lookup {
            entries: Vec::new(),
            count,
        });
    }
    let limit = usize::try_from(opts.limit.max(0)).unwrap_or(usize::MAX);
    let (entries, count) = st.index.range(range, rev, limit);
    Ok(Lookup { entries, count })
}

/// Fetches the value of every entry; `overlay` supplies values not yet
/// committed (a write transaction's own changes).
fn fetch_all(
    table: &dyn KeyLookup,
    entries: &[(Vec<u8>, Found)],
    overlay: impl Fn(Revision) -> Option<Result<KeyValue>>,
) -> Result<Vec<KeyValue>> {
    entries
        .iter()
        .map(|(_, f)| match overlay(f.modified) {
            Some(kv) => kv,
            None => table.get_kv(f.modified),
        })
        .collect()
}

/// The result of committing a [`WriteTxn`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TxnOutcome {
    /// The store's revision after the transaction: the new main revision
    /// if anything changed, otherwise the unchanged current revision.
    pub rev: i64,
    /// One event per change, in execution order: PUT with the new kv,
    /// DELETE with a kv holding the key and `mod_revision = rev`.
    pub events: Vec<Event>,
}

/// One change of a write transaction; its position is its sub revision.
struct Change {
    kv: KeyValue,
    tombstone: bool,
}

/// The single write transaction. Every change gets main revision
/// `begin_rev + 1` and sub revisions 0, 1, 2… in order. Commit with
/// [`WriteTxn::end`]; dropping it without `end` undoes its changes.
pub struct WriteTxn {
    shared: Arc<Shared>,
    begin_rev: i64,
    changes: Vec<Change>,
    /// Changes to the `lease` table, committed with the key changes.
    pub(crate) lease_ops: Vec<crate::lease_table::LeaseOp>,
    /// Changes to the `alarm` table, committed with the key changes.
    pub(crate) alarm_ops: Vec<crate::alarm_table::AlarmOp>,
    /// Changes to the auth tables, committed with the key changes.
    pub(crate) auth_ops: Vec<crate::auth_table::AuthOp>,
    ended: bool,
    /// Calls made, counted when the transaction is dropped.
    tally: crate::metrics::Tally,
}

impl WriteTxn {
    pub(crate) fn begin(shared: Arc<Shared>) -> WriteTxn {
        shared.writer.acquire();
        let begin_rev = shared.state().staged_rev;
        WriteTxn {
            shared,
            begin_rev,
            changes: Vec::new(),
            lease_ops: Vec::new(),
            alarm_ops: Vec::new(),
            auth_ops: Vec::new(),
            ended: false,
            tally: crate::metrics::Tally::default(),
        }
    }

    /// The revision this transaction produces: `current + 1` once it has
    /// changed something, `current` before.
    pub fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    /// Like [`ReadTxn::range`], but sees this transaction's own changes;
    /// the reported revision is [`WriteTxn::rev`].
    ///
    /// # Errors
    /// As [`ReadTxn::range`].
    pub fn range(&mut self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.tally.ranges += 1;
        let rev = self.rev();
        let found = lookup(&self.shared, KeyRange::new(key, end), rev, opts)?;
        let kvs = self.fetch(&found.entries)?;
        Ok(RangeResult {
            kvs,
            rev,
            count: found.count as i64,
        })
    }

    /// Writes `key = value` attached to `lease` (0 for none). A new key
    /// (or one deleted before) starts a generation: `create_revision` =
    /// this revision, `version` = 1; otherwise `create_revision` is kept
    /// and `version` grows by one.
    ///
    /// # Errors
    /// None today (the write reaches the backend at [`WriteTxn::end`]);
    /// kept fallible like every other store operation.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<()> {
        self.tally.puts += 1;
        self.tally.put_size += (key.len() + value.len()) as u64;
        let main = self.begin_rev + 1;
        let rev = Revision::new(main, self.changes.len() as i64);
        // Only the index is consulted (create revision and version), as in
        // etcd: the previous value is read by callers that ask for it.
        let prev = self.shared.state_mut().index.get_and_put(key, rev);
        let (create_revision, version) = match prev {
            Some(f) => (f.created.main, f.version.saturating_add(1)),
            None => (main, 1),
        };
        self.changes.push(Change {
            kv: KeyValue {
                key: key.to_vec().into(),
                create_revision,
                mod_revision: main,
                version,
                value: value.to_vec().into(),
                lease,
            },
            tombstone: false,
        });
        Ok(())
    }

    /// Deletes every live key of `[key, end)` (same conventions as
    /// range), writing one tombstone per key in key order, and returns the
    /// deleted kvs (for `prev_kv` and the `deleted` count). Deleting
    /// nothing changes nothing.
    ///
    /// # Errors
    /// Backend or corruption errors reading the deleted values; nothing
    /// has changed then.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        self.tally.deletes += 1;
        let at = self.rev();
        let (entries, _) = self
            .shared
            .state()
            .index
            .range(KeyRange::new(key, end), at, 0);
        let deleted = self.fetch(&entries)?;
        let main = self.begin_rev + 1;
        let mut st = self.shared.state_mut();
        for (k, _) in &entries {
            let rev = Revision::new(main, self.changes.len() as i64);
            if st.index.tombstone(k, rev).is_err() {
                // The key was found live under the same writer lock.
                unreachable!("index lost a live key inside the write transaction");
            }
            self.changes.push(Change {
                kv: KeyValue {
                    key: k.clone().into(),
                    ..Default::default()
                },
                tombstone: true,
            });
        }
        Ok(deleted)
    }

    /// Commits the changes atomically, together with `consistent_index`
    /// (the raft index of the applied entry) when given: in one redb
    /// transaction of its own, or, in batch mode, into the open batch
    /// transaction (staged for readers; published by `end_batch`). Without
    /// batching it publishes the new revision itself. A transaction
    /// without key changes makes no revision: its lease-, alarm- and
    /// auth-table changes, if any, are committed (with the consistent
    /// index), otherwise it commits nothing and its consistent index is
    /// persisted by the next commit.
    ///
    /// # Errors
    /// Backend errors. Without batching the changes are then undone; in
    /// batch mode the whole open batch transaction is lost with them, so
    /// the server must treat this as fatal (it exits).
    pub fn end(mut self, consistent_index: Option<u64>) -> Result<TxnOutcome> {
        self.ended = true;
        let table_ops =
            !(self.lease_ops.is_empty() && self.alarm_ops.is_empty() && self.auth_ops.is_empty());
        if self.changes.is_empty() && table_ops {
            // Lease, alarm or auth changes alone are committed without a
            // new revision.
            self.commit(self.begin_rev, consistent_index)?;
        }
        if self.changes.is_empty() {
            if let Some(ci) = consistent_index {
                self.shared.backend.set_consistent_index(ci);
            }
            return Ok(TxnOutcome {
                rev: self.begin_rev,
                events: Vec::new(),
            });
        }
        let main = self.begin_rev + 1;
        if let Err(e) = self.commit(main, consistent_index) {
            self.rollback();
            return Err(e);
        }
        let mut st = self.shared.state_mut();
        st.staged_rev = main;
        if !st.batching {
            st.current_rev = main;
        }
        drop(st);
        let events = self.changes.drain(..).map(|c| to_event(c, main)).collect();
        Ok(TxnOutcome { rev: main, events })
    }

    fn commit(&mut self, main: i64, consistent_index: Option<u64>) -> Result<()> {
        let records = self
            .changes
            .iter()
            .enumerate()
            .map(|(sub, c)| {
                let key = Revision::new(main, sub as i64).to_key(c.tombstone);
                (key.to_vec(), c.kv.encode_to_vec())
            })
            .collect();
        let (lease_ops, alarm_ops, auth_ops) = (&self.lease_ops, &self.alarm_ops, &self.auth_ops);
        self.shared
            .backend
            .commit_records(records, consistent_index, |tx| {
                crate::lease_table::write_ops(tx, lease_ops)?;
                crate::alarm_table::write_ops(tx, alarm_ops)?;
                crate::auth_table::write_ops(tx, auth_ops)
            })
    }

    /// Values for index entries: own changes from memory, the rest through
    /// the open batch transaction, or a snapshot of the committed state
    /// when none is open (`Backend::read_latest`).
    fn fetch(&mut self, entries: &[(Vec<u8>, Found)]) -> Result<Vec<KeyValue>> {
        let main = self.begin_rev + 1;
        let changes = &self.changes;
        let overlay = |rev: Revision| {
            if rev.main != main {
                return None;
            }
            usize::try_from(rev.sub)
                .ok()
                .and_then(|i| changes.get(i))
                .map(|c| Ok(c.kv.clone()))
        };
        if entries.iter().all(|(_, f)| f.modified.main == main) {
            return entries
                .iter()
                .filter_map(|(_, f)| overlay(f.modified))
                .collect();
        }
        self.shared
            .backend
            .read_latest(|table| fetch_all(table, entries, overlay))
    }

    fn rollback(&mut self) {
        let keys: Vec<Vec<u8>> = self.changes.iter().map(|c| c.kv.key.to_vec()).collect();
        self.shared
            .state_mut()
            .index
            .rollback(&keys, self.begin_rev + 1);
        self.changes.clear();
    }
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        self.tally.flush();
        if !self.ended && !self.changes.is_empty() {
            self.rollback();
        }
        self.shared.writer.release();
    }
}

pub(crate) fn to_event_parts(kv: KeyValue, tombstone: bool, main: i64) -> Event {
    to_event(Change { kv, tombstone }, main)
}

fn to_event(c: Change, main: i64) -> Event {
    if c.tombstone {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                mod_revision: main,
                ..c.kv
            }),
            prev_kv: None,
        }
    } else {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(c.kv),
            prev_kv: None,
        }
    }
}
