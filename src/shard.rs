//! `Core`: everything one core owns, and the routing of requests between cores.
//!
//! No locks and no `Arc` on the request path: a `Core` lives in an `Rc` on its own executor,
//! its engine behind a `RefCell` that is never borrowed across an `.await`. Other cores reach
//! its data only by sending it a [`Call`] over the bounded channel mesh ([`mesh`]); the answer
//! comes back over a second mesh, so a core that is busy answering can never block a core that
//! is collecting answers (two meshes, no cycle of waits).
//!
//! A request becomes a [`Slot`] as soon as it is parsed: `Ready` when this core owns the key
//! (applied immediately, in arrival order), `Fetch` when it read a value that is on disk only
//! (the value as of that moment; its bytes are read with direct I/O while later requests go
//! on), `Remote` when it was forwarded, `Batch`/`Stats` when it fans out. An operation that
//! compares against a value on disk only (CAS by value) reads it before the connection's next
//! request is applied, so one connection's requests still apply in order. A connection
//! resolves its slots in request order, which gives in-order
//! replies under pipelining while forwarded requests run concurrently.
//!
//! Placement is `corekv_schema::placement`: key → partition (crc32c, hash tags) → core
//! (`partition % cores`); a core's index is its peer id in the mesh.

mod clustered;
pub mod mesh;
pub mod metrics;
mod reserve;
pub mod status;
pub mod topology;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use corekv_schema::codec::{
    Consistency, CoreStats, Durability, ErrorCode, Op, Reply, TopologyInfo,
};
use corekv_schema::frame::Limits;
use corekv_schema::placement;
use slab::Slab;

use bytes::Bytes;

use crate::storage::checkpoint;
pub use crate::storage::store::{Answered, FetchIo};
use crate::storage::store::{CheckpointExtra, Store, prepare_backup_dir};
use crate::time::now_ms;
pub use mesh::{Answer, Call, Done, Mesh, Origin, ScanStep, Work};

/// Keeps the per-core connection gauge right on every exit path.
pub struct ConnectionGauge(Rc<Core>);

impl ConnectionGauge {
    pub fn new(core: Rc<Core>) -> ConnectionGauge {
        let c = &core.counters.connections;
        c.set(c.get() + 1);
        ConnectionGauge(core)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        let c = &self.0.counters.connections;
        c.set(c.get() - 1);
    }
}

