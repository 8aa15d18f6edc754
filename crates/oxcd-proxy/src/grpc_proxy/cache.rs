//! The serializable-range cache (etcd's `proxy/grpcproxy/cache`): answers
//! a serializable range the proxy has answered before without asking the
//! cluster. A write through the proxy drops every cached range it touches;
//! writes that bypass the proxy are not seen, so a cached answer may be as
//! stale as serializable reads are allowed to be — etcd's proxy behaves
//! the same. Requests at a fixed revision never change, so only
//! compaction ends them.
//!
//! Unlike etcd's, the cache is keyed by the caller's auth token as well:
//! a cached answer is never served to a caller the cluster has not
//! checked for that very range.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use oxcd_api::etcdserverpb::{RangeRequest, RangeResponse};
use prost::Message;
use tonic::Status;

/// How many answers the cache keeps (etcd's `DefaultMaxEntries`).
pub const MAX_ENTRIES: usize = 2048;

/// The cache; every method takes a short lock.
#[derive(Debug)]
pub struct RangeCache {
    inner: Mutex<Inner>,
    max: usize,
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<Vec<u8>, Entry>,
    /// Use counter, for least-recently-used eviction.
    tick: u64,
    /// The highest revision compacted through this proxy.
    compacted: i64,
}

#[derive(Debug)]
struct Entry {
    resp: RangeResponse,
    key: Bytes,
    end: Bytes,
    revision: i64,
    used: u64,
}

fn cache_key(token: &[u8], req: &RangeRequest) -> Vec<u8> {
    let mut r = req.clone();
    r.serializable = true;
    let mut k = Vec::with_capacity(8 + token.len() + r.encoded_len());
    k.extend_from_slice(&(token.len() as u64).to_be_bytes());
    k.extend_from_slice(token);
    r.encode(&mut k).ok();
    k
}

/// etcd's `required revision has been compacted`.
fn compacted() -> Status {
    Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
}

impl RangeCache {
    /// An empty cache of at most `max` answers.
    pub fn new(max: usize) -> RangeCache {
        RangeCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                tick: 0,
                compacted: -1,
            }),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer to `req` from a caller with `token`; the
    /// compaction error for a revision compacted through the proxy.
    pub fn get(&self, token: &[u8], req: &RangeRequest) -> Result<Option<RangeResponse>, Status> {
        let key = cache_key(token, req);
        let mut g = self.lock();
        if req.revision > 0 && req.revision < g.compacted {
            g.entries.remove(&key);
            return Err(compacted());
        }
        g.tick += 1;
        let tick = g.tick;
        Ok(g.entries.get_mut(&key).map(|e| {
            e.used = tick;
            e.resp.clone()
        }))
    }

    /// Remembers the cluster's answer to `req`.
    pub fn add(&self, token: &[u8], req: &RangeRequest, resp: &RangeResponse) {
        let key = cache_key(token, req);
        let mut g = self.lock();
        if req.revision != 0 && req.revision <= g.compacted {
            return;
        }
        if g.entries.len() >= self.max && !g.entries.contains_key(&key) {
            let oldest = g
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                g.entries.remove(&k);
            }
        }
        g.tick += 1;
        let used = g.tick;
        g.entries.insert(
            key,
            Entry {
                resp: resp.clone(),
                key: req.key.clone(),
                end: req.range_end.clone(),
                revision: req.revision,
                used,
            },
        );
    }

    /// Drops every cached latest-revision answer that overlaps
    /// `[key, end)` (a single key when `end` is empty).
    pub fn invalidate(&self, key: &[u8], end: &[u8]) {
        let mut g = self.lock();
        g.entries
            .retain(|_, e| e.revision != 0 || !overlaps(&e.key, &e.end, key, end));
    }

    /// Notes a compaction through the proxy: older fixed-revision answers
    /// become errors.
    pub fn compact(&self, revision: i64) {
        let mut g = self.lock();
        if revision > g.compacted {
            g.compacted = revision;
        }
    }

    /// How many answers are cached.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where an etcd range `[key, end)` ends: `None` is the end of the
/// keyspace (`end == "\0"`), an empty `end` is the single key.
fn upper(key: &[u8], end: &[u8]) -> Option<Vec<u8>> {
    match end {
        [] => {
            let mut k = key.to_vec();
            k.push(0);
            Some(k)
        }
        [0] => None,
        e => Some(e.to_vec()),
    }
}

fn overlaps(a_key: &[u8], a_end: &[u8], b_key: &[u8], b_end: &[u8]) -> bool {
    let below = |start: &[u8], end: &Option<Vec<u8>>| end.as_ref().is_none_or(|e| start < &e[..]);
    below(a_key, &upper(b_key, b_end)) && below(b_key, &upper(a_key, a_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &[u8], end: &[u8]) -> RangeRequest {
        RangeRequest {
            key: Bytes::copy_from_slice(key),
            range_end: Bytes::copy_from_slice(end),
            serializable: true,
            ..Default::default()
        }
    }

    #[test]
    fn writes_drop_overlapping_ranges_only() {
        let c = RangeCache::new(16);
        let resp = RangeResponse::default();
        c.add(b"", &req(b"a", b""), &resp);
        c.add(b"", &req(b"b", b"d"), &resp);
        c.add(b"", &req(b"x", b"\0"), &resp);
        assert_eq!(c.len(), 3);
        c.invalidate(b"c", b"");
        assert!(c.get(b"", &req(b"b", b"d")).unwrap().is_none());
        assert!(c.get(b"", &req(b"a", b"")).unwrap().is_some());
        c.invalidate(b"zzz", b"");
        assert!(c.get(b"", &req(b"x", b"\0")).unwrap().is_none());
        c.invalidate(b"", b"\0");
        assert!(c.is_empty());
    }

    #[test]
    fn answers_are_per_token_and_compaction_ends_old_revisions() {
        let c = RangeCache::new(16);
        let resp = RangeResponse::default();
        c.add(b"alice", &req(b"k", b""), &resp);
        assert!(c.get(b"bob", &req(b"k", b"")).unwrap().is_none());
        assert!(c.get(b"alice", &req(b"k", b"")).unwrap().is_some());
        let mut old = req(b"k", b"");
        old.revision = 3;
        c.add(b"", &old, &resp);
        c.compact(5);
        assert!(c.get(b"", &old).is_err());
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let c = RangeCache::new(2);
        let resp = RangeResponse::default();
        c.add(b"", &req(b"a", b""), &resp);
        c.add(b"", &req(b"b", b""), &resp);
        c.get(b"", &req(b"a", b"")).unwrap();
        c.add(b"", &req(b"c", b""), &resp);
        assert!(c.get(b"", &req(b"a", b"")).unwrap().is_some());
        assert!(c.get(b"", &req(b"b", b"")).unwrap().is_none());
    }
}
