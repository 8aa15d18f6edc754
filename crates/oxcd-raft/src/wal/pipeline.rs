//! The next segment, prepared ahead of time (etcd `wal/file_pipeline.go`):
//! a background thread creates `0.tmp` / `1.tmp` (alternating, so the one
//! being handed out is never the one being made) and preallocates it, then
//! waits until a cut takes it. A cut therefore never waits for `fallocate`
//! of 64 MiB on the write path.

use crate::error::{io_err, WalError};
use crate::fs::{FileHandle, Fs};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A prepared, preallocated, not yet named segment file.
pub(crate) type TmpFile = (PathBuf, Box<dyn FileHandle>);

/// Creates and preallocates the temporary file number `n % 2` in `dir`.
pub(crate) fn alloc(
    fs: &dyn Fs,
    dir: &std::path::Path,
    n: u64,
    size: u64,
) -> Result<TmpFile, WalError> {
    let path = dir.join(format!("{}.tmp", n % 2));
    let mut f = fs.create(&path).map_err(io_err("create", &path))?;
    f.allocate(size).map_err(io_err("preallocate", &path))?;
    Ok((path, f))
}

/// The background preparer. Dropping it stops the thread, which removes the
/// file it was holding.
#[derive(Debug)]
pub(crate) struct FilePipeline {
    rx: Option<Receiver<Result<TmpFile, WalError>>>,
    thread: Option<JoinHandle<()>>,
}

impl FilePipeline {
    /// Starts preparing files of `size` bytes in `dir`.
    pub(crate) fn spawn(fs: Arc<dyn Fs>, dir: PathBuf, size: u64) -> FilePipeline {
        // Rendezvous channel: exactly one file is prepared ahead.
        let (tx, rx) = sync_channel(0);
        let thread = std::thread::Builder::new()
            .name("wal-file-pipeline".into())
            .spawn(move || {
                for n in 0.. {
                    let file = alloc(fs.as_ref(), &dir, n, size);
                    let failed = file.is_err();
                    if let Err(unsent) = tx.send(file) {
                        if let Ok((path, handle)) = unsent.0 {
                            drop(handle);
                            // Best effort: a stray tmp file is ignored on open.
                            let _ = fs.remove_file(&path);
                        }
                        return;
                    }
                    if failed {
                        return;
                    }
                }
            });
        match thread {
            Ok(t) => FilePipeline {
                rx: Some(rx),
                thread: Some(t),
            },
            // Without a thread, `take` reports the failure on the first cut.
            Err(_) => FilePipeline {
                rx: None,
                thread: None,
            },
        }
    }

    /// The next prepared file; blocks while it is being made.
    ///
    /// # Errors
    /// The preparer's I/O error; after one, every call fails.
    pub(crate) fn take(&self) -> Result<TmpFile, WalError> {
        let stopped = || WalError::Io {
            op: "prepare next segment",
            path: PathBuf::new(),
            source: std::io::Error::other("file pipeline stopped"),
        };
        let rx = self.rx.as_ref().ok_or_else(stopped)?;
        rx.recv().map_err(|_| stopped())?
    }
}

impl Drop for FilePipeline {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