/// Per-core counters: plain cells, summed over cores only when someone asks.
#[derive(Default, Debug)]
pub struct Counters {
    pub requests: Cell<u64>,
    pub forwarded_out: Cell<u64>,
    pub forwarded_in: Cell<u64>,
    pub backpressure_events: Cell<u64>,
    pub connections: Cell<u64>,
    pub metrics: metrics::Metrics,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Node-wide facts every core reads; fixed once boot has bound every listener.
#[derive(Debug)]
pub struct NodeInfo {
    pub topology: OnceLock<TopologyInfo>,
    pub started: Instant,
    pub partitions: u32,
    pub limits: Limits,
    pub partial_frame_timeout_ms: u64,
    pub data_dir: std::path::PathBuf,
    /// The node's durability mode, as the flag says it (sync, periodic, none).
    pub durability: String,
    /// Cluster mode: what this node last heard from each peer.
    pub peers: crate::cluster::health::Board,
}

/// A forwarded request waiting for its answer.
enum Pending {
    Waiting(Option<Waker>),
    Done(Done),
}

pub struct Core {
    pub index: u16,
    pub cores: u16,
    pub partitions: u32,
    pub limits: Limits,
    pub counters: Counters,
    pub node: Arc<NodeInfo>,
    /// This core's data: engine, log, checkpoints, compaction (shared with its Raft driver).
    pub store: Rc<Store>,
    mesh: Mesh,
    pending: RefCell<Slab<Pending>>,
    /// Keys held by a write spanning cores (`reserve.rs`); operations on them wait.
    held: RefCell<std::collections::HashMap<Bytes, Held>>,
    next_ticket: Cell<u64>,
    /// Cluster mode: this core's Raft groups and links (`cluster::replica`).
    pub cluster: Option<Rc<crate::cluster::replica::Replicas>>,
    /// This core itself, for tasks a `&self` method starts.
    this: Weak<Core>,
}

/// A key that is reserved, or has operations queued for it, or both.
#[derive(Default)]
pub(crate) struct Held {
    reserved: bool,
    /// Tickets in arrival order, each with the waker of the operation holding it.
    queue: std::collections::VecDeque<(u64, Option<Waker>)>,
}

/// A parsed request on its way to a reply; see the module doc.
pub enum Slot {
    Ready(Reply),
    /// Applied here; the reply waits until log record `seq` is durable.
    Durable(Reply, u64),
    /// A read applied here whose value is read from the log.
    Fetch(FetchIo),
    Remote(usize),
    /// `durable_seq`: the last log record of the local part to wait for; `fetches`: local
    /// reads whose values are read from the log.
    Batch {
        replies: Vec<Option<Reply>>,
        parts: Vec<(usize, Vec<usize>)>,
        durable_seq: Option<u64>,
        fetches: Vec<(usize, FetchIo)>,
    },
    Stats {
        local: CoreStats,
        tokens: Vec<usize>,
    },
}

/// Work another core sent, done here: the answer, the log record it waits for, and reads
/// still to do (by reply index) before it can be sent.
pub struct Worked {
    pub done: Done,
    pub seq: Option<u64>,
    pub fetches: Vec<(usize, FetchIo)>,
}

impl Core {
    pub fn new(
        index: u16,
        cores: u16,
        node: Arc<NodeInfo>,
        store: Rc<Store>,
        mesh: Mesh,
        cluster: Option<Rc<crate::cluster::replica::Replicas>>,
        this: Weak<Core>,
    ) -> Core {
        Core {
            index,
            cores,
            partitions: node.partitions,
            limits: node.limits,
            counters: Counters::default(),
            node,
            store,
            mesh,
            pending: RefCell::new(Slab::with_capacity(1024)),
            held: RefCell::new(std::collections::HashMap::new()),
            next_ticket: Cell::new(0),
            cluster,
            this,
        }
    }

    /// This core as an `Rc`, for work that outlives a borrow (None while it shuts down).
    pub fn rc(&self) -> Option<Rc<Core>> {
        self.this.upgrade()
    }

    /// `apply` without waiting for a turn on a reserved key (the reservation's own commit).
    async fn apply_unqueued(&self, op: Op, now_ms: u64) -> (Answered, Option<u64>) {
        debug_assert!(op.key().is_none_or(|k| self.owner_of(k) == self.index));
        self.store.execute(op, now_ms).await
    }

    /// Whether the node's writes are acknowledged only once durable (sync mode).
    fn acks_wait(&self) -> bool {
        self.store.acks_wait()
    }

    /// Reads a fetched value and answers with it.
    async fn resolve_fetch(&self, f: FetchIo) -> Reply {
        self.store.resolve_fetch(f).await
    }

    /// Waits until log record `seq` is durable; an error reply if the log failed.
    pub async fn durable(&self, seq: u64) -> Result<(), Reply> {
        self.store.durable(seq).await
    }

    /// What a checkpoint of this core holds besides its keys: its Raft groups' state.
    fn checkpoint_extra(&self) -> Option<&dyn CheckpointExtra> {
        self.cluster.as_deref().map(|r| r as &dyn CheckpointExtra)
    }

    /// Writes a checkpoint of this core (and deletes older checkpoints). One at a time.
    pub async fn checkpoint(&self) -> Result<checkpoint::Written, String> {
        self.store.checkpoint(self.checkpoint_extra()).await
    }

    pub fn owner_of(&self, key: &[u8]) -> u16 {
        if self.cluster.is_some() {
            // The metadata group's keys live on its own partition's core.
            let partition = crate::cluster::meta::partition_of(key, self.partitions);
            return placement::core_of_partition(partition, self.cores);
        }
        placement::core_of(key, self.partitions, self.cores)
    }

