//! Codec round trips, limits, and refusals of damaged frames.

use super::*;
use crate::frame::take_frame;

fn roundtrip_request(req: &Request) -> Request {
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    enc.request(req, &mut out);
    let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
    decode_request(&frame, &Limits::DEFAULT).unwrap()
}

fn roundtrip_reply(reply: &Reply) -> Reply {
    let mut enc = Encoder::new();
    let mut out = BytesMut::new();
    enc.response(42, reply, &mut out);
    let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
    let resp = decode_response(&frame).unwrap();
    assert_eq!(resp.id, 42);
    resp.reply
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn all_ops() -> Vec<Op> {
    vec![
        Op::Get { key: b("k") },
        Op::Set(SetOp { key: b("k"), value: b("v"), ..Default::default() }),
        Op::Set(SetOp {
            key: b("k"),
            value: b(""),
            ttl_ms: 1500,
            keep_ttl: true,
            condition: Condition::IfValue(b("old")),
        }),
        Op::Set(SetOp {
            key: b("k"),
            value: b("v"),
            condition: Condition::IfVersion(9),
            ..Default::default()
        }),
        Op::Set(SetOp {
            key: b("k"),
            value: b("v"),
            condition: Condition::IfAbsent,
            ..Default::default()
        }),
        Op::Set(SetOp {
            key: b("k"),
            value: b("v"),
            condition: Condition::IfPresent,
            ..Default::default()
        }),
        Op::Delete { key: b("k"), condition: Condition::Always },
        Op::Delete { key: b("k"), condition: Condition::IfVersion(3) },
        Op::Cas { key: b("k"), expected: Expected::Value(b("a")), new_value: b("b"), ttl_ms: 0 },
        Op::Cas { key: b("k"), expected: Expected::Version(7), new_value: b("b"), ttl_ms: 10 },
        Op::Ping { payload: b("hi") },
        Op::Topology,
        Op::Stats,
        Op::Checkpoint,
        Op::Backup { dir: "/tmp/backup".into() },
    ]
}

fn cluster_topology() -> TopologyInfo {
    TopologyInfo {
        node_id: "2".into(),
        cores: 1,
        partitions: 2,
        hash: "crc32c".into(),
        shard_ports: Vec::new(),
        node: 2,
        epoch: 9,
        nodes: vec![
            NodeAddress { id: 1, native: "a:1".into(), resp: "a:2".into(), http: String::new() },
            NodeAddress { id: 2, native: "b:1".into(), resp: String::new(), http: "b:3".into() },
        ],
        partition_map: vec![
            PartitionInfo { replicas: vec![1, 2], leader: 2 },
            PartitionInfo { replicas: vec![2, 1], leader: 0 },
        ],
    }
}

#[test]
fn every_op_roundtrips() {
    for op in all_ops() {
        let req = Request {
            id: 77,
            op,
            durability: Durability::Sync,
            consistency: Consistency::Eventual,
            direct: true,
        };
        assert_eq!(roundtrip_request(&req), req);
    }
    let req = Request::new(1, Op::Batch(all_ops()));
    assert_eq!(roundtrip_request(&req), req);
}

#[test]
fn every_reply_roundtrips() {
    let replies = vec![
        Reply::Value { value: b("v"), version: 3, ttl_ms: None },
        Reply::Value { value: b(""), version: 4, ttl_ms: Some(999) },
        Reply::Written { version: 5 },
        Reply::Deleted { version: 6 },
        Reply::Pong { payload: b("x") },
        Reply::Topology(Box::new(TopologyInfo {
            node_id: "n1".into(),
            cores: 2,
            partitions: 1024,
            hash: "crc32c".into(),
            shard_ports: vec![7400, 7401],
            ..TopologyInfo::default()
        })),
        Reply::Topology(Box::new(cluster_topology())),
        Reply::Stats(StatsInfo {
            uptime_ms: 12,
            // Every field distinct, so a swap in encode or decode cannot round-trip.
            cores: vec![CoreStats {
                core: 1,
                keys: 2,
                value_bytes: 3,
                requests: 4,
                forwarded_out: 5,
                forwarded_in: 6,
                expired: 7,
                backpressure_events: 8,
                connections: 9,
                log_flushes: 10,
                log_records: 11,
                log_bytes: 12,
                log_error: "disk full".into(),
                cached_bytes: 13,
                evicted: 14,
                fetches: 15,
                log_disk_bytes: 16,
                log_live_bytes: 17,
                compacted_bytes: 18,
                segments_removed: 19,
                ttl_keys: 20,
            }],
        }),
        Reply::Error(WireError {
            code: ErrorCode::ConditionFailed,
            message: "nope".into(),
            current_version: 8,
            ..WireError::new(ErrorCode::Internal, "")
        }),
        Reply::Error(WireError {
            leader: 3,
            topology: Some(Box::new(cluster_topology())),
            ..WireError::new(ErrorCode::WrongNode, "partition 1 is led by node 3")
        }),
        Reply::AdminDone { message: "ok".into(), records: 5, bytes: 6 },
    ];
    for r in &replies {
        assert_eq!(&roundtrip_reply(r), r);
    }
    let batch = Reply::Batch(replies);
    assert_eq!(roundtrip_reply(&batch), batch);
    for code in ErrorCode::ALL {
        let r = Reply::error(code, "m");
        assert_eq!(roundtrip_reply(&r), r);
    }
}

#[test]
fn limits_give_non_fatal_too_large() {
    let limits = Limits { key_bytes_max: 4, value_bytes_max: 4, ..Limits::DEFAULT };
    let mut enc = Encoder::new();
    for (op, what) in [
        (Op::Get { key: b("12345") }, "key"),
        (Op::Set(SetOp { key: b("k"), value: b("12345"), ..Default::default() }), "value"),
    ] {
        let mut out = BytesMut::new();
        enc.request(&Request::new(5, op), &mut out);
        let frame = take_frame(&mut out, 1 << 20).unwrap().unwrap();
        let err = decode_request(&frame, &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge, "{what}");
        assert_eq!(err.id, Some(5));
        assert!(!err.fatal);
    }
}

#[test]
fn batch_limit_and_nesting() {
    let limits = Limits { batch_ops_max: 2, ..Limits::DEFAULT };
    let mut enc = Encoder::new();
    let three = Op::Batch(vec![Op::Topology, Op::Topology, Op::Topology]);
    let nested = Op::Batch(vec![Op::Batch(vec![])]);
    for (op, code) in [(three, ErrorCode::TooLarge), (nested, ErrorCode::BadRequest)] {
        let mut out = BytesMut::new();
        enc.request(&Request::new(9, op), &mut out);
        let frame = take_frame(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(decode_request(&frame, &limits).unwrap_err().code, code);
    }
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for len in 0..400usize {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.push(seed as u8);
        }
        // Whatever it says, it must say it without panicking.
        let _ = decode_request(&Bytes::from(v), &Limits::DEFAULT);
    }
}

#[test]
fn unknown_op_is_fatal_with_id() {
    let mut fbb = FlatBufferBuilder::new();
    let t = wire::Stats::create(&mut fbb, &wire::StatsArgs {});
    let root = wire::Request::create(
        &mut fbb,
        &wire::RequestArgs {
            id: 31,
            op_type: wire::Op(200),
            op: Some(t.as_union_value()),
            ..Default::default()
        },
    );
    fbb.finish_size_prefixed(root, None);
    let err =
        decode_request(&Bytes::copy_from_slice(fbb.finished_data()), &Limits::DEFAULT).unwrap_err();
    assert!(err.fatal);
    assert_eq!(err.id, Some(31));
    assert!(err.message.contains("unknown operation"), "{}", err.message);
}

/// Seeded mutation fuzzing of the request decoder, run on every test pass (cargo-fuzz
/// targets in `fuzz/` go deeper). Mutated valid frames reach far deeper into the
/// verifier than random bytes. Must never panic; whatever it accepts must round-trip.
#[test]
fn mutated_frames_never_panic_and_accepted_ones_roundtrip() {
    let mut enc = Encoder::new();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let mut ops = all_ops();
    ops.push(Op::Batch(all_ops()));
    for (i, op) in ops.into_iter().enumerate() {
        let mut out = BytesMut::new();
        enc.request(&Request::new(i as u64, op), &mut out);
        seeds.push(out.to_vec());
    }
    let seed = std::env::var("COREKV_FUZZ_SEED").ok().and_then(|s| s.parse().ok());
    let mut x: u64 = seed.unwrap_or(0x5DEE_CE66_D1CE_4E5B);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut accepted, rounds) = (0, 100_000);
    for _ in 0..rounds {
        let mut frame = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 4 {
            let len = frame.len() as u64;
            match next() % 5 {
                0 | 1 => frame[(next() % len) as usize] ^= 1 << (next() % 8),
                2 => frame[(next() % len) as usize] = next() as u8,
                3 => frame.truncate(((next() % len) as usize).max(1)),
                _ => frame.push(next() as u8),
            }
        }
        let frame = Bytes::from(frame);
        // The response decoder sees the same bytes: it must not panic either.
        let _ = decode_response(&frame);
        if let Ok(req) = decode_request(&frame, &Limits::DEFAULT) {
            accepted += 1;
            assert_eq!(roundtrip_request(&req), req);
        }
    }
    assert!(accepted > 0, "no mutant decoded: the seeds or mutations are off");
    assert!(accepted < rounds, "every mutant decoded: the verifier is not checking");
}
