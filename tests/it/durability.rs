//! Durability: the write-ahead log seen from outside, through restarts, crashes and damage.
//!
//! Each test starts a node on a directory the test keeps (`Node::start_at`), writes through
//! the wire, stops the node (SIGTERM, or SIGKILL for a crash), sometimes damages the log
//! files, and starts a node again on the same directory. The story is always: what was
//! acknowledged comes back; what was deleted or expired stays gone; a torn tail is cut and
//! reported; damage in the middle of a log refuses the boot (or, with `--salvage`, is
//! dropped and reported); a data directory is never opened with another core count.
//!
//! The tests depend on the on-disk layout only as far as the spec fixes it: segments are
//! `data/core-<i>/<seq>.log`, a record starts with `crc32c u32 LE | len u32 LE` and the crc
//! covers the rest of the record, keys and values are stored verbatim. `parse_records`
//! finds record boundaries from that alone (any segment header size, `len` counting either
//! the whole record or what follows it, an all-zero tail as a clean end).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corekv_schema::codec::{ErrorCode, Op, Reply, SetOp};

use crate::harness::{Node, Rng, Wire, b, boot_failure, key_on_core};

fn set(k: &str, v: &str) -> Op {
    Op::set(b(k), b(v))
}

fn set_ttl(k: &str, v: &str, ttl_ms: u64) -> Op {
    Op::Set(SetOp { key: b(k), value: b(v), ttl_ms, ..Default::default() })
}

fn written(r: &Reply) -> u64 {
    match r {
        Reply::Written { version } => *version,
        other => panic!("expected Written, got {other:?}"),
    }
}

/// `Some((value, version, ttl_ms))`, or `None` when the key is absent.
fn read(w: &mut Wire, k: &str) -> Option<(String, u64, Option<u64>)> {
    match w.call(Op::get(b(k))) {
        Reply::Value { value, version, ttl_ms } => {
            Some((String::from_utf8(value.to_vec()).unwrap(), version, ttl_ms))
        }
        Reply::Error(e) if e.code == ErrorCode::NotFound => None,
        other => panic!("get {k}: {other:?}"),
    }
}

/// `n` keys of equal length that all live on `core` of a two-core node (one hash tag), so
/// their records sit in that core's log in the order they were written.
fn keys_on_core(core: u16, n: usize) -> Vec<String> {
    let tag = key_on_core("tag", core, 2);
    (0..n).map(|i| format!("{{{tag}}}:{i:05}")).collect()
}

fn val(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(48))
}

/// Writes `keys[i] = val(i)` in order, one acknowledged write at a time.
fn write_in_order(node: &Node, keys: &[String]) {
    let mut w = node.wire();
    for (i, k) in keys.iter().enumerate() {
        written(&w.call(set(k, &val(i))));
    }
}

fn stop_cleanly(node: &mut Node) {
    let status = node.terminate();
    assert!(status.success(), "exit status {status:?}; stderr: {}", node.stderr());
}

