//! Replicas agree on expiry (issue 12): a conditional write raced against a key's expiry
//! comes out the same on every replica, whatever each node's clock and readers did meanwhile.
//!
//! The race, as a user would run it: each key is set with a 50 ms TTL through node 1, then,
//! around the moment it expires, `SET … NX` through node 2. Meanwhile readers on every node
//! touch the keys with eventual reads (lazy expiry by each node's own clock). A second later
//! every node's own copy of every key is compared. Before expiry was decided by the log
//! alone, some keys ended `[absent, second, second]`: a replica had removed the key by its
//! own clock before applying an NX stamped before the expiry (docs/CLUSTER.md has the counts).
//! Then every node must hold exactly the keys that should remain: the expired ones are gone,
//! removed through the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corekv_schema::codec::{Condition, Consistency, Op, SetOp};

use super::{Cluster, PARTITIONS, value_of};
use crate::harness::{Rng, b, stat_sum};

const KEYS: usize = 300;
const WRITERS: usize = 10;

#[test]
fn conditional_writes_racing_expiry_leave_every_replica_equal() {
    let c = Cluster::start(3);
    c.wait_writable();
    // Before the race each node holds the warm-up keys (one per partition written through
    // each node) and the metadata (the members, the map and three nodes' addresses,
    // registered shortly after start).
    let keys_before = 3 * u64::from(PARTITIONS) + 5;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_sum(&mut c.node(1).wire(), |s| s.keys) != keys_before {
        assert!(Instant::now() < deadline, "node 1 never held {keys_before} keys");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seed = Rng::seeded("expiry race").0;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (1..=3)
        .map(|id| {
            let addr = c.node(id).addr;
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut w = crate::harness::Wire::connect(addr);
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("race-{}", i % KEYS);
                    w.try_call_with(Op::get(key), Consistency::Eventual);
                    i += 7;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (first, second) = (c.node(1).addr, c.node(2).addr);
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ t as u64);
                let mut w1 = crate::harness::Wire::connect(first);
                let mut w2 = crate::harness::Wire::connect(second);
                for k in (t..KEYS).step_by(WRITERS) {
                    let key = format!("race-{k}");
                    let expiring = Op::Set(SetOp {
                        key: b(&key),
                        value: b("first"),
                        ttl_ms: 50,
                        ..Default::default()
                    });
                    w1.call(expiring);
                    std::thread::sleep(Duration::from_millis(rng.range(35, 65)));
                    w2.call(Op::set_if(b(&key), b("second"), Condition::IfAbsent));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let mut wires: Vec<_> = (1..=3).map(|id| c.node(id).wire()).collect();
    let mut diverged = Vec::new();
    let mut second = 0;
    for k in 0..KEYS {
        let key = format!("race-{k}");
        let copies: Vec<Option<Vec<u8>>> = wires
            .iter_mut()
            .map(|w| {
                let got = w.try_call_with(Op::get(key.clone()), Consistency::Eventual);
                value_of(&got.expect("eventual read"))
            })
            .collect();
        if copies.iter().any(|c| c != &copies[0]) {
            diverged.push((key, copies));
        } else if copies[0].is_some() {
            second += 1;
        }
    }
    eprintln!(
        "expiry race: {} of {KEYS} keys diverged, {second} agreed on the NX value",
        diverged.len()
    );
    assert!(diverged.is_empty(), "replicas disagree on {} keys: {diverged:?}", diverged.len());

    // Every expired first value is removed by the leader's expiry entries, on every replica:
    // each node holds exactly the keys it held before plus those whose NX took.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: Vec<u64> = wires.iter_mut().map(|w| stat_sum(w, |s| s.keys)).collect();
        if held.iter().all(|&n| n == keys_before + second) {
            break;
        }
        assert!(Instant::now() < deadline, "keys held {held:?}, want {}", keys_before + second);
        std::thread::sleep(Duration::from_millis(100));
    }
}
