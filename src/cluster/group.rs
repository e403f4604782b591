//! One partition's Raft group on one node: raft-rs's `RawNode` driven as a plain state machine.
//!
//! The owner (a core's driver, `replica.rs`, also run under simulation by `sim.rs`) calls
//! [`Group::tick`] on its timer, [`Group::step`] for each message from a peer,
//! [`Group::propose`] for client writes, and then [`Group::drive`], which takes everything
//! raft-rs has ready in the order Raft requires:
//! 1. messages a leader may send before its own log is durable (raft-rs's `messages`) are
//!    handed out to send at once;
//! 2. a snapshot, new entries and the hard state are appended to the store
//!    ([`GroupStore`]), which does not wait for the disk;
//! 3. messages that promise durability (votes, append acks: `persisted_messages`) are handed
//!    out separately: the owner sends them only once the store is durable, and then calls
//!    [`Group::persisted`] so raft-rs counts this replica's own log;
//! 4. committed entries come back for the state machine to apply, in order; the owner reports
//!    progress with [`Group::applied`].
//!
//! Splitting 2 from 3 is what lets every group on a core share one fdatasync: the core drives
//! all its groups, waits once for its log, then finishes every group's round.

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, HardState, Message, Snapshot};
use std::collections::HashMap;

use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole, Storage};

/// Where a group's log lives: raft-rs reads through `Storage`, the driver writes through this.
pub trait GroupStore: Storage {
    /// Makes `snapshot` the start of the log (entries it covers are gone).
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()>;
    /// Appends entries (replacing any conflicting suffix), durably.
    fn append(&mut self, entries: &[Entry]) -> raft::Result<()>;
    /// Records term, vote and commit, durably.
    fn set_hard_state(&mut self, hs: &HardState) -> raft::Result<()>;
    /// Records a new commit index (no durability needed: it is recomputed after a crash).
    fn set_commit(&mut self, commit: u64) -> raft::Result<()>;
    /// The membership as of the applied index (kept with every change the owner applies).
    fn membership(&self) -> &ConfState;
}

/// What one `drive` produced: messages to send (each carries its destination) and committed
/// entries to apply, oldest first.
#[derive(Default, Debug)]
pub struct Driven {
    /// Send now.
    pub messages: Vec<Message>,
    /// Send only once the store is durable, then call [`Group::persisted`] with `persist`.
    pub after_persist: Vec<Message>,
    /// The Ready number to report as persisted; `None` when nothing was taken.
    pub persist: Option<u64>,
    /// ReadIndex answers: (request context, index to apply up to before reading).
    pub reads: Vec<(Vec<u8>, u64)>,
    /// A snapshot this replica received. Before the round's persistence is reported, the
    /// owner loads its data into the state machine, then passes it to the store's
    /// `apply_snapshot`, then calls [`Group::applied`] with its index after
    /// [`Group::persisted`]; `committed` holds only entries after it.
    pub snapshot: Option<Snapshot>,
    pub committed: Vec<Entry>,
    /// The leader the group knows of now (0: none), when it changed.
    pub leader_changed: Option<(u64, u64)>,
}

/// Ticks a follower may stay waiting for a snapshot before it is sent again: 10 s at the
/// default tick, longer than an election timeout so that a snapshot in transit is not cut off.
pub const SNAPSHOT_STALL_TICKS: u32 = 100;

/// A replica's Raft id: its node id in the low 32 bits, and which time this node holds the
/// group in the high 32 (0 for a founding member). A node added back to a group it left is a
/// new replica with a new id, so nothing the old replica said or was told (its votes, what it
/// acknowledged, a tombstone meant for it) can be taken for the new one's.
pub fn replica_id(node: u64, incarnation: u64) -> u64 {
    debug_assert!(node <= u64::from(u32::MAX));
    node | (incarnation << 32)
}

/// The node a replica id is on.
pub fn node_of(replica: u64) -> u64 {
    replica & u64::from(u32::MAX)
}

/// Which time its node holds the group (see [`replica_id`]).
pub fn incarnation(replica: u64) -> u64 {
    replica >> 32
}

/// Ticks a replica may go without hearing from a leader before it asks the members it knows
/// whether it is still one of them (a replica removed while it was away is never told
/// otherwise: the leader stopped talking to it): 5 s at the default tick.
pub const SILENT_TICKS: u32 = 50;

