//! Checkpoints and compaction: under a sustained overwrite load the data directory stays
//! within about twice the live data, every value stays right, and a restart loads the
//! checkpoint and replays only the log written after it.

use corekv_schema::codec::{Op, Reply};

use crate::harness::{Node, Wire, b, dir_bytes, stat_sum};

fn set_all(w: &mut Wire, keys: usize, round: usize) {
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|i| {
                Op::set(b(&format!("key:{i:08}")), b(&format!("{round:04}:{}", "v".repeat(90))))
            })
            .collect();
        match w.call(Op::Batch(ops)) {
            Reply::Batch(r) => assert!(r.iter().all(|r| matches!(r, Reply::Written { .. }))),
            other => panic!("{other:?}"),
        }
    }
}

fn recovered_line(node: &Node) -> String {
    node.stderr().lines().filter(|l| l.contains("recovered")).collect::<Vec<_>>().join("\n")
}

#[test]
fn overwrites_keep_disk_bounded_and_restart_replays_only_after_the_checkpoint() {
    overwrite_rounds(&[]);
}

/// The same with values mostly on disk: compaction moves values it reads from the log, and
/// reads after the restart come from the log too.
#[test]
fn overwrites_with_values_on_disk_keep_disk_bounded() {
    overwrite_rounds(&["--cache-bytes", "1048576"]);
}

fn overwrite_rounds(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (keys, rounds) = (50_000, 5);
    let flags: Vec<&str> = ["--cores", "1"].iter().chain(flags).copied().collect();
    let mut node = Node::start_at(dir.path(), &flags);
    let mut w = node.wire();
    let mut disk_max = 0;
    for round in 0..rounds {
        set_all(&mut w, keys, round);
        // Give the compaction check (every 500 ms) a chance to run between rounds.
        std::thread::sleep(std::time::Duration::from_millis(700));
        disk_max = disk_max.max(dir_bytes(&node.data_dir()));
    }
    // Live data as it lies in the log: every current value's record (header, key, value).
    let live = stat_sum(&mut w, |c| c.log_live_bytes);
    assert!(live > (keys * 100) as u64, "{live}");
    // Twice the live data (compaction's ratio is 0.5), plus the log written since the last
    // checkpoint (at most 4 segments, 1 MiB each here), the current and prepared segments and
    // the checkpoint itself (an index of 50k keys, ~3 MB).
    let bound = 2 * live + 10 * (1 << 20);
    assert!(
        disk_max <= bound,
        "disk {disk_max} B exceeds {bound} B (live {live} B); {}",
        node.stderr()
    );
    assert!(stat_sum(&mut w, |c| c.segments_removed) > 0, "{}", node.stderr());
    let stderr = node.stderr();
    // The event line of a checkpoint (the boot's "recovered ... checkpoint=none" does not match).
    assert!(stderr.contains("checkpoint core="), "no checkpoint was taken:\n{stderr}");

    // A few writes after the last checkpoint, then restart.
    for i in 0..10 {
        assert!(matches!(w.call(Op::set(b(&format!("late:{i}")), b("x"))), Reply::Written { .. }));
    }
    node.terminate();
    let node = Node::start_at(dir.path(), &flags);
    let line = recovered_line(&node);
    assert!(line.contains("checkpoint_records="), "{line}");
    assert!(!line.contains("checkpoint=none"), "restart did not load a checkpoint: {line}");
    // What was replayed from the log is far less than everything ever written (250k sets).
    let log_records: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("log_records="))
        .and_then(|v| v.parse().ok())
        .expect("log_records in the recovery line");
    assert!(log_records < 100_000, "replayed {log_records} log records: {line}");
    let mut w = node.wire();
    for i in (0..keys).step_by(97) {
        match w.call(Op::get(b(&format!("key:{i:08}")))) {
            Reply::Value { value, .. } => {
                let last = format!("{:04}:", rounds - 1);
                assert!(value.starts_with(last.as_bytes()), "key {i}");
            }
            other => panic!("key {i}: {other:?}"),
        }
    }
    assert!(matches!(w.call(Op::get(b("late:9"))), Reply::Value { .. }));
}
