//! The per-core write-ahead log: group commit over direct-I/O segment files.
//!
//! What is durable when: [`Wal::append`] only encodes the record into memory and returns its
//! sequence number. One flusher task per core takes everything appended so far, writes it
//! with O_DIRECT in 4 KiB-aligned blocks ([`SegmentWriter`]) and calls `fdatasync`; then every
//! record up to that point is durable and [`Wal::wait`] returns for them. Writes that arrive
//! while a flush is in progress share the next one: that is the group commit, and why durable
//! writes cost one `fdatasync` per batch instead of per write.
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
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;

use super::record::{self, Loc, Mutation};

pub use crate::config::SEGMENT_BYTES_MAX_DEFAULT;
/// Initial capacity of the pending-records buffer.
const WRITE_BUFFER_BYTES: usize = 256 << 10;
/// O_DIRECT granularity: offsets and lengths of every write are multiples of this.
const DMA_ALIGN_BYTES: usize = 4096;

// A segment is made of whole direct-I/O blocks.
const _: () = assert!((SEGMENT_BYTES_MAX_DEFAULT as usize).is_multiple_of(DMA_ALIGN_BYTES));
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

/// Appends bytes to one segment with O_DIRECT. Each [`SegmentWriter::write`] writes only the
/// blocks it touches: the partial last block is kept in memory and rewritten, zero-padded,
/// together with the new bytes, so a flush of a few hundred bytes costs one 4 KiB write.
/// (glommio's `DmaStreamWriter` writes its whole buffer on every padded flush.)
pub struct SegmentWriter {
    /// Shared with the in-flight `fdatasync` task (see [`Wal::run`]).
    file: Rc<DmaFile>,
    /// Bytes of records in the segment (the logical length).
    len: u64,
    /// The bytes of the last, partial block (`len % DMA_ALIGN_BYTES` of them).
    tail: Vec<u8>,
}

impl SegmentWriter {
    fn new(file: DmaFile) -> SegmentWriter {
        SegmentWriter { file: Rc::new(file), len: 0, tail: Vec::with_capacity(DMA_ALIGN_BYTES) }
    }

    pub fn bytes_written(&self) -> u64 {
        self.len
    }

    /// Writes `bytes` after what is already there (not yet synced).
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let start = self.len - self.tail.len() as u64;
        debug_assert!(start.is_multiple_of(DMA_ALIGN_BYTES as u64));
        let used = self.tail.len() + bytes.len();
        let padded = used.div_ceil(DMA_ALIGN_BYTES) * DMA_ALIGN_BYTES;
        let mut buf = self.file.alloc_dma_buffer(padded);
        let out = buf.as_bytes_mut();
        out[..self.tail.len()].copy_from_slice(&self.tail);
        out[self.tail.len()..used].copy_from_slice(bytes);
        out[used..].fill(0);
        let written = self.file.write_at(buf, start).await.map_err(std::io::Error::from)?;
        if written != padded {
            return Err(std::io::Error::other(format!("short write: {written} of {padded}")));
        }
        self.len += bytes.len() as u64;
        let tail_len = (self.len % DMA_ALIGN_BYTES as u64) as usize;
        let keep_from = bytes.len().saturating_sub(tail_len);
        let mut new_tail = Vec::with_capacity(DMA_ALIGN_BYTES);
        if tail_len > bytes.len() {
            // Still inside the old partial block.
            new_tail.extend_from_slice(&self.tail);
        }
        new_tail.extend_from_slice(&bytes[keep_from..]);
        debug_assert_eq!(new_tail.len(), tail_len);
        self.tail = new_tail;
        Ok(())
    }

    #[cfg(test)]
    async fn sync(&self) -> std::io::Result<()> {
        self.file.fdatasync().await.map_err(std::io::Error::from)
    }

    /// Cuts the zero padding after the last record, syncs and closes.
    async fn close(self) -> std::io::Result<()> {
        self.file.truncate(self.len).await.map_err(std::io::Error::from)?;
        self.file.fdatasync().await.map_err(std::io::Error::from)?;
        self.file.close_rc().await.map(|_| ()).map_err(std::io::Error::from)
    }
}

