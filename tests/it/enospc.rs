//! A full disk: the test mounts a small tmpfs (root is needed, as in CI), fills it through the
//! node, and checks the promise of the durable engine: writes are refused with a typed error
//! and never acknowledged unless durable, reads go on, stats name the failure, and after
//! space is freed a restart finds every acknowledged write intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use corekv_schema::codec::{ErrorCode, Op, Reply};

use crate::harness::{Node, b};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_refuses_writes_keeps_reads_and_loses_nothing_acknowledged() {
    let base = tempfile::tempdir().unwrap();
    let mount = Mount::tmpfs(&base.path().join("mnt"), "6m");
    let node_dir = base.path().join("mnt");
    let mut node = Node::start_at(&node_dir, &["--cores", "1"]);
    let mut w = node.wire();
    assert_eq!(crate::harness::http_get(node.http, "/healthz").0, 200);
    let value = "x".repeat(64 * 1024);
    let mut acked = BTreeMap::new();
    let mut refused = None;
    for i in 0..400 {
        let key = format!("fill{i:04}");
        match w.call(Op::set(b(&key), b(&format!("{i}:{value}")))) {
            Reply::Written { .. } => {
                acked.insert(key, i);
            }
            Reply::Error(e) => {
                refused = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let refused = refused.expect("6 MiB cannot take 400 x 64 KiB");
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused:?}");
    assert!(!acked.is_empty(), "some writes must fit before the disk fills");
    // Writes stay refused, reads go on, stats say why.
    match w.call(Op::set(b("small"), b("v"))) {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable),
        other => panic!("a write was acknowledged on a failed log: {other:?}"),
    }
    let (first, _) = acked.iter().next().unwrap();
    assert!(matches!(w.call(Op::get(b(first))), Reply::Value { .. }));
    match w.call(Op::Stats) {
        Reply::Stats(s) => assert!(!s.cores[0].log_error.is_empty(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    // Health says so too; readiness does not change (reads are still served).
    let (status, body) = crate::harness::http_get(node.http, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("degraded") && body.contains("core 0"), "{body}");
    assert_eq!(crate::harness::http_get(node.http, "/readyz").0, 200);
    // Free space, restart: every acknowledged write is there, intact.
    node.terminate();
    mount.resize("64m");
    let node = Node::start_at(&node_dir, &["--cores", "1"]);
    let mut w = node.wire();
    for (key, i) in &acked {
        match w.call(Op::get(b(key))) {
            Reply::Value { value: v, .. } => {
                assert!(v.starts_with(format!("{i}:").as_bytes()), "{key}");
                assert_eq!(v.len(), format!("{i}:").len() + value.len(), "{key}");
            }
            other => panic!("acknowledged {key} lost: {other:?}"),
        }
    }
    assert!(matches!(w.call(Op::set(b("after"), b("ok"))), Reply::Written { .. }));
}
