//! A batch on one key is atomic in cluster mode (issue 12): `GETSET`, `GETDEL` and
//! `SET … GET` read and write at one point of the partition's log, through any node.
//!
//! Several clients, each on a different node, run `GETSET` on one key with values of their
//! own. If each is atomic, the old values returned, plus the final value, are exactly the
//! initial value and every value written, each once: no client gets back its own value, and
//! no two get the same old value. Run concurrently as separate proposals (as before this
//! change), a `GETSET` could return the value it had just written. Pipelined, a batch and the
//! requests around it on the same key apply in the order the connection sent them: a batch of
//! two pieces followed by a write ended with the batch's second value, not the later write's,
//! before a batch became a barrier in its connection.

use std::collections::HashSet;

use std::io::Write;

use corekv_schema::codec::{Op, Reply};

use super::{Cluster, value_of};
use crate::resp::Resp;

const CLIENTS: usize = 6;
const ROUNDS: usize = 60;

#[test]
fn getset_getdel_and_set_get_are_atomic_through_every_node() {
    let c = Cluster::start(3);
    c.wait_writable();
    let mut r = Resp::connect(c.node(1).resp);
    assert_eq!(r.call(&["SET", "atomic", "v0"]), "+OK\r\n");
    let nodes: Vec<_> = (1..=3).map(|id| c.node(id).resp).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let addr = nodes[t % nodes.len()];
            std::thread::spawn(move || {
                let mut r = Resp::connect(addr);
                let mut olds = Vec::new();
                for i in 0..ROUNDS {
                    let mine = format!("c{t}-{i}");
                    let old = r.call(&["GETSET", "atomic", &mine]);
                    assert!(old.starts_with('$'), "GETSET answered {old:?}");
                    assert!(
                        !old.ends_with(&format!("{mine}\r\n")),
                        "GETSET returned its own {mine}"
                    );
                    olds.push(old.lines().nth(1).expect("a value").to_string());
                }
                olds
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for client in clients {
        for old in client.join().unwrap() {
            assert!(seen.insert(old.clone()), "two GETSETs both replaced {old}");
        }
    }
    let last = r.call(&["GET", "atomic"]);
    let last = last.lines().nth(1).expect("a value").to_string();
    assert!(seen.insert(last.clone()));
    let mut written: HashSet<String> =
        (0..CLIENTS).flat_map(|t| (0..ROUNDS).map(move |i| format!("c{t}-{i}"))).collect();
    written.insert("v0".into());
    assert_eq!(seen, written, "old values and the final one are each value written, once");

    // The other one-key batches, through a node that leads nothing in particular.
    let mut r = Resp::connect(c.node(3).resp);
    assert_eq!(
        r.call(&["SET", "atomic", "before", "GET"]),
        format!("${}\r\n{}\r\n", last.len(), last)
    );
    assert_eq!(r.call(&["GETDEL", "atomic"]), "$6\r\nbefore\r\n");
    assert_eq!(r.call(&["GETDEL", "atomic"]), "$-1\r\n");
    assert_eq!(r.call(&["SET", "atomic", "x", "GET"]), "$-1\r\n");
    assert_eq!(r.call(&["GET", "atomic"]), "$1\r\nx\r\n");

    // Pipelined through every node: a batch and the requests around it on the same key
    // apply in the order the connection sent them (review of issue 12).
    for id in 1..=3 {
        let mut r = Resp::connect(c.node(id).resp);
        for round in 0..20 {
            let (a, b) = (format!("a{id}-{round}"), format!("b{id}-{round}"));
            r.pipeline(&[
                &[b"SET", b"order", a.as_bytes()],
                &[b"GETSET", b"order", b.as_bytes()],
                &[b"SET", b"order", b"after"],
                &[b"GETDEL", b"order"],
            ]);
            assert_eq!(r.reply(), "+OK\r\n");
            assert_eq!(r.reply(), format!("${}\r\n{a}\r\n", a.len()), "GETSET saw a later write");
            assert_eq!(r.reply(), "+OK\r\n");
            assert_eq!(r.reply(), "$5\r\nafter\r\n", "GETDEL ran before the SET before it");
        }
        // A batch of two pieces on one key (two writes: two Raft entries, the second proposed
        // once the first applied), then a write pipelined behind it: the later write must not
        // slip in between the pieces. Native protocol, one write for all three.
        let mut w = c.node(id).wire();
        for round in 0..20 {
            let mut out = Vec::new();
            let ops = [
                Op::Batch(vec![
                    Op::set("order", format!("first{round}")),
                    Op::set("order", format!("second{round}")),
                ]),
                Op::set("order", "after"),
                Op::get("order"),
            ];
            for (i, op) in ops.into_iter().enumerate() {
                out.extend_from_slice(&w.encode(1000 + i as u64, op));
            }
            w.stream.write_all(&out).unwrap();
            let replies: Vec<Reply> = (0..3).map(|_| w.recv().expect("reply").reply).collect();
            assert_eq!(value_of(&replies[2]), Some(b"after".to_vec()), "{replies:?}");
        }
    }
}
