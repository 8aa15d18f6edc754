//! The final state, rebuilt revision by revision.
//!
//! After the faults are lifted, one linearizable range of the key prefix
//! gives the final revision and values. Then a range of the prefix *at*
//! each revision from the run's first to the final one gives the state
//! after every revision; the difference between consecutive states is the
//! event at that revision (a key whose `mod_revision` is the revision was
//! put, a key that vanished was deleted). This does not use the watch
//! implementation, so the watch checker can compare watchers against it.
//!
//! Compaction (the compact-defrag nemesis) makes the revisions below the
//! last compact revision `C` unreadable. The scan then reads from `C + 1`
//! (the state at `C` is still readable) and [`complete_from_watches`]
//! rebuilds `from..=C` from the watchers' events: a watcher that started
//! at `from` before any compaction received every event of that range.
//! The rebuilt part is checked, not trusted: watchers must agree on every
//! revision, every revision must be there (in a cluster only the checker
//! writes to, each revision is exactly one event under the prefix), and
//! replaying it from the empty prefix must give the state read at `C`. A
//! part that cannot be rebuilt leaves the scan [`Scan::incomplete`], and
//! the checkers that need it say UNKNOWN rather than PASS. (On a user's
//! cluster with auto-compaction, a compacted revision makes the scan fail
//! and the checkers that need it say "unknown".)

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::client::{prefix_end, MemberClient};
use crate::history::{Event, EventKind, Kv, WatchLog};

/// Revisions read concurrently.
const PARALLEL: usize = 32;

/// The key space under the prefix over the run.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// The first revision scanned (events before it are not known).
    pub from: i64,
    /// The final revision.
    pub final_revision: i64,
    /// Every event under the prefix in `from..=final_revision`, in order.
    pub events: Vec<Event>,
    /// The first revision read by ranges; below it (down to `from`) the
    /// events come from the watchers.
    pub scanned_from: i64,
    /// The state at `scanned_from - 1`, read by a range.
    pub boundary: BTreeMap<String, Kv>,
    /// Why the events below `scanned_from` are not known completely; the
    /// checkers that need the whole history cannot decide then.
    pub incomplete: Option<String>,
    /// The final values (from the final linearizable range).
    pub final_kvs: BTreeMap<String, Kv>,
    /// Contradictions found while rebuilding (a key changed at a revision
    /// without its `mod_revision` saying so, the final range disagreeing
    /// with the state at its revision, ...).
    pub anomalies: Vec<String>,
}

type State = BTreeMap<String, Kv>;

/// Reads the final state and every revision from `from` on, or from
/// `compacted + 1` when the key space was compacted at `compacted` (then
/// call [`complete_from_watches`]).
///
/// # Errors
/// A read that keeps failing (after retries on every member), e.g. a
/// compacted revision.
pub async fn scan(
    urls: &[String],
    prefix: &str,
    from: i64,
    compacted: Option<i64>,
) -> Result<Scan, String> {
    let clients: Vec<MemberClient> = urls
        .iter()
        .map(|u| MemberClient::new(u, Duration::from_secs(5)))
        .collect::<Result<_, _>>()?;
    let key = prefix.as_bytes().to_vec();
    let end = prefix_end(&key);
    let (final_revision, final_kvs) = read_at(&clients, 0, &key, &end, 0).await?;
    let scanned_from = compacted.map_or(from, |c| (c + 1).max(from));
    let mut scan = Scan {
        from,
        scanned_from,
        final_revision,
        final_kvs,
        ..Scan::default()
    };
    let mut prev = if scanned_from > 1 {
        read_at(&clients, 0, &key, &end, scanned_from - 1).await?.1
    } else {
        State::new()
    };
    scan.boundary = prev.clone();
    let mut rev = scanned_from;
    while rev <= final_revision {
        let last = (rev + PARALLEL as i64 - 1).min(final_revision);
        let mut set = JoinSet::new();
        for r in rev..=last {
            let (clients, key, end) = (clients.clone(), key.clone(), end.clone());
            let pick = usize::try_from(r).unwrap_or(0) % clients.len();
            set.spawn(async move { (r, read_at(&clients, pick, &key, &end, r).await) });
        }
        let mut states = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            let (r, result) = joined.map_err(|e| format!("scan task: {e}"))?;
            states.insert(r, result?.1);
        }
        for (r, state) in states {
            diff(r, &prev, &state, &mut scan);
            prev = state;
        }
        rev = last + 1;
    }
    if prev != scan.final_kvs && final_revision >= scanned_from {
        scan.anomalies.push(format!(
            "the final linearizable range differs from the range at its own revision \
             {final_revision}: {:?} vs {:?}",
            scan.final_kvs, prev
        ));
    }
    Ok(scan)
}

