//! Operator commands over the wire: an on-demand checkpoint, and a backup that a fresh node
//! opens with everything acknowledged before it.

use corekv_schema::codec::{ErrorCode, Op, Reply};

use crate::harness::{Node, b};

#[test]
fn checkpoint_on_demand_then_backup_opens_as_a_data_dir() {
    let backup = tempfile::tempdir().unwrap();
    let root = backup.path().to_str().unwrap().to_string();
    let node = Node::start(&["--cores", "2", "--backup-dir", &root]);
    let mut w = node.wire();
    // Only under --backup-dir: anywhere else is refused before anything is written.
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().join("copy").to_str().unwrap().to_string();
    match w.call(Op::Backup { dir: elsewhere }) {
        Reply::Error(e) => assert!(e.message.contains("not under --backup-dir"), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!outside.path().join("copy").exists());
    for i in 0..300 {
        let reply = w.call(Op::set(b(&format!("k{i}")), b(&format!("v{i}"))));
        assert!(matches!(reply, Reply::Written { .. }), "{reply:?}");
    }
    match w.call(Op::Checkpoint) {
        Reply::AdminDone { records, .. } => assert!(records >= 300, "{records}"),
        other => panic!("{other:?}"),
    }
    // Written after the checkpoint: must be in the backup too (via the log it copies).
    assert!(matches!(w.call(Op::delete(b("k0"))), Reply::Deleted { .. }));
    assert!(matches!(w.call(Op::set(b("late"), b("yes"))), Reply::Written { .. }));
    let target = backup.path().join("copy");
    let dir = target.to_str().unwrap().to_string();
    assert!(matches!(w.call(Op::Backup { dir: dir.clone() }), Reply::AdminDone { .. }));
    // A second backup into the same, now non-empty, directory is refused.
    match w.call(Op::Backup { dir }) {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    match w.call(Op::Stats) {
        Reply::Stats(s) => {
            assert!(s.cores.iter().all(|c| c.log_flushes > 0 && c.log_error.is_empty()), "{s:?}");
        }
        other => panic!("{other:?}"),
    }
    // The backup directory is a data directory: open it with a second node.
    std::fs::rename(&target, backup.path().join("data")).unwrap();
    let restored = Node::start_at(backup.path(), &["--cores", "2"]);
    let mut r = restored.wire();
    assert!(matches!(r.call(Op::get(b("k0"))), Reply::Error(e) if e.code == ErrorCode::NotFound));
    for i in 1..300 {
        match r.call(Op::get(b(&format!("k{i}")))) {
            Reply::Value { value, .. } => assert_eq!(value, b(&format!("v{i}"))),
            other => panic!("k{i}: {other:?}"),
        }
    }
    assert!(matches!(r.call(Op::get(b("late"))), Reply::Value { .. }));
}
