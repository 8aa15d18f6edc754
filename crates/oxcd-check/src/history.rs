//! The recorded history: every client operation with its invocation and
//! completion instants, and every event each watcher received.
//!
//! Times are monotonic nanoseconds since the run began. An operation whose
//! outcome is unknown (timeout, connection lost) has no completion time: as
//! in porcupine and Knossos it stays pending forever, because the server may
//! apply it at any later moment.

use serde::{Deserialize, Serialize};

/// What a client asked for. Every request touches one key, so the history
/// can be checked key by key (P-compositionality).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Put a value unique to this operation (optionally under a lease).
    Put {
        /// The key.
        key: String,
        /// The value, unique across the run.
        value: String,
        /// The lease it is attached to, 0 for none.
        lease: i64,
    },
    /// Range over one key.
    Get {
        /// The key.
        key: String,
        /// Served from the member's local store: recorded, not checked for
        /// linearizability.
        serializable: bool,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// `if compare(key) then put(key, value) else get(key)`.
    Txn {
        /// The key.
        key: String,
        /// The comparison.
        compare: TxnCompare,
        /// The value put when the comparison holds, unique across the run.
        value: String,
    },
    /// Grant a lease (not part of the key space model).
    LeaseGrant {
        /// Requested TTL in seconds.
        ttl: i64,
    },
}

/// The one comparison of a [`Request::Txn`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum TxnCompare {
    /// `mod_revision(key) == revision` (0 means "does not exist").
    ModRevision {
        /// The expected mod revision.
        revision: i64,
    },
    /// `value(key) == value` (false when the key does not exist).
    Value {
        /// The expected value.
        value: String,
    },
}

/// A key-value pair as the server returned it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kv {
    /// The value.
    pub value: String,
    /// The revision of the write that produced it.
    pub mod_revision: i64,
}

/// A successful response, reduced to what the checkers use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The put's revision (the response header's).
    Put {
        /// Header revision: the revision of this write.
        revision: i64,
    },
    /// A range's header revision and the key's value, if it exists.
    Get {
        /// Header revision: the store revision the read was served at.
        revision: i64,
        /// The key's value, `None` if absent.
        kv: Option<Kv>,
    },
    /// A delete's header revision and how many keys it removed.
    Delete {
        /// Header revision: the delete's own revision if it removed a key,
        /// else the store revision.
        revision: i64,
        /// Keys removed (0 or 1).
        deleted: i64,
    },
    /// A txn's header revision, which branch ran, and the else-branch read.
    Txn {
        /// Header revision: the put's revision when `succeeded`.
        revision: i64,
        /// Whether the comparison held (the put ran).
        succeeded: bool,
        /// The else branch's read of the key.
        kv: Option<Kv>,
    },
    /// The granted lease.
    LeaseGrant {
        /// Header revision.
        revision: i64,
        /// The lease ID.
        id: i64,
    },
}

impl Response {
    /// The response header's revision.
    pub fn revision(&self) -> i64 {
        match self {
            Response::Put { revision }
            | Response::Get { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::LeaseGrant { revision, .. } => *revision,
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered with success.
    Ok {
        /// The response.
        response: Response,
    },
    /// The server definitely did not apply it (e.g. invalid argument).
    Fail {
        /// The error.
        error: String,
    },
    /// It may or may not have been applied (timeout, connection lost,
    /// leader change while waiting).
    Unknown {
        /// The error.
        error: String,
    },
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Index in the history, unique.
    pub id: usize,
    /// The client that issued it; a client runs one operation at a time.
    pub client: usize,
    /// The member the client sent it to (index in the endpoint list).
    pub member: usize,
    /// Invocation, ns since the run began.
    pub call: u64,
    /// Completion, ns since the run began. For an `Unknown` outcome this is
    /// when the client gave up; checkers treat it as never.
    pub ret: u64,
    /// The request.
    pub request: Request,
    /// The outcome.
    pub outcome: Outcome,
}

impl Op {
    /// The key the request touches (`None` for lease grants).
    pub fn key(&self) -> Option<&str> {
        match &self.request {
            Request::Put { key, .. }
            | Request::Get { key, .. }
            | Request::Delete { key }
            | Request::Txn { key, .. } => Some(key),
            Request::LeaseGrant { .. } => None,
        }
    }

    /// Short kind name for counts and reports.
    pub fn kind(&self) -> &'static str {
        match &self.request {
            Request::Put { lease: 0, .. } => "put",
            Request::Put { .. } => "put-lease",
            Request::Get {
                serializable: false,
                ..
            } => "get",
            Request::Get {
                serializable: true, ..
            } => "get-serializable",
            Request::Delete { .. } => "delete",
            Request::Txn { .. } => "txn",
            Request::LeaseGrant { .. } => "lease-grant",
        }
    }

    /// The OK response, if any.
    pub fn response(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Ok { response } => Some(response),
            _ => None,
        }
    }

    /// Whether the request writes to the key space.
    pub fn is_write(&self) -> bool {
        matches!(
            self.request,
            Request::Put { .. } | Request::Delete { .. } | Request::Txn { .. }
        )
    }
}

/// Put or delete, as etcd's `mvccpb.Event.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete (tombstone).
    Delete,
}

/// One change to the key space, from a watcher or from the final scan.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// The revision it happened at.
    pub revision: i64,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub kind: EventKind,
    /// The value put (empty for deletes).
    pub value: String,
}

/// What one watcher received, in arrival order, across reconnections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchLog {
    /// The watcher's index.
    pub watcher: usize,
    /// The revision of its first watch request.
    pub start_revision: i64,
    /// Events in arrival order, with arrival time (ns since the start).
    pub events: Vec<(u64, Event)>,
    /// Each (re)connection: time, member, requested start revision.
    pub connects: Vec<(u64, usize, i64)>,
    /// Errors and cancellations seen, with time.
    pub errors: Vec<(u64, String)>,
    /// Each watch refused because its start revision was compacted:
    /// (requested start revision, compact revision). The watcher resumes
    /// at the compact revision, so the events from the requested start up
    /// to it are an allowed gap.
    #[serde(default)]
    pub compacted: Vec<(i64, i64)>,
}

impl WatchLog {
    /// The revision of the last event received, 0 if none.
    pub fn last_revision(&self) -> i64 {
        self.events.last().map_or(0, |(_, e)| e.revision)
    }
}

/// A whole run's record.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Client operations in completion order.
    pub ops: Vec<Op>,
    /// One log per watcher.
    pub watches: Vec<WatchLog>,
}
