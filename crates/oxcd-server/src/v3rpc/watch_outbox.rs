//! The responses of one Watch stream waiting to be sent, with a watcher's
//! waiting events merged into one response.
//!
//! A client that reads more slowly than writes arrive makes responses
//! queue up. etcd then turns its watchers into victims and later catches
//! them up from history in one response of many revisions per watcher;
//! here, events for a watcher whose previous response has not left yet
//! may join that response instead (up to [`MERGE_EVENTS`] events and about
//! [`MERGE_BYTES`] bytes). The client gets the same events in the same
//! order in fewer, larger messages, which is what lets a slow reader
//! catch up, and no history has to be read again. The session merges
//! ([`Outbox::merge`]) only once its stream lags by as many responses as
//! etcd's stream channel holds; before that it pushes ([`Outbox::push`],
//! never merging) a response per revision, as etcd does.
//!
//! Only plain event responses are merged (not `prev_kv` or fragmented
//! ones), only into the last response queued for the same watcher, and
//! never across another response for that watcher (a progress
//! notification, a cancel) or a stream-wide one (a progress reply): the
//! order of everything a watcher is told stays the order it happened in.

use super::watch_wire::WatchOut;
use oxcd_mvcc::id_hash::IdMap;
use std::collections::VecDeque;

/// Most events one merged response carries (etcd's catch-up reads at most
/// 1 000 revisions per response).
pub const MERGE_EVENTS: usize = 1000;
/// A merged response stops taking events once their keys and values pass
/// this size (one event may exceed it on its own).
pub const MERGE_BYTES: usize = 1 << 20;

/// The queue of a stream's responses.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<WatchOut>,
    /// Responses ever popped: queue position = sequence number - popped.
    popped: u64,
    /// Per watcher, the sequence number and payload size of its last
    /// queued response, while events may still join it. (Watch ids are
    /// the client's choice; a client that picks colliding ones slows only
    /// its own stream.)
    open: IdMap<i64, (u64, usize)>,
}

impl Outbox {
    /// Queues `msg` as a response of its own (events may join it later).
    pub fn push(&mut self, msg: WatchOut) {
        self.queue_msg(msg, false);
    }

    /// Queues `msg`, merging it into its watcher's waiting response when
    /// it may.
    pub fn merge(&mut self, msg: WatchOut) {
        self.queue_msg(msg, true);
    }

    fn queue_msg(&mut self, msg: WatchOut, merge: bool) {
        let WatchOut::Events { head, events } = msg else {
            if let WatchOut::Message(m) = &msg {
                self.close(m.watch_id);
            }
            self.queue.push_back(msg);
            return;
        };
        let id = head.watch_id;
        if events.is_empty() {
            // A progress notification: later events go after it.
            self.close(id);
            self.queue.push_back(WatchOut::Events { head, events });
            return;
        }
        let size: usize = events.iter().map(|e| payload(e)).sum();
        if let Some(&(seq, bytes)) = self.open.get(&id).filter(|_| merge) {
            let at = seq
                .checked_sub(self.popped)
                .and_then(|i| usize::try_from(i).ok());
            if let Some(WatchOut::Events {
                head: target_head,
                events: target,
            }) = at.and_then(|i| self.queue.get_mut(i))
            {
                if target.len() + events.len() <= MERGE_EVENTS && bytes + size <= MERGE_BYTES {
                    let rev = head.header.as_ref().map_or(0, |h| h.revision);
                    if let Some(h) = target_head.header.as_mut() {
                        h.revision = h.revision.max(rev);
                    }
                    target.extend(events);
                    self.open.insert(id, (seq, bytes + size));
                    return;
                }
            }
        }
        let seq = self.popped + self.queue.len() as u64;
        self.open.insert(id, (seq, size));
        self.queue.push_back(WatchOut::Events { head, events });
    }

    /// The next response to send.
    pub fn pop(&mut self) -> Option<WatchOut> {
        let m = self.queue.pop_front()?;
        self.popped += 1;
        if let WatchOut::Events { head, .. } = &m {
            // Nothing can join a response that has left.
            if self
                .open
                .get(&head.watch_id)
                .is_some_and(|&(seq, _)| seq < self.popped)
            {
                self.open.remove(&head.watch_id);
            }
        }
        Some(m)
    }

