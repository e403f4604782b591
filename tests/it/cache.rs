//! Data larger than the value cache: values beyond `--cache-bytes` live only in the log and
//! are read back with direct I/O; memory stays near the cache budget, every value stays
//! right (also through CAS by value and a restart).

use corekv_schema::codec::{ErrorCode, Expected, Op, Reply};

use crate::harness::{Node, Wire, b, rss_bytes, stat_sum};

const KEYS: usize = 12_000;
const VALUE_BYTES: usize = 4_000;

fn value(i: usize, round: usize) -> bytes::Bytes {
    let head = format!("{i}:{round}:");
    let fill = char::from(b'a' + (i % 26) as u8).to_string().repeat(VALUE_BYTES - head.len());
    b(&(head + &fill))
}

fn key(i: usize) -> bytes::Bytes {
    b(&format!("big:{i:06}"))
}

fn write_all(w: &mut Wire, round: usize) {
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
        let ops = chunk.iter().map(|&i| Op::set(key(i), value(i, round))).collect();
        match w.call(Op::Batch(ops)) {
            Reply::Batch(r) => assert!(r.iter().all(|r| matches!(r, Reply::Written { .. }))),
            other => panic!("{other:?}"),
        }
    }
}

fn read_all(w: &mut Wire, round: usize) {
    // Batches and single gets take different paths (local fetches, forwarded fetches).
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let ops = chunk.iter().map(|&i| Op::get(key(i))).collect();
        match w.call(Op::Batch(ops)) {
            Reply::Batch(replies) => {
                for (&i, r) in chunk.iter().zip(replies) {
                    match r {
                        Reply::Value { value: v, .. } => assert_eq!(v, value(i, round), "key {i}"),
                        other => panic!("key {i}: {other:?}"),
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
    for i in (0..KEYS).step_by(7) {
        match w.call(Op::get(key(i))) {
            Reply::Value { value: v, .. } => assert_eq!(v, value(i, round), "key {i}"),
            other => panic!("key {i}: {other:?}"),
        }
    }
}

#[test]
fn data_larger_than_the_cache_is_served_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = 2 << 20;
    let flags = ["--cores", "2", "--cache-bytes", "2097152"];
    let mut node = Node::start_at(dir.path(), &flags);
    let mut w = node.wire();
    let rss_empty = rss_bytes(node.pid());
    write_all(&mut w, 0);
    let data = (KEYS * VALUE_BYTES) as u64;
    let cached = stat_sum(&mut w, |c| c.cached_bytes);
    // Within the budget, give or take the values written since the last sync.
    assert!(cached <= cache + (1 << 20), "cached {cached} B with a {cache} B budget");
    assert_eq!(stat_sum(&mut w, |c| c.value_bytes), data + (KEYS * 10) as u64);
    read_all(&mut w, 0);
    let fetches = stat_sum(&mut w, |c| c.fetches);
    assert!(fetches as usize >= KEYS / 2, "only {fetches} reads from the log");
    // The process grew by far less than the 48 MB of values: the cache, the index, and
    // buffers.
    let grown = rss_bytes(node.pid()).saturating_sub(rss_empty);
    assert!(grown < data / 4, "RSS grew {grown} B for {data} B of values, {cache} B cache");

    // CAS by value on values that are on disk only (read early, long evicted from the 2 MiB
    // cache): compared against what the log holds, which the fetch counter proves.
    for i in [3, 4_001, 8_999] {
        let fetches_before = stat_sum(&mut w, |c| c.fetches);
        let wrong = Op::Cas {
            key: key(i),
            expected: Expected::Value(value(i, 9)),
            new_value: value(i, 1),
            ttl_ms: 0,
        };
        match w.call(wrong) {
            Reply::Error(e) => assert_eq!(e.code, ErrorCode::ConditionFailed, "key {i}"),
            other => panic!("key {i}: {other:?}"),
        }
        let fetched = stat_sum(&mut w, |c| c.fetches) - fetches_before;
        assert!(fetched >= 1, "key {i}: the compare read nothing from the log");
        let right = Op::Cas {
            key: key(i),
            expected: Expected::Value(value(i, 0)),
            new_value: value(i, 1),
            ttl_ms: 0,
        };
        assert!(matches!(w.call(right), Reply::Written { .. }), "key {i}");
        assert!(
            matches!(w.call(Op::get(key(i))), Reply::Value { value: v, .. } if v == value(i, 1))
        );
        // Put it back so the read-back below stays uniform.
        assert!(matches!(w.call(Op::set(key(i), value(i, 0))), Reply::Written { .. }));
    }

    node.terminate();
    let node = Node::start_at(dir.path(), &flags);
    let mut w = node.wire();
    read_all(&mut w, 0);
    assert!(stat_sum(&mut w, |c| c.cached_bytes) <= cache + (1 << 20));
}
