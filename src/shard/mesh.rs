//! The channel mesh between cores: bounded glommio shared channels, two full meshes.
//!
//! `calls` carries work to the owning core; `answers` carries results back. Both are bounded
//! (`mesh_capacity_messages`): a sender facing a full channel waits, and since the sender is a
//! connection task, waiting means that connection stops reading its socket. Nothing queues
//! without bound. Answers are always consumed at once by a task that waits on nothing else, so
//! a core blocked sending an answer is only ever waiting for a core that is making progress.

use corekv_schema::codec::{CoreStats, Op, Reply};
use glommio::GlommioError;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;

/// Where a request came from, in cluster mode; it decides whether the request may be forwarded
/// to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client that does not route (RESP, HTTP, a native client without the topology), or
    /// this node's own metadata requests: the node forwards it to the partition's leader.
    /// (Clients' keys are checked against the reserved metadata prefix in `dispatch`.)
    Client,
    /// A native client that routed by the topology: a node that does not lead the partition
    /// answers `WrongNode` with the leader it knows and the current map.
    Direct,
    /// Another node forwarded it: answered here or `WrongNode`, never forwarded again.
    Peer,
}

/// What a core asks of another.
/// What a core asks of another. The `bool` says whether the answer must wait until the
/// writes are durable in the target's log.
pub enum Work {
    One(Op, bool),
    /// Part of a batch: the ops of one batch owned by the target, in batch order.
    Many(Vec<Op>, bool),
    Stats,
    /// This core's metrics (for a scrape).
    Metrics,
    /// Delete every key of this core (FLUSHDB), durably.
    Flush,
    /// SCAN this core's keys from a position.
    Scan(ScanStep),
    /// Reserve keys owned by the target if none exists (`reserve.rs`).
    Reserve(Vec<bytes::Bytes>),
    /// End reservations without writing.
    Release(Vec<bytes::Bytes>),
    /// End reservations by applying these sets; the `bool` as in `One`.
    Commit(Vec<corekv_schema::codec::SetOp>, bool),
    /// Cluster mode: run a keyed operation for its partition (on the core that owns it):
    /// consistency, and where it came from (which decides whether it may be forwarded).
    Cluster(Op, corekv_schema::codec::Consistency, Origin),
    /// Cluster mode: where this core's Raft groups stand.
    ClusterStatus,
    /// Cluster mode: Raft messages from a peer for partitions of the target; not answered.
    Raft(Vec<(u32, bytes::Bytes)>),
    /// Admin: checkpoint now.
    Checkpoint,
    /// Admin: checkpoint, then copy this core's checkpoint and log into the directory.
    Backup(std::path::PathBuf),
}

impl Work {
    pub fn kind(&self) -> &'static str {
        match self {
            Work::One(..) => "one",
            Work::Many(..) => "many",
            Work::Stats => "stats",
            Work::Metrics => "metrics",
            Work::Flush => "flush",
            Work::Scan(_) => "scan",
            Work::Reserve(_) => "reserve",
            Work::Release(_) => "release",
            Work::Commit(..) => "commit",
            Work::Cluster(..) => "cluster",
            Work::Raft(_) => "raft",
            Work::ClusterStatus => "cluster_status",
            Work::Checkpoint => "checkpoint",
            Work::Backup(_) => "backup",
        }
    }
}

pub enum Done {
    One(Reply),
    Many(Vec<Reply>),
    Stats(CoreStats),
    Metrics(Box<super::metrics::Snapshot>),
    /// Records and bytes an admin operation wrote on that core, or why it failed.
    Admin(Result<(u64, u64), String>),
    /// Keys found by a scan step, and the position to go on from (`None`: this core is done).
    Scanned(Vec<bytes::Bytes>, Option<u64>),
    /// Whether the keys were reserved (always `false` for a release).
    Reserved(bool),
    /// Cluster mode: this core's groups, and its Raft counters.
    Groups(Vec<crate::cluster::replica::GroupStatus>, crate::cluster::CounterValues),
}

