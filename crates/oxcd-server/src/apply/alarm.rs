//! Alarms: the replicated set of raised alarms (etcd's
//! `etcdserver/api/v3alarm`) and what the applier does with an
//! `AlarmRequest` (`applierV3backend.Alarm`).
//!
//! The set lives in the backend's `alarm` table, changed only by applied
//! raft entries, so every member holds the same alarms and they survive a
//! restart. Services read the in-memory copy: Status lists them, `/health`
//! fails while one is raised, and the applier refuses writes under
//! NOSPACE and CORRUPT (see [`Gate`]).

use oxcd_api::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
};
use oxcd_mvcc::{KvStore, MvccError, WriteTxn};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The raised alarms; a cheap `Clone` handle shared by the applier (the
/// only writer) and the services.
#[derive(Clone, Default)]
pub struct Alarms {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `(alarm type, member ID)`, the order Status lists them in.
    set: RwLock<BTreeSet<(i32, u64)>>,
    /// Whether a NOSPACE alarm is raised (read on every write).
    nospace: AtomicBool,
    /// Whether a CORRUPT alarm is raised.
    corrupt: AtomicBool,
}

/// What the raised alarms let through the applier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No alarm that limits writes.
    Open,
    /// NOSPACE: no Put, Txn with a put, or LeaseGrant (`applierV3Capped`).
    Capped,
    /// CORRUPT: no write at all (`applierV3Corrupt`).
    Corrupt,
}

impl Alarms {
    /// Loads the alarms stored in `store`.
    ///
    /// # Errors
    /// Backend errors, or an alarm record that does not decode.
    pub fn load(store: &KvStore) -> Result<Alarms, MvccError> {
        let a = Alarms::default();
        a.reload(store)?;
        Ok(a)
    }

    /// Replaces the set with what `store` holds (after a raft snapshot
    /// replaced the backend).
    ///
    /// # Errors
    /// As [`Alarms::load`].
    pub fn reload(&self, store: &KvStore) -> Result<(), MvccError> {
        let stored = store.alarms()?;
        let mut set = self.write();
        set.clear();
        for m in stored {
            set.insert((m.alarm, m.member_id));
        }
        self.publish(&set);
        Ok(())
    }

    /// The alarms of type `at`, or every alarm for `NONE`.
    pub fn get(&self, at: AlarmType) -> Vec<AlarmMember> {
        self.read()
            .iter()
            .filter(|(t, _)| at == AlarmType::None || *t == at as i32)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether any alarm other than those of the `excluded` types is raised
    /// (`/health?exclude=NOSPACE`).
    pub fn any_except(&self, excluded: &[i32]) -> bool {
        self.read().iter().any(|(t, _)| !excluded.contains(t))
    }

    /// Whether a NOSPACE alarm is raised.
    pub fn nospace(&self) -> bool {
        self.inner.nospace.load(Ordering::Acquire)
    }

    /// What the applier lets through now.
    pub fn gate(&self) -> Gate {
        if self.inner.corrupt.load(Ordering::Acquire) {
            Gate::Corrupt
        } else if self.nospace() {
            Gate::Capped
        } else {
            Gate::Open
        }
    }

    /// The alarms as Status reports them: protobuf text with etcd's
    /// trailing space, `memberID:1 alarm:NOSPACE `.
    pub fn status_errors(&self) -> Vec<String> {
        self.get(AlarmType::None)
            .into_iter()
            .map(|m| format!("memberID:{} alarm:{} ", m.member_id, alarm_name(m.alarm)))
            .collect()
    }

    /// Applies `r` inside `t` (etcd's `applierV3backend.Alarm`): GET lists,
    /// ACTIVATE answers the alarm (stored if new), DEACTIVATE answers the
    /// cleared alarm or nothing if it was not raised. Responses carry no
    /// header, as etcd's. The in-memory set changes once `t` has committed
    /// (see [`Alarms::commit`]).
    pub(crate) fn apply(&self, t: &mut WriteTxn, r: &AlarmRequest) -> (AlarmResponse, Change) {
        let mut resp = AlarmResponse::default();
        let m = AlarmMember {
            member_id: r.member_id,
            alarm: r.alarm,
        };
        let raised = self.read().contains(&(m.alarm, m.member_id));
        let change = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => {
                resp.alarms = self.get(AlarmType::try_from(r.alarm).unwrap_or(AlarmType::None));
                Change::None
            }
            Ok(AlarmAction::Activate) => {
                resp.alarms.push(m);
                if raised {
                    Change::None
                } else {
                    t.put_alarm(m);
                    Change::Raise(m)
                }
            }
            Ok(AlarmAction::Deactivate) => {
                if raised {
                    resp.alarms.push(m);
                    t.delete_alarm(m);
                    Change::Clear(m)
                } else {
                    Change::None
                }
            }
            Err(_) => Change::None,
        };
        (resp, change)
    }

