//! The cluster: partitions replicated by Raft groups (raft-rs) across nodes.
//!
//! - placement: `corekv_schema::ring` (partition → replicas by consistent hashing);
//! - [`group`]: one Raft group over raft-rs, as a state machine with no I/O;
//! - [`store`]: a group's log and hard state in the core's WAL;
//! - [`replica`]: one core's groups and the task that drives them, run under seeded
//!   simulation by `sim` (tests only: fake links, real stores, crashes and restarts);
//! - [`transport`]: node-to-node links (Raft batches, forwarded requests);
//! - [`health`]: heartbeats with each node's figures, and what this node heard of its peers;
//! - [`meta`]: the metadata group's keys (nodes, partition map) and their encoding;
//! - [`plan`]: the members and the membership operation under way, as the metadata group
//!   records them;
//! - [`moves`]: the next membership change that moves a partition's replicas to a target;
//! - [`command`]: what a Raft entry carries.
//!
//! This file holds the Raft counters that the driver and the links both count into.
//!
//! See docs/CLUSTER.md.

pub mod command;
pub mod group;
pub mod health;
pub mod meta;
pub mod moves;
pub mod plan;
pub mod replica;
#[cfg(test)]
mod sim;
pub mod store;
pub mod transport;

use crate::counters::counters;

counters!(
    /// Counters for `/metrics`.
    RaftCounters => CounterValues {
        proposals,
        proposals_failed,
        leader_changes,
        elections_won,
        snapshots_sent,
        /// Snapshot data streamed to followers.
        snapshot_bytes_sent,
        snapshots_installed,
        read_indexes,
        /// Sum and count of proposal-to-apply times, microseconds.
        commit_us_sum,
        commits,
        /// Raft frames the links dropped (link down, or its queue full).
        link_frames_dropped,
        /// Peers' Raft messages refused: ones raft-rs would abort on, or bad snapshots.
        messages_refused,
        /// Peers' Raft messages dropped because the core's inbox was full.
        inbox_dropped,
    }
);
