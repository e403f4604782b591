//! `MemEngine`: the in-memory shard engine (hashbrown + ahash), values held in RAM.
//!
//! Semantics every engine must keep (the durable engine reuses this file's tests):
//! - a key's version is assigned from one per-core counter, so it only grows, per key too;
//! - an expired key is absent for every operation, and is removed when touched (lazy expiry)
//!   or by [`Engine::sweep_expired`] (active expiry);
//! - `IfVersion(0)` holds exactly when the key is absent, so "create if absent" can be said
//!   with a version too;
//! - a failed condition reports the key's current version (0 when absent).
//!
//! Stored keys and values are copied out of the request frame: a `Bytes` slice would pin the
//! whole receive buffer in memory for as long as the value lives.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use bytes::Bytes;
use corekv_schema::codec::{Condition, ErrorCode, Expected, Op, Reply, SetOp, WireError};
use hashbrown::HashTable;

use super::record::Mutation;
use super::{Applied, Engine, EngineStats};

/// One stored key. Key and value share one allocation (`data = key ++ value`): a lookup
/// that finds the key has the value's first bytes in the same cache lines, and each key costs
/// one heap block instead of two.
#[derive(Clone, Debug)]
struct Entry {
    data: Bytes,
    key_len: u32,
    version: u64,
    /// Unix ms at which the key expires; 0 = never.
    expires_at_ms: u64,
}

impl Entry {
    fn new(key: &[u8], value: &[u8], version: u64, expires_at_ms: u64) -> Entry {
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        // Keys are bounded by `key_bytes_max`, far below u32::MAX.
        let key_len = u32::try_from(key.len()).expect("key length fits u32");
        Entry { data: Bytes::from(data), key_len, version, expires_at_ms }
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    fn value(&self) -> Bytes {
        self.data.slice(self.key_len as usize..)
    }

    fn value_eq(&self, other: &[u8]) -> bool {
        self.data[self.key_len as usize..] == *other
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }

    fn bytes(&self) -> u64 {
        self.data.len() as u64
    }
}

/// One key to look at when its time comes: (expires_at_ms, key). Stale when the key was since
/// deleted or given another expiry; the sweep checks the entry's expiry before removing it.
type ExpiryTicket = Reverse<(u64, Bytes)>;

/// Stale tickets allowed beyond the live keys with a TTL before the heap is rebuilt.
const EXPIRY_STALE_TICKETS_MAX: usize = 1024;

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
    version_last: u64,
    value_bytes: u64,
    expired: u64,
}

impl Default for MemEngine {
    fn default() -> Self {
        MemEngine::new()
    }
}

