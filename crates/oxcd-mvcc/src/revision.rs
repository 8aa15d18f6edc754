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
/// The largest revision (main or sub) a stored key may hold. Revisions
/// count changes from 1: at one a microsecond, passing 2^62 takes 146 000
/// years. A larger one is damage, refused when read, so that arithmetic
/// on revisions (`rev + 1`, a window past it) never overflows.
pub const MAX_REVISION: i64 = 1 << 62;
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
    /// [`MvccError::Corrupt`] when the length, separator or mark is wrong,
    /// or the revision is negative or above [`MAX_REVISION`].
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
        // A negative revision (top bit set) would also break the rule that
        // byte order is revision order.
        let ceiling = MAX_REVISION as u64;
        if main > ceiling || sub > ceiling {
            return Err(MvccError::Corrupt(format!(
                "revision out of range in key {b:02x?}"
            )));
        }
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
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;

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
        // Found by `damaged_rows`: a negative revision sorts after every
        // other one, so the scan at open met it out of order; a revision
        // at i64::MAX made `rev + 1` overflow in hash_kv.
        assert!(Revision::from_key(&Revision::new(-1, 0).to_key(false)).is_err());
        assert!(Revision::from_key(&Revision::new(2, -1).to_key(true)).is_err());
        let top = Revision::new(i64::MAX, u32::MAX.into());
        assert!(Revision::from_key(&top.to_key(false)).is_err());
        let max = Revision::new(MAX_REVISION, MAX_REVISION);
        assert_eq!(
            Revision::from_key(&max.to_key(false)).unwrap(),
            (max, false)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any key of the `key` table: a revision, or a typed error; what
        /// parses is exactly what `to_key` writes.
        #[test]
        fn any_key_parses_or_is_refused(
            main in any::<i64>(),
            sub in any::<i64>(),
            tombstone in any::<bool>(),
            damage in prop::option::of(damages(3)),
            raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..24)),
        ) {
            let good = Revision::new(main, sub).to_key(tombstone);
            match Revision::from_key(&good) {
                Ok(parsed) => prop_assert_eq!(parsed, (Revision::new(main, sub), tombstone)),
                Err(_) => prop_assert!(!(0..=MAX_REVISION).contains(&main) || !(0..=MAX_REVISION).contains(&sub)),
            }
            let bad = match (raw, damage) {
                (Some(raw), _) => raw,
                (None, Some(d)) => damaged(good, &d),
                (None, None) => good,
            };
            match Revision::from_key(&bad) {
                Ok((rev, t)) => prop_assert_eq!(rev.to_key(t), bad),
                Err(e) => prop_assert!(matches!(e, MvccError::Corrupt(_)), "{e}"),
            }
        }
    }
}
