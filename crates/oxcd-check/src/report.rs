//! The run's outcome for people and tools: op counts per kind, nemesis
//! events, one verdict line per checker and an overall verdict; with
//! `--out DIR`, `history.jsonl` (one op per line), `watches.jsonl` (one
//! watcher per line) and `report.txt` (everything, violations in full).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::check::{CheckResult, Verdict};
use crate::error::Error;
use crate::history::{History, Outcome};
use crate::nemesis::NemesisLog;

/// Everything a run produced.
#[derive(Debug)]
pub struct Report {
    /// What was tested: the server binary or the endpoints.
    pub target: String,
    /// The nemesis name.
    pub nemesis: String,
    /// The seed.
    pub seed: u64,
    /// How long the workload ran.
    pub workload_time: Duration,
    /// How long the whole run took, checks included.
    pub total_time: Duration,
    /// The record.
    pub history: History,
    /// What the nemesis did.
    pub nemesis_log: NemesisLog,
    /// Each checker's result.
    pub checks: Vec<CheckResult>,
    /// Remarks (e.g. unattributed peer connections).
    pub notes: Vec<String>,
}

impl Report {
    /// The overall verdict: FAIL if any checker failed, else UNKNOWN if
    /// any could not decide, else PASS.
    pub fn overall(&self) -> Verdict {
        self.checks
            .iter()
            .fold(Verdict::Pass, |acc, c| acc.worst(c.verdict.clone()))
    }

    /// The process exit code: 0 only for PASS.
    pub fn exit_code(&self) -> i32 {
        match self.overall() {
            Verdict::Pass => 0,
            Verdict::Fail(_) => 1,
            Verdict::Unknown(_) => 2,
        }
    }

    /// The per-kind counts as a table.
    pub fn counts(&self) -> String {
        let mut table: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
        for op in &self.history.ops {
            let slot = match op.outcome {
                Outcome::Ok { .. } => 0,
                Outcome::Fail { .. } => 1,
                Outcome::Unknown { .. } => 2,
            };
            table.entry(op.kind()).or_default()[slot] += 1;
        }
        let mut out = format!(
            "{:<18} {:>7} {:>7} {:>7}\n",
            "op", "ok", "failed", "unknown"
        );
        let mut total = [0usize; 3];
        for (kind, c) in &table {
            let _ = writeln!(out, "{kind:<18} {:>7} {:>7} {:>7}", c[0], c[1], c[2]);
            for i in 0..3 {
                total[i] += c[i];
            }
        }
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:>7} {:>7}",
            "total", total[0], total[1], total[2]
        );
        for w in &self.history.watches {
            let _ = writeln!(
                out,
                "watcher {}: {} events, {} (re)connects, {} errors, last revision {}",
                w.watcher,
                w.events.len(),
                w.connects.len(),
                w.errors.len(),
                w.last_revision()
            );
        }
        out
    }

    /// The short form printed to stdout.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "target: {}\nnemesis: {}  seed: {}  workload: {:.1}s  total: {:.1}s",
            self.target,
            self.nemesis,
            self.seed,
            self.workload_time.as_secs_f64(),
            self.total_time.as_secs_f64()
        );
        out.push_str(&self.counts());
        let _ = writeln!(out, "nemesis events: {}", self.nemesis_log.events.len());
        for (t, e) in &self.nemesis_log.events {
            let _ = writeln!(out, "  {:>8.3}s {e}", *t as f64 / 1e9);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        for c in &self.checks {
            let _ = writeln!(out, "{:<14} {}  {}", c.name, c.verdict, c.summary);
        }
        let _ = writeln!(out, "{}", self.overall().label());
        out
    }

    /// The long form: the summary plus every violation in full.
    pub fn full(&self) -> String {
        let mut out = self.summary();
        for c in &self.checks {
            match &c.verdict {
                Verdict::Fail(violations) => {
                    let _ = writeln!(out, "\n== {} violations ==", c.name);
                    for v in violations {
                        let _ = writeln!(out, "{v}");
                    }
                }
                Verdict::Unknown(why) => {
                    let _ = writeln!(out, "\n== {} undecided: {why} ==", c.name);
                }
                Verdict::Pass => {}
            }
        }
        out
    }

    /// Writes `history.jsonl`, `watches.jsonl` and `report.txt` to `dir`.
    ///
    /// # Errors
    /// The directory or a file cannot be written.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let mut history = String::new();
        for op in &self.history.ops {
            let line = serde_json::to_string(op)
                .map_err(|e| Error::io("encode op", std::io::Error::other(e)))?;
            history.push_str(&line);
            history.push('\n');
        }
        let mut watches = String::new();
        for w in &self.history.watches {
            let line = serde_json::to_string(w)
                .map_err(|e| Error::io("encode watch log", std::io::Error::other(e)))?;
            watches.push_str(&line);
            watches.push('\n');
        }
        for (name, text) in [
            ("history.jsonl", history),
            ("watches.jsonl", watches),
            ("report.txt", self.full()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        }
        Ok(())
    }
}
