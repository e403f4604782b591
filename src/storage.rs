//! The shard engine interface: everything one core does to its own data.
//!
//! An [`Engine`] is owned by exactly one core and is never shared, so it takes `&mut self` and
//! needs no locks. It applies one operation at a time, in arrival order, and returns the reply.
//!
//! Durability: `execute` appends the record of a write to the core's write-ahead log
//! ([`wal`]) through the [`Log`] it is given, then applies it to memory (so later operations
//! on the same core see it); the shard holds the reply until the log says the record is
//! durable (group commit: all writes that arrive during one flush share the next
//! `fdatasync`). On start, [`recovery`] loads the newest checkpoint and replays the log after
//! it into a fresh engine.
//!
//! Values live in the log: the index keeps each key's location, version and expiry, and the
//! value itself only while it fits the cache budget. A read of a value that left memory comes
//! back as [`Applied::Fetch`] and the shard reads the record with direct I/O.
//!
//! Time is passed in (`now_ms`, Unix milliseconds) rather than read here, so expiry is
//! deterministic in tests and one clock read serves a whole batch of requests.

pub mod checkpoint;
pub mod memory;
pub mod record;
pub mod recovery;
pub mod store;
pub mod wal;

use bytes::Bytes;
use corekv_schema::codec::{Op, Reply};

pub use memory::MemEngine;
pub use record::{Loc, Mutation};

/// The one histogram shape of the node (latencies in microseconds, 1 µs to 1 minute, 3
/// significant digits; also counts up to 60M): here, below the shard, so the log can use it.
pub fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// The log an engine writes through while it applies a write. The engine appends *before*
/// it changes memory, so a write the log refused is never seen by a later read.
pub trait Log {
    /// Appends `m`; where it landed, or `None` when nothing is logged (`--durability none`).
    fn append(&mut self, m: &Mutation) -> Result<Option<Loc>, String>;
    /// Whether the record at `loc` is durable: only then may its value leave memory.
    fn is_durable(&self, loc: Loc) -> bool;
}

/// The log of `--durability none`: nothing is written, every value stays in memory.
pub struct NoLog;

impl Log for NoLog {
    fn append(&mut self, _: &Mutation) -> Result<Option<Loc>, String> {
        Ok(None)
    }

    fn is_durable(&self, _: Loc) -> bool {
        false
    }
}

/// A read whose value is on disk only: read the put record at `loc` and answer with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub loc: Loc,
    pub key_len: u32,
    pub version: u64,
    /// Remaining time to live when the read was applied.
    pub ttl_ms: Option<u64>,
}

/// What applying one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The reply; any change is already in memory and appended to the log.
    Done(Reply),
    /// A `Get` of a value that is on disk only; the result is as of this moment (later writes
    /// do not change it), the bytes just have to be read.
    Fetch(Fetch),
    /// The operation compares against a value that is on disk only: read the put record at
    /// `Loc`, then execute the operation (given back) again with that value.
    NeedValue(Op, Loc),
}

/// Counters an engine reports; summed over cores by `Stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub keys: u64,
    /// Bytes of keys and values held (payload only, not index overhead).
    pub value_bytes: u64,
    /// Keys removed because their TTL passed (lazily on access or by the sweep).
    pub expired: u64,
    /// Bytes of values held in memory (the cache); the rest are read from the log.
    pub cached_bytes: u64,
    /// Values dropped from memory to keep the cache within its budget.
    pub evicted: u64,
    /// Record bytes in log segments, and how many of them are current puts.
    pub log_total_bytes: u64,
    pub log_live_bytes: u64,
    /// Keys with a TTL.
    pub ttl_keys: u64,
}

/// Who may remove a key because its expiry passed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpiryRule {
    /// This engine alone decides (a single node): any operation that finds a key expired by
    /// the time it is given removes it, the sweep removes due keys, and recovery drops what
    /// expired while the node was down.
    #[default]
    Local,
    /// A replicated log decides (cluster mode): the engine only hides expired keys, and
    /// removes one only through [`Engine::expire`], applied from a log entry. So replicas at
    /// the same log position hold the same keys whatever their clocks did (docs/CLUSTER.md).
    Logged,
}

/// How much of one log segment is still the current value of some key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentUse {
    pub total: u64,
    pub live: u64,
}

pub trait Engine {
    /// Applies a single-key operation (`Get`, `Set`, `Delete`, `Cas`), logging any change
    /// through `log`. `fetched` is the value read for an earlier [`Applied::NeedValue`].
    /// Other operations are answered with `BadRequest`: the shard handles them.
    fn execute(
        &mut self,
        op: Op,
        now_ms: u64,
        log: &mut dyn Log,
        fetched: Option<(Loc, &[u8])>,
    ) -> Applied;

