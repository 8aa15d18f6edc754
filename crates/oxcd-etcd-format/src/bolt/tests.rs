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
