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
//! - an expired key is absent for every operation, and is removed when touched (lazy expiry)
//!   or by [`Engine::sweep_expired`] (active expiry);
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
use super::{Applied, Engine, EngineStats, Fetch, Log, SegmentUse};

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
        }
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
            if !old_ticket_live || old.is_none_or(|o| o.expires_at_ms != expires_at_ms) {
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
        if self.remove_if(key, |e| !e.is_expired(now_ms)).is_some() {
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
                if self.remove_if(&key, |e| !e.is_expired(now_ms)).is_some() {
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
                if expires_at_ms != 0 && expires_at_ms <= now_ms =>
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

    fn snapshot(&self, now_ms: u64) -> Vec<Mutation> {
        let clock = Mutation::Clock { version: self.version_last };
        let entries = self.table.iter().filter(|e| !e.is_expired(now_ms)).map(|e| match e.loc {
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
        std::iter::once(clock).chain(entries).collect()
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

    fn drop_segment_keys(&mut self, segment: u64, expiring_only: bool) -> u64 {
        let keys: Vec<Bytes> = self
            .table
            .iter()
            .filter(|e| e.loc.is_some_and(|l| l.segment() == segment))
            .filter(|e| !expiring_only || e.expires_at_ms != 0)
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
mod tests {
    use super::*;
    use crate::storage::NoLog;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn set(k: &str, v: &str) -> Op {
        Op::set(b(k), b(v))
    }

    fn set_if(k: &str, v: &str, condition: Condition) -> Op {
        Op::set_if(b(k), b(v), condition)
    }

    fn get(k: &str) -> Op {
        Op::get(b(k))
    }

    fn run(e: &mut MemEngine, op: Op, now_ms: u64) -> Reply {
        match e.execute(op, now_ms, &mut NoLog, None) {
            Applied::Done(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    fn code(r: &Reply) -> Option<ErrorCode> {
        match r {
            Reply::Error(e) => Some(e.code),
            _ => None,
        }
    }

    fn version(r: &Reply) -> u64 {
        match r {
            Reply::Written { version } | Reply::Deleted { version } => *version,
            Reply::Value { version, .. } => *version,
            other => panic!("no version in {other:?}"),
        }
    }

    #[test]
    fn set_get_delete() {
        let mut e = MemEngine::new();
        assert_eq!(code(&run(&mut e, get("a"), 0)), Some(ErrorCode::NotFound));
        let v1 = version(&run(&mut e, set("a", "1"), 0));
        match run(&mut e, get("a"), 0) {
            Reply::Value { value, version, ttl_ms } => {
                assert_eq!(value, b("1"));
                assert_eq!(version, v1);
                assert_eq!(ttl_ms, None);
            }
            other => panic!("{other:?}"),
        }
        let v2 = version(&run(&mut e, set("a", "22"), 0));
        assert!(v2 > v1);
        assert_eq!(e.stats().value_bytes, 3);
        let del = run(&mut e, Op::Delete { key: b("a"), condition: Condition::Always }, 0);
        assert_eq!(del, Reply::Deleted { version: v2 });
        let again = run(&mut e, Op::Delete { key: b("a"), condition: Condition::Always }, 0);
        assert_eq!(code(&again), Some(ErrorCode::NotFound));
        assert_eq!(e.stats(), EngineStats::default());
    }

    #[test]
    fn conditions() {
        let mut e = MemEngine::new();
        assert_eq!(
            code(&run(&mut e, set_if("k", "x", Condition::IfPresent), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        let v1 = version(&run(&mut e, set_if("k", "a", Condition::IfAbsent), 0));
        match run(&mut e, set_if("k", "b", Condition::IfAbsent), 0) {
            Reply::Error(err) => {
                assert_eq!(err.code, ErrorCode::ConditionFailed);
                assert_eq!(err.current_version, v1);
            }
            other => panic!("{other:?}"),
        }
        let v2 = version(&run(&mut e, set_if("k", "b", Condition::IfPresent), 0));
        assert_eq!(
            code(&run(&mut e, set_if("k", "c", Condition::IfVersion(v1)), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        let v3 = version(&run(&mut e, set_if("k", "c", Condition::IfVersion(v2)), 0));
        assert_eq!(
            code(&run(&mut e, set_if("k", "d", Condition::IfValue(b("b"))), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        version(&run(&mut e, set_if("k", "d", Condition::IfValue(b("c"))), 0));
        assert!(v3 > v2);
        // IfVersion(0) means "absent".
        version(&run(&mut e, set_if("new", "1", Condition::IfVersion(0)), 0));
        assert_eq!(
            code(&run(&mut e, set_if("new", "2", Condition::IfVersion(0)), 0)),
            Some(ErrorCode::ConditionFailed)
        );
    }

    #[test]
    fn cas_by_value_and_version() {
        let mut e = MemEngine::new();
        let v = version(&run(&mut e, set("k", "a"), 0));
        let cas =
            |expected, new: &str| Op::Cas { key: b("k"), expected, new_value: b(new), ttl_ms: 0 };
        assert_eq!(
            code(&run(&mut e, cas(Expected::Value(b("z")), "b"), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        let v2 = version(&run(&mut e, cas(Expected::Value(b("a")), "b"), 0));
        assert_eq!(
            code(&run(&mut e, cas(Expected::Version(v), "c"), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        version(&run(&mut e, cas(Expected::Version(v2), "c"), 0));
        assert!(matches!(run(&mut e, get("k"), 0), Reply::Value { value, .. } if value == b("c")));
    }

    #[test]
    fn delete_conditions() {
        let mut e = MemEngine::new();
        let v = version(&run(&mut e, set("k", "a"), 0));
        let del = |c| Op::Delete { key: b("k"), condition: c };
        assert_eq!(
            code(&run(&mut e, del(Condition::IfVersion(v + 1)), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        assert_eq!(
            code(&run(&mut e, del(Condition::IfValue(b("b"))), 0)),
            Some(ErrorCode::ConditionFailed)
        );
        assert_eq!(run(&mut e, del(Condition::IfValue(b("a"))), 0), Reply::Deleted { version: v });
    }

    #[test]
    fn ttl_lazy_and_active() {
        let mut e = MemEngine::new();
        let with_ttl = |k: &str, ttl_ms| {
            Op::Set(SetOp { key: b(k), value: b("v"), ttl_ms, ..Default::default() })
        };
        run(&mut e, with_ttl("a", 100), 1_000);
        run(&mut e, with_ttl("b", 100), 1_000);
        run(&mut e, with_ttl("c", 500), 1_000);
        match run(&mut e, get("a"), 1_040) {
            Reply::Value { ttl_ms, .. } => assert_eq!(ttl_ms, Some(60)),
            other => panic!("{other:?}"),
        }
        // Lazy: reading at the expiry instant already misses.
        assert_eq!(code(&run(&mut e, get("a"), 1_100)), Some(ErrorCode::NotFound));
        assert_eq!(e.stats().expired, 1);
        // Active: the sweep removes b, leaves c, and skips a's stale ticket.
        assert_eq!(e.sweep_expired(1_200, 100), 1);
        assert_eq!(e.stats().keys, 1);
        assert_eq!(e.sweep_expired(1_500, 100), 1);
        assert_eq!(e.stats(), EngineStats { expired: 3, ..EngineStats::default() });
    }

    #[test]
    fn overwrite_clears_or_keeps_ttl() {
        let mut e = MemEngine::new();
        run(
            &mut e,
            Op::Set(SetOp { key: b("k"), value: b("v"), ttl_ms: 100, ..Default::default() }),
            0,
        );
        run(
            &mut e,
            Op::Set(SetOp { key: b("k"), value: b("w"), keep_ttl: true, ..Default::default() }),
            10,
        );
        assert!(matches!(run(&mut e, get("k"), 50), Reply::Value { ttl_ms: Some(50), .. }));
        run(&mut e, set("k", "x"), 60);
        // The old ticket must not expire the rewritten key.
        assert_eq!(e.sweep_expired(1_000, 100), 0);
        assert!(matches!(run(&mut e, get("k"), 1_000), Reply::Value { ttl_ms: None, .. }));
    }

    #[test]
    fn sweep_respects_budget() {
        let mut e = MemEngine::new();
        for i in 0..10 {
            run(
                &mut e,
                Op::Set(SetOp {
                    key: b(&format!("k{i}")),
                    value: b("v"),
                    ttl_ms: 1,
                    ..Default::default()
                }),
                0,
            );
        }
        assert_eq!(e.sweep_expired(5, 3), 3);
        assert_eq!(e.sweep_expired(5, 100), 7);
    }

    #[test]
    fn refreshing_long_ttls_keeps_the_expiry_heap_bounded() {
        let mut e = MemEngine::new();
        for round in 0..50u64 {
            for i in 0..100 {
                let op = Op::Set(SetOp {
                    key: b(&format!("session:{i}")),
                    value: b("v"),
                    ttl_ms: 1_800_000,
                    ..Default::default()
                });
                run(&mut e, op, round);
            }
        }
        assert!(e.expiry.len() <= 2 * 100 + EXPIRY_STALE_TICKETS_MAX, "{}", e.expiry.len());
        assert_eq!(e.ttl_keys, 100);
        // keep_ttl rewrites add no tickets at all.
        let before = e.expiry.len();
        for i in 0..100 {
            let op = Op::Set(SetOp {
                key: b(&format!("session:{i}")),
                value: b("w"),
                keep_ttl: true,
                ..Default::default()
            });
            run(&mut e, op, 100);
        }
        assert_eq!(e.expiry.len(), before);
        // Everything still expires on time, exactly once.
        assert_eq!(e.sweep_expired(1_800_000 + 100, usize::MAX), 100);
        assert_eq!(e.stats().keys, 0);
        assert_eq!(e.ttl_keys, 0);
    }

    /// Replay goes through the same bookkeeping as writes: refreshed TTLs in a long log do not
    /// grow the expiry heap without bound, and byte counts match a table built by writes.
    #[test]
    fn replay_shares_write_bookkeeping() {
        let mut replayed = MemEngine::new();
        let mut version = 0;
        for round in 0..50u64 {
            for i in 0..100 {
                version += 1;
                let key = format!("session:{i}");
                let m = Mutation::put(key.as_bytes(), b"v", version, 1_800_000 + round);
                replayed.replay(m, None, 0);
            }
        }
        assert!(replayed.expiry.len() <= 2 * 100 + EXPIRY_STALE_TICKETS_MAX);
        assert_eq!(replayed.ttl_keys, 100);
        assert_eq!(replayed.stats().value_bytes, 100 * ("session:0".len() as u64 + 1) + 90);
    }

    /// A log in memory: records get consecutive locations in segment `segment`; records up
    /// to `durable` (and every earlier segment) are durable.
    #[derive(Default)]
    struct MemLog {
        records: Vec<(Loc, Mutation)>,
        segment: u64,
        end: u64,
        durable: u64,
        refuse: bool,
    }

    impl MemLog {
        fn new() -> MemLog {
            MemLog { segment: 1, ..MemLog::default() }
        }

        fn value_at(&self, loc: Loc) -> Bytes {
            match self.records.iter().find(|(l, _)| *l == loc) {
                Some((_, Mutation::Put { data, key_len, .. })) => data.slice(*key_len..),
                other => panic!("no put at {loc:?}: {other:?}"),
            }
        }
    }

    impl Log for MemLog {
        fn append(&mut self, m: &Mutation) -> Result<Option<Loc>, String> {
            if self.refuse {
                return Err("disk full".into());
            }
            let loc = Loc::new(self.segment, self.end, m.encoded_len());
            self.end += m.encoded_len() as u64;
            self.records.push((loc, m.clone()));
            Ok(Some(loc))
        }

        fn is_durable(&self, loc: Loc) -> bool {
            loc.segment() < self.segment || loc.end() <= self.durable
        }
    }

    fn failed_with(applied: &Applied, code: ErrorCode) -> bool {
        matches!(applied, Applied::Done(Reply::Error(w)) if w.code == code)
    }

    fn exec(e: &mut MemEngine, log: &mut MemLog, op: Op) -> Applied {
        e.execute(op, 0, log, None)
    }

    #[test]
    fn cache_stays_within_budget_and_cold_values_are_fetched() {
        let mut e = MemEngine::with_cache(1_000);
        let mut log = MemLog::new();
        let value = |i: usize| b(&format!("{i:0100}"));
        for i in 0..100 {
            exec(&mut e, &mut log, Op::set(b(&format!("k{i}")), value(i)));
        }
        // Nothing is durable yet: every value must stay.
        assert_eq!(e.stats().cached_bytes, 100 * 100);
        log.durable = log.end;
        exec(&mut e, &mut log, Op::set(b("last"), value(0)));
        let stats = e.stats();
        assert!(stats.cached_bytes <= 1_000 + 100, "{stats:?}");
        assert!(stats.evicted >= 89, "{stats:?}");
        assert_eq!(stats.value_bytes, stats.log_live_bytes - 101 * HEADER_BYTES as u64);
        let mut fetched = 0;
        for i in 0..100 {
            let key = b(&format!("k{i}"));
            match exec(&mut e, &mut log, Op::get(key.clone())) {
                Applied::Done(Reply::Value { value: v, .. }) => assert_eq!(v, value(i)),
                Applied::Fetch(f) => {
                    fetched += 1;
                    assert_eq!(log.value_at(f.loc), value(i));
                    assert_eq!(f.key_len as usize, key.len());
                    let data = [&key[..], &log.value_at(f.loc)[..]].concat();
                    e.cache_fetched(Bytes::from(data), key.len(), f.loc, &log);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(fetched >= 89, "{fetched}");
        assert!(e.stats().cached_bytes <= 1_000 + 100, "{:?}", e.stats());
    }

    #[test]
    fn compare_by_value_reads_a_cold_value_first() {
        let mut e = MemEngine::with_cache(0);
        let mut log = MemLog::new();
        exec(&mut e, &mut log, Op::set(b("k"), b("old")));
        log.durable = log.end;
        exec(&mut e, &mut log, Op::set(b("other"), b("x")));
        assert_eq!(e.stats().cached_bytes, 1, "only the not-yet-durable value stays");
        let cas = |expected: &str| Op::Cas {
            key: b("k"),
            expected: Expected::Value(b(expected)),
            new_value: b("new"),
            ttl_ms: 0,
        };
        // A different length cannot match: decided without reading.
        let short = exec(&mut e, &mut log, cas("ol"));
        assert!(failed_with(&short, ErrorCode::ConditionFailed));
        for (expected, wins) in [("odd", false), ("old", true)] {
            let Applied::NeedValue(op, loc) = exec(&mut e, &mut log, cas(expected)) else {
                panic!("a cold compare must ask for the value");
            };
            let value = log.value_at(loc);
            match e.execute(op, 0, &mut log, Some((loc, &value))) {
                Applied::Done(Reply::Written { .. }) => assert!(wins, "{expected}"),
                Applied::Done(Reply::Error(w)) => {
                    assert!(!wins, "{expected}");
                    assert_eq!(w.code, ErrorCode::ConditionFailed);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            exec(&mut e, &mut log, Op::get(b("k"))),
            Applied::Done(Reply::Value { value, .. }) if value == b("new")
        ));
    }

    #[test]
    fn a_write_the_log_refuses_changes_nothing() {
        let mut e = MemEngine::new();
        let mut log = MemLog::new();
        exec(&mut e, &mut log, Op::set(b("k"), b("v1")));
        log.refuse = true;
        let refused = exec(&mut e, &mut log, Op::set(b("k"), b("v2")));
        assert!(failed_with(&refused, ErrorCode::Unavailable));
        let refused =
            exec(&mut e, &mut log, Op::Delete { key: b("k"), condition: Condition::Always });
        assert!(failed_with(&refused, ErrorCode::Unavailable));
        assert!(matches!(
            exec(&mut e, &mut log, Op::get(b("k"))),
            Applied::Done(Reply::Value { value, version: 1, .. }) if value == b("v1")
        ));
    }

    #[test]
    fn relocate_moves_only_current_puts_and_tracks_live_bytes() {
        let mut e = MemEngine::new();
        let mut log = MemLog::new();
        exec(&mut e, &mut log, Op::set(b("a"), b("1")));
        exec(&mut e, &mut log, Op::set(b("b"), b("2")));
        exec(&mut e, &mut log, Op::set(b("a"), b("3")));
        exec(&mut e, &mut log, Op::Delete { key: b("b"), condition: Condition::Always });
        exec(&mut e, &mut log, Op::set(b("c"), b("4")));
        let rec = (HEADER_BYTES + 2) as u64;
        let seg1 = e.segments()[0].1;
        assert_eq!(seg1, SegmentUse { total: 5 * rec - 1, live: 2 * rec });
        // Compact segment 1 into segment 2.
        let old = std::mem::take(&mut log.records);
        log.segment = 2;
        log.end = 0;
        let moved: Vec<bool> = old
            .iter()
            .filter(|(_, m)| matches!(m, Mutation::Put { .. }))
            .map(|(loc, m)| e.relocate(m, *loc, &mut log).unwrap())
            .collect();
        assert_eq!(moved, [false, false, true, true]);
        assert_eq!(
            e.segments(),
            [
                (1, SegmentUse { total: 5 * rec - 1, live: 0 }),
                (2, SegmentUse { total: 2 * rec, live: 2 * rec }),
            ]
        );
        e.forget_segment(1);
        assert!(matches!(
            exec(&mut e, &mut log, Op::get(b("a"))),
            Applied::Done(Reply::Value { value, .. }) if value == b("3")
        ));
        // A checkpoint then points at the new places.
        let snap = e.snapshot(0);
        assert!(snap.iter().all(|m| match m {
            Mutation::Index { loc, .. } => loc.segment() == 2,
            Mutation::Clock { version } => *version == 5,
            other => panic!("{other:?}"),
        }));
    }

    /// A checkpoint's index records come back cold, with the right lengths, and values are
    /// fetched from where they point.
    #[test]
    fn index_records_replay_cold() {
        let mut e = MemEngine::new();
        let mut log = MemLog::new();
        exec(&mut e, &mut log, Op::set(b("key"), b("value")));
        let snap = e.snapshot(0);
        let mut restored = MemEngine::new();
        for m in snap {
            restored.replay(m, None, 0);
        }
        let stats = restored.stats();
        assert_eq!((stats.keys, stats.value_bytes, stats.cached_bytes), (1, 8, 0));
        assert_eq!(stats.log_live_bytes, (HEADER_BYTES + 8) as u64);
        let Applied::Fetch(f) = exec(&mut restored, &mut log, Op::get(b("key"))) else {
            panic!("a restored value is read from the log");
        };
        assert_eq!(log.value_at(f.loc), b("value"));
        assert_eq!(f.version, 1);
    }

    /// A flush is logged first, empties the table and the live bytes, and replays the same.
    #[test]
    fn flush_logs_then_clears_and_replays() {
        let mut e = MemEngine::new();
        let mut log = MemLog::new();
        for k in ["a", "b", "c"] {
            exec(&mut e, &mut log, Op::set(b(k), b("v")));
        }
        assert_eq!(e.flush(&mut log), Ok(3));
        exec(&mut e, &mut log, Op::set(b("after"), b("w")));
        assert_eq!(e.stats().keys, 1);
        assert_eq!(e.segments()[0].1.live, (HEADER_BYTES + 6) as u64);
        let mut replayed = MemEngine::new();
        for (loc, m) in &log.records {
            replayed.replay(m.clone(), Some(*loc), 0);
        }
        assert_eq!(replayed.stats().keys, 1);
        assert!(matches!(
            exec(&mut replayed, &mut log, Op::get(b("a"))),
            Applied::Done(Reply::Error(_))
        ));
        log.refuse = true;
        assert!(e.flush(&mut log).is_err());
        assert_eq!(e.stats().keys, 1, "a flush the log refused changes nothing");
    }

    /// An empty value is always "in memory": it never enters the CLOCK, so eviction cannot
    /// count it twice, and the cache's counts stay those of the table.
    #[test]
    fn empty_values_are_never_evicted() {
        let mut e = MemEngine::with_cache(0);
        let mut log = MemLog::new();
        exec(&mut e, &mut log, Op::set(b("empty"), b("")));
        exec(&mut e, &mut log, Op::set(b("x"), b("1")));
        log.durable = log.end;
        for round in 0..3 {
            exec(&mut e, &mut log, Op::set(b(&format!("y{round}")), b("v")));
            log.durable = log.end;
        }
        assert_eq!(e.stats().evicted, 3, "x, y0 and y1; never the empty value");
        exec(&mut e, &mut log, Op::Delete { key: b("empty"), condition: Condition::Always });
        let cached = e.table.iter().filter(|x| x.cached()).count();
        assert_eq!(e.cached_entries, cached);
        assert_eq!(e.stats().cached_bytes, 1, "y2, not durable when written");
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use std::collections::HashSet;

    fn key(i: u32) -> Bytes {
        Bytes::from(format!("key:{i}"))
    }

    fn put(e: &mut MemEngine, i: u32) {
        let mut log = crate::storage::NoLog;
        let applied = e.execute(Op::set(key(i), Bytes::from_static(b"v")), 0, &mut log, None);
        assert!(matches!(applied, Applied::Done(Reply::Written { .. })));
    }

    fn del(e: &mut MemEngine, i: u32) {
        let mut log = crate::storage::NoLog;
        e.execute(Op::Delete { key: key(i), condition: Condition::Always }, 0, &mut log, None);
    }

    /// Keys present for a whole scan come back exactly once, although the table grows
    /// (rehashing every entry) and keys come and go between the calls.
    #[test]
    fn scan_returns_every_steady_key_once_through_growth_and_churn() {
        let mut e = MemEngine::new();
        // 880 keys fill hashbrown's 1024 buckets nearly to the brim: the puts below grow it.
        for i in 0..880 {
            put(&mut e, i);
        }
        let buckets_before = e.table.capacity();
        let steady: HashSet<Bytes> = (0..880).filter(|i| i % 3 != 0).map(key).collect();
        let mut seen: Vec<Bytes> = Vec::new();
        let mut cursor = 0;
        let mut round = 0u32;
        loop {
            let (keys, next) = e.scan(cursor, 7, 0, &|_| true);
            assert!(keys.len() <= 7);
            seen.extend(keys);
            // Churn: drop the keys that are not steady, add new ones (the table grows and
            // rehashes), and delete some of the new ones again.
            for i in (round * 3..round * 3 + 3).filter(|i| i % 3 == 0 && *i < 880) {
                del(&mut e, i);
            }
            // (Fewer new positions per call than a call walks, or the walk never ends: the
            // same holds for Redis's SCAN.)
            for i in 0..6 {
                put(&mut e, 100_000 + round * 6 + i);
            }
            for i in (0..6).step_by(2) {
                del(&mut e, 100_000 + round * 6 + i);
            }
            round += 1;
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        assert!(e.table.capacity() > buckets_before, "the table grew during the walk");
        let mut counted: std::collections::HashMap<Bytes, u32> = Default::default();
        for k in &seen {
            *counted.entry(k.clone()).or_default() += 1;
        }
        for k in &steady {
            assert_eq!(counted.get(k), Some(&1), "{k:?}");
        }
        assert!(counted.values().all(|&n| n == 1), "no key twice");
    }

    #[test]
    fn scan_filters_and_skips_expired_keys() {
        let mut e = MemEngine::new();
        let mut log = crate::storage::NoLog;
        for i in 0..50 {
            put(&mut e, i);
        }
        let set = SetOp {
            key: Bytes::from_static(b"short"),
            value: Bytes::from_static(b"v"),
            ttl_ms: 10,
            ..Default::default()
        };
        e.execute(Op::Set(set), 0, &mut log, None);
        let (keys, next) = e.scan(0, 1000, 5, &|k| k.ends_with(b"7"));
        assert_eq!(next, None);
        let mut keys: Vec<_> =
            keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        keys.sort();
        assert_eq!(keys, ["key:17", "key:27", "key:37", "key:47", "key:7"]);
        assert_eq!(e.scan(0, 1000, 5, &|k| k == b"short").0.len(), 1);
        assert_eq!(e.scan(0, 1000, 11, &|k| k == b"short").0.len(), 0);
        // A flush forgets every position.
        e.flush(&mut log).unwrap();
        assert_eq!(e.scan(0, 10, 0, &|_| true), (vec![], None));
    }
}