    /// Responses waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Stops merging into watcher `id`'s waiting response; the stream-wide
    /// id (-1) stops it for every watcher.
    fn close(&mut self, id: i64) {
        if id < 0 {
            self.open.clear();
        } else {
            self.open.remove(&id);
        }
    }
}

/// The size an event adds to a response, near enough: its key and value.
fn payload(e: &oxcd_mvcc::WatchEvent) -> usize {
    e.kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::etcdserverpb::{ResponseHeader, WatchResponse};
    use oxcd_api::mvccpb::{Event, KeyValue};
    use oxcd_mvcc::WatchEvent;
    use std::sync::Arc;

    fn events(id: i64, revs: &[i64], value_len: usize) -> WatchOut {
        WatchOut::Events {
            head: WatchResponse {
                header: Some(ResponseHeader {
                    revision: revs.last().copied().unwrap_or(0),
                    ..Default::default()
                }),
                watch_id: id,
                ..Default::default()
            },
            events: revs
                .iter()
                .map(|&r| {
                    Arc::new(WatchEvent::new(Event {
                        kv: Some(KeyValue {
                            key: b"k".to_vec().into(),
                            value: vec![0; value_len].into(),
                            mod_revision: r,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }))
                })
                .collect(),
        }
    }

    fn message(id: i64) -> WatchOut {
        WatchOut::Message(WatchResponse {
            watch_id: id,
            ..Default::default()
        })
    }

    /// `(watch_id, header revision, event revisions)` of everything queued.
    fn drain(o: &mut Outbox) -> Vec<(i64, i64, Vec<i64>)> {
        std::iter::from_fn(|| o.pop())
            .map(|m| {
                let r = m.into_response();
                let rev = r.header.map_or(0, |h| h.revision);
                let revs = r
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                    .collect();
                (r.watch_id, rev, revs)
            })
            .collect()
    }

    #[test]
    fn waiting_events_of_a_watcher_merge_in_order() {
        let mut o = Outbox::default();
        o.push(events(1, &[5], 1));
        o.push(events(2, &[5], 1));
        o.push(events(1, &[6], 1));
        assert_eq!(o.len(), 3, "push never merges");
        o.merge(events(1, &[7], 1));
        o.merge(events(2, &[8], 1));
        assert_eq!(o.len(), 3);
        assert_eq!(
            drain(&mut o),
            [(1, 5, vec![5]), (2, 8, vec![5, 8]), (1, 7, vec![6, 7])]
        );
    }

    #[test]
    fn nothing_joins_a_response_that_left_or_jumps_another_message() {
        let mut o = Outbox::default();
        o.push(events(1, &[5], 1));
        assert_eq!(drain(&mut o), [(1, 5, vec![5])]);
        o.merge(events(1, &[6], 1));
        assert_eq!(o.len(), 1, "a new response once the last one left");

        // A progress notification of the watcher, a stream-wide reply, a
        // cancel: later events stay behind each.
        o.merge(events(1, &[], 1));
        o.merge(events(1, &[7], 1));
        o.merge(message(-1));
        o.merge(events(1, &[8], 1));
        o.merge(message(1));
        o.merge(events(1, &[9], 1));
        assert_eq!(
            drain(&mut o)
                .into_iter()
                .map(|(id, _, revs)| (id, revs))
                .collect::<Vec<_>>(),
            [
                (1, vec![6]),
                (1, vec![]),
                (1, vec![7]),
                (-1, vec![]),
                (1, vec![8]),
                (1, vec![]),
                (1, vec![9]),
            ]
        );
    }

    #[test]
    fn merged_responses_are_bounded() {
        let mut o = Outbox::default();
        for r in 0..(MERGE_EVENTS as i64 + 1) {
            o.merge(events(1, &[r], 1));
        }
        assert_eq!(o.len(), 2);
        let mut o = Outbox::default();
        o.merge(events(1, &[1], MERGE_BYTES - 10));
        o.merge(events(1, &[2], 100));
        assert_eq!(o.len(), 2, "past the byte bound");
        o.merge(events(1, &[3], 100));
        assert_eq!(o.len(), 2);
    }
}
