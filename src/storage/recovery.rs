//! Recovery: rebuild a core's engine from its write-ahead log, checking every record.
//!
//! Segments are replayed oldest first; every record's crc and bounds are verified
//! ([`record::scan`]). How a segment may end decides what happens:
//!
//! - an all-zero remainder (the unwritten part of the last direct-I/O block) is a clean end;
//! - a torn tail (bytes that are not a record, with no valid record after them, in the newest
//!   segment holding data) is a write the crash cut short: it is truncated away, durably, and
//!   reported with its file and offset;
//! - anything else (a bad record followed by good ones, or a torn non-final segment) is
//!   corruption in the middle of the log: recovery refuses, naming file and offset, because
//!   starting would silently lose acknowledged writes. With `salvage` it skips the bad ranges,
//!   reports each one, and starts.
//!
//! Progress (records/s, MB/s) is logged every second during a long replay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::record::{self, Ending, Invalid, Loc};
use super::{Engine, checkpoint, wal};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "log corrupt in {path} at offset {offset} ({invalid:?}); valid records resume at offset \
         {resumes_at}. Refusing to start: data after the damage would be lost. Start with \
         --salvage to skip the damaged range and keep the rest"
    )]
    Corrupt { path: PathBuf, offset: usize, invalid: Invalid, resumes_at: usize },
    #[error(
        "checkpoint {path} is damaged at offset {offset} ({invalid:?}); refusing to start. \
         Restore the data directory from a backup (segments before a checkpoint are \
         compacted, so the log alone cannot rebuild what it held)"
    )]
    Checkpoint { path: PathBuf, offset: usize, invalid: Invalid },
    #[error(
        "log segment {missing} is missing from {dir}: later writes cannot be replayed in order. \
         Refusing to start; --salvage replays what is there"
    )]
    Gap { dir: PathBuf, missing: u64 },
    #[error(
        "log segment {missing} is missing from {dir}, but the checkpoint says {keys_bytes} bytes \
         of current values live there. Refusing to start; --salvage drops those keys"
    )]
    Missing { dir: PathBuf, missing: u64, keys_bytes: u64 },
    #[error(
        "log corrupt in {path}: it ends early at offset {offset} ({invalid:?}) but newer \
         segments follow. Refusing to start; --salvage cuts it and keeps the rest"
    )]
    TornMiddle { path: PathBuf, offset: usize, invalid: Invalid },
}

/// What recovery found and did, for the log and for tests.
#[derive(Debug, Default)]
pub struct Report {
    /// The checkpoint loaded, if any, and the records it held.
    pub checkpoint: Option<(PathBuf, u64)>,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// (segment, offset, bytes cut)
    pub torn: Vec<(PathBuf, usize, usize)>,
    /// (segment, first byte dropped, first byte kept)
    pub salvaged: Vec<(PathBuf, usize, usize)>,
    /// The sequence number for the next segment the log will create.
    pub next_segment: u64,
    /// Every segment left after recovery, oldest first: values are read from them.
    pub kept: Vec<(u64, PathBuf)>,
    /// Keys dropped by salvage because the segment holding their values is gone.
    pub keys_dropped: u64,
    /// The loaded checkpoint's segment number (0: none).
    pub checkpoint_seq: u64,
    /// The segments the loaded checkpoint's index records point into: compaction keeps them
    /// until a newer checkpoint no longer does.
    pub checkpoint_segments: std::collections::BTreeSet<u64>,
}

/// Replays every segment in `dir` into `engine`. Creates `dir` if missing.
pub fn recover(
    dir: &Path,
    engine: &mut dyn Engine,
    salvage: bool,
    now_ms: u64,
) -> Result<Report, RecoveryError> {
    recover_observed(dir, engine, salvage, now_ms, &mut |_| {})
}

