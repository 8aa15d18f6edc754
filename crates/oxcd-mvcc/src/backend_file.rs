//! The backend file as redb reaches it: redb's own `FileBackend`, behind
//! the failpoints `backendWrite` and `backendSync` (`oxcd-failpoint`), so
//! that the robustness tests can make the backend's disk slow or failing
//! the way they do the WAL's. In release builds the failpoints compile
//! out and this is redb's file backend, one call deeper.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;

/// redb's file backend with failpoints on the calls that change the file.
#[derive(Debug)]
pub(crate) struct BackendFile(FileBackend);

impl BackendFile {
    /// Opens (creating if missing) `path` as redb's `Builder::create` does.
    pub(crate) fn open(path: &Path) -> std::io::Result<BackendFile> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(BackendFile(FileBackend::new(file)))
    }
}

fn injected(r: std::io::Result<()>) -> Result<(), BackendError> {
    r.map_err(BackendError::Io)
}

impl StorageBackend for BackendFile {
    fn len(&self) -> Result<u64, BackendError> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        injected(oxcd_failpoint::failpoint_error!("backendWrite"))?;
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        injected(oxcd_failpoint::failpoint_error!("backendSync"))?;
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        injected(oxcd_failpoint::failpoint_error!("backendWrite"))?;
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
