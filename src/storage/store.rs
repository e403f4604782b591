//! `Store`: one core's data, and everything the core does to it. The engine (index and value
//! cache), the write-ahead log, checkpoints, compaction and backups (`store/maintain.rs`),
//! cold reads of values on disk, and, in cluster mode, applying replicated entries and
//! building and installing a partition's snapshot (`store/replicated.rs`).
//!
//! Both the router (`shard`) and the Raft driver (`cluster`) use it; it knows neither. It
//! lives in an `Rc` on its core's executor. Its engine sits behind a `RefCell` that is never
//! borrowed across an `.await`.

mod maintain;
mod replicated;

use std::cell::{Cell, RefCell};

use crate::counters::{bump, counters};
use std::rc::Rc;

use bytes::Bytes;
use corekv_schema::codec::{CoreStats, ErrorCode, Op, Reply};
use glommio::io::DmaFile;

use super::record::{self, Loc, Mutation};
use super::wal::Wal;
use super::{Applied, Engine, Fetch, Log};
pub use maintain::{CheckpointExtra, Compacted, prepare_backup_dir};
pub use replicated::check_snapshot_data;

/// Log bytes appended but not yet flushed beyond which new requests wait for the log.
const LOG_PENDING_BYTES_MAX: usize = 64 << 20;

counters!(
    /// Counters of what the store did, for `Stats` and `/metrics`.
    StoreCounters => StoreCounts {
        /// Values read back from the log with direct I/O.
        fetches,
        /// Compaction: record bytes moved, and segments deleted.
        compacted_bytes,
        segments_removed,
    }
);

pub struct Store {
    pub index: u16,
    /// Never borrowed across an `.await`.
    pub engine: RefCell<Box<dyn Engine>>,
    /// The core's write-ahead log; `None` under `--durability none`.
    pub wal: Option<Rc<Wal>>,
    /// A checkpoint, backup or compaction is running (one at a time).
    checkpointing: Cell<bool>,
    /// Log bytes written when the last checkpoint started (checkpoint trigger).
    log_bytes_at_checkpoint: Cell<u64>,
    /// The newest checkpoint's segment number (0: none). Segments before it are read only
    /// through the checkpoint's index, so compaction may rewrite them and drop tombstones.
    checkpoint_seq: Cell<u64>,
    /// Segments the newest durable checkpoint's index records point into: never deleted
    /// while it is the newest, so a crash can always load it.
    checkpoint_segments: RefCell<std::collections::BTreeSet<u64>>,
    /// Bytes the newest checkpoint took: the next one waits for at least that much new log.
    checkpoint_bytes: Cell<u64>,
    pub counters: StoreCounters,
}

/// What applying an operation here gave: a reply, or a value to read from the log first.
pub enum Answered {
    Reply(Reply),
    Fetch(FetchIo),
}

/// A read of a value from the log. The file is taken when the read is applied, so a segment
/// compaction deletes meanwhile stays readable; `None` when the segment was not open yet (its
/// record is not durable yet either, and the read waits for both).
pub struct FetchIo {
    fetch: Fetch,
    file: Option<Rc<DmaFile>>,
}

/// The engine's view of this core's log: appends go to the write-ahead log, and the last
/// one's sequence number is what the reply must wait for.
pub struct StoreLog<'a> {
    pub wal: Option<&'a Wal>,
    pub last: Option<u64>,
}

impl Log for StoreLog<'_> {
    fn append(&mut self, m: &Mutation) -> Result<Option<Loc>, String> {
        let Some(wal) = self.wal else { return Ok(None) };
        let (seq, loc) = wal.append(m).map_err(|e| e.to_string())?;
        self.last = Some(seq);
        Ok(Some(loc))
    }

    fn is_durable(&self, loc: Loc) -> bool {
        self.wal.is_some_and(|w| w.is_durable(loc))
    }
}

