//! Named fault points at crash-relevant steps (etcd's gofail), for the
//! robustness tests: make a step slow, or crash the process right there.
//!
//! Compiled into debug builds only: in a release build [`failpoint!`]
//! expands to nothing. A failpoint does nothing until armed, either at
//! start from `OXCD_FAILPOINTS` (`name=term;name=term`), or at run time
//! through [`set`] (the server's `/debug/failpoints` route, see
//! `OXCD_FAILPOINTS_HTTP`). A term is `off`, `sleep(MS)`, `crash` (the
//! process exits at once, as after kill -9: nothing is flushed or
//! closed), `panic`, or `error` (an I/O error at the points marked with
//! [`failpoint_error!`], which return it as the real call would; elsewhere
//! it does nothing), optionally prefixed `N*` to fire at most N times.
//!
//! The names are listed in [`NAMES`]; tests crash at each and check
//! recovery. A crate of its own so that every room (the WAL in
//! `oxcd-raft`, the backend in `oxcd-mvcc`, the apply stage in
//! `oxcd-server`) can mark its steps without depending on another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Every failpoint the code has, with where it is.
pub const NAMES: &[(&str, &str)] = &[
    (
        "raftBeforeSave",
        "raft loop: before a Ready's entries reach the WAL",
    ),
    (
        "walBeforeSync",
        "WAL: records written, before the fdatasync (error: the fdatasync fails)",
    ),
    ("walAfterSync", "WAL: after the fdatasync"),
    (
        "raftAfterSave",
        "raft loop: after the WAL save, before sending acks",
    ),
    (
        "raftBeforeSaveSnap",
        "raft loop: before a snapshot file is written",
    ),
    (
        "raftAfterSaveSnap",
        "raft loop: after the snapshot file and WAL marker",
    ),
    (
        "applyBeforeEntry",
        "apply stage: before a committed entry is applied",
    ),
    (
        "applyBeforePublish",
        "apply stage: group applied in the open batch, before readers see it",
    ),
    (
        "applyAfterPublish",
        "apply stage: group visible to readers, before the answers",
    ),
    (
        "backendWrite",
        "backend file: each write or resize (error: EIO)",
    ),
    ("backendSync", "backend file: each fdatasync (error: EIO)"),
    (
        "backendBeforeCommit",
        "backend: before a batch transaction commits",
    ),
    (
        "backendAfterCommit",
        "backend: after a batch transaction committed",
    ),
    (
        "applyBeforeRestore",
        "apply stage: before a received snapshot replaces the backend",
    ),
    (
        "applyAfterRestore",
        "apply stage: backend replaced, before raft records the snapshot",
    ),
    (
        "importBeforeSwitch",
        "etcd import: converted, before the etcd files are set aside",
    ),
    (
        "importAfterWalSwitch",
        "etcd import with --wal-dir: the WAL switched, member/ not yet",
    ),
    (
        "importBetweenRenames",
        "etcd import: etcd files set aside, the new ones not yet in place",
    ),
];

/// Exit status of a `crash` failpoint (as a shell reports SIGKILL).
pub const CRASH_STATUS: i32 = 137;

/// Marks a failpoint; does nothing in release builds.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(debug_assertions)]
        {
            let _ = $crate::hit($name);
        }
    };
}

/// Marks a failpoint that can also fail an I/O call: `Err` (an injected
/// `EIO`) when it is armed with `error`; `Ok` otherwise and always in
/// release builds. Other actions run as with [`failpoint!`].
#[macro_export]
macro_rules! failpoint_error {
    ($name:literal) => {
        if cfg!(debug_assertions) && $crate::hit($name) {
            Err(std::io::Error::other(concat!(
                "injected I/O error (failpoint ",
                $name,
                ")"
            )))
        } else {
            Ok(())
        }
    };
}

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Waits this long, then goes on.
    Sleep(Duration),
    /// Ends the process at once.
    Crash,
    /// Panics in the calling thread.
    Panic,
    /// Fails the I/O call (see [`failpoint_error!`]).
    Error,
}

