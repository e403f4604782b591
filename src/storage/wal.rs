//! The per-core write-ahead log: group commit over direct-I/O segment files.
//!
//! What is durable when: [`Wal::append`] only encodes the record into memory and returns its
//! sequence number. One flusher task per core takes everything appended so far, writes it
//! through a glommio `DmaStreamWriter` (O_DIRECT, 4 KiB-aligned blocks) and, in `sync` mode,
//! calls `fdatasync`; then every record up to that point is durable and [`Wal::wait`] returns
//! for them. Writes that arrive while a flush is in progress share the next one: that is the
//! group commit, and why durable writes cost one `fdatasync` per batch instead of per write.
//!
//! - `sync`: a write is acknowledged only after the `fdatasync` covering its record returned.
//! - `periodic`: acknowledged at once; the flusher writes and `fdatasync`s every
//!   `fsync_interval_ms`, so a crash loses at most that window (Redis `appendfsync everysec`).
//! - `none`: there is no log (the shard never creates a `Wal`).
//!
//! A failed write or `fdatasync` is sticky (redb's `PreviousIo`): the log refuses every later
//! append and waiter with [`WalError`], so the shard stops acknowledging writes while reads go
//! on. After a failed `fdatasync` the kernel may have dropped the dirty pages, so retrying
//! could report success for data that is gone; only a restart (and recovery) clears it.
//!
//! Segments are `DIR/<seq, 20 digits>.log`; a node starts a new one at every boot and when the
//! current one passes `segment_bytes_max`.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use futures_lite::AsyncWriteExt;
use glommio::io::{DmaStreamWriter, DmaStreamWriterBuilder, OpenOptions};

use super::record::{self, Mutation};

/// Segment size at which the log moves to a new file.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// DmaStreamWriter buffer: one flush writes in pieces of this size.
const WRITE_BUFFER_BYTES: usize = 256 << 10;
const DMA_ALIGN_BYTES: usize = 4096;

// Direct I/O writes whole aligned blocks; the buffer must be made of them.
const _: () = assert!(WRITE_BUFFER_BYTES.is_multiple_of(DMA_ALIGN_BYTES));
// A maximal record must fit in one segment, or the segment could never be closed.
const _: () = assert!(record::RECORD_BYTES_MAX as u64 <= SEGMENT_BYTES_MAX_DEFAULT);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    Sync,
    Periodic { interval_ms: u64 },
}

/// The log failed; sticky until restart.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write-ahead log failed ({0}); writes are refused until the node restarts")]
pub struct WalError(pub Rc<str>);

/// Counters for stats: flushes done and records they carried.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalStats {
    pub flushes: u64,
    pub records: u64,
    pub bytes: u64,
}

pub struct Wal {
    dir: PathBuf,
    mode: SyncMode,
    segment_bytes_max: u64,
    pending: RefCell<Vec<u8>>,
    appended_seq: Cell<u64>,
    durable_seq: Cell<u64>,
    failed: RefCell<Option<WalError>>,
    /// Wakes the flusher when records are appended or on shutdown.
    work: Event,
    /// Wakes waiters when `durable_seq` advances or the log fails.
    progress: Event,
    closing: Cell<bool>,
    stats: Cell<WalStats>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// Segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

impl Wal {
    pub fn new(dir: PathBuf, mode: SyncMode, segment_bytes_max: u64) -> Rc<Wal> {
        Rc::new(Wal {
            dir,
            mode,
            segment_bytes_max,
            pending: RefCell::new(Vec::with_capacity(WRITE_BUFFER_BYTES)),
            appended_seq: Cell::new(0),
            durable_seq: Cell::new(0),
            failed: RefCell::new(None),
            work: Event::new(),
            progress: Event::new(),
            closing: Cell::new(false),
            stats: Cell::new(WalStats::default()),
        })
    }

    pub fn failure(&self) -> Option<WalError> {
        self.failed.borrow().clone()
    }

    pub fn stats(&self) -> WalStats {
        self.stats.get()
    }

