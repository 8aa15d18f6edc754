//! Property test: a backend whose rows are damaged (a revision key, a
//! `KeyValue`, a meta value, a lease, alarm or auth record) — as a bad disk
//! or a bad import from an etcd backend would leave it — opens, serves
//! reads, hashes, compacts and takes writes, or refuses with a typed error;
//! it never panics.
//!
//! The rows are those of a real store after random writes, copied into a
//! fresh file with some of them changed (the same way [`BackendImport`]
//! copies an etcd backend's buckets).

#[path = "../../oxcd-etcd-format/src/damage.rs"]
#[allow(dead_code)]
mod damage;

use damage::{damaged, damages, edge_value, Damage};
use oxcd_api::etcdserverpb::AlarmMember;
use oxcd_api::mvccpb::KeyValue;
use oxcd_mvcc::import::BackendImport;
use oxcd_mvcc::{AuthTable, BackendConfig, KvStore, MvccError, RangeOptions};
use proptest::prelude::*;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::Path;

type Rows = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

const KEYS: &[&[u8]] = &[b"a", b"b", b"c"];

#[derive(Debug, Clone)]
enum Write {
    Put(usize, i64),
    Delete(usize),
    Compact,
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0..KEYS.len(), 0i64..3).prop_map(|(k, l)| Write::Put(k, l)),
            1 => (0..KEYS.len()).prop_map(Write::Delete),
            1 => Just(Write::Compact),
        ],
        0..12,
    )
}

/// A store after `writes`, plus a lease, an alarm and auth records.
fn build(path: &Path, writes: &[Write]) {
    let s = KvStore::open(path, BackendConfig::default()).unwrap();
    let mut ci = 1;
    for w in writes {
        ci += 1;
        let mut t = s.write();
        match w {
            Write::Put(k, lease) => t.put(KEYS[*k], b"v", *lease).unwrap(),
            Write::Delete(k) => {
                t.delete_range(KEYS[*k], b"").unwrap();
            }
            Write::Compact => {
                t.end(Some(ci)).unwrap();
                let rev = s.rev();
                let _ = s.compact(rev - 1);
                continue;
            }
        }
        t.end(Some(ci)).unwrap();
    }
    let mut t = s.write();
    t.put_lease(7, 60, 30);
    t.put_alarm(AlarmMember {
        member_id: 1,
        alarm: 1,
    });
    t.put_auth(AuthTable::Auth, b"authRevision", &3u64.to_be_bytes());
    t.put_auth(AuthTable::Users, b"u", b"\x0a\x01u");
    t.end(Some(ci + 1)).unwrap();
    s.sync().unwrap();
}

/// Every row of every table of the redb file at `path`.
fn rows(path: &Path) -> Rows {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let mut out = Rows::new();
    for t in tx.list_tables().unwrap() {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(t.name());
        let table = tx.open_table(def).unwrap();
        let rows = table
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        out.push((t.name().to_string(), rows));
    }
    out
}

/// How one row is changed.
#[derive(Debug, Clone)]
enum RowDamage {
    Key(Vec<Damage>),
    Value(Vec<Damage>),
    /// A `KeyValue` field set to an edge value, still a valid message.
    Field(usize, i64),
    /// The row again under a revision key made of edge values.
    Copy(u64, u64, bool),
    Drop,
}

fn row_damage() -> impl Strategy<Value = RowDamage> {
    prop_oneof![
        damages(2).prop_map(RowDamage::Key),
        damages(2).prop_map(RowDamage::Value),
        (0usize..4, edge_value()).prop_map(|(f, v)| RowDamage::Field(f, v as i64)),
        (edge_value(), edge_value(), any::<bool>()).prop_map(|(m, s, t)| RowDamage::Copy(m, s, t)),
        Just(RowDamage::Drop),
    ]
}

