//! The typed protocol vocabulary and its FlatBuffers encoding.
//!
//! The node, the SDK and the load generator speak only these types; `generated::` stays an
//! implementation detail of this file. Decoding verifies the buffer (untrusted input), checks
//! [`Limits`], and returns keys and values as zero-copy `Bytes` slices of the frame.
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
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
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
            | Op::Backup { .. } => None,
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
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
    /// Largest message encoded so far: the builder keeps at least this much memory.
    peak_bytes: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder { fbb: FlatBufferBuilder::with_capacity(1024), peak_bytes: 0 }
    }

    /// The largest message encoded so far. The builder never shrinks, so a caller that encoded
    /// one huge message may want a fresh encoder.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// Appends one framed request to `out`.
    pub fn request(&mut self, request: &Request, out: &mut BytesMut) {
        self.fbb.reset();
        let (op_type, op) = encode_op(&mut self.fbb, &request.op);
        let root = wire::Request::create(
            &mut self.fbb,
            &wire::RequestArgs {
                id: request.id,
                op_type,
                op: Some(op),
                durability: durability_to_wire(request.durability),
                consistency: consistency_to_wire(request.consistency),
                direct: request.direct,
            },
        );
        self.fbb.finish_size_prefixed(root, None);
        self.emit(out);
    }

    fn emit(&mut self, out: &mut BytesMut) {
        let data = self.fbb.finished_data();
        self.peak_bytes = self.peak_bytes.max(data.len());
        out.extend_from_slice(data);
    }

    /// Appends one framed response to `out`.
    pub fn response(&mut self, id: u64, reply: &Reply, out: &mut BytesMut) {
        self.fbb.reset();
        let (result_type, result) = encode_reply(&mut self.fbb, reply);
        let root = wire::Response::create(
            &mut self.fbb,
            &wire::ResponseArgs { id, reply_type: result_type, reply: Some(result) },
        );
        self.fbb.finish_size_prefixed(root, None);
        self.emit(out);
    }
}

type Fbb = FlatBufferBuilder<'static>;

fn condition_parts(c: &Condition) -> (wire::Condition, u64, Option<&Bytes>) {
    match c {
        Condition::Always => (wire::Condition::Always, 0, None),
        Condition::IfAbsent => (wire::Condition::IfAbsent, 0, None),
        Condition::IfPresent => (wire::Condition::IfPresent, 0, None),
        Condition::IfVersion(v) => (wire::Condition::IfVersion, *v, None),
        Condition::IfValue(v) => (wire::Condition::IfValue, 0, Some(v)),
    }
}

fn encode_op(fbb: &mut Fbb, op: &Op) -> (wire::Op, WIPOffset<UnionWIPOffset>) {
    match op {
        Op::Get { key } => {
            let key = Some(fbb.create_vector(key));
            (wire::Op::Get, wire::Get::create(fbb, &wire::GetArgs { key }).as_union_value())
        }
        Op::Set(set) => {
            let key = Some(fbb.create_vector(&set.key));
            let value = Some(fbb.create_vector(&set.value));
            let (condition, expected_version, expected) = condition_parts(&set.condition);
            let expected_value = expected.map(|v| fbb.create_vector(v));
            let args = wire::SetArgs {
                key,
                value,
                ttl_ms: set.ttl_ms,
                keep_ttl: set.keep_ttl,
                condition,
                expected_version,
                expected_value,
            };
            (wire::Op::Set, wire::Set::create(fbb, &args).as_union_value())
        }
        Op::Delete { key, condition } => {
            let key = Some(fbb.create_vector(key));
            let (condition, expected_version, expected) = condition_parts(condition);
            let expected_value = expected.map(|v| fbb.create_vector(v));
            let args = wire::DeleteArgs { key, condition, expected_version, expected_value };
            (wire::Op::Delete, wire::Delete::create(fbb, &args).as_union_value())
        }
        Op::Cas { key, expected, new_value, ttl_ms } => {
            let key = Some(fbb.create_vector(key));
            let new_value = Some(fbb.create_vector(new_value));
            let (by_version, expected_version, expected_value) = match expected {
                Expected::Value(v) => (false, 0, Some(fbb.create_vector(v))),
                Expected::Version(v) => (true, *v, None),
            };
            let args = wire::CompareAndSetArgs {
                key,
                new_value,
                by_version,
                expected_version,
                expected_value,
                ttl_ms: *ttl_ms,
            };
            (wire::Op::CompareAndSet, wire::CompareAndSet::create(fbb, &args).as_union_value())
        }
        Op::Batch(ops) => {
            let items: Vec<_> = ops
                .iter()
                .map(|op| {
                    let (op_type, op) = encode_op(fbb, op);
                    wire::BatchItem::create(fbb, &wire::BatchItemArgs { op_type, op: Some(op) })
                })
                .collect();
            let items = Some(fbb.create_vector(&items));
            (wire::Op::Batch, wire::Batch::create(fbb, &wire::BatchArgs { items }).as_union_value())
        }
        Op::Ping { payload } => {
            let payload = Some(fbb.create_vector(payload));
            (wire::Op::Ping, wire::Ping::create(fbb, &wire::PingArgs { payload }).as_union_value())
        }
        Op::Topology => {
            let t = wire::Topology::create(fbb, &wire::TopologyArgs {});
            (wire::Op::Topology, t.as_union_value())
        }
        Op::Stats => {
            (wire::Op::Stats, wire::Stats::create(fbb, &wire::StatsArgs {}).as_union_value())
        }
        Op::Checkpoint => {
            let c = wire::Checkpoint::create(fbb, &wire::CheckpointArgs {});
            (wire::Op::Checkpoint, c.as_union_value())
        }
        Op::Backup { dir } => {
            let dir = Some(fbb.create_string(dir));
            let b = wire::Backup::create(fbb, &wire::BackupArgs { dir });
            (wire::Op::Backup, b.as_union_value())
        }
    }
}

