//! One core's share of the cluster: the Raft groups of the partitions this core owns on this
//! node, and the task that drives them ([`run`]).
//!
//! Everything raft-rs touches is owned by that one task. Requests reach it through queues
//! (proposals, read-index asks, incoming messages) and a wake-up; answers go back through
//! [`Waits`]. One round of the driver:
//! 1. step incoming messages, start proposals and ReadIndex asks, tick on the Raft clock;
//! 2. take every group's Ready: send what a leader may send at once, append entries and hard
//!    states to the core's WAL (no wait), apply committed entries to the engine, in order,
//!    with the Raft index as the version and the leader's stamp as the time;
//! 3. wait once for the WAL (one fdatasync for every group of the core), then send the
//!    messages that promise durability and tell each group its round is persisted;
//! 4. answer reads whose read index has been applied.
//!
//! A proposal is answered when its entry is applied: with the engine's reply if the entry at
//! its index is the one it proposed, with a retryable error if a new leader put another entry
//! there (the write did not happen), and with an "outcome unknown" error if nothing is applied
//! there within [`PROPOSAL_TIMEOUT`].
//!
//! Membership: a change (raft-rs `ConfChangeV2`, proposed by `moves`' steps) takes effect
//! when applied; it is logged with the round (`store`), a joint membership is left by the
//! leader's next proposal, and a replica removed from its group records a tombstone and
//! deletes its keys. A group is made on this node when a leader talks to it about a
//! partition it was just added to (as a new replica id, `group::replica_id`); a message from
//! a removed replica is answered with a tombstone, and a replica that hears no leader for long
//! asks the members it knows. Tombstones and probes travel as raft-rs message types raft-rs
//! never sends over a network.
//!
//! Snapshots: a follower too far behind the retained log gets the partition's keys as of the
//! leader's applied index. The driver builds it between rounds (so no apply interleaves;
//! values on disk are read back) and installs one the same way: tombstones for keys the
//! snapshot lacks, puts for the rest, then the snapshot point, in that order in the log.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_schema::codec::{ErrorCode, Reply, WireError};
use corekv_schema::placement;
use futures_lite::future;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, EntryType, Message, MessageType};

use super::command::{self, Command};
use super::group::{self, Driven, Group, GroupStore as _, Stepped, incarnation, node_of};
use super::meta;
use super::store::{self, Recovered, WalStore, members};
use super::transport::Links;
use super::{CounterValues, RaftCounters};
use crate::config::ClusterConfig;
use crate::counters::{bump, bump_by};
use crate::storage::record;
use crate::storage::store::{CheckpointExtra, Store};
use crate::time::now_ms;
use crate::waiting::{Waits, Wake};
use corekv_schema::frame::Limits;

/// When an expired key this core cannot propose the removal of now is looked at again.
const EXPIRY_RETRY_MS: u64 = 1_000;
/// How long a proposal may wait for its entry to be applied.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A driver round longer than this is logged with where its time went: every partition of
/// the core waits for it.
const SLOW_ROUND: Duration = Duration::from_millis(50);
/// Peers' Raft messages a core holds for its next round, at most.
const INBOX_MESSAGES_MAX: usize = 32 * 1024;
/// Encoded bytes of those messages, at most (one larger message alone is taken).
const INBOX_BYTES_MAX: usize = 256 << 20;

/// What a request queued in the driver waits for: its proposal's reply, or its read ask's
/// go-ahead, under this id.
#[derive(Clone, Copy, Debug)]
pub enum Submitted {
    Proposal(u64),
    Read(u64),
}

/// A proposal in the log, waiting for its index to be applied: (its term, wait, proposed at).
/// In Raft an (index, term) pair names one entry, so the entry applied at that index is this
/// proposal exactly when its term is this one.
type Proposed = (u64, u64, Instant);

struct Proposal {
    partition: u32,
    what: Proposing,
    wait: u64,
}

/// What a proposal puts in the log.
enum Proposing {
    Command(Vec<u8>),
    Membership(ConfChangeV2),
}

/// Where things stand in one group, for the status APIs.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    pub partition: u32,
    /// The voters (while joint, the incoming ones).
    pub replicas: Vec<u64>,
    /// The membership as applied here, every role.
    pub conf: ConfState,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// When this node leads: each follower's matched index.
    pub matched: Vec<(u64, u64)>,
}

pub struct Replicas {
    pub node: u64,
    pub core: u16,
    /// Data partitions of the cluster (the metadata group is partition `partitions`).
    pub partitions: u32,
    limits: Limits,
    /// This core's data, which the groups' committed entries are applied to.
    store: Rc<Store>,
    pub config: ClusterConfig,
    /// Replicas of every partition, preferred leader first, then (at index `partitions`) the
    /// metadata group's: every node. The ring's at first; the recorded map once read.
    map: RefCell<Vec<Vec<u64>>>,
    /// For partitions this node holds no replica of: the leader it last heard of (0: none).
    remote_leaders: RefCell<HashMap<u32, u64>>,
    /// Called when this node's replica of the metadata group is removed: the node was
    /// removed from the cluster.
    retired: RefCell<Option<Box<dyn Fn()>>>,
    groups: RefCell<BTreeMap<u32, Group<WalStore>>>,
    /// Partitions of this core this node's replica was removed from: (index of the removal,
    /// the replica's id). No group is made for them again but for a newer replica id (this
    /// node added back).
    tombstones: RefCell<BTreeMap<u32, (u64, u64)>>,
    /// Groups to take down after this round: (partition, index of the removal).
    leaving: RefCell<Vec<(u32, u64)>>,
    /// Leadership transfers asked for: (partition, to).
    transfers: RefCell<Vec<(u32, u64)>>,
    /// Fixed election timeout, for groups made later (simulation only).
    election_tick: Option<usize>,
    applied: RefCell<HashMap<u32, u64>>,
    /// Peers' messages for the next round, and their encoded bytes: both bounded
    /// ([`INBOX_MESSAGES_MAX`], [`INBOX_BYTES_MAX`]); beyond, messages are dropped.
    inbox: RefCell<Vec<(u32, Message)>>,
    inbox_bytes: Cell<usize>,
    proposals: RefCell<Vec<Proposal>>,
    read_asks: RefCell<Vec<(u32, u64)>>,
    /// Proposed entries by (partition, index): (term, wait, proposed at).
    proposed: RefCell<HashMap<(u32, u64), Proposed>>,
    /// ReadIndex requests in flight by context: the partition and who waits.
    read_batches: RefCell<HashMap<u64, (u32, Vec<u64>)>>,
    /// Reads whose index is known, waiting for it to be applied.
    read_waits: RefCell<Vec<(u32, u64, u64)>>,
    next_context: Cell<u64>,
    /// Applied entries kept in memory for followers (fewer in the simulation, so that
    /// followers there fall behind far enough to need snapshots).
    entries_retained: Cell<u64>,
    /// Snapshots being built, and those built since the last round (see `build_snapshots`).
    snapshots_building: RefCell<std::collections::BTreeSet<u32>>,
    snapshots_built: Rc<RefCell<Vec<Built>>>,
    /// Build snapshots, and delete a removed replica's keys, within the round (the
    /// simulation: a seed must replay the same).
    snapshots_inline: Cell<bool>,
    /// Partitions whose removed replica's keys are being deleted (see `take_down_removed`):
    /// no new replica of them is made until that is done.
    clearing: Rc<RefCell<std::collections::BTreeSet<u32>>>,
    /// Removed replicas whose keys are still to be deleted: from a restart, when a crash came
    /// between a tombstone and its deletes being durable.
    to_clear: RefCell<Vec<(u32, u64)>>,
    /// Who waits for a proposal's reply (shared with the links, for forwards).
    pub waits: Rc<Waits<Reply>>,
    /// Who waits for a read barrier: go ahead, or the reason not to.
    reads: Waits<Result<(), Reply>>,
    wake: Wake,
    pub links: Links,
    /// Shared with the links, which count the frames they drop.
    pub counters: Rc<RaftCounters>,
    /// Set once the driver stops (the WAL failed): nothing more is proposed.
    failed: RefCell<Option<String>>,
}

