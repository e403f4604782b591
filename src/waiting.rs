//! Waiting for an answer that another task files: a registry of waiters by id, and a wake-up
//! flag for a task that sleeps until someone has work for it.
//!
//! A [`Waits`] id is a slab slot plus a generation, so an answer that comes after its waiter
//! gave up (timed out, or dropped its future) never reaches a later waiter of the same slot.
//! The answer type is the caller's: a reply, or a typed go-ahead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future;
use slab::Slab;

/// Answers that tasks wait for by id: an id is a slab slot plus a generation, so an answer
/// that comes after its waiter gave up never reaches a later waiter of the same slot.
pub struct Waits<T> {
    slots: RefCell<Slab<(u32, WaitState<T>)>>,
    generation: Cell<u32>,
}

enum WaitState<T> {
    Waiting(Option<Waker>),
    Done(T),
}

impl<T> Default for Waits<T> {
    fn default() -> Self {
        Waits { slots: RefCell::new(Slab::new()), generation: Cell::new(0) }
    }
}

impl<T> Waits<T> {
    pub fn open(&self) -> u64 {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let slot = self.slots.borrow_mut().insert((generation, WaitState::Waiting(None)));
        (u64::from(generation) << 32) | slot as u64
    }

    fn find(&self, id: u64) -> Option<usize> {
        let slot = (id & 0xFFFF_FFFF) as usize;
        let generation = (id >> 32) as u32;
        let slots = self.slots.borrow();
        slots.get(slot).filter(|(g, _)| *g == generation).map(|_| slot)
    }

    /// Files the answer for `id`; one nobody waits for any more is dropped.
    pub fn complete(&self, id: u64, answer: T) {
        let Some(slot) = self.find(id) else { return };
        let mut slots = self.slots.borrow_mut();
        let state = &mut slots[slot].1;
        if let WaitState::Waiting(waker) = std::mem::replace(state, WaitState::Done(answer))
            && let Some(w) = waker
        {
            w.wake();
        }
    }

    /// The answer for `id` if it has come (and forgets the id then), without waiting.
    pub fn try_take(&self, id: u64) -> Option<T> {
        let slot = self.find(id)?;
        let mut slots = self.slots.borrow_mut();
        if !matches!(slots[slot].1, WaitState::Done(_)) {
            return None;
        }
        match slots.remove(slot).1 {
            WaitState::Done(answer) => Some(answer),
            WaitState::Waiting(_) => unreachable!("checked just above"),
        }
    }

    pub fn cancel(&self, id: u64) {
        if let Some(slot) = self.find(id) {
            self.slots.borrow_mut().remove(slot);
        }
    }

    /// The answer for `id`, however long it takes (`None`: the id is unknown or was
    /// cancelled). The id is forgotten when the future is dropped.
    pub fn answer(&self, id: u64) -> impl Future<Output = Option<T>> + '_ {
        WaitFuture { waits: self, id }
    }

    /// The answer for `id`, or `None` after `timeout`. The id is forgotten however this ends,
    /// also when the caller drops the future (a wait raced against something else).
    pub async fn wait(&self, id: u64, timeout: Duration) -> Option<T> {
        let answer = WaitFuture { waits: self, id };
        let expired = async {
            glommio::timer::sleep(timeout).await;
            None
        };
        future::or(async { Some(answer.await) }, expired).await.flatten()
    }
}

struct WaitFuture<'a, T> {
    waits: &'a Waits<T>,
    id: u64,
}

impl<T> Drop for WaitFuture<'_, T> {
    fn drop(&mut self) {
        // Answered: already removed by `poll`. Otherwise nobody will take the answer.
        self.waits.cancel(self.id);
    }
}

impl<T> Future for WaitFuture<'_, T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(slot) = self.waits.find(self.id) else { return Poll::Ready(None) };
        let mut slots = self.waits.slots.borrow_mut();
        match &mut slots[slot].1 {
            WaitState::Done(_) => match slots.remove(slot).1 {
                WaitState::Done(answer) => Poll::Ready(Some(answer)),
                WaitState::Waiting(_) => unreachable!("checked just above"),
            },
            WaitState::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A flag plus a waker: one task sleeps on it, anyone with work for it sets it.
#[derive(Default)]
pub struct Wake {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Wake {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_answer_never_reaches_a_later_waiter_of_the_same_slot() {
        let waits: Waits<&str> = Waits::default();
        let first = waits.open();
        waits.cancel(first);
        let second = waits.open();
        assert_ne!(first, second, "a new generation");
        waits.complete(first, "late");
        assert_eq!(waits.try_take(second), None, "the late answer went nowhere");
        waits.complete(second, "mine");
        assert_eq!(waits.try_take(second), Some("mine"));
        assert_eq!(waits.try_take(second), None, "taken once");
    }

    #[test]
    fn an_answer_nobody_takes_is_gone_once_its_id_is_cancelled() {
        let waits: Waits<u32> = Waits::default();
        let ids: Vec<u64> = (0..100).map(|_| waits.open()).collect();
        for (n, id) in ids.iter().enumerate() {
            waits.complete(*id, n as u32);
            waits.cancel(*id);
        }
        assert!(waits.slots.borrow().is_empty(), "no answer kept for nobody");
    }
}
