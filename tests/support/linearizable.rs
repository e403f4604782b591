//! A linearizability checker for histories of one register per key (get, set, compare-and-set
//! by value): the Wing–Gong search with Lowe's memoization, as Porcupine does it.
//!
//! A history is the operations clients ran, each with its invocation time and, if the client
//! learned the outcome, its return time and result. An operation whose outcome is unknown
//! (the write timed out, its node died) may have taken effect at any point after its
//! invocation, or never: it gets an infinite return time and any result. Operations known to
//! have failed without effect (a refused write, a failed read) are left out by the caller.
//!
//! Linearizability is compositional, so each key is checked on its own. The search walks the
//! events in time order, linearizing any operation whose call has been seen when its effect
//! is consistent with the register's state, and backtracks when an operation's return comes
//! before it could be linearized. A (linearized set, state) pair already explored is not
//! explored again, which keeps real histories tractable.

use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Set(u64),
    /// Compare-and-set: replace the value with `new` if it is `expected`.
    Cas {
        expected: u64,
        new: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// What a get returned (`None`: not found).
    Value(Option<u64>),
    /// A set happened.
    Written,
    /// Whether a compare-and-set swapped.
    Swapped(bool),
    /// The client never learned the outcome: any result, and perhaps no effect at all.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub key: u64,
    pub input: Input,
    pub output: Output,
    /// Nanoseconds since the run started.
    pub call: u64,
    /// `u64::MAX` when the outcome is unknown.
    pub ret: u64,
}

/// The register's next state if `input` applied to `state` can have produced `output`.
fn step(state: Option<u64>, input: Input, output: Output) -> Option<Option<u64>> {
    match (input, output) {
        (Input::Get, Output::Value(v)) => (v == state).then_some(state),
        (Input::Get, Output::Unknown) => Some(state),
        (Input::Set(v), Output::Written | Output::Unknown) => Some(Some(v)),
        (Input::Cas { expected, new }, Output::Swapped(true)) => {
            (state == Some(expected)).then_some(Some(new))
        }
        (Input::Cas { expected, .. }, Output::Swapped(false)) => {
            (state != Some(expected)).then_some(state)
        }
        (Input::Cas { expected, new }, Output::Unknown) => {
            Some(if state == Some(expected) { Some(new) } else { state })
        }
        _ => None,
    }
}

/// Checks every key; the first key whose history is not linearizable, with its operations.
pub fn check(history: &[Operation]) -> Result<(), (u64, Vec<Operation>)> {
    let mut by_key: HashMap<u64, Vec<Operation>> = HashMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(*op);
    }
    let mut keys: Vec<u64> = by_key.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let ops = &by_key[&key];
        if !check_one(ops) {
            return Err((key, ops.clone()));
        }
    }
    Ok(())
}

/// One event in the doubly linked list the search lifts operations out of.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call: the index of its return event.
    partner: usize,
}

const NIL: usize = usize::MAX;

