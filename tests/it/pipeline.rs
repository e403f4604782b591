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
            Op::Get {
                key: b(&format!("p{}", i - 1)),
            }
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
                    assert!(
                        matches!(resp.reply, Reply::Written { .. }),
                        "{:?}",
                        resp.reply
                    );
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
            assert!(
                bp > 0,
                "a 4-message mesh under 8 pipelining clients must fill up: {s:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}
