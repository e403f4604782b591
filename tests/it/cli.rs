//! The `corekv` client subcommands as a script would use them: stdout, stderr, exit codes.

use std::process::{Command, Output, Stdio};

use crate::harness::Node;

fn corekv(node: &Node, args: &[&str]) -> Output {
    let addr = node.addr.to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--addr", &addr]);
    Command::new(env!("CARGO_BIN_EXE_corekv")).args(&full).output().expect("run corekv")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn get_set_del_cas_and_exit_codes() {
    let node = Node::start(&["--cores", "2"]);
    let set = corekv(&node, &["set", "greeting", "hello"]);
    assert_eq!(set.status.code(), Some(0));
    let v1: u64 = stdout(&set).trim().parse().expect("set prints the version");

    let get = corekv(&node, &["get", "greeting"]);
    assert_eq!(get.status.code(), Some(0));
    assert_eq!(stdout(&get), "hello\n", "the value alone on stdout");

    let miss = corekv(&node, &["get", "absent"]);
    assert_eq!(miss.status.code(), Some(1));
    assert_eq!(stdout(&miss), "");
    assert!(String::from_utf8_lossy(&miss.stderr).contains("not found"));

    // cas by value: wrong expectation → 1, right → 0 and a new version
    assert_eq!(corekv(&node, &["cas", "greeting", "nope", "x"]).status.code(), Some(1));
    let cas = corekv(&node, &["cas", "greeting", "hello", "hi"]);
    assert_eq!(cas.status.code(), Some(0));
    let v2: u64 = stdout(&cas).trim().parse().unwrap();
    assert!(v2 > v1);
    // cas by version
    let stale = v1.to_string();
    assert_eq!(
        corekv(&node, &["cas", "greeting", "--if-version", &stale, "x"]).status.code(),
        Some(1)
    );
    let fresh = v2.to_string();
    assert_eq!(
        corekv(&node, &["cas", "greeting", "--if-version", &fresh, "hey"]).status.code(),
        Some(0)
    );
    assert_eq!(stdout(&corekv(&node, &["get", "greeting"])), "hey\n");

    // update and set-if-absent
    assert_eq!(corekv(&node, &["set", "fresh", "1", "--if-present"]).status.code(), Some(1));
    assert_eq!(corekv(&node, &["set", "fresh", "1", "--if-absent"]).status.code(), Some(0));
    assert_eq!(corekv(&node, &["set", "fresh", "2", "--if-absent"]).status.code(), Some(1));

    assert_eq!(corekv(&node, &["del", "greeting"]).status.code(), Some(0));
    assert_eq!(corekv(&node, &["del", "greeting"]).status.code(), Some(1));
    assert_eq!(corekv(&node, &["ping"]).status.code(), Some(0));
    let stats = corekv(&node, &["stats"]);
    assert_eq!(stats.status.code(), Some(0));
    assert!(stdout(&stats).contains("all"), "{}", stdout(&stats));
}

#[test]
fn ttl_flag_and_meta() {
    let node = Node::start(&["--cores", "1"]);
    assert_eq!(corekv(&node, &["set", "t", "v", "--ttl-ms", "60000"]).status.code(), Some(0));
    let get = corekv(&node, &["get", "t", "--meta"]);
    let meta = String::from_utf8_lossy(&get.stderr);
    assert!(meta.contains("ttl_ms=") && !meta.contains("ttl_ms=none"), "{meta}");
}

#[test]
fn value_from_stdin() {
    let node = Node::start(&["--cores", "1"]);
    let addr = node.addr.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["set", "blob", "-", "--addr", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"line one\nline two").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(stdout(&corekv(&node, &["get", "blob"])), "line one\nline two\n");
}

#[test]
fn unreachable_node_is_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_corekv"))
        .args(["get", "k", "--addr", "127.0.0.1:1", "--timeout-ms", "500"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}
