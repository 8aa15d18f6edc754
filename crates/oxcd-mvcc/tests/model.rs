//! Model test (the redb fuzzer pattern): random sequences of write
//! transactions (puts and range deletes), compactions, reads at past
//! revisions, syncs and reopens, checked against a naive model that keeps
//! a full copy of the key space for every revision.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use oxcd_api::mvccpb::KeyValue;
use oxcd_mvcc::{BackendConfig, KvStore, MvccError, RangeOptions};
use proptest::prelude::*;

const KEYS: &[&str] = &["a", "b", "ba", "c", "d"];

#[derive(Debug, Clone)]
enum WriteOp {
    Put { key: usize, value: u8, lease: i64 },
    Delete { key: usize, end: End },
}

#[derive(Debug, Clone, Copy)]
enum End {
    Single,
    Unbounded,  // "\0"
    Key(usize), // may be <= key: empty range
}

#[derive(Debug, Clone)]
enum Op {
    Txn(Vec<WriteOp>),
    Compact(i64),
    Range {
        key: usize,
        end: End,
        rev: i64,
        limit: i64,
    },
    Sync,
    Reopen,
}

fn end_strategy() -> impl Strategy<Value = End> {
    prop_oneof![
        Just(End::Single),
        Just(End::Unbounded),
        (0..KEYS.len()).prop_map(End::Key),
    ]
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        3 => (0..KEYS.len(), any::<u8>(), 0..3i64)
            .prop_map(|(key, value, lease)| WriteOp::Put { key, value, lease }),
        1 => (0..KEYS.len(), end_strategy()).prop_map(|(key, end)| WriteOp::Delete { key, end }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(write_op(), 0..4).prop_map(Op::Txn),
        1 => (-1..30i64).prop_map(Op::Compact),
        4 => (0..KEYS.len(), end_strategy(), -1..32i64, 0..3i64)
            .prop_map(|(key, end, rev, limit)| Op::Range { key, end, rev, limit }),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

fn end_bytes(end: End) -> Vec<u8> {
    match end {
        End::Single => Vec::new(),
        End::Unbounded => vec![0],
        End::Key(i) => KEYS[i].as_bytes().to_vec(),
    }
}

/// Naive model: `states[r]` is the whole key space at revision `r`.
struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact_rev: i64,
}

impl Model {
    fn new() -> Self {
        // Revisions 0 and 1 are both the empty store.
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compact_rev: -1,
        }
    }

    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn in_range(key: &[u8], k: &[u8], end: &[u8]) -> bool {
        match end {
            [] => key == k,
            [0] => key >= k,
            _ => key >= k && key < end,
        }
    }

    /// Applies a transaction; returns whether it changed anything.
    fn txn(&mut self, ops: &[WriteOp]) -> bool {
        let main = self.rev() + 1;
        let mut st = self.states.last().cloned().unwrap_or_default();
        let mut changed = false;
        for op in ops {
            match *op {
                WriteOp::Put { key, value, lease } => {
                    let k = KEYS[key].as_bytes().to_vec();
                    let (create_revision, version) = match st.get(&k) {
                        Some(old) => (old.create_revision, old.version + 1),
                        None => (main, 1),
                    };
                    st.insert(
                        k.clone(),
                        KeyValue {
                            key: k.into(),
                            create_revision,
                            mod_revision: main,
                            version,
                            value: vec![value].into(),
                            lease,
                        },
                    );
                    changed = true;
                }
                WriteOp::Delete { key, end } => {
                    let k = KEYS[key].as_bytes();
                    let e = end_bytes(end);
                    let before = st.len();
                    st.retain(|x, _| !Self::in_range(x, k, &e));
                    changed |= st.len() != before;
                }
            }
        }
        if changed {
            self.states.push(st);
        }
        changed
    }
}

fn apply_txn(store: &KvStore, ops: &[WriteOp]) -> i64 {
    let mut t = store.write();
    for op in ops {
        match *op {
            WriteOp::Put { key, value, lease } => {
                t.put(KEYS[key].as_bytes(), &[value], lease).unwrap();
            }
            WriteOp::Delete { key, end } => {
                t.delete_range(KEYS[key].as_bytes(), &end_bytes(end))
                    .unwrap();
            }
        }
    }
    t.end(None).unwrap().rev
}

fn check_range(store: &KvStore, model: &Model, key: usize, end: End, rev: i64, limit: i64) {
    let k = KEYS[key].as_bytes();
    let e = end_bytes(end);
    let opts = RangeOptions {
        limit,
        rev,
        count_only: false,
    };
    let got = store.read().unwrap().range(k, &e, opts);
    let at = if rev <= 0 { model.rev() } else { rev };
    if rev > model.rev() {
        assert!(matches!(got, Err(MvccError::FutureRev { .. })), "{got:?}");
        return;
    }
    if at < model.compact_rev {
        assert!(matches!(got, Err(MvccError::Compacted { .. })), "{got:?}");
        return;
    }
    let got = got.unwrap();
    let want: Vec<KeyValue> = model.states[at as usize]
        .iter()
        .filter(|(x, _)| Model::in_range(x, k, &e))
        .map(|(_, kv)| kv.clone())
        .collect();
    assert_eq!(got.count, want.len() as i64, "count at {at}");
    assert_eq!(got.rev, model.rev());
    let n = if limit > 0 {
        (limit as usize).min(want.len())
    } else {
        want.len()
    };
    assert_eq!(got.kvs, want[..n].to_vec(), "kvs at {at}");
}

fn check_compact(store: &KvStore, model: &mut Model, rev: i64) {
    let got = store.compact(rev);
    if rev <= model.compact_rev {
        assert!(matches!(got, Err(MvccError::Compacted { .. })), "{got:?}");
    } else if rev > model.rev() {
        assert!(matches!(got, Err(MvccError::FutureRev { .. })), "{got:?}");
    } else {
        got.unwrap();
        model.compact_rev = rev;
    }
}

fn cfg() -> BackendConfig {
    BackendConfig {
        batch_interval: Duration::ZERO,
        batch_limit: 4,
    }
}

fn run(ops: Vec<Op>, path: &Path) {
    let mut store = KvStore::open(path, cfg()).unwrap();
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Txn(w) => {
                let changed = model.txn(&w);
                let rev = apply_txn(&store, &w);
                assert_eq!(rev, model.rev(), "changed={changed}");
            }
            Op::Compact(rev) => check_compact(&store, &mut model, rev),
            Op::Range {
                key,
                end,
                rev,
                limit,
            } => check_range(&store, &model, key, end, rev, limit),
            Op::Sync => store.sync().unwrap(),
            Op::Reopen => {
                let hash = store.hash_kv(0).unwrap();
                drop(store);
                store = KvStore::open(path, cfg()).unwrap();
                assert_eq!(store.hash_kv(0).unwrap(), hash);
            }
        }
        assert_eq!(store.rev(), model.rev());
        assert_eq!(store.compact_rev(), model.compact_rev);
    }
    // Finally every revision still readable matches the model.
    for rev in model.compact_rev.max(1)..=model.rev() {
        check_range(&store, &model, 0, End::Unbounded, rev, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        run(ops, &dir.path().join("db"));
    }
}
