//! bbolt files (go.etcd.io/bbolt, the B+tree store under etcd's backend):
//! a writer that lays out whole buckets of sorted keys, and a reader.
//!
//! The layout, from bbolt's `page.go`, `db.go` and `bucket.go`:
//! - the file is an array of pages of `page_size` bytes (the OS page size
//!   when bbolt created it; 4096 here); every page starts with a 16-byte
//!   header `{id u64, flags u16, count u16, overflow u32}`, all
//!   little-endian; a page bigger than one page continues over `overflow`
//!   more pages;
//! - pages 0 and 1 are meta pages: `{magic 0xED0CDAED, version 2,
//!   page_size, flags, root bucket {root pgid, sequence}, freelist pgid,
//!   high-water pgid, txid, checksum}`, the checksum being FNV-1a 64 of the
//!   bytes before it; a reader takes the valid one with the higher txid;
//! - a leaf page holds `count` 16-byte elements `{flags, pos, ksize,
//!   vsize}` then the keys and values; `pos` counts from the element to its
//!   key; flag 1 marks a nested bucket, whose value is `{root pgid,
//!   sequence}` (root 0: an inline page follows in the value);
//! - a branch page holds elements `{pos, ksize, pgid}`: the first key of
//!   each child page and its id;
//! - the root bucket's tree holds one bucket element per top-level bucket;
//!   the freelist page lists free page ids (none in a file written here).
//!
//! The writer streams: leaf pages are written as keys arrive, branch
//! levels and the root bucket after each bucket, the meta pages last, so
//! memory holds one page plus the first key of every page.

use std::cell::Cell;
use std::io::{Seek, SeekFrom, Write};

/// bbolt's magic number.
const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's file format version.
const VERSION: u32 = 2;
/// The page size of files written here (bbolt's default on Linux).
pub const PAGE_SIZE: usize = 4096;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
/// Offset of the checksum within the meta (after the page header).
const META_CHECKSUM_AT: usize = 56;

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The file is not a valid bbolt file (or one this reader handles).
    #[error("invalid bbolt file: {0}")]
    Invalid(String),
    /// The writer was used out of order (keys unsorted, bucket names
    /// repeated or unsorted).
    #[error("bbolt writer: {0}")]
    Order(String),
}

type Result<T> = std::result::Result<T, BoltError>;

/// Writes a bbolt file of top-level buckets, each filled with keys in
/// ascending order, buckets in ascending name order.
pub struct BoltWriter<W: Write + Seek> {
    out: W,
    /// The next page id to write.
    next: u64,
    /// Top-level buckets written so far: (name, root pgid).
    buckets: Vec<(Vec<u8>, u64)>,
}

/// One bucket being filled.
pub struct BucketWriter<'a, W: Write + Seek> {
    file: &'a mut BoltWriter<W>,
    name: Vec<u8>,
    page: PageBuf,
    /// (first key, pgid) of every page of the level being built.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

