//! The `lease` table: granted leases, persisted in the same redb commit as
//! the key changes of the request that granted or revoked them (mirrors the
//! `lease` bucket of etcd's `lease/lessor.go`).
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | `lease` | 8-byte BE lease ID | protobuf `leasepb.Lease{ID=1, TTL=2, RemainingTTL=3}` |
//!
//! Only the lease itself is stored; which keys are attached to it is
//! recovered from the `lease` field of the live keys, as etcd does. The
//! table is created by the first write that touches it, so a store that
//! never saw a lease has none and [`KvStore::leases`] reads it as empty.

use prost::Message;
use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};

use crate::error::{MvccError, Result};
use crate::kvstore::KvStore;
use crate::txn::WriteTxn;

/// The `lease` table: 8-byte BE ID → encoded [`LeaseRecord`].
pub(crate) const LEASE_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lease");

/// One stored lease, byte-compatible with etcd's `leasepb.Lease`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct LeaseRecord {
    /// The lease ID.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL in seconds (already raised to the minimum).
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// The last checkpointed remaining TTL in seconds; 0 means unset, so
    /// the full TTL applies.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A pending change to the `lease` table, committed with its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseOp {
    /// Insert or overwrite.
    Put(LeaseRecord),
    /// Remove the lease with this ID.
    Delete(i64),
}

impl WriteTxn {
    /// Stores lease `id` with `ttl` and the checkpointed `remaining_ttl`
    /// (0 for none), overwriting any earlier record. Written in this
    /// transaction's commit; a transaction with only lease changes commits
    /// them without a new revision.
    pub fn put_lease(&mut self, id: i64, ttl: i64, remaining_ttl: i64) {
        self.lease_ops.push(LeaseOp::Put(LeaseRecord {
            id,
            ttl,
            remaining_ttl,
        }));
    }

    /// Removes lease `id` from the table in this transaction's commit.
    pub fn delete_lease(&mut self, id: i64) {
        self.lease_ops.push(LeaseOp::Delete(id));
    }
}

/// Applies `ops` in order inside the redb write transaction `tx`.
pub(crate) fn write_ops(tx: &WriteTransaction, ops: &[LeaseOp]) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut table = tx
        .open_table(LEASE_TABLE)
        .map_err(|e| MvccError::backend("open lease table", e))?;
    for op in ops {
        match op {
            LeaseOp::Put(r) => {
                table
                    .insert(r.id.to_be_bytes().as_slice(), r.encode_to_vec().as_slice())
                    .map_err(|e| MvccError::backend("write lease", e))?;
            }
            LeaseOp::Delete(id) => {
                table
                    .remove(id.to_be_bytes().as_slice())
                    .map_err(|e| MvccError::backend("delete lease", e))?;
            }
        }
    }
    Ok(())
}

impl KvStore {
    /// Every stored lease, ascending by ID (the lessor loads them at open).
    ///
    /// # Errors
    /// Backend errors; [`MvccError::Corrupt`] for a record whose key is not
    /// 8 bytes or whose value does not decode.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let tx = self.shared.backend.begin_read()?;
        let table = match tx.open_table(LEASE_TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(MvccError::backend("open lease table", e)),
        };
        let mut out = Vec::new();
        let iter = table
            .iter()
            .map_err(|e| MvccError::backend("scan lease table", e))?;
        for entry in iter {
            let (k, v) = entry.map_err(|e| MvccError::backend("scan lease table", e))?;
            let key: [u8; 8] = k.value().try_into().map_err(|_| {
                MvccError::Corrupt(format!("lease key has {} bytes", k.value().len()))
            })?;
            let id = i64::from_be_bytes(key);
            let rec = LeaseRecord::decode(v.value())
                .map_err(|e| MvccError::Corrupt(format!("lease {id:016x}: {e}")))?;
            if rec.id != id {
                return Err(MvccError::Corrupt(format!(
                    "lease record {:016x} stored under {id:016x}",
                    rec.id
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendConfig;

    fn open(dir: &tempfile::TempDir) -> KvStore {
        KvStore::open(&dir.path().join("db"), BackendConfig::default()).unwrap()
    }

    #[test]
    fn leases_persist_with_and_without_key_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir);
            assert!(s.leases().unwrap().is_empty());
            // Lease only: no new revision, but committed.
            let mut t = s.write();
            t.put_lease(7, 10, 0);
            t.put_lease(-5, 3, 0);
            let out = t.end(Some(5)).unwrap();
            assert_eq!(out.rev, 1);
            assert_eq!(s.rev(), 1);
            // Lease and key change in one commit.
            let mut t = s.write();
            t.put(b"k", b"v", 7).unwrap();
            t.delete_lease(-5);
            t.put_lease(9, 60, 42);
            assert_eq!(t.end(Some(6)).unwrap().rev, 2);
            s.sync().unwrap();
        }
        let s = open(&dir);
        let ls = s.leases().unwrap();
        assert_eq!(
            ls,
            vec![
                LeaseRecord {
                    id: 7,
                    ttl: 10,
                    remaining_ttl: 0
                },
                LeaseRecord {
                    id: 9,
                    ttl: 60,
                    remaining_ttl: 42
                },
            ]
        );
        assert_eq!(s.consistent_index(), 6);
    }

    #[test]
    fn dropped_txn_writes_no_lease() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir);
        let mut t = s.write();
        t.put_lease(1, 5, 0);
        drop(t);
        assert!(s.leases().unwrap().is_empty());
    }

    #[test]
    fn record_matches_etcd_leasepb_bytes() {
        // leasepb.Lease{ID: 1, TTL: 5} marshals to 08 01 10 05.
        let r = LeaseRecord {
            id: 1,
            ttl: 5,
            remaining_ttl: 0,
        };
        assert_eq!(r.encode_to_vec(), vec![0x08, 0x01, 0x10, 0x05]);
    }
}