impl Replicas {
    /// This core's groups, restored from what recovery found in its log.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &ClusterConfig,
        partitions: u32,
        core: u16,
        cores: u16,
        recovered: HashMap<u32, Recovered>,
        data: Rc<Store>,
        limits: Limits,
        tls: Option<Rc<crate::tls::Reloading<rustls::ClientConfig>>>,
    ) -> Result<Replicas, String> {
        let (node, nodes) = (config.node, config.nodes.clone());
        let who = super::transport::Credentials { cluster_id: config.cluster_id, tls };
        let links = move |waits, counters| Links::start(node, &nodes, who, waits, counters);
        Replicas::with_links(config, partitions, core, cores, recovered, data, limits, links, None)
    }

    /// [`Replicas::new`] over the links `links` makes (the simulation's have no sockets), and,
    /// when `election_tick` is given, that fixed election timeout instead of raft-rs's random
    /// one (its RNG cannot be seeded; the simulation draws the timeout from its seed).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn with_links(
        config: &ClusterConfig,
        partitions: u32,
        core: u16,
        cores: u16,
        mut recovered: HashMap<u32, Recovered>,
        data: Rc<Store>,
        limits: Limits,
        links: impl FnOnce(Rc<Waits<Reply>>, Rc<RaftCounters>) -> Links,
        election_tick: Option<usize>,
    ) -> Result<Replicas, String> {
        let wal = data.wal.clone();
        // The ring's map over the founders, the metadata group (every node) last.
        let founders = super::meta::replicas(&config.nodes);
        let map = super::plan::target_map(&founders, partitions, config.replication_factor);
        let mut groups = BTreeMap::new();
        let mut applied = HashMap::new();
        let mut tombstones = BTreeMap::new();
        for (p, replicas) in map.iter().enumerate() {
            let p = p as u32;
            if placement::core_of_partition(p, cores) != core {
                continue;
            }
            let state = recovered.remove(&p).unwrap_or_default();
            if let Some(tombstone) = state.tombstone {
                tombstones.insert(p, tombstone);
                continue;
            }
            // A group this node holds by its log, whatever the ring says: membership moves.
            // A node that joins later starts with none and is sent each one it is added to.
            let bootstrap = config.bootstrap && replicas.contains(&config.node);
            if !state.initialized() && !bootstrap {
                continue;
            }
            let fresh = !state.initialized();
            let voters = if bootstrap { replicas.clone() } else { Vec::new() };
            let (mut g, done) =
                new_group(config.node, None, p, voters, state, wal.clone(), election_tick)?;
            if fresh {
                // Logged, so a restart finds the group where it began.
                g.store_mut().record_point().map_err(|e| format!("partition {p}: {e}"))?;
            }
            applied.insert(p, done);
            groups.insert(p, g);
        }
        let to_clear: Vec<(u32, u64)> =
            tombstones.iter().map(|(&p, &(index, _))| (p, index)).collect();
        // Marked now, not when the deletes start: a leader's message in the first round must
        // not make a replica whose keys they would then delete.
        let clearing = to_clear.iter().map(|&(p, _)| p).collect();
        let waits = Rc::new(Waits::default());
        let counters = Rc::new(RaftCounters::default());
        let links = links(waits.clone(), counters.clone());
        Ok(Replicas {
            node: config.node,
            core,
            partitions,
            limits,
            store: data,
            config: config.clone(),
            map: RefCell::new(map),
            remote_leaders: RefCell::new(HashMap::new()),
            retired: RefCell::new(None),
            groups: RefCell::new(groups),
            tombstones: RefCell::new(tombstones),
            leaving: RefCell::new(Vec::new()),
            transfers: RefCell::new(Vec::new()),
            election_tick,
            applied: RefCell::new(applied),
            inbox: RefCell::new(Vec::new()),
            inbox_bytes: Cell::new(0),
            proposals: RefCell::new(Vec::new()),
            read_asks: RefCell::new(Vec::new()),
            proposed: RefCell::new(HashMap::new()),
            read_batches: RefCell::new(HashMap::new()),
            read_waits: RefCell::new(Vec::new()),
            next_context: Cell::new(1),
            entries_retained: Cell::new(store::ENTRIES_RETAINED),
            snapshots_building: RefCell::new(Default::default()),
            snapshots_built: Rc::new(RefCell::new(Vec::new())),
            snapshots_inline: Cell::new(false),
            clearing: Rc::new(RefCell::new(clearing)),
            to_clear: RefCell::new(to_clear),
            waits,
            reads: Waits::default(),
            wake: Wake::default(),
            links,
            counters,
            failed: RefCell::new(None),
        })
    }

    /// The leader of `partition` last heard of, for one this node holds no replica of.
    pub fn remote_leader(&self, partition: u32) -> u64 {
        self.remote_leaders.borrow().get(&partition).copied().unwrap_or(0)
    }

    /// Remembers `leader` (0: forget) for a partition this node holds no replica of.
    pub fn note_remote_leader(&self, partition: u32, leader: u64) {
        self.remote_leaders.borrow_mut().insert(partition, leader);
    }

    /// The replicas of `partition` as the map says, preferred leader first.
    pub fn replicas_of(&self, partition: u32) -> Vec<u64> {
        self.map.borrow().get(partition as usize).cloned().unwrap_or_default()
    }

    /// The map of the data partitions.
    pub fn map(&self) -> Vec<Vec<u64>> {
        self.map.borrow()[..self.partitions as usize].to_vec()
    }

    /// Follows the recorded map (data partitions) and the metadata group's members.
    pub fn set_map(&self, data: &[Vec<u64>], members: Vec<u64>) {
        if data.len() != self.partitions as usize {
            return;
        }
        let mut map = data.to_vec();
        map.push(members);
        *self.map.borrow_mut() = map;
    }

    /// What to do when this node is removed from the cluster (see `retired`): done at once
    /// if this core's log already says so.
    pub fn on_retired(&self, retire: Box<dyn Fn()>) {
        if self.tombstones.borrow().contains_key(&self.partitions) {
            retire();
        }
        *self.retired.borrow_mut() = Some(retire);
    }

    pub fn has_group(&self, partition: u32) -> bool {
        self.groups.borrow().contains_key(&partition)
    }

    /// (is this node the leader, the leader it knows of: 0 for none).
    pub fn leadership(&self, partition: u32) -> (bool, u64) {
        match self.groups.borrow().get(&partition) {
            Some(g) => (g.is_leader(), g.leader().1),
            None => (false, 0),
        }
    }

    pub fn counter_values(&self) -> CounterValues {
        self.counters.values()
    }

    /// Whether this core's link to `peer` is connected.
    pub fn link_up(&self, peer: u64) -> bool {
        self.links.is_up(peer)
    }

    pub fn partitions_led(&self) -> Vec<u32> {
        self.groups.borrow().iter().filter(|(_, g)| g.is_leader()).map(|(p, _)| *p).collect()
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        let groups = self.groups.borrow();
        let applied = self.applied.borrow();
        groups
            .iter()
            .map(|(p, g)| {
                let status = g.status();
                let matched = status
                    .progress
                    .map(|pr| {
                        let mut m: Vec<(u64, u64)> =
                            pr.iter().map(|(id, p)| (node_of(*id), p.matched)).collect();
                        m.sort_unstable();
                        m
                    })
                    .unwrap_or_default();
                let (term, leader) = g.leader();
                let conf = g.store().conf_state();
                GroupStatus {
                    partition: *p,
                    replicas: conf.voters.iter().map(|v| node_of(*v)).collect(),
                    conf,
                    leader,
                    term,
                    commit: g.commit_index(),
                    applied: applied.get(p).copied().unwrap_or(0),
                    matched,
                }
            })
            .collect()
    }

    /// Raft messages from a peer for partitions of this core.
    pub fn deliver(&self, messages: impl IntoIterator<Item = (u32, Bytes)>) {
        let mut inbox = self.inbox.borrow_mut();
        for (p, bytes) in messages {
            let held = self.inbox_bytes.get();
            // A message alone (a large snapshot) always fits.
            let full = held > 0 && held + bytes.len() > INBOX_BYTES_MAX;
            if inbox.len() >= INBOX_MESSAGES_MAX || full {
                // A driver that fell this far behind catches up sooner without them: Raft
                // sends again what is still needed.
                bump(&self.counters.inbox_dropped);
                continue;
            }
            match Message::parse_from_bytes(&bytes) {
                Ok(m) => {
                    self.inbox_bytes.set(held + bytes.len());
                    inbox.push((p, m));
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "undecodable raft message"),
            }
        }
        drop(inbox);
        self.wake.notify();
    }

    /// Proposes `op` (this node should lead the partition) and waits until it is applied.
    pub async fn propose(&self, partition: u32, op: &corekv_schema::codec::Op) -> Reply {
        self.propose_entry(partition, command::encode(now_ms(), op)).await
    }

    /// The cluster's active expiry, on this core: the keys expired at `now` (up to `budget`),
    /// by partition, for the partitions this core leads, to propose the removal of. The
    /// others are looked at again later (their leader removes them, or this core does once
    /// it leads).
    pub fn due_removals(&self, now: u64, budget: usize) -> Vec<(u32, Vec<(Bytes, u64)>)> {
        let due = self.store.engine.borrow_mut().due_expiries(now, budget);
        let mut by_partition: BTreeMap<u32, Vec<(Bytes, u64)>> = BTreeMap::new();
        for (key, version) in due {
            let p = meta::partition_of(&key, self.partitions);
            by_partition.entry(p).or_default().push((key, version));
        }
        let mut led = Vec::new();
        for (partition, keys) in by_partition {
            if self.leadership(partition).0 {
                led.push((partition, keys));
            } else {
                self.expire_later(keys, now);
            }
        }
        led
    }

    /// Hands `keys` back to the sweep, due again a while after `now`.
    pub fn expire_later(&self, keys: Vec<(Bytes, u64)>, now: u64) {
        let mut engine = self.store.engine.borrow_mut();
        for (key, _) in keys {
            engine.expire_later(key, now + EXPIRY_RETRY_MS);
        }
    }

    /// Proposes removing `keys` (expired by this leader's clock, at these versions).
    pub async fn propose_expiry(&self, partition: u32, keys: &[(Bytes, u64)]) -> Reply {
        self.propose_entry(partition, command::encode_expiry(now_ms(), keys)).await
    }

    #[cfg(test)]
    /// Shorter memory for the simulation: `retained` applied entries kept for followers, and
    /// `stall_ticks` before an unacknowledged snapshot is sent again.
    pub(super) fn shorten_for_simulation(&self, retained: u64, stall_ticks: u32) {
        self.entries_retained.set(retained);
        self.snapshots_inline.set(true);
        for g in self.groups.borrow_mut().values_mut() {
            g.snapshot_stall_ticks = stall_ticks;
        }
    }

    #[cfg(test)]
    /// The reply to proposal `id`, if it has come (the simulation polls).
    pub(super) fn take_reply(&self, id: u64) -> Option<Reply> {
        self.waits.try_take(id)
    }

    #[cfg(test)]
    /// The go-ahead (or refusal) for read ask `id`, if it has come.
    pub(super) fn take_read(&self, partition: u32, id: u64) -> Option<Result<(), Reply>> {
        self.reads.try_take(id).map(|answer| self.still_held(partition, answer))
    }

    /// A read's go-ahead stands only while this node still holds the partition: the group
    /// may have been removed from here, and its keys deleted, after the go-ahead was given.
    /// Checked with nothing awaited between it and the read, which therefore sees the keys.
    fn still_held(&self, partition: u32, answer: Result<(), Reply>) -> Result<(), Reply> {
        match answer {
            Ok(()) if !self.has_group(partition) => Err(wrong_node(partition, 0)),
            other => other,
        }
    }

    #[cfg(test)]
    /// The term of entry `index` of `partition` in this replica's log, while it holds it.
    pub(super) fn term_of(&self, partition: u32, index: u64) -> Option<u64> {
        self.groups.borrow().get(&partition)?.store().term_of(index)
    }

    #[cfg(test)]
    /// The first index `partition`'s log still holds (entries before it are compacted away).
    pub(super) fn first_index(&self, partition: u32) -> u64 {
        self.groups.borrow().get(&partition).map_or(0, |g| g.store().first_index_now())
    }

    /// Queues a proposal for the driver's next round: the id its reply comes under.
    pub(super) fn submit(&self, partition: u32, data: Vec<u8>) -> u64 {
        let wait = self.waits.open();
        let what = Proposing::Command(data);
        self.proposals.borrow_mut().push(Proposal { partition, what, wait });
        self.wake.notify();
        bump(&self.counters.proposals);
        wait
    }

    /// Queues a membership change of `partition` for the driver's next round: the id its
    /// answer comes under (`Written` with the index it took effect at, once applied here).
    pub fn submit_membership(&self, partition: u32, change: ConfChangeV2) -> u64 {
        let wait = self.waits.open();
        let what = Proposing::Membership(change);
        self.proposals.borrow_mut().push(Proposal { partition, what, wait });
        self.wake.notify();
        wait
    }

    /// Asks this core's leader of `partition` to hand leadership to node `to` next round.
    pub fn transfer_leader(&self, partition: u32, to: u64) {
        self.transfers.borrow_mut().push((partition, to));
        self.wake.notify();
    }

    /// How a partition this node leads stands for a membership move: its applied membership,
    /// whether a change is pending or the group is joint, and each member's matched index
    /// and whether it is replicating normally. `None` unless this node leads it.
    pub fn move_view(&self, partition: u32) -> Option<MoveView> {
        let groups = self.groups.borrow();
        let g = groups.get(&partition).filter(|g| g.is_leader())?;
        let conf = g.conf_state();
        let progress = members(&conf)
            .into_iter()
            .filter_map(|n| g.progress_of(n).map(|(matched, ok)| (n, matched, ok)))
            .collect();
        Some(MoveView {
            removed: g.store().removed().iter().map(|(id, _)| *id).collect(),
            conf,
            pending: g.has_pending_conf(),
            joint: g.is_joint(),
            last_index: g.last_index(),
            progress,
        })
    }

    /// Queues a ReadIndex ask for the driver's next round: the id its go-ahead comes under.
    pub fn submit_read(&self, partition: u32) -> u64 {
        let wait = self.reads.open();
        self.read_asks.borrow_mut().push((partition, wait));
        self.wake.notify();
        bump(&self.counters.read_indexes);
        wait
    }

    async fn propose_entry(&self, partition: u32, data: Vec<u8>) -> Reply {
        match self.try_submit(partition, data) {
            Ok(id) => self.proposal_reply(partition, id, Instant::now() + PROPOSAL_TIMEOUT).await,
            Err(refused) => refused,
        }
    }

    /// Forgets a submitted proposal or read ask nobody will wait for any more (its answer,
    /// when it comes, is dropped instead of kept).
    pub fn forget(&self, submitted: Submitted) {
        match submitted {
            Submitted::Proposal(id) => self.waits.cancel(id),
            Submitted::Read(id) => self.reads.cancel(id),
        }
    }

    /// Queues a proposal unless the driver has stopped: the id its reply comes under.
    pub fn try_submit(&self, partition: u32, data: Vec<u8>) -> Result<u64, Reply> {
        if let Some(e) = self.failed.borrow().clone() {
            return Err(Reply::error(ErrorCode::Unavailable, e));
        }
        Ok(self.submit(partition, data))
    }

    /// The reply to proposal `id`: the engine's once its entry is applied, or "outcome
    /// unknown" when nothing is applied at its index by `deadline` (its submission plus
    /// [`PROPOSAL_TIMEOUT`]).
    pub async fn proposal_reply(&self, partition: u32, id: u64, deadline: Instant) -> Reply {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.waits.wait(id, left).await {
            Some(reply) => reply,
            None => {
                bump(&self.counters.proposals_failed);
                Reply::error(
                    ErrorCode::OutcomeUnknown,
                    format!(
                        "partition {partition}: not committed within {}s; the write may or may \
                         not have been applied",
                        PROPOSAL_TIMEOUT.as_secs()
                    ),
                )
            }
        }
    }

    /// ReadIndex: returns once this replica has applied everything committed when the read
    /// arrived (confirmed by a quorum of heartbeats), so a read after it is linearizable.
    pub async fn read_barrier(&self, partition: u32) -> Result<(), Reply> {
        let id = self.submit_read(partition);
        self.read_ready(partition, id, Instant::now() + PROPOSAL_TIMEOUT).await
    }

    /// Waits until `deadline` for read ask `id` to be cleared: go ahead, or the reason not to.
    pub async fn read_ready(
        &self,
        partition: u32,
        id: u64,
        deadline: Instant,
    ) -> Result<(), Reply> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.reads.wait(id, left).await {
            Some(answer) => self.still_held(partition, answer),
            None => Err(Reply::error(
                ErrorCode::Unavailable,
                format!(
                    "partition {partition}: no read index within {}s",
                    PROPOSAL_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

/// A snapshot's data read back: (partition, index, membership and removed replicas then, the
/// keys or why not).
type Built = (u32, u64, ConfState, Vec<(u64, u64)>, Result<Bytes, String>);

/// What a leader knows of its group for a membership move; see [`Replicas::move_view`].
/// Members are replica ids (see `group::replica_id`).
#[derive(Clone, Debug)]
pub struct MoveView {
    pub conf: ConfState,
    pub pending: bool,
    pub joint: bool,
    pub last_index: u64,
    /// (member, matched index, not waiting for a snapshot).
    pub progress: Vec<(u64, u64, bool)>,
    /// Replicas removed from the group before.
    pub removed: Vec<u64>,
}

/// A group of `partition` for this node, from what recovery found (`state`), with `voters` as
/// its membership when the log records none: the applied index it starts from, too.
/// Its replica id is `id` when a leader named it, else this node's id in the membership (the
/// newest, should the log name two), else the founding one.
fn new_group(
    node: u64,
    id: Option<u64>,
    partition: u32,
    voters: Vec<u64>,
    state: Recovered,
    wal: Option<Rc<crate::storage::wal::Wal>>,
    election_tick: Option<usize>,
) -> Result<(Group<WalStore>, u64), String> {
    let applied = state.applied;
    let store = WalStore::new(partition, voters, state, wal);
    let done = applied.max(store.first_index_now() - 1);
    let mine = members(&store.conf_state()).into_iter().filter(|m| node_of(*m) == node).max();
    let id = id.or(mine).unwrap_or(node);
    let mut raft_config = group::config(id);
    if let Some(ticks) = election_tick {
        raft_config.min_election_tick = ticks;
        raft_config.max_election_tick = ticks + 1;
    }
    raft_config.applied = done.min(store.last_index_now());
    let g = Group::new(partition, &raft_config, store)
        .map_err(|e| format!("partition {partition}: raft: {e}"))?;
    Ok((g, raft_config.applied))
}

/// A tombstone notice: a raft-rs message of a type raft-rs only ever makes for itself
/// (`MsgUnreachable`), so it can never be mistaken for one of raft-rs's. It tells `to` it was
/// removed from the group at `index`. The probe a silent replica sends is another such type
/// (`MsgCheckQuorum`).
fn tombstone_message(from: u64, to: u64, index: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgUnreachable);
    m.from = from;
    m.to = to;
    m.index = index;
    m
}

/// Raft messages that only a leader sends: the ones that may make a group for a partition
/// this node was just added to.
fn from_a_leader(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot
    )
}

/// The `WrongNode` error this node gives for a partition it does not lead.
pub fn wrong_node(partition: u32, leader: u64) -> Reply {
    Reply::Error(wrong_node_error(partition, leader))
}

/// [`wrong_node`] before it is a reply, for callers that attach the map.
pub fn wrong_node_error(partition: u32, leader: u64) -> WireError {
    let text = if leader == 0 {
        format!("partition {partition}: no leader known here")
    } else {
        format!("partition {partition} is led by node {leader}")
    };
    WireError { leader, ..WireError::new(ErrorCode::WrongNode, text) }
}

/// The driver task of one core's groups; see the module doc.
pub async fn run(r: Rc<Replicas>) {
    let r = &*r;
    let tick = Duration::from_millis(r.config.raft_tick_ms);
    let mut next_tick = Instant::now() + tick;
    loop {
        let busy = r.groups.borrow().values().any(|g| g.has_ready());
        if !busy {
            let until = next_tick.saturating_duration_since(Instant::now());
            future::or(r.wake.wait(), glommio::timer::sleep(until)).await;
        }
        let ticking = Instant::now() >= next_tick;
        if ticking {
            next_tick += tick;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        if let Err(e) = round(r, ticking).await {
            tracing::error!(core = r.core, error = %e, "raft driver stopped: the log failed");
            *r.failed.borrow_mut() = Some(e);
            return;
        }
        glommio::yield_if_needed().await;
    }
}

/// One round of the driver (the module doc's four steps); `Err` when the log failed.
pub(super) async fn round(r: &Replicas, ticking: bool) -> Result<(), String> {
    let began = Instant::now();
    let mut driven: Vec<(u32, Driven)> = Vec::new();
    let mut outgoing: HashMap<u64, Vec<(u32, Bytes)>> = HashMap::new();
    {
        let mut groups = r.groups.borrow_mut();
        let inbox = std::mem::take(&mut *r.inbox.borrow_mut());
        r.inbox_bytes.set(0);
        for (p, m) in inbox {
            step_incoming(r, &mut groups, p, m, &mut outgoing)?;
        }
        for (p, to) in r.transfers.borrow_mut().drain(..) {
            if let Some(g) = groups.get_mut(&p).filter(|g| g.is_leader()) {
                let voter = g.conf_state().voters.into_iter().find(|v| node_of(*v) == to);
                if let Some(id) = voter {
                    g.transfer_leader(id);
                }
            }
        }
        // Drained in place: the queue keeps its capacity from round to round.
        let mut held = Vec::new();
        for prop in r.proposals.borrow_mut().drain(..) {
            let Some(g) = groups.get_mut(&prop.partition) else {
                r.waits.complete(prop.wait, wrong_node(prop.partition, 0));
                continue;
            };
            if !g.is_leader() {
                r.waits.complete(prop.wait, wrong_node(prop.partition, g.leader().1));
                continue;
            }
            if g.transferring() {
                // raft-rs drops proposals while it hands leadership over: they wait for the
                // outcome (answered `WrongNode` once another leads, so they go there).
                held.push(prop);
                continue;
            }
            let proposed = match prop.what {
                Proposing::Command(data) => g.propose(data),
                Proposing::Membership(change) => g.propose_conf_change(change),
            };
            match proposed {
                Ok(()) => {
                    let (index, term) = (g.last_index(), g.leader().0);
                    r.proposed
                        .borrow_mut()
                        .insert((prop.partition, index), (term, prop.wait, Instant::now()));
                }
                Err(e) => r.waits.complete(
                    prop.wait,
                    Reply::error(ErrorCode::Unavailable, format!("proposal refused: {e}")),
                ),
            }
        }
        r.proposals.borrow_mut().extend(held);
        let mut asks: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (p, wait) in r.read_asks.borrow_mut().drain(..) {
            asks.entry(p).or_default().push(wait);
        }
        for (p, waits) in asks {
            let Some(g) = groups.get_mut(&p) else {
                waits.into_iter().for_each(|w| r.reads.complete(w, Err(wrong_node(p, 0))));
                continue;
            };
            if !g.is_leader() {
                let leader = g.leader().1;
                waits.into_iter().for_each(|w| r.reads.complete(w, Err(wrong_node(p, leader))));
                continue;
            }
            if !g.can_read_index() {
                // A new leader's first entry is not committed yet: ask again next round.
                r.read_asks.borrow_mut().extend(waits.into_iter().map(|w| (p, w)));
                continue;
            }
            let context = r.next_context.get();
            r.next_context.set(context + 1);
            g.read_index(context.to_le_bytes().to_vec());
            r.read_batches.borrow_mut().insert(context, (p, waits));
        }
        if ticking {
            groups.values_mut().for_each(Group::tick);
            probe_if_silent(r, &mut groups, &mut outgoing);
        }
        leave_joint(&mut groups);
        for (p, g) in groups.iter_mut() {
            if !g.has_ready() {
                continue;
            }
            let d = g.drive().map_err(|e| format!("partition {p}: {e}"))?;
            driven.push((*p, d));
        }
    }
    // Leaders' messages go out before the disk wait: replication overlaps the local write.
    for (p, d) in &mut driven {
        queue(&mut outgoing, *p, d.messages.drain(..), r);
        if let Some((term, leader)) = d.leader_changed {
            bump(&r.counters.leader_changes);
            if leader == r.node {
                bump(&r.counters.elections_won);
                tracing::info!(partition = *p, term, "leading");
            }
            note_lost_leadership(r, *p, leader);
            // raft-rs forgets a deposed leader's pending reads: answer them, so they retry.
            r.read_batches.borrow_mut().retain(|_, (q, waits)| {
                if q != p {
                    return true;
                }
                waits.drain(..).for_each(|w| r.reads.complete(w, Err(wrong_node(*p, leader))));
                false
            });
        }
    }
    send(r, &mut outgoing);
    let stepped = began.elapsed();
    let mut installed: Vec<(u32, u64)> = Vec::new();
    for (p, d) in &mut driven {
        if let Some(snapshot) = d.snapshot.take() {
            let index = snapshot.get_metadata().index;
            // Data first, then the snapshot point: both are in the log before the wait below.
            let mine = |k: &[u8]| meta::partition_of(k, r.partitions) == *p;
            let (removed, data) = split_membership(&snapshot.data);
            // Made durable by the round's one wait below, with the snapshot point after it.
            let done = r.store.load_where(&mine, &data, index);
            done.map_err(|e| format!("partition {p}: installing a snapshot: {e}"))?;
            if let Some(g) = r.groups.borrow_mut().get_mut(p) {
                let store = g.store_mut();
                store.apply_snapshot(snapshot).map_err(|e| format!("partition {p}: {e}"))?;
                store.install_removed(index, removed).map_err(|e| format!("partition {p}: {e}"))?;
            }
            r.applied.borrow_mut().insert(*p, index);
            forget_proposals_covered(r, *p, index);
            installed.push((*p, index));
            bump(&r.counters.snapshots_installed);
            tracing::info!(partition = *p, index, "installed a snapshot");
        }
        apply(r, *p, std::mem::take(&mut d.committed)).await?;
    }
    let applied = began.elapsed();
    // One wait for everything this round appended, every group of the core together.
    if !driven.is_empty()
        && let Some(wal) = r.store.wal.as_ref()
    {
        wal.wait(wal.appended()).await.map_err(|e| e.to_string())?;
    }
    let synced = began.elapsed();
    {
        let mut groups = r.groups.borrow_mut();
        // A group this node just left is taken down below: raft-rs must not count a log
        // for a replica its membership no longer has.
        let leaving: Vec<u32> = r.leaving.borrow().iter().map(|(p, _)| *p).collect();
        for (p, d) in &mut driven {
            if leaving.contains(p) {
                continue;
            }
            queue(&mut outgoing, *p, d.after_persist.drain(..), r);
            if let (Some(number), Some(g)) = (d.persist, groups.get_mut(p)) {
                g.persisted(number);
            }
        }
        // raft-rs may count a snapshot as applied only once it is persisted.
        for (p, index) in installed {
            if let Some(g) = groups.get_mut(&p).filter(|_| !leaving.contains(&p)) {
                g.applied(index);
            }
        }
    }
    send(r, &mut outgoing);
    let sent = began.elapsed();
    for (p, d) in &driven {
        for (context, index) in &d.reads {
            let Ok(bytes) = <[u8; 8]>::try_from(&context[..]) else { continue };
            if let Some((_, waits)) = r.read_batches.borrow_mut().remove(&u64::from_le_bytes(bytes))
            {
                let mut pending = r.read_waits.borrow_mut();
                pending.extend(waits.into_iter().map(|w| (*p, *index, w)));
            }
        }
    }
    release_reads(r);
    take_down_removed(r).await?;
    let taken_down = began.elapsed();
    build_snapshots(r).await;
    let built = began.elapsed();
    compact_logs(r);
    let took = began.elapsed();
    if took > SLOW_ROUND {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::warn!(
            core = r.core,
            ms = ms(took),
            stepping_ms = ms(stepped),
            applying_ms = ms(applied - stepped),
            syncing_ms = ms(synced - applied),
            sending_ms = ms(sent - synced),
            taking_down_ms = ms(taken_down - sent),
            snapshots_ms = ms(built - taken_down),
            compacting_ms = ms(took - built),
            groups = driven.len(),
            "slow raft round"
        );
    }
    Ok(())
}

/// One incoming Raft message: stepped into its group; or it makes the group, when a leader
/// talks to this node about a partition it was added to; or it is answered with a tombstone,
/// when it comes from a replica removed from the group; or, from a removed replica's point of
/// view, it is that tombstone. `Err` when the log failed.
fn step_incoming(
    r: &Replicas,
    groups: &mut BTreeMap<u32, Group<WalStore>>,
    p: u32,
    m: Message,
    outgoing: &mut HashMap<u64, Vec<(u32, Bytes)>>,
) -> Result<(), String> {
    if node_of(m.to) != r.node {
        return Ok(());
    }
    if m.get_msg_type() == MessageType::MsgCheckQuorum {
        // A probe from a replica that heard no leader for long: answered only when it was
        // removed (see `probe_if_silent`).
        if let Some(g) = groups.get(&p)
            && let Some(at) = g.store().removed_at(m.from)
        {
            queue(outgoing, p, std::iter::once(tombstone_message(g.id(), m.from, at)), r);
        }
        return Ok(());
    }
    if m.get_msg_type() == MessageType::MsgUnreachable {
        // A tombstone: the sender applied this replica's removal at `m.index`. Replica ids
        // are never given twice, so one addressed to this very replica is final.
        let known = r.leaving.borrow().iter().any(|(q, _)| *q == p);
        if groups.get(&p).is_some_and(|g| g.id() == m.to) && !known {
            tracing::info!(partition = p, index = m.index, from = m.from, "told removed");
            r.leaving.borrow_mut().push((p, m.index));
        }
        return Ok(());
    }
    if let Some(g) = groups.get(&p)
        && g.id() != m.to
    {
        if incarnation(m.to) > incarnation(g.id()) && from_a_leader(&m) {
            // This node was added back as a new replica: the old one was removed, whether
            // or not it heard. It leaves now; the leader's next message makes the new one.
            tracing::info!(partition = p, old = g.id(), new = m.to, "replaced by a new replica");
            r.leaving.borrow_mut().push((p, g.last_index()));
        }
        return Ok(());
    }
    if let std::collections::btree_map::Entry::Vacant(slot) = groups.entry(p) {
        let gone = r.tombstones.borrow().get(&p).map(|(_, id)| incarnation(*id));
        let newer = gone.is_none_or(|old| incarnation(m.to) > old);
        let leaving = r.leaving.borrow().iter().any(|(q, _)| *q == p);
        let clearing = r.clearing.borrow().contains(&p);
        if !from_a_leader(&m) || !newer || leaving || clearing || r.failed.borrow().is_some() {
            return Ok(());
        }
        let wal = r.store.wal.clone();
        let state = Recovered::default();
        let made = new_group(r.node, Some(m.to), p, Vec::new(), state, wal, r.election_tick);
        let (g, done) = made?;
        tracing::info!(
            partition = p,
            replica = m.to,
            leader = node_of(m.from),
            "added to the group; waiting for a snapshot"
        );
        r.applied.borrow_mut().insert(p, done);
        slot.insert(g);
    }
    let Some(g) = groups.get_mut(&p) else { return Ok(()) };
    if let Some(at) = g.store().removed_at(m.from)
        && !members(&g.conf_state()).contains(&m.from)
    {
        let notice = tombstone_message(g.id(), m.from, at);
        queue(outgoing, p, std::iter::once(notice), r);
        return Ok(());
    }
    if m.get_msg_type() == MessageType::MsgSnapshot
        && let Err(why) = check_snapshot(r, p, &m)
    {
        bump(&r.counters.messages_refused);
        tracing::warn!(partition = p, from = m.from, "snapshot refused: {why}");
        return Ok(());
    }
    let (from, kind) = (m.from, m.get_msg_type());
    match g.step(m) {
        Stepped::Done => {}
        Stepped::Refused(why) => {
            bump(&r.counters.messages_refused);
            tracing::warn!(partition = p, from, ?kind, "raft message refused: {why}");
        }
        Stepped::Panicked(why) => {
            bump(&r.counters.messages_refused);
            tracing::error!(
                partition = p,
                from,
                ?kind,
                "raft-rs panicked on a message ({why}); rebuilding the group from its log"
            );
            let old = groups.remove(&p).expect("stepped just now");
            let (id, store) = (old.id(), old.into_store());
            let done = r.applied.borrow().get(&p).copied().unwrap_or(0);
            let g = rebuilt_group(id, p, store, done, r.election_tick)?;
            groups.insert(p, g);
        }
    }
    Ok(())
}

/// A snapshot's data must load cleanly and hold only its own partition's keys: it is
/// checked before raft-rs takes it, since after that it must be installed.
fn check_snapshot(r: &Replicas, p: u32, m: &Message) -> Result<(), String> {
    let (_, data) = split_membership(&m.get_snapshot().data);
    let mine = |k: &[u8]| meta::partition_of(k, r.partitions) == p;
    crate::storage::store::check_snapshot_data(&mine, &data)
}

/// A group made again over `store` (its log as persisted) after raft-rs panicked: what
/// was only in raft-rs's memory is gone, as after a crash, and is sent again by the leader.
fn rebuilt_group(
    id: u64,
    partition: u32,
    store: WalStore,
    applied: u64,
    election_tick: Option<usize>,
) -> Result<Group<WalStore>, String> {
    let mut raft_config = group::config(id);
    if let Some(ticks) = election_tick {
        raft_config.min_election_tick = ticks;
        raft_config.max_election_tick = ticks + 1;
    }
    raft_config.applied = applied.max(store.first_index_now() - 1).min(store.last_index_now());
    Group::new(partition, &raft_config, store)
        .map_err(|e| format!("partition {partition}: rebuilding after a panic: {e}"))
}

/// A replica that heard no leader for long asks every member it knows whether it is still one
/// of them: a replica removed while it was cut off or down is never told by the leader, which
/// stopped talking to it, and a removed learner never campaigns, so nobody would answer it.
/// A group made for a partition this node was added to that never got its snapshot (the
/// addition was undone, or the message was stale) is dropped: it recorded nothing.
fn probe_if_silent(
    r: &Replicas,
    groups: &mut BTreeMap<u32, Group<WalStore>>,
    outgoing: &mut HashMap<u64, Vec<(u32, Bytes)>>,
) {
    let mut unused = Vec::new();
    for (p, g) in groups.iter_mut() {
        if !g.silent_too_long() {
            continue;
        }
        let conf = g.store().conf_state();
        if members(&conf).is_empty() {
            unused.push(*p);
            continue;
        }
        let me = g.id();
        let probes = members(&conf).into_iter().filter(|n| *n != me).map(|to| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgCheckQuorum);
            m.from = me;
            m.to = to;
            m
        });
        queue(outgoing, *p, probes, r);
    }
    for p in unused {
        groups.remove(&p);
        r.applied.borrow_mut().remove(&p);
        tracing::info!(partition = p, "dropped a group that never received its data");
    }
}

/// A leader whose group is joint (entered by a change it applied) proposes leaving it, once
/// no other change is pending: the joint membership is left explicitly, by the group's
/// leader of the moment, whoever proposed entering it.
fn leave_joint(groups: &mut BTreeMap<u32, Group<WalStore>>) {
    for g in groups.values_mut() {
        if g.is_leader() && g.is_joint() && !g.has_pending_conf() {
            let _ = g.propose_conf_change(ConfChangeV2::default());
        }
    }
}

/// Applies a committed membership change at entry `e`: raft-rs takes it, the store records
/// the new membership, and a node it removed is told so (this one leaves after the round).
fn apply_membership(
    r: &Replicas,
    partition: u32,
    e: &raft::eraftpb::Entry,
) -> Result<Reply, String> {
    let change = match e.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::parse_from_bytes(&e.data).map_err(|x| x.to_string())
        }
        // raft-rs writes the older form only when proposed as such; this node never does, but
        // a log is read as raft-rs defines it.
        _ => ConfChange::parse_from_bytes(&e.data).map(v2).map_err(|x| x.to_string()),
    };
    let mut groups = r.groups.borrow_mut();
    let Some(g) = groups.get_mut(&partition) else { return Ok(not_applied(partition)) };
    let conf = match change.and_then(|c| g.apply_conf_change(&c).map_err(|x| x.to_string())) {
        Ok(conf) => conf,
        Err(why) => {
            // Every replica refuses the same change the same way, so they stay in step.
            tracing::warn!(partition, index = e.index, error = %why, "membership change refused");
            return Ok(Reply::error(
                ErrorCode::BadRequest,
                format!("membership change refused: {why}"),
            ));
        }
    };
    let before = members(&g.store().conf_state());
    g.store_mut()
        .set_membership(e.index, conf.clone())
        .map_err(|x| format!("partition {partition}: {x}"))?;
    let now = members(&conf);
    tracing::info!(partition, index = e.index, ?conf, "membership changed");
    for gone in before.into_iter().filter(|n| !now.contains(n)) {
        if gone == g.id() {
            r.leaving.borrow_mut().push((partition, e.index));
        } else if g.is_leader() {
            let notice = tombstone_message(g.id(), gone, e.index);
            if let Ok(bytes) = protobuf::Message::write_to_bytes(&notice) {
                r.links.send_raft(node_of(gone), vec![(partition, Bytes::from(bytes))]);
            }
        }
    }
    Ok(Reply::Written { version: e.index })
}

