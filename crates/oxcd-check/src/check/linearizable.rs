//! Linearizability of the KV history, key by key.
//!
//! Every request touches one key, so the history is linearizable iff each
//! key's sub-history is (P-compositionality, Horn & Kroening). Each key is
//! a register holding `absent` or a value; values are unique per write, so
//! a value names the write that produced it and its revision. The search is
//! Wing & Gong's with Lowe's memoization (as porcupine implements it): walk
//! the call/return entries in time order, linearize a pending call when
//! the model allows it, backtrack on reaching a return whose call is not
//! linearized, and never revisit a (linearized set, model state) pair.
//!
//! Revisions are extra information the register model checks:
//! - writes linearize in the order of their revisions (`floor` is the
//!   highest write revision linearized so far on the key);
//! - a read served at header revision `H` cannot follow a write of
//!   revision above `H`;
//! - a value read with `mod_revision` M was written at M (a value seen at
//!   two revisions is a violation before any search).
//!
//! Unknown outcomes: a write whose value shows up in the final revision
//! history (or in any read) happened, at that revision, at some moment
//! after its invocation (pending forever); one that shows up nowhere while
//! the final history is complete did not happen (a txn that may have taken
//! its else branch changes nothing either). Without a final history, an
//! unknown write may or may not take effect: the model is then
//! nondeterministic and the search tracks a set of states (the powerset
//! construction), which keeps the search exact.

use std::collections::{HashMap, HashSet};

use model::{explain, step_all, Cmp, KeyOp, States, Step, Values, ABSENT, INITIAL};
use std::fmt::Write as _;
use std::time::Instant;

use crate::check::Verdict;
use crate::history::{Kv, Op, Outcome, Request, Response, TxnCompare};
use crate::scan::Scan;

/// Return time of an operation that stays pending forever.
const NEVER: u64 = u64::MAX;

/// How often (in search steps) the deadline is looked at.
const DEADLINE_EVERY: u64 = 1 << 12;

/// The checker's input for one run.
pub struct Input<'a> {
    /// Every operation of the run.
    pub ops: &'a [Op],
    /// The final revision history, if it could be read.
    pub scan: Option<&'a Scan>,
    /// When to give up (verdict unknown).
    pub deadline: Instant,
}

/// Checks the whole history: every key must be linearizable.
pub fn check(input: &Input<'_>) -> (Verdict, String) {
    let mut values = Values::default();
    let mut violations = learn_revisions(input, &mut values);
    let per_key = build_key_histories(input, &mut values);
    let keys = per_key.len();
    let ops: usize = per_key.values().map(Vec::len).sum();
    let mut unknown = Vec::new();
    let mut keys_sorted: Vec<_> = per_key.into_iter().collect();
    keys_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, history) in keys_sorted {
        match search(&values, &history, input.deadline) {
            Outcome3::Linearizable => {}
            Outcome3::TimedOut => unknown.push(key),
            Outcome3::Violation(report) => {
                violations.push(render(&key, &report, &values, &history, input.ops));
            }
        }
    }
    let summary = format!("{keys} keys, {ops} operations in the model");
    let verdict = if !violations.is_empty() {
        Verdict::Fail(violations)
    } else if !unknown.is_empty() {
        Verdict::Unknown(format!(
            "timed out (--check-timeout) before deciding keys {}",
            unknown.join(", ")
        ))
    } else {
        Verdict::Pass
    };
    (verdict, summary)
}