    /// Turns one request into a slot. Waits only when the mesh to the owning core is full,
    /// which is the back-pressure that stops the calling connection from reading.
    pub async fn dispatch(
        &self,
        op: Op,
        durability: Durability,
        consistency: Consistency,
        origin: Origin,
        now_ms: u64,
    ) -> Slot {
        bump(&self.counters.requests);
        if self.cluster.is_some()
            && (op.key().is_some() || matches!(op, Op::Batch(_) | Op::Topology))
        {
            // Durability in a cluster is the Raft quorum's: every replica's log is synced
            // before it acknowledges, whatever the request asked.
            return self.cluster_slot(op, consistency, origin);
        }
        let wait = match self.ack_waits(durability) {
            Ok(wait) => wait,
            Err(reply) => return Slot::Ready(reply),
        };
        // When acks do not wait for the log (periodic mode, or a request asking for less),
        // nothing else stops writers from outrunning the disk: hold this connection until
        // the log has caught up below its bound.
        if self.store.wait_log_room().await {
            bump(&self.counters.backpressure_events);
        }
        match op {
            Op::Ping { payload } => Slot::Ready(Reply::Pong { payload }),
            Op::Topology => Slot::Ready(match self.node.topology.get() {
                Some(t) => Reply::Topology(Box::new(t.clone())),
                None => Reply::error(ErrorCode::Unavailable, "node is still starting"),
            }),
            Op::Stats => {
                let tokens = self.forward_to_others(|| Work::Stats).await;
                Slot::Stats { local: self.core_stats(), tokens }
            }
            Op::Batch(ops) => self.dispatch_batch(ops, wait, now_ms).await,
            // Admin operations are rare and slow; they run to completion here, which holds up
            // only this connection.
            Op::Checkpoint => Slot::Ready(self.admin(|| Work::Checkpoint, "checkpoint").await),
            Op::Backup { dir } => Slot::Ready(self.admin_backup(dir).await),
            op => {
                let Some(key) = op.key() else {
                    return Slot::Ready(Reply::error(
                        ErrorCode::BadRequest,
                        "operation has no key",
                    ));
                };
                let owner = self.owner_of(key);
                if owner == self.index {
                    match self.apply(op, now_ms).await {
                        (Answered::Reply(reply), Some(seq)) if wait => Slot::Durable(reply, seq),
                        (Answered::Reply(reply), _) => Slot::Ready(reply),
                        (Answered::Fetch(f), _) => Slot::Fetch(f),
                    }
                } else {
                    Slot::Remote(self.forward(owner, Work::One(op, wait)).await)
                }
            }
        }
    }

    /// Whether replies to writes must wait for the log, given what the request asked for.
    /// A request may ask for less durability than the node gives, never for more.
    fn ack_waits(&self, asked: Durability) -> Result<bool, Reply> {
        let node_syncs = self.acks_wait();
        let more_than_node = |what: &str| {
            Reply::error(
                ErrorCode::BadRequest,
                format!("durability {what} asked, but this node runs with less"),
            )
        };
        match asked {
            Durability::Default => Ok(node_syncs),
            Durability::Memory => Ok(false),
            Durability::Periodic if self.store.wal.is_some() => Ok(false),
            Durability::Periodic => Err(more_than_node("periodic")),
            Durability::Sync if node_syncs => Ok(true),
            Durability::Sync => Err(more_than_node("sync")),
        }
    }

    async fn dispatch_batch(&self, ops: Vec<Op>, wait: bool, now_ms: u64) -> Slot {
        let mut durable_seq = None;
        let mut fetches = Vec::new();
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(ops.len());
        let mut remote: Vec<(Vec<Op>, Vec<usize>)> =
            (0..self.cores).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, op) in ops.into_iter().enumerate() {
            let reply = match op.key().map(|k| self.owner_of(k)) {
                None => Some(Reply::error(
                    ErrorCode::BadRequest,
                    format!("{} is not allowed in a batch", op.name()),
                )),
                Some(owner) if owner == self.index => {
                    let (answered, seq) = self.apply(op, now_ms).await;
                    if wait && seq.is_some() {
                        durable_seq = seq;
                    }
                    match answered {
                        Answered::Reply(reply) => Some(reply),
                        Answered::Fetch(f) => {
                            fetches.push((i, f));
                            None
                        }
                    }
                }
                Some(owner) => {
                    let (ops, indices) = &mut remote[usize::from(owner)];
                    ops.push(op);
                    indices.push(i);
                    None
                }
            };
            replies.push(reply);
        }
        let mut parts = Vec::new();
        for (target, (ops, indices)) in remote.into_iter().enumerate() {
            if !ops.is_empty() {
                let token = self.forward(target as u16, Work::Many(ops, wait)).await;
                parts.push((token, indices));
            }
        }
        Slot::Batch { replies, parts, durable_seq, fetches }
    }

