//! etcd's two stream encodings of raft messages (rafthttp `msg_codec.go`
//! and `msgappv2_codec.go`).
//!
//! - *message*: each message is its protobuf length as a big-endian u64,
//!   then the protobuf. Used by the `message` stream and, for one message,
//!   by `POST /raft/snapshot`'s head.
//! - *msgappv2*: a type byte, then per type: `0` a link heartbeat (nothing
//!   more); `2` a whole message (u64 length + protobuf); `1` entries that
//!   continue the previous append (decoder state). oxcd writes only `0` and
//!   `2`, which every etcd decoder reads; it never dials msgapp streams, so
//!   it never has to read `1`.
//!
//! Messages stay encoded (`Bytes`): raft-rs's `eraftpb` and etcd's `raftpb`
//! share field numbers and enum values, so the bytes pass through as they
//! are. Only the link heartbeat is recognised here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest message accepted on a stream (etcd's `readBytesLimit`).
pub const MESSAGE_LIMIT: u64 = 512 * 1024 * 1024;

/// Encoded `raftpb.Message{Type: MsgHeartbeat}` with `from` and `to` zero:
/// etcd's link heartbeat, which keeps an idle stream inside the reader's
/// 5 s read timeout and is dropped by the reader.
pub const LINK_HEARTBEAT: &[u8] = &[0x08, 0x08];

/// A `message`-stream frame of one encoded message.
pub fn message_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + message.len());
    b.put_u64(message.len() as u64);
    b.put_slice(message);
    b.freeze()
}

/// A `msgappv2` frame of one whole encoded message (type 2).
pub fn msgapp_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(9 + message.len());
    b.put_u8(2);
    b.put_u64(message.len() as u64);
    b.put_slice(message);
    b.freeze()
}

/// A `msgappv2` link heartbeat (type 0).
pub fn msgapp_heartbeat() -> Bytes {
    Bytes::from_static(&[0])
}

/// Why a stream could not be read on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length beyond [`MESSAGE_LIMIT`] (etcd's `rafthttp: error limit exceeded`).
    #[error("rafthttp: error limit exceeded")]
    TooLarge,
}

/// Reads `message`-stream frames out of bytes as they arrive.
#[derive(Default)]
pub struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    /// Adds received bytes.
    pub fn extend(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole message, if one has arrived.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`]; the stream cannot be read on after it.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = u64::from_be_bytes(self.buf[..8].try_into().unwrap_or_default());
        if len > MESSAGE_LIMIT {
            return Err(FrameError::TooLarge);
        }
        let len = len as usize;
        if self.buf.len() - 8 < len {
            // Room for the rest, requested once rather than per chunk.
            self.buf.reserve(len + 8 - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(8);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Whether an encoded message is etcd's link heartbeat: a `MsgHeartbeat`
/// with neither `from` nor `to` (etcd's `isLinkHeartbeatMessage`).
pub fn is_link_heartbeat(message: &[u8]) -> bool {
    use protobuf::Message as _;
    match raft::eraftpb::Message::parse_from_bytes(message) {
        Ok(m) => {
            m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat && m.from == 0 && m.to == 0
        }
        Err(_) => false,
    }
}

/// The raft message type number of an encoded message (field 1), without
/// decoding the rest; `None` if the bytes do not start with it.
pub fn message_type(message: &[u8]) -> Option<u64> {
    let (&tag, rest) = message.split_first()?;
    if tag != 0x08 {
        // Field 1 omitted: proto3 writers leave out the zero type (MsgHup).
        return Some(0);
    }
    let mut value = 0u64;
    for (i, b) in rest.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// raft's `MsgApp` (raft-rs `MsgAppend`).
pub const MSG_APP: u64 = 3;
/// raft's `MsgSnap` (raft-rs `MsgSnapshot`).
pub const MSG_SNAP: u64 = 7;

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};

    fn append(index: u64) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 3;
        m.index = index;
        m.entries.push(Entry {
            index: index + 1,
            term: 3,
            data: vec![7; 100].into(),
            ..Default::default()
        });
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let msgs: Vec<Vec<u8>> = (0..20).map(append).collect();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&message_frame(m));
        }
        for cut in [1, 3, 8, 9, 50, 1000] {
            let mut r = MessageReader::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                r.extend(chunk);
                while let Some(m) = r.next_message().unwrap() {
                    got.push(m.to_vec());
                }
            }
            assert_eq!(got, msgs, "chunks of {cut}");
        }
    }

    #[test]
    fn a_length_past_the_limit_is_refused_before_buffering() {
        let mut r = MessageReader::default();
        r.extend(&(MESSAGE_LIMIT + 1).to_be_bytes());
        assert_eq!(r.next_message(), Err(FrameError::TooLarge));
    }

    #[test]
    fn the_link_heartbeat_is_etcds_and_nothing_else_is_one() {
        // gogo writes every non-nullable field; raft-rs leaves zeros out.
        // Both spellings of an empty MsgHeartbeat are the link heartbeat.
        assert!(is_link_heartbeat(LINK_HEARTBEAT));
        let gogo = [
            0x08, 0x08, 0x10, 0, 0x18, 0, 0x20, 0, 0x28, 0, 0x30, 0, 0x40, 0, 0x4a, 0x04, 0x12,
            0x02, 0x0a, 0x00, 0x50, 0, 0x58, 0,
        ];
        assert!(is_link_heartbeat(&gogo));
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = 1;
        hb.to = 2;
        assert!(!is_link_heartbeat(&hb.write_to_bytes().unwrap()));
        assert!(!is_link_heartbeat(&append(1)));
    }

    #[test]
    fn the_type_is_read_without_decoding() {
        assert_eq!(message_type(&append(5)), Some(MSG_APP));
        assert_eq!(message_type(LINK_HEARTBEAT), Some(8));
        let mut snap = Message::default();
        snap.set_msg_type(MessageType::MsgSnapshot);
        snap.to = 1;
        assert_eq!(
            message_type(&snap.write_to_bytes().unwrap()),
            Some(MSG_SNAP)
        );
        assert_eq!(message_type(&[0x10, 1]), Some(0));
        assert_eq!(message_type(&[0x08, 0x80]), None);
    }

    #[test]
    fn msgapp_frames_are_etcds_type_2_and_0() {
        let m = append(1);
        let f = msgapp_frame(&m);
        assert_eq!(f[0], 2);
        assert_eq!(
            u64::from_be_bytes(f[1..9].try_into().unwrap()),
            m.len() as u64
        );
        assert_eq!(&f[9..], &m[..]);
        assert_eq!(&msgapp_heartbeat()[..], &[0]);
    }
}
