//! A store's upkeep: checkpoints (which bound replay), compaction (which bounds the disk) and
//! backups. One of them runs at a time per core, and compaction paces its I/O so foreground
//! requests keep the disk (docs/ARCHITECTURE.md, "Checkpoints bound replay").

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use glommio::io::DmaFile;

use super::{Store, StoreLog};
use crate::counters::{bump, bump_by};
use crate::storage::checkpoint;
use crate::storage::record::{self, Loc, Mutation};
use crate::storage::wal::Wal;
use crate::time::now_ms;

/// What a checkpoint holds besides the engine's keys, taken in the same synchronous step as
/// the engine's snapshot: in cluster mode, each Raft group's point, hard state and entries.
pub trait CheckpointExtra {
    fn checkpoint_records(&self) -> Vec<Mutation>;
}

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Compacted {
    /// The segment rewritten, if one was below the live ratio.
    pub segment: Option<u64>,
    pub records_moved: u64,
    pub bytes_moved: u64,
    pub segments_removed: u64,
}

/// Sleeps while `bytes` done since `started` run ahead of `bytes_per_s`.
async fn pace(started: Instant, bytes: u64, bytes_per_s: u64) {
    let due = std::time::Duration::from_secs_f64(bytes as f64 / bytes_per_s.max(1) as f64);
    match due.checked_sub(started.elapsed()) {
        Some(ahead) if ahead > std::time::Duration::from_millis(1) => {
            glommio::timer::sleep(ahead).await;
        }
        _ => glommio::yield_if_needed().await,
    }
}

/// Reads a whole segment with direct I/O, in chunks paced to `bytes_per_s`.
async fn read_whole(file: &DmaFile, bytes_per_s: u64) -> std::io::Result<Bytes> {
    const CHUNK: usize = 1 << 20;
    let size = file.file_size().await.map_err(std::io::Error::from)?;
    let mut out = Vec::with_capacity(size as usize);
    let started = Instant::now();
    while (out.len() as u64) < size {
        let want = CHUNK.min((size - out.len() as u64) as usize);
        let read = file.read_at(out.len() as u64, want).await.map_err(std::io::Error::from)?;
        if read.is_empty() {
            break;
        }
        out.extend_from_slice(&read);
        pace(started, out.len() as u64, bytes_per_s).await;
    }
    Ok(Bytes::from(out))
}

/// Checks the backup target (absent or empty), creates it and copies the layout file.
pub fn prepare_backup_dir(
    dir: &str,
    core_dir: &std::path::Path,
) -> Result<std::path::PathBuf, String> {
    let target = std::path::absolute(dir).map_err(|e| format!("backup dir {dir}: {e}"))?;
    if target.exists() && std::fs::read_dir(&target).map_or(true, |mut d| d.next().is_some()) {
        return Err(format!("backup dir {} exists and is not empty", target.display()));
    }
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    if let Some(data_dir) = core_dir.parent() {
        std::fs::copy(data_dir.join("META"), target.join("META"))
            .map_err(|e| format!("copying META to {}: {e}", target.display()))?;
    }
    Ok(target)
}

impl Store {
    /// Log bytes written since the last checkpoint, and the size of that checkpoint: the
    /// inputs of the checkpoint trigger.
    pub fn log_growth(&self) -> Option<(u64, u64)> {
        let wal = self.wal.as_ref()?;
        let since = wal.stats().bytes - self.log_bytes_at_checkpoint.get();
        Some((since, self.checkpoint_bytes.get()))
    }

    /// Writes a checkpoint of this core (and deletes older checkpoints). One at a time.
    pub async fn checkpoint(
        &self,
        extra: Option<&dyn CheckpointExtra>,
    ) -> Result<checkpoint::Written, String> {
        let Some(wal) = self.wal.clone() else {
            return Err("--durability none keeps no log to checkpoint".into());
        };
        self.checkpoint_guard().await;
        let result = self.checkpoint_locked(&wal, extra).await;
        self.checkpointing.set(false);
        result
    }