/// Waits (briefly) for `needle` in the node's stderr; returns the stderr either way.
fn stderr_with(node: &Node, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stderr = node.stderr();
        if stderr.contains(needle) || Instant::now() > deadline {
            return stderr;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Record boundaries in a segment, from the framing the spec fixes; `None` when the bytes
/// are not a chain of crc-valid records under any reading of it.
fn parse_records(bytes: &[u8]) -> Option<Vec<Range<usize>>> {
    let mut empty = None;
    for header in 0..=64.min(bytes.len()) {
        for len_is_whole_record in [true, false] {
            match chain(bytes, header, len_is_whole_record) {
                Some(records) if !records.is_empty() => return Some(records),
                Some(records) => empty = empty.or(Some(records)),
                None => {}
            }
        }
    }
    empty
}

fn chain(bytes: &[u8], start: usize, len_is_whole_record: bool) -> Option<Vec<Range<usize>>> {
    let mut records = vec![];
    let mut pos = start;
    loop {
        if bytes[pos..].iter().all(|&x| x == 0) {
            return Some(records);
        }
        let word = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let crc = word(pos)?;
        let len = word(pos + 4)? as usize;
        let total = if len_is_whole_record { len } else { len.checked_add(8)? };
        let end = pos.checked_add(total)?;
        if total <= 8 || end > bytes.len() || crc32c::crc32c(&bytes[pos + 4..end]) != crc {
            return None;
        }
        records.push(pos..end);
        pos = end;
    }
}

struct Segment {
    path: PathBuf,
    /// `core-<i>/<name>.log`: how stderr must name the file (robust to path canonicalization).
    short: String,
    bytes: Vec<u8>,
    records: Vec<Range<usize>>,
}

impl Segment {
    /// The byte range of the record holding `key` (keys are stored verbatim).
    fn record_of(&self, key: &str) -> Range<usize> {
        let needle = key.as_bytes();
        self.records
            .iter()
            .find(|&r| self.bytes[r.clone()].windows(needle.len()).any(|w| w == needle))
            .unwrap_or_else(|| panic!("no record of {key} in {}", self.path.display()))
            .clone()
    }
}

fn segment_paths(data: &Path, core: usize) -> Vec<PathBuf> {
    let dir = data.join(format!("core-{core}"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    paths
}

/// The newest segment of `core` that holds at least one record.
fn newest_segment(data: &Path, core: usize) -> Segment {
    for path in segment_paths(data, core).into_iter().rev() {
        let bytes = std::fs::read(&path).unwrap();
        let records = parse_records(&bytes).unwrap_or_else(|| {
            panic!("{} is not a chain of `crc32c | len | rest` records", path.display())
        });
        if !records.is_empty() {
            let name = path.file_name().unwrap().to_string_lossy();
            let short = format!("core-{core}/{name}");
            return Segment { path, short, bytes, records };
        }
    }
    panic!("no segment with records under {}/core-{core}", data.display());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
            found.push(path);
        }
    }
    found
}

#[test]
fn restart_recovers_sets_deletes_and_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--cores", "2"]; // durability defaults to sync
    let mut node = Node::start_at(dir.path(), &flags);
    let mut w = node.wire();
    let kept: Vec<String> = (0..2).map(|c| key_on_core("kept:", c, 2)).collect();
    let over: Vec<String> = (0..2).map(|c| key_on_core("over:", c, 2)).collect();
    let gone: Vec<String> = (0..2).map(|c| key_on_core("gone:", c, 2)).collect();
    let short = key_on_core("short:", 1, 2);
    let long = key_on_core("long:", 0, 2);
    let mut before = HashMap::new();
    // Versions are compared per core: each core orders its own writes.
    let mut max_version = [0u64; 2];
    for c in 0..2 {
        before.insert(&kept[c], written(&w.call(set(&kept[c], &format!("kept{c}")))));
        written(&w.call(set(&over[c], "first")));
        before.insert(&over[c], written(&w.call(set(&over[c], &format!("second{c}")))));
        let v = written(&w.call(set(&gone[c], "doomed")));
        assert_eq!(w.call(Op::delete(b(&gone[c]))), Reply::Deleted { version: v });
        max_version[c] = v.max(before[&kept[c]]).max(before[&over[c]]);
    }
    max_version[1] = max_version[1].max(written(&w.call(set_ttl(&short, "brief", 300))));
    let short_written = Instant::now();
    max_version[0] = max_version[0].max(written(&w.call(set_ttl(&long, "lasting", 60_000))));
    stop_cleanly(&mut node);
    // The short TTL runs out while the node is down: recovery must not resurrect it.
    std::thread::sleep(Duration::from_millis(500).saturating_sub(short_written.elapsed()));

    for boot in 1..=2 {
        let mut node = Node::start_at(dir.path(), &flags);
        let mut w = node.wire();
        for c in 0..2 {
            let expect_kept = (format!("kept{c}"), before[&kept[c]], None);
            assert_eq!(read(&mut w, &kept[c]), Some(expect_kept), "boot {boot}");
            let expect_over = (format!("second{c}"), before[&over[c]], None);
            assert_eq!(read(&mut w, &over[c]), Some(expect_over), "boot {boot}");
            assert_eq!(read(&mut w, &gone[c]), None, "deleted key is back, boot {boot}");
        }
        assert_eq!(read(&mut w, &short), None, "expired key is back, boot {boot}");
        let (value, _, ttl) = read(&mut w, &long).expect("60 s TTL key lost");
        assert_eq!(value, "lasting");
        let ttl = ttl.expect("60 s TTL key lost its TTL");
        assert!((30_000..=60_000).contains(&ttl), "remaining ttl {ttl} ms");
        // Versions keep growing across restarts, on each core.
        for (c, max) in max_version.iter_mut().enumerate() {
            let v = written(&w.call(set(&key_on_core("after:", c as u16, 2), "x")));
            assert!(v > *max, "core {c}: version {v} after restart <= {max} before");
            *max = v;
        }
        // A second boot replays two segments per core.
        stop_cleanly(&mut node);
    }
}

#[test]
fn periodic_and_none_modes() {
    let periodic = ["--cores", "2", "--durability", "periodic", "--fsync-interval-ms", "50"];
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("periodic:{i}")).collect();
    let mut node = Node::start_at(dir.path(), &periodic);
    write_in_order(&node, &keys[..20]);
    stop_cleanly(&mut node); // a clean exit flushes the log
    let mut node = Node::start_at(dir.path(), &periodic);
    write_in_order(&node, &keys[20..]);
    // Many fsync intervals later, a crash loses nothing of what was written before.
    std::thread::sleep(Duration::from_millis(500));
    node.kill9();
    let node = Node::start_at(dir.path(), &periodic);
    let mut w = node.wire();
    for part in [&keys[..20], &keys[20..]] {
        for (i, k) in part.iter().enumerate() {
            assert_eq!(read(&mut w, k).map(|r| r.0), Some(val(i)), "{k} lost in periodic mode");
        }
    }
    drop(node);

    let none = ["--cores", "2", "--durability", "none"];
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("memory-only:{i}")).collect();
    let mut node = Node::start_at(dir.path(), &none);
    write_in_order(&node, &keys);
    stop_cleanly(&mut node);
    let data = node.data_dir();
    for k in &keys {
        let on_disk = files_containing(&data, k.as_bytes());
        assert!(on_disk.is_empty(), "{k} reached disk in none mode: {on_disk:?}");
    }
    for core in 0..2 {
        if !data.join(format!("core-{core}")).exists() {
            continue;
        }
        for path in segment_paths(&data, core) {
            let records = parse_records(&std::fs::read(&path).unwrap());
            assert!(records.is_some_and(|r| r.is_empty()), "{} holds records", path.display());
        }
    }
    let node = Node::start_at(dir.path(), &none);
    let mut w = node.wire();
    for k in &keys {
        assert_eq!(read(&mut w, k), None, "{k} survived a restart in none mode");
    }
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let mut rng = Rng::seeded("torn_tail_is_cut_and_reported");
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--cores", "2"];
    let keys = keys_on_core(0, 120);
    let mut node = Node::start_at(dir.path(), &flags);
    write_in_order(&node, &keys);
    node.kill9();
    let data = node.data_dir();
    let pristine = dir.path().join("pristine");
    copy_dir(&data, &pristine);
    let seg = newest_segment(&data, 0);
    let records: Vec<Range<usize>> = keys.iter().map(|k| seg.record_of(k)).collect();
    assert!(records.windows(2).all(|p| p[0].end <= p[1].start), "records out of write order");

    for trial in 0..5 {
        // Cut strictly inside the record of key `j`, one of the last 20: keys before it must
        // come back exactly, it and everything after must be gone.
        let j = rng.range(keys.len() as u64 - 20, keys.len() as u64 - 1) as usize;
        let cut = rng.range(records[j].start as u64 + 1, records[j].end as u64 - 1);
        let story = format!("trial {trial}: cut {} at {cut} inside record {j}", seg.short);
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&pristine, &data);
        std::fs::OpenOptions::new().write(true).open(&seg.path).unwrap().set_len(cut).unwrap();

        let mut node = Node::start_at(dir.path(), &flags);
        let stderr = stderr_with(&node, "torn tail");
        assert!(stderr.contains("torn tail"), "{story}: no `torn tail` report: {stderr}");
        assert!(stderr.contains(&seg.short), "{story}: segment not named: {stderr}");
        let mut w = node.wire();
        let present: Vec<bool> = keys.iter().map(|k| read(&mut w, k).is_some()).collect();
        let prefix = present.iter().take_while(|&&p| p).count();
        assert!(present[prefix..].iter().all(|&p| !p), "{story}: present keys not a prefix");
        assert_eq!(prefix, j, "{story}: keys k0..k{prefix} came back, expected k0..k{j}");
        for (i, k) in keys[..j].iter().enumerate() {
            assert_eq!(read(&mut w, k).unwrap().0, val(i), "{story}: {k}");
        }
        stop_cleanly(&mut node);

        // The cut is made once: the next boot finds a clean log.
        let node = Node::start_at(dir.path(), &flags);
        assert!(!node.stderr().contains("torn tail"), "{story}: reported twice");
        let mut w = node.wire();
        assert_eq!(read(&mut w, &keys[j - 1]).map(|r| r.0), Some(val(j - 1)), "{story}");
        assert_eq!(read(&mut w, &keys[j]), None, "{story}");
    }
}

