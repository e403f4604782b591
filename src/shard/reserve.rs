//! Key reservations: how a write spanning cores (MSETNX) is all or nothing without locks.
//!
//! The coordinator reserves its keys core by core, in ascending core order: a core reserves a
//! set of keys only if none of them exists, atomically on its executor. While a key is
//! reserved, every operation on it waits (its answer is late, nothing else is). Once every
//! core has reserved, each commits: its reservations go and its sets are applied in the same
//! step, then the waiting operations run. If a key exists, the cores reserved so far release
//! instead, and nothing was written.
//!
//! So a client that sees one of the keys set and then reads another sees that one set too:
//! the second read either finds it committed or waits for the commit. Reserving in one global
//! order means two coordinators never wait on each other in a cycle. Operations that wait
//! never run in a core's serving loop for a peer (`spawn_mesh_tasks` runs them beside it),
//! since the commit that ends the wait arrives through that same loop.
//!
//! Not covered: a crash between two cores' commits leaves the first core's keys set (the log
//! of each core is durable on its own); the README says so.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corekv_schema::codec::{Condition, ErrorCode, Op, Reply, SetOp};

use super::{Answered, Core, Done, Work, now_ms};

impl Core {
    /// Whether work from a peer could wait for a reservation (then it must not run in the
    /// peer's serving loop).
    pub(super) fn may_wait_for_reservation(&self, work: &Work) -> bool {
        let reserved = self.reserved.borrow();
        if reserved.is_empty() {
            return false;
        }
        match work {
            Work::One(op, _) => op.key().is_some_and(|k| reserved.contains(k)),
            Work::Many(ops, _) => {
                ops.iter().any(|op| op.key().is_some_and(|k| reserved.contains(k)))
            }
            Work::Reserve(keys) => keys.iter().any(|k| reserved.contains(k)),
            _ => false,
        }
    }

    /// Waits until `key` is not reserved.
    pub(super) async fn wait_unreserved(&self, key: &[u8]) {
        while self.reserved.borrow().contains(key) {
            ReleaseWait { core: self, epoch: self.release_epoch.get() }.await;
        }
    }

    /// Reserves `keys` (all owned here) if none of them exists; waits first for any of them
    /// another coordinator holds. Whether they were reserved.
    pub async fn reserve(&self, keys: Vec<Bytes>) -> bool {
        loop {
            let held = keys.iter().find(|k| self.reserved.borrow().contains(&k[..])).cloned();
            match held {
                Some(k) => self.wait_unreserved(&k).await,
                None => break,
            }
        }
        let now = now_ms();
        let engine = self.engine.borrow();
        if keys.iter().any(|k| engine.version_of(k, now) != 0) {
            return false;
        }
        drop(engine);
        self.reserved.borrow_mut().extend(keys);
        true
    }

    /// Ends reservations without writing.
    pub fn release(&self, keys: &[Bytes]) {
        let mut reserved = self.reserved.borrow_mut();
        for k in keys {
            reserved.remove(&k[..]);
        }
        drop(reserved);
        self.wake_reservation_waiters();
    }

    /// Ends reservations by applying their sets, in one step; the replies and the last log
    /// record to wait for.
    pub async fn commit(&self, sets: Vec<SetOp>) -> (Vec<Reply>, Option<u64>) {
        {
            let mut reserved = self.reserved.borrow_mut();
            for set in &sets {
                reserved.remove(&set.key[..]);
            }
        }
        let now = now_ms();
        let mut replies = Vec::with_capacity(sets.len());
        let mut last = None;
        for mut set in sets {
            // Reserved keys were absent and nothing could write them since.
            set.condition = Condition::IfAbsent;
            // No await inside: an absence check never needs a value from disk.
            let (answered, seq) = self.apply(Op::Set(set), now).await;
            last = seq.or(last);
            replies.push(match answered {
                Answered::Reply(r) => r,
                Answered::Fetch(_) => Reply::error(ErrorCode::Internal, "a set fetched a value"),
            });
        }
        self.wake_reservation_waiters();
        (replies, last)
    }

    fn wake_reservation_waiters(&self) {
        self.release_epoch.set(self.release_epoch.get() + 1);
        for w in self.release_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Runs reservation work a peer sent (beside its serving loop when it may wait).
    pub(super) async fn reservation_work(&self, work: Work) -> (Done, Option<u64>) {
        match work {
            Work::Reserve(keys) => (Done::Reserved(self.reserve(keys).await), None),
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
        let core = self.clone();
        let run = glommio::spawn_local(async move { core.set_all_absent_here(sets).await });
        run.detach()
            .await
            .unwrap_or_else(|| Err(Reply::error(ErrorCode::Unavailable, "core is shutting down")))
    }

    async fn set_all_absent_here(&self, sets: Vec<SetOp>) -> Result<bool, Reply> {
        let mut parts: BTreeMap<u16, Vec<SetOp>> = BTreeMap::new();
        for set in sets.into_iter().rev() {
            let part = parts.entry(self.owner_of(&set.key)).or_default();
            if !part.iter().any(|s| s.key == set.key) {
                part.push(set);
            }
        }
        let wait = self.wal.as_ref().is_some_and(|w| w.acks_wait());
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

/// Ready once any reservation on the core ended after `epoch`.
struct ReleaseWait<'a> {
    core: &'a Core,
    epoch: u64,
}

impl Future for ReleaseWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.core.release_epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        self.core.release_waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}
