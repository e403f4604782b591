//! The shard engine interface: everything one core does to its own data.
//!
//! An [`Engine`] is owned by exactly one core and is never shared, so it takes `&mut self` and
//! needs no locks. It applies one operation at a time, in arrival order, and returns the reply.
//!
//! Durability: `execute` applies the operation to the in-memory index at once (so later
//! operations on the same core see it) and returns the [`Mutation`] it made; the shard appends
//! that to the core's write-ahead log ([`wal`]) and holds the reply until the log says the
//! record is durable (group commit: all writes that arrive during one flush share the next
//! `fdatasync`). On start, [`recovery`] replays the log into a fresh engine.
//!
//! Time is passed in (`now_ms`, Unix milliseconds) rather than read here, so expiry is
//! deterministic in tests and one clock read serves a whole batch of requests.

pub mod checkpoint;
pub mod memory;
pub mod record;
pub mod recovery;
pub mod wal;

use corekv_schema::codec::{Op, Reply};

pub use memory::MemEngine;
pub use record::Mutation;

/// What applying one operation did: the reply, and the mutation to log if state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub reply: Reply,
    pub mutation: Option<Mutation>,
}

/// Counters an engine reports; summed over cores by `Stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub keys: u64,
    /// Bytes of keys and values held (payload only, not index overhead).
    pub value_bytes: u64,
    /// Keys removed because their TTL passed (lazily on access or by the sweep).
    pub expired: u64,
}

pub trait Engine {
    /// Applies a single-key operation (`Get`, `Set`, `Delete`, `Cas`) and returns its reply and,
    /// when it changed state, the mutation the log must record. Other operations are answered
    /// with `BadRequest`: the shard handles them.
    fn execute(&mut self, op: Op, now_ms: u64) -> Applied;

    /// Re-applies a logged mutation during recovery (versions and expiry as logged; a put
    /// whose expiry has passed removes the key instead).
    fn replay(&mut self, m: Mutation, now_ms: u64);

    /// Removes up to `budget` keys whose expiry is at or before `now_ms`; returns how many.
    fn sweep_expired(&mut self, now_ms: u64, budget: usize) -> usize;

    /// Every live key as a put mutation (for a checkpoint). Cheap per entry: values are shared,
    /// not copied.
    fn snapshot(&self, now_ms: u64) -> Vec<Mutation>;

    fn stats(&self) -> EngineStats;
}