#[test]
fn flipped_byte_in_the_middle_refuses_to_start_then_salvage() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--cores", "2"];
    let keys = keys_on_core(0, 200);
    let mut node = Node::start_at(dir.path(), &flags);
    write_in_order(&node, &keys);
    stop_cleanly(&mut node);
    let mut seg = newest_segment(&node.data_dir(), 0);
    // Damage the last value byte of the middle record: its length still frames it, its crc
    // fails, and valid records follow, so this is not a torn tail.
    let j = keys.len() / 2;
    let damaged = seg.record_of(&keys[j]);
    seg.bytes[damaged.end - 1] ^= 0xff;
    std::fs::write(&seg.path, &seg.bytes).unwrap();

    let (code, stderr) = boot_failure(dir.path(), &flags);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(stderr.contains(&seg.short), "segment {} not named: {stderr}", seg.short);
    let offsets: Vec<usize> = stderr
        .match_indices("offset ")
        .filter_map(|(at, m)| {
            let digits: String =
                stderr[at + m.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect();
    assert!(
        offsets.iter().any(|o| damaged.contains(o)),
        "no `offset <N>` inside the damaged record {damaged:?}: {stderr}"
    );

    let salvage = ["--cores", "2", "--salvage"];
    let node = Node::start_at(dir.path(), &salvage);
    let stderr = stderr_with(&node, "salvage");
    assert!(stderr.contains("salvage"), "{stderr}");
    let mut w = node.wire();
    for (i, k) in keys[..j].iter().enumerate() {
        assert_eq!(read(&mut w, k).map(|r| r.0), Some(val(i)), "{k} before the damage");
    }
    // The damaged record alone is dropped (the walk resumes at the next valid record), and
    // nothing is served with damaged bytes.
    assert_eq!(read(&mut w, &keys[j]), None, "{}: its record was damaged", keys[j]);
    for (i, k) in keys.iter().enumerate().skip(j + 1) {
        assert_eq!(read(&mut w, k).map(|r| r.0), Some(val(i)), "{k} after the damage");
    }
    written(&w.call(set("after-salvage", "ok")));
}

#[test]
fn different_core_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_at(dir.path(), &["--cores", "2"]);
    written(&node.wire().call(set("k", "v")));
    stop_cleanly(&mut node);
    let (code, stderr) = boot_failure(dir.path(), &["--cores", "1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cores"), "{stderr}");
    // The refusal changed nothing: the right core count opens it as before.
    let node = Node::start_at(dir.path(), &["--cores", "2"]);
    assert_eq!(read(&mut node.wire(), "k").map(|r| r.0), Some("v".to_string()));
}

const WRITERS: usize = 4;
const KEYS_PER_WRITER: u64 = 50;

/// What one writer thread did in one iteration.
struct Writes {
    /// key → counter of the last acknowledged write.
    acked: HashMap<String, u64>,
    /// Highest counter sent (acknowledged or not): nothing later can be stored.
    sent_max: Option<u64>,
}

/// Sequential sets `w{t}:{c % 50} = "{iteration}:{c}"` for c = 0, 1, … until the connection
/// dies (the node is killed) or `stop`.
fn writer(mut w: Wire, t: usize, iteration: u64, stop: Arc<AtomicBool>) -> impl FnOnce() -> Writes {
    move || {
        let mut out = Writes { acked: HashMap::new(), sent_max: None };
        for c in 0u64.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("w{t}:{}", c % KEYS_PER_WRITER);
            out.sent_max = Some(c);
            match w.try_call(set(&key, &format!("{iteration}:{c}"))) {
                Some(Reply::Written { .. }) => {
                    out.acked.insert(key, c);
                }
                _ => break,
            }
        }
        out
    }
}

