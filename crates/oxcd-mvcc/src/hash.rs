//! `HashKV`: a checksum of the key space at a revision, compared across
//! members to detect corruption (mirrors `store.HashByRev` in etcd
//! `mvcc/kvstore.go`).
//!
//! The hash is CRC-32C (Castagnoli) over the table name `key`, then, in
//! revision order, each stored `(revision key bytes, value bytes)` with
//! revision `<= rev`, skipping revisions `<= compact_rev` that a compaction
//! at `rev` would drop. Compaction progress on disk therefore does not
//! change the result, and the byte images match etcd's.

use crate::backend::{CONSISTENT_INDEX_KEY, KEY_TABLE};
use crate::error::{MvccError, Result};
use crate::kvstore::KvStore;
use crate::revision::Revision;
use redb::{ReadableTable, TableHandle};

/// The answer to [`KvStore::hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C of the key space at the asked revision.
    pub hash: u32,
    /// The store's current revision when the hash was taken.
    pub current_rev: i64,
    /// The store's compact revision when the hash was taken.
    pub compact_rev: i64,
}

impl KvStore {
    /// Hashes the key space as of `rev` (`<= 0` means the current
    /// revision). Reads the whole `key` table up to `rev`; does not block
    /// writers.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `0 < rev <= compact_rev`,
    /// [`MvccError::FutureRev`] when `rev > current`, backend and
    /// corruption errors.
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        let _timer = crate::metrics::get().hash_rev.start_timer();
        let (rev, keep, tx, current_rev, compact_rev) = {
            // The revision first, then the commit: with the state held no
            // revision is published in between, so every row up to it is
            // in the committed file the hash reads (the other order could
            // publish a group that is only staged, and hash too little).
            let st = self.shared.state();
            self.shared.backend.commit_open()?;
            if rev > 0 && rev <= st.compact_rev {
                return Err(MvccError::Compacted {
                    requested: rev,
                    compact_rev: st.compact_rev,
                });
            }
            if rev > st.current_rev {
                return Err(MvccError::FutureRev {
                    requested: rev,
                    current_rev: st.current_rev,
                });
            }
            let rev = if rev <= 0 { st.current_rev } else { rev };
            let tx = self.shared.backend.begin_read()?;
            (rev, st.index.keep(rev), tx, st.current_rev, st.compact_rev)
        };
        let table = tx
            .open_table(KEY_TABLE)
            .map_err(|e| MvccError::backend("open key table", e))?;
        let upper = Revision::new(rev + 1, 0).to_bytes();
        let mut h = Crc32c::new();
        h.update(b"key");
        let iter = table
            .range(..upper.as_slice())
            .map_err(|e| MvccError::backend("scan key table", e))?;
        for entry in iter {
            let (k, v) = entry.map_err(|e| MvccError::backend("scan key table", e))?;
            let (r, _) = Revision::from_key(k.value())?;
            // Skip what compaction drops (etcd skips nothing if the keep
            // set is empty; kept for identical hashes).
            if r.main <= compact_rev && !keep.is_empty() && !keep.contains(&r) {
                continue;
            }
            h.update(k.value());
            h.update(v.value());
        }
        Ok(HashKv {
            hash: h.finish(),
            current_rev,
            compact_rev,
        })
    }
}

impl KvStore {
    /// Hashes the whole backend (etcd's `Hash` RPC, `backend.Hash`):
    /// CRC-32C over every table in name order, each as its name followed
    /// by its keys and values in key order, skipping
    /// `meta/consistent_index` (which differs between members that hold
    /// the same data). Returns the hash and the current revision.
    ///
    /// # Errors
    /// Backend errors.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let _timer = crate::metrics::get().hash.start_timer();
        let (tx, rev) = {
            // As in `hash_kv`: no revision published between the commit
            // and the read view.
            let st = self.shared.state();
            self.shared.backend.commit_open()?;
            (self.shared.backend.begin_read()?, st.current_rev)
        };
        let mut names: Vec<String> = tx
            .list_tables()
            .map_err(|e| MvccError::backend("list tables", e))?
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        let mut h = Crc32c::new();
        for name in &names {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(name);
            let table = tx
                .open_table(def)
                .map_err(|e| MvccError::backend("open table", e))?;
            h.update(name.as_bytes());
            let iter = table
                .iter()
                .map_err(|e| MvccError::backend("scan table", e))?;
            for entry in iter {
                let (k, v) = entry.map_err(|e| MvccError::backend("scan table", e))?;
                if name == "meta" && k.value() == CONSISTENT_INDEX_KEY {
                    continue;
                }
                h.update(k.value());
                h.update(v.value());
            }
        }
        Ok((h.finish(), rev))
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI_REFLECTED
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = make_table();

impl Crc32c {
    /// A fresh checksum.
    pub fn new() -> Self {
        Crc32c(!0)
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u32 {
        !self.0
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // The standard check value of CRC-32C over "123456789".
        let mut h = Crc32c::new();
        h.update(b"123456789");
        assert_eq!(h.finish(), 0xE306_9283);
        let mut h = Crc32c::new();
        h.update(b"12345");
        h.update(b"6789");
        assert_eq!(h.finish(), 0xE306_9283);
        assert_eq!(Crc32c::new().finish(), 0);
    }
}
