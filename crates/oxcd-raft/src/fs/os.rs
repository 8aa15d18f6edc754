//! [`OsFs`]: the real file system, mirroring etcd's `pkg/fileutil`
//! (`Preallocate`, `Fdatasync`, `TryLockFile`, `Fsync` on a directory).

use super::{FileHandle, Fs};
use rustix::fs::{FallocateFlags, FlockOperation};
use rustix::io::Errno;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Files are created owner-only, as etcd does (`fileutil.PrivateFileMode`).
const FILE_MODE: u32 = 0o600;

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl Fs for OsFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(OsFile { file }))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn FileHandle>> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Box::new(OsFile { file }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            // Names that are not UTF-8 are never ours; skip them.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    /// Directories are private (0700), as etcd makes them.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::remove_dir_all(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// An open OS file.
#[derive(Debug)]
struct OsFile {
    file: File,
}

impl FileHandle for OsFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let cur = self.size()?;
        if len <= cur {
            return Ok(());
        }
        // Mode 0 reserves the blocks and extends the size, so later writes
        // inside the range do not change metadata. File systems without
        // fallocate (tmpfs on old kernels, some FUSE) get a sparse extension,
        // as etcd's `preallocExtendTrunc` fallback does.
        match rustix::fs::fallocate(&self.file, FallocateFlags::empty(), cur, len - cur) {
            Ok(()) => Ok(()),
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => self.file.set_len(len),
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn try_lock(&mut self) -> io::Result<bool> {
        match rustix::fs::flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flock_conflicts_between_handles_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut a = OsFs.create(&path).unwrap();
        let mut b = OsFs.open(&path, true).unwrap();
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap());
        drop(a);
        assert!(b.try_lock().unwrap());
    }

    #[test]
    fn allocate_extends_with_zeros_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = OsFs.create(&dir.path().join("f")).unwrap();
        f.write_all_at(0, b"abc").unwrap();
        f.allocate(4096).unwrap();
        assert_eq!(f.size().unwrap(), 4096);
        f.allocate(10).unwrap();
        assert_eq!(f.size().unwrap(), 4096);
        let mut buf = [1u8; 5];
        f.read_exact_at(1, &mut buf).unwrap();
        assert_eq!(&buf, b"bc\0\0\0");
    }
}
