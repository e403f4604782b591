//! `MemEngine` unit tests: operations, conditions, expiry, the cache and its budget,
//! segment accounting and snapshots.

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
    let cas = |expected, new: &str| Op::Cas { key: b("k"), expected, new_value: b(new), ttl_ms: 0 };
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
    let with_ttl =
        |k: &str, ttl_ms| Op::Set(SetOp { key: b(k), value: b("v"), ttl_ms, ..Default::default() });
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
    let refused = exec(&mut e, &mut log, Op::Delete { key: b("k"), condition: Condition::Always });
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
