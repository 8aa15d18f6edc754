//! Round trips through the writer and the reader; the files are also
//! opened by etcd's own tools in the black-box tests.

use super::*;

fn write(buckets: &[(&[u8], Entries)]) -> Vec<u8> {
    let mut w = BoltWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    for (name, entries) in buckets {
        let mut b = w.bucket(name).unwrap();
        for (k, v) in entries {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap();
    }
    w.finish().unwrap().into_inner()
}

#[test]
fn small_and_empty_buckets_round_trip() {
    let data = write(&[
        (b"alarm", vec![]),
        (
            b"key",
            vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
        ),
        (
            b"meta",
            vec![(b"consistent_index".to_vec(), 7u64.to_be_bytes().to_vec())],
        ),
    ]);
    assert_eq!(data.len() % PAGE_SIZE, 0);
    let f = BoltFile::parse(&data).unwrap();
    assert_eq!(f.bucket(b"alarm"), Some(&[][..]));
    assert_eq!(f.bucket(b"key").unwrap().len(), 2);
    assert_eq!(f.bucket(b"key").unwrap()[1], (b"b".to_vec(), vec![]));
    assert_eq!(f.bucket(b"nope"), None);
}

#[test]
fn many_keys_build_branch_levels_and_big_values_overflow() {
    let many: Entries = (0u32..50_000)
        .map(|i| {
            (
                format!("{i:08}").into_bytes(),
                vec![b'v'; (i % 300) as usize],
            )
        })
        .collect();
    let big = vec![(b"huge".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5])];
    let data = write(&[(b"big", big.clone()), (b"key", many.clone())]);
    let f = BoltFile::parse(&data).unwrap();
    assert_eq!(f.bucket(b"key").unwrap(), &many[..]);
    assert_eq!(f.bucket(b"big").unwrap(), &big[..]);
    // Read a page at a time from the file: the same rows, in order.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut seen: Vec<(Vec<u8>, Entries)> = Vec::new();
    let size = visit_file(&file, &mut |item| {
        match item {
            Item::Bucket(n) => seen.push((n.to_vec(), Vec::new())),
            Item::Row(k, v) => seen.last_mut().unwrap().1.push((k.to_vec(), v.to_vec())),
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(size, f.size);
    assert_eq!(seen, f.buckets);
    // A file cut short is refused, not read past its end.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &data[..data.len() - PAGE_SIZE]).unwrap();
    let err = visit_file(&std::fs::File::open(&cut).unwrap(), &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("shorter"), "{err}");
}

#[test]
fn order_is_enforced() {
    let mut w = BoltWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    let mut b = w.bucket(b"m").unwrap();
    b.put(b"b", b"").unwrap();
    assert!(matches!(b.put(b"a", b""), Err(BoltError::Order(_))));
    assert!(matches!(b.put(b"b", b""), Err(BoltError::Order(_))));
    b.finish().unwrap();
    assert!(w.bucket(b"a").is_err());
    assert!(w.bucket(b"m").is_err());
}

#[test]
fn damaged_files_are_refused() {
    let data = write(&[(b"key", vec![(b"a".to_vec(), b"1".to_vec())])]);
    // Both metas broken.
    let mut bad = data.clone();
    bad[HEADER + 20] ^= 1;
    bad[PAGE_SIZE + HEADER + 20] ^= 1;
    assert!(BoltFile::parse(&bad).is_err());
    // One meta broken: the other one serves.
    let mut one = data.clone();
    one[PAGE_SIZE + HEADER + 20] ^= 1;
    assert!(BoltFile::parse(&one).is_ok());
    // Truncated.
    assert!(BoltFile::parse(&data[..data.len() - PAGE_SIZE]).is_err());
    assert!(BoltFile::parse(&data[..100]).is_err());
    assert!(BoltFile::parse(b"").is_err());
}

/// A page at `id` of type `flags` with `n` elements, every one of whose
/// keys is the single byte after the elements; a branch element points at
/// `child`, a leaf element has a value of `vsize` bytes from that byte on.
fn crafted_page(id: u64, flags: u16, n: usize, child: u64, vsize: u32) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[0..8].copy_from_slice(&id.to_le_bytes());
    p[8..10].copy_from_slice(&flags.to_le_bytes());
    p[10..12].copy_from_slice(&(n as u16).to_le_bytes());
    let key_at = HEADER + n * ELEMENT;
    for i in 0..n {
        let e = HEADER + i * ELEMENT;
        let pos = (key_at - e) as u32;
        if flags == BRANCH {
            p[e..e + 4].copy_from_slice(&pos.to_le_bytes());
            p[e + 4..e + 8].copy_from_slice(&1u32.to_le_bytes());
            p[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
        } else {
            p[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
            p[e + 8..e + 12].copy_from_slice(&1u32.to_le_bytes());
            p[e + 12..e + 16].copy_from_slice(&vsize.to_le_bytes());
        }
    }
    p[key_at] = b'k';
    p
}

fn put_page(data: &mut [u8], id: u64, page: &[u8]) {
    let at = id as usize * PAGE_SIZE;
    data[at..at + PAGE_SIZE].copy_from_slice(page);
}

/// One bucket `b` of five values that fill a page each: leaves 2..=6,
/// the bucket's branch 7, the root bucket 8, the freelist 9.
fn five_page_bucket() -> Vec<u8> {
    let rows: Entries = (0u8..5).map(|i| (vec![i], vec![i; 3000])).collect();
    let data = write(&[(b"b", rows)]);
    assert_eq!(data.len(), 10 * PAGE_SIZE);
    assert_eq!(le_u16(&data, 7 * PAGE_SIZE + 8).unwrap(), BRANCH);
    assert_eq!(le_u16(&data, 8 * PAGE_SIZE + 8).unwrap(), LEAF);
    data
}

/// Branch pages that all point at the next page 200 times: no cycle, so
/// the depth limit does not stop it, but 200^4 paths to one leaf of 200
/// rows (3.2e11 rows, all collected by `parse`) from a 40 KiB file.
#[test]
fn pages_reached_through_many_parents_are_refused() {
    let mut data = five_page_bucket();
    put_page(&mut data, 7, &crafted_page(7, BRANCH, 200, 2, 0));
    for id in 2..5 {
        put_page(&mut data, id, &crafted_page(id, BRANCH, 200, id + 1, 0));
    }
    put_page(&mut data, 5, &crafted_page(5, LEAF, 200, 0, 0));
    let started = std::time::Instant::now();
    let err = BoltFile::parse(&data).unwrap_err();
    assert!(err.to_string().contains("two parents"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Leaf elements that all point at one 800-byte value: 160 KB of rows
/// from a 4 KiB page (and with overflow pages, any amount).
#[test]
fn elements_sharing_their_bytes_are_refused() {
    let mut data = five_page_bucket();
    put_page(&mut data, 2, &crafted_page(2, LEAF, 200, 0, 800));
    let err = BoltFile::parse(&data).unwrap_err();
    assert!(err.to_string().contains("share bytes"), "{err}");
}

/// A second meta page, found one default page size in, that names another
/// page size is refused rather than used.
#[test]
fn meta_pages_must_agree_on_the_page_size() {
    let mut data = write(&[(b"key", vec![(b"a".to_vec(), b"1".to_vec())])]);
    data[HEADER + 20] ^= 1; // the first meta fails its checksum
    let m = PAGE_SIZE + HEADER;
    data[m + 8..m + 12].copy_from_slice(&8192u32.to_le_bytes());
    let sum = fnv1a64(&data[m..m + META_CHECKSUM_AT]);
    data[m + META_CHECKSUM_AT..m + META_CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    let err = BoltFile::parse(&data).unwrap_err();
    assert!(err.to_string().contains("page size"), "{err}");
}

mod fuzz {
    use super::*;
    use crate::damage::{damaged, damages, edge_value};
    use proptest::prelude::*;

    /// Up to three buckets of up to 60 rows with values up to 300 bytes,
    /// and sometimes one value big enough to overflow.
    fn buckets() -> impl Strategy<Value = Vec<(Vec<u8>, Entries)>> {
        let rows = prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 1..12),
            prop::collection::vec(any::<u8>(), 0..300),
            0..60,
        );
        let big = prop::option::weighted(0.2, PAGE_SIZE..3 * PAGE_SIZE);
        prop::collection::btree_map(prop::collection::vec(b'a'..=b'z', 1..6), rows, 0..3)
            .prop_flat_map(move |m| (Just(m), big.clone()))
            .prop_map(|(m, big)| {
                let mut out: Vec<(Vec<u8>, Entries)> = m
                    .into_iter()
                    .map(|(n, rows)| (n, rows.into_iter().collect()))
                    .collect();
                if let (Some(size), Some((_, rows))) = (big, out.first_mut()) {
                    rows.push((vec![0xff; 12], vec![7; size]));
                }
                out
            })
    }

    fn bytes_of(buckets: &[(Vec<u8>, Entries)]) -> Vec<u8> {
        let named: Vec<(&[u8], Entries)> = buckets
            .iter()
            .map(|(n, e)| (n.as_slice(), e.clone()))
            .collect();
        write(&named)
    }

    /// A field of a page header or of its first elements set to an edge
    /// value: where ids, counts, offsets and sizes live.
    #[derive(Debug, Clone)]
    struct PageField {
        page: prop::sample::Index,
        at: usize,
        width: usize,
        value: u64,
    }

    fn page_field() -> impl Strategy<Value = PageField> {
        (
            any::<prop::sample::Index>(),
            0usize..HEADER + 8 * ELEMENT,
            prop::sample::select(vec![2usize, 4, 8]),
            // Page ids of the file itself, or edge values.
            prop_oneof![0u64..16, edge_value()],
        )
            .prop_map(|(page, at, width, value)| PageField {
                page,
                at,
                width,
                value,
            })
    }

    impl PageField {
        fn apply(&self, data: &mut [u8]) {
            let pages = data.len() / PAGE_SIZE;
            if pages == 0 {
                return;
            }
            let at = self.page.index(pages) * PAGE_SIZE + self.at;
            let bytes = &self.value.to_le_bytes()[..self.width];
            data[at..at + self.width].copy_from_slice(bytes);
        }
    }

    /// What a walk of `data` hands out, with a check on how much.
    fn walk(data: &[u8]) -> Result<Vec<(Vec<u8>, Entries)>> {
        let mut seen: Vec<(Vec<u8>, Entries)> = Vec::new();
        let mut bytes = 0;
        visit(data, &mut |item| {
            match item {
                Item::Bucket(n) => {
                    bytes += n.len();
                    seen.push((n.to_vec(), Vec::new()));
                }
                Item::Row(k, v) => {
                    bytes += ELEMENT + k.len() + v.len();
                    if let Some((_, rows)) = seen.last_mut() {
                        rows.push((k.to_vec(), v.to_vec()));
                    }
                }
            }
            Ok(())
        })?;
        assert!(
            bytes <= 2 * data.len(),
            "{bytes} bytes out of a {} byte file",
            data.len()
        );
        Ok(seen)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random pages behind valid meta pages.
        #[test]
        fn arbitrary_pages_are_read_or_refused(
            pages in prop::collection::vec(prop::collection::vec(any::<u8>(), PAGE_SIZE), 1..4),
            root in 0u64..6,
        ) {
            let mut data = write(&[]);
            data.truncate(2 * PAGE_SIZE);
            for p in &pages {
                data.extend_from_slice(p);
            }
            for meta in 0..2 {
                let m = meta * PAGE_SIZE + HEADER;
                data[m + 16..m + 24].copy_from_slice(&root.to_le_bytes());
                let high_water = (data.len() / PAGE_SIZE) as u64;
                data[m + 40..m + 48].copy_from_slice(&high_water.to_le_bytes());
                let sum = fnv1a64(&data[m..m + META_CHECKSUM_AT]);
                data[m + META_CHECKSUM_AT..m + META_CHECKSUM_AT + 8]
                    .copy_from_slice(&sum.to_le_bytes());
            }
            if let Err(e) = walk(&data) {
                prop_assert!(matches!(e, BoltError::Invalid(_)), "{e}");
            }
        }

        /// A file from the writer reads back; damaged, it is read or
        /// refused, and reading it from memory and a page at a time from
        /// disk agree.
        #[test]
        fn damaged_files_are_read_or_refused(
            buckets in buckets(),
            fields in prop::collection::vec(page_field(), 0..6),
            damage in prop::option::of(damages(3)),
        ) {
            let good = bytes_of(&buckets);
            prop_assert_eq!(walk(&good).unwrap(), buckets);
            let mut bad = good;
            for f in &fields {
                f.apply(&mut bad);
            }
            if let Some(d) = &damage {
                bad = damaged(bad, d);
            }
            let in_memory = walk(&bad);
            if let Err(e) = &in_memory {
                prop_assert!(matches!(e, BoltError::Invalid(_)), "{e}");
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            std::fs::write(&path, &bad).unwrap();
            let mut from_disk: Vec<(Vec<u8>, Entries)> = Vec::new();
            let on_disk = visit_file(&std::fs::File::open(&path).unwrap(), &mut |item| {
                match item {
                    Item::Bucket(n) => from_disk.push((n.to_vec(), Vec::new())),
                    Item::Row(k, v) => {
                        if let Some((_, rows)) = from_disk.last_mut() {
                            rows.push((k.to_vec(), v.to_vec()));
                        }
                    }
                }
                Ok(())
            });
            match (in_memory, on_disk) {
                (Ok(a), Ok(_)) => prop_assert_eq!(a, from_disk),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "memory {a:?}, disk {b:?}"),
            }
        }

        #[test]
        fn arbitrary_bytes_are_refused(data in prop::collection::vec(any::<u8>(), 0..2 * PAGE_SIZE + 128)) {
            prop_assert!(BoltFile::parse(&data).is_err());
        }
    }
}
