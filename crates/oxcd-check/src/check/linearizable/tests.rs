//! Handmade histories (linearizable ones, a stale read, a lost write, an
//! undecidable one) and randomly generated linearizable histories.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::history::{Event, EventKind};

/// Builds histories op by op; times are in arbitrary units.
#[derive(Default)]
struct H {
    ops: Vec<Op>,
}

impl H {
    fn push(&mut self, client: usize, call: u64, ret: u64, request: Request, outcome: Outcome) {
        let id = self.ops.len();
        self.ops.push(Op {
            id,
            client,
            member: 0,
            call,
            ret,
            request,
            outcome,
        });
    }

    fn put(&mut self, c: usize, t: (u64, u64), value: &str, rev: i64) -> &mut H {
        self.push(
            c,
            t.0,
            t.1,
            Request::Put {
                key: "k".into(),
                value: value.into(),
                lease: 0,
            },
            Outcome::Ok {
                response: Response::Put { revision: rev },
            },
        );
        self
    }

    fn put_unknown(&mut self, c: usize, t: (u64, u64), value: &str) -> &mut H {
        self.push(
            c,
            t.0,
            t.1,
            Request::Put {
                key: "k".into(),
                value: value.into(),
                lease: 0,
            },
            Outcome::Unknown {
                error: "timeout".into(),
            },
        );
        self
    }

    fn get(&mut self, c: usize, t: (u64, u64), rev: i64, kv: Option<(&str, i64)>) -> &mut H {
        self.push(
            c,
            t.0,
            t.1,
            Request::Get {
                key: "k".into(),
                serializable: false,
            },
            Outcome::Ok {
                response: Response::Get {
                    revision: rev,
                    kv: kv.map(|(v, m)| Kv {
                        value: v.into(),
                        mod_revision: m,
                    }),
                },
            },
        );
        self
    }

    fn delete(&mut self, c: usize, t: (u64, u64), rev: i64, deleted: i64) -> &mut H {
        self.push(
            c,
            t.0,
            t.1,
            Request::Delete { key: "k".into() },
            Outcome::Ok {
                response: Response::Delete {
                    revision: rev,
                    deleted,
                },
            },
        );
        self
    }

    fn txn(
        &mut self,
        c: usize,
        t: (u64, u64),
        compare: TxnCompare,
        value: &str,
        (rev, succeeded, kv): (i64, bool, Option<(&str, i64)>),
    ) -> &mut H {
        self.push(
            c,
            t.0,
            t.1,
            Request::Txn {
                key: "k".into(),
                compare,
                value: value.into(),
            },
            Outcome::Ok {
                response: Response::Txn {
                    revision: rev,
                    succeeded,
                    kv: kv.map(|(v, m)| Kv {
                        value: v.into(),
                        mod_revision: m,
                    }),
                },
            },
        );
        self
    }

    fn check(&self, scan: Option<&Scan>) -> Verdict {
        self.check_within(scan, Duration::from_secs(20))
    }

    fn check_within(&self, scan: Option<&Scan>, bound: Duration) -> Verdict {
        check(&Input {
            ops: &self.ops,
            scan,
            deadline: Instant::now() + bound,
        })
        .0
    }
}

fn fail_text(v: &Verdict) -> String {
    match v {
        Verdict::Fail(msgs) => msgs.join("\n"),
        other => panic!("expected FAIL, got {other:?}"),
    }
}

#[test]
fn sequential_history_passes() {
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2)
        .get(1, (20, 30), 2, Some(("a", 2)))
        .put(0, (40, 50), "b", 3)
        .get(1, (60, 70), 3, Some(("b", 3)))
        .delete(2, (80, 90), 4, 1)
        .get(0, (100, 110), 4, None);
    assert_eq!(h.check(None), Verdict::Pass);
}

#[test]
fn concurrent_read_may_see_old_or_new() {
    // The read overlaps the put: both answers are linearizable.
    for seen in [None, Some(("a", 2))] {
        let mut h = H::default();
        h.put(0, (0, 100), "a", 2).get(1, (10, 90), 2, seen);
        assert_eq!(h.check(None), Verdict::Pass, "read saw {seen:?}");
    }
}

