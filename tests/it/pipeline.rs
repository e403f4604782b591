//! Pipelining: many requests in one write, replies in request order, across cores.

use std::io::Write;

use corekv_schema::codec::{Op, Reply, SetOp};

use crate::harness::{Node, b};

#[test]
fn replies_come_back_in_request_order() {
    let node = Node::start(&["--cores", "2"]);
    let mut w = node.shard_wire(0);
    let n = 3000u64;
    // Mixed local and forwarded keys, sets then gets, all in one buffer (more than one
    // connection batch) so forwarded replies could overtake local ones if order were wrong.
    let mut bytes = bytes::BytesMut::new();
    for i in 0..n {
        let op = if i % 2 == 0 {
            Op::Set(SetOp {
                key: b(&format!("p{i}")),
                value: b(&i.to_string()),
                ..Default::default()
            })
        } else {
            Op::Get { key: b(&format!("p{}", i - 1)) }
        };
        bytes.extend_from_slice(&w.encode(1000 + i, op));
    }
    w.stream.write_all(&bytes).unwrap();
    for i in 0..n {
        let resp = w.recv().expect("reply");
        assert_eq!(resp.id, 1000 + i, "reply out of order");
        if i % 2 == 1 {
            match resp.reply {
                Reply::Value { value, .. } => assert_eq!(value, b(&(i - 1).to_string())),
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn many_connections_pipelining_concurrently() {
    let node = Node::start(&["--cores", "2", "--mesh-capacity-messages", "4"]);
    // A tiny mesh forces back-pressure: connections must stall, not fail or reorder.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = node.addr;
            std::thread::spawn(move || {
                let mut w = crate::harness::Wire::connect(addr);
                let mut bytes = bytes::BytesMut::new();
                for i in 0..500u64 {
                    let op = Op::Set(SetOp {
                        key: b(&format!("c{t}:{i}")),
                        value: b("v"),
                        ..Default::default()
                    });
                    bytes.extend_from_slice(&w.encode(i, op));
                }
                w.stream.write_all(&bytes).unwrap();
                for i in 0..500u64 {
                    let resp = w.recv().expect("reply");
                    assert_eq!(resp.id, i);
                    assert!(matches!(resp.reply, Reply::Written { .. }), "{:?}", resp.reply);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut w = node.wire();
    match w.call(Op::Stats) {
        Reply::Stats(s) => {
            assert_eq!(s.cores.iter().map(|c| c.keys).sum::<u64>(), 4000);
            let bp: u64 = s.cores.iter().map(|c| c.backpressure_events).sum();
            assert!(bp > 0, "a 4-message mesh under 8 pipelining clients must fill up: {s:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// A client that never stops sending cannot starve its core: another connection on the same
/// core is still answered, and SIGTERM still drains and exits 0.
#[test]
fn a_flooding_client_does_not_starve_the_core() {
    let mut node = Node::start(&["--cores", "1"]);
    let flood = crate::harness::Wire::connect(node.addr);
    let mut reader = flood.stream.try_clone().unwrap();
    let mut writer = flood.stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_w = stop.clone();
    let mut enc = corekv_schema::codec::Encoder::new();
    let mut chunk = bytes::BytesMut::new();
    for i in 0..256u64 {
        let op = Op::set(b(&format!("flood{}", i % 64)), b("v"));
        enc.request(&corekv_schema::codec::Request::new(i, op), &mut chunk);
    }
    let writer_thread = std::thread::spawn(move || {
        while !stop_w.load(std::sync::atomic::Ordering::Relaxed) {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let reader_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(std::io::Read::read(&mut reader, &mut buf), Ok(n) if n > 0) {}
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut other = node.wire();
    for _ in 0..20 {
        assert!(matches!(other.call(Op::Ping { payload: b("") }), Reply::Pong { .. }));
    }
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer_thread.join().unwrap();
    reader_thread.join().unwrap();
}
