//! Revision monotonicity: the header revisions one client observes never
//! go backwards across its linearizable operations (whichever member
//! answered, across reconnections), and no two acknowledged writes share a
//! revision (each revision is one write, a txn included).

use std::collections::HashMap;

use crate::check::Verdict;
use crate::history::{Op, Request, Response};

/// Checks `ops` (any order; sorted by client and invocation here).
pub fn check(ops: &[Op]) -> (Verdict, String) {
    let mut by_client: HashMap<usize, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_client.entry(op.client).or_default().push(op);
    }
    let mut violations = Vec::new();
    let mut checked = 0usize;
    let mut clients: Vec<_> = by_client.into_iter().collect();
    clients.sort_by_key(|(c, _)| *c);
    for (client, mut list) in clients {
        list.sort_by_key(|op| op.call);
        let mut last: Option<&Op> = None;
        for op in list {
            let Some(resp) = op.response() else { continue };
            if matches!(
                op.request,
                Request::Get {
                    serializable: true,
                    ..
                } | Request::LeaseGrant { .. }
            ) {
                continue;
            }
            checked += 1;
            if let Some(prev) = last {
                let before = prev.response().map_or(0, Response::revision);
                if resp.revision() < before {
                    violations.push(format!(
                        "client {client}: revision went back from {before} (op {}, member {}) \
                         to {} (op {}, member {})",
                        prev.id,
                        prev.member,
                        resp.revision(),
                        op.id,
                        op.member
                    ));
                }
            }
            last = Some(op);
        }
    }
    violations.extend(unique_write_revisions(ops));
    (
        Verdict::from_violations(violations),
        format!("{checked} linearizable responses checked"),
    )
}

/// Every acknowledged write has a revision of its own.
fn unique_write_revisions(ops: &[Op]) -> Vec<String> {
    let mut owner: HashMap<i64, &Op> = HashMap::new();
    let mut violations = Vec::new();
    for op in ops {
        let rev = match op.response() {
            Some(Response::Put { revision }) => *revision,
            Some(Response::Txn {
                revision,
                succeeded: true,
                ..
            }) => *revision,
            Some(Response::Delete { revision, deleted }) if *deleted > 0 => *revision,
            _ => continue,
        };
        if let Some(other) = owner.insert(rev, op) {
            violations.push(format!(
                "ops {} and {} were both acknowledged at write revision {rev}",
                other.id, op.id
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn get(id: usize, client: usize, call: u64, rev: i64) -> Op {
        Op {
            id,
            client,
            member: id % 3,
            call,
            ret: call + 1,
            request: Request::Get {
                key: "k".into(),
                serializable: false,
            },
            outcome: Outcome::Ok {
                response: Response::Get {
                    revision: rev,
                    kv: None,
                },
            },
        }
    }

    #[test]
    fn monotonic_passes_and_backwards_fails() {
        let ok = vec![get(0, 0, 0, 5), get(1, 0, 10, 5), get(2, 0, 20, 7)];
        assert_eq!(check(&ok).0, Verdict::Pass);
        let bad = vec![get(0, 0, 0, 5), get(1, 0, 10, 4)];
        assert!(matches!(check(&bad).0, Verdict::Fail(_)));
        // Different clients may see different revisions.
        let two = vec![get(0, 0, 0, 5), get(1, 1, 10, 4)];
        assert_eq!(check(&two).0, Verdict::Pass);
    }
}