pub struct Group<S: GroupStore> {
    pub partition: u32,
    node: RawNode<S>,
    leader: (u64, u64),
    /// A leader's followers waiting for a snapshot: (the snapshot's index, ticks waited).
    snapshot_waits: HashMap<u64, (u64, u32)>,
    /// See [`SNAPSHOT_STALL_TICKS`].
    pub snapshot_stall_ticks: u32,
    /// Ticks since a leader's message last reached this replica (see [`SILENT_TICKS`]).
    silent: u32,
}

/// Raft timing in ticks. A tick is `--raft-tick-ms`; elections start after a randomized
/// 10–20 ticks without a leader, heartbeats go every 2.
pub fn config(id: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        // A leader that has not heard from a quorum for an election timeout steps down, so a
        // leader cut off in a minority stops acting as one.
        check_quorum: true,
        // A node coming back from a partition asks before it disrupts a working leader.
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

fn discard_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl<S: GroupStore> Group<S> {
    pub fn new(partition: u32, config: &Config, store: S) -> raft::Result<Group<S>> {
        config.validate()?;
        let node = RawNode::new(config, store, &discard_logger())?;
        Ok(Group {
            partition,
            node,
            leader: (0, 0),
            snapshot_waits: HashMap::new(),
            snapshot_stall_ticks: SNAPSHOT_STALL_TICKS,
            silent: 0,
        })
    }

    pub fn tick(&mut self) {
        self.node.tick();
        self.retry_stalled_snapshots();
        self.silent = if self.is_leader() { 0 } else { self.silent + 1 };
    }

    /// Whether this replica has heard no leader for [`SILENT_TICKS`]; asking resets the count,
    /// so it is true once per period of silence.
    pub fn silent_too_long(&mut self) -> bool {
        if self.silent < SILENT_TICKS {
            return false;
        }
        self.silent = 0;
        true
    }

    /// raft-rs holds a follower it sent a snapshot to until the owner reports how the send
    /// went, and sends it nothing meanwhile. A snapshot lost on the way (a link that broke, a
    /// follower that crashed before it was durable) would stall that follower for as long as
    /// this leader leads. One not acknowledged within the stall limit is reported failed, so
    /// raft-rs probes the follower and sends a snapshot again.
    fn retry_stalled_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshot_waits.clear();
            return;
        }
        let waiting: Vec<(u64, u64)> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(id, pr)| (*id, pr.pending_snapshot))
            .collect();
        self.snapshot_waits.retain(|id, _| waiting.iter().any(|(w, _)| w == id));
        for (id, index) in waiting {
            let wait = self.snapshot_waits.entry(id).or_insert((index, 0));
            if wait.0 != index {
                *wait = (index, 0);
            }
            wait.1 += 1;
            if wait.1 >= self.snapshot_stall_ticks {
                self.snapshot_waits.remove(&id);
                self.node.report_snapshot(id, SnapshotStatus::Failure);
                tracing::warn!(
                    partition = self.partition,
                    follower = id,
                    index,
                    "snapshot not acknowledged; sending it again"
                );
            }
        }
    }

    pub fn step(&mut self, message: Message) -> raft::Result<()> {
        use raft::eraftpb::MessageType::*;
        if matches!(message.get_msg_type(), MsgAppend | MsgHeartbeat | MsgSnapshot) {
            self.silent = 0;
        }
        self.node.step(message)
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// (term, leader's node) as this replica knows them; leader 0 when unknown.
    pub fn leader(&self) -> (u64, u64) {
        (self.node.raft.term, node_of(self.node.raft.leader_id))
    }

    /// This replica's id (see [`replica_id`]).
    pub fn id(&self) -> u64 {
        self.node.raft.id
    }

    /// Proposes a command; refused unless this node leads (the caller routes to the leader).
    pub fn propose(&mut self, data: Vec<u8>) -> raft::Result<()> {
        if !self.is_leader() {
            return Err(raft::Error::ProposalDropped);
        }
        self.node.propose(Vec::new(), data)
    }

    /// Proposes a membership change; refused unless this node leads. raft-rs lets one change
    /// be pending at a time: it turns a second into an empty entry, which the owner answers as
    /// not applied.
    pub fn propose_conf_change(&mut self, change: ConfChangeV2) -> raft::Result<()> {
        if !self.is_leader() {
            return Err(raft::Error::ProposalDropped);
        }
        self.node.propose_conf_change(Vec::new(), change)
    }

    /// Makes a committed membership change take effect here: the membership after it.
    pub fn apply_conf_change(&mut self, change: &ConfChangeV2) -> raft::Result<ConfState> {
        self.node.apply_conf_change(change)
    }

    /// The membership as applied here.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// Whether the group is between two memberships (joint consensus, not yet left).
    pub fn is_joint(&self) -> bool {
        // The store's copy is raft-rs's as applied, and reading it builds nothing.
        !self.store().membership().voters_outgoing.is_empty()
    }

    /// Whether a membership change is proposed and not yet applied here.
    pub fn has_pending_conf(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// A leader's view of `follower`: (matched index, whether it takes entries from the log:
    /// it has acknowledged some, and is not waiting for a snapshot). A replica that never
    /// answered is not replicating, however short the log: it must not count as caught up
    /// (a dead node added would otherwise be promoted to voter while the log is short).
    pub fn progress_of(&self, follower: u64) -> Option<(u64, bool)> {
        let pr = self.node.raft.prs().get(follower)?;
        Some((pr.matched, pr.state != ProgressState::Snapshot && pr.matched > 0))
    }

    /// Whether this leader is handing leadership over (raft-rs drops proposals meanwhile).
    pub fn transferring(&self) -> bool {
        self.is_leader() && self.node.raft.lead_transferee.is_some()
    }

    /// Asks the leader to hand leadership to `to` (a caught-up voter); it happens when `to`
    /// wins the election this starts, or not at all within an election timeout.
    pub fn transfer_leader(&mut self, to: u64) {
        self.node.transfer_leader(to);
    }

    /// Asks the leader for a read index (ReadIndex); the answer comes back in
    /// [`Driven::reads`] with the same `context`. Dropped by raft-rs when there is no leader.
    pub fn read_index(&mut self, context: Vec<u8>) {
        self.node.read_index(context);
    }

    pub fn store(&self) -> &S {
        self.node.store()
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.node.mut_store()
    }

    /// raft-rs's view of the group (progress of each follower, when leading).
    pub fn status(&self) -> raft::Status<'_> {
        self.node.status()
    }

    pub fn report_unreachable(&mut self, node: u64) {
        self.node.report_unreachable(node);
    }

    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Whether this leader may serve a read index: raft-rs drops ReadIndex requests silently
    /// until the leader has committed an entry of its own term.
    pub fn can_read_index(&self) -> bool {
        self.is_leader() && self.node.raft.commit_to_current_term()
    }

    /// Takes everything raft-rs has ready; see the module doc for the order. An error from
    /// the store leaves raft-rs with a Ready it never got back: the group is then unusable and
    /// must be rebuilt from its store (a failed log fails the whole core anyway).
    pub fn drive(&mut self) -> raft::Result<Driven> {
        let mut out = Driven::default();
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            out.messages.extend(ready.take_messages());
            if !ready.snapshot().is_empty() {
                // Not stored here: the owner first makes the state machine hold the snapshot's
                // data, durably, and only then records the snapshot point in the store (see
                // `Driven::snapshot`), so a crash between the two never leaves a point whose
                // data is missing. Entries collected before it are covered by it.
                out.committed.clear();
                out.snapshot = Some(ready.snapshot().clone());
            }
            out.committed.extend(ready.take_committed_entries());
            if !ready.entries().is_empty() {
                self.node.mut_store().append(ready.entries())?;
            }
            if let Some(hs) = ready.hs() {
                self.node.mut_store().set_hard_state(hs)?;
            }
            for rs in ready.take_read_states() {
                out.reads.push((rs.request_ctx, rs.index));
            }
            out.after_persist.extend(ready.take_persisted_messages());
            out.persist = Some(ready.number());
            self.node.advance_append_async(ready);
        }
        let now = self.leader();
        if now != self.leader {
            self.leader = now;
            out.leader_changed = Some(now);
        }
        Ok(out)
    }

    /// The store made everything up to Ready `number` durable.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        let commit = self.node.raft.raft_log.committed;
        // Recomputed after a crash, so it needs no durability of its own.
        let _ = self.node.mut_store().set_commit(commit);
    }

    /// The state machine applied every entry up to `index`.
    pub fn applied(&mut self, index: u64) {
        self.node.advance_apply_to(index);
    }

    /// Index of the newest entry in the log (a proposal's, right after `propose`).
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }
}
