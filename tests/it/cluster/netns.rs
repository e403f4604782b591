//! A cluster in network namespaces the test makes: one per node, joined by veth pairs to a
//! bridge in a "switch" namespace. An isolated node refuses strong writes and reads, the
//! majority keeps writing, and after healing the node converges without the refused write.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corekv_schema::codec::{Op, Reply};

use super::*;

/// Network namespaces made by the test: one per node, each joined by a veth pair to a bridge
/// in a "switch" namespace, which the test's own namespace also joins, on 10.199.N.0/24.
/// Cutting a node's cable (its veth end in the switch) isolates it from every other node and
/// from the test, while a command run inside its namespace still reaches it. Removed on drop.
pub(super) struct Net {
    tag: String,
    /// Third byte of this net's subnet, 10.199.SUBNET.0/24: tests running at once each get
    /// their own, since the test's own namespace joins every one of them.
    subnet: u8,
    nodes: usize,
}

static NETS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    pub(super) fn new(nodes: usize) -> Net {
        let subnet = NETS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{subnet}", std::process::id() % 10_000);
        let net = Net { tag, subnet, nodes };
        let sw = net.switch_ns();
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        let plug = |inside: &str, cable: &str| {
            ip(&["link", "add", inside, "type", "veth", "peer", "name", cable]);
            ip(&["link", "set", cable, "netns", &sw]);
            ip(&["-n", &sw, "link", "set", cable, "master", "br0", "up"]);
        };
        for i in 1..=nodes {
            let ns = net.node_ns(i);
            ip(&["netns", "add", &ns]);
            let inside = format!("ckv{}i{i}", net.tag);
            plug(&inside, &net.cable(i));
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", net.ip(i)), "dev", &inside]);
            ip(&["-n", &ns, "link", "set", &inside, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let host = format!("ckv{}h", net.tag);
        plug(&host, &format!("ckv{}hc", net.tag));
        ip(&["addr", "add", &format!("10.199.{}.1/24", net.subnet), "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        net
    }

    pub(super) fn switch_ns(&self) -> String {
        format!("ckv{}-sw", self.tag)
    }

    pub(super) fn node_ns(&self, i: usize) -> String {
        format!("ckv{}-n{i}", self.tag)
    }

    pub(super) fn cable(&self, i: usize) -> String {
        format!("ckv{}c{i}", self.tag)
    }

    pub(super) fn ip(&self, i: usize) -> String {
        format!("10.199.{}.{}", self.subnet, 10 + i)
    }

    pub(super) fn set_cable(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch_ns(), "link", "set", &self.cable(i), state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("ip").args(args).output();
        };
        quiet(&["link", "del", &format!("ckv{}h", self.tag)]);
        for i in 1..=self.nodes {
            quiet(&["netns", "del", &self.node_ns(i)]);
        }
        quiet(&["netns", "del", &self.switch_ns()]);
    }
}

#[test]
fn isolated_node_refuses_strong_writes_and_converges_after_heal() {
    let net = Net::new(3);
    let c = Cluster::start_on(3, Some(net));
    c.wait_writable();
    let leaders = c.leaders(1);
    let net = c.net.as_ref().unwrap();
    // Isolate the node leading the most partitions: its leadership must end there.
    let cut =
        (1..=3usize).max_by_key(|&n| leaders.iter().filter(|&&l| l == n as u64).count()).unwrap();
    let led = (0..PARTITIONS).find(|&p| leaders[p as usize] == cut as u64).unwrap();
    let majority: Vec<usize> = (1..=3).filter(|&n| n != cut).collect();
    net.set_cable(cut, false);
    let cut_at = Instant::now();
    // The majority keeps serving strong writes in every partition (new leaders where the
    // isolated node led).
    let mut w = c.node(majority[0]).wire();
    let mut acked = Vec::new();
    for p in 0..PARTITIONS {
        let key = key_in_partition(p, "majority");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match w.try_call(Op::set(key.clone(), "m")) {
                Some(Reply::Written { .. }) => break,
                other => {
                    assert!(Instant::now() < deadline, "majority refused {key}: {other:?}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        acked.push(key);
    }
    let took = cut_at.elapsed();
    eprintln!("majority wrote every partition {} ms after the cut", took.as_millis());
    assert!(took < Duration::from_secs(3), "the majority took {took:?} to write every partition");
    // The isolated node cannot acknowledge a strong write, nor serve a strong read, even in a
    // partition it led when it was cut off.
    let minority_key = key_in_partition(led, "minority");
    let node = c.node(cut);
    let inside = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &net.node_ns(cut), env!("CARGO_BIN_EXE_corekv")])
            .args(args)
            .args(["--addr", &node.addr.to_string(), "--timeout-ms", "20000"])
            .output()
            .unwrap()
    };
    // Refused by the node (not a failed connection, which also exits 2): a read as
    // unavailable; a write as unavailable, or as of unknown outcome when the isolated node
    // still led and proposed it (it cannot know then; the write must never surface, below).
    let refused = |out: &std::process::Output, codes: &[&str]| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        out.status.code() == Some(2)
            && codes.iter().any(|c| stderr.contains(&format!("server error {c}:")))
    };
    let set = inside(&["set", &minority_key, "lost"]);
    assert!(refused(&set, &["unavailable", "outcome_unknown"]), "minority write: {set:?}");
    let read = inside(&["get", &acked[0], "--consistency", "strong"]);
    assert!(refused(&read, &["unavailable"]), "minority strong read: {read:?}");
    eprintln!("isolated node refused: {}", String::from_utf8_lossy(&set.stderr).trim());
    // Heal: the isolated node catches up, and its refused write never appears anywhere.
    net.set_cable(cut, true);
    let mut back = c.node(cut).wire();
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in &acked {
        loop {
            let got = back.try_call_with(Op::get(key.clone()), Consistency::Eventual).unwrap();
            if value_of(&got).as_deref() == Some(&b"m"[..]) {
                break;
            }
            assert!(Instant::now() < deadline, "healed node {cut} lacks {key}: {got:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for id in 1..=3 {
        let mut w = c.node(id).wire();
        let got = w.try_call_with(Op::get(minority_key.clone()), Consistency::Strong).unwrap();
        assert!(
            matches!(&got, Reply::Error(e) if e.code == ErrorCode::NotFound),
            "node {id}: the refused write surfaced: {got:?}"
        );
    }
    assert!(matches!(back.call(Op::set("after-heal", "1")), Reply::Written { .. }));
}