    /// Makes a committed [`Change`] visible, logging as etcd does when the
    /// first alarm of a type is raised or the last one cleared.
    pub(crate) fn commit(&self, change: Change) {
        let mut set = self.write();
        match change {
            Change::None => return,
            Change::Raise(m) => {
                let first = !set.iter().any(|(t, _)| *t == m.alarm);
                set.insert((m.alarm, m.member_id));
                if first {
                    tracing::warn!(
                        alarm = alarm_name(m.alarm),
                        from = %format!("{:x}", m.member_id),
                        "alarm raised"
                    );
                }
            }
            Change::Clear(m) => {
                set.remove(&(m.alarm, m.member_id));
                if !set.iter().any(|(t, _)| *t == m.alarm) {
                    tracing::warn!(
                        alarm = alarm_name(m.alarm),
                        from = %format!("{:x}", m.member_id),
                        "alarm disarmed"
                    );
                }
            }
        }
        self.publish(&set);
    }

    fn publish(&self, set: &BTreeSet<(i32, u64)>) {
        let has = |at: AlarmType| set.iter().any(|(t, _)| *t == at as i32);
        self.inner
            .nospace
            .store(has(AlarmType::Nospace), Ordering::Release);
        self.inner
            .corrupt
            .store(has(AlarmType::Corrupt), Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<(i32, u64)>> {
        self.inner
            .set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<(i32, u64)>> {
        self.inner
            .set
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What applying an `AlarmRequest` changed, made visible after commit.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    None,
    Raise(AlarmMember),
    Clear(AlarmMember),
}

/// etcd's enum name of an alarm type (`NOSPACE`), or the number.
pub fn alarm_name(alarm: i32) -> String {
    match AlarmType::try_from(alarm) {
        Ok(t) => t.as_str_name().to_string(),
        Err(_) => alarm.to_string(),
    }
}

/// The request that raises NOSPACE for `member_id`.
pub fn nospace_request(member_id: u64) -> AlarmRequest {
    AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id,
        alarm: AlarmType::Nospace as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, KvStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = KvStore::open(&dir.path().join("db"), Default::default()).unwrap();
        (dir, s)
    }

    fn run(a: &Alarms, s: &KvStore, r: AlarmRequest) -> AlarmResponse {
        let mut t = s.write();
        let (resp, change) = a.apply(&mut t, &r);
        t.end(None).unwrap();
        a.commit(change);
        resp
    }

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn activate_get_deactivate_like_etcd() {
        let (_d, s) = store();
        let a = Alarms::load(&s).unwrap();
        assert_eq!(a.gate(), Gate::Open);
        let r = run(&a, &s, req(AlarmAction::Activate, 5, AlarmType::Nospace));
        assert_eq!(r.alarms.len(), 1);
        // Raising it again answers the alarm and changes nothing.
        let r = run(&a, &s, req(AlarmAction::Activate, 5, AlarmType::Nospace));
        assert_eq!(r.alarms.len(), 1);
        assert_eq!(a.gate(), Gate::Capped);
        assert!(a.any_except(&[]));
        assert!(!a.any_except(&[AlarmType::Nospace as i32]));
        assert_eq!(a.status_errors(), ["memberID:5 alarm:NOSPACE "]);
        run(&a, &s, req(AlarmAction::Activate, 6, AlarmType::Corrupt));
        assert_eq!(a.gate(), Gate::Corrupt);
        let r = run(&a, &s, req(AlarmAction::Get, 0, AlarmType::None));
        assert_eq!(r.alarms.len(), 2);
        let r = run(&a, &s, req(AlarmAction::Get, 0, AlarmType::Corrupt));
        assert_eq!(
            r.alarms,
            [AlarmMember {
                member_id: 6,
                alarm: 2
            }]
        );
        // Clearing one that is not raised answers nothing.
        let r = run(&a, &s, req(AlarmAction::Deactivate, 9, AlarmType::Corrupt));
        assert!(r.alarms.is_empty());
        run(&a, &s, req(AlarmAction::Deactivate, 6, AlarmType::Corrupt));
        assert_eq!(a.gate(), Gate::Capped);
        // What is stored is what a restart loads.
        assert_eq!(Alarms::load(&s).unwrap().get(AlarmType::None).len(), 1);
        run(&a, &s, req(AlarmAction::Deactivate, 5, AlarmType::Nospace));
        assert_eq!(a.gate(), Gate::Open);
        assert!(!a.any_except(&[]));
        assert!(Alarms::load(&s).unwrap().get(AlarmType::None).is_empty());
    }
}
