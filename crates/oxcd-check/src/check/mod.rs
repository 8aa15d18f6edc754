//! The checkers. Each looks at the recorded [`History`] (and the final
//! [`Scan`]) and gives a [`Verdict`]:
//! - [`linearizable`]: the KV history, key by key, against a register
//!   model with revisions (Wing–Gong / Lowe search);
//! - [`lost`]: every acknowledged write is in the final revision history,
//!   and every observed value agrees with it;
//! - [`watch`]: each watcher's events are ordered, without gaps or
//!   duplicates, and agree with the revision history;
//! - [`revision`]: each client's observed revisions never go backwards,
//!   and no two writes share a revision.
//!
//! [`History`]: crate::history::History
//! [`Scan`]: crate::scan::Scan

pub mod linearizable;
pub mod lost;
pub mod revision;
pub mod watch;

use std::fmt;

/// One checker's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The property holds for this history.
    Pass,
    /// The property is violated; each entry explains one violation.
    Fail(Vec<String>),
    /// The checker could not decide (time bound, missing final state).
    /// Never counted as a pass.
    Unknown(String),
}

impl Verdict {
    /// `PASS`, `FAIL` or `UNKNOWN`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Unknown(_) => "UNKNOWN",
        }
    }

    /// Fail if any violation was found, else pass.
    pub fn from_violations(violations: Vec<String>) -> Verdict {
        if violations.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(violations)
        }
    }

    /// The worse of two verdicts: FAIL over UNKNOWN over PASS.
    pub fn worst(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Fail(mut a), Verdict::Fail(b)) => {
                a.extend(b);
                Verdict::Fail(a)
            }
            (f @ Verdict::Fail(_), _) | (_, f @ Verdict::Fail(_)) => f,
            (u @ Verdict::Unknown(_), _) | (_, u @ Verdict::Unknown(_)) => u,
            (Verdict::Pass, Verdict::Pass) => Verdict::Pass,
        }
    }
}

/// The final revision history, if the checkers that need it can use it;
/// otherwise the UNKNOWN verdict they give.
pub(crate) fn usable_scan(scan: Option<&crate::scan::Scan>) -> Result<&crate::scan::Scan, Verdict> {
    let Some(scan) = scan else {
        return Err(Verdict::Unknown(
            "the final revision history could not be read".into(),
        ));
    };
    if let Some(why) = &scan.incomplete {
        return Err(Verdict::Unknown(format!(
            "the revision history is incomplete: {why}"
        )));
    }
    Ok(scan)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("PASS"),
            Verdict::Fail(v) => write!(f, "FAIL ({} violation(s))", v.len()),
            Verdict::Unknown(why) => write!(f, "UNKNOWN ({why})"),
        }
    }
}

/// A named checker's verdict with a one-line summary of what it looked at.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// The checker's name.
    pub name: &'static str,
    /// Its verdict.
    pub verdict: Verdict,
    /// What it covered (counts).
    pub summary: String,
}
