//! What a node does on every core and gathers: stats, metrics, admin operations (flush,
//! checkpoint, backup), SCAN steps. Each goes to the cores over the mesh and is gathered with
//! [`Core::fan_in`].

use bytes::Bytes;
use corekv_schema::codec::{CoreStats, ErrorCode, Reply};

use super::{Core, Done, ScanStep, Token, Work, metrics, unexpected};
use crate::storage::store::prepare_backup_dir;
use crate::time::now_ms;

impl Core {
    /// Deletes every key of this core, logging a flush record first; the answer and the log
    /// record it must wait for.
    pub(super) fn flush_here(&self) -> (Done, Option<u64>) {
        let (flushed, seq) = self.store.flush();
        (Done::Admin(flushed.map(|keys| (keys, 0))), seq)
    }

    /// FLUSHDB: deletes every key on every core; done when every core's flush is durable
    /// (in sync mode). Keys written after it was asked for are not deleted.
    pub async fn flush_all(&self) -> Reply {
        if self.cluster.is_some() {
            return Reply::error(
                ErrorCode::BadRequest,
                "FLUSHDB is not replicated: not available in cluster mode",
            );
        }
        self.admin(|| Work::Flush, "flush").await
    }

    /// Runs an admin operation on this core.
    pub async fn run_admin(&self, work: Work) -> Done {
        if matches!(work, Work::Flush) {
            let (done, seq) = self.flush_here();
            let waits = self.acks_wait();
            if let Some(seq) = seq.filter(|_| waits)
                && let Err(failed) = self.durable(seq).await
            {
                return Done::One(failed);
            }
            return done;
        }
        let result = match work {
            Work::Checkpoint => self.checkpoint().await.map(|w| (w.records, w.bytes)),
            Work::Backup(dir) => self.store.backup(dir, self.checkpoint_extra()).await,
            other => Err(format!("{} is not an admin operation", other.kind())),
        };
        Done::Admin(result)
    }

    /// One SCAN step over this core's keys.
    pub(super) fn scan_here(&self, step: &ScanStep, now_ms: u64) -> Done {
        // The cluster's metadata keys are not the client's.
        let wanted = |key: &[u8]| {
            step.pattern.as_ref().is_none_or(|g| g.matches(key))
                && !crate::cluster::meta::is_meta(key)
        };
        let (keys, next) =
            self.store.engine.borrow().scan(step.position, step.count, now_ms, &wanted);
        Done::Scanned(keys, next)
    }

    /// One SCAN step on core `target` (here or forwarded).
    pub async fn scan(
        &self,
        target: u16,
        step: ScanStep,
    ) -> Result<(Vec<Bytes>, Option<u64>), Reply> {
        let done = if target == self.index {
            self.scan_here(&step, now_ms())
        } else {
            let token = self.forward(target, Work::Scan(step)).await;
            self.answer(token).await
        };
        match done {
            Done::Scanned(keys, next) => Ok((keys, next)),
            Done::One(reply @ Reply::Error(_)) => Err(reply),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `work` on every core and sums what they did.
    pub(super) async fn admin(&self, work: impl Fn() -> Work, what: &str) -> Reply {
        let tokens = self.forward_to_others(&work).await;
        let (mut records, mut bytes, mut errors) = (0, 0, Vec::new());
        let mut add = |done: Done| match done {
            Done::Admin(Ok((r, b))) => {
                records += r;
                bytes += b;
                None
            }
            Done::Admin(Err(e)) => {
                errors.push(e);
                None
            }
            other => Some(other),
        };
        let mine = add(self.run_admin(work()).await).map(|done| match done {
            Done::One(reply) => reply,
            other => unexpected(other),
        });
        let theirs = self.fan_in(tokens, &mut add).await.err();
        for failed in [mine, theirs].into_iter().flatten() {
            if let Reply::Error(e) = failed {
                errors.push(e.message.into_owned());
            }
        }
        if !errors.is_empty() {
            return Reply::error(
                ErrorCode::Unavailable,
                format!("{what} failed: {}", errors.join("; ")),
            );
        }
        let message = format!("{what} done on {} cores", self.cores);
        Reply::AdminDone { message, records, bytes }
    }

    pub(super) async fn admin_backup(&self, dir: String) -> Reply {
        let Some(wal) = &self.store.wal else {
            return Reply::error(
                ErrorCode::BadRequest,
                "--durability none keeps no data to back up",
            );
        };
        let dir = match backup_target(self.node.backup_dir.as_deref(), &dir) {
            Ok(dir) => dir,
            Err(e) => return Reply::error(ErrorCode::BadRequest, e),
        };
        let target = match prepare_backup_dir(&dir, wal.dir()) {
            Ok(t) => t,
            Err(e) => return Reply::error(ErrorCode::BadRequest, e),
        };
        self.admin(|| Work::Backup(target.clone()), "backup").await
    }

    pub fn core_stats(&self) -> CoreStats {
        let c = self.counters.values();
        let mut stats = CoreStats {
            core: self.index,
            requests: c.requests,
            forwarded_out: c.forwarded_out,
            forwarded_in: c.forwarded_in,
            backpressure_events: c.backpressure_events,
            connections: c.connections,
            ..CoreStats::default()
        };
        self.store.fill_stats(&mut stats);
        stats
    }

    /// This core's metrics, with its stats and its log's histograms.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        let (fsync, batch) = match &self.store.wal {
            Some(w) => w.histograms(),
            None => (metrics::histogram(), metrics::histogram()),
        };
        self.metrics.snapshot(self.core_stats(), fsync, batch)
    }