fn encode_reply(fbb: &mut Fbb, reply: &Reply) -> (wire::Reply, WIPOffset<UnionWIPOffset>) {
    match reply {
        Reply::Value { value, version, ttl_ms } => {
            let value = Some(fbb.create_vector(value));
            let ttl_ms = ttl_ms.map_or(-1, |t| t.min(i64::MAX as u64) as i64);
            let args = wire::ValueArgs { value, version: *version, ttl_ms };
            (wire::Reply::Value, wire::Value::create(fbb, &args).as_union_value())
        }
        Reply::Written { version } => {
            let w = wire::Written::create(fbb, &wire::WrittenArgs { version: *version });
            (wire::Reply::Written, w.as_union_value())
        }
        Reply::Deleted { version } => {
            let d = wire::Deleted::create(fbb, &wire::DeletedArgs { version: *version });
            (wire::Reply::Deleted, d.as_union_value())
        }
        Reply::Pong { payload } => {
            let payload = Some(fbb.create_vector(payload));
            let p = wire::Pong::create(fbb, &wire::PongArgs { payload });
            (wire::Reply::Pong, p.as_union_value())
        }
        Reply::Topology(t) => (wire::Reply::TopologyInfo, encode_topology(fbb, t).as_union_value()),
        Reply::Stats(s) => {
            let cores: Vec<_> = s
                .cores
                .iter()
                .map(|c| {
                    let log_error =
                        (!c.log_error.is_empty()).then(|| fbb.create_string(&c.log_error));
                    let args = wire::CoreStatsArgs {
                        core: c.core,
                        keys: c.keys,
                        value_bytes: c.value_bytes,
                        requests: c.requests,
                        forwarded_out: c.forwarded_out,
                        forwarded_in: c.forwarded_in,
                        expired: c.expired,
                        backpressure_events: c.backpressure_events,
                        connections: c.connections,
                        log_flushes: c.log_flushes,
                        log_records: c.log_records,
                        log_bytes: c.log_bytes,
                        log_error,
                        cached_bytes: c.cached_bytes,
                        evicted: c.evicted,
                        fetches: c.fetches,
                        log_disk_bytes: c.log_disk_bytes,
                        log_live_bytes: c.log_live_bytes,
                        compacted_bytes: c.compacted_bytes,
                        segments_removed: c.segments_removed,
                        ttl_keys: c.ttl_keys,
                    };
                    wire::CoreStats::create(fbb, &args)
                })
                .collect();
            let cores = Some(fbb.create_vector(&cores));
            let args = wire::StatsInfoArgs { uptime_ms: s.uptime_ms, cores };
            (wire::Reply::StatsInfo, wire::StatsInfo::create(fbb, &args).as_union_value())
        }
        Reply::Batch(replies) => {
            let items: Vec<_> = replies
                .iter()
                .map(|r| {
                    let (result_type, result) = encode_reply(fbb, r);
                    let args =
                        wire::ResultItemArgs { reply_type: result_type, reply: Some(result) };
                    wire::ResultItem::create(fbb, &args)
                })
                .collect();
            let items = Some(fbb.create_vector(&items));
            let b = wire::BatchResult::create(fbb, &wire::BatchResultArgs { items });
            (wire::Reply::BatchResult, b.as_union_value())
        }
        Reply::Error(e) => {
            let message = Some(fbb.create_string(&e.message));
            let topology = e.topology.as_ref().map(|t| encode_topology(fbb, t));
            let args = wire::FailureArgs {
                code: e.code.to_wire(),
                message,
                current_version: e.current_version,
                leader: e.leader,
                topology,
            };
            (wire::Reply::Failure, wire::Failure::create(fbb, &args).as_union_value())
        }
        Reply::AdminDone { message, records, bytes } => {
            let message = Some(fbb.create_string(message));
            let args = wire::AdminDoneArgs { message, records: *records, bytes: *bytes };
            (wire::Reply::AdminDone, wire::AdminDone::create(fbb, &args).as_union_value())
        }
    }
}