/// An armed failpoint: its action and how many more times it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Armed {
    action: Action,
    remaining: Option<u64>,
}

/// Why a failpoint term was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermError {
    /// The name is not in [`NAMES`].
    #[error("unknown failpoint {0:?}")]
    UnknownName(String),
    /// The term does not parse.
    #[error("bad failpoint term {0:?} (want off, sleep(MS), crash or panic, optionally N*)")]
    BadTerm(String),
}

/// Set once any failpoint was armed: the fast path for all others.
static ANY: AtomicBool = AtomicBool::new(false);

fn table() -> &'static Mutex<HashMap<&'static str, Armed>> {
    static TABLE: OnceLock<Mutex<HashMap<&'static str, Armed>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = HashMap::new();
        if let Ok(spec) = std::env::var("OXCD_FAILPOINTS") {
            for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                match item.split_once('=').map(|(n, t)| parse(n.trim(), t.trim())) {
                    Some(Ok((name, Some(armed)))) => {
                        t.insert(name, armed);
                    }
                    Some(Ok((_, None))) => {}
                    Some(Err(e)) => tracing::warn!("OXCD_FAILPOINTS: {e}; ignored"),
                    None => tracing::warn!("OXCD_FAILPOINTS: {item:?} is not name=term; ignored"),
                }
            }
        }
        if !t.is_empty() {
            ANY.store(true, Ordering::Release);
        }
        Mutex::new(t)
    })
}

/// Arms the failpoints `OXCD_FAILPOINTS` names (call it once at start:
/// until then they stay inert) and reads `OXCD_BROKEN`; warns when the
/// build has neither.
pub fn init_from_env() {
    if std::env::var_os("OXCD_BROKEN").is_some() {
        if cfg!(debug_assertions) {
            let _ = broken("");
        } else {
            tracing::warn!("OXCD_BROKEN is set, but this build has no broken behaviours (debug builds only); ignored");
        }
    }
    if std::env::var_os("OXCD_FAILPOINTS").is_none() {
        return;
    }
    if cfg!(debug_assertions) {
        let armed = table().lock().unwrap_or_else(|e| e.into_inner()).len();
        tracing::warn!("failpoints armed from OXCD_FAILPOINTS: {armed}");
    } else {
        tracing::warn!(
            "OXCD_FAILPOINTS is set, but this build has no failpoints (debug builds only); ignored"
        );
    }
}

fn parse(name: &str, term: &str) -> Result<(&'static str, Option<Armed>), TermError> {
    let name = NAMES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
        .ok_or_else(|| TermError::UnknownName(name.to_string()))?;
    let bad = || TermError::BadTerm(term.to_string());
    let (remaining, action) = match term.split_once('*') {
        Some((n, rest)) => (
            Some(n.trim().parse::<u64>().map_err(|_| bad())?),
            rest.trim(),
        ),
        None => (None, term),
    };
    let action = match action {
        "off" => return Ok((name, None)),
        "crash" => Action::Crash,
        "panic" => Action::Panic,
        "error" => Action::Error,
        s => {
            let ms = s
                .strip_prefix("sleep(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|ms| ms.trim().parse::<u64>().ok())
                .ok_or_else(bad)?;
            Action::Sleep(Duration::from_millis(ms))
        }
    };
    Ok((name, Some(Armed { action, remaining })))
}

/// Arms (or with `off` disarms) failpoint `name`.
///
/// # Errors
/// An unknown name or a term that does not parse.
pub fn set(name: &str, term: &str) -> Result<(), TermError> {
    let (name, armed) = parse(name, term)?;
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    match armed {
        Some(a) => {
            t.insert(name, a);
            ANY.store(true, Ordering::Release);
        }
        None => {
            t.remove(name);
        }
    }
    Ok(())
}

/// The armed failpoints as `name=term` lines.
pub fn list() -> String {
    let t = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut lines: Vec<String> = t
        .iter()
        .map(|(n, a)| {
            let count = a.remaining.map(|r| format!("{r}*")).unwrap_or_default();
            let action = match a.action {
                Action::Sleep(d) => format!("sleep({})", d.as_millis()),
                Action::Crash => "crash".into(),
                Action::Panic => "panic".into(),
                Action::Error => "error".into(),
            };
            format!("{n}={count}{action}\n")
        })
        .collect();
    lines.sort();
    lines.concat()
}

/// Runs failpoint `name`'s action if it is armed (see [`failpoint!`]);
/// true when that action is `error`, for [`failpoint_error!`].
pub fn hit(name: &'static str) -> bool {
    if !ANY.load(Ordering::Acquire) {
        return false;
    }
    let action = {
        let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
        let Some(armed) = t.get_mut(name) else {
            return false;
        };
        let action = armed.action;
        match &mut armed.remaining {
            Some(0) => {
                t.remove(name);
                return false;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    t.remove(name);
                }
            }
            None => {}
        }
        action
    };
    match action {
        Action::Sleep(d) => {
            tracing::warn!("failpoint {name}: sleeping {d:?}");
            std::thread::sleep(d);
        }
        Action::Crash => {
            tracing::warn!("failpoint {name}: crashing");
            std::process::exit(CRASH_STATUS);
        }
        Action::Panic => panic!("failpoint {name}"),
        Action::Error => {
            tracing::warn!("failpoint {name}: failing the call");
            return true;
        }
    }
    false
}

