//! `MemEngine::scan`: a key that lives through a whole walk is returned exactly once.

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
    let mut keys: Vec<_> = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    keys.sort();
    assert_eq!(keys, ["key:17", "key:27", "key:37", "key:47", "key:7"]);
    assert_eq!(e.scan(0, 1000, 5, &|k| k == b"short").0.len(), 1);
    assert_eq!(e.scan(0, 1000, 11, &|k| k == b"short").0.len(), 0);
    // A flush forgets every position.
    e.flush(&mut log).unwrap();
    assert_eq!(e.scan(0, 10, 0, &|_| true), (vec![], None));
}