    /// Applies a single-key operation owned by this core and logs what it changed. Returns the
    /// answer and, for a logged write, the log sequence number that makes it durable. Waits
    /// only when the operation compares against a value that is on disk only.
    pub async fn apply(&self, op: Op, now_ms: u64) -> (Answered, Option<u64>) {
        if !self.held.borrow().is_empty()
            && let Some(key) = op.key()
        {
            let key = key.clone();
            self.wait_turn(&key).await;
        }
        self.apply_unqueued(op, now_ms).await
    }

    /// Runs work another core sent here.
    pub async fn execute_work(&self, work: Work) -> Worked {
        bump(&self.counters.forwarded_in);
        let now_ms = now_ms();
        let mut fetches = Vec::new();
        let mut answer = |i: usize, answered: Answered| match answered {
            Answered::Reply(reply) => reply,
            Answered::Fetch(f) => {
                fetches.push((i, f));
                Reply::error(ErrorCode::Internal, "value not read")
            }
        };
        let (done, seq) = match work {
            Work::One(op, wait) => {
                let (answered, seq) = self.apply(op, now_ms).await;
                (Done::One(answer(0, answered)), seq.filter(|_| wait))
            }
            Work::Many(ops, wait) => {
                let mut last = None;
                let mut replies = Vec::with_capacity(ops.len());
                for (i, op) in ops.into_iter().enumerate() {
                    let (answered, seq) = self.apply(op, now_ms).await;
                    last = seq.or(last);
                    replies.push(answer(i, answered));
                }
                (Done::Many(replies), last.filter(|_| wait))
            }
            Work::Stats => (Done::Stats(self.core_stats()), None),
            Work::Scan(step) => (self.scan_here(&step, now_ms), None),
            work @ (Work::Reserve(_) | Work::Release(_) | Work::Commit(..)) => {
                self.reservation_work(work).await
            }
            Work::Metrics => (Done::Metrics(Box::new(self.metrics_snapshot())), None),
            Work::ClusterStatus => (self.groups_here(), None),
            // In the serving loop, not beside it: later calls from the same peer must not
            // overtake it. The answer waits for the flush record to be durable.
            Work::Flush => {
                let (done, seq) = self.flush_here();
                (done, seq.filter(|_| self.acks_wait()))
            }
            Work::Cluster(..) | Work::Raft(_) => {
                debug_assert!(false, "cluster work is run beside the serving loop");
                (Done::One(Reply::error(ErrorCode::Internal, "cluster work misrouted")), None)
            }
            Work::Checkpoint | Work::Backup(_) => {
                debug_assert!(false, "admin work is run by run_admin");
                (Done::Admin(Err("admin work on the synchronous path".into())), None)
            }
        };
        Worked { done, seq, fetches }
    }

    /// Finishes work whose answer waits for the log or for reads.
    async fn finish(&self, worked: Worked) -> Done {
        let Worked { mut done, seq, fetches } = worked;
        if let Some(seq) = seq
            && let Err(failed) = self.durable(seq).await
        {
            return Done::One(failed);
        }
        for (i, f) in fetches {
            let reply = self.resolve_fetch(f).await;
            match &mut done {
                Done::One(r) => *r = reply,
                Done::Many(replies) => replies[i] = reply,
                _ => {}
            }
        }
        done
    }