impl Done {
    pub fn kind(&self) -> &'static str {
        match self {
            Done::One(_) => "one",
            Done::Many(_) => "many",
            Done::Stats(_) => "stats",
            Done::Metrics(_) => "metrics",
            Done::Admin(_) => "admin",
            Done::Scanned(..) => "scanned",
            Done::Reserved(_) => "reserved",
            Done::Groups(..) => "groups",
        }
    }
}

/// One core's part of a SCAN call: where to start, how many keys to aim for, and the MATCH
/// pattern they must fit.
#[derive(Clone, Debug)]
pub struct ScanStep {
    pub position: u64,
    pub count: usize,
    pub pattern: Option<std::sync::Arc<crate::resp::glob::Glob>>,
}

pub struct Call {
    /// The id the caller waits for the answer under (`Core::answers`).
    pub token: u64,
    pub work: Work,
}

pub struct Answer {
    pub token: u64,
    pub done: Done,
}

pub type CallReceivers = Vec<(usize, ConnectedReceiver<Call>)>;
pub type AnswerReceivers = Vec<(usize, ConnectedReceiver<Answer>)>;

/// The builders, created once and cloned into every executor before it starts.
#[derive(Clone)]
pub struct MeshBuilders {
    calls: MeshBuilder<Call, glommio::channels::channel_mesh::Full>,
    answers: MeshBuilder<Answer, glommio::channels::channel_mesh::Full>,
}

impl MeshBuilders {
    pub fn new(cores: usize, capacity_messages: usize) -> MeshBuilders {
        MeshBuilders {
            calls: MeshBuilder::full(cores, capacity_messages),
            answers: MeshBuilder::full(cores, capacity_messages),
        }
    }

    /// Joins both meshes. Peer ids are ordered by executor id in both, so they agree; the
    /// returned index is this core's placement index.
    pub async fn join(self) -> std::io::Result<(usize, Mesh, CallReceivers, AnswerReceivers)> {
        let fail = |what| std::io::Error::other(format!("joining the {what} mesh failed"));
        let (call_tx, mut call_rx): (Senders<Call>, Receivers<Call>) =
            self.calls.join().await.map_err(|_| fail("call"))?;
        let (answer_tx, mut answer_rx): (Senders<Answer>, Receivers<Answer>) =
            self.answers.join().await.map_err(|_| fail("answer"))?;
        let index = call_tx.peer_id();
        if answer_tx.peer_id() != index {
            return Err(std::io::Error::other("call and answer meshes disagree on peer ids"));
        }
        let calls = call_rx.streams();
        let answers = answer_rx.streams();
        Ok((index, Mesh { calls: call_tx, answers: answer_tx }, calls, answers))
    }
}

pub enum SendFailed<T> {
    Full(T),
    Closed,
}

pub struct Mesh {
    calls: Senders<Call>,
    answers: Senders<Answer>,
}

impl Mesh {
    #[expect(
        clippy::result_large_err,
        reason = "a full channel hands the call back for an awaited send; boxing it would \
                  allocate on exactly the path that is already under pressure"
    )]
    pub fn try_call(&self, target: u16, call: Call) -> Result<(), SendFailed<Call>> {
        match self.calls.try_send_to(usize::from(target), call) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(glommio::ResourceType::Channel(call))) => {
                Err(SendFailed::Full(call))
            }
            Err(_) => Err(SendFailed::Closed),
        }
    }

    pub async fn call(&self, target: u16, call: Call) -> Result<(), SendFailed<Call>> {
        self.calls.send_to(usize::from(target), call).await.map_err(|_| SendFailed::Closed)
    }

    pub async fn answer(&self, target: u16, answer: Answer) -> Result<(), SendFailed<Answer>> {
        self.answers.send_to(usize::from(target), answer).await.map_err(|_| SendFailed::Closed)
    }
}
