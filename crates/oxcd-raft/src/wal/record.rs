//! WAL record types and their framing (etcd `wal/encoder.go`,
//! `wal/walpb/record.proto`). The byte layout is drawn in
//! `docs/design/wal.md`; this file is its only implementation.

use crate::error::{Corruption, WalError};

/// One raft log entry, opaque to the WAL apart from its position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The raft log index.
    pub index: u64,
    /// The term the entry was proposed in.
    pub term: u64,
    /// The encoded raft entry (type, payload, context), owned by the raft
    /// loop.
    pub data: Vec<u8>,
}

/// The raft hard state: what a member must remember across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// The current term.
    pub term: u64,
    /// The member voted for in `term`, 0 for none.
    pub vote: u64,
    /// The highest index known to be committed.
    pub commit: u64,
}

impl HardState {
    /// Whether this is the zero state, which `save` does not record (etcd
    /// `raft.IsEmptyHardState`).
    pub fn is_empty(&self) -> bool {
        *self == HardState::default()
    }
}

/// A raft snapshot's position, recorded in the WAL when the snapshot file
/// is saved so that open can start reading right after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotMarker {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// The member/cluster id blob, repeated at the head of every segment.
    Metadata(Vec<u8>),
    Entry(Entry),
    HardState(HardState),
    /// The running checksum at the start of a segment.
    Crc(u32),
    Snapshot(SnapshotMarker),
}

const TYPE_METADATA: u8 = 1;
const TYPE_ENTRY: u8 = 2;
const TYPE_STATE: u8 = 3;
const TYPE_CRC: u8 = 4;
const TYPE_SNAPSHOT: u8 = 5;

/// Bytes of the length word that opens every frame.
pub(crate) const LEN_WORD: usize = 8;
/// Bytes of the body header: type, three reserved zero bytes, crc.
pub(crate) const BODY_HEADER: usize = 8;
/// The length word keeps its upper 32 bits zero, so one record is at most
/// 4 GiB; a stray high bit is then caught as a bad frame, not a huge read.
pub(crate) const MAX_BODY: u64 = u32::MAX as u64;

/// The running CRC-32C after `type_byte` and `data` (CRC-32C: etcd's WAL
/// checksum, hardware accelerated on x86-64 and aarch64).
pub(crate) fn chain(prev: u32, type_byte: u8, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c_append(prev, &[type_byte]), data)
}

/// Rounds a body length up to the 8-byte frame alignment.
pub(crate) fn padded(len: u64) -> u64 {
    len.div_ceil(8) * 8
}

impl Record {
    fn type_byte(&self) -> u8 {
        match self {
            Record::Metadata(_) => TYPE_METADATA,
            Record::Entry(_) => TYPE_ENTRY,
            Record::HardState(_) => TYPE_STATE,
            Record::Crc(_) => TYPE_CRC,
            Record::Snapshot(_) => TYPE_SNAPSHOT,
        }
    }

