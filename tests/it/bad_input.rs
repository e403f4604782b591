//! Hostile and broken input: each case gets an error frame where one can be sent, the
//! connection closes, and the node goes on serving fresh connections.

use std::io::Write;
use std::net::Shutdown;

use corekv_schema::codec::{ErrorCode, Op, Reply, SetOp};
use corekv_schema::wire;

use crate::harness::{Node, Wire, b};

/// After each bad case: a fresh connection still gets a correct answer.
fn still_serving(node: &Node) {
    let mut w = node.wire();
    let reply = w.call(Op::Set(SetOp { key: b("alive"), value: b("yes"), ..Default::default() }));
    assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
    assert!(matches!(w.call(Op::Get { key: b("alive") }), Reply::Value { .. }));
}

fn expect_error_then_close(w: &mut Wire, code: ErrorCode) {
    let resp = w.recv().expect("an error frame before the close");
    match resp.reply {
        Reply::Error(e) => assert_eq!(e.code, code, "{e:?}"),
        other => panic!("expected {code:?}, got {other:?}"),
    }
    assert!(w.recv().is_none(), "connection must close after a fatal frame");
}

#[test]
fn random_bytes() {
    let node = Node::start(&["--cores", "2"]);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..20 {
        let mut w = node.wire();
        // A plausible small length prefix, then garbage: the verifier must reject it.
        let len = 16 + (round * 13) as u32;
        let mut bytes = len.to_le_bytes().to_vec();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        w.stream.write_all(&bytes).unwrap();
        expect_error_then_close(&mut w, ErrorCode::BadRequest);
    }
    still_serving(&node);
}

#[test]
fn four_gib_length_prefix() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    w.stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    w.stream.write_all(b"more bytes that never add up").unwrap();
    expect_error_then_close(&mut w, ErrorCode::TooLarge);
    still_serving(&node);
}

#[test]
fn truncated_frame() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    let frame = w.encode(7, Op::Get { key: b("some-key") });
    w.stream.write_all(&frame[..frame.len() - 3]).unwrap();
    w.stream.shutdown(Shutdown::Write).unwrap();
    expect_error_then_close(&mut w, ErrorCode::BadRequest);
    still_serving(&node);
}

#[test]
fn unknown_operation_is_answered_with_its_id() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let t = wire::Stats::create(&mut fbb, &wire::StatsArgs {});
    let root = wire::Request::create(
        &mut fbb,
        &wire::RequestArgs {
            id: 99,
            op_type: wire::Op(77),
            op: Some(t.as_union_value()),
            ..Default::default()
        },
    );
    fbb.finish_size_prefixed(root, None);
    w.stream.write_all(fbb.finished_data()).unwrap();
    let resp = w.recv().expect("error frame");
    assert_eq!(resp.id, 99);
    assert!(
        matches!(
            &resp.reply,
            Reply::Error(e)
                if e.code == ErrorCode::BadRequest && e.message.contains("unknown operation")
        ),
        "{resp:?}"
    );
    assert!(w.recv().is_none());
    still_serving(&node);
}

#[test]
fn oversized_key_and_value_keep_the_connection() {
    let node = Node::start(&["--cores", "2", "--key-bytes-max", "8", "--value-bytes-max", "16"]);
    let mut w = node.wire();
    let long_key = Op::Get { key: b("123456789") };
    assert!(matches!(w.call(long_key), Reply::Error(e) if e.code == ErrorCode::TooLarge));
    let long_value =
        Op::Set(SetOp { key: b("k"), value: b(&"x".repeat(17)), ..Default::default() });
    assert!(matches!(w.call(long_value), Reply::Error(e) if e.code == ErrorCode::TooLarge));
    // Same connection still works.
    let ok = Op::Set(SetOp { key: b("k"), value: b("fits"), ..Default::default() });
    assert!(matches!(w.call(ok), Reply::Written { .. }));
}

