//! A cluster of real `corekv serve` processes on loopback, real disks: replication, forwarding,
//! strong and eventual reads, a leader killed under load, a node paused past the election
//! timeout. Default Raft timing (100 ms ticks), so "writes resume within 3 s" is the product's
//! own number.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_schema::codec::{Consistency, ErrorCode, Expected, Op, Reply};
use corekv_schema::placement::partition_of;

use crate::harness::{Node, b, http_get};

const PARTITIONS: u32 = 8;

struct Cluster {
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<Node>>,
    flags: Vec<Vec<String>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect();
        let initial = initial.join(",");
        let mut c = Cluster { dirs: Vec::new(), nodes: Vec::new(), flags: Vec::new(), _root: root };
        for i in 1..=n {
            let dir = c._root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let flags: Vec<String> = [
                "--node-id",
                &i.to_string(),
                "--initial-cluster",
                &initial,
                "--cores",
                "1",
                "--partitions",
                &PARTITIONS.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            c.dirs.push(dir);
            c.flags.push(flags);
            c.nodes.push(None);
            c.boot(i);
        }
        c
    }

    fn boot(&mut self, id: usize) {
        let flags: Vec<&str> = self.flags[id - 1].iter().map(String::as_str).collect();
        self.nodes[id - 1] = Some(Node::start_at(&self.dirs[id - 1], &flags));
    }

    fn node(&self, id: usize) -> &Node {
        self.nodes[id - 1].as_ref().expect("node running")
    }

    fn kill9(&mut self, id: usize) {
        self.nodes[id - 1].as_mut().unwrap().kill9();
        self.nodes[id - 1] = None;
    }

