//! Keeps a member off a full disk. etcd exits when a WAL or backend write
//! fails with ENOSPC; oxcd stops taking writes before that happens.
//!
//! A watcher checks the free space of the file systems holding the WAL and
//! the backend every [`CHECK_INTERVAL`]. When it drops below the reserve
//! (two WAL segments, which a cut preallocates, plus room for the backend
//! to commit what is already in flight), the member:
//! - refuses every write that adds data with etcd's NoSpace error, at once
//!   and without proposing it;
//! - raises the NOSPACE alarm for itself, so the whole cluster stops
//!   taking such writes (a follower cannot keep up with entries it cannot
//!   store), while reads, deletes and compaction go on;
//! - once space is back above the reserve by a margin, clears the alarm
//!   it raised (never one raised by the quota or an operator), and writes
//!   resume.

use crate::apply::alarm::Alarms;
use crate::apply::Request;
use crate::propose::WritePath;
use oxcd_api::etcdserverpb::alarm_request::AlarmAction;
use oxcd_api::etcdserverpb::{AlarmRequest, AlarmType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often free space is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// What the backend may need on top of the WAL reserve.
const BACKEND_RESERVE: u64 = 16 << 20;

/// Whether the disk is too full for new data; a cheap `Clone` handle read
/// by the write path on every proposal.
#[derive(Clone)]
pub struct DiskGuard {
    inner: Arc<Inner>,
}

struct Inner {
    /// The directories whose file systems are watched.
    dirs: Vec<PathBuf>,
    /// Free bytes below which writes stop.
    reserve: u64,
    low: AtomicBool,
}

impl DiskGuard {
    /// Watches `dirs`, with a reserve sized for WAL segments of
    /// `wal_segment_bytes`.
    pub fn new(dirs: Vec<PathBuf>, wal_segment_bytes: u64) -> DiskGuard {
        DiskGuard {
            inner: Arc::new(Inner {
                dirs,
                reserve: wal_segment_bytes.saturating_mul(2) + BACKEND_RESERVE,
                low: AtomicBool::new(false),
            }),
        }
    }

    /// Whether writes that add data are refused now.
    pub fn is_low(&self) -> bool {
        self.inner.low.load(Ordering::Acquire)
    }

    /// The least free space over the watched directories, with its
    /// directory; `None` if none could be measured.
    fn least_free(&self) -> Option<(u64, &Path)> {
        self.inner
            .dirs
            .iter()
            .filter_map(|d| free_bytes(d).ok().map(|f| (f, d.as_path())))
            .min_by_key(|(f, _)| *f)
    }

    /// Measures once and updates [`DiskGuard::is_low`]; returns the change,
    /// if any: `Some(true)` when space ran low, `Some(false)` when it came
    /// back (above the reserve plus a quarter, so that it does not flap).
    pub fn check(&self) -> Option<bool> {
        let (free, dir) = self.least_free()?;
        let low = self.is_low();
        if !low && free < self.inner.reserve {
            tracing::warn!(
                free_bytes = free,
                reserve_bytes = self.inner.reserve,
                dir = %dir.display(),
                "disk space is low; refusing writes and raising NOSPACE"
            );
            self.inner.low.store(true, Ordering::Release);
            return Some(true);
        }
        if low && free >= self.inner.reserve + self.inner.reserve / 4 {
            tracing::warn!(
                free_bytes = free,
                dir = %dir.display(),
                "disk space recovered; taking writes again"
            );
            self.inner.low.store(false, Ordering::Release);
            return Some(false);
        }
        None
    }
}

/// Free bytes for an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Checks free space every [`CHECK_INTERVAL`] until `shutdown`, raising
/// and clearing this member's NOSPACE alarm as space runs low and comes
/// back.
pub async fn run(
    guard: DiskGuard,
    writes: WritePath,
    alarms: Alarms,
    member_id: u64,
    shutdown: CancellationToken,
) {
    // Whether this guard raised the alarm that is up (only that one is
    // cleared by it).
    let mut raised = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        match guard.check() {
            Some(true) if !alarms.nospace() => {
                writes.raise_nospace().await;
                raised = true;
            }
            Some(false) if raised => {
                let clear = Request::Alarm(AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id,
                    alarm: AlarmType::Nospace as i32,
                });
                match writes.propose(clear).await {
                    Ok(_) => raised = false,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not clear the NOSPACE alarm");
                        // Try again at the next check.
                        guard.inner.low.store(true, Ordering::Release);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_file_system_and_flags_a_huge_reserve() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let fine = DiskGuard::new(vec![dir.path().to_path_buf()], 0);
        assert_eq!(fine.check(), None);
        assert!(!fine.is_low());
        let full = DiskGuard::new(vec![dir.path().to_path_buf()], u64::MAX / 4);
        assert_eq!(full.check(), Some(true));
        assert!(full.is_low());
        assert_eq!(full.check(), None, "no change while still low");
    }
}
