//! Checkpoints: a core's whole index in one file, so restart replays only what follows.
//!
//! A checkpoint numbered `S` (`checkpoint-<S, 20 digits>.ckpt`) holds a clock record (the
//! highest version issued) and one record per live key in the log's record format
//! ([`super::record`]): an index record (key, version, expiry and where the key's put lives in
//! the log) or, for a value that was never logged, the put itself. It is taken as of a moment
//! after the log rolled to segment `S`. Recovery loads the newest checkpoint and replays
//! segments `S` and later; records in `S` that the checkpoint already reflects are re-applied
//! harmlessly (same key, same version, same place).
//!
//! Segments before `S` are not replayed, but they still hold the values the index points at,
//! so a checkpoint deletes only older checkpoints. Compaction deletes old segments once none
//! of their records is current; tombstones in them are dropped then, which is safe because no
//! recovery reads those segments except through the checkpoint's index.
//!
//! Written to `<name>.tmp`, fsynced, renamed, and the directory fsynced, so a crash leaves
//! either the old checkpoint or the new one, never half of one; stray `.tmp` files are removed.
//! This runs on a blocking thread (glommio's `spawn_blocking`), off the core's executor.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::record::{self, Mutation};
use super::wal;

pub fn name(seq: u64) -> String {
    format!("checkpoint-{seq:020}.ckpt")
}

/// Checkpoint files in `dir`, oldest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    wal::numbered_files(dir, "checkpoint-", ".ckpt")
}

/// What one checkpoint wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    pub records: u64,
    pub bytes: u64,
    /// Older checkpoint files deleted after it.
    pub files_removed: u64,
}

/// Writes checkpoint `seq` from `entries`, makes it durable, then deletes what it replaces.
pub fn write(dir: &Path, seq: u64, entries: Vec<Mutation>) -> std::io::Result<Written> {
    let tmp = dir.join(format!("{}.tmp", name(seq)));
    let result = write_inner(dir, seq, &tmp, entries);
    if result.is_err() {
        // A failed checkpoint (say, a full disk) must not keep the space it took.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_inner(
    dir: &Path,
    seq: u64,
    tmp: &Path,
    entries: Vec<Mutation>,
) -> std::io::Result<Written> {
    let path = dir.join(name(seq));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
    let mut buf = Vec::with_capacity(64 << 10);
    let mut written = Written { seq, ..Written::default() };
    for m in &entries {
        debug_assert!(matches!(
            m,
            Mutation::Index { .. }
                | Mutation::Put { .. }
                | Mutation::Clock { .. }
                | Mutation::Raft { .. }
        ));
        buf.clear();
        record::encode(m, &mut buf);
        out.write_all(&buf)?;
        written.records += 1;
        written.bytes += buf.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    written.files_removed = remove_replaced(dir, seq)?;
    Ok(written)
}

/// Deletes checkpoints older than checkpoint `seq`, and stray temp files.
fn remove_replaced(dir: &Path, seq: u64) -> std::io::Result<u64> {
    let mut removed = 0;
    for (s, path) in list(dir)? {
        if s < seq {
            std::fs::remove_file(path)?;
            removed += 1;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(path)?;
        }
    }
    Ok(removed)
}

/// Copies checkpoint `seq` and the closed log segments up to `last` (`segments`: those the
/// log holds) from `source` to `dest`, durably.
pub fn copy(
    source: &Path,
    dest: &Path,
    seq: u64,
    last: u64,
    segments: &[u64],
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dest)?;
    let mut files = vec![source.join(name(seq))];
    let on_disk = wal::segments(source)?;
    for s in segments.iter().filter(|s| **s <= last) {
        match on_disk.iter().find(|(n, _)| n == s) {
            Some((_, path)) => files.push(path.clone()),
            None => {
                return Err(std::io::Error::other(format!(
                    "segment {s} is not in {}",
                    source.display()
                )));
            }
        }
    }
    let mut bytes = 0;
    for from in files {
        let Some(name) = from.file_name() else { continue };
        let to = dest.join(name);
        bytes += std::fs::copy(&from, &to)?;
        std::fs::File::open(&to)?.sync_all()?;
    }
    std::fs::File::open(dest)?.sync_all()?;
    if let Some(parent) = dest.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(bytes)
}
