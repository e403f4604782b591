//! A Raft group's log, kept in its core's write-ahead log: one log per core, shared by every
//! group on the core, so one fdatasync makes a whole round of appends durable.
//!
//! raft-rs reads the log through [`Storage`]; those reads are served from memory (the entries
//! since the group's compaction point). Every change is also appended to the WAL as a raft
//! record (`storage::record`, kind 6) keyed by partition:
//!
//! | `what` | body |
//! |---|---|
//! | 1 entries | repeated (u32 LE length, protobuf `eraftpb::Entry`) |
//! | 2 hard state | protobuf `eraftpb::HardState` |
//! | 3 snapshot point | protobuf `eraftpb::SnapshotMetadata`: the log starts after it |
//! | 4 membership | u64 LE index, u32 LE n, n × (u64 node, u64 removed at), `eraftpb::ConfState` |
//! | 5 tombstone | u64 LE index, u64 LE replica id: that replica left there, data deleted |
//!
//! Appends return at once; the driver waits for the WAL once per round before it tells
//! raft-rs the round is persisted. Recovery replays
//! the records in log order ([`Recovered`]): a later entries record overwrites from its first
//! index on (a new leader's conflicting suffix), a snapshot point drops what it covers.
//!
//! The membership record is written when a membership change is applied, so a restart starts
//! from the membership of its applied index (raft-rs requires exactly that), and it keeps
//! which nodes were removed and when: a removed replica that still talks to the group is
//! answered with a tombstone. A tombstone record outlives the group: a later snapshot point
//! (the node added back, with fresh data) ends it.
//!
//! A checkpoint is a compaction point: it stores each group's snapshot point at its applied
//! index (the engine's checkpoint holds what those entries did), its hard state and the entries
//! after it ([`WalStore::checkpoint_records`]), so log segments before it are never needed.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use super::group::GroupStore;
use super::meta;
use crate::storage::record::Mutation;
use crate::storage::wal::Wal;
use crate::storage::{Engine, recovery};
use crate::time::now_ms;

pub const WHAT_ENTRIES: u8 = 1;
pub const WHAT_HARD_STATE: u8 = 2;
pub const WHAT_SNAPSHOT_POINT: u8 = 3;
pub const WHAT_MEMBERSHIP: u8 = 4;
pub const WHAT_TOMBSTONE: u8 = 5;

/// Entries kept in memory behind the applied index, so a follower a little behind catches up
/// from the log rather than by snapshot.
pub const ENTRIES_RETAINED: u64 = 4096;

/// Where a founding member's new group begins: its log starts after this index and term, with
/// the founders as members. Never at 0, so that the entries before it are compacted away on
/// every replica, and a replica added later is always sent a snapshot (it would otherwise
/// be sent the log from its first entry, without the founding membership, which is in no
/// entry).
pub const FOUNDING_INDEX: u64 = 5;
pub const FOUNDING_TERM: u64 = 5;

/// A group's state as recovery found it.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub hard: HardState,
    /// The log starts after this point; its conf state is the group's membership.
    pub point: SnapshotMetadata,
    pub entries: Vec<Entry>,
    /// Highest version of any put or tombstone of this partition replayed: every entry up to
    /// it was applied before the crash.
    pub applied: u64,
    /// The newest membership record: (applied index, membership).
    pub membership: Option<(u64, ConfState)>,
    /// Nodes removed from the group: (node, index of the change that removed it).
    pub removed: Vec<(u64, u64)>,
    /// Set when this node's replica was removed, and its data deleted: (index, replica id).
    pub tombstone: Option<(u64, u64)>,
}

impl Recovered {
    /// Whether anything of a group was ever recorded here (besides a tombstone).
    pub fn initialized(&self) -> bool {
        self.point.index > 0
            || !self.entries.is_empty()
            || self.hard.term > 0
            || self.membership.is_some()
    }
}

