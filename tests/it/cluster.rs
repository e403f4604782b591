//! A cluster of real `corekv serve` processes on loopback, real disks: replication, forwarding,
//! strong and eventual reads, a leader killed under load, a node paused past the election
//! timeout. Default Raft timing (100 ms ticks), so "writes resume within 3 s" is the product's
//! own number.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corekv_client::{ClientConfig, blocking};
use corekv_schema::codec::{Consistency, ErrorCode, Expected, Op, Reply, Request};
use corekv_schema::placement::partition_of;

use crate::harness::{Node, b, http_get, metric};
use crate::resp::Resp;

mod batch;
mod expiry;
mod membership;
mod nemesis;
mod netns;
mod tls;

use netns::Net;

const PARTITIONS: u32 = 8;

struct Cluster {
    _root: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    nodes: Vec<Option<Node>>,
    flags: Vec<Vec<String>>,
    /// Flags every node gets, those that join too (`{id}` stands for the node's id).
    extra: Vec<String>,
    /// Set when each node runs in its own network namespace.
    net: Option<Net>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Cluster::start_on(n, None)
    }

    fn start_on(n: usize, net: Option<Net>) -> Cluster {
        Cluster::start_with(n, net, PARTITIONS)
    }

    fn start_with(n: usize, net: Option<Net>, partitions: u32) -> Cluster {
        Cluster::start_full(n, net, partitions, 1)
    }

    fn start_full(n: usize, net: Option<Net>, partitions: u32, cores: usize) -> Cluster {
        Cluster::start_flags(n, net, partitions, cores, &[])
    }

    /// A cluster whose nodes (and those that join it) all get `extra` flags too.
    fn start_flags(
        n: usize,
        net: Option<Net>,
        partitions: u32,
        cores: usize,
        extra: &[&str],
    ) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let initial: Vec<String> = (1..=n)
            .map(|i| match &net {
                None => format!("{i}=127.0.0.1:{}", free_port()),
                Some(net) => format!("{i}={}:7400", net.ip(i)),
            })
            .collect();
        let initial = initial.join(",");
        let mut extra: Vec<String> = ["--cores", &cores.to_string()]
            .into_iter()
            .chain(["--partitions", &partitions.to_string()])
            .chain(extra.iter().copied())
            .map(String::from)
            .collect();
        if net.is_some() {
            // Nodes listen on their namespaces' addresses, not loopback: the network is the
            // test's own, and these tests are about faults, not authentication.
            extra.push("--insecure-peer-links".into());
        }
        let mut c = Cluster {
            dirs: Vec::new(),
            nodes: Vec::new(),
            flags: Vec::new(),
            extra,
            _root: root,
            net,
        };
        for i in 1..=n {
            let dir = c._root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let flags: Vec<String> = ["--node-id", &i.to_string(), "--initial-cluster", &initial]
                .into_iter()
                .map(String::from)
                .chain(c.extra.iter().cloned())
                // `{id}` in a flag is the node's own id (its certificate, say).
                .map(|s| s.replace("{id}", &i.to_string()))
                .collect();
            c.dirs.push(dir);
            c.flags.push(flags);
            c.nodes.push(None);
            c.boot(i);
        }
        c
    }

    fn boot(&mut self, id: usize) {
        let mut flags: Vec<&str> = self.flags[id - 1].iter().map(String::as_str).collect();
        // Each node its own CPUs in turn, as `corekv dev-cluster` gives them.
        let cores: usize = flags
            .iter()
            .skip_while(|f| **f != "--cores")
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let cpus = corekv::devcluster::cpus_of_node(id, cores);
        if let Some(cpus) = &cpus {
            flags.extend(["--cpus", cpus]);
        }
        let dir = &self.dirs[id - 1];
        self.nodes[id - 1] = Some(match &self.net {
            None => Node::start_at(dir, &flags),
            Some(net) => Node::start_at_in(dir, &net.node_ns(id), &net.ip(id), &flags),
        });
    }

    /// Starts node `id` (one past the others) with `--join` through node `via`: its cluster
    /// address, to add it with.
    fn join(&mut self, id: usize, via: usize) -> String {
        assert_eq!(id, self.nodes.len() + 1, "nodes join in id order");
        // A founder's cluster address is in the founding list; a joined node's, in its flags.
        let initial = &self.flags[0][3];
        let joined = self.flags[via - 1].iter().skip_while(|f| *f != "--cluster-listen").nth(1);
        let member = initial
            .split(',')
            .find_map(|e| e.strip_prefix(&format!("{via}=")))
            .or(joined.map(String::as_str))
            .expect("the member's address")
            .to_string();
        let listen = format!("127.0.0.1:{}", free_port());
        let dir = self._root.path().join(format!("n{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let flags = ["--node-id", &id.to_string(), "--join", &member, "--cluster-listen", &listen]
            .iter()
            .map(|s| s.to_string())
            .chain(self.extra.iter().map(|f| f.replace("{id}", &id.to_string())))
            .collect();
        self.dirs.push(dir);
        self.flags.push(flags);
        self.nodes.push(None);
        self.boot(id);
        listen
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
        self.wait_leaders_settled();
    }

    /// Waits until every partition has a leader and none has moved for a second: after a
    /// start, leaders move to their preferred nodes, and a test that picks a leader to kill or
    /// pause must pick the one that stays.
    fn wait_leaders_settled(&self) {
        let via = (1..=self.nodes.len()).find(|&i| self.nodes[i - 1].is_some()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut last, mut since) = (Vec::new(), Instant::now());
        loop {
            let (status, body) = http_get(self.node(via).http, "/api/replication/status");
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let now: Vec<u64> = v["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["leader"].as_u64().unwrap())
                .collect();
            if now != last || now.contains(&0) {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= Duration::from_secs(1) {
                return;
            }
            assert!(Instant::now() < deadline, "leaders never settled: {last:?}");
            std::thread::sleep(Duration::from_millis(100));
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

/// Waits (up to 20 s) until node `id` serves, from its own copy, each key with the key itself
/// as its value (what `write_load` writes).
fn wait_caught_up(c: &Cluster, id: usize, acked: &[(String, Instant)]) {
    let mut w = c.node(id).wire();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (key, _) in acked {
        loop {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap();
            if value_of(&got) == Some(key.clone().into_bytes()) {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} lacks {key}: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes `ops` as batches until every piece is answered, sending again the pieces whose
/// outcome the cluster could not tell. Only for writes that mean the same applied twice: the
/// leader may be the node just killed (leaders move to their preferred node after a start),
/// and a write forwarded to it is then rightly "outcome unknown".
fn write_idempotent(c: &Cluster, via: usize, mut ops: Vec<Op>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut w = c.node(via).wire();
    while !ops.is_empty() {
        assert!(Instant::now() < deadline, "{} writes never answered", ops.len());
        let again = |e: &corekv_schema::codec::WireError| {
            matches!(
                e.code,
                ErrorCode::OutcomeUnknown | ErrorCode::Unavailable | ErrorCode::WrongNode
            )
        };
        // No answer within the wire's timeout (a loaded machine, a forward lost with a
        // link): asked again on a new connection.
        let Some(reply) = w.try_call(Op::Batch(ops.clone())) else {
            w = c.node(via).wire();
            continue;
        };
        match reply {
            Reply::Batch(replies) => {
                let mut left = Vec::new();
                for (op, reply) in ops.into_iter().zip(replies) {
                    match reply {
                        Reply::Written { .. } | Reply::Deleted { .. } => {}
                        // A delete sent again after its first try was applied.
                        Reply::Error(e) if e.code == ErrorCode::NotFound => {}
                        Reply::Error(e) if again(&e) => left.push(op),
                        other => panic!("{other:?}"),
                    }
                }
                ops = left;
            }
            Reply::Error(e) if again(&e) => {}
            other => panic!("{other:?}"),
        }
        if !ops.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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
    let commits = || -> f64 {
        (1..=3).map(|i| metric(c.node(i).http, "corekv_raft_commit_seconds_count")).sum()
    };
    let commits_before = commits();
    let mut wires: Vec<_> = (1..=3).map(|i| c.node(i).wire()).collect();
    for k in 0..48 {
        let key = format!("key-{k}");
        let value = format!("value-{k}");
        // A version is the write's Raft index: past the founding point (index 5).
        let written = match wires[k % 3].call(Op::set(key.clone(), value.clone())) {
            Reply::Written { version } if version > 5 => version,
            other => panic!("set {key}: {other:?}"),
        };
        // A strong read after an acknowledged write sees it, with its version, from any node.
        for (i, w) in wires.iter_mut().enumerate() {
            let got = w.try_call_with(Op::get(key.clone()), Consistency::Strong).unwrap();
            assert_eq!(value_of(&got), Some(value.clone().into_bytes()), "node {} {key}", i + 1);
            assert!(
                matches!(got, Reply::Value { version, .. } if version == written),
                "node {} {key}: {got:?}, written at {written}",
                i + 1
            );
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
    // Redis clients too: a write through one node's RESP port reads back through another's,
    // read-modify-write commands work, and what cluster mode cannot do is refused.
    let mut resp: Vec<_> = (1..=3).map(|i| Resp::connect(c.node(i).resp)).collect();
    assert_eq!(resp[0].call(&["SET", "r-key", "r-value"]), "+OK\r\n");
    assert_eq!(resp[1].call(&["GET", "r-key"]), "$7\r\nr-value\r\n");
    assert_eq!(resp[2].call(&["INCR", "r-count"]), ":1\r\n");
    assert_eq!(resp[1].call(&["INCR", "r-count"]), ":2\r\n");
    for refused in [&["FLUSHDB"][..], &["FLUSHALL"], &["MSETNX", "r-a", "1", "r-b", "2"]] {
        let got = resp[0].call(refused);
        assert!(got.starts_with("-ERR") && got.contains("cluster"), "{refused:?}: {got}");
    }
    assert_eq!(resp[2].call(&["GET", "r-key"]), "$7\r\nr-value\r\n", "FLUSHDB refused");
    assert_eq!(resp[2].call(&["EXISTS", "r-a"]), ":0\r\n", "MSETNX refused");
    // Status and metrics describe the cluster.
    let (_, body) = http_get(c.node(2).http, "/api/nodes/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["cluster"]["node"], 2, "{body}");
    assert_eq!(status["cluster"]["replicas_held"], PARTITIONS, "{body}");
    let peers = status["cluster"]["peers"].as_array().unwrap();
    assert!(peers.len() == 2 && peers.iter().all(|p| p["link_up"] == true), "{body}");
    let led: u64 = (1..=3)
        .map(|i| {
            let (_, b) = http_get(c.node(i).http, "/api/nodes/status");
            let v: serde_json::Value = serde_json::from_str(&b).unwrap();
            v["cluster"]["partitions_led"].as_array().unwrap().len() as u64
        })
        .sum();
    assert_eq!(led, u64::from(PARTITIONS), "every partition led by exactly one node");
    let sample = |name: &str| metric(c.node(1).http, name);
    assert_eq!(sample("corekv_raft_replicas"), f64::from(PARTITIONS));
    assert!(sample("corekv_raft_read_index_total") > 0.0, "strong reads went through ReadIndex");
    let committed = commits() - commits_before;
    assert!(committed >= 48.0, "every acknowledged write was committed by a leader: {committed}");
    // Every node holds every partition (3 nodes, RF 3) and knows one leader for each.
    for i in 1..=3 {
        let leaders = c.leaders(i);
        assert!(leaders.iter().all(|&l| (1..=3).contains(&l)), "node {i}: {leaders:?}");
        assert_eq!(leaders, c.leaders(1), "nodes disagree on leaders");
    }
}

/// Keys whose writes were acknowledged, and when.
type Acked = Arc<Mutex<Vec<(String, Instant)>>>;

/// The metadata group and routing: a `Topology` answer names every node's addresses, the map
/// and its leaders; a direct request to a non-leader gets `WrongNode` with the leader and the
/// map; the SDK routes by it and keeps writing through a dead node's failover without an error;
/// every node's status shows the dead node down from its missing heartbeats.
#[test]
fn clients_route_by_the_metadata_map_and_survive_a_dead_node() {
    // Two cores per node: the metadata group lives on one core, keys hashing to the other.
    let mut c = Cluster::start_full(3, None, PARTITIONS, 2);
    c.wait_writable();
    // Each node records its addresses in the metadata group once it is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let topology = loop {
        match c.node(1).wire().call(Op::Topology) {
            Reply::Topology(t) if t.nodes.len() == 3 && t.epoch > 0 => break t,
            other => assert!(Instant::now() < deadline, "metadata not recorded: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(topology.node, 1);
    assert_eq!(topology.partition_map.len(), PARTITIONS as usize);
    for i in 1..=3 {
        let n = topology.node(i as u64).unwrap();
        assert_eq!(n.native, c.node(i).addr.to_string());
        assert_eq!(n.resp, c.node(i).resp.to_string());
        assert_eq!(n.http, c.node(i).http.to_string());
    }
    let leaders = c.leaders(1);
    for (p, info) in topology.partition_map.iter().enumerate() {
        let mut replicas = info.replicas.clone();
        replicas.sort_unstable();
        assert_eq!(replicas, [1, 2, 3], "partition {p}");
        assert_eq!(info.leader, leaders[p], "partition {p}");
    }
    // A direct request to a replica that does not lead: the leader and the map, not a forward.
    let p = (0..PARTITIONS).find(|&p| leaders[p as usize] != 0).unwrap();
    let leader = leaders[p as usize];
    let other = if leader == 1 { 2 } else { 1 };
    let mut direct = Request::new(0, Op::set(key_in_partition(p, "direct"), "x"));
    direct.direct = true;
    match c.node(other).wire().try_request(direct) {
        Some(Reply::Error(e)) if e.code == ErrorCode::WrongNode => {
            assert_eq!(e.leader, leader, "{e:?}");
            assert!(e.topology.as_ref().is_some_and(|t| t.epoch >= topology.epoch), "{e:?}");
        }
        other => panic!("direct request to a follower: {other:?}"),
    }
    // The metadata keys are not the clients'.
    match c.node(2).wire().call(Op::set(b"\xffcorekv/meta/map".to_vec(), "x")) {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("metadata key written: {other:?}"),
    }
    // SCAN lists client keys only, never the metadata's (which live on every node).
    let mut resp = Resp::connect(c.node(2).resp);
    let (mut cursor, mut listed, mut steps) = ("0".to_string(), String::new(), 0);
    loop {
        let step = resp.call(&["SCAN", &cursor, "COUNT", "1000"]);
        listed.push_str(&step);
        steps += 1;
        cursor = step.lines().nth(2).unwrap().to_string();
        if cursor == "0" {
            break;
        }
    }
    assert!(listed.contains("warmup-"), "{listed}");
    assert!(!listed.contains("corekv/meta"), "{listed}");
    // DBSIZE counts what the node holds: the listed keys and the metadata's (the members,
    // a map, 3 nodes' addresses).
    let scanned = listed.lines().filter(|l| l.starts_with('$')).count() - steps;
    assert_eq!(resp.call(&["DBSIZE"]), format!(":{}\r\n", scanned + 5));
    // The SDK routes to leaders; with the node it connected to killed, its writes and strong
    // reads keep succeeding: it retries only what provably did not apply.
    let client = blocking::Client::connect(c.node(1).addr, ClientConfig::default()).unwrap();
    assert!(client.cluster_epoch().is_some_and(|e| e >= topology.epoch));
    let keys: Vec<String> = (0..PARTITIONS).map(|p| key_in_partition(p, "sdk")).collect();
    for k in &keys {
        client.set(k.clone(), "before").unwrap();
    }
    c.kill9(1);
    // Let the SDK's connections to node 1 see the close, so no write is in flight on them.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for k in &keys {
        let version = client.set(k.clone(), "after").unwrap_or_else(|e| panic!("{k}: {e}"));
        let got = client.get(k.clone()).unwrap().unwrap();
        assert_eq!((&got.value[..], got.version), (&b"after"[..], version), "{k}");
    }
    let took = started.elapsed();
    println!("every partition written through the SDK {took:?} after the kill");
    assert!(took < Duration::from_secs(3), "the SDK took {took:?} to write every partition");
    // Health comes from heartbeats: node 1 goes quiet, the others keep reporting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(c.node(2).http, "/api/nodes/status");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let nodes = v["cluster"]["nodes"].as_array().unwrap().clone();
        let health: Vec<&str> = nodes.iter().map(|n| n["health"].as_str().unwrap()).collect();
        if health == ["down", "up", "up"] {
            let three = &nodes[2];
            assert!(three["last_heartbeat_ms"].as_u64().unwrap() < 2000, "{three}");
            assert!(three["disk_total_bytes"].as_u64().unwrap() > 0, "{three}");
            assert_eq!(three["replicas_held"], PARTITIONS, "{three}");
            break;
        }
        assert!(Instant::now() < deadline, "node 1 never shown down: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `corekv cluster status` prints the same, from any live node. Leaders move to balance
    // after the failover, and a partition shows no leader for the moment of a handover:
    // asked again until every one has a survivor leading it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_corekv"))
            .args(["cluster", "status", "--http", &c.node(3).http.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
        let row = |id: &str| text.lines().find(|l| l.split_whitespace().next() == Some(id));
        assert!(row("1").is_some_and(|l| l.contains("down")), "{text}");
        assert!(row("2").is_some_and(|l| l.contains(" up ")), "{text}");
        assert!(row("meta").is_some(), "{text}");
        let table = text.split("PARTITION").nth(1).unwrap_or("");
        let numbered =
            |l: &&str| l.split_whitespace().next().is_some_and(|t| t.parse::<u32>().is_ok());
        let rows: Vec<Vec<&str>> =
            table.lines().filter(numbered).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows.len(), PARTITIONS as usize, "{text}");
        // As each partition's leader (a survivor) sees it: with its one live follower's lag.
        let led = |r: &Vec<&str>| ["2", "3"].contains(&r[2]) && r[6].contains(':');
        match rows.iter().find(|r| !led(r)) {
            None => break,
            Some(r) => assert!(Instant::now() < deadline, "{r:?} in {text}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    // Writes resume within 3 s in every partition the dead node led.
    let mut resumed = Vec::new();
    for &p in &led {
        let first = acked
            .iter()
            .filter(|(k, at)| *at > killed_at && partition_of(k.as_bytes(), PARTITIONS) == p)
            .map(|(_, at)| at.duration_since(killed_at))
            .min()
            .unwrap_or_else(|| panic!("no write committed in partition {p} after the kill"));
        resumed.push(first);
    }
    let slowest = resumed.iter().max().copied().unwrap();
    eprintln!(
        "node {victim} (leading {led:?}) killed; writes resumed after {:?} ms; {} acked",
        resumed.iter().map(Duration::as_millis).collect::<Vec<_>>(),
        acked.len()
    );
    assert!(slowest < Duration::from_secs(3), "a partition resumed after {slowest:?}");
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
    wait_caught_up(&c, victim, &acked);
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
    let led: Vec<u32> = (0..PARTITIONS).filter(|&p| leaders[p as usize] == paused as u64).collect();
    assert!(!led.is_empty(), "the node to pause leads nothing: {leaders:?}");
    let health_of = |via: usize| {
        let (_, body) = http_get(c.node(via).http, "/api/nodes/status");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["cluster"]["nodes"][paused - 1].clone()
    };
    assert_eq!(health_of(others[0])["health"], "up");
    let paused_at = Instant::now();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // Longer than the election timeout (10–20 ticks of 100 ms). Health comes from heartbeats,
    // not from links: a paused process keeps its sockets open, yet it is down after 2 s.
    std::thread::sleep(Duration::from_millis(2600));
    let seen = health_of(others[0]);
    assert_eq!((&seen["health"], &seen["link_up"]), (&"down".into(), &true.into()), "{seen}");
    std::thread::sleep(Duration::from_millis(900));
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    let acked = acked.lock().unwrap().clone();
    // Every partition the paused node led took writes again while it was paused.
    for &p in &led {
        let resumed = acked.iter().any(|(k, at)| {
            partition_of(k.as_bytes(), PARTITIONS) == p
                && *at > paused_at + Duration::from_secs(3)
                && *at < paused_at + Duration::from_millis(3500)
        });
        assert!(resumed, "partition {p} took no write while node {paused} was paused");
    }
    wait_caught_up(&c, paused, &acked);
    let mut w = c.node(paused).wire();
    // And it serves strong requests again (forwarding to whoever leads now).
    assert!(matches!(w.call(Op::set("after-pause", "1")), Reply::Written { .. }));
}

/// A follower that misses more entries than its leader keeps (4096 behind the applied index)
/// is brought up to date by a snapshot of the partition: built from the leader's engine, sent
/// in one frame, installed through the follower's own log; then it serves every key, and
/// keeps them across another restart.
#[test]
fn far_behind_follower_catches_up_by_snapshot() {
    let mut c = Cluster::start_with(3, None, 1);
    let mut w = c.node(1).wire();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(w.try_call(Op::set("first", "1")), Some(Reply::Written { .. })) {
        assert!(Instant::now() < deadline, "cluster not writable");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.wait_leaders_settled();
    let leader = c.leaders(1)[0] as usize;
    let behind = (1..=3).find(|&n| n != leader).unwrap();
    // The follower holds snap-0..299 before it falls behind, so the snapshot must delete
    // them there (tombstones), not merely never have had them.
    let old: Vec<Op> = (0..300).map(|i| Op::set(format!("snap-{i}"), "old")).collect();
    write_idempotent(&c, 1, old);
    let mut f = c.node(behind).wire();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..300 {
        let key = format!("snap-{i}");
        while value_of(&f.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap())
            .is_none()
        {
            assert!(Instant::now() < deadline, "follower never got {key}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    c.kill9(behind);
    let via = (1..=3).find(|&n| n != behind).unwrap();
    // 10,000 writes plus 300 deletes: far more than the leader keeps in memory.
    for chunk in 0..20 {
        let ops: Vec<Op> = (0..500)
            .map(|i| Op::set(format!("snap-{}", chunk * 500 + i), format!("v{i}")))
            .collect();
        write_idempotent(&c, via, ops);
    }
    let deletes: Vec<Op> = (0..300).map(|i| Op::delete(format!("snap-{i}"))).collect();
    write_idempotent(&c, via, deletes);
    c.boot(behind);
    let mut r = c.node(behind).wire();
    let deadline = Instant::now() + Duration::from_secs(30);
    let check = |r: &mut crate::harness::Wire, deadline: Instant| {
        for k in 0..10_000 {
            let key = format!("snap-{k}");
            loop {
                let got = r.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap();
                let ok = match &got {
                    Reply::Error(e) if k < 300 => e.code == ErrorCode::NotFound,
                    Reply::Value { value, .. } if k >= 300 => {
                        value[..] == *format!("v{}", k % 500).as_bytes()
                    }
                    _ => false,
                };
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "node {behind}: {key} is {got:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    check(&mut r, deadline);
    let (_, body) = http_get(c.node(behind).http, "/api/replication/status");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["raft"]["snapshots_installed"].as_u64().unwrap() >= 1, "no snapshot: {body}");
    // An election right after the install: raft-rs must count the snapshot as applied, or
    // campaigning reads compacted entries and the node aborts.
    // (If the installed node leads, it has campaigned since the install already.)
    let leader = c.leaders(behind)[0] as usize;
    if leader != behind {
        c.kill9(leader);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !matches!(r.try_call(Op::set("after-install", "1")), Some(Reply::Written { .. })) {
            assert!(
                Instant::now() < deadline,
                "no leader after the install: {}",
                c.node(behind).stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The installed state is durable: killed and restarted alone (no leader can send it
    // anything), the follower still serves all of it from its own log.
    c.kill9(behind);
    let running: Vec<usize> = (1..=3).filter(|&n| c.nodes[n - 1].is_some()).collect();
    for other in running {
        c.kill9(other);
    }
    c.boot(behind);
    let mut r = c.node(behind).wire();
    check(&mut r, Instant::now() + Duration::from_secs(5));
}

/// `corekv dev-cluster` as a new user would try it: it prints every node's addresses, the
/// nodes form a cluster that answers on any of them, and Ctrl-C (SIGINT) stops every node and
/// exits 0.
#[test]
fn dev_cluster_serves_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // A base whose node ports (BASE+10 .. BASE+33) are all free right now.
    let base = (0..)
        .map(|_| 20_000 + 100 * (free_port() % 300))
        .find(|b| (10..=33).all(|k| TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["dev-cluster", "--nodes", "3", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("Ctrl-C");
            let _ = tx.send(line);
            if done {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.last().is_some_and(|l: &String| l.contains("Ctrl-C")) {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("dev-cluster did not come up: {lines:?}");
            }
        }
    }
    let field = |node: usize, name: &str| -> String {
        let line = lines.iter().find(|l| l.trim_start().starts_with(&format!("node {node}:")));
        let line = line.unwrap_or_else(|| panic!("no line for node {node}: {lines:?}"));
        let prefix = format!("{name}=");
        line.split_whitespace().find_map(|f| f.strip_prefix(&prefix)).unwrap().to_string()
    };
    assert_eq!(field(1, "native"), format!("127.0.0.1:{}", base + 10));
    let pids: Vec<String> = (1..=3).map(|i| field(i, "pid")).collect();
    let mut w1 = crate::harness::Wire::connect(field(1, "native").parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(w1.try_call(Op::set("dev", "cluster")), Some(Reply::Written { .. })) {
        assert!(Instant::now() < deadline, "dev-cluster never accepted a write");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut w3 = crate::harness::Wire::connect(field(3, "native").parse().unwrap());
    let got = w3.try_call_with(Op::get("dev"), Consistency::Strong).unwrap();
    assert_eq!(value_of(&got).as_deref(), Some(&b"cluster"[..]));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev-cluster did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "dev-cluster exited with {status}");
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "node {pid} left running");
    }
}

/// A data directory belongs to one node of one cluster: its Raft votes and logs are that
/// node's. Starting it under another id, or another membership, is refused.
#[test]
fn data_directory_keeps_its_node_id_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let one = format!("1=127.0.0.1:{port}");
    let mut node = Node::start_at(dir.path(), &["--node-id", "1", "--initial-cluster", &one]);
    node.terminate();
    for (id, list) in [("2", format!("2=127.0.0.1:{port}")), ("1", format!("{one},2=127.0.0.1:1"))]
    {
        let (code, stderr) = crate::harness::boot_failure(
            dir.path(),
            &["--node-id", id, "--initial-cluster", &list],
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("node id belongs to its data directory"), "{stderr}");
    }
    // The same node and membership start again.
    let _again = Node::start_at(dir.path(), &["--node-id", "1", "--initial-cluster", &one]);
}
