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
mod fanout;
pub mod membership;
pub mod mesh;
pub mod metrics;
mod reserve;
mod rpc;
mod serve;
pub mod status;
pub mod topology;
pub mod users;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::Instant;

use corekv_schema::codec::{
    Consistency, CoreStats, Durability, ErrorCode, Op, Reply, TopologyInfo,
};
use corekv_schema::frame::Limits;
use corekv_schema::placement;

use bytes::Bytes;

use crate::cluster::replica::{Replicas, Submitted};
use crate::counters::{bump, counters};
use crate::storage::checkpoint;
pub use crate::storage::store::{Answered, FetchIo};
use crate::storage::store::{CheckpointExtra, Store};
use crate::waiting::Waits;
pub use mesh::{Answer, Call, Done, Mesh, Origin, ScanStep, Work};
pub use serve::spawn_mesh_tasks;

/// Keeps the connection gauges (this core's, and the node's against `--max-connections`)
/// right on every exit path.
pub struct ConnectionGauge(Rc<Core>);

impl ConnectionGauge {
    /// Counts a new client connection; `None` when the node holds `--max-connections`
    /// already (the caller refuses it in its protocol's words, and closes).
    pub fn new(core: Rc<Core>) -> Option<ConnectionGauge> {
        let node = &core.node;
        if node.clients.fetch_add(1, Ordering::AcqRel) >= node.max_connections {
            node.clients.fetch_sub(1, Ordering::AcqRel);
            node.clients_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let c = &core.counters.connections;
        c.set(c.get() + 1);
        Some(ConnectionGauge(core))
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        let c = &self.0.counters.connections;
        c.set(c.get() - 1);
        self.0.node.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

counters!(
    /// Per-core request counters: plain cells, summed over cores only when someone asks.
    Counters => Counts {
        requests,
        forwarded_out,
        forwarded_in,
        backpressure_events,
        /// Open client connections (a gauge: it goes down too).
        connections,
    }
);

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
    /// Cluster mode: the members and the membership operation, as last read.
    pub view: crate::cluster::plan::View,
    /// Users and permissions (`auth`): from the data directory, or in a cluster from the
    /// metadata group.
    pub users: crate::auth::Registry,
    /// `--backup-dir`: backups go only under it (`None`: backups are refused).
    pub backup_dir: Option<std::path::PathBuf>,
    /// `--http-allowed-hosts`: host names the HTTP API answers to besides IP addresses and
    /// localhost.
    pub http_allowed_hosts: Vec<String>,
    /// Client connections open on the node (every core's, every protocol's), at most
    /// `max_connections`; touched once per connection, never per request.
    pub clients: std::sync::atomic::AtomicU64,
    pub max_connections: u64,
    /// Connections refused for `max_connections`.
    pub clients_refused: std::sync::atomic::AtomicU64,
}

pub struct Core {
    pub index: u16,
    pub cores: u16,
    pub partitions: u32,
    pub limits: Limits,
    pub counters: Counters,
    /// Request latencies and sizes, per protocol and operation.
    pub metrics: metrics::Metrics,
    pub node: Arc<NodeInfo>,
    /// This core's data: engine, log, checkpoints, compaction (shared with its Raft driver).
    pub store: Rc<Store>,
    mesh: Mesh,
    /// Answers this core waits for from other cores (and from its own cluster tasks).
    answers: Rc<Waits<Done>>,
    /// Keys held by a write spanning cores (`reserve.rs`); operations on them wait.
    held: RefCell<std::collections::HashMap<Bytes, Held>>,
    next_ticket: Cell<u64>,
    /// Cluster mode: this core's Raft groups and links (`cluster::replica`).
    pub cluster: Option<Rc<Replicas>>,
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
    Remote(Token),
    /// A cluster request waiting in this core's Raft driver (`clustered.rs`).
    Led(Box<Led>),
    /// `durable_seq`: the last log record of the local part to wait for; `fetches`: local
    /// reads whose values are read from the log.
    Batch {
        replies: Vec<Option<Reply>>,
        parts: Vec<(Token, Vec<usize>)>,
        durable_seq: Option<u64>,
        fetches: Vec<(usize, FetchIo)>,
    },
    Stats {
        local: CoreStats,
        tokens: Vec<Token>,
    },
}

/// The id an answer from another core (or from a task of this one) comes under, in
/// `Core::answers`. Dropped unanswered (its connection went away), it is forgotten, so the
/// answer is not kept for nobody.
pub struct Token {
    id: u64,
    answers: Rc<Waits<Done>>,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.answers.cancel(self.id);
    }
}

/// A cluster request queued in this core's Raft driver (`clustered.rs`), kept for its reply.
pub struct Led {
    op: Op,
    consistency: Consistency,
    origin: Origin,
    partition: u32,
    /// When the wait gives up: its submission plus the proposal timeout, so waits that are
    /// resolved one after another do not add up.
    deadline: Instant,
    wait: LedWait,
}

/// The id a led request waits under; dropped unanswered (its connection went away), it is
/// forgotten, so its answer is not kept for nobody.
struct LedWait {
    submitted: Submitted,
    replicas: Rc<Replicas>,
}

impl Drop for LedWait {
    fn drop(&mut self) {
        self.replicas.forget(self.submitted);
    }
}

impl Core {
    pub fn new(
        index: u16,
        cores: u16,
        node: Arc<NodeInfo>,
        store: Rc<Store>,
        mesh: Mesh,
        cluster: Option<Rc<Replicas>>,
        this: Weak<Core>,
    ) -> Core {
        Core {
            index,
            cores,
            partitions: node.partitions,
            limits: node.limits,
            counters: Counters::default(),
            metrics: metrics::Metrics::default(),
            node,
            store,
            mesh,
            answers: Rc::new(Waits::default()),
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
    /// which is the back-pressure that stops the calling connection from reading, and, in a
    /// cluster, for a whole batch: a barrier, so the connection's later requests apply after it.
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
            return self.cluster_slot(op, consistency, origin).await;
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

    /// Waits for a slot's reply. Slots of one connection are resolved in request order.
    pub async fn resolve(&self, slot: Slot) -> Reply {
        match slot {
            Slot::Ready(reply) => reply,
            Slot::Durable(reply, seq) => match self.durable(seq).await {
                Ok(()) => reply,
                Err(failed) => failed,
            },
            Slot::Fetch(f) => self.resolve_fetch(f).await,
            Slot::Led(led) => self.resolve_led(*led).await,
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