/// Recovers a cluster core's data from `dir` into `engine`, and each Raft group's state
/// from the raft records met on the way (in log order). A key's version is the Raft index
/// that wrote it, so the highest version of a partition replayed is its applied index: every
/// entry up to it was applied before the crash.
pub fn recover(
    dir: &Path,
    engine: &mut dyn Engine,
    partitions: u32,
    salvage: bool,
) -> Result<(recovery::Report, HashMap<u32, Recovered>), recovery::RecoveryError> {
    let mut raft = HashMap::new();
    let mut observe = |m: &Mutation| match m {
        Mutation::Raft { partition, what, body } => replay(&mut raft, *partition, *what, body),
        Mutation::Put { .. } | Mutation::Delete { .. } | Mutation::Index { .. } => {
            let r: &mut Recovered =
                raft.entry(meta::partition_of(m.key(), partitions)).or_default();
            r.applied = r.applied.max(m.version());
        }
        _ => {}
    };
    let report = recovery::recover_observed(dir, engine, salvage, now_ms(), &mut observe)?;
    Ok((report, raft))
}

/// Folds one raft record into the per-partition state (recovery, in log order).
pub fn replay(state: &mut HashMap<u32, Recovered>, partition: u32, what: u8, body: &Bytes) {
    let r = state.entry(partition).or_default();
    match what {
        WHAT_ENTRIES => {
            for entry in decode_entries(body) {
                let first = r.point.index + 1;
                let at = entry.index.saturating_sub(first) as usize;
                if entry.index < first {
                    continue;
                }
                r.entries.truncate(at);
                if r.entries.len() == at {
                    r.entries.push(entry);
                }
            }
        }
        WHAT_HARD_STATE => {
            if let Ok(hs) = HardState::parse_from_bytes(body) {
                r.hard = hs;
            }
        }
        WHAT_SNAPSHOT_POINT => {
            if let Ok(point) = SnapshotMetadata::parse_from_bytes(body) {
                r.entries.retain(|e| e.index > point.index);
                if r.entries.first().is_some_and(|e| e.index != point.index + 1) {
                    r.entries.clear();
                }
                r.applied = r.applied.max(point.index);
                if r.tombstone.is_some_and(|(at, _)| point.index > at) {
                    r.tombstone = None;
                }
                if r.membership.as_ref().is_some_and(|(at, _)| *at < point.index) {
                    r.membership = None;
                }
                r.point = point;
            }
        }
        WHAT_MEMBERSHIP => {
            if let Some((index, removed, conf)) = decode_membership(body) {
                r.applied = r.applied.max(index);
                r.removed = removed;
                r.membership = Some((index, conf));
            }
        }
        WHAT_TOMBSTONE => {
            let u64_at = |at: usize| {
                body.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            if let (Some(index), Some(id)) = (u64_at(0), u64_at(8)) {
                *r = Recovered { tombstone: Some((index, id)), ..Recovered::default() };
            }
        }
        _ => {}
    }
}

pub fn encode_membership(index: u64, removed: &[(u64, u64)], conf: &ConfState) -> Bytes {
    let mut out = Vec::with_capacity(12 + 16 * removed.len() + 32);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(removed.len() as u32).to_le_bytes());
    for (node, at) in removed {
        out.extend_from_slice(&node.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
    }
    out.extend_from_slice(&conf.write_to_bytes().expect("conf state encodes"));
    Bytes::from(out)
}

type Membership = (u64, Vec<(u64, u64)>, ConfState);

fn decode_membership(body: &[u8]) -> Option<Membership> {
    let u64_at =
        |at: usize| body.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let index = u64_at(0)?;
    let count = body.get(8..12).map(|b| u32::from_le_bytes(b.try_into().unwrap()))? as usize;
    let mut removed = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        removed.push((u64_at(12 + 16 * i)?, u64_at(20 + 16 * i)?));
    }
    let conf = ConfState::parse_from_bytes(body.get(12 + 16 * count..)?).ok()?;
    Some((index, removed, conf))
}