/// The one-change form of a membership change, as raft-rs reads it.
fn v2(c: ConfChange) -> ConfChangeV2 {
    let mut single = raft::eraftpb::ConfChangeSingle::default();
    single.set_change_type(c.get_change_type());
    single.node_id = c.node_id;
    ConfChangeV2 { changes: vec![single].into(), context: c.context, ..Default::default() }
}

/// Takes down the groups this node was removed from: a tombstone record first (so a crash
/// part way never brings the group back), then every key of the partition deleted, durably.
/// Proposals still waiting on them cannot be told what became of them; reads go elsewhere.
///
/// The deletes (a log record per key, and a sync) run beside the driver, not in its round:
/// inside it they held every other partition of the core for tens of milliseconds per
/// removed replica. Until they are durable the partition gets no new replica here; a crash
/// before then leaves keys that the restart deletes again (every tombstone's partition is
/// cleared at start). The metadata group's deletes stay in the round: this node leaves the
/// cluster when they are done.
async fn take_down_removed(r: &Replicas) -> Result<(), String> {
    let leaving = std::mem::take(&mut *r.leaving.borrow_mut());
    let leaving: Vec<_> = {
        let mut groups = r.groups.borrow_mut();
        leaving.into_iter().filter_map(|(p, i)| groups.remove(&p).map(|g| (p, i, g))).collect()
    };
    for (p, index, mut g) in leaving {
        let id = g.id();
        g.store_mut().record_tombstone(index, id).map_err(|e| format!("partition {p}: {e}"))?;
        r.applied.borrow_mut().remove(&p);
        r.tombstones.borrow_mut().insert(p, (index, id));
        r.proposed.borrow_mut().retain(|&(q, _), &mut (_, wait, _)| {
            if q == p {
                // The group may still commit it without this node.
                let text = format!(
                    "partition {p}: this node left the group with the write in flight; it may \
                     or may not have been applied"
                );
                r.waits.complete(wait, Reply::error(ErrorCode::OutcomeUnknown, text));
            }
            q != p
        });
        r.read_batches.borrow_mut().retain(|_, (q, waits)| {
            if *q == p {
                waits.drain(..).for_each(|w| r.reads.complete(w, Err(wrong_node(p, 0))));
            }
            *q != p
        });
        r.read_waits.borrow_mut().retain(|(q, _, wait)| {
            if *q == p {
                r.reads.complete(*wait, Err(wrong_node(p, 0)));
            }
            *q != p
        });
        if p != r.partitions {
            r.clearing.borrow_mut().insert(p);
            r.to_clear.borrow_mut().push((p, index));
            continue;
        }
        // The metadata group, last to go: this node is out of the cluster once it is done.
        let mine = |k: &[u8]| meta::partition_of(k, r.partitions) == p;
        r.store
            .install_where(&mine, &Bytes::new(), index)
            .await
            .map_err(|e| format!("partition {p}: deleting a removed replica's data: {e}"))?;
        tracing::info!(partition = p, index, "removed from the group; its data is deleted");
        if let Some(retire) = r.retired.borrow().as_ref() {
            retire();
        }
    }
    let to_clear = std::mem::take(&mut *r.to_clear.borrow_mut());
    for (p, index) in to_clear {
        let (store, clearing, partitions) = (r.store.clone(), r.clearing.clone(), r.partitions);
        let clear = async move {
            let mine = |k: &[u8]| meta::partition_of(k, partitions) == p;
            let appended = store.load_where(&mine, &Bytes::new(), index);
            let done = match (appended, &store.wal) {
                (Ok(Some(seq)), Some(wal)) => {
                    wal.wait(seq).await.map(|_| true).map_err(|e| e.to_string())
                }
                (Ok(deleted), _) => Ok(deleted.is_some()),
                (Err(e), _) => Err(e),
            };
            match done {
                Ok(true) => tracing::info!(partition = p, index, "removed replica's data deleted"),
                Ok(false) => {}
                // The log failed: the driver stops at its next append, and says why.
                Err(e) => tracing::error!(partition = p, error = %e, "removed replica's data kept"),
            }
            clearing.borrow_mut().remove(&p);
        };
        if r.snapshots_inline.get() {
            clear.await;
        } else {
            glommio::spawn_local(clear).detach();
        }
    }
    Ok(())
}

