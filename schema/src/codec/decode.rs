//! Decoding FlatBuffers frames into the protocol's types: every buffer is verified first
//! (untrusted input), limits are checked, and keys and values are zero-copy slices of the
//! frame.

use super::*;

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
    fn authenticate(&self) -> Option<wire::Authenticate<'a>>;
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
            fn authenticate(&self) -> Option<wire::Authenticate<'a>> {
                self.op_as_authenticate()
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
            wire::Op::Authenticate if top_level => {
                let a = c.authenticate().ok_or_else(|| missing(id, "authenticate"))?;
                let password = a.password().map(|p| self.bytes(p)).unwrap_or_default();
                Op::Authenticate { user: a.user().to_owned(), password }
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