pub struct Wal {
    dir: PathBuf,
    mode: SyncMode,
    segment_bytes_max: u64,
    pending: RefCell<Vec<u8>>,
    /// Offsets in `pending` where a new segment starts (a roll, or a full segment).
    cuts: RefCell<Vec<usize>>,
    /// The segment the next record goes to, and its offset there: a record's location is
    /// fixed when it is appended, so the index can point at it at once.
    append_segment: Cell<u64>,
    append_offset: Cell<u64>,
    appended_seq: Cell<u64>,
    durable_seq: Cell<u64>,
    /// (segment, offset): every record ending at or before it is durable (and readable).
    durable_pos: Cell<(u64, u64)>,
    failed: RefCell<Option<WalError>>,
    /// Wakes the flusher when records are appended or on shutdown.
    work: Event,
    /// Wakes waiters when `durable_seq` advances, a segment opens, or the log fails.
    progress: Event,
    closing: Cell<bool>,
    /// The segment the flusher writes to now.
    segment: Cell<u64>,
    /// Every segment of the core, open for direct-I/O reads of values not in memory. A read
    /// takes its own `Rc`, so a segment removed by compaction meanwhile stays readable.
    files: RefCell<BTreeMap<u64, Rc<DmaFile>>>,
    stats: Cell<WalStats>,
    /// fdatasync duration (µs) and records made durable per sync, for metrics.
    sync_us: RefCell<Histogram<u64>>,
    sync_records: RefCell<Histogram<u64>>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// Segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    numbered_files(dir, "", ".log")
}