fn queue(
    outgoing: &mut HashMap<u64, Vec<(u32, Bytes)>>,
    partition: u32,
    messages: impl Iterator<Item = Message>,
    r: &Replicas,
) {
    for mut m in messages {
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            bump(&r.counters.snapshots_sent);
            // Streamed in pieces beside the Raft traffic, the message last (`transport`).
            let data = std::mem::take(&mut m.mut_snapshot().data);
            let index = m.get_snapshot().get_metadata().index;
            match m.write_to_bytes() {
                Ok(bytes) => {
                    let to = node_of(m.to);
                    r.links.send_snapshot(to, partition, index, Bytes::from(bytes), data);
                }
                Err(e) => tracing::error!(error = %e, "snapshot message did not encode"),
            }
            continue;
        }
        let to = node_of(m.to);
        match m.write_to_bytes() {
            Ok(bytes) => outgoing.entry(to).or_default().push((partition, Bytes::from(bytes))),
            Err(e) => tracing::error!(error = %e, "raft message did not encode"),
        }
    }
}

fn send(r: &Replicas, outgoing: &mut HashMap<u64, Vec<(u32, Bytes)>>) {
    for (to, messages) in outgoing.drain() {
        if !r.links.send_raft(to, messages) {
            for g in r.groups.borrow_mut().values_mut() {
                let on_it = members(&g.conf_state()).into_iter().filter(|m| node_of(*m) == to);
                on_it.collect::<Vec<_>>().into_iter().for_each(|m| g.report_unreachable(m));
            }
        }
    }
}

