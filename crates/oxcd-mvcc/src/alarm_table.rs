//! The `alarm` table: raised alarms, persisted in the same redb commit as
//! the consistent index of the entry that raised or cleared them (etcd's
//! `alarm` bucket, `etcdserver/api/v3alarm/alarms.go`).
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | `alarm` | protobuf `etcdserverpb.AlarmMember{memberID=1, alarm=2}` | empty |
//!
//! The key is the encoded alarm itself, exactly as etcd stores it, so the
//! bucket's bytes carry over to an etcd backend file unchanged. The table
//! is created by the first alarm, so a store that never raised one has
//! none and [`KvStore::alarms`] reads it as empty.

use oxcd_api::etcdserverpb::AlarmMember;
use prost::Message;
use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};

use crate::error::{MvccError, Result};
use crate::kvstore::KvStore;
use crate::txn::WriteTxn;

/// The `alarm` table: encoded `AlarmMember` → empty.
pub(crate) const ALARM_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("alarm");

/// A pending change to the `alarm` table, committed with its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlarmOp {
    /// Record the alarm as raised.
    Put(AlarmMember),
    /// Clear it.
    Delete(AlarmMember),
}

impl WriteTxn {
    /// Records alarm `a` as raised in this transaction's commit (which
    /// makes no new revision when it changes no key).
    pub fn put_alarm(&mut self, a: AlarmMember) {
        self.alarm_ops.push(AlarmOp::Put(a));
    }

    /// Clears alarm `a` in this transaction's commit.
    pub fn delete_alarm(&mut self, a: AlarmMember) {
        self.alarm_ops.push(AlarmOp::Delete(a));
    }
}

/// Applies `ops` in order inside the redb write transaction `tx`.
pub(crate) fn write_ops(tx: &WriteTransaction, ops: &[AlarmOp]) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut table = tx
        .open_table(ALARM_TABLE)
        .map_err(|e| MvccError::backend("open alarm table", e))?;
    for op in ops {
        match op {
            AlarmOp::Put(a) => {
                table
                    .insert(a.encode_to_vec().as_slice(), [].as_slice())
                    .map_err(|e| MvccError::backend("write alarm", e))?;
            }
            AlarmOp::Delete(a) => {
                table
                    .remove(a.encode_to_vec().as_slice())
                    .map_err(|e| MvccError::backend("delete alarm", e))?;
            }
        }
    }
    Ok(())
}

impl KvStore {
    /// Every stored alarm, in key order (the server loads them at open).
    ///
    /// # Errors
    /// Backend errors; [`MvccError::Corrupt`] for a key that does not
    /// decode as an `AlarmMember`.
    pub fn alarms(&self) -> Result<Vec<AlarmMember>> {
        let tx = self.shared.backend.begin_read()?;
        let table = match tx.open_table(ALARM_TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(MvccError::backend("open alarm table", e)),
        };
        let mut out = Vec::new();
        let iter = table
            .iter()
            .map_err(|e| MvccError::backend("scan alarm table", e))?;
        for entry in iter {
            let (k, _) = entry.map_err(|e| MvccError::backend("scan alarm table", e))?;
            let a = AlarmMember::decode(k.value())
                .map_err(|e| MvccError::Corrupt(format!("alarm record: {e}")))?;
            out.push(a);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendConfig;

    #[test]
    fn alarms_persist_without_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let nospace = AlarmMember {
            member_id: 7,
            alarm: 1,
        };
        let corrupt = AlarmMember {
            member_id: 9,
            alarm: 2,
        };
        {
            let s = KvStore::open(&path, BackendConfig::default()).unwrap();
            assert!(s.alarms().unwrap().is_empty());
            let mut t = s.write();
            t.put_alarm(nospace);
            t.put_alarm(corrupt);
            assert_eq!(t.end(Some(3)).unwrap().rev, 1);
            let mut t = s.write();
            t.delete_alarm(corrupt);
            t.end(Some(4)).unwrap();
            s.sync().unwrap();
        }
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        assert_eq!(s.alarms().unwrap(), vec![nospace]);
        assert_eq!(s.consistent_index(), 4);
        assert_eq!(s.rev(), 1);
    }

    #[test]
    fn key_matches_etcd_alarm_member_bytes() {
        // AlarmMember{MemberID: 1, Alarm: NOSPACE} marshals to 08 01 10 01.
        let a = AlarmMember {
            member_id: 1,
            alarm: 1,
        };
        assert_eq!(a.encode_to_vec(), vec![0x08, 0x01, 0x10, 0x01]);
    }
}