fn decode_entries(body: &Bytes) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        let len = u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
        at += 4;
        let Some(bytes) = body.get(at..at + len) else { break };
        match Entry::parse_from_bytes(bytes) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        at += len;
    }
    out
}

fn encode_entries(entries: &[Entry]) -> Bytes {
    let mut out = Vec::new();
    for e in entries {
        let bytes = e.write_to_bytes().expect("entry encodes");
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Bytes::from(out)
}

pub struct WalStore {
    partition: u32,
    hard: HardState,
    /// The log starts after `point.index`.
    point: SnapshotMetadata,
    entries: Vec<Entry>,
    /// The membership as of the applied index.
    conf: ConfState,
    /// Nodes removed from the group, with the index of the change that removed each.
    removed: Vec<(u64, u64)>,
    wal: Option<Rc<Wal>>,
    /// A snapshot built for a follower that fell behind the retained log.
    pub built: Option<Snapshot>,
    /// raft-rs asked for a snapshot nothing has built yet (`Storage::snapshot` takes `&self`);
    /// the driver builds it after the round.
    pub snapshot_wanted: Cell<bool>,
}

impl WalStore {
    /// A group with this membership and the state recovery found (empty for a new group).
    pub fn new(
        partition: u32,
        voters: Vec<u64>,
        recovered: Recovered,
        wal: Option<Rc<Wal>>,
    ) -> WalStore {
        let Recovered { mut hard, mut point, entries, applied, membership, removed, .. } =
            recovered;
        let founding = membership.is_none()
            && point.conf_state.as_ref().is_none_or(|c| c.voters.is_empty())
            && !voters.is_empty();
        let conf = match membership {
            Some((_, conf)) => conf,
            None if !founding => point.get_conf_state().clone(),
            None => ConfState { voters, ..Default::default() },
        };
        if founding && point.index == 0 && entries.is_empty() && hard.term == 0 {
            point.index = FOUNDING_INDEX;
            point.term = FOUNDING_TERM;
            hard.term = FOUNDING_TERM;
        }
        point.set_conf_state(conf.clone());
        // Entries applied before the crash were committed, whatever the hard state managed to
        // record.
        let last = entries.last().map_or(point.index, |e| e.index);
        hard.commit = hard.commit.max(applied.min(last)).max(point.index);
        WalStore {
            partition,
            hard,
            point,
            entries,
            conf,
            removed,
            wal,
            built: None,
            snapshot_wanted: Cell::new(false),
        }
    }

    fn log(&mut self, what: u8, body: Bytes) -> raft::Result<()> {
        let Some(wal) = &self.wal else { return Ok(()) };
        let m = Mutation::Raft { partition: self.partition, what, body };
        match wal.append(&m) {
            Ok(_) => Ok(()),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(
                std::io::Error::other(e.to_string()),
            )))),
        }
    }

    pub fn first_index_now(&self) -> u64 {
        self.point.index + 1
    }

    pub fn last_index_now(&self) -> u64 {
        self.point.index + self.entries.len() as u64
    }

    pub fn conf_state(&self) -> ConfState {
        self.conf.clone()
    }

    /// Records where the log starts now, with the membership (a new group's beginning).
    pub fn record_point(&mut self) -> raft::Result<()> {
        let mut point = self.point.clone();
        point.set_conf_state(self.conf.clone());
        self.log(WHAT_SNAPSHOT_POINT, Bytes::from(point.write_to_bytes().expect("encodes")))
    }

    /// Records the membership a change applied at `index` made, durably with the round.
    pub fn set_membership(&mut self, index: u64, conf: ConfState) -> raft::Result<()> {
        let before = members(&self.conf);
        let after = members(&conf);
        for gone in before.iter().filter(|n| !after.contains(n)) {
            self.removed.retain(|(n, _)| n != gone);
            self.removed.push((*gone, index));
        }
        // A node added back is a member again, not a removed one.
        self.removed.retain(|(n, _)| !after.contains(n));
        self.log(WHAT_MEMBERSHIP, encode_membership(index, &self.removed, &conf))?;
        self.conf = conf;
        // A snapshot records the membership it was built under: one from before is stale.
        self.built = None;
        Ok(())
    }

    /// Nodes removed from the group: (node, index of the change that removed it).
    pub fn removed(&self) -> &[(u64, u64)] {
        &self.removed
    }

    /// The index at which `node` was removed from the group, if it was and is not back.
    pub fn removed_at(&self, node: u64) -> Option<u64> {
        self.removed.iter().find(|(n, _)| *n == node).map(|(_, at)| *at)
    }

    /// Records that replica `id` (this node's) left the group at `index`; its data is
    /// deleted next.
    pub fn record_tombstone(&mut self, index: u64, id: u64) -> raft::Result<()> {
        self.log(WHAT_TOMBSTONE, tombstone_body(index, id))
    }

    /// Records the replicas removed before a snapshot just applied at `index`, as its sender
    /// listed them: a replica caught up by snapshot may lead later, and must neither give a
    /// removed replica's id again nor fail to answer that replica with a tombstone.
    pub fn install_removed(&mut self, index: u64, removed: Vec<(u64, u64)>) -> raft::Result<()> {
        self.removed = removed;
        self.log(WHAT_MEMBERSHIP, encode_membership(index, &self.removed, &self.conf))
    }

    /// Term of entry `index` if it is still held (or is the compaction point).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.point.index {
            return Some(self.point.term);
        }
        let first = self.first_index_now();
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize).map(|e| e.term)
    }

    /// Drops entries up to `index` (applied, and beyond what followers should need) from
    /// memory. Nothing is logged: a restart replays from the last checkpoint's point.
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.point.index || index > self.last_index_now() {
            return;
        }
        let Some(term) = self.term_of(index) else { return };
        let drop = (index - self.point.index) as usize;
        self.entries.drain(..drop);
        self.point.index = index;
        self.point.term = term;
    }

    /// Records for a checkpoint taken with this group applied up to `applied`: the point
    /// there, the hard state and every entry after it.
    pub fn checkpoint_records(&self, applied: u64) -> Vec<Mutation> {
        let mut point = self.point.clone();
        if let Some(term) = self.term_of(applied).filter(|_| applied >= point.index) {
            point.index = applied;
            point.term = term;
        }
        let later: Vec<Entry> =
            self.entries.iter().filter(|e| e.index > point.index).cloned().collect();
        let raft = |what, body| Mutation::Raft { partition: self.partition, what, body };
        point.set_conf_state(self.conf.clone());
        let mut out = vec![
            raft(WHAT_SNAPSHOT_POINT, Bytes::from(point.write_to_bytes().expect("encodes"))),
            raft(WHAT_HARD_STATE, Bytes::from(self.hard.write_to_bytes().expect("encodes"))),
            raft(WHAT_MEMBERSHIP, encode_membership(point.index, &self.removed, &self.conf)),
        ];
        if !later.is_empty() {
            out.push(raft(WHAT_ENTRIES, encode_entries(&later)));
        }
        out
    }

    /// A snapshot of the state machine at `index` (`data` built by the caller from the
    /// engine at exactly that applied index, when the membership was `conf`), kept until a
    /// follower takes it.
    pub fn set_built(&mut self, index: u64, conf: ConfState, data: Bytes) {
        let Some(term) = self.term_of(index) else { return };
        let mut snapshot = Snapshot { data, ..Default::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf);
        self.built = Some(snapshot);
        self.snapshot_wanted.set(false);
    }
}

