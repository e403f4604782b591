//! Every operation against a real two-core node, including the cross-core paths.

use std::time::Duration;

use corekv_schema::codec::{Condition, ErrorCode, Expected, Op, Reply, SetOp};

use crate::harness::{Node, b, key_on_core};

fn set(k: &str, v: &str) -> Op {
    Op::set(b(k), b(v))
}

fn set_if(k: &str, v: &str, condition: Condition) -> Op {
    Op::set_if(b(k), b(v), condition)
}

fn get(k: &str) -> Op {
    Op::get(b(k))
}

fn err_code(r: &Reply) -> ErrorCode {
    match r {
        Reply::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn written(r: &Reply) -> u64 {
    match r {
        Reply::Written { version } => *version,
        other => panic!("expected Written, got {other:?}"),
    }
}

fn value(r: &Reply) -> (String, u64, Option<u64>) {
    match r {
        Reply::Value { value, version, ttl_ms } => {
            (String::from_utf8(value.to_vec()).unwrap(), *version, *ttl_ms)
        }
        other => panic!("expected Value, got {other:?}"),
    }
}

#[test]
fn every_operation_on_both_cores() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    for core in 0..2u16 {
        let k = key_on_core("op:", core, 2);
        assert_eq!(err_code(&w.call(get(&k))), ErrorCode::NotFound);
        // update = set-if-present: refused on a missing key
        assert_eq!(
            err_code(&w.call(set_if(&k, "x", Condition::IfPresent))),
            ErrorCode::ConditionFailed
        );
        let v1 = written(&w.call(set_if(&k, "one", Condition::IfAbsent)));
        assert_eq!(
            err_code(&w.call(set_if(&k, "two", Condition::IfAbsent))),
            ErrorCode::ConditionFailed
        );
        assert_eq!(value(&w.call(get(&k))), ("one".into(), v1, None));
        let v2 = written(&w.call(set_if(&k, "two", Condition::IfPresent)));
        assert!(v2 > v1);
        let v3 = written(&w.call(set(&k, "three")));
        assert_eq!(value(&w.call(get(&k))).0, "three");
        // delete: conditional miss, hit, then not found
        let del = |c| Op::Delete { key: b(&k), condition: c };
        assert_eq!(err_code(&w.call(del(Condition::IfVersion(v2)))), ErrorCode::ConditionFailed);
        assert_eq!(w.call(del(Condition::IfVersion(v3))), Reply::Deleted { version: v3 });
        assert_eq!(err_code(&w.call(del(Condition::Always))), ErrorCode::NotFound);
    }
    assert!(w.call(Op::Ping { payload: b("hi") }) == Reply::Pong { payload: b("hi") });
    match w.call(Op::Topology) {
        Reply::Topology(t) => {
            assert_eq!(t.cores, 2);
            assert_eq!(t.partitions, 1024);
            assert_eq!(t.hash, "crc32c");
            assert_eq!(t.shard_ports, node.shard_ports);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn compare_and_set_by_value_and_by_version() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    for core in 0..2u16 {
        let k = key_on_core("cas:", core, 2);
        let cas =
            |expected, new: &str| Op::Cas { key: b(&k), expected, new_value: b(new), ttl_ms: 0 };
        // By version 0 = create only if absent.
        let v1 = written(&w.call(cas(Expected::Version(0), "a")));
        match w.call(cas(Expected::Value(b("wrong")), "b")) {
            Reply::Error(e) => {
                assert_eq!(e.code, ErrorCode::ConditionFailed);
                assert_eq!(e.current_version, v1, "failed CAS reports the current version");
            }
            other => panic!("{other:?}"),
        }
        let v2 = written(&w.call(cas(Expected::Value(b("a")), "b")));
        assert_eq!(err_code(&w.call(cas(Expected::Version(v1), "c"))), ErrorCode::ConditionFailed);
        let v3 = written(&w.call(cas(Expected::Version(v2), "c")));
        assert_eq!(value(&w.call(get(&k))), ("c".into(), v3, None));
    }
}

#[test]
fn ttl_expires_lazily_and_actively() {
    let node = Node::start(&["--cores", "2", "--ttl-sweep-interval-ms", "20"]);
    let mut w = node.wire();
    let short = key_on_core("ttl-short:", 1, 2);
    let long = key_on_core("ttl-long:", 0, 2);
    let with_ttl =
        |k: &str, ttl_ms| Op::Set(SetOp { key: b(k), value: b("v"), ttl_ms, ..Default::default() });
    written(&w.call(with_ttl(&short, 300)));
    written(&w.call(with_ttl(&long, 60_000)));
    let (_, _, ttl) = value(&w.call(get(&short)));
    assert!(ttl.is_some_and(|t| t > 0 && t <= 300), "remaining ttl {ttl:?}");
    let (_, _, ttl) = value(&w.call(get(&long)));
    assert!(ttl.is_some_and(|t| t > 50_000), "remaining ttl {ttl:?}");
    // keep_ttl keeps it, a plain set clears it
    let keep =
        Op::Set(SetOp { key: b(&long), value: b("w"), keep_ttl: true, ..Default::default() });
    written(&w.call(keep));
    assert!(value(&w.call(get(&long))).2.is_some());
    written(&w.call(set(&long, "x")));
    assert_eq!(value(&w.call(get(&long))).2, None);

    // Active expiry: without touching the key, the sweep removes it (stats show 1 key left).
    std::thread::sleep(Duration::from_millis(600));
    match w.call(Op::Stats) {
        Reply::Stats(s) => {
            let keys: u64 = s.cores.iter().map(|c| c.keys).sum();
            let expired: u64 = s.cores.iter().map(|c| c.expired).sum();
            assert_eq!(keys, 1, "{s:?}");
            assert_eq!(expired, 1, "{s:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err_code(&w.call(get(&short))), ErrorCode::NotFound);
}

#[test]
fn batch_fans_out_across_cores_and_keeps_order() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    let keys: Vec<String> = (0..40).map(|i| format!("batch:{i}")).collect();
    let owners: Vec<u16> =
        keys.iter().map(|k| corekv_schema::placement::core_of(k.as_bytes(), 1024, 2)).collect();
    assert!(owners.contains(&0) && owners.contains(&1), "keys must span both cores");
    let sets = keys.iter().map(|k| set(k, &format!("v-{k}"))).collect();
    match w.call(Op::Batch(sets)) {
        Reply::Batch(replies) => {
            assert_eq!(replies.len(), keys.len());
            assert!(replies.iter().all(|r| matches!(r, Reply::Written { .. })), "{replies:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut ops: Vec<Op> = keys.iter().map(|k| get(k)).collect();
    ops.push(get("batch:missing"));
    ops.push(Op::Ping { payload: b("") });
    match w.call(Op::Batch(ops)) {
        Reply::Batch(replies) => {
            for (k, r) in keys.iter().zip(&replies) {
                assert_eq!(value(r).0, format!("v-{k}"));
            }
            assert_eq!(err_code(&replies[keys.len()]), ErrorCode::NotFound);
            assert_eq!(err_code(&replies[keys.len() + 1]), ErrorCode::BadRequest);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cross_core_forwarding_from_each_shard_port() {
    let node = Node::start(&["--cores", "2"]);
    assert_eq!(node.shard_ports.len(), 2);
    for (conn_core, key_core) in [(0usize, 1u16), (1, 0)] {
        // A connection on core `conn_core`'s own port, for a key owned by the other core.
        let mut w = node.shard_wire(conn_core);
        let k = key_on_core(&format!("fwd{conn_core}:"), key_core, 2);
        let v = written(&w.call(set(&k, "remote")));
        assert_eq!(value(&w.call(get(&k))), ("remote".into(), v, None));
        // And it is the same data seen from the owner's own port.
        let mut owner = node.shard_wire(key_core as usize);
        assert_eq!(value(&owner.call(get(&k))).0, "remote");
    }
    let mut w = node.wire();
    match w.call(Op::Stats) {
        Reply::Stats(s) => {
            assert_eq!(s.cores.len(), 2);
            for c in &s.cores {
                assert!(c.forwarded_out >= 2, "core {} forwarded {:?}", c.core, s);
                assert!(c.forwarded_in >= 2, "core {} served {:?}", c.core, s);
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn single_core_node_serves_everything_locally() {
    let node = Node::start(&["--cores", "1"]);
    let mut w = node.wire();
    for i in 0..50 {
        written(&w.call(set(&format!("k{i}"), "v")));
    }
    match w.call(Op::Stats) {
        Reply::Stats(s) => {
            assert_eq!(s.cores.len(), 1);
            assert_eq!(s.cores[0].keys, 50);
            assert_eq!(s.cores[0].forwarded_out, 0);
        }
        other => panic!("{other:?}"),
    }
}