/// A new leader (not this node) means entries this node proposed and that are not committed
/// may be replaced; they are answered when their index is applied, whatever lands there, so
/// this only tells the operator.
fn note_lost_leadership(r: &Replicas, partition: u32, leader: u64) {
    if leader == r.node || leader == 0 {
        return;
    }
    let waiting = r.proposed.borrow().keys().filter(|(p, _)| *p == partition).count();
    if waiting > 0 {
        tracing::info!(partition, leader, waiting, "lost leadership with proposals in flight");
    }
}

/// Applies committed entries in order; `Err` when this core's log failed (the driver stops).
async fn apply(
    r: &Replicas,
    partition: u32,
    entries: Vec<raft::eraftpb::Entry>,
) -> Result<(), String> {
    let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
    for e in entries {
        let waiting = r.proposed.borrow_mut().remove(&(partition, e.index));
        if e.get_entry_type() != EntryType::EntryNormal {
            let reply = apply_membership(r, partition, &e)?;
            if let Some((term, wait, _)) = waiting {
                let reply = if term == e.term { reply } else { not_applied(partition) };
                r.waits.complete(wait, reply);
            }
            continue;
        }
        if e.data.is_empty() {
            if let Some((_, wait, _)) = waiting {
                r.waits.complete(wait, not_applied(partition));
            }
            continue;
        }
        let reply = match command::decode(&e.data, &r.limits) {
            Ok((stamp, command)) => {
                // Only the proposer reads the reply: elsewhere an entry's reads are skipped.
                let answered = waiting.is_some();
                let reply = match command {
                    Command::Op(op) => r.store.apply_replicated(op, stamp, e.index, answered).await,
                    Command::Expiry(keys) => r.store.apply_expiry(keys, stamp, e.index),
                };
                if let Some(failed) = r.store.log_failure() {
                    // Committed, and not applied here: this replica must stop rather than
                    // skip it, and the proposer cannot say whether it happened.
                    if let Some((_, wait, _)) = waiting {
                        let unknown = format!("partition {partition}: the log failed: {failed}");
                        r.waits.complete(wait, Reply::error(ErrorCode::OutcomeUnknown, unknown));
                    }
                    return Err(format!("partition {partition}: applying {}: {failed}", e.index));
                }
                match waiting {
                    Some((term, wait, at)) if term == e.term => {
                        let us = at.elapsed().as_micros() as u64;
                        bump_by(&r.counters.commit_us_sum, us);
                        bump(&r.counters.commits);
                        r.waits.complete(wait, reply);
                    }
                    Some((_, wait, _)) => r.waits.complete(wait, not_applied(partition)),
                    None => {}
                }
                continue;
            }
            Err(e) => e,
        };
        // Every replica decodes the same bytes the same way, so skipping keeps them in step;
        // it can only be a bug or a damaged log, and it is loud.
        tracing::error!(partition, index = e.index, error = %reply, "raft entry skipped");
        if let Some((_, wait, _)) = waiting {
            r.waits.complete(wait, Reply::error(ErrorCode::Internal, reply));
        }
    }
    r.applied.borrow_mut().insert(partition, last);
    if let Some(g) = r.groups.borrow_mut().get_mut(&partition) {
        g.applied(last);
    }
    Ok(())
}

