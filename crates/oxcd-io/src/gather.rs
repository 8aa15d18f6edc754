//! Collecting a message that arrives in chunks (HTTP/2 DATA frames).
//!
//! Almost always one chunk holds the whole gRPC message; [`Gather`] keeps
//! that chunk as is, so the message is a slice of it rather than a copy,
//! and joins chunks only when a second one arrives.

use bytes::{Bytes, BytesMut};

/// The bytes received so far.
#[derive(Debug, Default)]
pub struct Gather {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl Gather {
    /// Appends `chunk`.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        match (&self.first, &mut self.joined) {
            (None, None) => self.first = Some(chunk),
            (Some(f), None) => {
                let mut j = BytesMut::with_capacity(f.len() + chunk.len());
                j.extend_from_slice(f);
                j.extend_from_slice(&chunk);
                self.joined = Some(j);
            }
            (_, Some(j)) => j.extend_from_slice(&chunk),
        }
    }

    /// Everything received so far.
    pub fn as_slice(&self) -> &[u8] {
        match (&self.first, &self.joined) {
            (_, Some(j)) => j,
            (Some(f), None) => f,
            (None, None) => &[],
        }
    }

    /// Everything received, without a copy if it came in one chunk.
    pub fn into_bytes(self) -> Bytes {
        match (self.first, self.joined) {
            (_, Some(j)) => j.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_chunk_is_kept_and_more_are_joined() {
        let mut g = Gather::default();
        assert!(g.as_slice().is_empty());
        let one = Bytes::from_static(b"hello");
        g.push(one.clone());
        g.push(Bytes::new());
        assert_eq!(g.as_slice(), b"hello");
        let same = g.into_bytes();
        assert_eq!(same.as_ptr(), one.as_ptr(), "a single chunk is not copied");

        let mut g = Gather::default();
        for part in [&b"he"[..], b"ll", b"o"] {
            g.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(g.as_slice(), b"hello");
        assert_eq!(&g.into_bytes()[..], b"hello");
    }
}
