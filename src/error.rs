//! Errors that cross layers: why a node could not start or had to stop.
//!
//! Request-level failures never appear here; they are `Reply::Error` values on the wire.

use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "data directory {path} is in use by another corekv node (lock file {path}/LOCK is held)"
    )]
    DataDirLocked { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("asked for {wanted} cores but this process may run on {available} CPUs")]
    TooManyCores { wanted: usize, available: usize },
    #[error("--cpus lists CPU {cpu}, which this process may not run on ({available} CPUs may)")]
    CpuUnavailable { cpu: usize, available: usize },
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes; glommio needs at least {needed_bytes}. Raise it \
         (ulimit -l, or LimitMEMLOCK in systemd; see tuning/README.md) or run as root"
    )]
    MemlockTooLow { limit_bytes: u64, needed_bytes: u64 },
    #[error("data directory {path} was created with {found}; this node has {wanted}")]
    Layout { path: PathBuf, found: String, wanted: String },
    #[error("core {core}: {message}")]
    Core { core: usize, message: String },
    #[error(
        "data directory {path} belongs to node {node}, which was removed from its cluster ({why}); \
         a removed node never serves again. Start a new node with a new --node-id and an empty \
         data directory instead"
    )]
    Removed { path: PathBuf, node: u64, why: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("users: {0}")]
    Users(String),
    #[error("joining through {member}: {why}")]
    Join { member: String, why: String },
}
