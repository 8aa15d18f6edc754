//! The file seam: every byte the WAL and the snapshotter read or write goes
//! through [`Fs`] and [`FileHandle`] (STYLE rule 9, after redb's
//! `StorageBackend`).
//!
//! Two implementations: [`OsFs`], the real file system (positional I/O,
//! `fallocate`, `fdatasync`, `flock`), and [`MemFs`], an in-memory file system
//! that remembers what has been made durable, so tests can inject fsync and
//! write failures and rebuild the image a crash (with or without a torn
//! write) would leave behind.

mod mem;
mod os;

pub use mem::{Faults, MemFs};
pub use os::OsFs;

use std::fmt;
use std::io;
use std::path::Path;

/// A file system: namespace operations plus opening files.
///
/// Paths are the caller's; implementations do not resolve symlinks
/// specially. None of the methods is async; each blocks for the duration of
/// the system call it stands for.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates `path` (or truncates it to zero length if it exists) and opens
    /// it for reading and writing. The new name is not durable until
    /// [`Fs::sync_dir`] on its parent.
    ///
    /// # Errors
    /// The underlying I/O error, e.g. `NotFound` when the parent is missing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;

    /// Opens an existing file, read-write when `write` is set.
    ///
    /// # Errors
    /// `NotFound` when it does not exist, or the underlying I/O error.
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn FileHandle>>;

    /// The names (not paths) of the entries of directory `dir`, files and
    /// directories alike, in no particular order.
    ///
    /// # Errors
    /// `NotFound` when `dir` does not exist, or the underlying I/O error.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Whether `path` names a file or directory.
    fn exists(&self, path: &Path) -> bool;

    /// Creates `dir` and any missing parents; no error if it exists.
    ///
    /// # Errors
    /// The underlying I/O error.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Removes `dir` and everything under it.
    ///
    /// # Errors
    /// The underlying I/O error, `NotFound` included.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Atomically renames a file or directory, replacing `to` if it is a file
    /// or an empty directory. Durable only after [`Fs::sync_dir`] on both
    /// parents.
    ///
    /// # Errors
    /// The underlying I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes a file. Durable only after [`Fs::sync_dir`] on its parent.
    ///
    /// # Errors
    /// The underlying I/O error, `NotFound` included.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Makes the entries of directory `dir` (creations, renames, removals)
    /// durable: `fsync` on the directory.
    ///
    /// # Errors
    /// The underlying I/O error. A failure means the namespace state on disk
    /// is unknown; callers treat it as fatal.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// One open file. Positional I/O only: there is no cursor, so a handle
/// carries no hidden state besides its lock.
pub trait FileHandle: Send + fmt::Debug {
    /// The current length in bytes.
    ///
    /// # Errors
    /// The underlying I/O error.
    fn size(&self) -> io::Result<u64>;

    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` when the file ends first, or the underlying I/O error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes all of `data` at `offset`, growing the file if needed.
    /// Not durable until [`FileHandle::sync_data`].
    ///
    /// # Errors
    /// The underlying I/O error (e.g. `ENOSPC`); part of `data` may have
    /// been written.
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Truncates or extends (with zeros) the file to exactly `len` bytes.
    ///
    /// # Errors
    /// The underlying I/O error.
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// Reserves disk space so that the file is at least `len` bytes long,
    /// reading as zeros past the old end; never shrinks. With `fallocate`
    /// the later writes inside that space need no metadata update, so
    /// `fdatasync` stays cheap.
    ///
    /// # Errors
    /// The underlying I/O error, `ENOSPC` included.
    fn allocate(&mut self, len: u64) -> io::Result<()>;

    /// Makes the file's data (and the metadata needed to read it back, such
    /// as its length) durable: `fdatasync`.
    ///
    /// # Errors
    /// The underlying I/O error. After a failure the state of the written
    /// pages is unknown (the kernel may have dropped them); callers treat it
    /// as fatal and never retry.
    fn sync_data(&mut self) -> io::Result<()>;

    /// Takes an exclusive advisory lock on the file without blocking,
    /// returning `false` when another handle (in any process) holds it. The
    /// lock lives as long as this handle.
    ///
    /// # Errors
    /// The underlying I/O error, other than "would block".
    fn try_lock(&mut self) -> io::Result<bool>;
}
