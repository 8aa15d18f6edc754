//! Filling a new backend file with rows read from another store (booting
//! on an etcd data directory: every bbolt bucket oxcd keeps becomes the
//! table of the same name, byte for byte; see [`crate::backend`]).
//!
//! Rows are buffered and written in batches, each a durable redb commit
//! (a non-durable commit keeps its pages in memory until the next durable
//! one: a 360 MB import peaked at 826 MiB RSS that way), and
//! [`BackendImport::finish`] syncs the file. The file is scratch until then: an import cut short is
//! redone from its source, never used.

use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition};

use crate::error::{MvccError, Result};

/// Bytes of rows buffered before a batch is committed.
const BATCH_BYTES: usize = 32 << 20;
/// redb's page cache while importing (its default, 1 GiB, would hold
/// every page written: the import needs none of them again).
const CACHE_BYTES: usize = 16 << 20;

/// A backend file being filled.
pub struct BackendImport {
    db: Database,
    path: PathBuf,
    table: String,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
    total: u64,
}

impl BackendImport {
    /// Creates an empty backend file at `path` (replacing any file there).
    ///
    /// # Errors
    /// The file cannot be removed or created.
    pub fn create(path: &Path) -> Result<BackendImport> {
        if path.exists() {
            std::fs::remove_file(path).map_err(|source| MvccError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| MvccError::Open {
                path: path.to_path_buf(),
                source: Box::new(e.into()),
            })?;
        Ok(BackendImport {
            db,
            path: path.to_path_buf(),
            table: String::new(),
            rows: Vec::new(),
            bytes: 0,
            total: 0,
        })
    }

    /// Adds a row to `table`. Rows of one table come together, in any
    /// key order.
    ///
    /// # Errors
    /// Backend errors from a batch commit.
    pub fn put(&mut self, table: &str, key: &[u8], value: &[u8]) -> Result<()> {
        if table != self.table {
            self.flush()?;
            table.clone_into(&mut self.table);
        }
        self.bytes += key.len() + value.len();
        self.rows.push((key.to_vec(), value.to_vec()));
        self.total += 1;
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let tx = self
            .db
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        {
            let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(&self.table);
            let mut t = tx
                .open_table(def)
                .map_err(|e| MvccError::backend("open table", e))?;
            for (k, v) in self.rows.drain(..) {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| MvccError::backend("insert", e))?;
            }
        }
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        self.bytes = 0;
        Ok(())
    }

    /// Writes what is buffered and makes the file durable; returns the
    /// number of rows imported.
    ///
    /// # Errors
    /// Backend errors, or the fsync failing.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        let tx = self
            .db
            .begin_write()
            .map_err(|e| MvccError::backend("begin write", e))?;
        tx.commit().map_err(|e| MvccError::backend("commit", e))?;
        drop(self.db);
        std::fs::File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|source| MvccError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackendConfig, KvStore};

    #[test]
    fn imported_rows_open_as_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut imp = BackendImport::create(&path).unwrap();
        let kv = oxcd_api::mvccpb::KeyValue {
            key: b"a".to_vec().into(),
            value: b"1".to_vec().into(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        let rev = crate::Revision::new(2, 0).to_bytes();
        imp.put("key", &rev, &prost::Message::encode_to_vec(&kv))
            .unwrap();
        imp.put("meta", b"consistent_index", &7u64.to_be_bytes())
            .unwrap();
        assert_eq!(imp.finish().unwrap(), 2);
        let store = KvStore::open(&path, BackendConfig::default()).unwrap();
        assert_eq!(store.consistent_index(), 7);
        assert_eq!(store.rev(), 2);
        let r = store
            .read()
            .unwrap()
            .range(b"a", b"", crate::RangeOptions::default())
            .unwrap();
        assert_eq!(r.kvs[0].value.as_ref(), b"1");
    }
}
