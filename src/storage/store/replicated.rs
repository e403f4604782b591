//! A store in cluster mode: applying a committed Raft entry (its operation, or its expiry
//! removals) with the entry's index as version and its leader's stamp as time, and building
//! and installing the snapshot of one partition's keys.
//!
//! Which keys belong to a partition is the caller's to say (a predicate): the store knows no
//! placement. Under `ExpiryRule::Logged` nothing here reads the local clock for what stays:
//! snapshots carry expired keys, and installs compare every key held.

use std::collections::HashSet;

use bytes::Bytes;
use corekv_schema::codec::{ErrorCode, Op, Reply};

use super::Store;
use crate::storage::record::{self, Mutation};
use crate::time::now_ms;

impl Store {
    /// Applies a committed entry's operation: version = its Raft index, time = the leader's
    /// stamp. A batch's ops apply in order with nothing between them; its write (a piece has
    /// at most one) takes the index as version. `answered`: someone waits for the reply;
    /// otherwise reads are skipped, since under the logged expiry rule they change nothing.
    pub async fn apply_replicated(
        &self,
        op: Op,
        stamp_ms: u64,
        index: u64,
        answered: bool,
    ) -> Reply {
        let Op::Batch(ops) = op else {
            return self.apply_one_replicated(op, stamp_ms, index).await;
        };
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            if !answered && matches!(op, Op::Get { .. }) {
                continue;
            }
            replies.push(self.apply_one_replicated(op, stamp_ms, index).await);
        }
        Reply::Batch(replies)
    }

    async fn apply_one_replicated(&self, op: Op, stamp_ms: u64, index: u64) -> Reply {
        self.engine.borrow_mut().next_version(index);
        self.execute_reply(op, stamp_ms).await
    }

    /// Applies a committed expiry entry: each key still at its version and expired at the
    /// leader's stamp is removed with a tombstone versioned with the entry's index.
    pub fn apply_expiry(&self, keys: Vec<(Bytes, u64)>, stamp_ms: u64, index: u64) -> Reply {
        let mut log = self.log();
        let mut engine = self.engine.borrow_mut();
        let replies = keys
            .into_iter()
            .map(|(key, version)| {
                engine.next_version(index);
                match engine.expire(&key, version, stamp_ms, &mut log) {
                    Ok(true) => Reply::Deleted { version },
                    Ok(false) => Reply::error(ErrorCode::NotFound, "not at that version, or live"),
                    Err(e) => Reply::error(ErrorCode::Unavailable, e),
                }
            })
            .collect();
        Reply::Batch(replies)
    }

    /// Every key `mine` selects that this replica holds, expired or not: under the logged
    /// rule only the log removes keys.
    fn keys_where(&self, mine: &dyn Fn(&[u8]) -> bool) -> Vec<Bytes> {
        let mut keys = Vec::new();
        let mut cursor = 0;
        loop {
            // Time 0: nothing counts as expired.
            let (found, next) = self.engine.borrow().scan(cursor, 1024, 0, mine);
            keys.extend(found);
            match next {
                Some(n) => cursor = n,
                None => return keys,
            }
        }
    }

    /// Every key `mine` selects, as put records with their exact versions and expiries (from
    /// the engine's own snapshot; values on disk only are read back), for a follower that
    /// needs a snapshot of one partition.
    pub async fn snapshot_where(&self, mine: &dyn Fn(&[u8]) -> bool) -> Result<Bytes, String> {
        self.materialize(self.listing_where(mine)).await
    }

    /// The first half of [`Store::snapshot_where`], at once: what the keys `mine` selects are
    /// now (values in memory, or where on disk they are).
    pub fn listing_where(&self, mine: &dyn Fn(&[u8]) -> bool) -> Vec<Mutation> {
        self.engine.borrow().snapshot_where(now_ms(), mine)
    }

    /// The second half: the listing as put records, values on disk read back. A value moved
    /// by compaction meanwhile fails the read (its old segment is gone), and so the build.
    pub async fn materialize(&self, entries: Vec<Mutation>) -> Result<Bytes, String> {
        let mut out = Vec::new();
        for m in entries {
            let put = match m {
                Mutation::Index { version, expires_at_ms, loc, .. } => {
                    let (data, key_len, _) = self
                        .read_put(loc, None)
                        .await
                        .map_err(|r| format!("reading a value for the snapshot: {}", r.name()))?;
                    Mutation::Put { data, key_len, version, expires_at_ms }
                }
                put @ Mutation::Put { .. } => put,
                _ => continue,
            };
            record::encode(&put, &mut out);
        }
        Ok(Bytes::from(out))
    }

    /// [`Store::load_where`], durable when this returns.
    pub async fn install_where(
        &self,
        mine: &dyn Fn(&[u8]) -> bool,
        data: &Bytes,
        index: u64,
    ) -> Result<(), String> {
        if let (Some(wal), Some(seq)) = (&self.wal, self.load_where(mine, data, index)?) {
            wal.wait(seq).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Replaces the keys `mine` selects with a snapshot's, taken at Raft `index`: tombstones
    /// (at `index`: above every version this replica holds, since it is behind the snapshot)
    /// for keys it lacks, then its puts with their own versions, all appended to the log.
    /// Returns the log position to wait for, for a caller that waits for more at once.
    pub fn load_where(
        &self,
        mine: &dyn Fn(&[u8]) -> bool,
        data: &Bytes,
        index: u64,
    ) -> Result<Option<u64>, String> {
        let now = now_ms();
        let mut incoming = Vec::new();
        let ending = record::scan(data, false, |m, _| incoming.push(m), |_, _, _| {});
        if ending != record::Ending::Clean {
            return Err(format!("damaged snapshot ({ending:?})"));
        }
        let present = self.keys_where(mine);
        let keep: HashSet<&[u8]> = incoming.iter().map(|m| m.key()).collect();
        let mut log = self.log();
        {
            let mut engine = self.engine.borrow_mut();
            for key in present.into_iter().filter(|k| !keep.contains(&k[..])) {
                engine.load(Mutation::Delete { key, version: index }, now, &mut log)?;
            }
            for m in incoming {
                engine.load(m, now, &mut log)?;
            }
        }
        Ok(log.last)
    }
}

/// Checks snapshot `data` before it is taken: it must be whole records, each the clock, or
/// a put or a delete of a key `mine` accepts (one partition's snapshot writes no other's).
pub fn check_snapshot_data(mine: &dyn Fn(&[u8]) -> bool, data: &Bytes) -> Result<(), String> {
    let mut flaw = None;
    let ending = record::scan(
        data,
        false,
        |m, _| {
            if flaw.is_some() {
                return;
            }
            match &m {
                // The clock rides with the partition its (empty) key falls in.
                Mutation::Clock { .. } => {}
                Mutation::Put { .. } | Mutation::Delete { .. } if mine(m.key()) => {}
                Mutation::Put { .. } | Mutation::Delete { .. } => {
                    flaw = Some("a key of another partition".to_string());
                }
                _ => flaw = Some("a record that is not a put or a delete".to_string()),
            }
        },
        |_, _, _| {},
    );
    if ending != record::Ending::Clean {
        return Err(format!("damaged data ({ending:?})"));
    }
    flaw.map_or(Ok(()), Err)
}
