//! In-process fake node for the SDK's tests: a tokio listener that decodes requests with the
//! real protocol crate and answers them from an in-memory map, or misbehaves on purpose
//! ([`Behavior`]). It records every operation it receives, so tests can check routing, and the
//! largest number of frames it found in one read, so tests can check pipelining.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{
    Condition, Encoder, ErrorCode, Expected, Op, Reply, StatsInfo, TopologyInfo, WireError,
    decode_request,
};
use corekv_schema::frame::{Limits, take_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behavior {
    /// Answers every request from the in-memory map.
    Serve,
    /// Reads requests and never answers.
    Silent,
    /// On the first connection, reads this many requests and hangs up without answering;
    /// serves later connections.
    HangUpFirstAfter(usize),
    /// Answers with the wrong request id.
    WrongId,
    /// Answers every operation but `Topology` with this error, as a cluster node would.
    Refuse(ErrorCode),
}

#[derive(Default)]
struct Store {
    entries: HashMap<Bytes, (Bytes, u64)>,
    version_last: u64,
}

fn condition_failed(current_version: u64) -> Reply {
    Reply::Error(WireError {
        current_version,
        ..WireError::new(ErrorCode::ConditionFailed, "condition failed")
    })
}

impl Store {
    fn holds(&self, key: &Bytes, condition: &Condition) -> Result<(), Reply> {
        let current = self.entries.get(key);
        let version = current.map_or(0, |(_, v)| *v);
        let holds = match condition {
            Condition::Always => true,
            Condition::IfAbsent => current.is_none(),
            Condition::IfPresent => current.is_some(),
            Condition::IfVersion(v) => current.is_some() && version == *v,
            Condition::IfValue(expected) => current.is_some_and(|(value, _)| value == expected),
        };
        if holds { Ok(()) } else { Err(condition_failed(version)) }
    }

    fn write(&mut self, key: Bytes, value: Bytes) -> Reply {
        self.version_last += 1;
        self.entries.insert(key, (value, self.version_last));
        Reply::Written { version: self.version_last }
    }

    fn apply(&mut self, op: Op, topology: &TopologyInfo) -> Reply {
        match op {
            Op::Get { key } => match self.entries.get(&key) {
                Some((value, version)) => {
                    Reply::Value { value: value.clone(), version: *version, ttl_ms: None }
                }
                None => Reply::error(ErrorCode::NotFound, "not found"),
            },
            Op::Set(set) => match self.holds(&set.key, &set.condition) {
                Ok(()) => self.write(set.key, set.value),
                Err(reply) => reply,
            },
            Op::Delete { key, condition } => {
                if !self.entries.contains_key(&key) {
                    return Reply::error(ErrorCode::NotFound, "not found");
                }
                match self.holds(&key, &condition) {
                    Ok(()) => match self.entries.remove(&key) {
                        Some((_, version)) => Reply::Deleted { version },
                        None => Reply::error(ErrorCode::NotFound, "not found"),
                    },
                    Err(reply) => reply,
                }
            }
            Op::Cas { key, expected, new_value, .. } => {
                let condition = match expected {
                    Expected::Value(v) => Condition::IfValue(v),
                    Expected::Version(v) => Condition::IfVersion(v),
                };
                match self.holds(&key, &condition) {
                    Ok(()) => self.write(key, new_value),
                    Err(reply) => reply,
                }
            }
            Op::Batch(ops) => {
                Reply::Batch(ops.into_iter().map(|op| self.apply(op, topology)).collect())
            }
            Op::Ping { payload } => Reply::Pong { payload },
            Op::Topology => Reply::Topology(Box::new(topology.clone())),
            Op::Stats => Reply::Stats(StatsInfo { uptime_ms: 1, cores: Vec::new() }),
            Op::Checkpoint | Op::Backup { .. } | Op::Authenticate { .. } => {
                Reply::AdminDone { message: "fake".into(), records: 0, bytes: 0 }
            }
        }
    }
}

struct State {
    behavior: Behavior,
    topology: Mutex<TopologyInfo>,
    store: Mutex<Store>,
    seen: Mutex<Vec<Op>>,
    frames_per_read_max: AtomicUsize,
    connections: AtomicUsize,
}

pub(crate) struct FakeServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A one-core topology without per-core ports.
pub(crate) fn plain_topology() -> TopologyInfo {
    TopologyInfo {
        node_id: "fake".into(),
        cores: 1,
        partitions: 1024,
        hash: "crc32c".into(),
        ..TopologyInfo::default()
    }
}

impl FakeServer {
    pub async fn start(behavior: Behavior) -> FakeServer {
        FakeServer::start_with(behavior, plain_topology()).await
    }

    pub async fn start_with(behavior: Behavior, topology: TopologyInfo) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            behavior,
            topology: Mutex::new(topology),
            store: Mutex::new(Store::default()),
            seen: Mutex::new(Vec::new()),
            frames_per_read_max: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = accept_state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(accept_state.clone(), stream, index));
            }
        });
        FakeServer { addr, state, accept }
    }

    /// Replaces the topology it answers (a cluster's map names the fakes' own addresses).
    pub fn set_topology(&self, topology: TopologyInfo) {
        *self.state.topology.lock().expect("topology") = topology;
    }

    /// The topology it answers.
    pub fn topology(&self) -> TopologyInfo {
        self.state.topology.lock().expect("topology").clone()
    }

    /// Every top-level operation received, in arrival order.
    pub fn seen(&self) -> Vec<Op> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// The keys of every single-key operation received, batches included.
    pub fn keys_seen(&self) -> Vec<Bytes> {
        let mut keys = Vec::new();
        for op in self.seen() {
            match op {
                Op::Batch(ops) => keys.extend(ops.iter().filter_map(Op::key).cloned()),
                op => keys.extend(op.key().cloned()),
            }
        }
        keys
    }

    pub fn frames_per_read_max(&self) -> usize {
        self.state.frames_per_read_max.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

async fn serve(state: Arc<State>, mut stream: TcpStream, connection_index: usize) {
    let mut encoder = Encoder::new();
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    let mut requests = 0usize;
    loop {
        input.reserve(64 * 1024);
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut frames = 0;
        while let Ok(Some(frame)) = take_frame(&mut input, Limits::DEFAULT.frame_bytes_max) {
            frames += 1;
            requests += 1;
            let Ok(request) = decode_request(&frame, &Limits::DEFAULT) else {
                return;
            };
            state.seen.lock().expect("seen").push(request.op.clone());
            match state.behavior {
                Behavior::Silent => {}
                Behavior::HangUpFirstAfter(n) if connection_index == 0 => {
                    if requests >= n {
                        return;
                    }
                }
                Behavior::WrongId => {
                    encoder.response(
                        request.id + 1,
                        &Reply::Pong { payload: Bytes::new() },
                        &mut output,
                    );
                }
                Behavior::Refuse(code) if request.op != Op::Topology => {
                    let reply = Reply::error(code, "refused by the fake");
                    encoder.response(request.id, &reply, &mut output);
                }
                Behavior::Serve | Behavior::HangUpFirstAfter(_) | Behavior::Refuse(_) => {
                    let topology = state.topology.lock().expect("topology").clone();
                    let reply = state.store.lock().expect("store").apply(request.op, &topology);
                    encoder.response(request.id, &reply, &mut output);
                }
            }
        }
        state.frames_per_read_max.fetch_max(frames, Ordering::SeqCst);
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
    }
}