impl Store {
    /// Core `index`'s store: its recovered engine, its log (`None` under `--durability
    /// none`) and the newest checkpoint's segment number (0: none).
    pub fn new(
        index: u16,
        engine: Box<dyn Engine>,
        wal: Option<Rc<Wal>>,
        (checkpoint_seq, checkpoint_segments): (u64, std::collections::BTreeSet<u64>),
    ) -> Store {
        Store {
            index,
            engine: RefCell::new(engine),
            wal,
            checkpointing: Cell::new(false),
            log_bytes_at_checkpoint: Cell::new(0),
            checkpoint_seq: Cell::new(checkpoint_seq),
            checkpoint_segments: RefCell::new(checkpoint_segments),
            checkpoint_bytes: Cell::new(0),
            counters: StoreCounters::default(),
        }
    }

    /// A log for the engine to append through; its `last` is the record to wait for.
    pub fn log(&self) -> StoreLog<'_> {
        StoreLog { wal: self.wal.as_deref(), last: None }
    }

    /// Whether the node's writes are acknowledged only once durable (sync mode).
    pub fn acks_wait(&self) -> bool {
        self.wal.as_ref().is_some_and(|w| w.acks_wait())
    }

    /// When acks do not wait for the log (periodic mode, or a request asking for less),
    /// nothing else stops writers from outrunning the disk: waits while the log's unflushed
    /// bytes are over their bound. Whether it had to.
    pub async fn wait_log_room(&self) -> bool {
        let Some(wal) = &self.wal else { return false };
        if wal.pending_bytes() <= LOG_PENDING_BYTES_MAX {
            return false;
        }
        let _ = wal.wait(wal.appended()).await;
        true
    }

    /// The log's failure, if it failed: writes are refused from then on.
    pub fn log_failure(&self) -> Option<String> {
        self.wal.as_ref().and_then(|w| w.failure()).map(|e| e.to_string())
    }

    /// Applies a single-key operation at time `now_ms` and logs what it changed. Returns the
    /// answer and, for a logged write, the log sequence number that makes it durable. Waits
    /// only when the operation compares against a value that is on disk only.
    pub async fn execute(&self, mut op: Op, now_ms: u64) -> (Answered, Option<u64>) {
        let is_read = matches!(op, Op::Get { .. });
        if !is_read && let Some(e) = self.wal.as_ref().and_then(|w| w.failure()) {
            return (Answered::Reply(Reply::error(ErrorCode::Unavailable, e.to_string())), None);
        }
        let mut fetched: Option<(Loc, Bytes)> = None;
        loop {
            let mut log = self.log();
            let value = fetched.as_ref().map(|(loc, v)| (*loc, &v[..]));
            let applied = self.engine.borrow_mut().execute(op, now_ms, &mut log, value);
            match applied {
                Applied::Done(reply) => return (Answered::Reply(reply), log.last),
                Applied::Fetch(fetch) => {
                    let file = self.wal.as_ref().and_then(|w| w.reader(fetch.loc.segment()));
                    return (Answered::Fetch(FetchIo { fetch, file }), None);
                }
                // The key may change while the value is read: then the engine asks again.
                Applied::NeedValue(back, loc) => match self.read_put(loc, None).await {
                    Ok((data, key_len, _)) => {
                        fetched = Some((loc, data.slice(key_len..)));
                        op = back;
                    }
                    Err(reply) => return (Answered::Reply(reply), None),
                },
            }
        }
    }

    /// [`Store::execute`], its value read back from the log when it is on disk only: the
    /// reply itself (for callers that do not wait for durability).
    pub async fn execute_reply(&self, op: Op, now_ms: u64) -> Reply {
        match self.execute(op, now_ms).await {
            (Answered::Reply(reply), _) => reply,
            (Answered::Fetch(f), _) => self.resolve_fetch(f).await,
        }
    }

    /// Reads the put record at `loc` from the log (waiting first if it is not durable yet) and
    /// checks it: `(key ++ value, key_len, version)`.
    pub(crate) async fn read_put(
        &self,
        loc: Loc,
        file: Option<Rc<DmaFile>>,
    ) -> Result<(Bytes, usize, u64), Reply> {
        let Some(wal) = &self.wal else {
            return Err(Reply::error(ErrorCode::Internal, "a value without a log to read it from"));
        };
        let unavailable = |e: String| Reply::error(ErrorCode::Unavailable, e);
        if !wal.is_durable(loc) {
            wal.wait(wal.appended()).await.map_err(|e| unavailable(e.to_string()))?;
        }
        let Some(file) = file.or_else(|| wal.reader(loc.segment())) else {
            return Err(Reply::error(
                ErrorCode::Internal,
                format!("log segment {} is not open", loc.segment()),
            ));
        };
        bump(&self.counters.fetches);
        let at = || {
            format!(
                "log segment {} of {} at offset {}",
                loc.segment(),
                wal.dir().display(),
                loc.offset
            )
        };
        let read = file
            .read_at(u64::from(loc.offset), loc.len as usize)
            .await
            .map_err(|e| unavailable(format!("reading {}: {e}", at())))?;
        if read.len() != loc.len as usize {
            return Err(unavailable(format!(
                "short read of {}: {} of {}",
                at(),
                read.len(),
                loc.len
            )));
        }
        let bytes = Bytes::copy_from_slice(&read);
        match record::decode(&bytes, 0) {
            Ok((Mutation::Put { data, key_len, version, .. }, _)) => Ok((data, key_len, version)),
            Ok(_) => Err(Reply::error(ErrorCode::Internal, format!("{} is not a put", at()))),
            Err(invalid) => {
                tracing::error!(record = %at(), ?invalid, "damaged record read back from the log");
                Err(Reply::error(ErrorCode::Internal, format!("{} is damaged ({invalid:?})", at())))
            }
        }
    }

    /// Reads a fetched value and answers with it; keeps it in the cache if there is room.
    pub async fn resolve_fetch(&self, f: FetchIo) -> Reply {
        let fetch = f.fetch;
        match self.read_put(fetch.loc, f.file).await {
            Ok((data, key_len, version))
                if version == fetch.version && key_len == fetch.key_len as usize =>
            {
                let value = data.slice(key_len..);
                let log = self.log();
                self.engine.borrow_mut().cache_fetched(data, key_len, fetch.loc, &log);
                Reply::Value { value, version, ttl_ms: fetch.ttl_ms }
            }
            Ok((_, _, version)) => Reply::error(
                ErrorCode::Internal,
                format!(
                    "log segment {} at offset {} holds version {version}, the index says {}",
                    fetch.loc.segment(),
                    fetch.loc.offset,
                    fetch.version
                ),
            ),
            Err(reply) => reply,
        }
    }

    /// Waits until log record `seq` is durable; an error reply if the log failed.
    pub async fn durable(&self, seq: u64) -> Result<(), Reply> {
        let Some(wal) = &self.wal else { return Ok(()) };
        wal.wait(seq).await.map_err(|e| Reply::error(ErrorCode::Unavailable, e.to_string()))
    }

    /// Deletes every key (FLUSHDB), logging a flush record first: how many keys there were,
    /// and the log record to wait for.
    pub fn flush(&self) -> (Result<u64, String>, Option<u64>) {
        let mut log = self.log();
        let flushed = self.engine.borrow_mut().flush(&mut log);
        (flushed, log.last)
    }

    pub fn sweep_expired(&self, now_ms: u64, budget: usize) -> usize {
        self.engine.borrow_mut().sweep_expired(now_ms, budget)
    }

    /// Fills the storage half of this core's stats.
    pub fn fill_stats(&self, s: &mut CoreStats) {
        let e = self.engine.borrow().stats();
        let log = self.wal.as_ref().map(|w| w.stats()).unwrap_or_default();
        let c = self.counters.values();
        s.keys = e.keys;
        s.value_bytes = e.value_bytes;
        s.expired = e.expired;
        s.log_flushes = log.flushes;
        s.log_records = log.records;
        s.log_bytes = log.bytes;
        s.log_error = self.log_failure().unwrap_or_default();
        s.cached_bytes = e.cached_bytes;
        s.evicted = e.evicted;
        s.fetches = c.fetches;
        s.log_disk_bytes = e.log_total_bytes;
        s.log_live_bytes = e.log_live_bytes;
        s.compacted_bytes = c.compacted_bytes;
        s.segments_removed = c.segments_removed;
        s.ttl_keys = e.ttl_keys;
    }
}