    /// Deletes every key of this core, logging a flush record first; the answer and the log
    /// record it must wait for.
    fn flush_here(&self) -> (Done, Option<u64>) {
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
    fn scan_here(&self, step: &ScanStep, now_ms: u64) -> Done {
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
    async fn admin(&self, work: impl Fn() -> Work, what: &str) -> Reply {
        let tokens = self.forward_to_others(&work).await;
        let mut results = vec![self.run_admin(work()).await];
        for token in tokens {
            results.push(self.answer(token).await);
        }
        let (mut records, mut bytes, mut errors) = (0, 0, Vec::new());
        for done in results {
            match done {
                Done::Admin(Ok((r, b))) => {
                    records += r;
                    bytes += b;
                }
                Done::Admin(Err(e)) => errors.push(e),
                Done::One(Reply::Error(e)) => errors.push(e.message.into_owned()),
                other => errors.push(format!("unexpected answer {}", other.kind())),
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

    async fn admin_backup(&self, dir: String) -> Reply {
        let Some(wal) = &self.store.wal else {
            return Reply::error(
                ErrorCode::BadRequest,
                "--durability none keeps no data to back up",
            );
        };
        let target = match prepare_backup_dir(&dir, wal.dir()) {
            Ok(t) => t,
            Err(e) => return Reply::error(ErrorCode::BadRequest, e),
        };
        self.admin(|| Work::Backup(target.clone()), "backup").await
    }

    pub fn core_stats(&self) -> CoreStats {
        let c = &self.counters;
        let mut stats = CoreStats {
            core: self.index,
            requests: c.requests.get(),
            forwarded_out: c.forwarded_out.get(),
            forwarded_in: c.forwarded_in.get(),
            backpressure_events: c.backpressure_events.get(),
            connections: c.connections.get(),
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
        self.counters.metrics.snapshot(self.core_stats(), fsync, batch)
    }

    /// Every core's metrics, merged (for a scrape).
    /// Every core's stats, in core order (cheap: no histograms, unlike `node_metrics`).
    pub async fn node_stats(&self) -> Result<Vec<CoreStats>, Reply> {
        let tokens = self.forward_to_others(|| Work::Stats).await;
        self.collect_stats(self.core_stats(), tokens).await
    }

    async fn collect_stats(
        &self,
        local: CoreStats,
        tokens: Vec<usize>,
    ) -> Result<Vec<CoreStats>, Reply> {
        let mut cores = Vec::with_capacity(tokens.len() + 1);
        cores.push(local);
        let mut failed = None;
        // Collect every answer, even after a failure, so no token stays in the slab.
        for token in tokens {
            match self.answer(token).await {
                Done::Stats(s) => cores.push(s),
                Done::One(reply) => failed = failed.or(Some(reply)),
                other => failed = failed.or(Some(unexpected(other))),
            }
        }
        if let Some(reply) = failed {
            return Err(reply);
        }
        cores.sort_by_key(|c| c.core);
        Ok(cores)
    }

    pub async fn node_metrics(&self) -> Result<metrics::Snapshot, Reply> {
        let tokens = self.forward_to_others(|| Work::Metrics).await;
        let mut merged = self.metrics_snapshot();
        let mut failed = None;
        for token in tokens {
            match self.answer(token).await {
                Done::Metrics(s) => merged.merge(*s),
                Done::One(reply) => failed = failed.or(Some(reply)),
                other => failed = failed.or(Some(unexpected(other))),
            }
        }
        failed.map_or(Ok(merged), Err)
    }

    /// Sends `work()` to every other core; the tokens their answers will be filed under.
    async fn forward_to_others(&self, work: impl Fn() -> Work) -> Vec<usize> {
        let mut tokens = Vec::with_capacity(usize::from(self.cores) - 1);
        for target in (0..self.cores).filter(|&c| c != self.index) {
            tokens.push(self.forward(target, work()).await);
        }
        tokens
    }

    /// Sends work to `target` and returns the token its answer will be filed under.
    async fn forward(&self, target: u16, work: Work) -> usize {
        let token = self.pending.borrow_mut().insert(Pending::Waiting(None));
        bump(&self.counters.forwarded_out);
        let call = Call { token, work };
        let sent = match self.mesh.try_call(target, call) {
            Ok(()) => Ok(()),
            Err(mesh::SendFailed::Full(call)) => {
                bump(&self.counters.backpressure_events);
                self.mesh.call(target, call).await
            }
            Err(closed) => Err(closed),
        };
        if sent.is_err() {
            let reply = Reply::error(ErrorCode::Unavailable, "core is shutting down");
            self.complete(token, Done::One(reply));
        }
        token
    }

    /// Files an answer from another core and wakes whoever waits for it.
    pub fn complete(&self, token: usize, done: Done) {
        let mut pending = self.pending.borrow_mut();
        let Some(slot) = pending.get_mut(token) else {
            debug_assert!(false, "answer for unknown token {token}");
            return;
        };
        if let Pending::Waiting(waker) = std::mem::replace(slot, Pending::Done(done))
            && let Some(w) = waker
        {
            w.wake();
        }
    }

    fn answer(&self, token: usize) -> AnswerFuture<'_> {
        AnswerFuture { core: self, token }
    }

    /// Waits for a slot's reply. Slots of one connection are resolved in request order.
    pub async fn resolve(&self, slot: Slot) -> Reply {
        match slot {
            Slot::Ready(reply) => reply,
            Slot::Durable(reply, seq) => match self.durable(seq).await {
                Ok(()) => reply,
                Err(failed) => failed,
            },
            Slot::Fetch(f) => self.resolve_fetch(f).await,
            Slot::Remote(token) => match self.answer(token).await {
                Done::One(reply) => reply,
                other => unexpected(other),
            },
            Slot::Batch { mut replies, parts, durable_seq, fetches } => {
                for (i, f) in fetches {
                    replies[i] = Some(self.resolve_fetch(f).await);
                }
                if let Some(seq) = durable_seq
                    && let Err(failed) = self.durable(seq).await
                {
                    // Writes of the local part were not made durable: do not acknowledge them.
                    for r in replies.iter_mut().flatten() {
                        if matches!(r, Reply::Written { .. } | Reply::Deleted { .. }) {
                            *r = failed.clone();
                        }
                    }
                }
                for (token, indices) in parts {
                    match self.answer(token).await {
                        Done::Many(answers) if answers.len() == indices.len() => {
                            for (i, reply) in indices.into_iter().zip(answers) {
                                replies[i] = Some(reply);
                            }
                        }
                        Done::One(reply) => {
                            for i in indices {
                                replies[i] = Some(reply.clone());
                            }
                        }
                        other => {
                            let reply = unexpected(other);
                            for i in indices {
                                replies[i] = Some(reply.clone());
                            }
                        }
                    }
                }
                let replies: Vec<Reply> = replies
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Reply::error(ErrorCode::Internal, "lost reply")))
                    .collect();
                // A batch of reads can ask for far more than one frame may carry (10k gets of
                // a 4 MiB value); refuse it rather than build a reply no client accepts.
                let value_bytes: usize = replies
                    .iter()
                    .map(|r| match r {
                        Reply::Value { value, .. } => value.len(),
                        _ => 0,
                    })
                    .sum();
                if value_bytes > self.limits.frame_bytes_max {
                    return Reply::error(
                        ErrorCode::TooLarge,
                        format!(
                            "batch reply of {value_bytes} value bytes exceeds frame_bytes_max {}; \
                             split the batch",
                            self.limits.frame_bytes_max
                        ),
                    );
                }
                Reply::Batch(replies)
            }
            Slot::Stats { local, tokens } => {
                let cores = match self.collect_stats(local, tokens).await {
                    Ok(cores) => cores,
                    Err(reply) => return reply,
                };
                let uptime_ms = self.node.started.elapsed().as_millis() as u64;
                Reply::Stats(corekv_schema::codec::StatsInfo { uptime_ms, cores })
            }
        }
    }
}

fn unexpected(done: Done) -> Reply {
    // A mismatched answer kind is a bug in this file, not bad input: say so loudly in tests.
    debug_assert!(false, "unexpected answer kind: {}", done.kind());
    Reply::error(ErrorCode::Internal, "internal routing error")
}

struct AnswerFuture<'a> {
    core: &'a Core,
    token: usize,
}

impl Future for AnswerFuture<'_> {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let mut pending = self.core.pending.borrow_mut();
        match pending.get_mut(self.token) {
            Some(Pending::Done(_)) => match pending.remove(self.token) {
                Pending::Done(done) => Poll::Ready(done),
                Pending::Waiting(_) => unreachable!("checked just above"),
            },
            Some(Pending::Waiting(waker)) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(Done::One(Reply::error(ErrorCode::Internal, "answer lost"))),
        }
    }
}

