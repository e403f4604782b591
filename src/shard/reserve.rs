//! Key reservations: how a write spanning cores (MSETNX) is all or nothing without locks.
//!
//! The coordinator reserves its keys core by core, in ascending core order, and on each core
//! in key order: a core reserves its keys, then checks that none of them exists. While a key
//! is reserved, every operation on it waits in that key's queue (its answer is late, nothing
//! else is). Once every core has reserved, each commits: its sets are applied, then its
//! reservations end and the queue moves on. If a key exists, or a core's log has failed, the
//! cores reserved so far release instead, and nothing was written.
//!
//! So a client that sees one of the keys set and then reads another sees that one set too:
//! the second read either finds it committed or waits for the commit. Reserving in one global
//! order means two coordinators never wait on each other in a cycle.
//!
//! A key's queue is first come, first served, and a key stays held while anything is queued
//! for it: an operation that arrives after the reservation ended still lines up behind the
//! ones that waited, so one connection's operations on a key apply in the order it sent them.
//! Work from a peer that may have to queue runs in that peer's lane, a task beside its serving
//! loop (`spawn_mesh_tasks`), since the commit that ends the wait comes through the same loop;
//! while the lane holds anything, the peer's later keyed work goes there too, in order, so it
//! cannot overtake work that takes its ticket only when the lane reaches it.
//!
//! Not covered:
//! - a crash between two cores' commits leaves the first core's keys set (the log of each
//!   core is durable on its own); the README says so;
//! - a batch part that is already running in a serving loop and waits for a value from disk
//!   (a compare by value) can meet a reservation taken meanwhile on one of its later keys,
//!   and then waits inside the loop.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corekv_schema::codec::{Condition, ErrorCode, Op, Reply, SetOp};

use super::{Answered, Core, Done, Work};

impl Core {
    /// Whether work from a peer could have to queue (then it must not run in the peer's
    /// serving loop).
    pub(super) fn may_wait_for_reservation(&self, work: &Work) -> bool {
        let held = self.held.borrow();
        if held.is_empty() {
            return false;
        }
        let key_held = |op: &Op| op.key().is_some_and(|k| held.contains_key(k));
        match work {
            Work::One(op, _) => key_held(op),
            Work::Many(ops, _) => ops.iter().any(key_held),
            Work::Reserve(keys) => keys.iter().any(|k| held.contains_key(k)),
            _ => false,
        }
    }

    /// Waits for this operation's turn on `key`, if the key is held at all.
    pub(super) async fn wait_turn(&self, key: &Bytes) {
        let ticket = {
            let mut held = self.held.borrow_mut();
            let Some(h) = held.get_mut(key) else { return };
            let ticket = self.next_ticket.get();
            self.next_ticket.set(ticket + 1);
            h.queue.push_back((ticket, None));
            ticket
        };
        Turn { core: self, key: key.clone(), ticket, done: false }.await;
    }