/// Learns each value's revision from every source; contradictions are
/// violations by themselves.
fn learn_revisions(input: &Input<'_>, values: &mut Values) -> Vec<String> {
    let mut violations = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            violations.push(e);
        }
    };
    if let Some(scan) = input.scan {
        for e in &scan.events {
            if e.kind == crate::history::EventKind::Put {
                note(values.learn(&e.value, e.revision, "the final revision history"));
            }
        }
    }
    for op in input.ops {
        let src = format!("op {} (client {})", op.id, op.client);
        match (&op.request, &op.outcome) {
            (Request::Put { value, .. }, Outcome::Ok { response }) => {
                note(values.learn(value, response.revision(), &src));
            }
            (
                Request::Txn { value, .. },
                Outcome::Ok {
                    response:
                        Response::Txn {
                            revision,
                            succeeded: true,
                            ..
                        },
                },
            ) => note(values.learn(value, *revision, &src)),
            (
                _,
                Outcome::Ok {
                    response:
                        Response::Get { kv: Some(kv), .. }
                        | Response::Txn {
                            kv: Some(kv),
                            succeeded: false,
                            ..
                        },
                },
            ) => note(values.learn(&kv.value, kv.mod_revision, &src)),
            _ => {}
        }
    }
    violations
}

/// Splits the history by key and turns each operation into a model step;
/// operations that cannot matter (failed, serializable reads, unknown
/// reads, lease grants, unknown writes that never happened) are left out.
fn build_key_histories(input: &Input<'_>, values: &mut Values) -> HashMap<String, Vec<KeyOp>> {
    let mut per_key: HashMap<String, Vec<KeyOp>> = HashMap::new();
    for (i, op) in input.ops.iter().enumerate() {
        let Some(key) = op.key() else { continue };
        let Some((step, pending)) = to_step(op, input.scan.is_some(), values) else {
            continue;
        };
        per_key.entry(key.to_string()).or_default().push(KeyOp {
            op: i,
            call: op.call,
            ret: if pending { NEVER } else { op.ret.max(op.call) },
            step,
        });
    }
    per_key
}

fn kv_id(values: &mut Values, kv: Option<&Kv>) -> u32 {
    kv.map_or(ABSENT, |kv| values.intern(&kv.value))
}

fn to_cmp(values: &mut Values, cmp: &TxnCompare) -> Cmp {
    match cmp {
        TxnCompare::ModRevision { revision } => Cmp::ModRevision(*revision),
        TxnCompare::Value { value } => Cmp::Value(values.ids.get(value).copied()),
    }
}

/// The model step of `op` and whether it stays pending forever.
fn to_step(op: &Op, have_scan: bool, values: &mut Values) -> Option<(Step, bool)> {
    match (&op.request, &op.outcome) {
        (Request::Get { serializable, .. }, Outcome::Ok { response }) => {
            let Response::Get { revision, kv } = response else {
                return None;
            };
            if *serializable {
                return None;
            }
            let value = kv_id(values, kv.as_ref());
            Some((
                Step::Get {
                    rev: *revision,
                    value,
                },
                false,
            ))
        }
        (Request::Put { value, .. }, Outcome::Ok { response }) => {
            let value = values.intern(value);
            let rev = Some(response.revision());
            Some((Step::Put { value, rev }, false))
        }
        (Request::Put { value, .. }, Outcome::Unknown { .. }) => {
            let id = values.intern(value);
            match values.rev[id as usize] {
                Some(rev) => Some((
                    Step::Put {
                        value: id,
                        rev: Some(rev),
                    },
                    true,
                )),
                None if have_scan => None,
                None => Some((Step::MaybePut { value: id }, true)),
            }
        }
        (Request::Delete { .. }, Outcome::Ok { response }) => {
            let Response::Delete { revision, deleted } = response else {
                return None;
            };
            Some((
                Step::Delete {
                    deleted: *deleted > 0,
                    rev: *revision,
                },
                false,
            ))
        }
        (Request::Delete { .. }, Outcome::Unknown { .. }) => Some((Step::MaybeDelete, true)),
        (Request::Txn { compare, value, .. }, Outcome::Ok { response }) => {
            let Response::Txn {
                revision,
                succeeded,
                kv,
            } = response
            else {
                return None;
            };
            let cmp = to_cmp(values, compare);
            let value = values.intern(value);
            let read = kv_id(values, kv.as_ref());
            Some((
                Step::Txn {
                    cmp,
                    succeeded: *succeeded,
                    rev: *revision,
                    value,
                    read,
                },
                false,
            ))
        }
        (Request::Txn { compare, value, .. }, Outcome::Unknown { .. }) => {
            let cmp = to_cmp(values, compare);
            let id = values.intern(value);
            match values.rev[id as usize] {
                Some(rev) => Some((
                    Step::TxnHappened {
                        cmp,
                        value: id,
                        rev,
                    },
                    true,
                )),
                None if have_scan => None,
                None => Some((Step::MaybeTxn { cmp, value: id }, true)),
            }
        }
        _ => None,
    }
}