/// Proposals at or below an installed snapshot's index will never be seen applied here: their
/// outcome is unknown to this node.
fn forget_proposals_covered(r: &Replicas, partition: u32, index: u64) {
    r.proposed.borrow_mut().retain(|&(p, i), &mut (_, wait, _)| {
        if p != partition || i > index {
            return true;
        }
        r.waits.complete(
            wait,
            Reply::error(
                ErrorCode::OutcomeUnknown,
                format!(
                    "partition {partition}: this node caught up by snapshot past the write; it \
                     may or may not have been applied"
                ),
            ),
        );
        false
    });
}

fn not_applied(partition: u32) -> Reply {
    Reply::error(
        ErrorCode::Unavailable,
        format!(
            "partition {partition}: leadership changed before the write committed; it was not \
             applied, retry it"
        ),
    )
}

fn release_reads(r: &Replicas) {
    let applied = r.applied.borrow();
    r.read_waits.borrow_mut().retain(|(p, index, wait)| {
        if applied.get(p).copied().unwrap_or(0) >= *index {
            r.reads.complete(*wait, Ok(()));
            false
        } else {
            true
        }
    });
}

/// Builds the snapshots raft-rs asked for since the last round, at each partition's applied
/// index: the keys are listed at once (no apply runs meanwhile: this is the driver), the
/// values on disk are read back by a task of their own, so the core's groups go on, and the
/// snapshot is the group's once read (under simulation, at once, so a seed replays).
async fn build_snapshots(r: &Replicas) {
    for (p, index, conf, removed, done) in r.snapshots_built.borrow_mut().drain(..) {
        match done {
            Ok(keys) => {
                let bytes = keys.len();
                let mut data = Vec::with_capacity(keys.len() + 64);
                record::encode(&store::membership_record(p, index, &removed, &conf), &mut data);
                data.extend_from_slice(&keys);
                if let Some(g) = r.groups.borrow_mut().get_mut(&p) {
                    g.store_mut().set_built(index, conf, Bytes::from(data));
                }
                tracing::info!(partition = p, index, bytes, "built a snapshot for a follower");
            }
            Err(e) => tracing::error!(partition = p, error = %e, "snapshot not built"),
        }
        r.snapshots_building.borrow_mut().remove(&p);
    }
    let wanted: Vec<u32> = r
        .groups
        .borrow()
        .iter()
        .filter(|(_, g)| g.store().snapshot_wanted.replace(false))
        .map(|(p, _)| *p)
        .filter(|p| !r.snapshots_building.borrow().contains(p))
        .collect();
    for p in wanted {
        let index = r.applied.borrow().get(&p).copied().unwrap_or(0);
        let mine = |k: &[u8]| meta::partition_of(k, r.partitions) == p;
        let listing = r.store.listing_where(&mine);
        let Some((conf, removed)) = r.groups.borrow().get(&p).map(|g| {
            let store = g.store();
            (store.conf_state(), store.removed().to_vec())
        }) else {
            continue;
        };
        r.snapshots_building.borrow_mut().insert(p);
        let (store, built) = (r.store.clone(), r.snapshots_built.clone());
        let read = async move {
            let done = store.materialize(listing).await;
            built.borrow_mut().push((p, index, conf, removed, done));
        };
        if r.snapshots_inline.get() {
            read.await;
        } else {
            glommio::spawn_local(read).detach();
        }
    }
}