/// Fills `scan.from..scan.scanned_from` (revisions compacted away) from
/// the watchers' events, checking them as the module doc says: a
/// disagreement is an anomaly (a FAIL), a revision no watcher saw makes
/// the scan [`Scan::incomplete`].
pub fn complete_from_watches(scan: &mut Scan, watches: &[WatchLog]) {
    if scan.scanned_from <= scan.from {
        return;
    }
    let (from, to) = (scan.from, scan.scanned_from);
    let mut by_rev: BTreeMap<i64, Event> = BTreeMap::new();
    for w in watches {
        for (_, e) in &w.events {
            if e.revision < from || e.revision >= to {
                continue;
            }
            match by_rev.get(&e.revision) {
                None => {
                    by_rev.insert(e.revision, e.clone());
                }
                Some(seen) if seen != e => scan.anomalies.push(format!(
                    "watchers disagree at compacted revision {}: {seen:?} vs {e:?} (watcher {})",
                    e.revision, w.watcher
                )),
                Some(_) => {}
            }
        }
    }
    let missing: Vec<i64> = (from..to).filter(|r| !by_rev.contains_key(r)).collect();
    if !missing.is_empty() {
        scan.incomplete = Some(format!(
            "{} of the revisions {from}..{to} (compacted away, at {}) were received by no \
             watcher, e.g. {:?}",
            missing.len(),
            to - 1,
            &missing[..missing.len().min(5)]
        ));
    } else {
        // The prefix is unique to the run: empty before `from`.
        let mut state = State::new();
        for e in by_rev.values() {
            match e.kind {
                EventKind::Put => {
                    state.insert(
                        e.key.clone(),
                        Kv {
                            value: e.value.clone(),
                            mod_revision: e.revision,
                        },
                    );
                }
                EventKind::Delete => {
                    state.remove(&e.key);
                }
            }
        }
        if state != scan.boundary {
            scan.anomalies.push(format!(
                "the watchers' events replayed up to revision {} give {state:?}, but a range at \
                 that revision reads {:?}",
                to - 1,
                scan.boundary
            ));
        }
    }
    let mut events: Vec<Event> = by_rev.into_values().collect();
    events.append(&mut scan.events);
    scan.events = events;
}

/// Appends the events that turn `prev` into `next` at revision `r`.
fn diff(r: i64, prev: &State, next: &State, scan: &mut Scan) {
    for (key, kv) in next {
        if kv.mod_revision == r {
            scan.events.push(Event {
                revision: r,
                key: key.clone(),
                kind: EventKind::Put,
                value: kv.value.clone(),
            });
        } else if prev.get(key) != Some(kv) {
            scan.anomalies.push(format!(
                "at revision {r} key {key} reads {kv:?}, but at {} it read {:?}",
                r - 1,
                prev.get(key)
            ));
        }
    }
    for key in prev.keys() {
        if !next.contains_key(key) {
            scan.events.push(Event {
                revision: r,
                key: key.clone(),
                kind: EventKind::Delete,
                value: String::new(),
            });
        }
    }
}

/// A range of `[key, end)` at `revision` (0: now), trying every member
/// starting with `first`, a few rounds.
async fn read_at(
    clients: &[MemberClient],
    first: usize,
    key: &[u8],
    end: &[u8],
    revision: i64,
) -> Result<(i64, State), String> {
    let mut last = String::new();
    for attempt in 0..3 * clients.len() {
        let c = &clients[(first + attempt) % clients.len()];
        match c.range(key, end, revision, false).await {
            Ok(resp) => {
                let header = resp.header.map_or(0, |h| h.revision);
                let state = resp
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            Kv {
                                value: String::from_utf8_lossy(&kv.value).into_owned(),
                                mod_revision: kv.mod_revision,
                            },
                        )
                    })
                    .collect();
                return Ok((header, state));
            }
            Err(e) => {
                last = format!("range at revision {revision} on {}: {}", c.url, e.message());
                if e.message().contains("compacted") {
                    return Err(last);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, key: &str, value: &str) -> Event {
        Event {
            revision: rev,
            key: key.into(),
            kind: EventKind::Put,
            value: value.into(),
        }
    }

    fn watcher(id: usize, events: &[Event]) -> WatchLog {
        WatchLog {
            watcher: id,
            start_revision: 2,
            events: events.iter().cloned().map(|e| (0, e)).collect(),
            ..WatchLog::default()
        }
    }

    /// Compacted at 3: revisions 2..=3 come from the watchers, 4 was read.
    fn compacted_scan() -> Scan {
        let mut boundary = State::new();
        boundary.insert(
            "a".into(),
            Kv {
                value: "x".into(),
                mod_revision: 2,
            },
        );
        boundary.insert(
            "b".into(),
            Kv {
                value: "y".into(),
                mod_revision: 3,
            },
        );
        Scan {
            from: 2,
            scanned_from: 4,
            boundary,
            final_revision: 4,
            events: vec![put(4, "a", "z")],
            ..Scan::default()
        }
    }

    #[test]
    fn compacted_revisions_are_rebuilt_and_checked() {
        let full = [put(2, "a", "x"), put(3, "b", "y"), put(4, "a", "z")];
        let mut s = compacted_scan();
        complete_from_watches(&mut s, &[watcher(0, &full), watcher(1, &full[1..])]);
        assert!(s.incomplete.is_none() && s.anomalies.is_empty(), "{s:?}");
        assert_eq!(s.events, full.to_vec());
    }

    #[test]
    fn a_revision_no_watcher_saw_makes_the_history_incomplete() {
        let mut s = compacted_scan();
        complete_from_watches(&mut s, &[watcher(0, &[put(3, "b", "y")])]);
        assert!(s.incomplete.is_some(), "{s:?}");
    }

    #[test]
    fn watchers_contradicting_the_state_at_the_compaction_fail() {
        let mut s = compacted_scan();
        complete_from_watches(
            &mut s,
            &[watcher(0, &[put(2, "a", "x"), put(3, "b", "WRONG")])],
        );
        assert!(!s.anomalies.is_empty(), "{s:?}");
    }
}
