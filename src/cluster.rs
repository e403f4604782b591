//! The cluster: partitions replicated by Raft groups (raft-rs) across nodes.
//!
//! - placement: `corekv_schema::ring` (partition → replicas by consistent hashing);
//! - [`group`]: one Raft group's driver over raft-rs, proven by [`sim`] (tests only);
//! - [`store`]: a group's log and hard state in the core's WAL;
//! - [`replica`]: one core's groups and the task that drives them;
//! - [`transport`]: node-to-node links (Raft batches, forwarded requests);
//! - [`health`]: heartbeats with each node's figures, and what this node heard of its peers;
//! - [`meta`]: the metadata group (nodes, partition map, epoch) and the topology clients get;
//! - [`command`]: what a Raft entry carries.
//!
//! See docs/CLUSTER.md.

pub mod command;
pub mod group;
pub mod health;
pub mod meta;
pub mod replica;
#[cfg(test)]
mod sim;
pub mod store;
pub mod transport;