/// The result of searching one key.
enum Outcome3 {
    Linearizable,
    TimedOut,
    Violation(Failure),
}

/// Where the search got furthest before failing.
#[derive(Debug, Default)]
struct Failure {
    /// Operations linearized, in order, at the deepest point.
    prefix: Vec<usize>,
    /// The states after them.
    states: States,
    /// The operation whose return was reached without linearizing it.
    blocker: usize,
    /// Operations pending (called, not linearized) at that point.
    pending: Vec<usize>,
}

/// One call or return in the time-ordered list.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
}

/// The doubly linked entry list the search lifts operations out of
/// (Knuth's dancing links: a lifted pair can be put back in O(1)).
struct Links {
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

/// Index of the list head sentinel (entries start at 1).
const HEAD: usize = 0;
const END: usize = usize::MAX;

impl Links {
    fn new(history: &[KeyOp]) -> Links {
        let mut raw: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (i, op) in history.iter().enumerate() {
            raw.push((op.call, true, i));
            raw.push((op.ret, false, i));
        }
        // Calls before returns at equal instants: such operations count as
        // concurrent, the permissive reading.
        raw.sort_by_key(|&(t, call, i)| (t, !call, i));
        let mut entries = vec![Entry {
            op: usize::MAX,
            call: false,
            partner: 0,
        }];
        let mut ret_at = vec![0usize; history.len()];
        for (idx, &(_, call, op)) in raw.iter().enumerate() {
            entries.push(Entry {
                op,
                call,
                partner: 0,
            });
            if !call {
                ret_at[op] = idx + 1;
            }
        }
        for e in entries.iter_mut().skip(1) {
            if e.call {
                e.partner = ret_at[e.op];
            }
        }
        let n = entries.len();
        let next = (0..n)
            .map(|i| if i + 1 < n { i + 1 } else { END })
            .collect();
        let prev = (0..n).map(|i| i.wrapping_sub(1)).collect();
        Links {
            entries,
            next,
            prev,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = n;
        if n != END {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        if n != END {
            self.prev[n] = i;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.entries[call].partner);
    }

    /// Undoes [`Links::lift`] (in reverse order).
    fn unlift(&mut self, call: usize) {
        self.relink(self.entries[call].partner);
        self.relink(call);
    }
}

/// A fixed-size bit set of linearized operations.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing–Gong–Lowe search over one key's history.
fn search(values: &Values, history: &[KeyOp], deadline: Instant) -> Outcome3 {
    let mut links = Links::new(history);
    let mut linearized = Bits::new(history.len());
    let mut seen: HashSet<(Bits, States)> = HashSet::new();
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut states: States = vec![INITIAL];
    let mut deepest = Failure::default();
    let mut cur = links.next[HEAD];
    let mut steps: u64 = 0;
    while links.next[HEAD] != END {
        steps += 1;
        if steps.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
            return Outcome3::TimedOut;
        }
        if cur == END {
            // Only reachable if every remaining entry is a call that could
            // not be linearized; their returns follow, so this cannot
            // happen with a well-formed list. Treat as a dead end.
            cur = backtrack_target(&mut links, &mut stack, &mut linearized, &mut states);
            if cur == END {
                return Outcome3::Violation(deepest);
            }
            continue;
        }
        let entry = links.entries[cur];
        if entry.call {
            let next_states = step_all(values, &states, &history[entry.op].step);
            if !next_states.is_empty() {
                let mut lin = linearized.clone();
                lin.set(entry.op);
                if seen.insert((lin.clone(), next_states.clone())) {
                    stack.push((cur, std::mem::replace(&mut states, next_states)));
                    linearized = lin;
                    links.lift(cur);
                    cur = links.next[HEAD];
                    continue;
                }
            }
            cur = links.next[cur];
        } else {
            if stack.len() >= deepest.prefix.len() {
                deepest = failure_here(&links, &stack, &states, entry.op);
            }
            cur = backtrack_target(&mut links, &mut stack, &mut linearized, &mut states);
            if cur == END {
                return Outcome3::Violation(deepest);
            }
        }
    }
    Outcome3::Linearizable
}

/// Pops the last linearized operation back into the list; returns the
/// entry to try next, or `END` when nothing is left to undo.
fn backtrack_target(
    links: &mut Links,
    stack: &mut Vec<(usize, States)>,
    linearized: &mut Bits,
    states: &mut States,
) -> usize {
    let Some((call, prev_states)) = stack.pop() else {
        return END;
    };
    links.unlift(call);
    linearized.clear(links.entries[call].op);
    *states = prev_states;
    links.next[call]
}

fn failure_here(
    links: &Links,
    stack: &[(usize, States)],
    states: &States,
    blocker: usize,
) -> Failure {
    let prefix = stack.iter().map(|(c, _)| links.entries[*c].op).collect();
    let mut pending = Vec::new();
    let mut i = links.next[HEAD];
    while i != END {
        let e = links.entries[i];
        if !e.call && e.op == blocker {
            break;
        }
        if e.call {
            pending.push(e.op);
        }
        i = links.next[i];
    }
    Failure {
        prefix,
        states: states.clone(),
        blocker,
        pending,
    }
}

/// How many linearized operations before the failure point a report shows.
const CONTEXT_OPS: usize = 6;

/// A plain-text account of one key's violation: the end of the longest
/// linearizable prefix, the operation that could not be placed, the
/// operations concurrent with it, and why each is impossible next.
fn render(key: &str, f: &Failure, values: &Values, history: &[KeyOp], ops: &[Op]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "key {key}: not linearizable");
    let shown = CONTEXT_OPS.min(f.prefix.len());
    let _ = writeln!(
        out,
        "  longest linearizable prefix: {} operations; the last {shown} in linearization order:",
        f.prefix.len()
    );
    for &k in &f.prefix[f.prefix.len() - shown..] {
        let _ = writeln!(out, "    {}", describe(&history[k], ops));
    }
    let names: Vec<String> = f.states.iter().map(|s| values.name(s.value)).collect();
    let _ = writeln!(out, "  register after them: {}", names.join(" or "));
    let _ = writeln!(
        out,
        "  this operation returned before any pending operation could be linearized:"
    );
    let _ = writeln!(out, "    {}", describe(&history[f.blocker], ops));
    let _ = writeln!(out, "  pending operations and why none can come next:");
    for &k in &f.pending {
        let _ = writeln!(out, "    {}", describe(&history[k], ops));
        let _ = writeln!(
            out,
            "      -> {}",
            explain(values, &f.states, &history[k].step)
        );
    }
    out
}

/// One line: op id, client, times (ms), request and outcome.
pub fn describe_op(op: &Op) -> String {
    let ms = |t: u64| t as f64 / 1e6;
    let ret = match op.outcome {
        Outcome::Unknown { .. } => "never (unknown)".to_string(),
        _ => format!("{:.3}ms", ms(op.ret)),
    };
    format!(
        "op {} client {} member {} [{:.3}ms .. {ret}] {:?} -> {:?}",
        op.id,
        op.client,
        op.member,
        ms(op.call),
        op.request,
        op.outcome
    )
}

fn describe(k: &KeyOp, ops: &[Op]) -> String {
    describe_op(&ops[k.op])
}

mod model;
#[cfg(test)]
mod tests;