/// Applies `d` to row `at` (wrapping) of the `key` table, or of table
/// `table` (wrapping) in the order of the file.
fn damage_rows(rows: &mut Rows, table: Option<usize>, at: usize, d: &RowDamage) {
    let i = match table {
        None => rows.iter().position(|(name, _)| name == "key"),
        Some(t) => (!rows.is_empty()).then(|| t % rows.len()),
    };
    let Some(table) = i else {
        return;
    };
    let (_, t) = &mut rows[table];
    if t.is_empty() {
        return;
    }
    let i = at % t.len();
    match d {
        RowDamage::Key(ds) => t[i].0 = damaged(std::mem::take(&mut t[i].0), ds),
        RowDamage::Value(ds) => t[i].1 = damaged(std::mem::take(&mut t[i].1), ds),
        RowDamage::Field(f, v) => {
            if let Ok(mut kv) = KeyValue::decode(t[i].1.as_slice()) {
                match f {
                    0 => kv.create_revision = *v,
                    1 => kv.mod_revision = *v,
                    2 => kv.version = *v,
                    _ => kv.lease = *v,
                }
                t[i].1 = kv.encode_to_vec();
            }
        }
        RowDamage::Copy(main, sub, tomb) => {
            let mut k = main.to_be_bytes().to_vec();
            k.push(b'_');
            k.extend_from_slice(&sub.to_be_bytes());
            if *tomb {
                k.push(b't');
            }
            let v = t[i].1.clone();
            t.push((k, v));
        }
        RowDamage::Drop => {
            t.remove(i);
        }
    }
}

/// The same rows in a new file (keys may now repeat: the last one wins,
/// as a bucket copy would have it).
fn import(path: &Path, rows: &Rows) {
    let mut imp = BackendImport::create(path).unwrap();
    for (table, rows) in rows {
        for (k, v) in rows {
            imp.put(table, k, v).unwrap();
        }
    }
    imp.finish().unwrap();
}

fn typed(r: Result<impl Sized, MvccError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            matches!(
                e,
                MvccError::Corrupt(_) | MvccError::Compacted { .. } | MvccError::FutureRev { .. }
            ),
            "{e}"
        );
    }
    Ok(())
}

