//! The shard engine interface: everything one core does to its own data.
//!
//! An [`Engine`] is owned by exactly one core and is never shared, so it takes `&mut self` and
//! needs no locks. It applies one operation at a time, in arrival order, and returns the reply.
//!
//! The seam a durable engine plugs into: `execute` applies the operation to the index at once
//! (so later operations on the same core see it) and returns its reply; a log-backed engine
//! will additionally hand the shard a commit ticket for writes, which the connection awaits
//! before sending the reply (group commit: every write of a tick shares one `fdatasync`).
//! Nothing above this module knows whether values live in memory or in segments.
//!
//! Time is passed in (`now_ms`, Unix milliseconds) rather than read here, so expiry is
//! deterministic in tests and one clock read serves a whole batch of requests.

pub mod memory;

use corekv_schema::codec::{Op, Reply};

pub use memory::MemEngine;

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
    /// Applies a single-key operation (`Get`, `Set`, `Delete`, `Cas`) and returns its reply.
    /// Other operations are answered with `BadRequest`: the shard handles them.
    fn execute(&mut self, op: Op, now_ms: u64) -> Reply;

    /// Removes up to `budget` keys whose expiry is at or before `now_ms`; returns how many.
    fn sweep_expired(&mut self, now_ms: u64, budget: usize) -> usize;

    fn stats(&self) -> EngineStats;
}
