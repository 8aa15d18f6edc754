//! The final state, rebuilt revision by revision.
//!
//! After the faults are lifted, one linearizable range of the key prefix
//! gives the final revision and values. Then a range of the prefix *at*
//! each revision from the run's first to the final one gives the state
//! after every revision; the difference between consecutive states is the
//! event at that revision (a key whose `mod_revision` is the revision was
//! put, a key that vanished was deleted). This does not use the watch
//! implementation, so the watch checker can compare watchers against it.
//! The checker never compacts, so every revision is still readable (on a
//! user's cluster with auto-compaction, a compacted revision makes the
//! scan fail and the checkers that need it say "unknown").

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::client::{prefix_end, MemberClient};
use crate::history::{Event, EventKind, Kv};

/// Revisions read concurrently.
const PARALLEL: usize = 32;

/// The key space under the prefix over the run.
#[derive(Clone, Debug, Default)]
pub struct Scan {
    /// The first revision scanned (events before it are not known).
    pub from: i64,
    /// The final revision.
    pub final_revision: i64,
    /// Every event under the prefix in `from..=final_revision`, in order.
    pub events: Vec<Event>,
    /// The final values (from the final linearizable range).
    pub final_kvs: BTreeMap<String, Kv>,
    /// Contradictions found while rebuilding (a key changed at a revision
    /// without its `mod_revision` saying so, the final range disagreeing
    /// with the state at its revision, ...).
    pub anomalies: Vec<String>,
}

type State = BTreeMap<String, Kv>;

/// Reads the final state and every revision from `from` on.
///
/// # Errors
/// A read that keeps failing (after retries on every member), e.g. a
/// compacted revision.
pub async fn scan(urls: &[String], prefix: &str, from: i64) -> Result<Scan, String> {
    let clients: Vec<MemberClient> = urls
        .iter()
        .map(|u| MemberClient::new(u, Duration::from_secs(5)))
        .collect::<Result<_, _>>()?;
    let key = prefix.as_bytes().to_vec();
    let end = prefix_end(&key);
    let (final_revision, final_kvs) = read_at(&clients, 0, &key, &end, 0).await?;
    let mut scan = Scan {
        from,
        final_revision,
        final_kvs,
        ..Scan::default()
    };
    let mut prev = if from > 1 {
        read_at(&clients, 0, &key, &end, from - 1).await?.1
    } else {
        State::new()
    };
    let mut rev = from;
    while rev <= final_revision {
        let last = (rev + PARALLEL as i64 - 1).min(final_revision);
        let mut set = JoinSet::new();
        for r in rev..=last {
            let (clients, key, end) = (clients.clone(), key.clone(), end.clone());
            let pick = usize::try_from(r).unwrap_or(0) % clients.len();
            set.spawn(async move { (r, read_at(&clients, pick, &key, &end, r).await) });
        }
        let mut states = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            let (r, result) = joined.map_err(|e| format!("scan task: {e}"))?;
            states.insert(r, result?.1);
        }
        for (r, state) in states {
            diff(r, &prev, &state, &mut scan);
            prev = state;
        }
        rev = last + 1;
    }
    if prev != scan.final_kvs && final_revision >= from {
        scan.anomalies.push(format!(
            "the final linearizable range differs from the range at its own revision \
             {final_revision}: {:?} vs {:?}",
            scan.final_kvs, prev
        ));
    }
    Ok(scan)
}

/// Appends the events that turn `prev` into `next` at revision `r`.
fn diff(r: i64, prev: &State, next: &State, scan: &mut Scan) {
    for (key, kv) in next {
        if kv.mod_revision == r {
            scan.events.push(Event {
                revision: r,
                key: key.clone(),
                kind: EventKind::Put,
                value: kv.value.clone(),
            });
        } else if prev.get(key) != Some(kv) {
            scan.anomalies.push(format!(
                "at revision {r} key {key} reads {kv:?}, but at {} it read {:?}",
                r - 1,
                prev.get(key)
            ));
        }
    }
    for key in prev.keys() {
        if !next.contains_key(key) {
            scan.events.push(Event {
                revision: r,
                key: key.clone(),
                kind: EventKind::Delete,
                value: String::new(),
            });
        }
    }
}

/// A range of `[key, end)` at `revision` (0: now), trying every member
/// starting with `first`, a few rounds.
async fn read_at(
    clients: &[MemberClient],
    first: usize,
    key: &[u8],
    end: &[u8],
    revision: i64,
) -> Result<(i64, State), String> {
    let mut last = String::new();
    for attempt in 0..3 * clients.len() {
        let c = &clients[(first + attempt) % clients.len()];
        match c.range(key, end, revision, false).await {
            Ok(resp) => {
                let header = resp.header.map_or(0, |h| h.revision);
                let state = resp
                    .kvs
                    .into_iter()
                    .map(|kv| {
                        (
                            String::from_utf8_lossy(&kv.key).into_owned(),
                            Kv {
                                value: String::from_utf8_lossy(&kv.value).into_owned(),
                                mod_revision: kv.mod_revision,
                            },
                        )
                    })
                    .collect();
                return Ok((header, state));
            }
            Err(e) => {
                last = format!("range at revision {revision} on {}: {}", c.url, e.message());
                if e.message().contains("compacted") {
                    return Err(last);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Err(last)
}
