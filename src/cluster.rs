//! The cluster: partitions replicated by Raft groups (raft-rs) across nodes.
//!
//! Built so far: placement (`corekv_schema::ring`: partition → replicas by consistent hashing)
//! and the per-group Raft driver ([`group`]), proven by a deterministic simulation of several
//! nodes over a seeded lossy network ([`sim`], tests only). Not wired into the node yet: the
//! Raft log in the core's WAL, node-to-node frames, the metadata group and the serve flags
//! come next (docs/CLUSTER.md).

pub mod command;
pub mod group;
pub mod replica;
#[cfg(test)]
mod sim;
pub mod store;
pub mod transport;
