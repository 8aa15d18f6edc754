//! The register model of one key: states, steps and why a step is
//! impossible. See the parent module for what the revisions add.

use std::collections::HashMap;

/// "No value": the key is absent.
pub(super) const ABSENT: u32 = u32::MAX;

/// The register's state: the current value (or [`ABSENT`]) and the highest
/// write revision linearized so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct State {
    pub(super) value: u32,
    pub(super) floor: i64,
}

pub(super) const INITIAL: State = State {
    value: ABSENT,
    floor: 0,
};

/// A set of possible states, sorted and without duplicates.
pub(super) type States = Vec<State>;

/// A compare, with its value interned.
#[derive(Clone, Copy, Debug)]
pub(super) enum Cmp {
    ModRevision(i64),
    /// `None`: a value never written, so never equal.
    Value(Option<u32>),
}

/// One operation as the model sees it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Step {
    /// A put that happened; `rev` unknown only without a final history.
    Put { value: u32, rev: Option<i64> },
    /// A put that may or may not have happened.
    MaybePut { value: u32 },
    /// An acknowledged delete: `deleted` keys at revision `rev` (the store
    /// revision when nothing was deleted).
    Delete { deleted: bool, rev: i64 },
    /// A delete that may or may not have happened.
    MaybeDelete,
    /// A linearizable read at header revision `rev`.
    Get { rev: i64, value: u32 },
    /// An acknowledged txn.
    Txn {
        cmp: Cmp,
        succeeded: bool,
        rev: i64,
        value: u32,
        read: u32,
    },
    /// A txn whose put happened (value in the final history): the compare
    /// must have held.
    TxnHappened { cmp: Cmp, value: u32, rev: i64 },
    /// A txn that may have run either branch or not at all.
    MaybeTxn { cmp: Cmp, value: u32 },
}

/// One operation of one key's sub-history.
#[derive(Clone, Debug)]
pub(super) struct KeyOp {
    /// Index into the run's ops.
    pub(super) op: usize,
    /// Invocation time.
    pub(super) call: u64,
    /// Completion time, `NEVER` for an operation pending forever.
    pub(super) ret: u64,
    /// What the model does with it.
    pub(super) step: Step,
}

/// Interned values and what is known of their revisions.
#[derive(Debug, Default)]
pub(super) struct Values {
    pub(super) names: Vec<String>,
    pub(super) ids: HashMap<String, u32>,
    pub(super) rev: Vec<Option<i64>>,
}

impl Values {
    pub(super) fn intern(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(ABSENT - 1);
        self.names.push(v.to_string());
        self.ids.insert(v.to_string(), id);
        self.rev.push(None);
        id
    }

    /// Records that `v` was written at `rev`; `Err` if it was known at
    /// another revision.
    pub(super) fn learn(&mut self, v: &str, rev: i64, source: &str) -> Result<(), String> {
        let id = self.intern(v) as usize;
        match self.rev[id] {
            Some(r) if r != rev => Err(format!(
                "value {v:?} is reported at revision {rev} by {source} but at revision {r} elsewhere"
            )),
            _ => {
                self.rev[id] = Some(rev);
                Ok(())
            }
        }
    }

    pub(super) fn name(&self, id: u32) -> String {
        if id == ABSENT {
            "<absent>".into()
        } else {
            let rev = self.rev[id as usize].map_or("?".into(), |r| r.to_string());
            format!("{:?}@{rev}", self.names[id as usize])
        }
    }

    pub(super) fn mod_revision(&self, id: u32) -> Option<i64> {
        if id == ABSENT {
            Some(0)
        } else {
            self.rev[id as usize]
        }
    }
}

/// The model: one step from one state. `Err` says why the step is
/// impossible from that state.
pub(super) fn step(values: &Values, s: State, op: &Step, out: &mut States) -> Result<(), String> {
    match *op {
        Step::Put { value, rev } => out.push(write(s, value, rev)?),
        Step::MaybePut { value } => {
            out.push(s);
            out.push(write(s, value, values.mod_revision(value))?);
        }
        Step::Delete { deleted: true, rev } => {
            if s.value == ABSENT {
                return Err("delete removed a key, but the key is absent".into());
            }
            out.push(write(s, ABSENT, Some(rev))?);
        }
        Step::Delete {
            deleted: false,
            rev,
        } => {
            read(values, s, rev, ABSENT)?;
            out.push(s);
        }
        Step::MaybeDelete => {
            out.push(s);
            out.push(State {
                value: ABSENT,
                floor: s.floor,
            });
        }
        Step::Get { rev, value } => {
            read(values, s, rev, value)?;
            out.push(s);
        }
        Step::Txn {
            cmp,
            succeeded,
            rev,
            value,
            read: seen,
        } => {
            let holds = compare(values, s, cmp);
            if holds == Some(!succeeded) {
                return Err(format!(
                    "txn took the {} branch, but its compare is {} here",
                    if succeeded { "then" } else { "else" },
                    !succeeded
                ));
            }
            if succeeded {
                out.push(write(s, value, Some(rev))?);
            } else {
                read(values, s, rev, seen)?;
                out.push(s);
            }
        }
        Step::TxnHappened { cmp, value, rev } => {
            if compare(values, s, cmp) == Some(false) {
                return Err("txn's put happened, but its compare is false here".into());
            }
            out.push(write(s, value, Some(rev))?);
        }
        Step::MaybeTxn { cmp, value } => {
            out.push(s);
            if compare(values, s, cmp) != Some(false) {
                out.push(write(s, value, values.mod_revision(value))?);
            }
        }
    }
    Ok(())
}

/// A write of `value` (or a delete, `ABSENT`) at `rev`, if known.
pub(super) fn write(s: State, value: u32, rev: Option<i64>) -> Result<State, String> {
    match rev {
        Some(r) if r <= s.floor => Err(format!(
            "write at revision {r} would follow a write at revision {}",
            s.floor
        )),
        Some(r) => Ok(State { value, floor: r }),
        None => Ok(State {
            value,
            floor: s.floor,
        }),
    }
}

/// A read at header revision `rev` that returned `value`.
pub(super) fn read(values: &Values, s: State, rev: i64, value: u32) -> Result<(), String> {
    if rev < s.floor {
        return Err(format!(
            "read served at revision {rev} follows a write at revision {}",
            s.floor
        ));
    }
    if s.value != value {
        return Err(format!(
            "read returned {}, but the register holds {}",
            values.name(value),
            values.name(s.value)
        ));
    }
    Ok(())
}

/// Whether the compare holds in `s`; `None` when it cannot be told (the
/// current value's revision is unknown).
pub(super) fn compare(values: &Values, s: State, cmp: Cmp) -> Option<bool> {
    match cmp {
        Cmp::ModRevision(r) => values.mod_revision(s.value).map(|m| m == r),
        Cmp::Value(v) => Some(s.value != ABSENT && Some(s.value) == v),
    }
}

/// Applies `op` to every state in `states`; the result is sorted and
/// deduplicated (empty: impossible from all of them).
pub(super) fn step_all(values: &Values, states: &States, op: &Step) -> States {
    let mut out = Vec::with_capacity(states.len() + 1);
    for &s in states {
        let _ = step(values, s, op, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Why `op` cannot follow any state in `states` (for reports).
pub(super) fn explain(values: &Values, states: &States, op: &Step) -> String {
    let mut why = Vec::new();
    for &s in states {
        let mut out = Vec::new();
        match step(values, s, op, &mut out) {
            Ok(()) => why.push(format!("possible from {}", values.name(s.value))),
            Err(e) => why.push(e),
        }
    }
    why.dedup();
    why.join("; ")
}