#[test]
fn frame_over_the_limit_closes() {
    let node = Node::start(&[
        "--cores",
        "1",
        "--frame-bytes-max",
        "4096",
        "--value-bytes-max",
        "1024",
        "--key-bytes-max",
        "64",
    ]);
    let mut w = node.wire();
    let big = w.encode(
        1,
        Op::Set(SetOp { key: b("k"), value: b(&"y".repeat(8000)), ..Default::default() }),
    );
    // Only the prefix is needed for the node to refuse; it must not wait for the body.
    w.stream.write_all(&big[..4]).unwrap();
    expect_error_then_close(&mut w, ErrorCode::TooLarge);
    still_serving(&node);
}

/// Mutated valid frames (bit flips, truncation, garbage bytes) against a live node: every one
/// is answered or refused, and afterwards each core still serves on its own port. The same
/// mutations once found a verified buffer that panicked the decoder (an unknown union type
/// with a stray offset), which in the node would have killed a core.
#[test]
fn mutated_frames_never_take_down_a_core() {
    let node = Node::start(&["--cores", "2"]);
    let mut seed_wire = node.wire();
    let seeds: Vec<Vec<u8>> = [
        Op::get(b("k")),
        Op::set(b("key"), b("value")),
        Op::delete(b("k")),
        Op::Batch(vec![Op::get(b("a")), Op::set(b("b"), b("c"))]),
        Op::Topology,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, op)| seed_wire.encode(i as u64, op).to_vec())
    .collect();
    let mut x = 0x0123_4567_89AB_CDEFu64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..400 {
        let mut frame = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % frame.len() as u64) as usize;
            match next() % 3 {
                0 => frame[i] ^= 1 << (next() % 8),
                1 => frame[i] = next() as u8,
                _ => frame.truncate(i.max(5)),
            }
        }
        // Keep the prefix honest half the time so the verifier, not the framer, is tested.
        if round % 2 == 0 {
            let len = (frame.len() - 4) as u32;
            frame[..4].copy_from_slice(&len.to_le_bytes());
        }
        let mut w = node.shard_wire(round % 2);
        w.stream.write_all(&frame).unwrap();
        let _ = w.stream.shutdown(Shutdown::Write);
        // Whatever came back, the node must answer or close; never hang.
        while w.recv().is_some() {}
    }
    for core in 0..2 {
        let mut w = node.shard_wire(core);
        assert!(matches!(w.call(Op::Ping { payload: b("") }), Reply::Pong { .. }), "core {core}");
    }
}

/// A client trickling a frame one byte at a time is cut off once the frame has been arriving
/// for `partial_frame_timeout_ms`, however often bytes come.
#[test]
fn trickled_frame_times_out_from_its_start() {
    let node = Node::start(&["--cores", "1", "--partial-frame-timeout-ms", "400"]);
    let mut w = node.wire();
    let frame = w.encode(1, Op::set(b("k"), b(&"z".repeat(200))));
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in frame.iter().take(100) {
        if w.stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        if started.elapsed() > std::time::Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        expect_error_then_close(&mut w, ErrorCode::BadRequest);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "trickle was not cut off");
    still_serving(&node);
}

/// A batch whose reply would exceed the frame limit is refused as a whole, not built.
#[test]
fn batch_reply_over_the_frame_limit_is_refused() {
    let node = Node::start(&[
        "--cores",
        "2",
        "--value-bytes-max",
        "100000",
        "--frame-bytes-max",
        "1000000",
    ]);
    let mut w = node.wire();
    assert!(matches!(w.call(Op::set(b("big"), b(&"x".repeat(100_000)))), Reply::Written { .. }));
    let gets = |n| Op::Batch((0..n).map(|_| Op::get(b("big"))).collect());
    match w.call(gets(20)) {
        Reply::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(e.message.contains("split the batch"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.call(gets(5)), Reply::Batch(r) if r.len() == 5));
}