/// Files in `dir` named `<prefix><number><suffix>`, by number.
pub(crate) fn numbered_files(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

impl Wal {
    /// A log whose first new segment will be `first_segment` (one past the newest that
    /// recovery found, and never below the checkpoint's).
    pub fn new(
        dir: PathBuf,
        mode: SyncMode,
        segment_bytes_max: u64,
        first_segment: u64,
    ) -> Rc<Wal> {
        assert!(first_segment >= 1, "segments are numbered from 1");
        Rc::new(Wal {
            dir,
            mode,
            segment_bytes_max,
            pending: RefCell::new(Vec::with_capacity(WRITE_BUFFER_BYTES)),
            cuts: RefCell::new(Vec::new()),
            append_segment: Cell::new(first_segment),
            append_offset: Cell::new(0),
            appended_seq: Cell::new(0),
            durable_seq: Cell::new(0),
            durable_pos: Cell::new((first_segment, 0)),
            failed: RefCell::new(None),
            work: Event::new(),
            progress: Event::new(),
            closing: Cell::new(false),
            segment: Cell::new(0),
            files: RefCell::new(BTreeMap::new()),
            stats: Cell::new(WalStats::default()),
            sync_us: RefCell::new(super::histogram()),
            // Records per sync fit the same bounds (up to 60M).
            sync_records: RefCell::new(super::histogram()),
        })
    }

    /// Opens the segments recovery kept, for reading values back.
    pub async fn open_existing(&self, segments: &[(u64, PathBuf)]) -> std::io::Result<()> {
        probe_polled_io(&self.dir).await?;
        for (seq, path) in segments {
            let file = DmaFile::open(path)
                .await
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            self.files.borrow_mut().insert(*seq, Rc::new(file));
        }
        Ok(())
    }

    pub fn failure(&self) -> Option<WalError> {
        self.failed.borrow().clone()
    }

    pub fn stats(&self) -> WalStats {
        self.stats.get()
    }

    /// fdatasync duration (µs) and records per sync since start.
    pub fn histograms(&self) -> (Histogram<u64>, Histogram<u64>) {
        (self.sync_us.borrow().clone(), self.sync_records.borrow().clone())
    }

    /// Whether an acknowledgement must wait for [`Wal::wait`] (sync mode).
    pub fn acks_wait(&self) -> bool {
        self.mode == SyncMode::Sync
    }

    /// Bytes appended and not yet handed to the disk.
    pub fn pending_bytes(&self) -> usize {
        self.pending.borrow().len()
    }

    /// The sequence number of the last record appended.
    pub fn appended(&self) -> u64 {
        self.appended_seq.get()
    }

    /// Whether the record at `loc` is durable, so its value may leave memory.
    pub fn is_durable(&self, loc: Loc) -> bool {
        (loc.segment(), loc.end()) <= self.durable_pos.get()
    }

    /// The open file of segment `seq`, for reading.
    pub fn reader(&self, seq: u64) -> Option<Rc<DmaFile>> {
        self.files.borrow().get(&seq).cloned()
    }

    /// Numbers of every segment the log holds, oldest first.
    pub fn segment_numbers(&self) -> Vec<u64> {
        self.files.borrow().keys().copied().collect()
    }

    /// Encodes `m` for the next flush; returns its sequence number and where it will live.
    pub fn append(&self, m: &Mutation) -> Result<(u64, Loc), WalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        if self.closing.get() {
            // The flusher may already have written its last batch: refuse rather than accept
            // a record nobody will write.
            return Err(WalError(Rc::from("the log is closing (node shutting down)")));
        }
        let len = m.encoded_len();
        if self.append_offset.get() > 0
            && self.append_offset.get() + len as u64 > self.segment_bytes_max
        {
            self.cut();
        }
        let loc = Loc::new(self.append_segment.get(), self.append_offset.get(), len);
        record::encode(m, &mut self.pending.borrow_mut());
        self.append_offset.set(self.append_offset.get() + len as u64);
        let seq = self.appended_seq.get() + 1;
        self.appended_seq.set(seq);
        self.work.notify(1);
        Ok((seq, loc))
    }

    /// Ends the segment being appended to: later records go to the next one.
    fn cut(&self) {
        self.cuts.borrow_mut().push(self.pending.borrow().len());
        self.append_segment.set(self.append_segment.get() + 1);
        self.append_offset.set(0);
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

    /// The segment records are appended to now.
    pub fn segment(&self) -> u64 {
        self.append_segment.get()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Ends the current segment and returns the new one's number once the flusher has
    /// closed (synced) the old one and opened the new. Records appended after this is called
    /// are in the returned segment or later ones: the cut a checkpoint needs.
    pub async fn roll(&self) -> Result<u64, WalError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let empty =
            self.append_offset.get() == 0 && self.segment.get() == self.append_segment.get();
        if !empty {
            self.cut();
            self.work.notify(1);
        }
        let target = self.append_segment.get();
        loop {
            if self.segment.get() >= target {
                return Ok(target);
            }
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let listener = self.progress.listen();
            if self.segment.get() >= target || self.failed.borrow().is_some() {
                continue;
            }
            listener.await;
        }
    }

    /// Deletes segment `seq` (compaction moved or dropped everything in it). Reads already
    /// holding the file finish; the directory entry's removal is made durable.
    pub async fn remove_segment(&self, seq: u64) -> std::io::Result<()> {
        debug_assert!(seq < self.segment.get(), "removing the segment being written");
        self.files.borrow_mut().remove(&seq);
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                std::fs::remove_file(dir.join(segment_name(seq)))?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
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

    /// Makes everything written to `file` so far durable, then acknowledges records up to
    /// `upto`, which end at `pos`.
    async fn sync_and_ack(self: Rc<Self>, file: Rc<DmaFile>, upto: u64, pos: (u64, u64)) {
        let started = std::time::Instant::now();
        match file.fdatasync().await {
            Ok(()) => {
                let us = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                let _ = self.sync_us.borrow_mut().record(us);
                let records = upto.saturating_sub(self.durable_seq.get()).max(1);
                let _ = self.sync_records.borrow_mut().record(records.min(10_000_000));
                let mut s = self.stats.get();
                s.records += upto.saturating_sub(self.durable_seq.get());
                self.stats.set(s);
                self.durable_seq.set(self.durable_seq.get().max(upto));
                self.durable_pos.set(self.durable_pos.get().max(pos));
                self.progress.notify(usize::MAX);
            }
            Err(e) => self.fail("fdatasync", e.into()),
        }
    }

    /// Creates segment `seq`, allocated to its full size (reads of the unwritten part return
    /// zeros, which recovery reads as "no more records"), and makes its directory entry
    /// durable. Measured here (50 connections, sync mode): preallocating did a little better
    /// than growing the file on every write, and zero-filling the next segment in the
    /// background made the device cache flush behind it stall syncs for up to a second.
    async fn prepare_segment(dir: PathBuf, seq: u64, bytes: u64) -> std::io::Result<SegmentWriter> {
        let path = dir.join(segment_name(seq));
        let named = |e: glommio::GlommioError<()>| {
            std::io::Error::other(format!("{}: {e}", path.display()))
        };
        // Read too: the same file serves reads of values that left memory.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(named)?;
        file.pre_allocate(bytes, false).await.map_err(named)?;
        // The new file's directory entry must be durable before records in it are acked.
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(SegmentWriter::new(file))
    }

    /// Makes `writer` the segment being written, and starts preparing the one after it.
    fn opened(
        &self,
        seq: u64,
        writer: &SegmentWriter,
    ) -> glommio::Task<std::io::Result<SegmentWriter>> {
        self.files.borrow_mut().insert(seq, writer.file.clone());
        self.segment.set(seq);
        self.progress.notify(usize::MAX);
        glommio::spawn_local(Self::prepare_segment(
            self.dir.clone(),
            seq + 1,
            self.segment_bytes_max,
        ))
    }

    /// The flusher: run as one task per core until [`Wal::close`].
    pub async fn run(self: Rc<Self>) {
        let mut seq = self.append_segment.get();
        let size = self.segment_bytes_max;
        if let Err(e) = probe_polled_io(&self.dir).await {
            return self.fail("probing direct I/O", e);
        }
        let mut writer = match Self::prepare_segment(self.dir.clone(), seq, size).await {
            Ok(w) => w,
            Err(e) => return self.fail("creating a segment", e),
        };
        // The next segment is prepared in the background while this one fills up.
        let mut next = Some(self.opened(seq, &writer));
        // The fdatasync in flight, if any: it acknowledges its batch itself when it returns,
        // while the flusher already writes the next batch (write and sync overlap).
        let mut syncing: Option<glommio::Task<()>> = None;
        loop {
            let idle = || {
                self.pending.borrow().is_empty()
                    && self.cuts.borrow().is_empty()
                    && !self.closing.get()
            };
            match self.mode {
                SyncMode::Sync => {
                    while idle() {
                        let listener = self.work.listen();
                        if !idle() {
                            break;
                        }
                        listener.await;
                    }
                }
                SyncMode::Periodic { interval_ms } => {
                    let tick = glommio::timer::sleep(Duration::from_millis(interval_ms));
                    let urgent = async {
                        while !self.closing.get() && self.cuts.borrow().is_empty() {
                            self.work.listen().await;
                        }
                    };
                    futures_lite::future::or(tick, urgent).await;
                }
            }
            let batch = std::mem::take(&mut *self.pending.borrow_mut());
            let cuts = std::mem::take(&mut *self.cuts.borrow_mut());
            let upto = self.appended_seq.get();
            let upto_pos = (self.append_segment.get(), self.append_offset.get());
            let mut from = 0;
            for (i, end) in cuts.iter().copied().chain([batch.len()]).enumerate() {
                if end > from {
                    // This write overlaps the previous batch's fdatasync (still in flight).
                    if let Err(e) = writer.write(&batch[from..end]).await {
                        return self.fail("write", e);
                    }
                    let mut s = self.stats.get();
                    s.flushes += 1;
                    s.bytes += (end - from) as u64;
                    self.stats.set(s);
                }
                from = end;
                if i == cuts.len() {
                    break;
                }
                // A segment ends here: close it (truncate, fdatasync) and open the next.
                if let Some(previous) = syncing.take() {
                    previous.await;
                }
                if self.failed.borrow().is_some() {
                    return;
                }
                if let Err(e) = writer.close().await {
                    return self.fail("closing a segment", e);
                }
                seq += 1;
                let prepared = match next.take() {
                    Some(task) => task.await,
                    None => Self::prepare_segment(self.dir.clone(), seq, size).await,
                };
                writer = match prepared {
                    Ok(w) => w,
                    Err(e) => return self.fail("creating a segment", e),
                };
                next = Some(self.opened(seq, &writer));
            }
            if !batch.is_empty() {
                // Syncs complete in order: the previous one acknowledges its batch first.
                if let Some(previous) = syncing.take() {
                    previous.await;
                }
                if self.failed.borrow().is_some() {
                    return;
                }
                let file = writer.file.clone();
                let task = glommio::spawn_local(self.clone().sync_and_ack(file, upto, upto_pos));
                match self.mode {
                    SyncMode::Sync => syncing = Some(task),
                    SyncMode::Periodic { .. } => task.await,
                }
                // Hand the (cleared) allocation back so steady state does not reallocate.
                let mut pending = self.pending.borrow_mut();
                if pending.is_empty() && pending.capacity() < batch.capacity() {
                    let mut reuse = batch;
                    reuse.clear();
                    *pending = reuse;
                }
            }
            if self.closing.get() && idle_after_close(&self) {
                if let Some(previous) = syncing.take() {
                    previous.await;
                    if self.failed.borrow().is_some() {
                        return;
                    }
                }
                if let Err(e) = writer.close().await {
                    self.fail("closing a segment", e);
                }
                // The prepared next segment holds no records: remove it rather than leave an
                // empty preallocated file behind.
                if let Some(task) = next.take()
                    && let Ok(unused) = task.await
                {
                    self.files.borrow_mut().remove(&(seq + 1));
                    let path = self.dir.join(segment_name(seq + 1));
                    let _ = unused.file.close_rc().await;
                    let _ = std::fs::remove_file(path);
                }
                return;
            }
        }
    }
}

/// Makes glommio find out, with a real read, whether the disk under `dir` supports polled
/// I/O. glommio probes the first direct-I/O file it opens on each device with a read of one
/// block, and caches the answer for the process. On a new, empty segment that read ends at
/// end-of-file without reaching the device, so the probe "succeeds" even on a disk that
/// cannot poll (this virtio disk), and every later read of a segment fails with EOPNOTSUPP.
/// Opening a file that holds a block of data first makes the probe read the device.
/// Done once per device and thread: both `open_existing` and `run` need it done first, and a
/// node calls both.
async fn probe_polled_io(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    thread_local! {
        static PROBED: RefCell<std::collections::HashSet<u64>> = RefCell::default();
    }
    let device = std::fs::metadata(dir)?.dev();
    if PROBED.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let path = dir.join(".direct-io-probe");
    std::fs::write(&path, [0xA5u8; DMA_ALIGN_BYTES])?;
    std::fs::File::open(&path)?.sync_all()?;
    let opened = DmaFile::open(&path).await;
    let _ = std::fs::remove_file(&path);
    let file = opened.map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    file.close().await.map_err(std::io::Error::from)?;
    PROBED.with(|p| p.borrow_mut().insert(device));
    Ok(())
}

/// Nothing is left to write: no pending bytes and no segment cut waiting.
fn idle_after_close(wal: &Wal) -> bool {
    wal.pending.borrow().is_empty() && wal.cuts.borrow().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::default().io_memory(1 << 20).make().expect("executor").run(f)
    }

    #[test]
    fn segment_writer_appends_across_blocks_and_closes_to_the_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.log");
        let p = path.clone();
        let expected = run(async move {
            let file = OpenOptions::new().write(true).create_new(true).dma_open(&p).await.unwrap();
            let mut w = SegmentWriter::new(file);
            let mut expected = Vec::new();
            let mut x = 7u64;
            // Sizes that stay inside a block, end on a boundary, and span several blocks.
            for size in [1usize, 100, 3995, 4096, 10_000, 1, 4095, 8192, 33] {
                let chunk: Vec<u8> = (0..size)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (x >> 33) as u8 | 1
                    })
                    .collect();
                w.write(&chunk).await.unwrap();
                w.sync().await.unwrap();
                expected.extend_from_slice(&chunk);
                assert_eq!(w.bytes_written(), expected.len() as u64);
                // Mid-life, the file holds the records then zero padding to a block boundary.
                let on_disk = std::fs::read(&p).unwrap();
                assert_eq!(&on_disk[..expected.len()], &expected[..]);
                assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
            }
            w.close().await.unwrap();
            expected
        });
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn group_commit_acks_after_sync_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        run(async move {
            let wal = Wal::new(d.clone(), SyncMode::Sync, SEGMENT_BYTES_MAX_DEFAULT, 1);
            let flusher = glommio::spawn_local(wal.clone().run());
            let mut seqs = Vec::new();
            for i in 0..100u64 {
                let key = bytes::Bytes::from(format!("k{i}"));
                seqs.push(wal.append(&Mutation::Delete { key, version: i + 1 }).unwrap().0);
            }
            wal.wait(*seqs.last().unwrap()).await.unwrap();
            // 100 appends made before the flusher ran share a handful of flushes.
            assert!(wal.stats().flushes <= 3, "{:?}", wal.stats());
            assert_eq!(wal.stats().records, 100);
            wal.close();
            flusher.await;
        });
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        let bytes = bytes::Bytes::from(std::fs::read(&segs[0].1).unwrap());
        let mut n = 0;
        let end = record::scan(&bytes, false, |_, _| n += 1, |_, _, _| {});
        assert_eq!((n, end), (100, record::Ending::Clean));
    }

    /// Records are readable at the location `append` gave, from the segment being written and
    /// from closed ones, and `roll` moves later records to the next segment.
    #[test]
    fn records_are_read_back_where_append_placed_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        run(async move {
            let wal = Wal::new(d.clone(), SyncMode::Sync, 1 << 20, 3);
            let flusher = glommio::spawn_local(wal.clone().run());
            let mut placed = Vec::new();
            for i in 0..400u64 {
                if i == 100 {
                    assert_eq!(wal.roll().await.unwrap(), 4);
                }
                let m = Mutation::put(format!("k{i}").as_bytes(), &vec![i as u8; 5000], i + 1, 0);
                let (seq, loc) = wal.append(&m).unwrap();
                placed.push((seq, loc, m));
            }
            wal.wait(placed.last().unwrap().0).await.unwrap();
            // 100 records of ~5 KiB in segment 3, then 1 MiB segments from 4 on.
            assert_eq!(placed[99].1.segment(), 3);
            assert_eq!(placed[100].1, Loc::new(4, 0, placed[100].2.encoded_len()));
            assert!(placed.last().unwrap().1.segment() >= 5);
            for (_, loc, m) in &placed {
                assert!(wal.is_durable(*loc));
                let file = wal.reader(loc.segment()).expect("segment open");
                let read = file.read_at(u64::from(loc.offset), loc.len as usize).await.unwrap();
                let bytes = bytes::Bytes::copy_from_slice(&read);
                assert_eq!(&record::decode(&bytes, 0).unwrap().0, m);
            }
            wal.close();
            flusher.await;
        });
    }
}