    /// Waits until a strong write succeeds through every running node (leaders elected).
    fn wait_writable(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let mut w = node.wire();
            for p in 0..PARTITIONS {
                let key = key_in_partition(p, &format!("warmup-{i}"));
                loop {
                    match w.try_call(Op::set(key.clone(), "x")) {
                        Some(Reply::Written { .. }) => break,
                        other => {
                            assert!(Instant::now() < deadline, "cluster not writable: {other:?}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        }
    }

    /// The leader of each partition as node `via` sees it (0: none known).
    fn leaders(&self, via: usize) -> Vec<u64> {
        let (status, body) = http_get(self.node(via).http, "/api/replication/status");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut leaders = vec![0; PARTITIONS as usize];
        for p in v["partitions"].as_array().unwrap() {
            leaders[p["partition"].as_u64().unwrap() as usize] = p["leader"].as_u64().unwrap();
        }
        leaders
    }
}

fn key_in_partition(p: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| partition_of(k.as_bytes(), PARTITIONS) == p)
        .unwrap()
}

fn value_of(reply: &Reply) -> Option<Vec<u8>> {
    match reply {
        Reply::Value { value, .. } => Some(value.to_vec()),
        _ => None,
    }
}

#[test]
fn cluster_replicates_forwards_and_reads_strongly() {
    let c = Cluster::start(3);
    c.wait_writable();
    let mut wires: Vec<_> = (1..=3).map(|i| c.node(i).wire()).collect();
    for k in 0..48 {
        let key = format!("key-{k}");
        let value = format!("value-{k}");
        match wires[k % 3].call(Op::set(key.clone(), value.clone())) {
            Reply::Written { version } => assert!(version > 0),
            other => panic!("set {key}: {other:?}"),
        }
        // A strong read after an acknowledged write sees it, from any node.
        for (i, w) in wires.iter_mut().enumerate() {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Strong).unwrap();
            assert_eq!(value_of(&got), Some(value.clone().into_bytes()), "node {} {key}", i + 1);
        }
    }
    // Compare-and-set through a node that may not lead the key's partition.
    let version = match wires[1].call(Op::get("key-5")) {
        Reply::Value { version, .. } => version,
        other => panic!("{other:?}"),
    };
    let cas = |expected| Op::Cas { key: b("key-5"), expected, new_value: b("swapped"), ttl_ms: 0 };
    assert!(matches!(wires[2].call(cas(Expected::Version(version))), Reply::Written { .. }));
    match wires[0].call(cas(Expected::Version(version))) {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::ConditionFailed, "{e:?}"),
        other => panic!("stale CAS must fail: {other:?}"),
    }
    assert!(matches!(wires[0].call(Op::delete("key-7")), Reply::Deleted { .. }));
    // Eventual reads are served by each replica's own copy: they converge.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, w) in wires.iter_mut().enumerate() {
        loop {
            let five = w.try_call_with(Op::get("key-5"), Consistency::Eventual).unwrap();
            let seven = w.try_call_with(Op::get("key-7"), Consistency::Eventual).unwrap();
            let gone = matches!(&seven, Reply::Error(e) if e.code == ErrorCode::NotFound);
            if value_of(&five).as_deref() == Some(&b"swapped"[..]) && gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not converge: {five:?} {seven:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // RESP and HTTP clients do not know the topology: the node forwards for them.
    for i in 1..=3 {
        let (status, body) = http_get(c.node(i).http, "/api/get/key-11");
        assert_eq!(status, 200, "node {i}: {body}");
        assert!(body.contains("value-11"), "node {i}: {body}");
    }
    // Every node holds every partition (3 nodes, RF 3) and knows one leader for each.
    for i in 1..=3 {
        let leaders = c.leaders(i);
        assert!(leaders.iter().all(|&l| (1..=3).contains(&l)), "node {i}: {leaders:?}");
        assert_eq!(leaders, c.leaders(1), "nodes disagree on leaders");
    }
}

/// Keys whose writes were acknowledged, and when.
type Acked = Arc<Mutex<Vec<(String, Instant)>>>;

/// Strong writes from `threads` clients on the given nodes, each key written once; returns
/// acknowledged (key, value, when) and stops when `stop` is set.
fn write_load(
    c: &Cluster,
    via: &[usize],
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Acked) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for &id in via {
        let addr = c.node(id).addr;
        let (stop, acked) = (stop.clone(), acked.clone());
        handles.push(std::thread::spawn(move || {
            let mut w = crate::harness::Wire::connect(addr);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{id}-{n}");
                n += 1;
                match w.try_call(Op::set(key.clone(), key.clone())) {
                    Some(Reply::Written { .. }) => {
                        acked.lock().unwrap().push((key, Instant::now()))
                    }
                    // Outcome unknown or refused during the failover: not acknowledged.
                    Some(Reply::Error(_)) => {}
                    Some(other) => panic!("unexpected reply {other:?}"),
                    None => {
                        std::thread::sleep(Duration::from_millis(20));
                        w = crate::harness::Wire::connect(addr);
                    }
                }
            }
        }));
    }
    (handles, acked)
}

#[test]
fn leader_killed_under_load_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    c.wait_writable();
    let leaders = c.leaders(1);
    // Kill the node leading the most partitions; write through the other two.
    let victim =
        (1..=3usize).max_by_key(|&n| leaders.iter().filter(|&&l| l == n as u64).count()).unwrap();
    let led: Vec<u32> = (0..PARTITIONS).filter(|&p| leaders[p as usize] == victim as u64).collect();
    assert!(!led.is_empty(), "{leaders:?}");
    let others: Vec<usize> = (1..=3).filter(|&n| n != victim).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, acked) = write_load(&c, &others, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    let killed_at = Instant::now();
    c.kill9(victim);
    std::thread::sleep(Duration::from_millis(4000));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    let acked = acked.lock().unwrap().clone();
    // Writes resume within 3 s in the partitions the dead node led.
    let first_after = acked
        .iter()
        .filter(|(k, at)| *at > killed_at && led.contains(&partition_of(k.as_bytes(), PARTITIONS)))
        .map(|(_, at)| at.duration_since(killed_at))
        .min()
        .expect("no write committed after the kill in the dead leader's partitions");
    eprintln!(
        "node {victim} (leading {led:?}) killed; first write there after {} ms; {} writes acked",
        first_after.as_millis(),
        acked.len()
    );
    assert!(first_after < Duration::from_secs(3), "writes resumed after {first_after:?}");
    // No acknowledged write is lost: every one reads back, strongly, from both survivors.
    for &id in &others {
        let mut w = c.node(id).wire();
        for (key, _) in &acked {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Strong).unwrap();
            assert_eq!(value_of(&got), Some(key.clone().into_bytes()), "node {id} lost {key}");
        }
    }
    // The killed node restarts and catches up from the log.
    c.boot(victim);
    let mut w = c.node(victim).wire();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (key, _) in &acked {
        loop {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap();
            if value_of(&got) == Some(key.clone().into_bytes()) {
                break;
            }
            assert!(Instant::now() < deadline, "restarted node {victim} lacks {key}: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn paused_node_rejoins_and_catches_up() {
    let c = Cluster::start(3);
    c.wait_writable();
    let leaders = c.leaders(1);
    let paused =
        (1..=3usize).max_by_key(|&n| leaders.iter().filter(|&&l| l == n as u64).count()).unwrap();
    let pid = c.node(paused).pid().to_string();
    let others: Vec<usize> = (1..=3).filter(|&n| n != paused).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, acked) = write_load(&c, &others, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let paused_at = Instant::now();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // Longer than the election timeout (10–20 ticks of 100 ms).
    std::thread::sleep(Duration::from_millis(3500));
    let during = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > paused_at + Duration::from_secs(3))
        .count();
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert!(during > 0, "no write committed while node {paused} was paused");
    let acked = acked.lock().unwrap().clone();
    let mut w = c.node(paused).wire();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (key, _) in &acked {
        loop {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap();
            if value_of(&got) == Some(key.clone().into_bytes()) {
                break;
            }
            assert!(Instant::now() < deadline, "resumed node {paused} lacks {key}: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // And it serves strong requests again (forwarding to whoever leads now).
    assert!(matches!(w.call(Op::set("after-pause", "1")), Reply::Written { .. }));
}