/// `recover`, showing every record replayed (checkpoint first, then the log, in order) to
/// `observe` before the engine gets it: cluster mode rebuilds its Raft groups from them.
pub fn recover_observed(
    dir: &Path,
    engine: &mut dyn Engine,
    salvage: bool,
    now_ms: u64,
    observe: &mut dyn FnMut(&super::Mutation),
) -> Result<Report, RecoveryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoveryError::Io { path, source }
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // The new directory's entry must be durable before segments in it are trusted.
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent).and_then(|f| f.sync_all()).map_err(io(parent))?;
        }
    }
    let started = Instant::now();
    let mut report = Report::default();
    // The newest checkpoint holds everything before its segment number.
    let mut replay_from = 0;
    if let Some((seq, path)) = checkpoint::list(dir).map_err(io(dir))?.pop() {
        let bytes = Bytes::from(std::fs::read(&path).map_err(io(&path))?);
        let mut records = 0u64;
        let ending = record::scan(
            &bytes,
            false,
            |m, _| {
                records += 1;
                if let record::Mutation::Index { loc, .. } = &m {
                    report.checkpoint_segments.insert(loc.segment());
                }
                observe(&m);
                engine.replay(m, None, now_ms);
            },
            |_, _, _| {},
        );
        match ending {
            Ending::Clean => {}
            Ending::TornTail { offset, invalid } | Ending::Corrupt { offset, invalid, .. } => {
                return Err(RecoveryError::Checkpoint { path, offset, invalid });
            }
        }
        report.bytes += bytes.len() as u64;
        report.records += records;
        report.checkpoint = Some((path, records));
        report.checkpoint_seq = seq;
        replay_from = seq;
    }
    // Segments before the checkpoint are not replayed: the checkpoint's index records point
    // into them, so they stay, and only their sizes are needed (for compaction).
    let (older, segments): (Vec<_>, Vec<_>) =
        wal::segments(dir).map_err(io(dir))?.into_iter().partition(|(seq, _)| *seq < replay_from);
    for (seq, path) in &older {
        let bytes = std::fs::metadata(path).map_err(io(path))?.len();
        engine.note_segment(*seq, bytes);
    }
    report.next_segment = segments.last().map_or(replay_from.max(1), |(seq, _)| seq + 1);
    // Segments are numbered consecutively from the checkpoint's: a gap means a lost file.
    let mut expected = segments.first().map(|(seq, _)| *seq);
    if replay_from > 0 && expected.is_some_and(|first| first != replay_from) && !salvage {
        return Err(RecoveryError::Gap { dir: dir.to_path_buf(), missing: replay_from });
    }
    for (seq, _) in &segments {
        if expected != Some(*seq) && !salvage {
            return Err(RecoveryError::Gap {
                dir: dir.to_path_buf(),
                missing: expected.unwrap_or(0),
            });
        }
        expected = Some(seq + 1);
    }
    // Which segments hold any data: a torn tail is legal only in the newest of them. Found
    // from the newest end (usually the first file looked at), so that replay then holds one
    // segment in memory at a time.
    let mut newest_with_data = None;
    for (i, (_, path)) in segments.iter().enumerate().rev() {
        if has_data(path).map_err(io(path))? {
            newest_with_data = Some(i);
            break;
        }
    }
    let mut progress_at = Instant::now() + Duration::from_secs(1);
    let (mut progress_records, mut progress_bytes) = (0u64, 0u64);
    for (i, (seq, path)) in segments.iter().enumerate() {
        let bytes = &Bytes::from(std::fs::read(path).map_err(io(path))?);
        // Locations in the index are (u32 segment from 1, u32 offset).
        if *seq == 0 || *seq > u64::from(u32::MAX) || bytes.len() as u64 > u64::from(u32::MAX) {
            return Err(RecoveryError::Io {
                path: path.clone(),
                source: std::io::Error::other(
                    "segment number or size out of range (numbers 1..=4294967295, under 4 GiB)",
                ),
            });
        }
        report.segments += 1;
        let mut skipped = Vec::new();
        let mut records_end = 0usize;
        let ending = record::scan(
            bytes,
            salvage,
            |m, at| {
                report.records += 1;
                let len = m.encoded_len();
                records_end = at + len;
                observe(&m);
                engine.replay(m, Some(Loc::new(*seq, at as u64, len)), now_ms);
                if report.records.is_multiple_of(16_384) && Instant::now() >= progress_at {
                    let secs = progress_at.elapsed().as_secs_f64() + 1.0;
                    let records = report.records - progress_records;
                    let mb = (report.bytes + at as u64 - progress_bytes) as f64 / 1e6;
                    tracing::info!(
                        segment = %path.display(),
                        records_per_sec = (records as f64 / secs) as u64,
                        mb_per_sec = format!("{:.1}", mb / secs),
                        "replaying log"
                    );
                    progress_records = report.records;
                    progress_bytes = report.bytes + at as u64;
                    progress_at = Instant::now() + Duration::from_secs(1);
                }
            },
            |from, to, _| skipped.push((from, to)),
        );
        for (from, to) in skipped {
            tracing::warn!(
                segment = %path.display(),
                offset = from,
                resumes_at = to,
                dropped_bytes = to - from,
                "salvage: skipped a corrupt range of the log"
            );
            report.salvaged.push((path.clone(), from, to));
        }
        report.bytes += bytes.len() as u64;
        match ending {
            // A segment left by a crash keeps its preallocated zeros: cut them so the next
            // boot does not read them again (and the disk holds only records).
            Ending::Clean if bytes.len() > records_end && Some(i) <= newest_with_data => {
                truncate(path, records_end as u64).map_err(io(path))?;
            }
            Ending::Clean => {}
            Ending::Corrupt { offset, invalid, resumes_at } => {
                return Err(RecoveryError::Corrupt {
                    path: path.clone(),
                    offset,
                    invalid,
                    resumes_at,
                });
            }
            Ending::TornTail { offset, invalid } => {
                if Some(i) != newest_with_data && !salvage {
                    return Err(RecoveryError::TornMiddle { path: path.clone(), offset, invalid });
                }
                let cut = bytes.len() - offset;
                truncate(path, offset as u64).map_err(io(path))?;
                if Some(i) == newest_with_data {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        cut_bytes = cut,
                        reason = ?invalid,
                        "torn tail: cut a partial record left by a crash"
                    );
                    report.torn.push((path.clone(), offset, cut));
                } else {
                    tracing::warn!(
                        segment = %path.display(),
                        offset,
                        cut_bytes = cut,
                        "salvage: cut a damaged segment end"
                    );
                    report.salvaged.push((path.clone(), offset, bytes.len()));
                }
            }
        }
    }
    // Segments newer than the last one with data hold only zeros (prepared by a log that
    // crashed or stopped before using them): remove them, so they never look like a gap.
    let keep = newest_with_data.map_or(0, |i| i + 1);
    for (_, path) in &segments[keep..] {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    if let Some((seq, _)) = segments.get(keep) {
        report.next_segment = *seq;
    }
    report.kept = older.into_iter().chain(segments.into_iter().take(keep)).collect();
    // Every current value must live in a segment that is there.
    for (seq, usage) in engine.segments() {
        if usage.live == 0 || report.kept.iter().any(|(s, _)| *s == seq) {
            continue;
        }
        // A key with a TTL that expired before its segment was compacted away leaves no
        // tombstone: it is dropped, not counted as lost, if it has expired by now. One that
        // has not is a value lost with its segment, TTL or not: the start is refused below.
        let expired = engine.drop_segment_keys(seq, Some(now_ms));
        if expired > 0 {
            tracing::warn!(
                segment = seq,
                keys = expired,
                "dropped expired keys whose segment is gone"
            );
        }
        let live =
            engine.segments().into_iter().find(|(s, _)| *s == seq).map_or(0, |(_, u)| u.live);
        if live == 0 {
            continue;
        }
        if !salvage {
            return Err(RecoveryError::Missing {
                dir: dir.to_path_buf(),
                missing: seq,
                keys_bytes: live,
            });
        }
        let dropped = engine.drop_segment_keys(seq, None);
        tracing::warn!(
            segment = seq,
            keys = dropped,
            "salvage: dropped keys whose segment is gone"
        );
        report.keys_dropped += dropped;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Whether the file holds any non-zero byte (preallocated and unused segments do not).
fn has_data(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(true);
        }
    }
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::{Mutation, encode};
    use crate::storage::{Applied, Engine, MemEngine, NoLog};
    use corekv_schema::codec::{Op, Reply};

    fn put(key: &str, value: &str, version: u64, expires_at_ms: u64) -> Mutation {
        Mutation::put(key.as_bytes(), value.as_bytes(), version, expires_at_ms)
    }

    fn write_segment(dir: &Path, seq: u64, ms: &[Mutation], pad_to: usize) -> PathBuf {
        let mut bytes = Vec::new();
        for m in ms {
            encode(m, &mut bytes);
        }
        if bytes.len() < pad_to {
            bytes.resize(pad_to, 0);
        }
        let path = dir.join(format!("{seq:020}.log"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn get(e: &mut MemEngine, key: &str) -> Option<(Bytes, u64)> {
        match e.execute(Op::get(Bytes::copy_from_slice(key.as_bytes())), 0, &mut NoLog, None) {
            Applied::Done(Reply::Value { value, version, .. }) => Some((value, version)),
            _ => None,
        }
    }

    #[test]
    fn replays_puts_deletes_and_expiry_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[put("a", "1", 1, 0), put("b", "2", 2, 0)], 4096);
        let del = Mutation::Delete { key: Bytes::from_static(b"a"), version: 4 };
        write_segment(dir.path(), 2, &[put("b", "3", 3, 0), del, put("t", "x", 5, 1_000)], 0);
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, false, 2_000).unwrap();
        assert_eq!((report.segments, report.records, report.next_segment), (2, 5, 3));
        assert!(report.torn.is_empty());
        assert_eq!(get(&mut e, "a"), None);
        assert_eq!(get(&mut e, "b"), Some((Bytes::from_static(b"3"), 3)));
        assert_eq!(get(&mut e, "t"), None, "expired while down");
        let stats = e.stats();
        assert_eq!((stats.keys, stats.value_bytes, stats.expired), (1, 2, 0));
        // Segment 1 holds nothing current any more; segment 2 holds b's put.
        let usage: Vec<_> = e.segments().into_iter().map(|(s, u)| (s, u.live)).collect();
        assert_eq!(usage, [(1, 0), (2, (record::HEADER_BYTES + 2) as u64)]);
        // New writes continue above every logged version.
        let next = e.execute(Op::set(Bytes::from_static(b"c"), Bytes::new()), 0, &mut NoLog, None);
        assert_eq!(next, Applied::Done(Reply::Written { version: 6 }));
    }

    #[test]
    fn torn_tail_is_cut_durably_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 7, &[put("a", "1", 1, 0), put("b", "2", 2, 0)], 0);
        let full = std::fs::metadata(&path).unwrap().len() as usize;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full as u64 - 5).unwrap();
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, false, 0).unwrap();
        assert_eq!(report.torn, vec![(path.clone(), full / 2, full / 2 - 5)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full / 2);
        assert!(get(&mut e, "a").is_some() && get(&mut e, "b").is_none());
        // Second recovery: nothing left to cut.
        let report = recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap();
        assert!(report.torn.is_empty());
    }

    #[test]
    fn corruption_refuses_and_salvage_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ms: Vec<_> = (0..10).map(|i| put(&format!("key{i}"), "v", i + 1, 0)).collect();
        let path = write_segment(dir.path(), 1, &ms, 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let record = bytes.len() / 10;
        bytes[record * 3 + 20] ^= 0xFF;
        std::fs::write(&path, &bytes).unwrap();
        let err = recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("offset {}", record * 3)), "{text}");
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, true, 0).unwrap();
        assert_eq!(report.salvaged, vec![(path, record * 3, record * 4)]);
        assert_eq!(e.stats().keys, 9);
    }

    #[test]
    fn a_torn_segment_followed_by_data_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 1, &[put("a", "1", 1, 0), put("b", "2", 2, 0)], 0);
        let len = std::fs::metadata(&first).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&first).unwrap().set_len(len - 3).unwrap();
        write_segment(dir.path(), 2, &[put("c", "3", 3, 0)], 0);
        let err = recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap_err();
        assert!(matches!(err, RecoveryError::TornMiddle { .. }), "{err}");
        // An empty newer segment (a boot that wrote nothing) does not count as data.
        write_segment(dir.path(), 2, &[], 4096);
        assert_eq!(recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap().torn.len(), 1);
    }

    /// Backward compatibility: `testdata/segment-v1.log` was written by a real node of format
    /// version 1 (sets, an overwrite, a far-future TTL, a hash-tagged key, a delete, a binary
    /// value). A format change that cannot read it fails here; bump the format instead.
    #[test]
    fn reads_a_segment_written_by_format_v1() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage/testdata");
        std::fs::copy(fixture.join("segment-v1.log"), dir.path().join(format!("{:020}.log", 1)))
            .unwrap();
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, false, 1_800_000_000_000).unwrap();
        assert_eq!((report.records, report.torn.len()), (7, 0));
        assert_eq!(get(&mut e, "alpha"), Some((Bytes::from_static(b"uno"), 3)));
        assert_eq!(get(&mut e, "beta"), None);
        assert_eq!(get(&mut e, "gamma").map(|(v, _)| v), Some(Bytes::from_static(b"three")));
        assert_eq!(get(&mut e, "user:{42}:name").map(|(v, _)| v), Some(Bytes::from_static(b"ada")));
        assert_eq!(get(&mut e, "blob").map(|(v, _)| v), Some(Bytes::from_static(b"bin\0ary")));
        assert_eq!(e.stats().keys, 4);
    }

    #[test]
    fn a_missing_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[put("a", "1", 1, 0)], 0);
        write_segment(dir.path(), 3, &[put("b", "2", 2, 0)], 0);
        let err = recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap_err();
        assert!(matches!(err, RecoveryError::Gap { missing: 2, .. }), "{err}");
        assert!(recover(dir.path(), &mut MemEngine::new(), true, 0).is_ok());
    }

    /// A checkpoint's index records point into segments before it: those are kept (not
    /// replayed), and a checkpoint pointing into a segment that is gone refuses to start.
    #[test]
    fn checkpoint_index_points_into_kept_segments() {
        let dir = tempfile::tempdir().unwrap();
        let a = put("a", "1", 1, 0);
        let a_len = a.encoded_len();
        write_segment(dir.path(), 1, &[a, put("b", "2", 2, 0)], 0);
        let index = |key: &'static [u8], version, offset| Mutation::Index {
            key: Bytes::from_static(key),
            version,
            expires_at_ms: 0,
            loc: Loc::new(1, offset, a_len),
        };
        let ckpt =
            vec![Mutation::Clock { version: 2 }, index(b"a", 1, 0), index(b"b", 2, a_len as u64)];
        crate::storage::checkpoint::write(dir.path(), 2, ckpt).unwrap();
        write_segment(dir.path(), 2, &[put("c", "3", 3, 0)], 0);
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, false, 0).unwrap();
        assert_eq!((report.records, report.segments, report.next_segment), (4, 1, 3));
        assert_eq!(report.kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        let Applied::Fetch(f) = e.execute(Op::get(Bytes::from_static(b"b")), 0, &mut NoLog, None)
        else {
            panic!("b's value is in segment 1");
        };
        assert_eq!(f.loc, Loc::new(1, a_len as u64, a_len));
        assert_eq!(get(&mut e, "c"), Some((Bytes::from_static(b"3"), 3)));
        let usage = e.segments();
        assert_eq!(usage[0].1.total, 2 * a_len as u64);
        assert_eq!(usage[0].1.live, 2 * a_len as u64);

        std::fs::remove_file(dir.path().join(format!("{:020}.log", 1))).unwrap();
        let err = recover(dir.path(), &mut MemEngine::new(), false, 0).unwrap_err();
        assert!(matches!(err, RecoveryError::Missing { missing: 1, .. }), "{err}");
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, true, 0).unwrap();
        assert_eq!(report.keys_dropped, 2);
        assert_eq!(e.stats().keys, 1);
    }

    /// Issue 16's find: keys with an hour to live, alone in a segment that is lost, were
    /// dropped with a warning and the node started. Unexpired, they are lost values like any
    /// other: the start is refused, naming the segment, and `--salvage` counts them. Only
    /// keys already expired by now are dropped quietly (the segment may have been compacted
    /// away after they expired).
    #[test]
    fn a_lost_segment_of_keys_with_a_ttl_refuses_the_start_unless_expired() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        let now = 1_000_000;
        let ttl = |key: &str, version| put(key, "v", version, now + hour);
        let len = ttl("k1", 1).encoded_len();
        write_segment(dir.path(), 1, &[ttl("k1", 1), ttl("k2", 2), put("old", "v", 3, now - 1)], 0);
        let index = |key: &'static [u8], version, expires_at_ms, at: usize| Mutation::Index {
            key: Bytes::from_static(key),
            version,
            expires_at_ms,
            loc: Loc::new(1, (at * len) as u64, len),
        };
        let ckpt = vec![
            Mutation::Clock { version: 3 },
            index(b"k1", 1, now + hour, 0),
            index(b"k2", 2, now + hour, 1),
        ];
        crate::storage::checkpoint::write(dir.path(), 2, ckpt).unwrap();
        write_segment(dir.path(), 2, &[put("c", "3", 4, 0)], 0);
        std::fs::remove_file(dir.path().join(format!("{:020}.log", 1))).unwrap();
        let err = recover(dir.path(), &mut MemEngine::new(), false, now).unwrap_err();
        assert!(matches!(err, RecoveryError::Missing { missing: 1, .. }), "{err}");
        assert!(err.to_string().contains("--salvage"), "{err}");
        let mut e = MemEngine::new();
        let report = recover(dir.path(), &mut e, true, now).unwrap();
        assert_eq!(report.keys_dropped, 2, "the two unexpired keys, counted");
        assert_eq!(e.stats().keys, 1);
        // Two hours on, both have expired: dropped quietly, and the node starts.
        let report = recover(dir.path(), &mut MemEngine::new(), false, now + 2 * hour).unwrap();
        assert_eq!(report.keys_dropped, 0);
    }
}
