//! corekv: a thread-per-core key-value store on io_uring (glommio).
//!
//! # Map, by layer (each names only the layers below it)
//!
//! - [`node`]: boot (pin cores, recover, bind, publish topology) and graceful shutdown.
//! - [`net`] (per-core accept loops; native, Redis and peer connections) and [`admin`] (the
//!   HTTP API: `/api/*`, Prometheus `/metrics`). [`cli`] and [`devcluster`] are commands.
//! - [`shard`]: `Core`, what one core owns; routing a request to its core over the bounded
//!   channel mesh ([`shard::mesh`]), or in a cluster to its partition's leader.
//! - [`cluster`]: Raft groups driving a core's store; node links; the metadata keys.
//! - [`storage`]: the `Engine` seam, [`storage::MemEngine`], the write-ahead log, recovery,
//!   checkpoints, and [`storage::store::Store`]: a core's data and everything done to it.
//! - [`config`], [`error`], [`time`], [`waiting`], [`shutdown`], [`tls`], [`resp`] (Redis
//!   commands as plans over native operations), [`auth`] (users, permissions): leaves.
//! - `corekv_schema` (crate `schema/`): the wire protocol, framing and key placement.
//!
//! `tests/it/tidy.rs` checks the layers and that no two files import each other, directly
//! or around a circle (docs/ARCHITECTURE.md, "Layers").
//!
//! # Threading
//!
//! One glommio `LocalExecutor` per core, pinned. Nothing on the request path is shared
//! between cores: no `Mutex`, no `Arc<RwLock>`; cores talk only over bounded channels.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod devcluster;
pub mod error;
pub mod net;
pub mod node;
pub mod resp;
pub mod shard;
pub mod shutdown;
pub mod storage;
#[cfg(test)]
pub mod testing;
pub mod time;
pub mod tls;
pub mod waiting;