fn durability_to_wire(d: Durability) -> wire::Durability {
    match d {
        Durability::Default => wire::Durability::Default,
        Durability::Memory => wire::Durability::Memory,
        Durability::Periodic => wire::Durability::Periodic,
        Durability::Sync => wire::Durability::Sync,
    }
}

fn encode_topology(fbb: &mut Fbb, t: &TopologyInfo) -> WIPOffset<wire::TopologyInfo<'static>> {
    let node_id = Some(fbb.create_string(&t.node_id));
    let hash = Some(fbb.create_string(&t.hash));
    let shard_ports = Some(fbb.create_vector(&t.shard_ports));
    let nodes: Vec<_> = t
        .nodes
        .iter()
        .map(|n| {
            let args = wire::NodeAddressArgs {
                id: n.id,
                native: Some(fbb.create_string(&n.native)),
                resp: Some(fbb.create_string(&n.resp)),
                http: Some(fbb.create_string(&n.http)),
            };
            wire::NodeAddress::create(fbb, &args)
        })
        .collect();
    let nodes = (!nodes.is_empty()).then(|| fbb.create_vector(&nodes));
    let map: Vec<_> = t
        .partition_map
        .iter()
        .map(|p| {
            let replicas = Some(fbb.create_vector(&p.replicas));
            wire::PartitionInfo::create(
                fbb,
                &wire::PartitionInfoArgs { replicas, leader: p.leader },
            )
        })
        .collect();
    let partition_map = (!map.is_empty()).then(|| fbb.create_vector(&map));
    let args = wire::TopologyInfoArgs {
        node_id,
        cores: t.cores,
        partitions: t.partitions,
        hash,
        shard_ports,
        node: t.node,
        epoch: t.epoch,
        nodes,
        partition_map,
    };
    wire::TopologyInfo::create(fbb, &args)
}

fn decode_topology(t: &wire::TopologyInfo<'_>) -> TopologyInfo {
    let text = |s: Option<&str>| s.unwrap_or_default().to_owned();
    TopologyInfo {
        node_id: text(t.node_id()),
        cores: t.cores(),
        partitions: t.partitions(),
        hash: text(t.hash()),
        shard_ports: t.shard_ports().map(|p| p.iter().collect()).unwrap_or_default(),
        node: t.node(),
        epoch: t.epoch(),
        nodes: t
            .nodes()
            .map(|ns| {
                ns.iter()
                    .map(|n| NodeAddress {
                        id: n.id(),
                        native: text(n.native()),
                        resp: text(n.resp()),
                        http: text(n.http()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        partition_map: t
            .partition_map()
            .map(|ps| {
                ps.iter()
                    .map(|p| PartitionInfo {
                        replicas: p.replicas().map(|r| r.iter().collect()).unwrap_or_default(),
                        leader: p.leader(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn consistency_to_wire(c: Consistency) -> wire::Consistency {
    match c {
        Consistency::Default => wire::Consistency::Default,
        Consistency::Strong => wire::Consistency::Strong,
        Consistency::Eventual => wire::Consistency::Eventual,
    }
}

/// The generated types that hold an `Op` union (`Request`, `BatchItem`) share accessor names
/// but no trait; this gives the decoder one way to read either.
trait OpCarrier<'a> {
    fn op_kind(&self) -> wire::Op;
    fn get(&self) -> Option<wire::Get<'a>>;
    fn set(&self) -> Option<wire::Set<'a>>;
    fn delete(&self) -> Option<wire::Delete<'a>>;
    fn cas(&self) -> Option<wire::CompareAndSet<'a>>;
    fn batch(&self) -> Option<wire::Batch<'a>>;
    fn ping(&self) -> Option<wire::Ping<'a>>;
    fn backup(&self) -> Option<wire::Backup<'a>>;
}

macro_rules! op_carrier {
    ($t:ident) => {
        impl<'a> OpCarrier<'a> for wire::$t<'a> {
            fn op_kind(&self) -> wire::Op {
                self.op_type()
            }
            fn get(&self) -> Option<wire::Get<'a>> {
                self.op_as_get()
            }
            fn set(&self) -> Option<wire::Set<'a>> {
                self.op_as_set()
            }
            fn delete(&self) -> Option<wire::Delete<'a>> {
                self.op_as_delete()
            }
            fn cas(&self) -> Option<wire::CompareAndSet<'a>> {
                self.op_as_compare_and_set()
            }
            fn batch(&self) -> Option<wire::Batch<'a>> {
                self.op_as_batch()
            }
            fn ping(&self) -> Option<wire::Ping<'a>> {
                self.op_as_ping()
            }
            fn backup(&self) -> Option<wire::Backup<'a>> {
                self.op_as_backup()
            }
        }
    };
}
op_carrier!(Request);
op_carrier!(BatchItem);

/// Same idea for the holders of a `Reply` union (`Response`, `ResultItem`).
trait ReplyCarrier<'a> {
    fn kind(&self) -> wire::Reply;
    fn value(&self) -> Option<wire::Value<'a>>;
    fn written(&self) -> Option<wire::Written<'a>>;
    fn deleted(&self) -> Option<wire::Deleted<'a>>;
    fn pong(&self) -> Option<wire::Pong<'a>>;
    fn topology(&self) -> Option<wire::TopologyInfo<'a>>;
    fn stats(&self) -> Option<wire::StatsInfo<'a>>;
    fn batch(&self) -> Option<wire::BatchResult<'a>>;
    fn failure(&self) -> Option<wire::Failure<'a>>;
    fn admin_done(&self) -> Option<wire::AdminDone<'a>>;
}

macro_rules! reply_carrier {
    ($t:ident) => {
        impl<'a> ReplyCarrier<'a> for wire::$t<'a> {
            fn kind(&self) -> wire::Reply {
                self.reply_type()
            }
            fn value(&self) -> Option<wire::Value<'a>> {
                self.reply_as_value()
            }
            fn written(&self) -> Option<wire::Written<'a>> {
                self.reply_as_written()
            }
            fn deleted(&self) -> Option<wire::Deleted<'a>> {
                self.reply_as_deleted()
            }
            fn pong(&self) -> Option<wire::Pong<'a>> {
                self.reply_as_pong()
            }
            fn topology(&self) -> Option<wire::TopologyInfo<'a>> {
                self.reply_as_topology_info()
            }
            fn stats(&self) -> Option<wire::StatsInfo<'a>> {
                self.reply_as_stats_info()
            }
            fn batch(&self) -> Option<wire::BatchResult<'a>> {
                self.reply_as_batch_result()
            }
            fn failure(&self) -> Option<wire::Failure<'a>> {
                self.reply_as_failure()
            }
            fn admin_done(&self) -> Option<wire::AdminDone<'a>> {
                self.reply_as_admin_done()
            }
        }
    };
}
reply_carrier!(Response);
reply_carrier!(ResultItem);

