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
//!
//! Appends return at once; the driver waits for the WAL once per round before it tells
//! raft-rs the round is persisted. Recovery replays
//! the records in log order ([`Recovered`]): a later entries record overwrites from its first
//! index on (a new leader's conflicting suffix), a snapshot point drops what it covers.
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

/// Entries kept in memory behind the applied index, so a follower a little behind catches up
/// from the log rather than by snapshot.
pub const ENTRIES_RETAINED: u64 = 4096;

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
                r.point = point;
            }
        }
        _ => {}
    }
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
    /// The log starts after `point.index`; `point.conf_state` is the membership.
    point: SnapshotMetadata,
    entries: Vec<Entry>,
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
        let Recovered { mut hard, mut point, entries, applied } = recovered;
        if point.conf_state.as_ref().is_none_or(|c| c.voters.is_empty()) {
            point.set_conf_state(ConfState { voters, ..Default::default() });
        }
        // Entries applied before the crash were committed, whatever the hard state managed to
        // record.
        let last = entries.last().map_or(point.index, |e| e.index);
        hard.commit = hard.commit.max(applied.min(last)).max(point.index);
        WalStore {
            partition,
            hard,
            point,
            entries,
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
        self.point.get_conf_state().clone()
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
        let mut out = vec![
            raft(WHAT_SNAPSHOT_POINT, Bytes::from(point.write_to_bytes().expect("encodes"))),
            raft(WHAT_HARD_STATE, Bytes::from(self.hard.write_to_bytes().expect("encodes"))),
        ];
        if !later.is_empty() {
            out.push(raft(WHAT_ENTRIES, encode_entries(&later)));
        }
        out
    }

    /// A snapshot of the state machine at `index` (`data` built by the caller from the
    /// engine at exactly that applied index), kept until a follower takes it.
    pub fn set_built(&mut self, index: u64, data: Bytes) {
        let Some(term) = self.term_of(index) else { return };
        let mut snapshot = Snapshot { data, ..Default::default() };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state());
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

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the log's start would leave its follower a gap before the
        // first entry still held: it would install it, ask for the next entry, and be sent
        // the same snapshot again, forever.
        let usable = |s: &&Snapshot| {
            let index = s.get_metadata().index;
            index >= request_index && index >= self.point.index
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
        let mut s = WalStore::new(7, vec![1, 2, 3], Recovered::default(), None);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
        let hs = HardState { term: 2, vote: 1, commit: 3, ..Default::default() };
        s.set_hard_state(&hs).unwrap();
        let mut state = HashMap::new();
        for m in s.checkpoint_records(2) {
            let (p, what, body) = body(&m);
            replay(&mut state, p, what, &body);
        }
        let back = WalStore::new(7, vec![9], state.remove(&7).unwrap(), None);
        assert_eq!(back.first_index_now(), 3);
        assert_eq!(back.last_index_now(), 3);
        assert_eq!(back.term(2).unwrap(), 1);
        assert_eq!(back.term(3).unwrap(), 2);
        assert_eq!(back.initial_state().unwrap().hard_state, hs);
        assert_eq!(back.conf_state().voters, vec![1, 2, 3], "membership comes from the log");
        assert!(matches!(back.term(1), Err(raft::Error::Store(StorageError::Compacted))));
    }

    #[test]
    fn compaction_keeps_terms_and_refuses_compacted_reads() {
        let mut s = WalStore::new(1, vec![1], Recovered::default(), None);
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
}
