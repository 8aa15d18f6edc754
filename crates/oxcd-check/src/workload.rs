//! The workload: concurrent clients issuing single-key operations over a
//! small key set (so histories interleave), and watchers on the key prefix.
//!
//! Each client runs one operation at a time, each bounded by a timeout. A
//! client whose write ends unknown carries on with new operations (the
//! unknown write stays pending forever in the history) and moves to the
//! next member, as a real client would fail over. Clients also move
//! between members now and then so revision monotonicity is checked across
//! members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oxcd_api::etcdserverpb::{watch_client::WatchClient, watch_request, WatchCreateRequest};
use oxcd_api::etcdserverpb::{WatchRequest, WatchResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::client::{prefix_end, MemberClient};
use crate::history::{Event, EventKind, Kv, Op, Outcome, Request, Response, TxnCompare, WatchLog};

/// What the clients do.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Client URLs by member index.
    pub urls: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Number of keys.
    pub keys: usize,
    /// Key prefix, unique to the run.
    pub prefix: String,
    /// Timeout of each operation.
    pub op_timeout: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Self-test of the checker: send every read as serializable but
    /// record it as linearizable, so a member cut off from the leader
    /// answers stale reads that the checker must report.
    pub selftest_stale_reads: bool,
}

impl WorkloadConfig {
    /// The `i`th key.
    pub fn key(&self, i: usize) -> String {
        format!("{}k{i:02}", self.prefix)
    }
}

/// The run's clock: monotonic nanoseconds since the start.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Lease TTL: long enough that no lease expires during a run, so expiry
/// never deletes keys behind the register model's back.
const LEASE_TTL: i64 = 3600;

/// Pause after a failed operation, so a client facing a dead member does
/// not spin (it also moves to the next member).
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Runs client `id` until `stop` fires; returns its operations in order
/// (ids are assigned later).
pub async fn run_client(
    cfg: Arc<WorkloadConfig>,
    id: usize,
    clock: Clock,
    stop: CancellationToken,
) -> Vec<Op> {
    let members: Vec<MemberClient> = cfg
        .urls
        .iter()
        .filter_map(|u| MemberClient::new(u, cfg.op_timeout).ok())
        .collect();
    let mut ops = Vec::new();
    if members.is_empty() {
        return ops;
    }
    let mut state = ClientState {
        rng: StdRng::seed_from_u64(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        id,
        counter: 0,
        seen: HashMap::new(),
        lease: None,
    };
    let mut member = id % members.len();
    while !stop.is_cancelled() {
        let request = state.next_request(&cfg);
        let call = clock.now();
        let is_write = !matches!(request, Request::Get { .. });
        let sent = match &request {
            Request::Get { key, .. } if cfg.selftest_stale_reads => Request::Get {
                key: key.clone(),
                serializable: true,
            },
            other => other.clone(),
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(cfg.op_timeout, members[member].execute(&sent)) => {
                r.unwrap_or_else(|_| timeout_outcome(is_write))
            }
            // Abandoned at the end of the run: outcome unknown.
            () = stop.cancelled() => timeout_outcome(is_write),
        };
        let ret = clock.now();
        state.learn(&request, &outcome);
        let failed = !matches!(outcome, Outcome::Ok { .. });
        ops.push(Op {
            id: 0,
            client: id,
            member,
            call,
            ret,
            request,
            outcome,
        });
        if failed {
            member = (member + 1) % members.len();
            tokio::select! {
                () = tokio::time::sleep(ERROR_BACKOFF) => {}
                () = stop.cancelled() => {}
            }
        } else if state.rng.random_bool(0.1) {
            member = (member + 1) % members.len();
        }
    }
    ops
}

fn timeout_outcome(is_write: bool) -> Outcome {
    let error = "client timeout".to_string();
    if is_write {
        Outcome::Unknown { error }
    } else {
        Outcome::Fail { error }
    }
}

/// One client's memory: what it last saw of each key (to build txn
/// compares that sometimes hold), its lease, its value counter.
struct ClientState {
    rng: StdRng,
    id: usize,
    counter: u64,
    seen: HashMap<String, Option<Kv>>,
    lease: Option<i64>,
}

impl ClientState {
    fn fresh_value(&mut self) -> String {
        self.counter += 1;
        format!("c{}-{}", self.id, self.counter)
    }

    fn next_request(&mut self, cfg: &WorkloadConfig) -> Request {
        let key = cfg.key(self.rng.random_range(0..cfg.keys.max(1)));
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..30 => Request::Put {
                key,
                value: self.fresh_value(),
                lease: 0,
            },
            30..58 => Request::Get {
                key,
                serializable: false,
            },
            58..63 => Request::Get {
                key,
                serializable: true,
            },
            63..71 => Request::Delete { key },
            71..93 => self.txn(key),
            _ => match self.lease {
                Some(lease) => Request::Put {
                    key,
                    value: self.fresh_value(),
                    lease,
                },
                None => Request::LeaseGrant { ttl: LEASE_TTL },
            },
        }
    }

    fn txn(&mut self, key: String) -> Request {
        let seen = self.seen.get(&key).cloned().flatten();
        let compare = if self.rng.random_bool(0.5) {
            TxnCompare::ModRevision {
                revision: seen.as_ref().map_or(0, |kv| kv.mod_revision),
            }
        } else {
            TxnCompare::Value {
                value: seen.map_or_else(|| "never-written".to_string(), |kv| kv.value),
            }
        };
        Request::Txn {
            key,
            compare,
            value: self.fresh_value(),
        }
    }

    fn learn(&mut self, request: &Request, outcome: &Outcome) {
        let Outcome::Ok { response } = outcome else {
            return;
        };
        match (request, response) {
            (Request::Put { key, value, .. }, Response::Put { revision })
            | (
                Request::Txn { key, value, .. },
                Response::Txn {
                    revision,
                    succeeded: true,
                    ..
                },
            ) => {
                let kv = Kv {
                    value: value.clone(),
                    mod_revision: *revision,
                };
                self.seen.insert(key.clone(), Some(kv));
            }
            (Request::Get { key, .. }, Response::Get { kv, .. })
            | (Request::Txn { key, .. }, Response::Txn { kv, .. }) => {
                self.seen.insert(key.clone(), kv.clone());
            }
            (Request::Delete { key }, Response::Delete { .. }) => {
                self.seen.insert(key.clone(), None);
            }
            (Request::LeaseGrant { .. }, Response::LeaseGrant { id, .. }) => {
                self.lease = Some(*id);
            }
            _ => {}
        }
    }
}

