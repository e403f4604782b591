//! `MemEngine`: the shard engine's index (hashbrown + ahash) and its value cache.
//!
//! Each key maps to an [`Entry`]: version, expiry, where its put record lives in the log, and
//! the value itself while it is cached. Values are cached within a byte budget; beyond it the
//! CLOCK policy (second chance: a value read since the hand last passed it stays) drops values
//! whose records are durable, and reads of those come back as [`Applied::Fetch`]. Under
//! `--durability none` nothing has a location, so every value stays in memory.
//!
//! The engine also keeps, per log segment, how many record bytes it holds and how many of them
//! are some key's current put: compaction picks segments by that live ratio.
//!
//! Semantics every engine must keep:
//! - a key's version is assigned from one per-core counter, so it only grows, per key too;
//! - an expired key is absent for every operation. Under [`ExpiryRule::Local`] it is removed
//!   when touched (lazy expiry) or by [`Engine::sweep_expired`] (active expiry); under
//!   [`ExpiryRule::Logged`] only by [`Engine::expire`], so that removal is a log entry;
//! - `IfVersion(0)` holds exactly when the key is absent, so "create if absent" can be said
//!   with a version too;
//! - a failed condition reports the key's current version (0 when absent);
//! - a write the log refused changes nothing.
//!
//! Stored keys and values are copied out of the request frame: a `Bytes` slice would pin the
//! whole receive buffer in memory for as long as the value lives.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use bytes::Bytes;
use corekv_schema::codec::{Condition, ErrorCode, Expected, Op, Reply, SetOp, WireError};
use hashbrown::HashTable;

use super::record::{HEADER_BYTES, Loc, Mutation};
use super::{Applied, Engine, EngineStats, ExpiryRule, Fetch, Log, SegmentUse};

/// One stored key. Key and cached value share one allocation (`data = key ++ value`): a
/// lookup that finds the key has the value's first bytes in the same cache lines, and each key
/// costs one heap block instead of two. When the value is not cached, `data` is the key alone.
#[derive(Clone, Debug)]
struct Entry {
    data: Bytes,
    key_len: u32,
    value_len: u32,
    /// The put record in the log; `None` only when nothing is logged (or for an entry from
    /// an old checkpoint that held values).
    loc: Option<Loc>,
    version: u64,
    /// Unix ms at which the key expires; 0 = never.
    expires_at_ms: u64,
    /// Read since the CLOCK hand last passed (second chance).
    referenced: bool,
    /// This entry's position in `MemEngine::slots`: SCAN's cursor. Kept when the entry is
    /// replaced, freed when the key leaves.
    slot: u32,
}