    /// Reserves `keys` (all owned here) if none of them exists, waiting its turn on each.
    /// Whether they were reserved; an error when this core's log has failed (its commit
    /// could not be written, so nothing may be reserved).
    pub async fn reserve(&self, mut keys: Vec<Bytes>) -> Result<bool, Reply> {
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            self.held.borrow_mut().entry(key.clone()).or_default();
            self.wait_turn(key).await;
            // Our turn: nothing runs on this key until the reservation ends.
            self.held.borrow_mut().entry(key.clone()).or_default().reserved = true;
        }
        let failed = self.store.wal.as_ref().and_then(|w| w.failure());
        let now = crate::time::now_ms();
        let exists = {
            let engine = self.store.engine.borrow();
            keys.iter().any(|k| engine.version_of(k, now) != 0)
        };
        if failed.is_some() || exists {
            self.release(&keys);
        }
        match failed {
            Some(e) => Err(Reply::error(ErrorCode::Unavailable, e.to_string())),
            None => Ok(!exists),
        }
    }

    /// Ends reservations; the next operation queued on each key goes on.
    pub fn release(&self, keys: &[Bytes]) {
        let mut held = self.held.borrow_mut();
        for k in keys {
            let Some(h) = held.get_mut(k) else { continue };
            h.reserved = false;
            match h.queue.front_mut() {
                Some((_, waker)) => {
                    if let Some(w) = waker.take() {
                        w.wake();
                    }
                }
                None => {
                    held.remove(k);
                }
            }
        }
    }

    /// Ends reservations by applying their sets, then releasing the keys; the replies and
    /// the last log record to wait for.
    pub async fn commit(&self, sets: Vec<SetOp>) -> (Vec<Reply>, Option<u64>) {
        let now = crate::time::now_ms();
        let keys: Vec<Bytes> = sets.iter().map(|s| s.key.clone()).collect();
        let mut replies = Vec::with_capacity(sets.len());
        let mut last = None;
        for mut set in sets {
            // Reserved keys were absent and nothing could write them since.
            set.condition = Condition::IfAbsent;
            // Not `apply`: that would queue behind the operations waiting for this commit.
            let (answered, seq) = self.apply_unqueued(Op::Set(set), now).await;
            last = seq.or(last);
            replies.push(match answered {
                Answered::Reply(r) => r,
                Answered::Fetch(_) => Reply::error(ErrorCode::Internal, "a set fetched a value"),
            });
        }
        self.release(&keys);
        (replies, last)
    }

    /// Runs reservation work a peer sent (in the peer's lane when it may wait).
    pub(super) async fn reservation_work(&self, work: Work) -> (Done, Option<u64>) {
        match work {
            Work::Reserve(keys) => match self.reserve(keys).await {
                Ok(reserved) => (Done::Reserved(reserved), None),
                Err(reply) => (Done::One(reply), None),
            },
            Work::Release(keys) => {
                self.release(&keys);
                (Done::Reserved(false), None)
            }
            Work::Commit(sets, wait) => {
                let (replies, seq) = self.commit(sets).await;
                (Done::Many(replies), seq.filter(|_| wait))
            }
            other => (Done::Admin(Err(format!("{} is not reservation work", other.kind()))), None),
        }
    }

    /// Reserve, release or commit on core `target` (here, or forwarded).
    async fn reservation_on(&self, target: u16, work: Work) -> Done {
        if target == self.index {
            let (done, seq) = self.reservation_work(work).await;
            return match seq {
                Some(seq) => match self.durable(seq).await {
                    Ok(()) => done,
                    Err(failed) => Done::One(failed),
                },
                None => done,
            };
        }
        let token = self.forward(target, work).await;
        self.answer(token).await
    }

    /// MSETNX: sets every key if none of them exists, else none. `Ok(false)` when one
    /// existed. Runs to the end in its own task, so a dropped caller cannot leave keys
    /// reserved. A key given twice takes its last value, as in Redis.
    pub async fn set_all_absent(self: &Rc<Self>, sets: Vec<SetOp>) -> Result<bool, Reply> {
        if self.cluster.is_some() {
            return Err(Reply::error(
                ErrorCode::BadRequest,
                "MSETNX spans partitions, which cluster mode cannot commit atomically yet",
            ));
        }
        let core = self.clone();
        let run = glommio::spawn_local(async move { core.set_all_absent_here(sets).await });
        run.detach()
            .await
            .unwrap_or_else(|| Err(Reply::error(ErrorCode::Unavailable, "core is shutting down")))
    }

    async fn set_all_absent_here(&self, sets: Vec<SetOp>) -> Result<bool, Reply> {
        let mut parts: BTreeMap<u16, Vec<SetOp>> = BTreeMap::new();
        let mut seen = HashSet::with_capacity(sets.len());
        // Last value wins: walk backwards and keep each key's first sighting.
        for set in sets.into_iter().rev() {
            if seen.insert(set.key.clone()) {
                parts.entry(self.owner_of(&set.key)).or_default().push(set);
            }
        }
        let wait = self.acks_wait();
        let keys = |sets: &[SetOp]| sets.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
        // Ascending core order (the map's): see the module doc.
        let mut reserved: Vec<u16> = Vec::new();
        let mut refused = None;
        for (&target, sets) in &parts {
            match self.reservation_on(target, Work::Reserve(keys(sets))).await {
                Done::Reserved(true) => reserved.push(target),
                Done::Reserved(false) => {
                    refused = Some(Ok(false));
                    break;
                }
                Done::One(reply @ Reply::Error(_)) => {
                    refused = Some(Err(reply));
                    break;
                }
                other => {
                    refused = Some(Err(super::unexpected(other)));
                    break;
                }
            }
        }
        if let Some(answer) = refused {
            for target in reserved {
                self.reservation_on(target, Work::Release(keys(&parts[&target]))).await;
            }
            return answer;
        }
        // Every core commits at once; the answer waits for all of them.
        let mut tokens = Vec::new();
        let mut local = None;
        for (target, sets) in parts {
            if target == self.index {
                local = Some(sets);
            } else {
                tokens.push(self.forward(target, Work::Commit(sets, wait)).await);
            }
        }
        let mut results = Vec::new();
        if let Some(sets) = local {
            results.push(self.reservation_on(self.index, Work::Commit(sets, wait)).await);
        }
        for token in tokens {
            results.push(self.answer(token).await);
        }
        let mut failed = None;
        for done in results {
            match done {
                Done::Many(replies) => {
                    for r in replies {
                        match r {
                            Reply::Written { .. } => {}
                            Reply::Error(_) => failed = failed.or(Some(r)),
                            other => {
                                let message = format!("a reserved key answered {}", other.name());
                                failed = failed.or(Some(Reply::error(ErrorCode::Internal, message)))
                            }
                        }
                    }
                }
                Done::One(reply) => failed = failed.or(Some(reply)),
                other => failed = failed.or(Some(super::unexpected(other))),
            }
        }
        failed.map_or(Ok(true), Err)
    }
}

/// One operation's place in a key's queue: ready when it is first and the key is not
/// reserved. Leaving the queue (done, or dropped while waiting) lets the next one go.
struct Turn<'a> {
    core: &'a Core,
    key: Bytes,
    ticket: u64,
    done: bool,
}

impl Future for Turn<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut held = self.core.held.borrow_mut();
        let Some(h) = held.get_mut(&self.key) else {
            debug_assert!(false, "a queued key is held");
            return Poll::Ready(());
        };
        if !h.reserved && h.queue.front().is_some_and(|(t, _)| *t == self.ticket) {
            drop(held);
            self.done = true;
            self.core.leave_queue(&self.key, self.ticket);
            return Poll::Ready(());
        }
        if let Some(slot) = h.queue.iter_mut().find(|(t, _)| *t == self.ticket) {
            slot.1 = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.core.leave_queue(&self.key, self.ticket);
        }
    }
}

impl Core {
    /// Takes `ticket` out of `key`'s queue and wakes whoever is first now; forgets the key
    /// once nothing holds it.
    fn leave_queue(&self, key: &Bytes, ticket: u64) {
        let mut held = self.held.borrow_mut();
        let Some(h) = held.get_mut(key) else { return };
        h.queue.retain(|(t, _)| *t != ticket);
        if h.reserved {
            return;
        }
        match h.queue.front_mut() {
            // It goes once this task yields: after the operation that just got its turn.
            Some((_, waker)) => {
                if let Some(w) = waker.take() {
                    w.wake();
                }
            }
            None => {
                held.remove(key);
            }
        }
    }
}
