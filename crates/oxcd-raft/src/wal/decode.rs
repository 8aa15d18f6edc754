//! Reading one segment's bytes into records, and telling a torn tail from
//! corruption (etcd `wal/decoder.go`, `isTornEntry`; `wal/repair.go`).
//!
//! A record that fails to decode is a *torn write* only in the last segment
//! and only if it cannot have been acknowledged:
//! - its frame runs past the end of the file (a write cut short), or
//! - one of the 512-byte sectors its body spans is all zeros (sectors of
//!   one unsynced write reached the disk out of order; etcd's rule), or
//! - its body ends in a zero byte and every byte after it in the segment
//!   is zero: the write stopped inside the record and the preallocated
//!   zeros show through (the zero-filled tail of an interrupted write), or
//! - its length word is out of range and every byte after it is zero.
//!
//! A zero length word ends the records of the last segment: that is where
//! preallocated space begins. Anything else is corruption, and the caller
//! refuses the WAL: in particular a complete last record that fails its
//! CRC and whose body ends in written (non-zero) bytes is a damaged
//! record that may have been acknowledged, not a torn write, even when
//! only zeros follow it (etcd refuses it too). The ambiguity left: a last
//! record whose real body ends in a zero byte and that was damaged
//! elsewhere reads as torn.

use super::record::{padded, Record, LEN_WORD, MAX_BODY};
use crate::error::Corruption;

/// Disk sectors are written atomically at this size or larger; a torn
/// write leaves whole sectors missing (etcd `minSectorSize`).
const SECTOR: usize = 512;

/// The outcome of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Offset just past the last good record: where appending resumes.
    pub valid_end: u64,
    /// A torn record was dropped.
    pub torn: bool,
    /// Bytes past `valid_end` are not all zero, so the tail needs zeroing
    /// before anything is appended.
    pub dirty: bool,
}

