//! A consistent read of whole tables by name, for writing the backend out
//! in another format (the Snapshot RPC streams it as an etcd bbolt file).
//!
//! Every table is `&[u8] → &[u8]` under etcd's bucket name (see
//! [`crate::backend`]), so an exporter needs no knowledge of what the rows
//! mean. The view is one redb read transaction: the file as of one commit,
//! while writers go on.

use redb::{ReadableTable, TableDefinition, TableError};

use crate::backend::Snapshot;
use crate::error::{MvccError, Result};
use crate::kvstore::KvStore;

/// The backend as of one commit.
pub struct ExportView {
    snap: Snapshot,
}

impl KvStore {
    /// A view of every table as of now: applied writes still in the open
    /// batch are committed first (without an fsync), so the view holds
    /// everything applied before the call.
    ///
    /// # Errors
    /// Backend errors.
    pub fn export_view(&self) -> Result<ExportView> {
        self.shared.backend.commit_open()?;
        Ok(ExportView {
            snap: self.shared.backend.begin_read()?,
        })
    }
}

impl ExportView {
    /// Calls `f` with every row of table `name` in key order, until it
    /// returns `false`. A table that does not exist has no rows.
    ///
    /// # Errors
    /// Backend errors.
    pub fn for_each(&self, name: &str, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        let table = match self.snap.open_table(def) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(MvccError::backend("open table", e)),
        };
        let rows = table
            .iter()
            .map_err(|e| MvccError::backend("scan table", e))?;
        for row in rows {
            let (k, v) = row.map_err(|e| MvccError::backend("scan table", e))?;
            if !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }
}