#[test]
fn stale_read_is_caught() {
    // b (rev 3) is acknowledged before the read starts, yet the read
    // returns a: a stale linearizable read, served at an old revision.
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2)
        .put(0, (20, 30), "b", 3)
        .get(1, (40, 50), 2, Some(("a", 2)));
    let text = fail_text(&h.check(None));
    eprintln!("{text}");
    assert!(text.contains("key k: not linearizable"), "{text}");
    assert!(text.contains("op 2"), "names the stale read: {text}");
}

#[test]
fn lost_write_is_caught() {
    // The put is acknowledged, then a later read (at a later revision)
    // finds the key absent with no delete anywhere.
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2).get(1, (20, 30), 3, None);
    let text = fail_text(&h.check(None));
    assert!(text.contains("register holds"), "{text}");
}

#[test]
fn writes_out_of_revision_order_are_caught() {
    // b finished before c started, but c got the lower revision.
    let mut h = H::default();
    h.put(0, (0, 10), "b", 5).put(1, (20, 30), "c", 4);
    fail_text(&h.check(None));
}

#[test]
fn value_at_two_revisions_is_caught() {
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2)
        .get(1, (20, 30), 3, Some(("a", 3)));
    let text = fail_text(&h.check(None));
    assert!(text.contains("revision"), "{text}");
}

#[test]
fn txn_branches_follow_the_register() {
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2)
        .txn(
            1,
            (20, 30),
            TxnCompare::ModRevision { revision: 2 },
            "b",
            (3, true, None),
        )
        .txn(
            2,
            (40, 50),
            TxnCompare::Value { value: "a".into() },
            "c",
            (3, false, Some(("b", 3))),
        );
    assert_eq!(h.check(None), Verdict::Pass);

    // A txn whose compare held took the else branch.
    let mut bad = H::default();
    bad.put(0, (0, 10), "a", 2).txn(
        1,
        (20, 30),
        TxnCompare::Value { value: "a".into() },
        "b",
        (2, false, Some(("a", 2))),
    );
    fail_text(&bad.check(None));
}

#[test]
fn unknown_write_pending_forever() {
    // The unknown put is seen by a read long after the client gave up:
    // it stays pending forever, so this is fine.
    let mut h = H::default();
    h.put(0, (0, 10), "a", 2)
        .put_unknown(1, (20, 30), "b")
        .get(2, (1000, 1010), 3, Some(("b", 3)));
    assert_eq!(h.check(None), Verdict::Pass);

    // With the final history saying b never happened, the same read
    // cannot be explained.
    let scan = Scan {
        from: 1,
        final_revision: 2,
        events: vec![Event {
            revision: 2,
            key: "k".into(),
            kind: EventKind::Put,
            value: "a".into(),
        }],
        ..Scan::default()
    };
    let mut h2 = H::default();
    h2.put(0, (0, 10), "a", 2)
        .put_unknown(1, (20, 30), "b")
        .get(2, (1000, 1010), 2, Some(("a", 2)));
    assert_eq!(h2.check(Some(&scan)), Verdict::Pass);
    // A read of b proves b was written (at 3), so the register model
    // accepts it; that the final history lacks it is the lost-write
    // checker's finding.
    h2.get(2, (1100, 1110), 3, Some(("b", 3)));
    assert_eq!(h2.check(Some(&scan)), Verdict::Pass);
    let (lost, _) = crate::check::lost::check(&h2.ops, Some(&scan));
    assert!(matches!(lost, Verdict::Fail(_)), "{lost:?}");
}

#[test]
fn undecided_search_is_unknown_not_pass() {
    // 24 unknown puts, all concurrent and pending forever, then a read of
    // a value nobody wrote: proving it impossible means trying every
    // subset and order of the puts, far beyond a 200 ms bound.
    let mut h = H::default();
    for i in 0..24 {
        h.put_unknown(i, (i as u64, 1_000 + i as u64), &format!("v{i}"));
    }
    h.get(99, (2_000, 2_010), 30, Some(("nobody", 30)));
    let started = Instant::now();
    let v = h.check_within(None, Duration::from_millis(200));
    assert!(
        matches!(&v, Verdict::Unknown(why) if why.contains("timed out")),
        "{v:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bound respected"
    );
}