impl Storage for WalStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard.clone(), conf_state: self.conf_state() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index_now();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_now() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out: Vec<Entry> =
            self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.point.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(index).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_now())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_now())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the log's start would leave its follower a gap before the
        // first entry still held: it would install it, ask for the next entry, and be sent
        // the same snapshot again, forever.
        // One built before `to` was added would be refused by it (raft-rs installs only a
        // snapshot whose membership names the receiver), and sent again, forever.
        let usable = |s: &&Snapshot| {
            let index = s.get_metadata().index;
            let names_it = members(s.get_metadata().get_conf_state()).contains(&to);
            index >= request_index && index >= self.point.index && names_it
        };
        match self.built.as_ref().filter(usable) {
            Some(s) => Ok(s.clone()),
            _ => {
                // Built asynchronously by the driver (values may have to be read from disk);
                // raft-rs asks again on its next attempt.
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}

impl GroupStore for WalStore {
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata().clone();
        self.log(WHAT_SNAPSHOT_POINT, Bytes::from(meta.write_to_bytes().expect("encodes")))?;
        self.entries.retain(|e| e.index > meta.index);
        if self.entries.first().is_some_and(|e| e.index != meta.index + 1) {
            self.entries.clear();
        }
        self.hard.commit = self.hard.commit.max(meta.index);
        self.conf = meta.get_conf_state().clone();
        self.point = meta;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else { return Ok(()) };
        let first = self.first_index_now();
        if first_new < first {
            // raft-rs never re-sends compacted entries to its own store.
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.log(WHAT_ENTRIES, encode_entries(entries))?;
        let keep = (first_new - first) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> raft::Result<()> {
        self.log(WHAT_HARD_STATE, Bytes::from(hs.write_to_bytes().expect("encodes")))?;
        self.hard = hs.clone();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        self.hard.commit = commit;
        Ok(())
    }

    fn membership(&self) -> &ConfState {
        &self.conf
    }
}

/// Every node in a membership, in any role.
pub fn members(conf: &ConfState) -> Vec<u64> {
    let mut all: Vec<u64> = conf
        .voters
        .iter()
        .chain(&conf.learners)
        .chain(&conf.voters_outgoing)
        .chain(&conf.learners_next)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn tombstone_body(index: u64, id: u64) -> Bytes {
    let mut body = index.to_le_bytes().to_vec();
    body.extend_from_slice(&id.to_le_bytes());
    Bytes::from(body)
}

/// A tombstone record stating replica `id` was removed at `index`, for a checkpoint to carry.
pub fn tombstone_record(partition: u32, index: u64, id: u64) -> Mutation {
    Mutation::Raft { partition, what: WHAT_TOMBSTONE, body: tombstone_body(index, id) }
}

/// A membership record for a snapshot's data: the removed replicas, which the snapshot's
/// metadata cannot carry.
pub fn membership_record(
    partition: u32,
    index: u64,
    removed: &[(u64, u64)],
    conf: &ConfState,
) -> Mutation {
    Mutation::Raft {
        partition,
        what: WHAT_MEMBERSHIP,
        body: encode_membership(index, removed, conf),
    }
}

/// The removed replicas a membership record (from a snapshot's data) lists.
pub fn removed_in(body: &[u8]) -> Option<Vec<(u64, u64)>> {
    decode_membership(body).map(|(_, removed, _)| removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: Bytes::from(format!("{index}@{term}")), ..Default::default() }
    }

    fn body(m: &Mutation) -> (u32, u8, Bytes) {
        match m {
            Mutation::Raft { partition, what, body } => (*partition, *what, body.clone()),
            other => panic!("not raft: {other:?}"),
        }
    }

    #[test]
    fn replay_overwrites_conflicting_suffix_and_honours_points() {
        let mut state = HashMap::new();
        let entries = |es: &[Entry]| encode_entries(es);
        replay(&mut state, 3, WHAT_ENTRIES, &entries(&[entry(1, 1), entry(2, 1), entry(3, 1)]));
        // A new leader's entry 3 of term 2 replaces the old 3.
        replay(&mut state, 3, WHAT_ENTRIES, &entries(&[entry(3, 2), entry(4, 2)]));
        let r = &state[&3];
        let got: Vec<(u64, u64)> = r.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        let point = SnapshotMetadata { index: 2, term: 1, ..Default::default() };
        replay(&mut state, 3, WHAT_SNAPSHOT_POINT, &Bytes::from(point.write_to_bytes().unwrap()));
        let r = &state[&3];
        assert_eq!(r.entries.first().map(|e| e.index), Some(3));
        assert_eq!(r.applied, 2);
        // Garbage after the last whole entry is ignored, not a panic.
        let mut torn = entries(&[entry(5, 2)]).to_vec();
        torn.extend_from_slice(&[9, 0, 0, 0, 1]);
        replay(&mut state, 3, WHAT_ENTRIES, &Bytes::from(torn));
        assert_eq!(state[&3].entries.last().map(|e| e.index), Some(5));
    }

    #[test]
    fn checkpoint_records_rebuild_the_store() {
        // A founding group's log starts after the founding point.
        let f = FOUNDING_INDEX;
        let mut s = WalStore::new(7, vec![1, 2, 3], Recovered::default(), None);
        assert_eq!(s.first_index_now(), f + 1);
        s.append(&[entry(f + 1, 6), entry(f + 2, 6), entry(f + 3, 7)]).unwrap();
        let hs = HardState { term: 7, vote: 1, commit: f + 3, ..Default::default() };
        s.set_hard_state(&hs).unwrap();
        let mut state = HashMap::new();
        for m in s.checkpoint_records(f + 2) {
            let (p, what, body) = body(&m);
            replay(&mut state, p, what, &body);
        }
        let back = WalStore::new(7, vec![9], state.remove(&7).unwrap(), None);
        assert_eq!(back.first_index_now(), f + 3);
        assert_eq!(back.last_index_now(), f + 3);
        assert_eq!(back.term(f + 2).unwrap(), 6);
        assert_eq!(back.term(f + 3).unwrap(), 7);
        assert_eq!(back.initial_state().unwrap().hard_state, hs);
        assert_eq!(back.conf_state().voters, vec![1, 2, 3], "membership comes from the log");
        assert!(matches!(back.term(f + 1), Err(raft::Error::Store(StorageError::Compacted))));
    }

    #[test]
    fn membership_and_removals_survive_replay_and_a_tombstone_ends_the_group() {
        let f = FOUNDING_INDEX;
        let mut s = WalStore::new(2, vec![1, 2, 3], Recovered::default(), None);
        let joint = ConfState {
            voters: vec![1, 2, 4],
            voters_outgoing: vec![1, 2, 3],
            ..Default::default()
        };
        let after = ConfState { voters: vec![1, 2, 4], ..Default::default() };
        let mut state = HashMap::new();
        for (index, conf) in [(f + 2, joint), (f + 3, after.clone())] {
            s.set_membership(index, conf.clone()).unwrap();
            let body = encode_membership(index, s.removed(), &conf);
            replay(&mut state, 2, WHAT_MEMBERSHIP, &body);
        }
        assert_eq!(s.removed_at(3), Some(f + 3), "node 3 left when the joint state was left");
        let r = state[&2].clone();
        assert_eq!(r.applied, f + 3);
        let back = WalStore::new(2, vec![1, 2, 3], r, None);
        assert_eq!(back.conf_state(), after, "the recorded membership wins over the founders");
        assert_eq!(back.removed_at(3), Some(f + 3));
        // This node's removal: the group is gone, until a snapshot brings it back later.
        replay(&mut state, 2, WHAT_TOMBSTONE, &tombstone_body(f + 9, 3));
        assert_eq!(state[&2].tombstone, Some((f + 9, 3)));
        assert!(!state[&2].initialized());
        let point = SnapshotMetadata { index: f + 20, term: 9, ..Default::default() };
        replay(&mut state, 2, WHAT_SNAPSHOT_POINT, &Bytes::from(point.write_to_bytes().unwrap()));
        assert_eq!(state[&2].tombstone, None);
        assert!(decode_membership(&[1, 2, 3]).is_none(), "a torn record is no membership");
    }

    #[test]
    fn compaction_keeps_terms_and_refuses_compacted_reads() {
        let mut s = WalStore::new(1, Vec::new(), Recovered::default(), None);
        s.append(&(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>()).unwrap();
        s.compact_to(6);
        assert_eq!(s.first_index_now(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(s.entries(5, 8, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(s.entries(7, 11, None, GetEntriesContext::empty(false)).unwrap().len(), 4);
        // A conflicting append from index 9 replaces the tail.
        s.append(&[entry(9, 7)]).unwrap();
        assert_eq!(s.last_index_now(), 9);
        assert_eq!(s.term(9).unwrap(), 7);
    }

    /// A follower (replica 2 of 1, 2, 3) with a few committed entries, as raft-rs sees it.
    fn follower() -> super::super::group::Group<WalStore> {
        use super::super::group::{Group, config};
        let f = FOUNDING_INDEX;
        let mut s = WalStore::new(4, vec![1, 2, 3], Recovered::default(), None);
        s.append(&[entry(f + 1, 2), entry(f + 2, 2), entry(f + 3, 2)]).unwrap();
        s.set_hard_state(&HardState { term: 2, vote: 1, commit: f + 2, ..Default::default() })
            .unwrap();
        let mut c = config(2);
        c.applied = f;
        Group::new(4, &c, s).unwrap()
    }

    fn message(kind: raft::eraftpb::MessageType, term: u64) -> raft::eraftpb::Message {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(kind);
        (m.from, m.to, m.term) = (1, 2, term);
        m
    }

    #[test]
    fn messages_raft_rs_would_abort_on_are_refused() {
        use super::super::group::Stepped;
        use raft::eraftpb::MessageType::*;
        let refused = |g: &mut super::super::group::Group<WalStore>, m, what: &str| match g.step(m)
        {
            Stepped::Refused(why) => assert!(why.contains(what), "{why}"),
            other => panic!("{what}: {other:?}"),
        };
        let mut g = follower();
        let f = FOUNDING_INDEX;
        let mut beat = message(MsgHeartbeat, 2);
        beat.commit = 1 << 40;
        refused(&mut g, beat, "past the log's end");
        refused(&mut g, message(MsgRequestVote, 0), "without a term");
        refused(&mut g, message(MsgRequestPreVoteResponse, 0), "without a term");
        let mut gap = message(MsgAppend, 2);
        (gap.index, gap.log_term) = (f + 3, 2);
        gap.entries = vec![entry(f + 4, 2), entry(f + 6, 2)].into();
        refused(&mut g, gap, "out of sequence");
        let mut wrap = message(MsgAppend, 2);
        wrap.index = u64::MAX;
        wrap.entries = vec![entry(0, 2)].into();
        refused(&mut g, wrap, "out of sequence");
        for (cs, what) in [
            (ConfState { voters: vec![], ..Default::default() }, "no voters"),
            (ConfState { voters: vec![1, 2], learners: vec![2], ..Default::default() }, "learner"),
            (
                ConfState { voters: vec![1, 2], learners_next: vec![3], ..Default::default() },
                "next",
            ),
            (ConfState { voters: vec![2], auto_leave: true, ..Default::default() }, "auto-leave"),
        ] {
            let mut snap = message(MsgSnapshot, 3);
            let meta = snap.mut_snapshot().mut_metadata();
            (meta.index, meta.term, meta.conf_state) = (f + 50, 3, Some(cs).into());
            refused(&mut g, snap, what);
        }
        // A well-formed message still steps, and the group is intact.
        let mut beat = message(MsgHeartbeat, 2);
        beat.commit = f + 3;
        assert_eq!(g.step(beat), Stepped::Done);
        assert_eq!(g.commit_index(), f + 3);
    }

    /// Random messages of every kind, with random terms, indexes and entries: raft-rs never
    /// takes the node down. Should one still make raft-rs panic, the group is rebuilt from
    /// its store and goes on.
    #[test]
    fn random_peer_messages_never_abort() {
        use super::super::group::{Group, Stepped, config};
        use raft::eraftpb::MessageType;
        for seed in crate::testing::seeds("COREKV_HOSTILE_SEED", 100) {
            eprintln!("hostile raft messages: seed {seed} (replay: COREKV_HOSTILE_SEED={seed})");
            let mut rng = crate::testing::Rng::new(seed);
            let mut g = follower();
            let (mut refused, mut panicked) = (0, 0);
            for _ in 0..2000 {
                use MessageType::*;
                let peer_kinds = [
                    MsgAppend,
                    MsgAppendResponse,
                    MsgRequestVote,
                    MsgRequestVoteResponse,
                    MsgRequestPreVote,
                    MsgRequestPreVoteResponse,
                    MsgSnapshot,
                    MsgHeartbeat,
                    MsgHeartbeatResponse,
                    MsgTimeoutNow,
                ];
                let kind = match rng.percent(85) {
                    true => peer_kinds[rng.below(peer_kinds.len() as u64) as usize],
                    false => {
                        protobuf::ProtobufEnum::from_i32(rng.below(20) as i32).unwrap_or_default()
                    }
                };
                let small = |rng: &mut crate::testing::Rng| match rng.below(4) {
                    0 => 0,
                    1 => rng.next_u64(),
                    _ => FOUNDING_INDEX + rng.below(8),
                };
                let term = if rng.percent(10) { 0 } else { rng.range(1, 8) };
                let mut m = message(kind, term);
                m.from = [1, 3, 7, 0][rng.below(4) as usize];
                (m.index, m.log_term, m.commit) = (small(&mut rng), rng.below(8), small(&mut rng));
                (m.reject, m.reject_hint) = (rng.percent(30), small(&mut rng));
                let first = m.index.wrapping_add(1);
                let n = rng.below(4);
                m.entries = (0..n).map(|i| entry(first.wrapping_add(i), rng.below(8))).collect();
                if kind == MessageType::MsgSnapshot {
                    let meta = m.mut_snapshot().mut_metadata();
                    (meta.index, meta.term) = (small(&mut rng), rng.below(8));
                    let ids = |rng: &mut crate::testing::Rng| -> Vec<u64> {
                        (0..rng.below(3)).map(|_| rng.below(4)).collect()
                    };
                    meta.conf_state = Some(ConfState {
                        voters: ids(&mut rng),
                        learners: ids(&mut rng),
                        voters_outgoing: ids(&mut rng),
                        learners_next: ids(&mut rng),
                        auto_leave: rng.percent(20),
                        ..Default::default()
                    })
                    .into();
                }
                match g.step(m) {
                    Stepped::Done => {}
                    Stepped::Refused(_) => refused += 1,
                    Stepped::Panicked(_) => {
                        panicked += 1;
                        let store = g.into_store();
                        let mut c = config(2);
                        c.applied = FOUNDING_INDEX;
                        g = Group::new(4, &c, store).expect("rebuilt from the store");
                    }
                }
                if rng.percent(5) {
                    // Elections too, so candidate and leader paths see the messages.
                    (0..rng.below(25)).for_each(|_| g.tick());
                }
                // The driver's part of a round: install a snapshot, report persistence and
                // what was applied.
                if g.has_ready()
                    && let Ok(mut d) = g.drive()
                {
                    let installed = d.snapshot.take().map(|snap| {
                        let index = snap.get_metadata().index;
                        g.store_mut().apply_snapshot(snap).expect("a checked snapshot installs");
                        index
                    });
                    if let Some(n) = d.persist {
                        g.persisted(n);
                    }
                    if let Some(last) = d.committed.last().map(|e| e.index).or(installed) {
                        g.applied(last);
                    }
                }
            }
            let leader = g.is_leader();
            eprintln!("seed {seed}: {refused} refused, {panicked} rebuilt, leading {leader}");
            assert!(g.last_index() >= FOUNDING_INDEX + 3, "seed {seed}: the log survived");
        }
    }
}