    /// Re-applies a record during recovery: a log record found at `loc`, or a checkpoint
    /// record (`loc` is `None`). A put whose expiry has passed removes the key instead.
    fn replay(&mut self, m: Mutation, loc: Option<Loc>, now_ms: u64);

    /// Records the size of a segment recovery kept but did not replay (the checkpoint
    /// covers it; its live bytes come from the checkpoint's index records).
    fn note_segment(&mut self, segment: u64, bytes: u64);

    /// Deletes every key (FLUSHDB), logging one flush record through `log` first; returns how
    /// many keys there were.
    fn flush(&mut self, log: &mut dyn Log) -> Result<u64, String>;

    /// Removes up to `budget` keys whose expiry is at or before `now_ms`; returns how many.
    /// Under [`ExpiryRule::Logged`] it removes nothing: see [`Engine::due_expiries`].
    fn sweep_expired(&mut self, now_ms: u64, budget: usize) -> usize;

    /// [`ExpiryRule::Logged`]: up to `budget` keys expired at `now_ms`, with their versions,
    /// for the partition's leader to propose their removal. Each is handed out once; give
    /// back with [`Engine::expire_later`] what cannot be proposed now.
    fn due_expiries(&mut self, now_ms: u64, budget: usize) -> Vec<(Bytes, u64)>;

    /// Asks [`Engine::due_expiries`] to hand out `key` again at `due_ms`.
    fn expire_later(&mut self, key: Bytes, due_ms: u64);

    /// Applies a logged removal: if `key` is still at `version` and expired at `now_ms` (the
    /// entry's stamp), logs a tombstone through `log` and removes the key. Whether it did.
    fn expire(
        &mut self,
        key: &[u8],
        version: u64,
        now_ms: u64,
        log: &mut dyn Log,
    ) -> Result<bool, String>;

    /// Every live key for a checkpoint: an index record where its put is in the log, the put
    /// itself where it is not. Cheap per entry: keys and values are shared, not copied.
    /// Under [`ExpiryRule::Logged`] expired keys are included: the log has not removed them.
    fn snapshot(&self, now_ms: u64) -> Vec<Mutation> {
        self.snapshot_where(now_ms, &|_| true)
    }

    /// [`Engine::snapshot`] of the keys `mine` selects (and the clock, if `mine` selects its
    /// empty key): entries left out are never built, so one partition's listing costs a
    /// look at each key, not a copy of the whole engine.
    fn snapshot_where(&self, now_ms: u64, mine: &dyn Fn(&[u8]) -> bool) -> Vec<Mutation>;

    /// Keeps a value read from `loc` in memory (`data` = key ++ value, as read, kept without
    /// a copy), if the key still lives there and the cache has room (making room by dropping
    /// other values whose records are durable).
    fn cache_fetched(&mut self, data: Bytes, key_len: usize, loc: Loc, log: &dyn Log);

    /// Compaction: if `m` (a put found at `from`) is still its key's current value, appends it
    /// again through `log` and points the key there. Whether it moved.
    fn relocate(&mut self, m: &Mutation, from: Loc, log: &mut dyn Log) -> Result<bool, String>;

    /// Per-segment totals and live bytes, oldest segment first.
    fn segments(&self) -> Vec<(u64, SegmentUse)>;

    /// Forgets a segment that holds no live data (compaction deleted it).
    fn forget_segment(&mut self, segment: u64);

    /// Removes every key whose value lives in `segment` (a file that is gone), or, with
    /// `expired_at` = Some(now), only those whose expiry has passed by then; returns how many.
    fn drop_segment_keys(&mut self, segment: u64, expired_at: Option<u64>) -> u64;

    /// SCAN: live keys from position `cursor` on, in an order that does not change while a
    /// key lives (new keys may land before or after the cursor). Stops after `count` keys that
    /// pass `wanted`, or after looking at `10 * count` positions. The next cursor, `None` when
    /// every position was looked at: a key present for a whole scan is returned exactly once.
    fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        wanted: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<Bytes>, Option<u64>);

    /// The version of `key` if it is live, 0 if absent or expired; reads no value.
    fn version_of(&self, key: &[u8], now_ms: u64) -> u64;

    fn stats(&self) -> EngineStats;

    /// Cluster mode: the next write takes exactly this version (its Raft index), whatever
    /// versions other partitions of the core have reached.
    fn next_version(&mut self, version: u64);

    /// Cluster mode, installing a snapshot: logs `m` (a put or a tombstone, with the version
    /// it carries) through `log`, then applies it as recovery would.
    fn load(&mut self, m: Mutation, now_ms: u64, log: &mut dyn Log) -> Result<(), String>;
}