/// A watcher's shared record and progress: the run reads `log` at the end
/// and waits on `progress` (the last revision received).
#[derive(Clone, Debug)]
pub struct WatcherHandle {
    /// What the watcher received.
    pub log: Arc<Mutex<WatchLog>>,
    /// The revision of the last event received.
    pub progress: tokio::sync::watch::Receiver<i64>,
}

/// Why a watch stream ended.
enum WatchEnd {
    /// The start revision was compacted; resume at this revision.
    Compacted(i64),
    /// Anything else; resume after the last event received.
    Error(String),
}

/// Starts watcher `id` on the key prefix from `start_revision`; it
/// reconnects (to the next member) after any error, from the revision after
/// the last event it got, until `stop` fires. A watch refused because that
/// revision was compacted is recorded in [`WatchLog::compacted`] and
/// resumed at the compact revision (as etcd's clients do).
pub fn spawn_watcher(
    cfg: Arc<WorkloadConfig>,
    id: usize,
    start_revision: i64,
    clock: Clock,
    stop: CancellationToken,
) -> (WatcherHandle, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(WatchLog {
        watcher: id,
        start_revision,
        ..WatchLog::default()
    }));
    let (tx, rx) = tokio::sync::watch::channel(0i64);
    let handle = WatcherHandle {
        log: log.clone(),
        progress: rx,
    };
    let task = tokio::spawn(async move {
        let mut next = start_revision;
        let mut member = id % cfg.urls.len().max(1);
        while !stop.is_cancelled() {
            let url = &cfg.urls[member];
            lock(&log).connects.push((clock.now(), member, next));
            let result = tokio::select! {
                r = watch_once(url, &cfg.prefix, next, &log, &tx, clock) => r,
                () = stop.cancelled() => return,
            };
            let resume_after = tx.borrow().max(start_revision - 1) + 1;
            match result {
                Ok(()) => next = resume_after,
                Err(WatchEnd::Error(e)) => {
                    lock(&log)
                        .errors
                        .push((clock.now(), format!("member {member}: {e}")));
                    next = resume_after;
                }
                Err(WatchEnd::Compacted(rev)) => {
                    let mut guard = lock(&log);
                    guard.errors.push((
                        clock.now(),
                        format!("member {member}: revision {next} compacted at {rev}"),
                    ));
                    guard.compacted.push((next, rev));
                    next = rev.max(resume_after);
                }
            }
            member = (member + 1) % cfg.urls.len().max(1);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = stop.cancelled() => return,
            }
        }
    });
    (handle, task)
}

fn lock(log: &Mutex<WatchLog>) -> std::sync::MutexGuard<'_, WatchLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// One watch stream, until it breaks; `Err` says why.
async fn watch_once(
    url: &str,
    prefix: &str,
    start: i64,
    log: &Mutex<WatchLog>,
    progress: &tokio::sync::watch::Sender<i64>,
    clock: Clock,
) -> Result<(), WatchEnd> {
    let client = MemberClient::new(url, Duration::from_secs(3600)).map_err(WatchEnd::Error)?;
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: prefix_end(prefix.as_bytes()).into(),
                start_revision: start,
                ..Default::default()
            },
        )),
    };
    // The request stream stays open (pending) so the server keeps the
    // watch; `hasleader` makes an isolated etcd member cancel it.
    let requests = tokio_stream::once(create).chain(tokio_stream::pending());
    let mut req = tonic::Request::new(requests);
    req.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut watch_client = WatchClient::new(client.channel());
    let connect = watch_client.watch(req);
    let mut stream = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| WatchEnd::Error("watch open timed out".into()))?
        .map_err(|e| WatchEnd::Error(format!("watch open: {e}")))?
        .into_inner();
    loop {
        let resp: WatchResponse = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(WatchEnd::Error("stream ended".into())),
            Err(e) => return Err(WatchEnd::Error(format!("stream: {e}"))),
        };
        if resp.compact_revision > 0 {
            return Err(WatchEnd::Compacted(resp.compact_revision));
        }
        if resp.canceled {
            return Err(WatchEnd::Error(format!(
                "canceled (compact_revision {}): {}",
                resp.compact_revision, resp.cancel_reason
            )));
        }
        let now = clock.now();
        let mut guard = lock(log);
        for ev in &resp.events {
            let Some(kv) = &ev.kv else {
                guard.errors.push((now, "event without kv".into()));
                continue;
            };
            let kind = if ev.r#type == 1 {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            let event = Event {
                revision: kv.mod_revision,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                kind,
                value: String::from_utf8_lossy(&kv.value).into_owned(),
            };
            guard.events.push((now, event));
            progress.send_if_modified(|p| {
                let newer = kv.mod_revision > *p;
                if newer {
                    *p = kv.mod_revision;
                }
                newer
            });
        }
    }
}