/// A record that cannot be trusted, at byte `offset` of the segment.
#[derive(Debug)]
pub(crate) struct BadRecord {
    pub offset: u64,
    pub reason: Corruption,
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

/// Whether the complete but bad frame `[off, frame_end)` with a body of
/// `body_len` bytes looks like a torn write (see the module docs).
fn is_torn(bytes: &[u8], off: usize, frame_end: usize, body_len: usize) -> bool {
    let body_end = off + LEN_WORD + body_len;
    if body_len > 0 && bytes[body_end - 1] == 0 && all_zero(&bytes[body_end..]) {
        return true;
    }
    let mut start = off + LEN_WORD;
    while start < frame_end {
        let end = ((start / SECTOR + 1) * SECTOR).min(frame_end);
        if all_zero(&bytes[start..end]) {
            return true;
        }
        start = end;
    }
    false
}

/// Scans a whole segment. `crc` is the running checksum carried from the
/// previous segment (`None` for the first segment read); it is advanced
/// past every good record. `last` says whether this is the newest segment,
/// the only one allowed a torn tail or trailing zeros.
///
/// # Errors
/// The first record that is corrupt rather than torn.
pub(crate) fn scan(bytes: &[u8], crc: &mut Option<u32>, last: bool) -> Result<Scan, BadRecord> {
    let mut records = Vec::new();
    let mut off = 0usize;
    let mut torn = false;
    let len = bytes.len();
    let bad = |off: usize, reason: Corruption| BadRecord {
        offset: off as u64,
        reason,
    };
    while off < len {
        let Some(word) = bytes[off..].first_chunk::<LEN_WORD>() else {
            if last {
                torn = true;
                break;
            }
            return Err(bad(off, Corruption::BadFrame("length word cut short")));
        };
        let body_len = u64::from_le_bytes(*word);
        if body_len == 0 {
            if last {
                break;
            }
            return Err(bad(off, Corruption::BadFrame("zero length word")));
        }
        let frame_end = if body_len > MAX_BODY {
            None
        } else {
            usize::try_from(padded(body_len))
                .ok()
                .and_then(|p| (off + LEN_WORD).checked_add(p))
        };
        let Some(frame_end) = frame_end else {
            let after = (off + LEN_WORD).min(len);
            if last && all_zero(&bytes[after..]) {
                torn = true;
                break;
            }
            return Err(bad(off, Corruption::BadFrame("length out of range")));
        };
        if frame_end > len {
            if last {
                torn = true;
                break;
            }
            return Err(bad(
                off,
                Corruption::BadFrame("frame runs past segment end"),
            ));
        }
        // body_len <= MAX_BODY and the frame fits in memory, so it fits usize.
        let body = &bytes[off + LEN_WORD..off + LEN_WORD + body_len as usize];
        let mut next_crc = *crc;
        match Record::decode(body, &mut next_crc) {
            Ok(rec) => {
                *crc = next_crc;
                records.push(rec);
                off = frame_end;
            }
            Err(reason) => {
                if last && is_torn(bytes, off, frame_end, body_len as usize) {
                    torn = true;
                    break;
                }
                return Err(bad(off, reason));
            }
        }
    }
    Ok(Scan {
        records,
        valid_end: off as u64,
        torn,
        dirty: !all_zero(&bytes[off..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::damage::{damaged, damages, edge_value};
    use crate::wal::record::{Entry, HardState, SnapshotMarker};
    use proptest::prelude::*;

    fn segment(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut crc = 0;
        let mut offsets = Vec::new();
        Record::Crc(0).encode(&mut buf, &mut crc).unwrap();
        for i in 1..=n {
            offsets.push(buf.len());
            Record::Entry(Entry {
                index: i,
                term: 1,
                data: vec![0xab; 20],
            })
            .encode(&mut buf, &mut crc)
            .unwrap();
        }
        (buf, offsets)
    }

    #[test]
    fn trailing_zeros_end_the_last_segment_only() {
        let (mut buf, _) = segment(2);
        let end = buf.len();
        buf.resize(end + 4096, 0);
        let s = scan(&buf, &mut None, true).unwrap();
        assert_eq!(
            (s.records.len(), s.valid_end, s.torn, s.dirty),
            (3, end as u64, false, false)
        );
        assert!(scan(&buf, &mut None, false).is_err());
    }

    #[test]
    fn a_record_cut_short_is_torn_in_the_last_segment() {
        let (buf, offs) = segment(3);
        let cut = &buf[..offs[2] + 13];
        let s = scan(cut, &mut None, true).unwrap();
        assert_eq!(
            (s.records.len(), s.valid_end, s.torn),
            (3, offs[2] as u64, true)
        );
        let e = scan(cut, &mut None, false).unwrap_err();
        assert_eq!(e.offset, offs[2] as u64);
    }

    #[test]
    fn damage_followed_by_records_is_corruption() {
        let (mut buf, offs) = segment(3);
        buf[offs[1] + 20] ^= 0x40;
        let e = scan(&buf, &mut None, true).unwrap_err();
        assert_eq!(e.offset, offs[1] as u64);
        assert!(matches!(e.reason, Corruption::CrcMismatch { .. }));
    }

    #[test]
    fn a_damaged_complete_last_record_is_corruption_even_before_zeros() {
        let (mut buf, offs) = segment(3);
        let end = buf.len();
        buf.resize(end + 4096, 0);
        buf[offs[2] + 20] ^= 0x01;
        let e = scan(&buf, &mut None, true).unwrap_err();
        assert_eq!(e.offset, offs[2] as u64);
        assert!(matches!(e.reason, Corruption::CrcMismatch { .. }));
    }

    #[test]
    fn a_zeroed_sector_inside_a_record_is_torn() {
        let mut buf = Vec::new();
        let mut crc = 0;
        Record::Crc(0).encode(&mut buf, &mut crc).unwrap();
        let big = buf.len();
        Record::Entry(Entry {
            index: 1,
            term: 1,
            data: vec![7; 2000],
        })
        .encode(&mut buf, &mut crc)
        .unwrap();
        Record::Entry(Entry {
            index: 2,
            term: 1,
            data: vec![7; 10],
        })
        .encode(&mut buf, &mut crc)
        .unwrap();
        buf[1024..1536].fill(0);
        let s = scan(&buf, &mut None, true).unwrap();
        assert_eq!(
            (s.records.len(), s.valid_end, s.torn, s.dirty),
            (1, big as u64, true, true)
        );
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Record::Metadata),
            (
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..80)
            )
                .prop_map(|(index, term, data)| Record::Entry(Entry {
                    index,
                    term,
                    data
                })),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| {
                Record::HardState(HardState { term, vote, commit })
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(index, term)| Record::Snapshot(SnapshotMarker { index, term })),
        ]
    }

    /// A segment as the WAL writes it: a crc record, `records`, then
    /// `zeros` bytes of preallocated space; with the frame offsets.
    fn encoded(records: &[Record], zeros: usize) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut crc = 0;
        let mut offsets = Vec::new();
        for rec in std::iter::once(&Record::Crc(0)).chain(records) {
            offsets.push(buf.len());
            rec.encode(&mut buf, &mut crc).unwrap();
        }
        buf.resize(buf.len() + zeros, 0);
        (buf, offsets)
    }

    /// What holds of any scan that does not refuse.
    fn check(bytes: &[u8], s: &Scan) -> Result<(), TestCaseError> {
        let end = usize::try_from(s.valid_end).unwrap();
        prop_assert!(end <= bytes.len());
        prop_assert_eq!(end % 8, 0);
        prop_assert_eq!(s.dirty, !all_zero(&bytes[end..]));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_scan_or_refuse(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            crc in prop::option::of(any::<u32>()),
            last in any::<bool>(),
        ) {
            let mut crc = crc;
            match scan(&bytes, &mut crc, last) {
                Ok(s) => check(&bytes, &s)?,
                Err(b) => prop_assert!(usize::try_from(b.offset).unwrap() < bytes.len()),
            }
        }

        /// A segment the WAL wrote, damaged: scanned or refused at a frame
        /// boundary the scan reached, never a panic.
        #[test]
        fn damaged_segments_scan_or_refuse(
            records in prop::collection::vec(record(), 0..8),
            zeros in prop_oneof![Just(0usize), 1usize..1100],
            damage in damages(4),
            last in any::<bool>(),
        ) {
            let (good, _) = encoded(&records, zeros);
            let s = scan(&good, &mut None, true).unwrap();
            prop_assert_eq!(s.records.len(), records.len() + 1);
            let bad = damaged(good, &damage);
            match scan(&bad, &mut None, last) {
                Ok(s) => check(&bad, &s)?,
                Err(b) => prop_assert!(usize::try_from(b.offset).unwrap() < bad.len()),
            }
        }

        /// A length word blown up (past the file, or past the 4 GiB a
        /// record may have): the frame is refused where it starts, or
        /// dropped as a torn tail of the last segment, and nothing of the
        /// size it claims is read or allocated.
        #[test]
        fn a_length_word_past_the_end_is_refused_or_torn(
            records in prop::collection::vec(record(), 1..8),
            which in any::<prop::sample::Index>(),
            len in prop_oneof![edge_value(), 1u64 << 20..1 << 40],
            zeros in 0usize..64,
            last in any::<bool>(),
        ) {
            let (mut bytes, offsets) = encoded(&records, zeros);
            let k = which.index(offsets.len());
            let at = offsets[k];
            prop_assume!(len > (bytes.len() - at) as u64);
            bytes[at..at + LEN_WORD].copy_from_slice(&len.to_le_bytes());
            match scan(&bytes, &mut None, last) {
                Ok(s) => {
                    prop_assert!(last && s.torn);
                    prop_assert_eq!(s.records.len(), k);
                    prop_assert_eq!(s.valid_end, at as u64);
                }
                Err(b) => {
                    prop_assert_eq!(b.offset, at as u64);
                    prop_assert!(matches!(b.reason, Corruption::BadFrame(_)), "{}", b.reason);
                }
            }
        }
    }
}