    /// Whether an acknowledgement must wait for [`Wal::wait`] (sync mode).
    pub fn acks_wait(&self) -> bool {
        self.mode == SyncMode::Sync
    }

    /// Encodes `m` for the next flush; returns its sequence number.
    pub fn append(&self, m: &Mutation) -> Result<u64, WalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        record::encode(m, &mut self.pending.borrow_mut());
        let seq = self.appended_seq.get() + 1;
        self.appended_seq.set(seq);
        self.work.notify(1);
        Ok(seq)
    }

    /// Resolves once the record with sequence number `seq` is durable.
    pub async fn wait(&self, seq: u64) -> Result<(), WalError> {
        loop {
            if self.durable_seq.get() >= seq {
                return Ok(());
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let listener = self.progress.listen();
            if self.durable_seq.get() >= seq || self.failed.borrow().is_some() {
                continue;
            }
            listener.await;
        }
    }

    /// Asks the flusher to write what is pending, sync, close the segment and return.
    pub fn close(&self) {
        self.closing.set(true);
        self.work.notify(1);
    }

    fn fail(&self, what: &str, e: std::io::Error) {
        let message: Rc<str> = Rc::from(format!("{what} in {}: {e}", self.dir.display()));
        tracing::error!(%message, "write-ahead log failed; refusing writes");
        *self.failed.borrow_mut() = Some(WalError(message));
        self.progress.notify(usize::MAX);
    }

    async fn open_segment(&self, seq: u64) -> std::io::Result<DmaStreamWriter> {
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        // The new file's directory entry must be durable before records in it are acked.
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(DmaStreamWriterBuilder::new(file).with_buffer_size(WRITE_BUFFER_BYTES).build())
    }

    /// The flusher: run as one task per core until [`Wal::close`]. `first_seq` is the number
    /// of the segment to create (one past the newest that recovery found).
    pub async fn run(self: Rc<Self>, first_seq: u64) {
        let mut seq = first_seq;
        let mut writer = match self.open_segment(seq).await {
            Ok(w) => w,
            Err(e) => return self.fail("creating a segment", e),
        };
        loop {
            match self.mode {
                SyncMode::Sync => {
                    while self.pending.borrow().is_empty() && !self.closing.get() {
                        let listener = self.work.listen();
                        if !self.pending.borrow().is_empty() || self.closing.get() {
                            break;
                        }
                        listener.await;
                    }
                }
                SyncMode::Periodic { interval_ms } => {
                    let tick = glommio::timer::sleep(Duration::from_millis(interval_ms));
                    let closing = async {
                        while !self.closing.get() {
                            self.work.listen().await;
                        }
                    };
                    futures_lite::future::or(tick, closing).await;
                }
            }
            let batch = std::mem::take(&mut *self.pending.borrow_mut());
            let upto = self.appended_seq.get();
            if !batch.is_empty() {
                if let Err(e) = writer.write_all(&batch).await {
                    return self.fail("write", e);
                }
                if let Err(e) = writer.sync().await {
                    return self.fail("fdatasync", e.into());
                }
                let mut s = self.stats.get();
                s.flushes += 1;
                s.records += upto - self.durable_seq.get();
                s.bytes += batch.len() as u64;
                self.stats.set(s);
                self.durable_seq.set(upto);
                self.progress.notify(usize::MAX);
                // Hand the (cleared) allocation back so steady state does not reallocate.
                let mut pending = self.pending.borrow_mut();
                if pending.is_empty() && pending.capacity() < batch.capacity() {
                    let mut reuse = batch;
                    reuse.clear();
                    *pending = reuse;
                }
            }
            if self.closing.get() && self.pending.borrow().is_empty() {
                if let Err(e) = writer.close().await {
                    self.fail("closing a segment", e);
                }
                return;
            }
            if writer.current_pos() >= self.segment_bytes_max {
                if let Err(e) = writer.close().await {
                    return self.fail("closing a segment", e);
                }
                seq += 1;
                writer = match self.open_segment(seq).await {
                    Ok(w) => w,
                    Err(e) => return self.fail("creating a segment", e),
                };
            }
        }
    }
}