fn missing(id: u64, what: &str) -> DecodeError {
    DecodeError::fatal(Some(id), format!("{what} union without its table"))
}

/// Decodes one request frame, length prefix included (as returned by `frame::take_frame`).
pub fn decode_request(frame: &Bytes, limits: &Limits) -> Result<Request, DecodeError> {
    let opts = verifier_options();
    let root = flatbuffers::size_prefixed_root_with_opts::<wire::Request>(&opts, frame)
        .map_err(|e| DecodeError::fatal(None, format!("malformed request frame: {e}")))?;
    let id = root.id();
    let durability = match root.durability() {
        wire::Durability::Default => Durability::Default,
        wire::Durability::Memory => Durability::Memory,
        wire::Durability::Periodic => Durability::Periodic,
        wire::Durability::Sync => Durability::Sync,
        other => {
            return Err(DecodeError::fatal(Some(id), format!("unknown durability {}", other.0)));
        }
    };
    let consistency = match root.consistency() {
        wire::Consistency::Default => Consistency::Default,
        wire::Consistency::Strong => Consistency::Strong,
        wire::Consistency::Eventual => Consistency::Eventual,
        other => {
            return Err(DecodeError::fatal(Some(id), format!("unknown consistency {}", other.0)));
        }
    };
    let mut ops_seen = 0usize;
    let op = {
        let mut d = OpDecoder { frame, limits, id, ops_seen: &mut ops_seen };
        d.op(&root, true)?
    };
    Ok(Request { id, op, durability, consistency, direct: root.direct() })
}

struct OpDecoder<'f> {
    frame: &'f Bytes,
    limits: &'f Limits,
    id: u64,
    ops_seen: &'f mut usize,
}

