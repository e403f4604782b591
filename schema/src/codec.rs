//! The typed protocol vocabulary and its FlatBuffers encoding.
//!
//! The node, the SDK and the load generator speak only these types; `generated::` stays an
//! implementation detail of this module (`codec/encode.rs`, `codec/decode.rs`). Decoding
//! verifies the buffer (untrusted input), checks [`Limits`], and returns keys and values as
//! zero-copy `Bytes` slices of the frame.
//!
//! Errors split by what the reader does next (see [`DecodeError::fatal`]): a buffer that fails
//! verification or names an unknown operation ends the connection; a well-formed request that
//! breaks a size limit is answered with `TooLarge` and the connection goes on.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, VerifierOptions, WIPOffset};

use crate::frame::{Limits, SizeError};
use crate::wire;

/// Typed error codes; one-to-one with `wire::ErrorCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NotFound,
    ConditionFailed,
    WrongNode,
    Overloaded,
    Unauthorized,
    TooLarge,
    BadRequest,
    Internal,
    ShuttingDown,
    Unavailable,
    OutcomeUnknown,
    Unauthenticated,
    PermissionDenied,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::NotFound,
        ErrorCode::ConditionFailed,
        ErrorCode::WrongNode,
        ErrorCode::Overloaded,
        ErrorCode::Unauthorized,
        ErrorCode::TooLarge,
        ErrorCode::BadRequest,
        ErrorCode::Internal,
        ErrorCode::ShuttingDown,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
    ];

    fn to_wire(self) -> wire::ErrorCode {
        match self {
            ErrorCode::NotFound => wire::ErrorCode::NotFound,
            ErrorCode::ConditionFailed => wire::ErrorCode::ConditionFailed,
            ErrorCode::WrongNode => wire::ErrorCode::WrongNode,
            ErrorCode::Overloaded => wire::ErrorCode::Overloaded,
            ErrorCode::Unauthorized => wire::ErrorCode::Unauthorized,
            ErrorCode::TooLarge => wire::ErrorCode::TooLarge,
            ErrorCode::BadRequest => wire::ErrorCode::BadRequest,
            ErrorCode::Internal => wire::ErrorCode::Internal,
            ErrorCode::ShuttingDown => wire::ErrorCode::ShuttingDown,
            ErrorCode::Unavailable => wire::ErrorCode::Unavailable,
            ErrorCode::OutcomeUnknown => wire::ErrorCode::OutcomeUnknown,
            ErrorCode::Unauthenticated => wire::ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied => wire::ErrorCode::PermissionDenied,
        }
    }

    fn from_wire(code: wire::ErrorCode) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.to_wire() == code)
    }

    /// A miss: an answer the caller expects in normal use (an absent key, a condition not
    /// met), not a failure. Metrics count these apart, and Redis renders them as nil or 0.
    pub fn is_miss(self) -> bool {
        matches!(self, ErrorCode::NotFound | ErrorCode::ConditionFailed)
    }

    /// Stable lower-case name, used in CLI messages and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Internal => "internal",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Condition attached to a write or delete.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    Always,
    IfAbsent,
    IfPresent,
    IfVersion(u64),
    IfValue(Bytes),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Default,
    Memory,
    Periodic,
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Default,
    Strong,
    Eventual,
}

/// What a compare-and-set compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    Value(Bytes),
    Version(u64),
}

/// A write. `ttl_ms == 0` means no expiry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SetOp {
    pub key: Bytes,
    pub value: Bytes,
    pub ttl_ms: u64,
    pub keep_ttl: bool,
    pub condition: Condition,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        key: Bytes,
    },
    Set(SetOp),
    Delete {
        key: Bytes,
        condition: Condition,
    },
    Cas {
        key: Bytes,
        expected: Expected,
        new_value: Bytes,
        ttl_ms: u64,
    },
    /// Many operations in one frame; never nested.
    Batch(Vec<Op>),
    Ping {
        payload: Bytes,
    },
    Topology,
    Stats,
    /// Admin: checkpoint every core now.
    Checkpoint,
    /// Admin: write a consistent copy of the data to `dir` on the node's machine.
    Backup {
        dir: String,
    },
    /// Become `user` on this connection (answered `Pong` with the user's name).
    Authenticate {
        user: String,
        password: Bytes,
    },
}

impl Op {
    pub fn get(key: impl Into<Bytes>) -> Op {
        Op::Get { key: key.into() }
    }