    /// Every core's stats, in core order (cheap: no histograms, unlike `node_metrics`).
    pub async fn node_stats(&self) -> Result<Vec<CoreStats>, Reply> {
        let tokens = self.forward_to_others(|| Work::Stats).await;
        self.collect_stats(self.core_stats(), tokens).await
    }

    /// Every other core's stats, added to `local` (this core's), in core order.
    pub(super) async fn collect_stats(
        &self,
        local: CoreStats,
        tokens: Vec<Token>,
    ) -> Result<Vec<CoreStats>, Reply> {
        let mut cores = vec![local];
        self.fan_in(tokens, |done| match done {
            Done::Stats(s) => {
                cores.push(s);
                None
            }
            other => Some(other),
        })
        .await?;
        cores.sort_by_key(|c| c.core);
        Ok(cores)
    }

    /// Every core's metrics, merged (for a scrape).
    pub async fn node_metrics(&self) -> Result<metrics::Snapshot, Reply> {
        let tokens = self.forward_to_others(|| Work::Metrics).await;
        let mut merged = self.metrics_snapshot();
        self.fan_in(tokens, |done| match done {
            Done::Metrics(s) => {
                merged.merge(*s);
                None
            }
            other => Some(other),
        })
        .await?;
        Ok(merged)
    }
}

/// Where a backup asked for `dir` goes: under `--backup-dir` (a relative `dir` is taken from
/// there), never outside it, so a client cannot make the node write its data anywhere.
fn backup_target(root: Option<&std::path::Path>, dir: &str) -> Result<String, String> {
    let Some(root) = root else {
        return Err("backups are off on this node: start it with --backup-dir DIR (backups are \
                    written only under DIR)"
            .into());
    };
    let asked = std::path::Path::new(dir);
    if asked.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("backup dir {dir}: '..' is not allowed"));
    }
    let root = std::path::absolute(root).map_err(|e| format!("--backup-dir: {e}"))?;
    let target = root.join(asked);
    if !target.starts_with(&root) || target == root {
        return Err(format!(
            "backup dir {dir} is not under --backup-dir {} (give a name or a path below it)",
            root.display()
        ));
    }
    Ok(target.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::backup_target;
    use std::path::Path;

    #[test]
    fn backups_stay_under_the_backup_dir() {
        let root = Some(Path::new("/srv/backups"));
        assert_eq!(backup_target(root, "monday").unwrap(), "/srv/backups/monday");
        assert_eq!(backup_target(root, "/srv/backups/x/y").unwrap(), "/srv/backups/x/y");
        assert!(backup_target(root, "/etc/cron.d").unwrap_err().contains("not under"));
        assert!(backup_target(root, "../etc").unwrap_err().contains("'..'"));
        assert!(backup_target(root, "/srv/backups/../etc").unwrap_err().contains("'..'"));
        assert!(backup_target(root, "/srv/backups").is_err());
        assert!(backup_target(None, "x").unwrap_err().contains("--backup-dir"));
    }
}
