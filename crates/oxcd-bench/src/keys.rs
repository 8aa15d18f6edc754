//! Keys and values as etcd's benchmark makes them, so both servers store
//! byte-identical data: a key is a zeroed buffer of `--key-size` bytes
//! holding Go's signed varint (`binary.PutVarint`) of the key index at its
//! start; a value is `--val-size` random letters, drawn once per run.

use bytes::Bytes;
use rand::Rng;

/// The key with index `n`, `size` bytes long. A varint longer than `size`
/// is cut short, so a key space larger than `size` bytes can address
/// collides, as it would overflow in etcd's tool.
pub(crate) fn encode_key(n: u64, size: usize) -> Bytes {
    let mut buf = vec![0u8; size];
    // Go's PutVarint zig-zags; the index is never negative, so that is n << 1.
    let mut v = u128::from(n) << 1;
    for slot in &mut buf {
        let low = u8::try_from(v & 0x7f).expect("masked to 7 bits");
        v >>= 7;
        *slot = if v == 0 { low } else { low | 0x80 };
        if v == 0 {
            break;
        }
    }
    Bytes::from(buf)
}

/// `size` random ASCII letters.
pub(crate) fn random_value(size: usize) -> Bytes {
    let mut rng = rand::rng();
    (0..size)
        .map(|_| rng.random_range(b'a'..=b'z'))
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_go_put_varint() {
        // Go: binary.PutVarint(buf, 0) -> [0], 1 -> [2], 64 -> [0x80, 0x01].
        assert_eq!(&encode_key(0, 3)[..], [0, 0, 0]);
        assert_eq!(&encode_key(1, 3)[..], [2, 0, 0]);
        assert_eq!(&encode_key(64, 3)[..], [0x80, 0x01, 0]);
        assert_eq!(encode_key(99_999, 8).len(), 8);
        assert_ne!(encode_key(99_999, 8), encode_key(99_998, 8));
    }

    #[test]
    fn values_have_the_requested_size() {
        assert_eq!(random_value(256).len(), 256);
        assert!(random_value(0).is_empty());
    }
}