    /// An unconditional set without expiry.
    pub fn set(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Op {
        Op::set_if(key, value, Condition::Always)
    }

    pub fn set_if(key: impl Into<Bytes>, value: impl Into<Bytes>, condition: Condition) -> Op {
        Op::Set(SetOp { key: key.into(), value: value.into(), condition, ..Default::default() })
    }

    pub fn delete(key: impl Into<Bytes>) -> Op {
        Op::Delete { key: key.into(), condition: Condition::Always }
    }

    /// The key this operation addresses, for operations that address exactly one.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key } | Op::Delete { key, .. } | Op::Cas { key, .. } => Some(key),
            Op::Set(set) => Some(&set.key),
            Op::Batch(_)
            | Op::Ping { .. }
            | Op::Topology
            | Op::Stats
            | Op::Checkpoint
            | Op::Backup { .. }
            | Op::Authenticate { .. } => None,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Set(_) => "set",
            Op::Delete { .. } => "delete",
            Op::Cas { .. } => "cas",
            Op::Batch(_) => "batch",
            Op::Ping { .. } => "ping",
            Op::Topology => "topology",
            Op::Stats => "stats",
            Op::Checkpoint => "checkpoint",
            Op::Backup { .. } => "backup",
            Op::Authenticate { .. } => "authenticate",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub op: Op,
    pub durability: Durability,
    pub consistency: Consistency,
    /// Cluster mode: the client routed this itself; a node not leading the key's partition
    /// answers `WrongNode` with the map instead of forwarding.
    pub direct: bool,
}

impl Request {
    pub fn new(id: u64, op: Op) -> Request {
        Request {
            id,
            op,
            durability: Durability::Default,
            consistency: Consistency::Default,
            direct: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TopologyInfo {
    pub node_id: String,
    pub cores: u16,
    pub partitions: u32,
    pub hash: String,
    /// Port of each core's own listener, by core index; empty when disabled.
    pub shard_ports: Vec<u16>,
    /// Cluster mode (0 and empty on a single node): the answering node's id, the map's epoch
    /// (larger is newer), every node's client addresses, and per partition its replicas
    /// (preferred leader first) and the leader the answering node knows of (0: unknown).
    pub node: u64,
    pub epoch: u64,
    pub nodes: Vec<NodeAddress>,
    pub partition_map: Vec<PartitionInfo>,
}

impl TopologyInfo {
    /// The client addresses of node `id`, when the map lists it.
    pub fn node(&self, id: u64) -> Option<&NodeAddress> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// A node's client addresses as HOST:PORT; empty for a listener that is off.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeAddress {
    pub id: u64,
    pub native: String,
    pub resp: String,
    pub http: String,
}

/// One partition of the cluster's map.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PartitionInfo {
    /// Preferred leader first.
    pub replicas: Vec<u64>,
    /// As the answering node knows it; 0 = unknown.
    pub leader: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CoreStats {
    pub core: u16,
    pub keys: u64,
    pub value_bytes: u64,
    pub requests: u64,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    pub expired: u64,
    pub backpressure_events: u64,
    pub connections: u64,
    pub log_flushes: u64,
    pub log_records: u64,
    pub log_bytes: u64,
    /// Empty while the log is healthy; the failure otherwise (writes are refused).
    pub log_error: String,
    /// Bytes of values held in memory; the rest are read from the log.
    pub cached_bytes: u64,
    /// Values dropped from memory to keep the cache within --cache-bytes.
    pub evicted: u64,
    /// Values read back from the log with direct I/O.
    pub fetches: u64,
    /// Record bytes in the log's segments, and how many of them are current values.
    pub log_disk_bytes: u64,
    pub log_live_bytes: u64,
    /// Compaction: record bytes moved, and segments deleted.
    pub compacted_bytes: u64,
    pub segments_removed: u64,
    /// Keys with a TTL.
    pub ttl_keys: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StatsInfo {
    pub uptime_ms: u64,
    pub cores: Vec<CoreStats>,
}

/// A typed error as carried on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// On `ConditionFailed`: the key's current version (0 = absent).
    pub current_version: u64,
    /// On `WrongNode`: the partition's leader as the answering node knows it (0 = unknown).
    pub leader: u64,
    /// On `WrongNode` to a direct request: the current map.
    pub topology: Option<Box<TopologyInfo>>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> WireError {
        WireError { code, message: message.into(), current_version: 0, leader: 0, topology: None }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `ttl_ms`: remaining time to live, `None` when the key does not expire.
    Value {
        value: Bytes,
        version: u64,
        ttl_ms: Option<u64>,
    },
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    Pong {
        payload: Bytes,
    },
    /// Boxed: the largest answer by far, and a rare one.
    Topology(Box<TopologyInfo>),
    Stats(StatsInfo),
    Batch(Vec<Reply>),
    Error(WireError),
    /// An admin operation finished; counts summed over cores.
    AdminDone {
        message: String,
        records: u64,
        bytes: u64,
    },
}

impl Reply {
    /// Short name of the reply kind, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Value { .. } => "value",
            Reply::Written { .. } => "written",
            Reply::Deleted { .. } => "deleted",
            Reply::Pong { .. } => "pong",
            Reply::Topology(_) => "topology",
            Reply::Stats(_) => "stats",
            Reply::Batch(_) => "batch",
            Reply::Error(_) => "error",
            Reply::AdminDone { .. } => "admin_done",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(WireError::new(code, message))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

/// Why a frame could not be turned into a request or response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    /// The request id, when the buffer was sound enough to read it.
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
    /// True when the connection must close: the peer is not speaking the protocol.
    pub fatal: bool,
}

impl DecodeError {
    fn fatal(id: Option<u64>, message: String) -> DecodeError {
        DecodeError { id, code: ErrorCode::BadRequest, message, fatal: true }
    }
}

fn verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: 16,
        max_tables: 1 << 20,
        max_apparent_size: 1 << 31,
        ignore_missing_null_terminator: false,
    }
}

/// Reusable encoder: owns a FlatBuffers builder so steady-state encoding does not allocate.
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::{decode_request, decode_response};
pub use encode::Encoder;