    /// Appends this record's frame to `buf`, advancing the running checksum
    /// `crc` (a CRC record stores `crc` and leaves it unchanged).
    ///
    /// # Errors
    /// [`WalError::RecordTooLarge`] past [`MAX_BODY`]; `buf` is unchanged.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>, crc: &mut u32) -> Result<(), WalError> {
        let mut head = [0u8; 24];
        let mut put = |ws: &[u64]| {
            for (i, w) in ws.iter().enumerate() {
                head[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            ws.len() * 8
        };
        let (head_len, tail): (usize, &[u8]) = match self {
            Record::Metadata(m) => (0, m),
            Record::Crc(_) => (0, &[]),
            Record::Entry(e) => (put(&[e.index, e.term]), &e.data),
            Record::HardState(h) => (put(&[h.term, h.vote, h.commit]), &[]),
            Record::Snapshot(s) => (put(&[s.index, s.term]), &[]),
        };
        self.encode_parts(buf, crc, &head[..head_len], tail)
    }

    fn encode_parts(
        &self,
        buf: &mut Vec<u8>,
        crc: &mut u32,
        head: &[u8],
        tail: &[u8],
    ) -> Result<(), WalError> {
        let body = BODY_HEADER + head.len() + tail.len();
        if body as u64 > MAX_BODY {
            return Err(WalError::RecordTooLarge(body));
        }
        let t = self.type_byte();
        let stored = match self {
            Record::Crc(c) => *c,
            _ => {
                let c = crc32c::crc32c_append(chain(*crc, t, head), tail);
                *crc = c;
                c
            }
        };
        buf.extend_from_slice(&(body as u64).to_le_bytes());
        buf.extend_from_slice(&[t, 0, 0, 0]);
        buf.extend_from_slice(&stored.to_le_bytes());
        buf.extend_from_slice(head);
        buf.extend_from_slice(tail);
        let pad = padded(body as u64) - body as u64;
        buf.extend(std::iter::repeat_n(0u8, pad as usize));
        Ok(())
    }

    /// Decodes a frame's body (without the length word or padding) and
    /// checks it against the running checksum `crc`, which it advances.
    /// `crc` is `None` before the first CRC record of a read, which then
    /// supplies it.
    pub(crate) fn decode(body: &[u8], crc: &mut Option<u32>) -> Result<Record, Corruption> {
        let (header, data) = body
            .split_first_chunk::<BODY_HEADER>()
            .ok_or(Corruption::BadFrame("body shorter than its header"))?;
        let [t, r0, r1, r2, c @ ..] = *header;
        if (r0, r1, r2) != (0, 0, 0) {
            return Err(Corruption::BadFrame("reserved bytes set"));
        }
        let stored = u32::from_le_bytes(c);
        if t == TYPE_CRC {
            if !data.is_empty() {
                return Err(Corruption::Malformed("crc"));
            }
            if let Some(cur) = *crc {
                if cur != stored {
                    return Err(Corruption::CrcMismatch {
                        stored,
                        computed: cur,
                    });
                }
            }
            *crc = Some(stored);
            return Ok(Record::Crc(stored));
        }
        let Some(cur) = *crc else {
            return Err(Corruption::MissingCrcRecord);
        };
        let computed = chain(cur, t, data);
        let rec = parse(t, data)?;
        if computed != stored {
            return Err(Corruption::CrcMismatch { stored, computed });
        }
        *crc = Some(computed);
        Ok(rec)
    }
}

fn u64_at(data: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&data[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

fn parse(t: u8, data: &[u8]) -> Result<Record, Corruption> {
    match t {
        TYPE_METADATA => Ok(Record::Metadata(data.to_vec())),
        TYPE_ENTRY => {
            if data.len() < 16 {
                return Err(Corruption::Malformed("entry"));
            }
            Ok(Record::Entry(Entry {
                index: u64_at(data, 0),
                term: u64_at(data, 1),
                data: data[16..].to_vec(),
            }))
        }
        TYPE_STATE => {
            if data.len() != 24 {
                return Err(Corruption::Malformed("hard state"));
            }
            Ok(Record::HardState(HardState {
                term: u64_at(data, 0),
                vote: u64_at(data, 1),
                commit: u64_at(data, 2),
            }))
        }
        TYPE_SNAPSHOT => {
            if data.len() != 16 {
                return Err(Corruption::Malformed("snapshot"));
            }
            Ok(Record::Snapshot(SnapshotMarker {
                index: u64_at(data, 0),
                term: u64_at(data, 1),
            }))
        }
        other => Err(Corruption::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(rec: Record) {
        let mut buf = Vec::new();
        let mut crc = 7;
        Record::Crc(7).encode(&mut buf, &mut crc).unwrap();
        rec.encode(&mut buf, &mut crc).unwrap();
        assert_eq!(buf.len() % 8, 0);
        let mut read = None;
        let mut off = 0;
        let mut out = Vec::new();
        while off < buf.len() {
            let len = u64::from_le_bytes(buf[off..off + 8].try_into().unwrap());
            let body = &buf[off + 8..off + 8 + len as usize];
            out.push(Record::decode(body, &mut read).unwrap());
            off += 8 + padded(len) as usize;
        }
        assert_eq!(out, vec![Record::Crc(7), rec]);
        assert_eq!(read, Some(crc));
    }

    #[test]
    fn every_record_type_round_trips() {
        roundtrip(Record::Metadata(b"member 1 cluster 2".to_vec()));
        roundtrip(Record::Metadata(Vec::new()));
        roundtrip(Record::Entry(Entry {
            index: 5,
            term: 2,
            data: b"abc".to_vec(),
        }));
        roundtrip(Record::HardState(HardState {
            term: 3,
            vote: 1,
            commit: 9,
        }));
        roundtrip(Record::Snapshot(SnapshotMarker { index: 10, term: 4 }));
    }

    #[test]
    fn a_flipped_bit_breaks_the_chain() {
        let mut buf = Vec::new();
        let mut crc = 0;
        Record::Entry(Entry {
            index: 1,
            term: 1,
            data: b"x".to_vec(),
        })
        .encode(&mut buf, &mut crc)
        .unwrap();
        buf[8 + 8 + 3] ^= 1;
        let err = Record::decode(&buf[8..8 + 25], &mut Some(0)).unwrap_err();
        assert!(matches!(err, Corruption::CrcMismatch { .. }), "{err}");
    }

    #[test]
    fn crc_record_must_match_the_running_value() {
        let mut buf = Vec::new();
        Record::Crc(5).encode(&mut buf, &mut 0).unwrap();
        assert!(Record::decode(&buf[8..16], &mut Some(6)).is_err());
        assert_eq!(Record::decode(&buf[8..16], &mut None), Ok(Record::Crc(5)));
    }
}
