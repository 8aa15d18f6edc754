//! Revisions and their on-disk key encoding (mirrors etcd `mvcc/revision.go`).
//!
//! A revision is `(main, sub)`: every write transaction that changes the key
//! space gets one new `main`; each change inside it gets `sub` 0, 1, 2, … in
//! execution order. On disk a revision is the 17-byte key
//!
//! ```text
//! +----------------+-----+----------------+ (+-----+)
//! | main (u64 BE)  | '_' | sub (u64 BE)   | ( 't' )   <- only for tombstones
//! +----------------+-----+----------------+ (+-----+)
//!   bytes 0..8      8     9..17              17
//! ```
//!
//! Big-endian integers make byte order equal revision order, so a table scan
//! visits revisions in the order they were written.

use crate::error::{MvccError, Result};

/// Length of a plain revision key.
pub const REV_BYTES_LEN: usize = 8 + 1 + 8;
/// Length of a revision key carrying the tombstone mark.
pub const MARKED_REV_BYTES_LEN: usize = REV_BYTES_LEN + 1;
/// The byte appended to a tombstone's revision key.
pub const MARK_TOMBSTONE: u8 = b't';
const SEPARATOR: u8 = b'_';

/// One change in the key space: the `main` revision of its transaction and
/// its position `sub` inside that transaction. Ordered by `(main, sub)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// Main revision: one per key-space-changing write transaction.
    pub main: i64,
    /// Sub revision: index of the change inside its transaction.
    pub sub: i64,
}

impl Revision {
    /// A revision from its two parts.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// The 17-byte key of this revision (no tombstone mark).
    pub fn to_bytes(self) -> [u8; REV_BYTES_LEN] {
        let mut b = [0u8; REV_BYTES_LEN];
        // Revisions are never negative; the cast keeps etcd's byte image.
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8] = SEPARATOR;
        b[9..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    /// The on-disk key: 17 bytes, or 18 with the tombstone mark.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        v.extend_from_slice(&self.to_bytes());
        if tombstone {
            v.push(MARK_TOMBSTONE);
        }
        v
    }

    /// Parses a 17- or 18-byte on-disk key into `(revision, is_tombstone)`.
    ///
    /// # Errors
    /// [`MvccError::Corrupt`] when the length, separator or mark is wrong.
    pub fn from_key(b: &[u8]) -> Result<(Revision, bool)> {
        let tombstone = match b.len() {
            REV_BYTES_LEN => false,
            MARKED_REV_BYTES_LEN if b[REV_BYTES_LEN] == MARK_TOMBSTONE => true,
            _ => return Err(MvccError::Corrupt(format!("bad revision key {b:02x?}"))),
        };
        if b[8] != SEPARATOR {
            return Err(MvccError::Corrupt(format!(
                "bad revision key separator in {b:02x?}"
            )));
        }
        let main = u64::from_be_bytes(b[..8].try_into().expect("slice of 8 bytes"));
        let sub = u64::from_be_bytes(b[9..17].try_into().expect("slice of 8 bytes"));
        Ok((Revision::new(main as i64, sub as i64), tombstone))
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.main, self.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(i64::MAX, i64::MAX),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
    }

    #[test]
    fn key_round_trip_and_etcd_image() {
        let r = Revision::new(2, 1);
        let k = r.to_key(false);
        assert_eq!(
            k,
            [0, 0, 0, 0, 0, 0, 0, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 1].to_vec()
        );
        assert_eq!(Revision::from_key(&k).unwrap(), (r, false));
        let t = r.to_key(true);
        assert_eq!(t.len(), 18);
        assert_eq!(t[17], b't');
        assert_eq!(Revision::from_key(&t).unwrap(), (r, true));
    }

    #[test]
    fn corrupt_keys_are_errors() {
        assert!(Revision::from_key(b"short").is_err());
        let mut k = Revision::new(3, 0).to_key(true);
        k[17] = b'x';
        assert!(Revision::from_key(&k).is_err());
        let mut k = Revision::new(3, 0).to_key(false);
        k[8] = b'-';
        assert!(Revision::from_key(&k).is_err());
    }
}