impl MemEngine {
    pub fn new() -> MemEngine {
        MemEngine {
            table: HashTable::new(),
            hasher: ahash::RandomState::new(),
            expiry: BinaryHeap::new(),
            ttl_keys: 0,
            version_last: 0,
            value_bytes: 0,
            expired: 0,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Removes `key` if present and expired (or if `version` matches, for the sweep).
    fn remove_if(&mut self, key: &[u8], keep: impl FnOnce(&Entry) -> bool) -> Option<Entry> {
        let hash = self.hash(key);
        let Ok(found) = self.table.find_entry(hash, |e| e.key() == key) else {
            return None;
        };
        if keep(found.get()) {
            return None;
        }
        let (entry, _) = found.remove();
        self.value_bytes -= entry.bytes();
        if entry.expires_at_ms != 0 {
            self.ttl_keys -= 1;
        }
        Some(entry)
    }

    fn get(&mut self, key: &[u8], now_ms: u64) -> Reply {
        let hash = self.hash(key);
        match self.table.find(hash, |e| e.key() == key) {
            None => return not_found(),
            Some(e) if !e.is_expired(now_ms) => {
                return Reply::Value {
                    value: e.value(),
                    version: e.version,
                    ttl_ms: (e.expires_at_ms != 0).then(|| e.expires_at_ms - now_ms),
                };
            }
            Some(_) => {}
        }
        // Lazy expiry: the key was found dead; drop it now.
        if self.remove_if(key, |e| !e.is_expired(now_ms)).is_some() {
            self.expired += 1;
        }
        not_found()
    }

    fn set(&mut self, set: SetOp, now_ms: u64) -> Applied {
        let hash = self.hash(&set.key);
        let MemEngine { table, hasher, version_last, expired, .. } = self;
        let entry = table.entry(hash, |e| e.key() == &set.key[..], |e| hasher.hash_one(e.key()));
        let (current, was_expired) = match &entry {
            hashbrown::hash_table::Entry::Occupied(o) => {
                let e = o.get();
                if e.is_expired(now_ms) { (None, true) } else { (Some(e), false) }
            }
            hashbrown::hash_table::Entry::Vacant(_) => (None, false),
        };
        if let Err(failed) = check(&set.condition, current) {
            return Applied { reply: failed, mutation: None };
        }
        let expires_at_ms = if set.keep_ttl {
            current.map_or(0, |e| e.expires_at_ms)
        } else if set.ttl_ms > 0 {
            now_ms.saturating_add(set.ttl_ms)
        } else {
            0
        };
        *version_last += 1;
        let version = *version_last;
        let fresh = Entry::new(&set.key, &set.value, version, expires_at_ms);
        let mutation = Mutation::Put {
            data: fresh.data.clone(),
            key_len: fresh.key_len as usize,
            version,
            expires_at_ms,
        };
        let fresh_bytes = fresh.bytes();
        let old = match entry {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                if was_expired {
                    *expired += 1;
                }
                Some(std::mem::replace(o.get_mut(), fresh))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(fresh);
                None
            }
        };
        // An expired old entry's ticket may already have fired: the key gets a new one.
        self.stored(&set.key, old.as_ref(), fresh_bytes, expires_at_ms, !was_expired);
        Applied { reply: Reply::Written { version }, mutation: Some(mutation) }
    }

    /// Bookkeeping after an entry of `fresh_bytes` expiring at `expires_at_ms` was stored for
    /// `key` in place of `old`: byte and TTL counts, and an expiry ticket unless the old one
    /// is still pending (`old_ticket_live`) and describes the entry (same deadline, as with
    /// keep_ttl). Shared by writes and replay so the two cannot drift apart.
    fn stored(
        &mut self,
        key: &[u8],
        old: Option<&Entry>,
        fresh_bytes: u64,
        expires_at_ms: u64,
        old_ticket_live: bool,
    ) {
        self.value_bytes += fresh_bytes;
        if let Some(old) = old {
            self.value_bytes -= old.bytes();
            if old.expires_at_ms != 0 {
                self.ttl_keys -= 1;
            }
        }
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

    fn delete(&mut self, key: &[u8], condition: &Condition, now_ms: u64) -> Applied {
        let hash = self.hash(key);
        let found = match self.table.find(hash, |e| e.key() == key) {
            None => return reply_only(not_found()),
            Some(e) if e.is_expired(now_ms) => None,
            Some(e) => Some(check(condition, Some(e))),
        };
        match found {
            None => {
                if self.remove_if(key, |e| !e.is_expired(now_ms)).is_some() {
                    self.expired += 1;
                }
                reply_only(not_found())
            }
            Some(Err(failed)) => reply_only(failed),
            Some(Ok(())) => match self.remove_if(key, |_| false) {
                Some(e) => {
                    // The tombstone takes a fresh version: it must order after the put it
                    // hides, and replay applies records in version order per key.
                    self.version_last += 1;
                    let key = Bytes::copy_from_slice(key);
                    let mutation = Mutation::Delete { key, version: self.version_last };
                    Applied {
                        reply: Reply::Deleted { version: e.version },
                        mutation: Some(mutation),
                    }
                }
                None => reply_only(not_found()),
            },
        }
    }
}

fn reply_only(reply: Reply) -> Applied {
    Applied { reply, mutation: None }
}

fn not_found() -> Reply {
    Reply::error(ErrorCode::NotFound, "key not found")
}

/// Whether `condition` holds for `current`; the error reply when it does not.
fn check(condition: &Condition, current: Option<&Entry>) -> Result<(), Reply> {
    let holds = match condition {
        Condition::Always => true,
        Condition::IfAbsent => current.is_none(),
        Condition::IfPresent => current.is_some(),
        Condition::IfVersion(v) => current.map_or(0, |e| e.version) == *v,
        Condition::IfValue(expected) => current.is_some_and(|e| e.value_eq(expected)),
    };
    if holds {
        return Ok(());
    }
    Err(Reply::Error(WireError {
        code: ErrorCode::ConditionFailed,
        message: "condition failed".into(),
        current_version: current.map_or(0, |e| e.version),
    }))
}

impl Engine for MemEngine {
    fn execute(&mut self, op: Op, now_ms: u64) -> Applied {
        match op {
            Op::Get { key } => reply_only(self.get(&key, now_ms)),
            Op::Set(set) => self.set(set, now_ms),
            Op::Delete { key, condition } => self.delete(&key, &condition, now_ms),
            Op::Cas { key, expected, new_value, ttl_ms } => {
                let condition = match expected {
                    Expected::Value(v) => Condition::IfValue(v),
                    Expected::Version(v) => Condition::IfVersion(v),
                };
                let set = SetOp { key, value: new_value, ttl_ms, keep_ttl: false, condition };
                self.set(set, now_ms)
            }
            other => reply_only(Reply::error(
                ErrorCode::BadRequest,
                format!("{} is not a single-key operation", other.name()),
            )),
        }
    }

    fn replay(&mut self, m: Mutation, now_ms: u64) {
        self.version_last = self.version_last.max(m.version());
        match m {
            Mutation::Delete { key, .. } => {
                self.remove_if(&key, |_| false);
            }
            Mutation::Clock { .. } => {}
            Mutation::Put { expires_at_ms, .. }
                if expires_at_ms != 0 && expires_at_ms <= now_ms =>
            {
                // Expired while the node was down: it hides any older value of the key.
                if self.remove_if(m.key(), |_| false).is_some() {
                    self.expired += 1;
                }
            }
            Mutation::Put { data, key_len, version, expires_at_ms } => {
                let key_len32 = u32::try_from(key_len).expect("record key_len is a u32");
                // Copy out of the segment buffer: a slice would keep the whole segment in memory.
                let data = Bytes::copy_from_slice(&data);
                let key = data.slice(..key_len);
                let fresh = Entry { data, key_len: key_len32, version, expires_at_ms };
                let hash = self.hash(fresh.key());
                let hasher = &self.hasher;
                let entry = self.table.entry(
                    hash,
                    |e| e.key() == fresh.key(),
                    |e| hasher.hash_one(e.key()),
                );
                let fresh_bytes = fresh.bytes();
                let old = match entry {
                    hashbrown::hash_table::Entry::Occupied(mut o) => {
                        Some(std::mem::replace(o.get_mut(), fresh))
                    }
                    hashbrown::hash_table::Entry::Vacant(v) => {
                        v.insert(fresh);
                        None
                    }
                };
                self.stored(&key, old.as_ref(), fresh_bytes, expires_at_ms, true);
            }
        }
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
        std::iter::once(clock)
            .chain(self.table.iter().filter(|e| !e.is_expired(now_ms)).map(|e| Mutation::Put {
                data: e.data.clone(),
                key_len: e.key_len as usize,
                version: e.version,
                expires_at_ms: e.expires_at_ms,
            }))
            .collect()
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            keys: self.table.len() as u64,
            value_bytes: self.value_bytes,
            expired: self.expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        e.execute(op, now_ms).reply
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
        assert_eq!(e.stats(), EngineStats { keys: 0, value_bytes: 0, expired: 0 });
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
        assert_eq!(e.stats(), EngineStats { keys: 0, value_bytes: 0, expired: 3 });
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
                replayed.replay(m, 0);
            }
        }
        assert!(replayed.expiry.len() <= 2 * 100 + EXPIRY_STALE_TICKETS_MAX);
        assert_eq!(replayed.ttl_keys, 100);
        assert_eq!(replayed.stats().value_bytes, 100 * ("session:0".len() as u64 + 1) + 90);
    }
}
