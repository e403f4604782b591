//! corekv: a thread-per-core key-value store on io_uring (glommio).
//!
//! # Map (request path order)
//!
//! - [`config`]: flags, the TOML file, defaults and every limit.
//! - [`node`]: boot (pin cores, bind, publish topology) and graceful shutdown.
//! - [`net`]: per-core accept loops and pipelined connections (native and Redis protocol).
//! - [`resp`]: the Redis protocol (RESP2): parsing, and Redis commands over native operations.
//! - [`shard`]: `Core`, everything one core owns; routing to the owning core over the
//!   bounded channel mesh ([`shard::mesh`]).
//! - [`storage`]: the `Engine` seam, [`storage::MemEngine`] (index and value cache), the
//!   write-ahead log, recovery, checkpoints.
//! - `corekv_schema` (crate `schema/`): the wire protocol, framing and key placement.
//! - [`admin`]: the HTTP admin API (hyper): `/api/*` routes, Prometheus `/metrics`, health.
//! - [`cli`]: the `corekv get|set|del|cas|ping|stats` client commands.
//!
//! # Dependency rule
//!
//! `storage` imports only `config`, `error` and the schema crate; `resp` only the schema
//! crate. `shard` wires storage to the mesh. `net` reaches data only through `shard::Core`.
//! `node` wires everything at boot. The `tidy` integration test checks these imports.
//!
//! # Threading
//!
//! One glommio `LocalExecutor` per core, pinned. Nothing on the request path is shared
//! between cores: no `Mutex`, no `Arc<RwLock>`; cores talk only over bounded channels.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
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
pub mod waiting;
