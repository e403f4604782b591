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
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};

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

/// What [`Group::step`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Stepped {
    Done,
    /// Not stepped: raft-rs would have aborted on it.
    Refused(String),
    /// raft-rs panicked on it: the group must be rebuilt from its store.
    Panicked(String),
}

thread_local! {
    static STEPPING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is stepping a peer's message into raft-rs: a panic there is that
/// message's doing, and the node's panic hook lets it unwind to [`Group::step`] (which
/// refuses the message) rather than abort the node.
pub fn stepping() -> bool {
    STEPPING.get()
}

/// What makes a membership one raft-rs cannot restore (it aborts on it): none of it is
/// what a correct leader sends.
fn conf_state_flaw(cs: &ConfState) -> Option<&'static str> {
    let voters = |id: &u64| cs.voters.contains(id);
    if cs.voters.is_empty() {
        return Some("no voters");
    }
    if cs.learners.iter().any(|id| voters(id) || cs.voters_outgoing.contains(id)) {
        return Some("a learner is also a voter");
    }
    if cs.learners_next.iter().any(|id| !cs.voters_outgoing.contains(id) || voters(id)) {
        return Some("a next learner outside the outgoing voters");
    }
    if cs.learners_next.iter().any(|id| cs.learners.contains(id)) {
        return Some("a next learner is already a learner");
    }
    if cs.auto_leave && cs.voters_outgoing.is_empty() {
        return Some("auto-leave without a joint membership");
    }
    let mut seen = std::collections::HashSet::new();
    let all = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing);
    if cs.voters.iter().chain(&cs.learners).any(|id| !seen.insert(*id))
        || all.clone().any(|id| *id == 0)
    {
        return Some("a replica listed twice, or replica 0");
    }
    for list in [&cs.voters_outgoing, &cs.learners_next] {
        let distinct: std::collections::HashSet<_> = list.iter().collect();
        if distinct.len() != list.len() {
            return Some("an outgoing voter or next learner listed twice");
        }
    }
    None
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

    /// Steps a peer's message into raft-rs. A message raft-rs would abort on is refused
    /// first ([`Group::refusal`]); should one still make raft-rs panic, the panic is caught
    /// and reported, and the owner must rebuild this group from its store
    /// ([`Group::into_store`]): raft-rs's memory may be half changed.
    pub fn step(&mut self, message: Message) -> Stepped {
        use raft::eraftpb::MessageType::*;
        if let Some(why) = self.refusal(&message) {
            return Stepped::Refused(why);
        }
        if matches!(message.get_msg_type(), MsgAppend | MsgHeartbeat | MsgSnapshot) {
            self.silent = 0;
        }
        STEPPING.set(true);
        let stepped = panic::catch_unwind(AssertUnwindSafe(|| self.node.step(message)));
        STEPPING.set(false);
        match stepped {
            // raft-rs's own errors here (a message from an unknown peer, a proposal dropped)
            // are its way of ignoring the message.
            Ok(_) => Stepped::Done,
            Err(cause) => {
                let text = cause
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string()));
                Stepped::Panicked(text.unwrap_or_else(|| "raft-rs panicked".into()))
            }
        }
    }

    /// Why raft-rs must not see `m`: the shapes of message it aborts on (`fatal!`), which no
    /// correct peer sends. `None` when it may step.
    pub fn refusal(&self, m: &Message) -> Option<String> {
        use raft::eraftpb::MessageType::*;
        let log = &self.node.raft.raft_log;
        let kind = m.get_msg_type();
        // raft-rs makes these for itself, or forwards them only where this node never asks
        // it to (proposals and reads go to leaders): from a peer, a proposal would put
        // anything in the log.
        let local = [
            MsgHup,
            MsgBeat,
            MsgPropose,
            MsgSnapStatus,
            MsgTransferLeader,
            MsgReadIndex,
            MsgReadIndexResp,
            MsgUnreachable,
            MsgCheckQuorum,
        ];
        if local.contains(&kind) {
            return Some(format!("{kind:?} is not a peer's message"));
        }
        // raft-rs takes a message without a term for a local one, skipping every term check.
        if m.term == 0 {
            return Some(format!("{kind:?} without a term"));
        }
        if kind == MsgHeartbeat && m.commit > log.last_index() {
            // A leader commits a follower only up to what it matched, which this replica
            // holds: the heartbeat is stale or forged.
            return Some(format!("heartbeat commits {} past the log's end", m.commit));
        }
        if kind == MsgAppend {
            let contiguous = m
                .entries
                .iter()
                .enumerate()
                .all(|(i, e)| m.index.checked_add(1 + i as u64) == Some(e.index));
            if !contiguous {
                return Some(format!("append after {} with entries out of sequence", m.index));
            }
            // Every entry has a term; and raft-rs reads the term of an index past the log's
            // end as 0, so a term-0 append would "match" there and commit past the end.
            if (m.index > 0 && m.log_term == 0) || m.entries.iter().any(|e| e.term == 0) {
                return Some("append without terms".into());
            }
        }
        if kind == MsgSnapshot {
            let meta = m.get_snapshot().get_metadata();
            if meta.index == 0 || meta.term == 0 {
                return Some("snapshot without an index or term".into());
            }
            let cs = meta.get_conf_state();
            if let Some(why) = conf_state_flaw(cs) {
                return Some(format!("snapshot with a bad membership: {why}"));
            }
        }
        None
    }

    /// The store, for a group rebuilt after raft-rs panicked on a message.
    pub fn into_store(self) -> S {
        self.node.raft.r.raft_log.store
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