/// Everything a server does with a store at start and at work.
fn exercise(path: &Path) -> Result<(), TestCaseError> {
    let s = match KvStore::open(path, BackendConfig::default()) {
        Ok(s) => s,
        Err(e) => return typed(Err::<(), _>(e)),
    };
    let (rev, compacted) = (s.rev(), s.compact_rev());
    let _ = s.consistent_index();
    typed(s.leases())?;
    typed(s.alarms())?;
    typed(s.auth_records())?;
    for at in [
        0,
        compacted,
        compacted.saturating_add(1),
        rev.saturating_sub(1),
        rev,
        rev.saturating_add(1),
    ] {
        let r = s.read().unwrap();
        for (limit, count_only) in [(0, false), (1, false), (0, true)] {
            let opts = RangeOptions {
                limit,
                rev: at,
                count_only,
            };
            typed(r.range(b"\0", b"\0", opts))?;
            typed(r.range(b"a", b"", opts))?;
        }
        typed(r.events(at, rev.saturating_add(1), 0))?;
        typed(r.events(at, rev.saturating_add(1), 1))?;
        typed(s.hash_kv(at))?;
    }
    typed(s.hash())?;
    let mut t = s.write();
    let wrote = t
        .put(b"a", b"w", 0)
        .and_then(|()| t.delete_range(b"b", b""))
        .map(|_| ());
    typed(wrote)?;
    typed(t.end(Some(s.consistent_index().saturating_add(1))))?;
    typed(s.compact(rev))?;
    typed(s.sync())?;
    drop(s);
    if let Err(e) = KvStore::open(path, BackendConfig::default()) {
        typed(Err::<(), _>(e))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn damaged_rows_are_served_or_refused(
        writes in writes(),
        changes in prop::collection::vec((prop::option::of(any::<usize>()), any::<usize>(), row_damage()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("built");
        build(&built, &writes);
        let mut all = rows(&built);
        for (table, at, d) in &changes {
            damage_rows(&mut all, *table, *at, d);
        }
        let db = dir.path().join("db");
        import(&db, &all);
        exercise(&db)?;
    }
}

/// The rows of a store after `writes`, changed by `edit`, opened.
fn reopen_with(
    writes: &[Write],
    edit: impl FnOnce(&mut Vec<(Vec<u8>, Vec<u8>)>),
) -> (tempfile::TempDir, Result<KvStore, MvccError>) {
    let dir = tempfile::tempdir().unwrap();
    let built = dir.path().join("built");
    build(&built, writes);
    let mut all = rows(&built);
    let key = all.iter_mut().find(|(n, _)| n == "key").unwrap();
    edit(&mut key.1);
    let db = dir.path().join("db");
    import(&db, &all);
    let opened = KvStore::open(&db, BackendConfig::default());
    (dir, opened)
}

fn corrupt(r: Result<KvStore, MvccError>) -> String {
    match r {
        Err(MvccError::Corrupt(what)) => what,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    }
}

/// Minimized by the property: a revision key with the top bit set (a
/// negative revision) sorts after every other one; the index was handed
/// a revision older than the key's last (a debug assertion; in release,
/// a corrupt index).
#[test]
fn a_negative_revision_is_refused() {
    let (_d, r) = reopen_with(&[Write::Put(0, 0)], |rows| {
        let v = rows[0].1.clone();
        rows.push(([&[0xff; 8][..], b"_", &[0; 8]].concat(), v));
    });
    assert!(corrupt(r).contains("out of range"));
}

/// Minimized by the property: a revision at i64::MAX made `rev + 1`
/// overflow in `hash_kv` (and would in the next write).
#[test]
fn a_revision_without_room_after_it_is_refused() {
    let (_d, r) = reopen_with(&[Write::Put(0, 0)], |rows| {
        let v = rows[0].1.clone();
        let mut k = i64::MAX.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&u64::from(u32::MAX).to_be_bytes());
        rows.push((k, v));
    });
    assert!(corrupt(r).contains("out of range"));
}

/// One revision stored both as a put and as a tombstone.
#[test]
fn a_revision_stored_twice_is_refused() {
    let (_d, r) = reopen_with(&[Write::Put(0, 0)], |rows| {
        let (mut k, v) = rows[0].clone();
        k.push(b't');
        rows.push((k, v));
    });
    assert!(corrupt(r).contains("stored after"));
}

/// A put whose stored version is below 1: versions are computed from it
/// by subtraction.
#[test]
fn a_put_without_a_version_is_refused() {
    let (_d, r) = reopen_with(&[Write::Put(0, 0)], |rows| {
        let mut kv = KeyValue::decode(rows[0].1.as_slice()).unwrap();
        kv.version = i64::MIN;
        rows[0].1 = kv.encode_to_vec();
    });
    assert!(corrupt(r).contains("version"));
}

/// Minimized by the property: a stored version of i64::MAX overflowed at
/// the key's next put (restored or new). It stays at the limit.
#[test]
fn a_version_at_the_limit_stays_there() {
    let writes = [Write::Put(0, 0), Write::Put(0, 0)];
    let (_d, r) = reopen_with(&writes, |rows| {
        let mut kv = KeyValue::decode(rows[0].1.as_slice()).unwrap();
        kv.version = i64::MAX;
        rows[0].1 = kv.encode_to_vec();
    });
    let s = r.unwrap();
    let mut t = s.write();
    t.put(b"a", b"x", 0).unwrap();
    t.end(Some(100)).unwrap();
    let got = s
        .read()
        .unwrap()
        .range(b"a", b"", RangeOptions::default())
        .unwrap();
    assert_eq!(got.kvs[0].version, i64::MAX);
}
