//! oxcd-check: a robustness checker for etcd v3 clusters (oxcd or etcd).
//!
//! It drives a cluster with concurrent clients and watchers, injects faults,
//! records every operation with its invocation and completion instants, and
//! then decides whether what the clients saw is allowed. It is modelled on
//! etcd's `tests/robustness` suite (porcupine) and Jepsen's etcd analysis.
//!
//! Crate map, in the order a run uses it:
//! - [`cluster`]: starts N members of a server binary on 127.0.0.1 (or
//!   points at an existing cluster), kills, pauses, restarts them.
//! - [`proxy`]: the fault-injecting TCP proxy in front of each member's
//!   peer listener, which the partition nemesis uses.
//! - [`workload`]: the clients (put, get, delete, txn, lease) and watchers.
//! - [`history`]: what was recorded: operations, outcomes, watch events.
//! - [`nemesis`]: the faults (kill, kill-leader, pause, partition, disk,
//!   membership, snapshot-kill, compact-defrag, mixed).
//! - [`failpoint`]: oxcd's `/debug/failpoints` over HTTP, for the disk
//!   nemesis.
//! - [`scan`]: the final state: every revision of the key space rebuilt
//!   from ranged reads at each revision.
//! - [`check`]: the verdicts: linearizability, lost writes, watch, revision
//!   monotonicity.
//! - [`report`]: verdict lines, op counts, history.jsonl and report.txt.
//! - [`run`]: one run from a [`run::Config`] to a [`report::Report`].
//!
//! Running it (exit code 0 only for PASS, 1 FAIL, 2 UNKNOWN, 3 no run):
//! ```text
//! oxcd-check --server target/debug/oxcd --nemesis kill --duration 30 --out /tmp/run
//! oxcd-check --server /usr/bin/etcd --nemesis partition --seed 7
//! oxcd-check --endpoints http://10.0.0.1:2379,http://10.0.0.2:2379   # no faults
//! ```
//! The hidden `--selftest-stale-reads` flag sends reads as serializable
//! while checking them as linearizable; under `--nemesis partition` the
//! run must FAIL, which shows the checker can.
#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod error;
pub mod failpoint;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod run;
pub mod scan;
pub mod workload;

pub use error::Error;