#[test]
fn kill9_under_sync_load_loses_no_acknowledged_write() {
    let iterations: u64 = std::env::var("COREKV_CRASH_ITERATIONS")
        .ok()
        .map(|s| s.parse().expect("COREKV_CRASH_ITERATIONS"))
        .unwrap_or(20);
    let mut rng = Rng::seeded("kill9_under_sync_load_loses_no_acknowledged_write");
    let dir = tempfile::tempdir().unwrap();
    // Every other boot keeps almost no value in memory, so reads after that crash come from
    // the log itself (direct I/O), not from what replay cached.
    let cached = ["--cores", "2", "--durability", "sync"];
    let on_disk = ["--cores", "2", "--durability", "sync", "--cache-bytes", "0"];
    let flags =
        |iteration: u64| if iteration.is_multiple_of(2) { &cached[..] } else { &on_disk[..] };
    // key → (iteration, counter) of its last acknowledged write; values order the same way.
    let mut expected: HashMap<String, (u64, u64)> = HashMap::new();
    let mut acked_total = 0;
    let mut node = Node::start_at(dir.path(), flags(0));
    for iteration in 0..iterations {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..WRITERS)
            .map(|t| std::thread::spawn(writer(node.wire(), t, iteration, stop.clone())))
            .collect();
        let delay = rng.range(10, 300);
        std::thread::sleep(Duration::from_millis(delay));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut sent_max = [None; WRITERS];
        for (t, thread) in threads.into_iter().enumerate() {
            let writes = thread.join().expect("writer");
            acked_total += writes.acked.len();
            sent_max[t] = writes.sent_max;
            for (key, c) in writes.acked {
                expected.insert(key, (iteration, c));
            }
        }

        node = Node::start_at(dir.path(), flags(iteration + 1));
        let mut w = node.wire();
        for (key, &(acked_iteration, acked_c)) in &expected {
            let story = format!("iteration {iteration} (kill after {delay} ms), key {key}");
            let (value, ..) = read(&mut w, key).unwrap_or_else(|| {
                panic!("{story}: acknowledged {acked_iteration}:{acked_c}, lost")
            });
            let (i, c) = value
                .split_once(':')
                .and_then(|(i, c)| Some((i.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
                .unwrap_or_else(|| panic!("{story}: value {value:?} was never written"));
            assert!(
                (i, c) >= (acked_iteration, acked_c),
                "{story}: acknowledged {acked_iteration}:{acked_c}, found older {value}"
            );
            let t: usize = key[1..key.find(':').unwrap()].parse().unwrap();
            let slot: u64 = key[key.find(':').unwrap() + 1..].parse().unwrap();
            let sent = if i == iteration { sent_max[t] } else { Some(u64::MAX) };
            assert!(
                c % KEYS_PER_WRITER == slot && i <= iteration && sent.is_some_and(|s| c <= s),
                "{story}: found {value}, which was never sent for this key"
            );
        }
        if !(iteration + 1).is_multiple_of(2) && expected.len() > 100 {
            let fetches = crate::harness::stat_sum(&mut w, |c| c.fetches);
            assert!(fetches > 0, "iteration {iteration}: no value was read from the log");
        }
    }
    eprintln!("{iterations} crashes, {acked_total} acknowledged writes checked");
    assert!(acked_total > 0, "no write was ever acknowledged");
}