fn check_one(ops: &[Operation]) -> bool {
    // Events sorted by time; at equal times calls come first (the more permissive order).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret, false, i));
    }
    order.sort_by_key(|&(t, is_call, i)| (t, !is_call, i));
    // Slot 0 is the head sentinel.
    let mut events = vec![Event { op: NIL, is_call: false, prev: NIL, next: NIL, partner: NIL }];
    let mut return_slot = vec![NIL; ops.len()];
    for &(_, is_call, op) in &order {
        let slot = events.len();
        events.push(Event { op, is_call, prev: slot - 1, next: NIL, partner: NIL });
        events[slot - 1].next = slot;
        if !is_call {
            return_slot[op] = slot;
        }
    }
    for e in events.iter_mut().skip(1) {
        if e.is_call {
            e.partner = return_slot[e.op];
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<u64> = None;
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let lift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].partner;
        for slot in [call, ret] {
            let Event { prev, next, .. } = events[slot];
            events[prev].next = next;
            if next != NIL {
                events[next].prev = prev;
            }
        }
    };
    let unlift = |events: &mut Vec<Event>, call: usize| {
        let ret = events[call].partner;
        for slot in [ret, call] {
            let Event { prev, next, .. } = events[slot];
            events[prev].next = slot;
            if next != NIL {
                events[next].prev = slot;
            }
        }
    };
    let mut entry = events[0].next;
    while entry != NIL {
        let e = events[entry];
        let op = &ops[e.op];
        if e.is_call {
            if let Some(next_state) = step(state, op.input, op.output) {
                let mut tried = linearized.clone();
                tried[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((tried.clone(), next_state)) {
                    stack.push((entry, state));
                    state = next_state;
                    linearized = tried;
                    lift(&mut events, entry);
                    entry = events[0].next;
                    continue;
                }
            }
            entry = e.next;
        } else if op.ret == u64::MAX {
            // Only operations of unknown outcome are left: each may never have happened.
            return true;
        } else {
            // This operation returned before it could be linearized: undo the last choice.
            let Some((call, before)) = stack.pop() else { return false };
            let undone = events[call].op;
            linearized[undone / 64] &= !(1 << (undone % 64));
            state = before;
            unlift(&mut events, call);
            entry = events[call].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: Input, output: Output, call: u64, ret: u64) -> Operation {
        Operation { key: 1, input, output, call, ret }
    }

    const NEVER: u64 = u64::MAX;

    #[test]
    fn accepts_linearizable_histories() {
        // A read overlapping a write may see either value.
        let h = [
            op(Input::Set(1), Output::Written, 0, 10),
            op(Input::Get, Output::Value(Some(1)), 5, 15),
            op(Input::Get, Output::Value(None), 2, 4),
        ];
        assert!(check(&h).is_ok());
        // Concurrent writes, then reads agreeing on the last one.
        let h = [
            op(Input::Set(1), Output::Written, 0, 10),
            op(Input::Set(2), Output::Written, 0, 10),
            op(Input::Get, Output::Value(Some(1)), 11, 12),
            op(Input::Get, Output::Value(Some(1)), 13, 14),
        ];
        assert!(check(&h).is_ok());
        // Compare-and-set chains.
        let h = [
            op(Input::Set(1), Output::Written, 0, 1),
            op(Input::Cas { expected: 1, new: 2 }, Output::Swapped(true), 2, 3),
            op(Input::Cas { expected: 1, new: 3 }, Output::Swapped(false), 4, 5),
            op(Input::Get, Output::Value(Some(2)), 6, 7),
        ];
        assert!(check(&h).is_ok());
        // A write of unknown outcome may take effect late, or never.
        let h = [
            op(Input::Set(1), Output::Unknown, 0, NEVER),
            op(Input::Get, Output::Value(None), 1, 2),
            op(Input::Get, Output::Value(Some(1)), 3, 4),
        ];
        assert!(check(&h).is_ok());
        let h = [
            op(Input::Set(1), Output::Unknown, 0, NEVER),
            op(Input::Get, Output::Value(None), 5, 6),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn rejects_known_violations() {
        // A stale read after a write completed.
        let h =
            [op(Input::Set(1), Output::Written, 0, 5), op(Input::Get, Output::Value(None), 6, 8)];
        assert!(check(&h).is_err());
        // Reads that flip back to an overwritten value.
        let h = [
            op(Input::Set(1), Output::Written, 0, 10),
            op(Input::Set(2), Output::Written, 0, 10),
            op(Input::Get, Output::Value(Some(1)), 11, 12),
            op(Input::Get, Output::Value(Some(2)), 13, 14),
            op(Input::Get, Output::Value(Some(1)), 15, 16),
        ];
        assert!(check(&h).is_err());
        // Two compare-and-sets from the same value both succeeding.
        let h = [
            op(Input::Set(1), Output::Written, 0, 1),
            op(Input::Cas { expected: 1, new: 2 }, Output::Swapped(true), 2, 10),
            op(Input::Cas { expected: 1, new: 3 }, Output::Swapped(true), 2, 10),
        ];
        assert!(check(&h).is_err());
        // An unknown write cannot undo itself: once seen, it stays.
        let h = [
            op(Input::Set(1), Output::Unknown, 0, NEVER),
            op(Input::Get, Output::Value(Some(1)), 3, 4),
            op(Input::Get, Output::Value(None), 5, 6),
        ];
        assert!(check(&h).is_err());
        // A compare-and-set that failed although the register held what it expected.
        let h = [
            op(Input::Set(1), Output::Written, 0, 1),
            op(Input::Cas { expected: 1, new: 2 }, Output::Swapped(false), 2, 3),
        ];
        assert!(check(&h).is_err());
        // A value nobody wrote.
        let h = [op(Input::Get, Output::Value(Some(9)), 0, 1)];
        assert!(check(&h).is_err());
        // Keys are independent: a violation on one key is reported with its key.
        let mut h = vec![op(Input::Set(1), Output::Written, 0, 1)];
        h.push(Operation { key: 2, ..op(Input::Get, Output::Value(Some(1)), 2, 3) });
        assert_eq!(check(&h).unwrap_err().0, 2);
    }

    #[test]
    fn handles_long_concurrent_histories() {
        // 400 operations, 8 clients, all overlapping in waves: linearizable by construction
        // (each wave's reads see the wave's last write, issued alone before them).
        let mut h = Vec::new();
        let mut t = 0;
        for wave in 0..50u64 {
            h.push(op(Input::Set(wave), Output::Written, t, t + 2));
            for c in 0..7 {
                h.push(op(Input::Get, Output::Value(Some(wave)), t + 3, t + 10 + c));
            }
            t += 20;
        }
        assert!(check(&h).is_ok());
        // The same with one read of the previous wave's value at the end: rejected.
        h.push(op(Input::Get, Output::Value(Some(3)), t + 1, t + 2));
        assert!(check(&h).is_err());
    }
}