/// Answers held back until their log records are durable, per peer; bounded so a peer that
/// sends faster than the log syncs is slowed down rather than queued without limit.
const DURABLE_ANSWERS_QUEUED_MAX: usize = 1024;

/// Runs on each core for each peer: serves the peer's calls, and files its answers.
pub fn spawn_mesh_tasks(
    core: &Rc<Core>,
    calls: mesh::CallReceivers,
    answers: mesh::AnswerReceivers,
) {
    for (peer, rx) in calls {
        let peer = peer as u16;
        type Held = (usize, Done, u64);
        let (held_tx, held_rx) =
            glommio::channels::local_channel::new_bounded::<Held>(DURABLE_ANSWERS_QUEUED_MAX);
        // Calls that wait for a key's reservation, in arrival order, and how many are there.
        let (lane_tx, lane_rx) = glommio::channels::local_channel::new_unbounded::<Call>();
        let lane_len = Rc::new(Cell::new(0usize));
        let (lane, waiting) = (core.clone(), lane_len.clone());
        glommio::spawn_local(async move {
            while let Some(call) = lane_rx.recv().await {
                let worked = lane.execute_work(call.work).await;
                let done = lane.finish(worked).await;
                waiting.set(waiting.get() - 1);
                if lane.mesh.answer(peer, Answer { token: call.token, done }).await.is_err() {
                    break;
                }
            }
        })
        .detach();
        let serving = core.clone();
        glommio::spawn_local(async move {
            while let Some(call) = rx.recv().await {
                // A peer that always has calls queued must not starve this core.
                glommio::yield_if_needed().await;
                let call = match call.work {
                    Work::Raft(messages) => {
                        if let Some(r) = serving.cluster.as_ref() {
                            r.deliver(messages);
                        }
                        continue;
                    }
                    Work::Cluster(op, consistency, origin) => {
                        // Waits for Raft: beside the loop, answered when done.
                        let core = serving.clone();
                        let token = call.token;
                        glommio::spawn_local(async move {
                            let reply = core.cluster_here(op, consistency, origin).await;
                            let done = Done::One(reply);
                            let _ = core.mesh.answer(peer, Answer { token, done }).await;
                        })
                        .detach();
                        continue;
                    }
                    work => Call { token: call.token, work },
                };
                if matches!(call.work, Work::Checkpoint | Work::Backup(_)) {
                    // Slow: run it beside the loop so this peer's other calls go on.
                    let admin = serving.clone();
                    glommio::spawn_local(async move {
                        let done = admin.run_admin(call.work).await;
                        let _ = admin.mesh.answer(peer, Answer { token: call.token, done }).await;
                    })
                    .detach();
                    continue;
                }
                let keyed = matches!(call.work, Work::One(..) | Work::Many(..) | Work::Reserve(_));
                if keyed && (lane_len.get() > 0 || serving.may_wait_for_reservation(&call.work)) {
                    // Its wait ends with a commit that comes through this very loop, so it
                    // waits in the peer's lane instead; later keyed calls from the peer queue
                    // behind it there, so they still apply in the order the peer sent them.
                    lane_len.set(lane_len.get() + 1);
                    if lane_tx.try_send(call).is_err() {
                        break;
                    }
                    continue;
                }
                let worked = serving.execute_work(call.work).await;
                let token = call.token;
                let sent = match worked {
                    Worked { done, seq: None, fetches } if fetches.is_empty() => {
                        serving.mesh.answer(peer, Answer { token, done }).await.is_ok()
                    }
                    // Answers are matched by token, so later answers may overtake held ones.
                    Worked { done, seq: Some(seq), fetches } if fetches.is_empty() => {
                        held_tx.send((token, done, seq)).await.is_ok()
                    }
                    // Reads from the log run beside the loop, concurrently.
                    worked => {
                        let core = serving.clone();
                        glommio::spawn_local(async move {
                            let done = core.finish(worked).await;
                            let _ = core.mesh.answer(peer, Answer { token, done }).await;
                        })
                        .detach();
                        true
                    }
                };
                if !sent {
                    break;
                }
            }
        })
        .detach();
        let holding = core.clone();
        glommio::spawn_local(async move {
            while let Some((token, done, seq)) = held_rx.recv().await {
                let done = match holding.durable(seq).await {
                    Ok(()) => done,
                    Err(failed) => Done::One(failed),
                };
                if holding.mesh.answer(peer, Answer { token, done }).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    for (_peer, rx) in answers {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(answer) = rx.recv().await {
                core.complete(answer.token, answer.done);
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}
