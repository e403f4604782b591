//! Process lifecycle: graceful drain on SIGTERM, and clear refusals at boot.

use std::io::Write;
use std::process::Command;

use corekv_schema::codec::{ErrorCode, Op, Reply, SetOp};

use crate::harness::{Node, b};

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut node = Node::start(&["--cores", "2"]);
    let mut w = node.wire();
    let mut idle = node.wire();
    assert!(matches!(idle.call(Op::Ping { payload: b("") }), Reply::Pong { .. }));
    let n = 2000u64;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..n {
        let op =
            Op::Set(SetOp { key: b(&format!("drain{i}")), value: b("v"), ..Default::default() });
        bytes.extend_from_slice(&w.encode(i, op));
    }
    w.stream.write_all(&bytes).unwrap();
    // The first reply proves the node has read requests; then ask it to stop.
    let first = w.recv().expect("first reply");
    assert_eq!(first.id, 0);
    let pid = node.pid();
    let killer = std::thread::spawn(move || {
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap()
    });
    let mut answered = 1;
    while let Some(resp) = w.recv() {
        if let Reply::Error(e) = &resp.reply {
            // The node had part of a frame when it stopped: it says so, then closes.
            assert_eq!(e.code, ErrorCode::ShuttingDown, "{e:?}");
            assert_eq!(resp.id, 0);
            assert!(w.recv().is_none(), "nothing may follow the shutdown notice");
            break;
        }
        assert_eq!(resp.id, answered, "drain must keep reply order");
        assert!(matches!(resp.reply, Reply::Written { .. }), "{:?}", resp.reply);
        answered += 1;
    }
    killer.join().unwrap();
    // The idle connection is closed by the drain.
    assert!(idle.recv().is_none());
    let status = node.wait_exit();
    assert!(status.success(), "exit status {status:?}; stderr: {}", node.stderr());
    // Every request the node read was answered and applied; the rest were never executed,
    // so what applied is exactly the answered prefix. The log shows it after a restart.
    let restarted = Node::start_at(node.dir.path(), &["--cores", "2"]);
    let mut r = restarted.wire();
    for i in [0, answered - 1] {
        let reply = r.call(Op::get(b(&format!("drain{i}"))));
        assert!(matches!(reply, Reply::Value { .. }), "answered drain{i} missing: {reply:?}");
    }
    if answered < n {
        let reply = r.call(Op::get(b(&format!("drain{answered}"))));
        assert!(
            matches!(&reply, Reply::Error(e) if e.code == ErrorCode::NotFound),
            "drain{answered} was never answered yet applied: {reply:?}"
        );
    }
}

#[test]
fn sigterm_on_idle_node_exits_zero() {
    let mut node = Node::start(&["--cores", "2"]);
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
}

fn run_serve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corekv")).arg("serve").args(args).output().expect("run corekv")
}

#[test]
fn port_in_use_is_a_clear_error() {
    let node = Node::start(&["--cores", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let out =
        run_serve(&["--listen", &node.addr.to_string(), "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&node.addr.to_string()),
        "{stderr}"
    );
}

#[test]
fn data_dir_in_use_is_a_clear_error() {
    let node = Node::start(&["--cores", "1"]);
    let data = node.dir.path().join("data");
    let out = run_serve(&["--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another corekv node"), "{stderr}");
}

#[test]
fn bad_flags_and_config_are_refused() {
    let out = run_serve(&["--cores", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cores"));
    let out = run_serve(&["--cores", "4096"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CPUs"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = 5\n").unwrap();
    let out = run_serve(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.toml"));
}

#[test]
fn config_file_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "cores = 1\nnode_id = \"from-file\"\npartitions = 64\n").unwrap();
    let node = Node::start(&["--config", cfg.to_str().unwrap()]);
    let mut w = node.wire();
    match w.call(Op::Topology) {
        Reply::Topology(t) => {
            assert_eq!(t.node_id, "from-file");
            assert_eq!(t.cores, 1);
            assert_eq!(t.partitions, 64);
        }
        other => panic!("{other:?}"),
    }
}