impl OpDecoder<'_> {
    fn bytes(&self, v: flatbuffers::Vector<'_, u8>) -> Bytes {
        self.frame.slice_ref(v.bytes())
    }

    fn too_large(&self, message: String) -> DecodeError {
        DecodeError { id: Some(self.id), code: ErrorCode::TooLarge, message, fatal: false }
    }

    fn bad(&self, message: String) -> DecodeError {
        DecodeError { id: Some(self.id), code: ErrorCode::BadRequest, message, fatal: false }
    }

    fn refused(&self, e: SizeError) -> DecodeError {
        match e {
            SizeError::EmptyKey => self.bad(e.to_string()),
            _ => self.too_large(e.to_string()),
        }
    }

    fn key(&self, v: flatbuffers::Vector<'_, u8>) -> Result<Bytes, DecodeError> {
        self.limits.check_key(v.bytes()).map_err(|e| self.refused(e))?;
        Ok(self.bytes(v))
    }

    fn value(&self, v: flatbuffers::Vector<'_, u8>) -> Result<Bytes, DecodeError> {
        self.limits.check_value(v.bytes()).map_err(|e| self.refused(e))?;
        Ok(self.bytes(v))
    }

    fn condition(
        &self,
        c: wire::Condition,
        expected_version: u64,
        expected_value: Option<flatbuffers::Vector<'_, u8>>,
    ) -> Result<Condition, DecodeError> {
        Ok(match c {
            wire::Condition::Always => Condition::Always,
            wire::Condition::IfAbsent => Condition::IfAbsent,
            wire::Condition::IfPresent => Condition::IfPresent,
            wire::Condition::IfVersion => Condition::IfVersion(expected_version),
            wire::Condition::IfValue => match expected_value {
                Some(v) => Condition::IfValue(self.value(v)?),
                None => return Err(self.bad("condition IfValue without expected_value".into())),
            },
            other => {
                return Err(DecodeError::fatal(
                    Some(self.id),
                    format!("unknown condition {}", other.0),
                ));
            }
        })
    }

    fn op<'a>(&mut self, c: &impl OpCarrier<'a>, top_level: bool) -> Result<Op, DecodeError> {
        *self.ops_seen += 1;
        if *self.ops_seen > self.limits.batch_ops_max + 1 {
            return Err(self
                .too_large(format!("batch exceeds batch_ops_max {}", self.limits.batch_ops_max)));
        }
        // Never follow the union offset itself (`op()`): the verifier checks the table only
        // for the union types it knows, so an unknown or NONE type with a stray offset would
        // pass verification and then index out of bounds. Decide on the type first, then use
        // the typed accessors, which follow only verified offsets.
        let id = self.id;
        Ok(match c.op_kind() {
            wire::Op::Get => {
                let get = c.get().ok_or_else(|| missing(id, "get"))?;
                Op::Get { key: self.key(get.key())? }
            }
            wire::Op::Set => {
                let set = c.set().ok_or_else(|| missing(id, "set"))?;
                let condition =
                    self.condition(set.condition(), set.expected_version(), set.expected_value())?;
                Op::Set(SetOp {
                    key: self.key(set.key())?,
                    value: self.value(set.value())?,
                    ttl_ms: set.ttl_ms(),
                    keep_ttl: set.keep_ttl(),
                    condition,
                })
            }
            wire::Op::Delete => {
                let del = c.delete().ok_or_else(|| missing(id, "delete"))?;
                let condition =
                    self.condition(del.condition(), del.expected_version(), del.expected_value())?;
                if matches!(condition, Condition::IfAbsent | Condition::IfPresent) {
                    return Err(self.bad("delete takes only IfVersion or IfValue".into()));
                }
                Op::Delete { key: self.key(del.key())?, condition }
            }
            wire::Op::CompareAndSet => {
                let cas = c.cas().ok_or_else(|| missing(id, "cas"))?;
                let expected = if cas.by_version() {
                    Expected::Version(cas.expected_version())
                } else {
                    match cas.expected_value() {
                        Some(v) => Expected::Value(self.value(v)?),
                        None => return Err(self.bad("compare-and-set without expected".into())),
                    }
                };
                Op::Cas {
                    key: self.key(cas.key())?,
                    expected,
                    new_value: self.value(cas.new_value())?,
                    ttl_ms: cas.ttl_ms(),
                }
            }
            wire::Op::Batch => {
                if !top_level {
                    return Err(self.bad("batches do not nest".into()));
                }
                let batch = c.batch().ok_or_else(|| missing(id, "batch"))?;
                let items = batch.items();
                if items.len() > self.limits.batch_ops_max {
                    return Err(self.too_large(format!(
                        "batch of {} operations exceeds batch_ops_max {}",
                        items.len(),
                        self.limits.batch_ops_max
                    )));
                }
                let mut ops = Vec::with_capacity(items.len());
                for item in items {
                    ops.push(self.op(&item, false)?);
                }
                Op::Batch(ops)
            }
            wire::Op::Ping => {
                let ping = c.ping().ok_or_else(|| missing(id, "ping"))?;
                Op::Ping { payload: ping.payload().map(|p| self.bytes(p)).unwrap_or_default() }
            }
            wire::Op::Topology => Op::Topology,
            wire::Op::Stats => Op::Stats,
            wire::Op::Checkpoint => Op::Checkpoint,
            wire::Op::Backup => {
                let backup = c.backup().ok_or_else(|| missing(id, "backup"))?;
                Op::Backup { dir: backup.dir().to_owned() }
            }
            wire::Op::NONE => {
                return Err(DecodeError::fatal(
                    Some(self.id),
                    "request without an operation".into(),
                ));
            }
            other => {
                return Err(DecodeError::fatal(
                    Some(self.id),
                    format!("unknown operation {}", other.0),
                ));
            }
        })
    }
}

