//! Test only: the damage the decoders' property tests do to valid
//! encodings (a flipped byte, a cut, a length or count field set to an
//! edge value, bytes inserted or removed). This one file serves every
//! crate that fuzzes its decoders: they include it by `#[path]` (a
//! test-only helper of ~100 lines does not earn a crate of its own).

use proptest::prelude::*;
use proptest::sample::Index;

/// One change to a byte string.
#[derive(Debug, Clone)]
pub(crate) enum Damage {
    /// XOR one byte with a non-zero mask.
    Flip { at: Index, mask: u8 },
    /// Cut the bytes at a point.
    Truncate { at: Index },
    /// Overwrite 1, 2, 4 or 8 bytes with an edge value, little- or
    /// big-endian: how a length, count or offset field is blown up.
    Word {
        at: Index,
        width: usize,
        value: u64,
        big_endian: bool,
    },
    /// Insert bytes.
    Insert { at: Index, bytes: Vec<u8> },
    /// Remove up to 16 bytes.
    Remove { at: Index, len: usize },
}

/// Values a damaged field takes: mostly the edges where arithmetic breaks.
pub(crate) fn edge_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just(i64::MAX as u64),
        Just(1 << 63),
        (0u32..64).prop_map(|s| 1u64 << s),
        0u64..4096,
        any::<u64>(),
    ]
}

pub(crate) fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        1 => any::<Index>().prop_map(|at| Damage::Truncate { at }),
        3 => (any::<Index>(), prop::sample::select(vec![1usize, 2, 4, 8]), edge_value(), any::<bool>())
            .prop_map(|(at, width, value, big_endian)| Damage::Word { at, width, value, big_endian }),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, len)| Damage::Remove { at, len }),
    ]
}

/// Up to `n` changes.
pub(crate) fn damages(n: usize) -> impl Strategy<Value = Vec<Damage>> {
    prop::collection::vec(damage(), 1..=n)
}

impl Damage {
    pub(crate) fn apply(&self, b: &mut Vec<u8>) {
        if b.is_empty() {
            if let Damage::Insert { bytes, .. } = self {
                b.extend_from_slice(bytes);
            }
            return;
        }
        match self {
            Damage::Flip { at, mask } => {
                let i = at.index(b.len());
                b[i] ^= mask;
            }
            Damage::Truncate { at } => b.truncate(at.index(b.len())),
            Damage::Word {
                at,
                width,
                value,
                big_endian,
            } => {
                let i = at.index(b.len());
                let bytes = if *big_endian {
                    value.to_be_bytes()[8 - width..].to_vec()
                } else {
                    value.to_le_bytes()[..*width].to_vec()
                };
                let n = bytes.len().min(b.len() - i);
                b[i..i + n].copy_from_slice(&bytes[..n]);
            }
            Damage::Insert { at, bytes } => {
                let i = at.index(b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Damage::Remove { at, len } => {
                let i = at.index(b.len());
                let end = (i + len).min(b.len());
                b.drain(i..end);
            }
        }
    }
}

/// `b` with every change of `ds` applied in turn.
pub(crate) fn damaged(mut b: Vec<u8>, ds: &[Damage]) -> Vec<u8> {
    for d in ds {
        d.apply(&mut b);
    }
    b
}
