//! The auth tables: users, roles and the enabled flag and revision,
//! persisted in the same redb commit as the consistent index of the entry
//! that changed them (etcd's `auth`, `authUsers` and `authRoles` buckets,
//! `auth/store.go`).
//!
//! | table | key | value |
//! |-------|-----|-------|
//! | `auth` | `authEnabled` | one byte, 1 = on |
//! | `auth` | `authRevision` | 8-byte big-endian revision |
//! | `authUsers` | user name | protobuf `authpb.User` |
//! | `authRoles` | role name | protobuf `authpb.Role` |
//!
//! Names and encodings are etcd's, so the buckets carry over to an etcd
//! backend file byte for byte. Tables are created by their first write; a
//! store that never had auth changes has none, and [`KvStore::auth_records`]
//! reads that as empty. This crate only stores bytes: what they mean is
//! the server's business.

use redb::{ReadableTable, TableDefinition, TableError, WriteTransaction};

use crate::error::{MvccError, Result};
use crate::kvstore::KvStore;
use crate::txn::WriteTxn;

/// One of the three auth tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthTable {
    /// `auth`: `authEnabled` and `authRevision`.
    Auth,
    /// `authUsers`: name → `authpb.User`.
    Users,
    /// `authRoles`: name → `authpb.Role`.
    Roles,
}

impl AuthTable {
    /// Every auth table, in the order [`KvStore::auth_records`] reads them.
    pub const ALL: [AuthTable; 3] = [AuthTable::Auth, AuthTable::Users, AuthTable::Roles];

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        match self {
            AuthTable::Auth => TableDefinition::new("auth"),
            AuthTable::Users => TableDefinition::new("authUsers"),
            AuthTable::Roles => TableDefinition::new("authRoles"),
        }
    }
}

/// A pending change to an auth table, committed with its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthOp {
    table: AuthTable,
    key: Vec<u8>,
    /// `None` deletes the key.
    value: Option<Vec<u8>>,
}

impl WriteTxn {
    /// Sets `key = value` in auth table `table` in this transaction's
    /// commit (which makes no new revision when it changes no key).
    pub fn put_auth(&mut self, table: AuthTable, key: &[u8], value: &[u8]) {
        self.auth_ops.push(AuthOp {
            table,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        });
    }

    /// Deletes `key` from auth table `table` in this transaction's commit.
    pub fn delete_auth(&mut self, table: AuthTable, key: &[u8]) {
        self.auth_ops.push(AuthOp {
            table,
            key: key.to_vec(),
            value: None,
        });
    }
}

/// Applies `ops` in order inside the redb write transaction `tx`.
pub(crate) fn write_ops(tx: &WriteTransaction, ops: &[AuthOp]) -> Result<()> {
    for table in AuthTable::ALL {
        let mut mine = ops.iter().filter(|op| op.table == table).peekable();
        if mine.peek().is_none() {
            continue;
        }
        let mut t = tx
            .open_table(table.definition())
            .map_err(|e| MvccError::backend("open auth table", e))?;
        for op in mine {
            match &op.value {
                Some(v) => {
                    t.insert(op.key.as_slice(), v.as_slice())
                        .map_err(|e| MvccError::backend("write auth record", e))?;
                }
                None => {
                    t.remove(op.key.as_slice())
                        .map_err(|e| MvccError::backend("delete auth record", e))?;
                }
            }
        }
    }
    Ok(())
}

/// The committed contents of the auth tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthRecords {
    /// `auth` table entries, in key order.
    pub auth: Vec<(Vec<u8>, Vec<u8>)>,
    /// `authUsers` entries, in key order.
    pub users: Vec<(Vec<u8>, Vec<u8>)>,
    /// `authRoles` entries, in key order.
    pub roles: Vec<(Vec<u8>, Vec<u8>)>,
}

impl KvStore {
    /// Every committed auth record (the server loads them at open and
    /// after a snapshot install). Missing tables read as empty.
    ///
    /// # Errors
    /// Backend errors.
    pub fn auth_records(&self) -> Result<AuthRecords> {
        let tx = self.shared.backend.begin_read()?;
        let mut out = AuthRecords::default();
        for table in AuthTable::ALL {
            let t = match tx.open_table(table.definition()) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(MvccError::backend("open auth table", e)),
            };
            let rows = match table {
                AuthTable::Auth => &mut out.auth,
                AuthTable::Users => &mut out.users,
                AuthTable::Roles => &mut out.roles,
            };
            let iter = t
                .iter()
                .map_err(|e| MvccError::backend("scan auth table", e))?;
            for entry in iter {
                let (k, v) = entry.map_err(|e| MvccError::backend("scan auth table", e))?;
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendConfig;

    #[test]
    fn auth_records_persist_without_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = KvStore::open(&path, BackendConfig::default()).unwrap();
            assert_eq!(s.auth_records().unwrap(), AuthRecords::default());
            let mut t = s.write();
            t.put_auth(AuthTable::Auth, b"authRevision", &2u64.to_be_bytes());
            t.put_auth(AuthTable::Users, b"bob", b"u1");
            t.put_auth(AuthTable::Users, b"al", b"u0");
            t.put_auth(AuthTable::Roles, b"r", b"x");
            assert_eq!(t.end(Some(5)).unwrap().rev, 1);
            let mut t = s.write();
            t.delete_auth(AuthTable::Roles, b"r");
            t.put_auth(AuthTable::Users, b"bob", b"u2");
            t.end(Some(6)).unwrap();
            s.sync().unwrap();
        }
        let s = KvStore::open(&path, BackendConfig::default()).unwrap();
        let r = s.auth_records().unwrap();
        assert_eq!(
            r.auth,
            vec![(b"authRevision".to_vec(), 2u64.to_be_bytes().to_vec())]
        );
        assert_eq!(
            r.users,
            vec![
                (b"al".to_vec(), b"u0".to_vec()),
                (b"bob".to_vec(), b"u2".to_vec())
            ]
        );
        assert!(r.roles.is_empty());
        assert_eq!(s.consistent_index(), 6);
        assert_eq!(s.rev(), 1);
    }
}