    /// One checkpoint (or backup) at a time per core: a second one waits for the first.
    async fn checkpoint_guard(&self) {
        while self.checkpointing.replace(true) {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn checkpoint_locked(
        &self,
        wal: &Rc<Wal>,
        extra: Option<&dyn CheckpointExtra>,
    ) -> Result<checkpoint::Written, String> {
        let bytes_before = wal.stats().bytes;
        let seq = wal.roll().await.map_err(|e| e.to_string())?;
        // Everything from here on is also in segment `seq` or later.
        let mut entries = self.engine.borrow().snapshot(now_ms());
        let referenced: std::collections::BTreeSet<u64> = entries
            .iter()
            .filter_map(|m| match m {
                Mutation::Index { loc, .. } => Some(loc.segment()),
                _ => None,
            })
            .collect();
        // In the same step: the groups' points are their applied indexes, which is exactly
        // what the engine's snapshot holds.
        if let Some(extra) = extra {
            entries.extend(extra.checkpoint_records());
        }
        // The snapshot may hold writes still pending in the log: the checkpoint must not make
        // durable what the log has not (a failed flush, or a crash that keeps only part of
        // segment `seq`, would otherwise rebuild a state that never existed).
        wal.wait(wal.appended()).await.map_err(|e| e.to_string())?;
        let dir = wal.dir().to_path_buf();
        let written = glommio::executor()
            .spawn_blocking(move || checkpoint::write(&dir, seq, entries))
            .await
            .map_err(|e| format!("checkpoint in {}: {e}", wal.dir().display()))?;
        self.log_bytes_at_checkpoint.set(bytes_before);
        self.checkpoint_seq.set(seq);
        *self.checkpoint_segments.borrow_mut() = referenced;
        self.checkpoint_bytes.set(written.bytes);
        Ok(written)
    }

    /// Checkpoints, then copies this core's checkpoint and every segment up to it into
    /// `target/core-<index>`.
    pub async fn backup(
        &self,
        target: std::path::PathBuf,
        extra: Option<&dyn CheckpointExtra>,
    ) -> Result<(u64, u64), String> {
        let Some(wal) = self.wal.clone() else { return Err("no log".into()) };
        // Hold the guard through the copy: a checkpoint meanwhile would delete what we copy.
        self.checkpoint_guard().await;
        let result = async {
            let written = self.checkpoint_locked(&wal, extra).await?;
            // Roll once more so every segment to copy is closed: copying the one being
            // written could catch a later block of a write before an earlier one.
            let last = wal.roll().await.map_err(|e| e.to_string())? - 1;
            let source = wal.dir().to_path_buf();
            let dest = target.join(format!("core-{}", self.index));
            let segments = wal.segment_numbers();
            glommio::executor()
                .spawn_blocking(move || {
                    checkpoint::copy(&source, &dest, written.seq, last, &segments)
                })
                .await
                .map(|bytes| (written.records, bytes))
                .map_err(|e| format!("backup to {}: {e}", target.display()))
        }
        .await;
        self.checkpointing.set(false);
        result
    }

    /// One compaction pass: deletes the segments before the newest checkpoint that hold no
    /// current value, then rewrites the one with the lowest live ratio below `live_ratio`
    /// (its current puts are appended again, everything else in it is dropped) and deletes
    /// it. Moves at most `bytes_per_s` so foreground writes keep the disk.
    pub async fn compact(&self, live_ratio: f64, bytes_per_s: u64) -> Result<Compacted, String> {
        let Some(wal) = self.wal.clone() else { return Ok(Compacted::default()) };
        self.checkpoint_guard().await;
        let result = self.compact_locked(&wal, live_ratio, bytes_per_s).await;
        self.checkpointing.set(false);
        result
    }

    async fn compact_locked(
        &self,
        wal: &Rc<Wal>,
        live_ratio: f64,
        bytes_per_s: u64,
    ) -> Result<Compacted, String> {
        let covered = self.checkpoint_seq.get();
        let mut done = Compacted::default();
        let usage = self.engine.borrow().segments();
        // Segments before the checkpoint with nothing current in them, including ones that
        // never held a record (a roll right before a stop). Nothing new ever points into a
        // segment before the checkpoint, so once dead it stays dead; but the records that
        // emptied it (overwrites, deletes) may not be durable yet, and until they are, a
        // crash would bring back a checkpoint pointing into the deleted file.
        // And none the newest checkpoint points into: a crash loads that checkpoint, and
        // recovery refuses to start when a segment it points into is gone.
        let referenced = self.checkpoint_segments.borrow().clone();
        let dead: Vec<u64> = wal
            .segment_numbers()
            .into_iter()
            .filter(|seg| *seg < covered && !referenced.contains(seg))
            .filter(|seg| usage.iter().find(|(s, _)| s == seg).is_none_or(|(_, u)| u.live == 0))
            .collect();
        if !dead.is_empty() {
            wal.wait(wal.appended()).await.map_err(|e| e.to_string())?;
        }
        for seg in dead {
            self.remove_segment(wal, seg).await?;
            done.segments_removed += 1;
        }
        let sparsest = usage
            .iter()
            .filter(|(seg, u)| *seg < covered && u.live > 0)
            .map(|(seg, u)| (*seg, u.live as f64 / u.total.max(1) as f64))
            .filter(|(_, ratio)| *ratio < live_ratio)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((seg, _)) = sparsest else { return Ok(done) };
        done.segment = Some(seg);
        let Some(file) = wal.reader(seg) else {
            return Err(format!("log segment {seg} is not open"));
        };
        let bytes = read_whole(&file, bytes_per_s)
            .await
            .map_err(|e| format!("reading log segment {seg}: {e}"))?;
        let mut puts = Vec::new();
        let ending = record::scan(
            &bytes,
            false,
            |m, at| {
                if matches!(m, Mutation::Put { .. }) {
                    puts.push((m, at));
                }
            },
            |_, _, _| {},
        );
        if ending != record::Ending::Clean {
            return Err(format!("log segment {seg} is damaged ({ending:?}); not compacting it"));
        }
        let started = std::time::Instant::now();
        for (m, at) in puts {
            let from = Loc::new(seg, at as u64, m.encoded_len());
            let mut log = StoreLog { wal: Some(wal), last: None };
            if self.engine.borrow_mut().relocate(&m, from, &mut log)? {
                done.records_moved += 1;
                done.bytes_moved += u64::from(from.len);
                pace(started, done.bytes_moved, bytes_per_s).await;
            }
        }
        bump_by(&self.counters.compacted_bytes, done.bytes_moved);
        let still_live =
            self.engine.borrow().segments().iter().any(|(s, u)| *s == seg && u.live > 0);
        // Wait for the moved copies and for whatever else emptied the segment meanwhile
        // (everything appended up to now), then delete it.
        wal.wait(wal.appended()).await.map_err(|e| e.to_string())?;
        // Emptied, but the newest checkpoint may point into it: then it goes with the first
        // pass after the next checkpoint (which points at the moved copies instead).
        if !still_live && !self.checkpoint_segments.borrow().contains(&seg) {
            self.remove_segment(wal, seg).await?;
            done.segments_removed += 1;
        }
        Ok(done)
    }

    async fn remove_segment(&self, wal: &Wal, seg: u64) -> Result<(), String> {
        wal.remove_segment(seg).await.map_err(|e| format!("deleting log segment {seg}: {e}"))?;
        self.engine.borrow_mut().forget_segment(seg);
        bump(&self.counters.segments_removed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use corekv_schema::codec::{Op, Reply};

    use super::*;
    use crate::storage::MemEngine;
    use crate::storage::wal::SyncMode;

    /// Issue 16's root cause: compaction deleted segments the newest checkpoint's index still
    /// pointed into. Emptied or rewritten, such a segment now stays until a newer checkpoint
    /// points elsewhere, so the checkpoint a crash would load always finds its values.
    #[test]
    fn compaction_keeps_the_segments_the_newest_checkpoint_points_into() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let executor = glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make();
        executor.expect("executor").run(async move {
            let wal = Wal::new(d.clone(), SyncMode::Sync, 64 << 10, 1);
            let flusher = glommio::spawn_local(wal.clone().run());
            let engine = Box::new(MemEngine::new());
            let store = Store::new(0, engine, Some(wal.clone()), (0, Default::default()));
            let set = |v: &'static str| {
                Op::set(Bytes::from_static(b"a"), Bytes::from_static(v.as_bytes()))
            };
            assert!(matches!(store.execute_reply(set("1"), 0).await, Reply::Written { .. }));
            // The checkpoint rolls the log to segment 2 and points at `a` in segment 1.
            store.checkpoint(None).await.unwrap();
            let first = d.join(format!("{:020}.log", 1));
            assert!(store.checkpoint_segments.borrow().contains(&1));
            // `a` overwritten: nothing current is left in segment 1, but the checkpoint
            // still points there.
            assert!(matches!(store.execute_reply(set("2"), 0).await, Reply::Written { .. }));
            let done = store.compact(0.5, u64::MAX).await.unwrap();
            assert_eq!(done.segments_removed, 0, "{done:?}");
            assert!(first.exists(), "segment 1 deleted under the checkpoint");
            // A newer checkpoint points at segment 2: now segment 1 goes.
            store.checkpoint(None).await.unwrap();
            let done = store.compact(0.5, u64::MAX).await.unwrap();
            assert!(done.segments_removed >= 1, "{done:?}");
            assert!(!first.exists(), "segment 1 kept after a newer checkpoint");
            wal.close();
            flusher.await;
        });
    }
}