/// Decodes one response frame, length prefix included (client side).
pub fn decode_response(frame: &Bytes) -> Result<Response, DecodeError> {
    let opts = verifier_options();
    let root = flatbuffers::size_prefixed_root_with_opts::<wire::Response>(&opts, frame)
        .map_err(|e| DecodeError::fatal(None, format!("malformed response frame: {e}")))?;
    let id = root.id();
    let reply = decode_result(frame, id, &root, true)?;
    Ok(Response { id, reply })
}

fn decode_result<'a>(
    frame: &Bytes,
    id: u64,
    c: &impl ReplyCarrier<'a>,
    top_level: bool,
) -> Result<Reply, DecodeError> {
    let bytes = |v: flatbuffers::Vector<'_, u8>| frame.slice_ref(v.bytes());
    Ok(match c.kind() {
        wire::Reply::Value => {
            let v = c.value().ok_or_else(|| missing(id, "value"))?;
            let ttl_ms = u64::try_from(v.ttl_ms()).ok();
            Reply::Value { value: bytes(v.value()), version: v.version(), ttl_ms }
        }
        wire::Reply::Written => {
            Reply::Written { version: c.written().ok_or_else(|| missing(id, "written"))?.version() }
        }
        wire::Reply::Deleted => {
            Reply::Deleted { version: c.deleted().ok_or_else(|| missing(id, "deleted"))?.version() }
        }
        wire::Reply::Pong => {
            let p = c.pong().ok_or_else(|| missing(id, "pong"))?;
            Reply::Pong { payload: p.payload().map(bytes).unwrap_or_default() }
        }
        wire::Reply::TopologyInfo => {
            let t = c.topology().ok_or_else(|| missing(id, "topology"))?;
            Reply::Topology(Box::new(decode_topology(&t)))
        }
        wire::Reply::StatsInfo => {
            let s = c.stats().ok_or_else(|| missing(id, "stats"))?;
            let cores = s
                .cores()
                .map(|cs| {
                    cs.iter()
                        .map(|c| CoreStats {
                            core: c.core(),
                            keys: c.keys(),
                            value_bytes: c.value_bytes(),
                            requests: c.requests(),
                            forwarded_out: c.forwarded_out(),
                            forwarded_in: c.forwarded_in(),
                            expired: c.expired(),
                            backpressure_events: c.backpressure_events(),
                            connections: c.connections(),
                            log_flushes: c.log_flushes(),
                            log_records: c.log_records(),
                            log_bytes: c.log_bytes(),
                            log_error: c.log_error().unwrap_or_default().to_owned(),
                            cached_bytes: c.cached_bytes(),
                            evicted: c.evicted(),
                            fetches: c.fetches(),
                            log_disk_bytes: c.log_disk_bytes(),
                            log_live_bytes: c.log_live_bytes(),
                            compacted_bytes: c.compacted_bytes(),
                            segments_removed: c.segments_removed(),
                            ttl_keys: c.ttl_keys(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            Reply::Stats(StatsInfo { uptime_ms: s.uptime_ms(), cores })
        }
        wire::Reply::BatchResult => {
            if !top_level {
                return Err(DecodeError::fatal(Some(id), "nested batch result".into()));
            }
            let items = c.batch().ok_or_else(|| missing(id, "batch"))?.items();
            let mut replies = Vec::with_capacity(items.len());
            for item in items {
                replies.push(decode_result(frame, id, &item, false)?);
            }
            Reply::Batch(replies)
        }
        wire::Reply::Failure => {
            let e = c.failure().ok_or_else(|| missing(id, "failure"))?;
            let code = ErrorCode::from_wire(e.code()).unwrap_or(ErrorCode::Internal);
            Reply::Error(WireError {
                code,
                message: Cow::Owned(e.message().unwrap_or_default().to_owned()),
                current_version: e.current_version(),
                leader: e.leader(),
                topology: e.topology().map(|t| Box::new(decode_topology(&t))),
            })
        }
        wire::Reply::AdminDone => {
            let a = c.admin_done().ok_or_else(|| missing(id, "admin_done"))?;
            Reply::AdminDone {
                message: a.message().unwrap_or_default().to_owned(),
                records: a.records(),
                bytes: a.bytes(),
            }
        }
        other => {
            return Err(DecodeError::fatal(Some(id), format!("unknown result {}", other.0)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::take_frame;

    fn roundtrip_request(req: &Request) -> Request {
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.request(req, &mut out);
        let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
        decode_request(&frame, &Limits::DEFAULT).unwrap()
    }

    fn roundtrip_reply(reply: &Reply) -> Reply {
        let mut enc = Encoder::new();
        let mut out = BytesMut::new();
        enc.response(42, reply, &mut out);
        let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
        let resp = decode_response(&frame).unwrap();
        assert_eq!(resp.id, 42);
        resp.reply
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn all_ops() -> Vec<Op> {
        vec![
            Op::Get { key: b("k") },
            Op::Set(SetOp { key: b("k"), value: b("v"), ..Default::default() }),
            Op::Set(SetOp {
                key: b("k"),
                value: b(""),
                ttl_ms: 1500,
                keep_ttl: true,
                condition: Condition::IfValue(b("old")),
            }),
            Op::Set(SetOp {
                key: b("k"),
                value: b("v"),
                condition: Condition::IfVersion(9),
                ..Default::default()
            }),
            Op::Set(SetOp {
                key: b("k"),
                value: b("v"),
                condition: Condition::IfAbsent,
                ..Default::default()
            }),
            Op::Set(SetOp {
                key: b("k"),
                value: b("v"),
                condition: Condition::IfPresent,
                ..Default::default()
            }),
            Op::Delete { key: b("k"), condition: Condition::Always },
            Op::Delete { key: b("k"), condition: Condition::IfVersion(3) },
            Op::Cas {
                key: b("k"),
                expected: Expected::Value(b("a")),
                new_value: b("b"),
                ttl_ms: 0,
            },
            Op::Cas { key: b("k"), expected: Expected::Version(7), new_value: b("b"), ttl_ms: 10 },
            Op::Ping { payload: b("hi") },
            Op::Topology,
            Op::Stats,
            Op::Checkpoint,
            Op::Backup { dir: "/tmp/backup".into() },
        ]
    }

    fn cluster_topology() -> TopologyInfo {
        TopologyInfo {
            node_id: "2".into(),
            cores: 1,
            partitions: 2,
            hash: "crc32c".into(),
            shard_ports: Vec::new(),
            node: 2,
            epoch: 9,
            nodes: vec![
                NodeAddress {
                    id: 1,
                    native: "a:1".into(),
                    resp: "a:2".into(),
                    http: String::new(),
                },
                NodeAddress {
                    id: 2,
                    native: "b:1".into(),
                    resp: String::new(),
                    http: "b:3".into(),
                },
            ],
            partition_map: vec![
                PartitionInfo { replicas: vec![1, 2], leader: 2 },
                PartitionInfo { replicas: vec![2, 1], leader: 0 },
            ],
        }
    }

    #[test]
    fn every_op_roundtrips() {
        for op in all_ops() {
            let req = Request {
                id: 77,
                op,
                durability: Durability::Sync,
                consistency: Consistency::Eventual,
                direct: true,
            };
            assert_eq!(roundtrip_request(&req), req);
        }
        let req = Request::new(1, Op::Batch(all_ops()));
        assert_eq!(roundtrip_request(&req), req);
    }

    #[test]
    fn every_reply_roundtrips() {
        let replies = vec![
            Reply::Value { value: b("v"), version: 3, ttl_ms: None },
            Reply::Value { value: b(""), version: 4, ttl_ms: Some(999) },
            Reply::Written { version: 5 },
            Reply::Deleted { version: 6 },
            Reply::Pong { payload: b("x") },
            Reply::Topology(Box::new(TopologyInfo {
                node_id: "n1".into(),
                cores: 2,
                partitions: 1024,
                hash: "crc32c".into(),
                shard_ports: vec![7400, 7401],
                ..TopologyInfo::default()
            })),
            Reply::Topology(Box::new(cluster_topology())),
            Reply::Stats(StatsInfo {
                uptime_ms: 12,
                // Every field distinct, so a swap in encode or decode cannot round-trip.
                cores: vec![CoreStats {
                    core: 1,
                    keys: 2,
                    value_bytes: 3,
                    requests: 4,
                    forwarded_out: 5,
                    forwarded_in: 6,
                    expired: 7,
                    backpressure_events: 8,
                    connections: 9,
                    log_flushes: 10,
                    log_records: 11,
                    log_bytes: 12,
                    log_error: "disk full".into(),
                    cached_bytes: 13,
                    evicted: 14,
                    fetches: 15,
                    log_disk_bytes: 16,
                    log_live_bytes: 17,
                    compacted_bytes: 18,
                    segments_removed: 19,
                    ttl_keys: 20,
                }],
            }),
            Reply::Error(WireError {
                code: ErrorCode::ConditionFailed,
                message: "nope".into(),
                current_version: 8,
                ..WireError::new(ErrorCode::Internal, "")
            }),
            Reply::Error(WireError {
                leader: 3,
                topology: Some(Box::new(cluster_topology())),
                ..WireError::new(ErrorCode::WrongNode, "partition 1 is led by node 3")
            }),
            Reply::AdminDone { message: "ok".into(), records: 5, bytes: 6 },
        ];
        for r in &replies {
            assert_eq!(&roundtrip_reply(r), r);
        }
        let batch = Reply::Batch(replies);
        assert_eq!(roundtrip_reply(&batch), batch);
        for code in ErrorCode::ALL {
            let r = Reply::error(code, "m");
            assert_eq!(roundtrip_reply(&r), r);
        }
    }

    #[test]
    fn limits_give_non_fatal_too_large() {
        let limits = Limits { key_bytes_max: 4, value_bytes_max: 4, ..Limits::DEFAULT };
        let mut enc = Encoder::new();
        for (op, what) in [
            (Op::Get { key: b("12345") }, "key"),
            (Op::Set(SetOp { key: b("k"), value: b("12345"), ..Default::default() }), "value"),
        ] {
            let mut out = BytesMut::new();
            enc.request(&Request::new(5, op), &mut out);
            let frame = take_frame(&mut out, 1 << 20).unwrap().unwrap();
            let err = decode_request(&frame, &limits).unwrap_err();
            assert_eq!(err.code, ErrorCode::TooLarge, "{what}");
            assert_eq!(err.id, Some(5));
            assert!(!err.fatal);
        }
    }

    #[test]
    fn batch_limit_and_nesting() {
        let limits = Limits { batch_ops_max: 2, ..Limits::DEFAULT };
        let mut enc = Encoder::new();
        let three = Op::Batch(vec![Op::Topology, Op::Topology, Op::Topology]);
        let nested = Op::Batch(vec![Op::Batch(vec![])]);
        for (op, code) in [(three, ErrorCode::TooLarge), (nested, ErrorCode::BadRequest)] {
            let mut out = BytesMut::new();
            enc.request(&Request::new(9, op), &mut out);
            let frame = take_frame(&mut out, 1 << 20).unwrap().unwrap();
            assert_eq!(decode_request(&frame, &limits).unwrap_err().code, code);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..400usize {
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(seed as u8);
            }
            // Whatever it says, it must say it without panicking.
            let _ = decode_request(&Bytes::from(v), &Limits::DEFAULT);
        }
    }

    #[test]
    fn unknown_op_is_fatal_with_id() {
        let mut fbb = FlatBufferBuilder::new();
        let t = wire::Stats::create(&mut fbb, &wire::StatsArgs {});
        let root = wire::Request::create(
            &mut fbb,
            &wire::RequestArgs {
                id: 31,
                op_type: wire::Op(200),
                op: Some(t.as_union_value()),
                ..Default::default()
            },
        );
        fbb.finish_size_prefixed(root, None);
        let err = decode_request(&Bytes::copy_from_slice(fbb.finished_data()), &Limits::DEFAULT)
            .unwrap_err();
        assert!(err.fatal);
        assert_eq!(err.id, Some(31));
        assert!(err.message.contains("unknown operation"), "{}", err.message);
    }

    /// Seeded mutation fuzzing of the request decoder, run on every test pass (cargo-fuzz
    /// targets in `fuzz/` go deeper). Mutated valid frames reach far deeper into the
    /// verifier than random bytes. Must never panic; whatever it accepts must round-trip.
    #[test]
    fn mutated_frames_never_panic_and_accepted_ones_roundtrip() {
        let mut enc = Encoder::new();
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        let mut ops = all_ops();
        ops.push(Op::Batch(all_ops()));
        for (i, op) in ops.into_iter().enumerate() {
            let mut out = BytesMut::new();
            enc.request(&Request::new(i as u64, op), &mut out);
            seeds.push(out.to_vec());
        }
        let seed = std::env::var("COREKV_FUZZ_SEED").ok().and_then(|s| s.parse().ok());
        let mut x: u64 = seed.unwrap_or(0x5DEE_CE66_D1CE_4E5B);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, rounds) = (0, 100_000);
        for _ in 0..rounds {
            let mut frame = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let len = frame.len() as u64;
                match next() % 5 {
                    0 | 1 => frame[(next() % len) as usize] ^= 1 << (next() % 8),
                    2 => frame[(next() % len) as usize] = next() as u8,
                    3 => frame.truncate(((next() % len) as usize).max(1)),
                    _ => frame.push(next() as u8),
                }
            }
            let frame = Bytes::from(frame);
            // The response decoder sees the same bytes: it must not panic either.
            let _ = decode_response(&frame);
            if let Ok(req) = decode_request(&frame, &Limits::DEFAULT) {
                accepted += 1;
                assert_eq!(roundtrip_request(&req), req);
            }
        }
        assert!(accepted > 0, "no mutant decoded: the seeds or mutations are off");
        assert!(accepted < rounds, "every mutant decoded: the verifier is not checking");
    }
}