/// Deliberately broken behaviours, to show that the robustness checker
/// (`oxcd-check`) catches what it must: `OXCD_BROKEN` lists them, comma
/// separated. Debug builds only; a release build answers `false` always.
///
/// - `local-reads`: linearizable reads are served from the local store
///   without a ReadIndex round (stale reads from a partitioned member);
/// - `wal-in-memory`: the WAL keeps entries in memory only, so writes are
///   acknowledged without being durable (lost on a crash).
pub const BROKEN: &[&str] = &["local-reads", "wal-in-memory"];

/// Whether `OXCD_BROKEN` asks for the broken behaviour `what` (one of
/// [`BROKEN`]).
pub fn broken(what: &str) -> bool {
    if !cfg!(debug_assertions) {
        return false;
    }
    static ASKED: OnceLock<Vec<String>> = OnceLock::new();
    ASKED
        .get_or_init(|| {
            let asked: Vec<String> = std::env::var("OXCD_BROKEN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            for a in &asked {
                if BROKEN.contains(&a.as_str()) {
                    tracing::warn!("OXCD_BROKEN: deliberately broken: {a}");
                } else {
                    tracing::warn!("OXCD_BROKEN: unknown behaviour {a:?}; ignored");
                }
            }
            asked
        })
        .iter()
        .any(|a| a == what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_parse_or_are_refused() {
        assert_eq!(
            parse("walBeforeSync", "2*sleep(15)"),
            Ok((
                "walBeforeSync",
                Some(Armed {
                    action: Action::Sleep(Duration::from_millis(15)),
                    remaining: Some(2)
                })
            ))
        );
        assert_eq!(parse("walAfterSync", "off"), Ok(("walAfterSync", None)));
        assert!(matches!(
            parse("nope", "crash"),
            Err(TermError::UnknownName(_))
        ));
        for bad in ["sleep", "sleep(x)", "x*crash", "explode", ""] {
            assert!(
                matches!(parse("walAfterSync", bad), Err(TermError::BadTerm(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn counted_points_fire_that_often_then_disarm() {
        set("importBeforeSwitch", "2*sleep(0)").unwrap();
        assert!(list().contains("importBeforeSwitch=2*sleep(0)"));
        hit("importBeforeSwitch");
        assert!(list().contains("importBeforeSwitch=1*sleep(0)"));
        hit("importBeforeSwitch");
        assert!(!list().contains("importBeforeSwitch"));
        set("importBeforeSwitch", "panic").unwrap();
        assert!(std::panic::catch_unwind(|| hit("importBeforeSwitch")).is_err());
        set("importBeforeSwitch", "off").unwrap();
        hit("importBeforeSwitch");
    }
}
