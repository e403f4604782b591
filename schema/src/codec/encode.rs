//! Encoding the protocol's types as FlatBuffers frames: requests (the clients' side) and
//! responses (the node's), with one builder reused across calls.

use super::*;

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
        Op::Authenticate { user, password } => {
            let user = Some(fbb.create_string(user));
            let password = Some(fbb.create_vector(password));
            let a = wire::Authenticate::create(fbb, &wire::AuthenticateArgs { user, password });
            (wire::Op::Authenticate, a.as_union_value())
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

fn consistency_to_wire(c: Consistency) -> wire::Consistency {
    match c {
        Consistency::Default => wire::Consistency::Default,
        Consistency::Strong => wire::Consistency::Strong,
        Consistency::Eventual => wire::Consistency::Eventual,
    }
}
