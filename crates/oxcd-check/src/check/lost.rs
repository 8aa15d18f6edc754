//! No lost acknowledged write: every acknowledged write is in the final
//! revision history at its revision, with its key and value (so it is
//! either the key's final value or superseded by a later write in that
//! history), and every value any read returned is there too.

use std::collections::HashMap;

use crate::check::Verdict;
use crate::history::{Event, EventKind, Kv, Op, Outcome, Request, Response};
use crate::scan::Scan;

/// Checks `ops` against the final revision history.
pub fn check(ops: &[Op], scan: Option<&Scan>) -> (Verdict, String) {
    let scan = match super::usable_scan(scan) {
        Ok(scan) => scan,
        Err(unknown) => return (unknown, String::new()),
    };
    let mut at: HashMap<i64, Vec<&Event>> = HashMap::new();
    for e in &scan.events {
        at.entry(e.revision).or_default().push(e);
    }
    let mut violations: Vec<String> = scan
        .anomalies
        .iter()
        .map(|a| format!("final history: {a}"))
        .collect();
    let (mut writes, mut reads) = (0usize, 0usize);
    for op in ops {
        let Some(key) = op.key() else { continue };
        let Outcome::Ok { response } = &op.outcome else {
            continue;
        };
        let expect = |rev: i64, kind: EventKind, value: &str| {
            if rev < scan.from {
                return None;
            }
            let found = at.get(&rev).is_some_and(|evs| {
                evs.iter()
                    .any(|e| e.key == key && e.kind == kind && e.value == value)
            });
            (!found).then(|| {
                format!(
                    "{} (op {}, client {}): no {kind:?} of {key} = {value:?} at revision {rev}; \
                     the history has {:?} there",
                    op.kind(),
                    op.id,
                    op.client,
                    at.get(&rev).map(|v| v.as_slice()).unwrap_or_default()
                )
            })
        };
        let mut check_read = |kv: &Option<Kv>| {
            if let Some(kv) = kv {
                reads += 1;
                expect(kv.mod_revision, EventKind::Put, &kv.value)
                    .map(|v| format!("read value not in the history: {v}"))
            } else {
                None
            }
        };
        let found = match (&op.request, response) {
            (Request::Put { value, .. }, Response::Put { revision })
            | (
                Request::Txn { value, .. },
                Response::Txn {
                    revision,
                    succeeded: true,
                    ..
                },
            ) => {
                writes += 1;
                expect(*revision, EventKind::Put, value)
                    .map(|v| format!("lost acknowledged write: {v}"))
            }
            (Request::Delete { .. }, Response::Delete { revision, deleted }) if *deleted > 0 => {
                writes += 1;
                expect(*revision, EventKind::Delete, "")
                    .map(|v| format!("lost acknowledged delete: {v}"))
            }
            (_, Response::Get { kv, .. }) | (_, Response::Txn { kv, .. }) => check_read(kv),
            _ => None,
        };
        violations.extend(found);
    }
    let mut summary = format!(
        "{writes} acknowledged writes and {reads} read values checked against {} events \
         (revisions {}..={})",
        scan.events.len(),
        scan.from,
        scan.final_revision
    );
    if scan.scanned_from > scan.from {
        summary.push_str(&format!(
            "; {}..={} compacted, rebuilt from the watchers",
            scan.from,
            scan.scanned_from - 1
        ));
    }
    (Verdict::from_violations(violations), summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn put(id: usize, key: &str, value: &str, rev: i64) -> Op {
        Op {
            id,
            client: 0,
            member: 0,
            call: id as u64 * 10,
            ret: id as u64 * 10 + 5,
            request: Request::Put {
                key: key.into(),
                value: value.into(),
                lease: 0,
            },
            outcome: Outcome::Ok {
                response: Response::Put { revision: rev },
            },
        }
    }

    fn scan_of(events: Vec<Event>) -> Scan {
        Scan {
            from: 1,
            final_revision: events.last().map_or(1, |e| e.revision),
            events,
            ..Scan::default()
        }
    }

    fn ev(rev: i64, key: &str, value: &str) -> Event {
        Event {
            revision: rev,
            key: key.into(),
            kind: EventKind::Put,
            value: value.into(),
        }
    }

    #[test]
    fn acknowledged_writes_present_pass() {
        let ops = vec![put(0, "k", "a", 2), put(1, "k", "b", 3)];
        let scan = scan_of(vec![ev(2, "k", "a"), ev(3, "k", "b")]);
        assert_eq!(check(&ops, Some(&scan)).0, Verdict::Pass);
    }

    #[test]
    fn missing_acknowledged_write_fails() {
        let ops = vec![put(0, "k", "a", 2), put(1, "k", "b", 3)];
        let scan = scan_of(vec![ev(2, "k", "a")]);
        let (v, _) = check(&ops, Some(&scan));
        let Verdict::Fail(msgs) = v else {
            panic!("expected FAIL, got {v:?}")
        };
        assert!(msgs[0].contains("lost acknowledged write"), "{msgs:?}");
    }

    #[test]
    fn no_final_state_is_unknown() {
        let ops = vec![put(0, "k", "a", 2)];
        assert!(matches!(check(&ops, None).0, Verdict::Unknown(_)));
    }
}