/// A random history produced by a real register with revisions: each
/// operation takes effect at a point inside its [call, ret] interval, so
/// the history is linearizable by construction, whatever the overlaps.
fn random_linearizable(seed: u64, n: usize) -> (H, Scan) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = H::default();
    let mut current: Option<(String, i64)> = None;
    let mut rev = 1i64;
    let mut events = Vec::new();
    for i in 0..n {
        let point = 100 * (i as u64 + 1);
        let call = point - rng.random_range(0..250u64).min(point);
        let ret = point + rng.random_range(0..250u64);
        let client = i % 5;
        match rng.random_range(0..6u32) {
            0 | 1 => {
                rev += 1;
                let v = format!("v{i}");
                if rng.random_bool(0.15) {
                    h.put_unknown(client, (call, ret), &v);
                } else {
                    h.put(client, (call, ret), &v, rev);
                }
                events.push(put_event(rev, &v));
                current = Some((v, rev));
            }
            2 | 3 => {
                let kv = current.as_ref().map(|(v, m)| (v.as_str(), *m));
                h.get(client, (call, ret), rev, kv);
            }
            4 => {
                if current.take().is_some() {
                    rev += 1;
                    events.push(Event {
                        revision: rev,
                        key: "k".into(),
                        kind: EventKind::Delete,
                        value: String::new(),
                    });
                    h.delete(client, (call, ret), rev, 1);
                } else {
                    h.delete(client, (call, ret), rev, 0);
                }
            }
            _ => {
                let expect = current.as_ref().map_or(0, |(_, m)| *m);
                let guess = if rng.random_bool(0.5) {
                    expect
                } else {
                    expect + 1
                };
                let v = format!("v{i}");
                if guess == expect {
                    rev += 1;
                    h.txn(
                        client,
                        (call, ret),
                        TxnCompare::ModRevision { revision: guess },
                        &v,
                        (rev, true, None),
                    );
                    events.push(put_event(rev, &v));
                    current = Some((v, rev));
                } else {
                    let kv = current.as_ref().map(|(v, m)| (v.as_str(), *m));
                    h.txn(
                        client,
                        (call, ret),
                        TxnCompare::ModRevision { revision: guess },
                        &v,
                        (rev, false, kv),
                    );
                }
            }
        }
    }
    let scan = Scan {
        from: 1,
        final_revision: rev,
        events,
        ..Scan::default()
    };
    (h, scan)
}

fn put_event(rev: i64, v: &str) -> Event {
    Event {
        revision: rev,
        key: "k".into(),
        kind: EventKind::Put,
        value: v.into(),
    }
}

#[test]
fn random_linearizable_histories_pass() {
    for seed in 0..200 {
        let (h, scan) = random_linearizable(seed, 60);
        assert_eq!(h.check(Some(&scan)), Verdict::Pass, "seed {seed}");
        // Without the final history, unknown puts may or may not have
        // happened: still linearizable.
        assert_eq!(h.check(None), Verdict::Pass, "seed {seed}, no scan");
    }
}

#[test]
fn random_histories_with_one_stale_read_fail() {
    // Appending a read that returns the first value written, long after a
    // later acknowledged write, must always be caught.
    let mut caught = 0;
    for seed in 0..50 {
        let (mut h, scan) = random_linearizable(seed, 40);
        let acked: Vec<(String, i64)> = h
            .ops
            .iter()
            .filter_map(|op| match (&op.request, op.response()) {
                (Request::Put { value, .. }, Some(Response::Put { revision })) => {
                    Some((value.clone(), *revision))
                }
                _ => None,
            })
            .collect();
        if acked.len() < 2 {
            continue;
        }
        let (v, m) = acked[0].clone();
        h.get(
            7,
            (1_000_000, 1_000_010),
            scan.final_revision,
            Some((&v, m)),
        );
        fail_text(&h.check(Some(&scan)));
        caught += 1;
    }
    assert!(caught > 40, "enough seeds exercised: {caught}");
}