/// A snapshot's data as built: the removed replicas (a membership record first), then the
/// partition's keys.
fn split_membership(data: &Bytes) -> (Vec<(u64, u64)>, Bytes) {
    match record::decode(data, 0) {
        Ok((crate::storage::Mutation::Raft { what: store::WHAT_MEMBERSHIP, body, .. }, len)) => {
            (store::removed_in(&body).unwrap_or_default(), data.slice(len..))
        }
        _ => (Vec::new(), data.clone()),
    }
}

/// Drops applied entries from memory beyond what followers are still catching up on.
fn compact_logs(r: &Replicas) {
    let applied = r.applied.borrow();
    let mut groups = r.groups.borrow_mut();
    for (p, g) in groups.iter_mut() {
        let done = applied.get(p).copied().unwrap_or(0);
        let retained = r.entries_retained.get();
        if done < g.store().first_index_now() + 2 * retained {
            continue;
        }
        g.store_mut().compact_to(done - retained);
    }
}

impl CheckpointExtra for Replicas {
    /// Records for a checkpoint: every group's point at its applied index, hard state and
    /// later entries. Taken in the same synchronous step as the engine's snapshot.
    fn checkpoint_records(&self) -> Vec<crate::storage::Mutation> {
        let applied = self.applied.borrow();
        let mut out: Vec<_> = self
            .groups
            .borrow()
            .iter()
            .flat_map(|(p, g)| g.store().checkpoint_records(applied.get(p).copied().unwrap_or(0)))
            .collect();
        // A removal outlives the log segments that recorded it.
        let tombstones = self.tombstones.borrow();
        out.extend(tombstones.iter().map(|(p, (at, id))| store::tombstone_record(*p, *at, *id)));
        out
    }
}