impl Entry {
    fn new(data: Bytes, key_len: usize, loc: Option<Loc>, version: u64, expires: u64) -> Entry {
        // Keys and values are bounded by the frame limits, far below u32::MAX.
        let key_len32 = u32::try_from(key_len).expect("key length fits u32");
        let value_len = u32::try_from(data.len() - key_len).expect("value length fits u32");
        Entry {
            data,
            key_len: key_len32,
            value_len,
            loc,
            version,
            expires_at_ms: expires,
            referenced: false,
            slot: 0,
        }
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn cached(&self) -> bool {
        self.data.len() == (self.key_len + self.value_len) as usize
    }

    /// Whether the value is in memory and could leave it: it has a place in the log, and is
    /// not empty (an empty value is always "cached", so dropping it would change nothing).
    fn evictable(&self) -> bool {
        self.value_len > 0 && self.loc.is_some() && self.cached()
    }

    fn value(&self) -> Bytes {
        debug_assert!(self.cached());
        self.data.slice(self.key_len as usize..)
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    /// Payload bytes (key and value), whether or not the value is cached.
    fn bytes(&self) -> u64 {
        u64::from(self.key_len) + u64::from(self.value_len)
    }

    fn cached_bytes(&self) -> u64 {
        if self.cached() { u64::from(self.value_len) } else { 0 }
    }

    fn fetch(&self, now_ms: u64) -> Option<Fetch> {
        Some(Fetch {
            loc: self.loc?,
            key_len: self.key_len,
            version: self.version,
            ttl_ms: (self.expires_at_ms != 0).then(|| self.expires_at_ms - now_ms),
        })
    }
}

/// One key to look at when its time comes: (expires_at_ms, key). Stale when the key was since
/// deleted or given another expiry; the sweep checks the entry's expiry before removing it.
type ExpiryTicket = Reverse<(u64, Bytes)>;

/// Stale tickets allowed beyond the live keys with a TTL before the heap is rebuilt.
const EXPIRY_STALE_TICKETS_MAX: usize = 1024;
/// Stale CLOCK slots allowed beyond the cached entries before the ring is rebuilt.
const CLOCK_STALE_SLOTS_MAX: usize = 1024;
/// Most CLOCK slots one eviction pass looks at.
const EVICT_STEPS_MAX: usize = 4096;

pub struct MemEngine {
    /// Entries keyed by their own `key`, hashed with `hasher`. A raw `HashTable` rather than a
    /// `HashMap` so each operation hashes and probes once: lookup, condition check and
    /// in-place update all happen on the entry found.
    table: HashTable<Entry>,
    hasher: ahash::RandomState,
    /// Min-heap for active expiry. Rewrites and deletes leave stale tickets behind; the heap
    /// is rebuilt from the table once they outnumber the live keys with a TTL, so a workload
    /// that refreshes long TTLs cannot grow it without bound.
    expiry: BinaryHeap<ExpiryTicket>,
    /// Live entries with an expiry (what the heap would hold with no stale tickets).
    ttl_keys: usize,
    /// The CLOCK: hashes of entries whose value was cached when pushed, oldest first. Slots go
    /// stale when the entry is overwritten or dropped; the ring is rebuilt once they
    /// outnumber the cached entries.
    clock: VecDeque<u64>,
    cached_entries: usize,
    cache_budget: u64,
    cached_bytes: u64,
    evicted: u64,
    /// Each live entry's hash at its `slot`; SCAN walks this in order. Positions of removed
    /// keys are reused (`free_slots`), so it is as long as the most keys ever held at once.
    /// A hashbrown table moves entries when it grows or rehashes, so its own order cannot be
    /// a cursor.
    slots: Vec<u64>,
    free_slots: Vec<u32>,
    segments: BTreeMap<u64, SegmentUse>,
    version_last: u64,
    value_bytes: u64,
    expired: u64,
    rule: ExpiryRule,
}

impl Default for MemEngine {
    fn default() -> Self {
        MemEngine::new()
    }
}

/// Why a condition could not be decided or did not hold.
enum Unmet {
    Reply(Reply),
    /// It compares against a value that is on disk only.
    NeedValue(Loc),
}

impl MemEngine {
    /// An engine that caches every value.
    pub fn new() -> MemEngine {
        MemEngine::with_cache(u64::MAX)
    }

    /// An engine that keeps at most `cache_budget` bytes of values in memory (values whose
    /// records are not durable yet, and values that were never logged, always stay).
    pub fn with_cache(cache_budget: u64) -> MemEngine {
        MemEngine {
            table: HashTable::new(),
            hasher: ahash::RandomState::new(),
            expiry: BinaryHeap::new(),
            ttl_keys: 0,
            clock: VecDeque::new(),
            cached_entries: 0,
            cache_budget,
            cached_bytes: 0,
            evicted: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            segments: BTreeMap::new(),
            version_last: 0,
            value_bytes: 0,
            expired: 0,
            rule: ExpiryRule::Local,
        }
    }

    /// The same engine, with `rule` deciding who removes expired keys.
    pub fn with_expiry(mut self, rule: ExpiryRule) -> MemEngine {
        self.rule = rule;
        self
    }

    /// Whether an operation that finds a key expired may remove it by its own time.
    fn removes_on_touch(&self) -> bool {
        self.rule == ExpiryRule::Local
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Removes `key` unless `keep` says otherwise, with all bookkeeping.
    fn remove_if(&mut self, key: &[u8], keep: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let hash = self.hash(key);
        let Ok(found) = self.table.find_entry(hash, |e| e.key() == key) else {
            return None;
        };
        if keep(found.get()) {
            return None;
        }
        let (entry, _) = found.remove();
        self.free_slots.push(entry.slot);
        self.unstored(&entry);
        Some(entry)
    }

    /// Counts that `entry` left the table (removed or replaced).
    fn unstored(&mut self, entry: &Entry) {
        self.value_bytes -= entry.bytes();
        if entry.expires_at_ms != 0 {
            self.ttl_keys -= 1;
        }
        if entry.cached() {
            self.cached_bytes -= entry.cached_bytes();
            self.cached_entries -= 1;
        }
        if let Some(loc) = entry.loc
            && let Some(s) = self.segments.get_mut(&loc.segment())
        {
            s.live -= u64::from(loc.len);
        }
    }

    /// Counts a record of the log at `loc`; `live` when it is now some key's current put.
    fn logged(&mut self, loc: Option<Loc>, live: bool) {
        if let Some(loc) = loc {
            let s = self.segments.entry(loc.segment()).or_default();
            s.total += u64::from(loc.len);
            if live {
                s.live += u64::from(loc.len);
            }
        }
    }

    /// Counts that `fresh` (stored for `key`, hashed `hash`) replaced `old`: bytes, TTLs,
    /// cache and an expiry ticket unless the old one is still pending (`old_ticket_live`) and
    /// describes the entry (same deadline, as with keep_ttl). Shared by writes and replay so
    /// the two cannot drift apart.
    fn stored(
        &mut self,
        key: &[u8],
        hash: u64,
        old: Option<&Entry>,
        fresh: &Entry,
        old_ticket_live: bool,
    ) {
        if let Some(old) = old {
            self.unstored(old);
        }
        self.value_bytes += fresh.bytes();
        if let Some(loc) = fresh.loc {
            // A checkpoint's index records come before the segments they point into are known.
            self.segments.entry(loc.segment()).or_default().live += u64::from(loc.len);
        }
        if fresh.cached() {
            self.cached_bytes += fresh.cached_bytes();
            self.cached_entries += 1;
            if fresh.evictable() {
                self.clock.push_back(hash);
            }
        }
        let expires_at_ms = fresh.expires_at_ms;
        if expires_at_ms != 0 {
            self.ttl_keys += 1;
            // Under the logged rule the old ticket may be out with the leader's sweep, whose
            // removal this write has just made miss (another version): always a new one.
            let logged = self.rule == ExpiryRule::Logged;
            if logged || !old_ticket_live || old.is_none_or(|o| o.expires_at_ms != expires_at_ms) {
                // The ticket owns a copy of the key, not a slice of `data`: a stale ticket
                // must not keep an overwritten value alive until its old expiry time.
                self.expiry.push(Reverse((expires_at_ms, Bytes::copy_from_slice(key))));
            }
        }
        if self.expiry.len() > 2 * self.ttl_keys + EXPIRY_STALE_TICKETS_MAX {
            self.rebuild_expiry();
        }
    }

    /// Replaces the expiry heap with exactly one ticket per live key with a TTL.
    fn rebuild_expiry(&mut self) {
        let tickets: Vec<ExpiryTicket> = self
            .table
            .iter()
            .filter(|e| e.expires_at_ms != 0)
            .map(|e| Reverse((e.expires_at_ms, Bytes::copy_from_slice(e.key()))))
            .collect();
        debug_assert_eq!(tickets.len(), self.ttl_keys);
        self.expiry = BinaryHeap::from(tickets);
    }

    /// Drops cached values (CLOCK order) until the cache is within budget. A value whose
    /// record is not durable yet stays: the log could not give it back.
    fn evict(&mut self, log: &dyn Log) {
        if self.clock.len() > 2 * self.cached_entries + CLOCK_STALE_SLOTS_MAX {
            let clock = self
                .table
                .iter()
                .filter(|e| e.evictable())
                .map(|e| self.hasher.hash_one(e.key()))
                .collect();
            self.clock = clock;
        }
        // Each slot is looked at at most twice per call (second chance), and at most
        // EVICT_STEPS_MAX slots per call, so a cache full of values that cannot leave yet
        // (not durable) costs each write a bounded amount; later writes try again.
        let mut steps = (2 * self.clock.len()).min(EVICT_STEPS_MAX);
        while self.cached_bytes > self.cache_budget && steps > 0 {
            steps -= 1;
            let Some(hash) = self.clock.pop_front() else { break };
            let hasher = &self.hasher;
            let found =
                self.table.find_mut(hash, |e| e.evictable() && hasher.hash_one(e.key()) == hash);
            let Some(e) = found else { continue };
            let durable = e.loc.is_some_and(|loc| log.is_durable(loc));
            if e.referenced || !durable {
                e.referenced = false;
                self.clock.push_back(hash);
                continue;
            }
            let freed = e.cached_bytes();
            e.data = e.data.slice(..e.key_len as usize);
            // A slice would keep the whole key ++ value block alive: copy the key out.
            e.data = Bytes::copy_from_slice(&e.data);
            self.cached_bytes -= freed;
            self.cached_entries -= 1;
            self.evicted += 1;
        }
    }

    fn get(&mut self, key: &[u8], now_ms: u64) -> Applied {
        let hash = self.hash(key);
        match self.table.find_mut(hash, |e| e.key() == key) {
            None => return Applied::Done(not_found()),
            Some(e) if !e.is_expired(now_ms) => {
                e.referenced = true;
                if e.cached() {
                    return Applied::Done(Reply::Value {
                        value: e.value(),
                        version: e.version,
                        ttl_ms: (e.expires_at_ms != 0).then(|| e.expires_at_ms - now_ms),
                    });
                }
                let fetch = e.fetch(now_ms).expect("an entry without its value has a location");
                return Applied::Fetch(fetch);
            }
            Some(_) => {}
        }
        // Lazy expiry: the key was found dead; drop it now.
        if self.removes_on_touch() && self.remove_if(key, |e| !e.is_expired(now_ms)).is_some() {
            self.expired += 1;
        }
        Applied::Done(not_found())
    }

    fn set(
        &mut self,
        set: SetOp,
        now_ms: u64,
        log: &mut dyn Log,
        fetched: Option<(Loc, &[u8])>,
    ) -> Applied {
        let hash = self.hash(&set.key);
        let MemEngine { table, hasher, version_last, expired, slots, free_slots, .. } = self;
        let entry = table.entry(hash, |e| e.key() == &set.key[..], |e| hasher.hash_one(e.key()));
        let (current, was_expired) = match &entry {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let e = o.get();
                if e.is_expired(now_ms) { (None, true) } else { (Some(e), false) }
            }
            hashbrown::hash_table::Entry::Vacant(_) => (None, false),
        };
        match check(&set.condition, current, fetched) {
            Ok(()) => {}
            Err(Unmet::Reply(failed)) => return Applied::Done(failed),
            Err(Unmet::NeedValue(loc)) => return Applied::NeedValue(Op::Set(set), loc),
        }
        let expires_at_ms = if set.keep_ttl {
            current.map_or(0, |e| e.expires_at_ms)
        } else if set.ttl_ms > 0 {
            now_ms.saturating_add(set.ttl_ms)
        } else {
            0
        };
        let version = *version_last + 1;
        let mutation = Mutation::put(&set.key, &set.value, version, expires_at_ms);
        let loc = match log.append(&mutation) {
            Ok(loc) => loc,
            Err(e) => return Applied::Done(Reply::error(ErrorCode::Unavailable, e)),
        };
        *version_last = version;
        let Mutation::Put { data, .. } = mutation else { unreachable!("built as a put") };
        let mut fresh = Entry::new(data, set.key.len(), loc, version, expires_at_ms);
        if was_expired {
            *expired += 1;
        }
        let old = put_entry(entry, &mut fresh, slots, free_slots, hash);
        self.logged(loc, false);
        // An expired old entry's ticket may already have fired: the key gets a new one.
        self.stored(&set.key, hash, old.as_ref(), &fresh, !was_expired);
        if self.cached_bytes > self.cache_budget {
            self.evict(log);
        }
        Applied::Done(Reply::Written { version })
    }

    fn delete(
        &mut self,
        key: Bytes,
        condition: Condition,
        now_ms: u64,
        log: &mut dyn Log,
        fetched: Option<(Loc, &[u8])>,
    ) -> Applied {
        let hash = self.hash(&key);
        let found = match self.table.find(hash, |e| e.key() == &key[..]) {
            None => return Applied::Done(not_found()),
            Some(e) if e.is_expired(now_ms) => None,
            Some(e) => Some(check(&condition, Some(e), fetched).map(|()| e.version)),
        };
        let old_version = match found {
            None => {
                if self.removes_on_touch()
                    && self.remove_if(&key, |e| !e.is_expired(now_ms)).is_some()
                {
                    self.expired += 1;
                }
                return Applied::Done(not_found());
            }
            Some(Err(Unmet::Reply(failed))) => return Applied::Done(failed),
            Some(Err(Unmet::NeedValue(loc))) => {
                return Applied::NeedValue(Op::Delete { key, condition }, loc);
            }
            Some(Ok(v)) => v,
        };
        // The tombstone takes a fresh version: it must order after the put it hides, and
        // replay applies records in version order per key.
        let version = self.version_last + 1;
        let mutation = Mutation::Delete { key, version };
        let loc = match log.append(&mutation) {
            Ok(loc) => loc,
            Err(e) => return Applied::Done(Reply::error(ErrorCode::Unavailable, e)),
        };
        self.version_last = version;
        self.logged(loc, false);
        self.remove_if(mutation.key(), |_| false);
        Applied::Done(Reply::Deleted { version: old_version })
    }

    /// Forgets every key (a flush); segment totals stay, nothing in them is live any more.
    fn clear(&mut self) -> u64 {
        let keys = self.table.len() as u64;
        self.table = HashTable::new();
        self.expiry = BinaryHeap::new();
        self.clock = VecDeque::new();
        self.slots = Vec::new();
        self.free_slots = Vec::new();
        self.ttl_keys = 0;
        self.cached_entries = 0;
        self.cached_bytes = 0;
        self.value_bytes = 0;
        for usage in self.segments.values_mut() {
            usage.live = 0;
        }
        keys
    }

    /// Stores a replayed put (from the log at `loc`, or from a checkpoint).
    fn replay_put(
        &mut self,
        data: Bytes,
        key_len: usize,
        loc: Option<Loc>,
        version: u64,
        expires: u64,
    ) {
        let hash = self.hash(&data[..key_len]);
        let value_len = (data.len() - key_len) as u64;
        // Cache while there is room (no eviction during replay: later records would only
        // push out earlier ones). Copied out of the segment buffer either way: a slice would
        // keep the whole segment in memory.
        let keep_value = loc.is_none() || self.cached_bytes + value_len <= self.cache_budget;
        let fresh = if keep_value {
            Entry::new(Bytes::copy_from_slice(&data), key_len, loc, version, expires)
        } else {
            let mut e = Entry::new(data.clone(), key_len, loc, version, expires);
            e.data = Bytes::copy_from_slice(&data[..key_len]);
            e
        };
        self.insert_replayed(hash, fresh);
    }

    fn insert_replayed(&mut self, hash: u64, mut fresh: Entry) {
        let MemEngine { table, hasher, slots, free_slots, .. } = self;
        let entry = table.entry(hash, |e| e.key() == fresh.key(), |e| hasher.hash_one(e.key()));
        let old = put_entry(entry, &mut fresh, slots, free_slots, hash);
        let key = Bytes::copy_from_slice(fresh.key());
        self.stored(&key, hash, old.as_ref(), &fresh, true);
    }
}

/// Stores `fresh` at `entry`: in place of the old entry (keeping its slot, returning it), or
/// as a new one in a new slot.
fn put_entry(
    entry: hashbrown::hash_table::Entry<'_, Entry>,
    fresh: &mut Entry,
    slots: &mut Vec<u64>,
    free_slots: &mut Vec<u32>,
    hash: u64,
) -> Option<Entry> {
    match entry {
        hashbrown::hash_table::Entry::Occupied(mut o) => {
            fresh.slot = o.get().slot;
            Some(std::mem::replace(o.get_mut(), fresh.clone()))
        }
        hashbrown::hash_table::Entry::Vacant(v) => {
            fresh.slot = take_slot(slots, free_slots, hash);
            v.insert(fresh.clone());
            None
        }
    }
}

/// A position for a new entry hashed `hash`: a free one, or a new one at the end.
fn take_slot(slots: &mut Vec<u64>, free_slots: &mut Vec<u32>, hash: u64) -> u32 {
    match free_slots.pop() {
        Some(slot) => {
            slots[slot as usize] = hash;
            slot
        }
        None => {
            slots.push(hash);
            // Keys per core are bounded by memory far below u32::MAX entries.
            u32::try_from(slots.len() - 1).expect("fewer than 2^32 keys per core")
        }
    }
}

/// Whether `condition` holds for `current`; the error reply when it does not, or the value
/// to read first when it compares against one that is on disk only (`fetched` is that value
/// once read; it counts only if the key still lives where it was read from).
fn check(
    condition: &Condition,
    current: Option<&Entry>,
    fetched: Option<(Loc, &[u8])>,
) -> Result<(), Unmet> {
    let holds = match condition {
        Condition::Always => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfPresent => current.is_some(),
        Condition::IfVersion(v) => current.map_or(0, |e| e.version) == *v,
        Condition::IfValue(expected) => match current {
            None => false,
            Some(e) if e.cached() => e.data[e.key_len as usize..] == expected[..],
            Some(e) => match (e.loc, fetched) {
                (Some(at), Some((read_at, value))) if at == read_at => value == &expected[..],
                // A different length cannot be equal: no need to read.
                _ if e.value_len as usize != expected.len() => false,
                (Some(at), _) => return Err(Unmet::NeedValue(at)),
                (None, _) => false,
            },
        },
    };
    if holds {
        return Ok(());
    }
    Err(Unmet::Reply(Reply::Error(WireError {
        current_version: current.map_or(0, |e| e.version),
        ..WireError::new(ErrorCode::ConditionFailed, "condition failed")
    })))
}

fn not_found() -> Reply {
    Reply::error(ErrorCode::NotFound, "key not found")
}

impl Engine for MemEngine {
    fn execute(
        &mut self,
        op: Op,
        now_ms: u64,
        log: &mut dyn Log,
        fetched: Option<(Loc, &[u8])>,
    ) -> Applied {
        match op {
            Op::Get { key } => self.get(&key, now_ms),
            Op::Set(set) => self.set(set, now_ms, log, fetched),
            Op::Delete { key, condition } => self.delete(key, condition, now_ms, log, fetched),
            Op::Cas { key, expected, new_value, ttl_ms } => {
                let condition = match expected {
                    Expected::Value(v) => Condition::IfValue(v),
                    Expected::Version(v) => Condition::IfVersion(v),
                };
                let set = SetOp { key, value: new_value, ttl_ms, keep_ttl: false, condition };
                self.set(set, now_ms, log, fetched)
            }
            other => Applied::Done(Reply::error(
                ErrorCode::BadRequest,
                format!("{} is not a single-key operation", other.name()),
            )),
        }
    }

    fn replay(&mut self, m: Mutation, loc: Option<Loc>, now_ms: u64) {
        self.version_last = self.version_last.max(m.version());
        match m {
            Mutation::Delete { key, .. } => {
                self.logged(loc, false);
                self.remove_if(&key, |_| false);
            }
            // Raft records reach the engine only to be counted in their segment's size.
            Mutation::Clock { .. } | Mutation::Raft { .. } => self.logged(loc, false),
            Mutation::Flush { .. } => {
                self.logged(loc, false);
                self.clear();
            }
            Mutation::Put { expires_at_ms, .. } | Mutation::Index { expires_at_ms, .. }
                if expires_at_ms != 0 && expires_at_ms <= now_ms && self.removes_on_touch() =>
            {
                self.logged(loc, false);
                // Expired while the node was down: it hides any older value of the key.
                if self.remove_if(m.key(), |_| false).is_some() {
                    self.expired += 1;
                }
            }
            Mutation::Put { data, key_len, version, expires_at_ms } => {
                self.logged(loc, false);
                self.replay_put(data, key_len, loc, version, expires_at_ms);
            }
            Mutation::Index { key, version, expires_at_ms, loc: at } => {
                let hash = self.hash(&key);
                let mut fresh = Entry::new(
                    Bytes::copy_from_slice(&key),
                    key.len(),
                    Some(at),
                    version,
                    expires_at_ms,
                );
                // The value is in the log: only its length is known here (`decode` checked
                // that the record is long enough for the key).
                fresh.value_len = at.len - (HEADER_BYTES + key.len()) as u32;
                self.insert_replayed(hash, fresh);
            }
        }
    }

    fn flush(&mut self, log: &mut dyn Log) -> Result<u64, String> {
        let version = self.version_last + 1;
        let loc = log.append(&Mutation::Flush { version })?;
        self.version_last = version;
        self.logged(loc, false);
        Ok(self.clear())
    }

    fn note_segment(&mut self, segment: u64, bytes: u64) {
        self.segments.entry(segment).or_default().total = bytes;
    }

    fn sweep_expired(&mut self, now_ms: u64, budget: usize) -> usize {
        if !self.removes_on_touch() {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget {
            match self.expiry.peek() {
                Some(Reverse((at, _))) if *at <= now_ms => {}
                _ => break,
            }
            let Some(Reverse((at, key))) = self.expiry.pop() else {
                break;
            };
            if self.remove_if(&key, |e| e.expires_at_ms != at).is_some() {
                self.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    fn due_expiries(&mut self, now_ms: u64, budget: usize) -> Vec<(Bytes, u64)> {
        let mut due = Vec::new();
        // Stale tickets count against the budget too, so one sweep stays bounded.
        for _ in 0..budget {
            match self.expiry.peek() {
                Some(Reverse((at, _))) if *at <= now_ms => {}
                _ => break,
            }
            let Some(Reverse((_, key))) = self.expiry.pop() else { break };
            // A stale ticket (the key rewritten or gone) finds nothing expired.
            let found = self.table.find(self.hash(&key), |e| e.key() == &key[..]);
            if let Some(e) = found.filter(|e| e.is_expired(now_ms)) {
                due.push((key, e.version));
            }
        }
        due
    }

    fn expire_later(&mut self, key: Bytes, due_ms: u64) {
        self.expiry.push(Reverse((due_ms, key)));
    }

    fn expire(
        &mut self,
        key: &[u8],
        version: u64,
        now_ms: u64,
        log: &mut dyn Log,
    ) -> Result<bool, String> {
        let found = self.table.find(self.hash(key), |e| e.key() == key);
        if !found.is_some_and(|e| e.version == version && e.is_expired(now_ms)) {
            return Ok(false);
        }
        // A tombstone, as a delete writes: replay must not bring the key back.
        let tombstone = self.version_last + 1;
        let mutation = Mutation::Delete { key: Bytes::copy_from_slice(key), version: tombstone };
        let loc = log.append(&mutation)?;
        self.version_last = tombstone;
        self.logged(loc, false);
        self.remove_if(key, |_| false);
        self.expired += 1;
        Ok(true)
    }

    fn snapshot_where(&self, now_ms: u64, mine: &dyn Fn(&[u8]) -> bool) -> Vec<Mutation> {
        let clock = Mutation::Clock { version: self.version_last };
        let clock = Some(clock).filter(|c| mine(c.key()));
        let hides = |e: &Entry| self.removes_on_touch() && e.is_expired(now_ms);
        let shown = |e: &&Entry| !hides(e) && mine(e.key());
        let entries = self.table.iter().filter(shown).map(|e| match e.loc {
            Some(loc) => Mutation::Index {
                key: e.data.slice(..e.key_len as usize),
                version: e.version,
                expires_at_ms: e.expires_at_ms,
                loc,
            },
            None => Mutation::Put {
                data: e.data.clone(),
                key_len: e.key_len as usize,
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            },
        });
        clock.into_iter().chain(entries).collect()
    }

    fn cache_fetched(&mut self, data: Bytes, key_len: usize, loc: Loc, log: &dyn Log) {
        if self.cache_budget == 0 {
            return;
        }
        let key = &data[..key_len];
        let value_len = data.len() - key_len;
        let hash = self.hash(key);
        let Some(e) = self.table.find_mut(hash, |e| e.key() == key) else { return };
        if e.loc != Some(loc) || e.cached() || value_len != e.value_len as usize {
            return;
        }
        e.data = data;
        self.cached_bytes += value_len as u64;
        self.cached_entries += 1;
        self.clock.push_back(hash);
        if self.cached_bytes > self.cache_budget {
            self.evict(log);
        }
    }

    fn relocate(&mut self, m: &Mutation, from: Loc, log: &mut dyn Log) -> Result<bool, String> {
        let key = m.key();
        let hash = self.hash(key);
        let current = self.table.find(hash, |e| e.key() == key);
        if current.is_none_or(|e| e.loc != Some(from)) {
            return Ok(false);
        }
        let Some(to) = log.append(m)? else { return Ok(false) };
        let e = self.table.find_mut(hash, |e| e.key() == key).expect("found just above");
        e.loc = Some(to);
        if let Some(s) = self.segments.get_mut(&from.segment()) {
            s.live -= u64::from(from.len);
        }
        self.logged(Some(to), true);
        Ok(true)
    }

    fn segments(&self) -> Vec<(u64, SegmentUse)> {
        self.segments.iter().map(|(s, u)| (*s, *u)).collect()
    }

    fn forget_segment(&mut self, segment: u64) {
        let gone = self.segments.remove(&segment);
        debug_assert!(gone.is_none_or(|u| u.live == 0), "forgot segment {segment} with live data");
    }

    fn drop_segment_keys(&mut self, segment: u64, expired_at: Option<u64>) -> u64 {
        let keys: Vec<Bytes> = self
            .table
            .iter()
            .filter(|e| e.loc.is_some_and(|l| l.segment() == segment))
            .filter(|e| expired_at.is_none_or(|now| e.expires_at_ms != 0 && e.is_expired(now)))
            .map(|e| Bytes::copy_from_slice(e.key()))
            .collect();
        for key in &keys {
            self.remove_if(key, |_| false);
        }
        if self.segments.get(&segment).is_some_and(|u| u.live == 0) {
            self.segments.remove(&segment);
        }
        keys.len() as u64
    }

    fn scan(
        &self,
        cursor: u64,
        count: usize,
        now_ms: u64,
        wanted: &dyn Fn(&[u8]) -> bool,
    ) -> (Vec<Bytes>, Option<u64>) {
        let count = count.max(1);
        let mut keys = Vec::new();
        let mut at = usize::try_from(cursor).unwrap_or(usize::MAX);
        let mut looked = 0;
        while at < self.slots.len() && keys.len() < count && looked < count.saturating_mul(10) {
            let slot = at as u32;
            // A freed position still holds its last hash; no entry claims it, so none is found.
            if let Some(e) = self.table.find(self.slots[at], |e| e.slot == slot)
                && !e.is_expired(now_ms)
                && wanted(e.key())
            {
                keys.push(Bytes::copy_from_slice(e.key()));
            }
            at += 1;
            looked += 1;
        }
        (keys, (at < self.slots.len()).then_some(at as u64))
    }

    fn next_version(&mut self, version: u64) {
        self.version_last = version.saturating_sub(1);
    }

    fn load(&mut self, m: Mutation, now_ms: u64, log: &mut dyn Log) -> Result<(), String> {
        let loc = log.append(&m)?;
        self.replay(m, loc, now_ms);
        Ok(())
    }

    fn version_of(&self, key: &[u8], now_ms: u64) -> u64 {
        let found = self.table.find(self.hash(key), |e| e.key() == key);
        found.filter(|e| !e.is_expired(now_ms)).map_or(0, |e| e.version)
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            keys: self.table.len() as u64,
            value_bytes: self.value_bytes,
            expired: self.expired,
            cached_bytes: self.cached_bytes,
            evicted: self.evicted,
            log_total_bytes: self.segments.values().map(|s| s.total).sum(),
            log_live_bytes: self.segments.values().map(|s| s.live).sum(),
            ttl_keys: self.ttl_keys as u64,
        }
    }
}

#[cfg(test)]
mod expiry_tests;
#[cfg(test)]
mod scan_tests;
#[cfg(test)]
mod tests;
