//! Watch guarantees (etcd robustness's watch validation): each watcher's
//! events arrive in strictly increasing revision order, without
//! duplicates, without gaps against the final revision history from the
//! watcher's start revision to the end, and each matches the history
//! (same key, type and value at that revision). A watch refused because
//! its start revision was compacted resumes at the compact revision; the
//! events it skipped that way are an allowed gap, not a violation.

use std::collections::{HashMap, HashSet};

use crate::check::Verdict;
use crate::history::{Event, WatchLog};
use crate::scan::Scan;

/// How many violations of one kind are listed per watcher.
const LIST: usize = 10;

/// Checks every watcher's log.
pub fn check(watches: &[WatchLog], scan: Option<&Scan>) -> (Verdict, String) {
    let scan = match super::usable_scan(scan) {
        Ok(scan) => scan,
        Err(unknown) => return (unknown, String::new()),
    };
    let mut violations = Vec::new();
    let mut total = 0usize;
    for w in watches {
        total += w.events.len();
        violations.extend(check_one(w, scan));
    }
    (
        Verdict::from_violations(violations),
        format!(
            "{} watchers, {total} events against {} events in the history",
            watches.len(),
            scan.events.len()
        ),
    )
}

fn check_one(w: &WatchLog, scan: &Scan) -> Vec<String> {
    let id = w.watcher;
    let mut violations = Vec::new();
    let mut last: Option<&Event> = None;
    let mut received: HashSet<(i64, &str)> = HashSet::new();
    for (_, e) in &w.events {
        if let Some(prev) = last {
            let backwards =
                e.revision < prev.revision || (e.revision == prev.revision && e.key <= prev.key);
            if backwards && violations.len() < LIST {
                violations.push(format!(
                    "watcher {id}: event at revision {} ({}) after revision {} ({}): \
                     out of order or duplicate",
                    e.revision, e.key, prev.revision, prev.key
                ));
            }
        }
        received.insert((e.revision, e.key.as_str()));
        last = Some(e);
    }
    let history: HashMap<(i64, &str), &Event> = scan
        .events
        .iter()
        .map(|e| ((e.revision, e.key.as_str()), e))
        .collect();
    let mut wrong = 0;
    for (_, e) in &w.events {
        if e.revision < scan.from {
            continue;
        }
        match history.get(&(e.revision, e.key.as_str())) {
            Some(h) if *h == e => {}
            other => {
                wrong += 1;
                if wrong <= LIST {
                    violations.push(format!(
                        "watcher {id}: event {e:?} disagrees with the history ({other:?})"
                    ));
                }
            }
        }
    }
    let from = w.start_revision.max(scan.from);
    let mut missing = Vec::new();
    let excused = |rev: i64| {
        w.compacted
            .iter()
            .any(|&(asked, compact)| asked <= rev && rev < compact)
    };
    for e in scan.events.iter().filter(|e| e.revision >= from) {
        if !received.contains(&(e.revision, e.key.as_str())) && !excused(e.revision) {
            missing.push(e);
        }
    }
    if !missing.is_empty() {
        let caught_up = w.last_revision();
        let listed: Vec<String> = missing
            .iter()
            .take(LIST)
            .map(|e| format!("{}@{}", e.key, e.revision))
            .collect();
        violations.push(format!(
            "watcher {id}: {} events of the history from revision {from} were never delivered \
             (last received revision {caught_up}); first: {}",
            missing.len(),
            listed.join(", ")
        ));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::EventKind;

    fn ev(rev: i64, key: &str, value: &str) -> Event {
        Event {
            revision: rev,
            key: key.into(),
            kind: EventKind::Put,
            value: value.into(),
        }
    }

    fn log(events: Vec<Event>) -> WatchLog {
        WatchLog {
            watcher: 0,
            start_revision: 1,
            events: events.into_iter().map(|e| (0, e)).collect(),
            ..WatchLog::default()
        }
    }

    fn scan() -> Scan {
        Scan {
            from: 1,
            final_revision: 4,
            events: vec![ev(2, "a", "x"), ev(3, "b", "y"), ev(4, "a", "z")],
            ..Scan::default()
        }
    }

    #[test]
    fn complete_ordered_watch_passes() {
        let w = log(scan().events);
        assert_eq!(check(&[w], Some(&scan())).0, Verdict::Pass);
    }

    #[test]
    fn gap_duplicate_and_mismatch_fail() {
        let gap = log(vec![ev(2, "a", "x"), ev(4, "a", "z")]);
        assert!(matches!(check(&[gap], Some(&scan())).0, Verdict::Fail(_)));
        let dup = log(vec![
            ev(2, "a", "x"),
            ev(3, "b", "y"),
            ev(3, "b", "y"),
            ev(4, "a", "z"),
        ]);
        assert!(matches!(check(&[dup], Some(&scan())).0, Verdict::Fail(_)));
        let wrong = log(vec![ev(2, "a", "x"), ev(3, "b", "Q"), ev(4, "a", "z")]);
        assert!(matches!(check(&[wrong], Some(&scan())).0, Verdict::Fail(_)));
    }

    #[test]
    fn gap_before_a_compaction_is_allowed_and_recorded() {
        let mut w = log(vec![ev(3, "b", "y"), ev(4, "a", "z")]);
        assert!(matches!(
            check(&[w.clone()], Some(&scan())).0,
            Verdict::Fail(_)
        ));
        w.compacted.push((2, 3));
        assert_eq!(check(&[w], Some(&scan())).0, Verdict::Pass);
    }

    #[test]
    fn incomplete_history_is_unknown() {
        let mut s = scan();
        s.incomplete = Some("no watcher saw revision 2".into());
        let w = log(s.events.clone());
        assert!(matches!(check(&[w], Some(&s)).0, Verdict::Unknown(_)));
    }
}