/// A page being filled: elements and the data they point at.
#[derive(Default)]
struct PageBuf {
    entries: Vec<(u32, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl PageBuf {
    fn size_with(&self, k: usize, v: usize) -> usize {
        HEADER + (self.entries.len() + 1) * ELEMENT + self.bytes + k + v
    }
}

impl<W: Write + Seek> BoltWriter<W> {
    /// Starts a file on `out` (which must be empty and positioned at 0).
    ///
    /// # Errors
    /// I/O errors.
    pub fn new(mut out: W) -> Result<Self> {
        // Meta pages are written at the end; reserve them now.
        out.write_all(&[0; 2 * PAGE_SIZE])?;
        Ok(BoltWriter {
            out,
            next: 2,
            buckets: Vec::new(),
        })
    }

    /// Starts the next top-level bucket, named after every earlier one.
    ///
    /// # Errors
    /// [`BoltError::Order`] for a name not greater than the last one.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>> {
        if self
            .buckets
            .last()
            .is_some_and(|(n, _)| n.as_slice() >= name)
        {
            return Err(BoltError::Order(format!(
                "bucket {:?} out of order",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter {
            file: self,
            name: name.to_vec(),
            page: PageBuf::default(),
            leaves: Vec::new(),
            last: None,
        })
    }

    /// Writes one page of `flags` holding `entries`; returns its id.
    fn write_page(&mut self, flags: u16, entries: &[(u32, Vec<u8>, Vec<u8>)]) -> Result<u64> {
        let id = self.next;
        let data: usize = entries
            .iter()
            .map(|(_, k, v)| k.len() + if flags == BRANCH { 0 } else { v.len() })
            .sum();
        let size = HEADER + entries.len() * ELEMENT + data;
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        let count = u16::try_from(entries.len())
            .map_err(|_| BoltError::Order("too many elements for one page".into()))?;
        buf[0..8].copy_from_slice(&id.to_le_bytes());
        buf[8..10].copy_from_slice(&flags.to_le_bytes());
        buf[10..12].copy_from_slice(&count.to_le_bytes());
        buf[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        let mut at = HEADER + entries.len() * ELEMENT;
        for (i, (eflags, k, v)) in entries.iter().enumerate() {
            let e = HEADER + i * ELEMENT;
            let pos = (at - e) as u32;
            if flags == BRANCH {
                // {pos, ksize, pgid}: the child id travels in `v`.
                buf[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                buf[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                buf[e + 8..e + 16].copy_from_slice(v);
                buf[at..at + k.len()].copy_from_slice(k);
                at += k.len();
            } else {
                buf[e..e + 4].copy_from_slice(&eflags.to_le_bytes());
                buf[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
                buf[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                buf[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
                buf[at..at + k.len()].copy_from_slice(k);
                at += k.len();
                buf[at..at + v.len()].copy_from_slice(v);
                at += v.len();
            }
        }
        self.out.write_all(&buf)?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Builds branch levels over `level` (first key, pgid) until one page
    /// remains; returns the root's id. An empty level gets an empty leaf.
    fn build_tree(&mut self, mut level: Vec<(Vec<u8>, u64)>) -> Result<u64> {
        if level.is_empty() {
            return self.write_page(LEAF, &[]);
        }
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut page: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
            let mut bytes = 0;
            for (k, id) in level {
                let size = HEADER + (page.len() + 1) * ELEMENT + bytes + k.len();
                if !page.is_empty() && size > PAGE_SIZE {
                    let first = page[0].1.clone();
                    up.push((first, self.write_page(BRANCH, &page)?));
                    page.clear();
                    bytes = 0;
                }
                bytes += k.len();
                page.push((0, k, id.to_le_bytes().to_vec()));
            }
            let first = page[0].1.clone();
            up.push((first, self.write_page(BRANCH, &page)?));
            level = up;
        }
        Ok(level[0].1)
    }

    /// Writes the root bucket, the freelist and the meta pages, and
    /// returns the output. The file is then a complete bbolt database.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> Result<W> {
        let mut entries = Vec::new();
        for (name, root) in std::mem::take(&mut self.buckets) {
            let mut header = root.to_le_bytes().to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            entries.push((BUCKET_LEAF, name, header));
        }
        // The root bucket's own tree (one leaf for any sane bucket count).
        let root = self.write_leaves(entries)?;
        let freelist = self.write_page(FREELIST, &[])?;
        let high_water = self.next;
        for (page_id, txid) in [(0u64, 1u64), (1, 2)] {
            let mut page = vec![0u8; PAGE_SIZE];
            page[0..8].copy_from_slice(&page_id.to_le_bytes());
            page[8..10].copy_from_slice(&META.to_le_bytes());
            let m = &mut page[HEADER..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[12..16].copy_from_slice(&0u32.to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[24..32].copy_from_slice(&0u64.to_le_bytes());
            m[32..40].copy_from_slice(&freelist.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..META_CHECKSUM_AT]);
            m[META_CHECKSUM_AT..META_CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
            self.out.seek(SeekFrom::Start(page_id * PAGE_SIZE as u64))?;
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Packs `entries` (sorted) into leaf pages and a tree over them.
    fn write_leaves(&mut self, entries: Vec<(u32, Vec<u8>, Vec<u8>)>) -> Result<u64> {
        let mut level = Vec::new();
        let mut page = PageBuf::default();
        for (f, k, v) in entries {
            if !page.entries.is_empty() && page.size_with(k.len(), v.len()) > PAGE_SIZE {
                let first = page.entries[0].1.clone();
                level.push((first, self.write_page(LEAF, &page.entries)?));
                page = PageBuf::default();
            }
            page.bytes += k.len() + v.len();
            page.entries.push((f, k, v));
        }
        if !page.entries.is_empty() {
            let first = page.entries[0].1.clone();
            level.push((first, self.write_page(LEAF, &page.entries)?));
        }
        self.build_tree(level)
    }
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds `key = value`; keys must come in strictly ascending order.
    ///
    /// # Errors
    /// [`BoltError::Order`] for a key not above the previous one; I/O.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.last.as_deref().is_some_and(|l| l >= key) {
            return Err(BoltError::Order(format!(
                "keys out of order in bucket {:?}",
                String::from_utf8_lossy(&self.name)
            )));
        }
        if !self.page.entries.is_empty() && self.page.size_with(key.len(), value.len()) > PAGE_SIZE
        {
            self.flush_page()?;
        }
        self.page.bytes += key.len() + value.len();
        self.page.entries.push((0, key.to_vec(), value.to_vec()));
        self.last = Some(key.to_vec());
        Ok(())
    }

    fn flush_page(&mut self) -> Result<()> {
        let page = std::mem::take(&mut self.page);
        if let Some((_, first, _)) = page.entries.first() {
            let first = first.clone();
            let id = self.file.write_page(LEAF, &page.entries)?;
            self.leaves.push((first, id));
        }
        Ok(())
    }

    /// Ends the bucket.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(mut self) -> Result<()> {
        self.flush_page()?;
        let leaves = std::mem::take(&mut self.leaves);
        let root = self.file.build_tree(leaves)?;
        let name = std::mem::take(&mut self.name);
        self.file.buckets.push((name, root));
        Ok(())
    }
}

/// FNV-1a, 64 bits (Go's `hash/fnv` New64a), bbolt's meta checksum.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A bucket's entries in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A bbolt file read into memory: its top-level buckets, each a sorted
/// list of (key, value). Nested buckets below the top level are not
/// supported (etcd has none).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BoltFile {
    /// (bucket name, its entries in key order), buckets in name order.
    pub buckets: Vec<(Vec<u8>, Entries)>,
    /// Pages in use × page size, as the meta page says.
    pub size: u64,
}

/// `etcdctl snapshot status` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C of every key and value, bucket by bucket.
    pub hash: u32,
    /// The newest main revision in the `key` bucket.
    pub revision: i64,
    /// Rows in all buckets.
    pub total_key: u64,
    /// Bytes in use.
    pub total_size: u64,
}

impl BoltFile {
    /// Reads every top-level bucket of the bbolt file in `data`.
    ///
    /// # Errors
    /// [`BoltError::Invalid`] for anything that does not check out: no
    /// valid meta page, a page out of the file, a wrong page type.
    pub fn parse(data: &[u8]) -> Result<BoltFile> {
        let mut out = BoltFile::default();
        out.size = visit(data, &mut |item| {
            match item {
                Item::Bucket(name) => out.buckets.push((name.to_vec(), Vec::new())),
                Item::Row(k, v) => {
                    if let Some((_, entries)) = out.buckets.last_mut() {
                        entries.push((k.to_vec(), v.to_vec()));
                    }
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// What `etcdctl snapshot status` reports for this file: the CRC-32C
    /// (Castagnoli) of each bucket's name followed by its keys and values,
    /// bucket by bucket, the
    /// newest revision in `key`, the number of rows of all buckets, and the
    /// size the meta page claims (pages in use × page size).
    pub fn status(&self) -> SnapshotStatus {
        let mut hash = 0u32;
        let mut revision = 0;
        let mut total_key = 0;
        for (name, entries) in &self.buckets {
            hash = crc32c::crc32c_append(hash, name);
            for (k, v) in entries {
                hash = crc32c::crc32c_append(hash, k);
                hash = crc32c::crc32c_append(hash, v);
                if name == b"key" {
                    if let Some(main) = k.get(..8).and_then(|b| b.try_into().ok()) {
                        revision = i64::from_be_bytes(main);
                    }
                }
                total_key += 1;
            }
        }
        SnapshotStatus {
            hash,
            revision,
            total_key,
            total_size: self.size,
        }
    }

    /// The entries of bucket `name`, if it exists.
    pub fn bucket(&self, name: &[u8]) -> Option<&[(Vec<u8>, Vec<u8>)]> {
        self.buckets
            .iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, e)| e.as_slice())
    }
}

/// Whether `head` (the first bytes of a file) starts like a bbolt file:
/// a page header then bbolt's magic.
pub fn looks_like_bolt(head: &[u8]) -> bool {
    le_u32(head, HEADER).is_ok_and(|m| m == MAGIC)
}

/// One thing [`visit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A top-level bucket begins: its name.
    Bucket(&'a [u8]),
    /// A (key, value) of the current bucket.
    Row(&'a [u8], &'a [u8]),
}

/// Streams every top-level bucket of the bbolt file in `data`: `f` gets
/// each bucket's name (in name order), then each of its (key, value)
/// pairs in key order. Nothing is collected, so
/// a large file costs no memory beyond itself. Returns the size in use
/// (pages in use × page size).
///
/// # Errors
/// As [`BoltFile::parse`], and whatever `f` returns.
pub fn visit(data: &[u8], f: &mut dyn FnMut(Item<'_>) -> Result<()>) -> Result<u64> {
    visit_pages(data, f)
}

/// [`visit`] on a file, read a page at a time: memory holds the pages on
/// the path from the root to the current leaf, not the file.
///
/// # Errors
/// As [`visit`], and read errors.
pub fn visit_file(file: &std::fs::File, f: &mut dyn FnMut(Item<'_>) -> Result<()>) -> Result<u64> {
    visit_pages(file, f)
}

/// Where pages come from: bytes in memory, or a file read at offsets.
trait Pages {
    /// The total length.
    fn len(&self) -> Result<u64>;
    /// `len` bytes at `at`; `None` if they run past the end.
    fn read(&self, at: u64, len: usize) -> Result<Option<std::borrow::Cow<'_, [u8]>>>;
}

impl Pages for [u8] {
    fn len(&self) -> Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
    fn read(&self, at: u64, len: usize) -> Result<Option<std::borrow::Cow<'_, [u8]>>> {
        let Ok(at) = usize::try_from(at) else {
            return Ok(None);
        };
        Ok(self
            .get(at..at.saturating_add(len))
            .map(std::borrow::Cow::Borrowed))
    }
}

impl Pages for std::fs::File {
    fn len(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read(&self, at: u64, len: usize) -> Result<Option<std::borrow::Cow<'_, [u8]>>> {
        use std::os::unix::fs::FileExt;
        if at.saturating_add(len as u64) > Pages::len(self)? {
            return Ok(None);
        }
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, at)?;
        Ok(Some(std::borrow::Cow::Owned(buf)))
    }
}

fn visit_pages<P: Pages + ?Sized>(
    data: &P,
    f: &mut dyn FnMut(Item<'_>) -> Result<()>,
) -> Result<u64> {
    let meta = best_meta(data)?;
    let r = Reader {
        data,
        page_size: meta.page_size,
        high_water: meta.high_water,
        pages_left: Cell::new(meta.high_water),
    };
    let mut budget = Budget(data.len()?.saturating_mul(2));
    let mut roots = Vec::new();
    r.walk(meta.root, 0, &mut |flags, k, v| {
        if flags & BUCKET_LEAF == 0 {
            return Err(BoltError::Invalid("a plain key in the root bucket".into()));
        }
        budget.charge(k, v)?;
        roots.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    for (name, header) in roots {
        f(Item::Bucket(&name))?;
        let root = le_u64(&header, 0)?;
        let mut add = |flags: u32, k: &[u8], v: &[u8]| {
            if flags & BUCKET_LEAF != 0 {
                return Err(BoltError::Invalid(
                    "nested buckets are not supported".into(),
                ));
            }
            budget.charge(k, v)?;
            f(Item::Row(k, v))
        };
        if root == 0 {
            let inline = header
                .get(16..)
                .ok_or_else(|| BoltError::Invalid("short inline bucket".into()))?;
            Reader::<[u8]>::walk_page(inline, &mut |_, _| Ok(()), &mut add)?;
        } else {
            r.walk(root, 0, &mut add)?;
        }
    }
    Ok(meta.high_water * meta.page_size as u64)
}

/// Bytes the walk may still hand out. In a valid file every element, key
/// and value has bytes of its own, and an inline bucket's rows lie inside
/// its value in the root bucket, so a walk hands out at most twice the
/// file. A crafted file can point any number of elements at the same bytes
/// (one big value, one inline bucket); past this bound it is refused
/// rather than read out again and again.
struct Budget(u64);

impl Budget {
    fn charge(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let cost = (ELEMENT + k.len() + v.len()) as u64;
        self.0 = self.0.checked_sub(cost).ok_or_else(|| {
            BoltError::Invalid("elements share bytes: more data than the file holds".into())
        })?;
        Ok(())
    }
}

struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn le_u64(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| BoltError::Invalid("truncated".into()))
}

fn le_u32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| BoltError::Invalid("truncated".into()))
}

fn le_u16(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| BoltError::Invalid("truncated".into()))
}

/// The valid meta page with the higher txid. The first meta page says the
/// page size, so the second is found after it.
fn best_meta<P: Pages + ?Sized>(data: &P) -> Result<Meta> {
    let read = |at: usize| -> Result<Meta> {
        let m = data
            .read((at + HEADER) as u64, 64)?
            .ok_or_else(|| BoltError::Invalid("file shorter than its meta pages".into()))?;
        let m = m.as_ref();
        if le_u32(m, 0)? != MAGIC {
            return Err(BoltError::Invalid("bad magic".into()));
        }
        if le_u32(m, 4)? != VERSION {
            return Err(BoltError::Invalid("unsupported version".into()));
        }
        let sum = le_u64(m, META_CHECKSUM_AT)?;
        if sum != 0 && sum != fnv1a64(&m[..META_CHECKSUM_AT]) {
            return Err(BoltError::Invalid("meta checksum mismatch".into()));
        }
        Ok(Meta {
            page_size: le_u32(m, 8)? as usize,
            root: le_u64(m, 16)?,
            high_water: le_u64(m, 40)?,
            txid: le_u64(m, 48)?,
        })
    };
    let first = read(0);
    let size = match &first {
        Ok(m) => m.page_size,
        Err(_) => PAGE_SIZE,
    };
    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
        return Err(BoltError::Invalid(format!("page size {size}")));
    }
    let second = read(size);
    let best = match (first, second) {
        (Ok(a), Ok(b)) => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => a,
        (Err(e), Err(_)) => return Err(e),
    };
    // The second meta page was found at `size`, so it must say `size` too.
    if best.page_size != size {
        return Err(BoltError::Invalid(format!(
            "meta page says page size {}, found at {size}",
            best.page_size
        )));
    }
    let len = data.len()?;
    if best.high_water.saturating_mul(best.page_size as u64) > len {
        return Err(BoltError::Invalid(format!(
            "file of {} bytes is shorter than its {} pages",
            len, best.high_water
        )));
    }
    Ok(best)
}

struct Reader<'a, P: Pages + ?Sized> {
    data: &'a P,
    page_size: usize,
    high_water: u64,
    /// Pages the walk may still read. The trees of a valid file share no
    /// page, so all of them fit in the high-water mark; a crafted file
    /// whose branches point at one page many times over (a DAG, not a
    /// cycle: the depth limit does not catch it) would otherwise take
    /// time exponential in its size.
    pages_left: Cell<u64>,
}

type Visit<'v> = dyn FnMut(u32, &[u8], &[u8]) -> Result<()> + 'v;

impl<P: Pages + ?Sized> Reader<'_, P> {
    fn page(&self, id: u64) -> Result<std::borrow::Cow<'_, [u8]>> {
        if id < 2 || id >= self.high_water {
            return Err(BoltError::Invalid(format!("page {id} out of range")));
        }
        let beyond = || BoltError::Invalid(format!("page {id} beyond the file"));
        let start = id * self.page_size as u64;
        let head = self.data.read(start, HEADER)?.ok_or_else(beyond)?;
        let overflow = le_u32(&head, 12)? as usize;
        let left = self
            .pages_left
            .get()
            .checked_sub(overflow as u64 + 1)
            .ok_or_else(|| {
                BoltError::Invalid(format!(
                    "page {id} reached after every page in use was read (two parents?)"
                ))
            })?;
        self.pages_left.set(left);
        let len = overflow
            .checked_add(1)
            .and_then(|n| n.checked_mul(self.page_size))
            .ok_or_else(beyond)?;
        self.data.read(start, len)?.ok_or_else(beyond)
    }

    /// Visits the leaf elements under page `id` in key order.
    fn walk(&self, id: u64, depth: usize, visit: &mut Visit<'_>) -> Result<()> {
        if depth > 64 {
            return Err(BoltError::Invalid("tree too deep (a cycle?)".into()));
        }
        let page = self.page(id)?;
        let mut children = Vec::new();
        Self::walk_page(
            &page,
            &mut |_, child| {
                children.push(child);
                Ok(())
            },
            visit,
        )?;
        for c in children {
            self.walk(c, depth + 1, visit)?;
        }
        Ok(())
    }

    /// One page: leaf elements go to `leaf`, branch children to `branch`.
    fn walk_page(
        page: &[u8],
        branch: &mut dyn FnMut(&[u8], u64) -> Result<()>,
        leaf: &mut Visit<'_>,
    ) -> Result<()> {
        let flags = le_u16(page, 8)?;
        let count = le_u16(page, 10)? as usize;
        let bad = || BoltError::Invalid("element beyond its page".into());
        for i in 0..count {
            let e = HEADER + i * ELEMENT;
            if flags & LEAF != 0 {
                let eflags = le_u32(page, e)?;
                let pos = le_u32(page, e + 4)? as usize;
                let (ks, vs) = (
                    le_u32(page, e + 8)? as usize,
                    le_u32(page, e + 12)? as usize,
                );
                let k = page.get(e + pos..e + pos + ks).ok_or_else(bad)?;
                let v = page.get(e + pos + ks..e + pos + ks + vs).ok_or_else(bad)?;
                leaf(eflags, k, v)?;
            } else if flags & BRANCH != 0 {
                let pos = le_u32(page, e)? as usize;
                let ks = le_u32(page, e + 4)? as usize;
                let k = page.get(e + pos..e + pos + ks).ok_or_else(bad)?;
                branch(k, le_u64(page, e + 8)?)?;
            } else {
                return Err(BoltError::Invalid(format!(
                    "page type {flags:#x} in a tree"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
