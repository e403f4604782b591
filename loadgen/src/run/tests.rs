//! End-to-end tests of a run against in-process fake servers that speak the native protocol.
//!
//! Each fake server is a tokio `TcpListener` task decoding requests with the node's own decoder
//! (`take_frame` + `decode_request`) and answering from a small map, or misbehaving on purpose
//! (closing connections, never answering) to show that a run still ends on time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Parser as _;
use corekv_schema::codec::{
    self, Encoder, ErrorCode, NodeAddress, Op, PartitionInfo, Reply, TopologyInfo, WireError,
};
use corekv_schema::frame::{self, Limits};
use corekv_schema::placement::HASH_NAME;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::config::Cli;

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answer every request from a shared map.
    Store,
    /// Close each connection after answering this many requests.
    CloseAfter(u64),
    /// Read requests and never answer.
    Silent,
    /// Answer the topology, and every other request with `WrongNode` naming this leader.
    Redirect(u64),
}

#[derive(Default)]
struct Server {
    sets: AtomicU64,
    requests: AtomicU64,
    map: Mutex<HashMap<Bytes, Bytes>>,
    /// What `Topology` answers: a single node's until a test sets a cluster's.
    topology: Mutex<TopologyInfo>,
}

async fn fake_server(behaviour: Behaviour) -> (SocketAddr, Arc<Server>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server::default());
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, behaviour, Arc::clone(&s)));
        }
    });
    (addr, server)
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, server: Arc<Server>) {
    let mut inb = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::new();
    let mut enc = Encoder::new();
    let mut answered = 0u64;
    loop {
        match stream.read_buf(&mut inb).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some(f) = frame::take_frame(&mut inb, Limits::DEFAULT.frame_bytes_max).unwrap() {
            let req = codec::decode_request(&f, &Limits::DEFAULT).unwrap();
            server.requests.fetch_add(1, Ordering::Relaxed);
            let reply = {
                let mut map = server.map.lock().unwrap();
                match req.op {
                    Op::Topology => {
                        Reply::Topology(Box::new(server.topology.lock().unwrap().clone()))
                    }
                    _ if let Behaviour::Redirect(leader) = behaviour => {
                        let mut e = WireError::new(ErrorCode::WrongNode, "not the leader");
                        e.leader = leader;
                        Reply::Error(e)
                    }
                    Op::Set(set) => {
                        server.sets.fetch_add(1, Ordering::Relaxed);
                        map.insert(set.key, set.value);
                        Reply::Written { version: 1 }
                    }
                    Op::Get { key } => match map.get(&key) {
                        Some(v) => Reply::Value { value: v.clone(), version: 1, ttl_ms: None },
                        None => Reply::error(ErrorCode::NotFound, "no such key"),
                    },
                    Op::Delete { key, .. } => match map.remove(&key) {
                        Some(_) => Reply::Deleted { version: 2 },
                        None => Reply::error(ErrorCode::NotFound, "no such key"),
                    },
                    _ => Reply::error(ErrorCode::BadRequest, "unexpected op"),
                }
            };
            match behaviour {
                Behaviour::Silent => continue,
                Behaviour::CloseAfter(n) if answered >= n => return,
                Behaviour::Store | Behaviour::CloseAfter(_) | Behaviour::Redirect(_) => {}
            }
            enc.response(req.id, &reply, &mut out);
            answered += 1;
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

fn config(addr: SocketAddr, args: &[&str]) -> Config {
    let addr = addr.to_string();
    let argv = ["corekv-loadgen", "--addr", &addr].into_iter().chain(args.iter().copied());
    Config::from_cli(&Cli::parse_from(argv)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_with_preload_completes_operations_without_errors() {
    let (addr, server) = fake_server(Behaviour::Store).await;
    let cfg = config(
        addr,
        &[
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--warmup",
            "200ms",
            "--duration",
            "800ms",
            "--keys",
            "1000",
            "--key-size",
            "16",
            "--value-size",
            "32",
            "--preload",
            "--distribution",
            "zipf",
        ],
    );
    let summary = run(&cfg).await.unwrap();
    assert!(server.sets.load(Ordering::Relaxed) >= 1000, "the preload sets every key");
    assert!(summary.count > 0);
    assert_eq!(summary.errors, 0, "{:?}", summary.first_error);
    assert!(summary.ops.get.count > summary.ops.set.count);
    assert!(summary.ops.get.p50_us > 0 || summary.ops.get.max_us > 0);
    // The preload wrote every key, so most gets hit (only keys deleted by the mix miss).
    assert!(summary.ops.get.misses * 2 < summary.ops.get.count, "{:?}", summary.ops.get);

    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    assert!(json["ops_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(json["errors"], 0);
    for op in ["get", "set", "del"] {
        for f in ["count", "ops_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(json["ops"][op][f].is_number(), "ops.{op}.{f}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_starts_exactly_the_scheduled_requests() {
    let (addr, _server) = fake_server(Behaviour::Store).await;
    let cfg = config(
        addr,
        &[
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--warmup",
            "100ms",
            "--duration",
            "500ms",
            "--rate",
            "2000",
            "--keys",
            "100",
            "--mix",
            "set=1",
        ],
    );
    let summary = run(&cfg).await.unwrap();
    assert_eq!(summary.errors, 0, "{:?}", summary.first_error);
    assert_eq!(summary.count, 1000, "2000 ops/s for 0.5 s");
    assert_eq!(summary.ops.set.count, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config(addr, &["--connections", "2", "--duration", "1"]);
    let err = run(&cfg).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RunError::Connect { .. }));
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("refused"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_count_errors_reconnect_and_end_on_time() {
    let (addr, server) = fake_server(Behaviour::CloseAfter(200)).await;
    let cfg = config(
        addr,
        &["--connections", "2", "--pipeline", "4", "--warmup", "0", "--duration", "600ms"],
    );
    let started = std::time::Instant::now();
    let summary = run(&cfg).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(600) + GRACE);
    assert!(summary.errors > 0, "requests in flight at each drop are errors");
    assert!(
        summary.count > 400,
        "connections came back after the first drop: {} ops",
        summary.count
    );
    assert!(server.requests.load(Ordering::Relaxed) > 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_cannot_hold_a_run_past_its_grace() {
    let (addr, _server) = fake_server(Behaviour::Silent).await;
    let cfg = config(
        addr,
        // `node`: with `auto`, asking the silent server for its topology would add a second.
        &[
            "--connections",
            "3",
            "--pipeline",
            "5",
            "--warmup",
            "0",
            "--duration",
            "200ms",
            "--routing",
            "node",
        ],
    );
    let started = std::time::Instant::now();
    let summary = run(&cfg).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200) + GRACE, "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1200) + GRACE, "{elapsed:?}");
    assert_eq!(summary.count, 0);
    assert_eq!(summary.errors, 15, "every request in flight at the end is an error");
    assert!(summary.first_error.unwrap().contains("no reply"));
}

/// Against a cluster, `auto` routes as the SDK does: a node that answers `WrongNode` is left for
/// the leader it names, and no request counts as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_driven_through_its_leaders() {
    let (follower, f) = fake_server(Behaviour::Redirect(2)).await;
    let (leader, l) = fake_server(Behaviour::Store).await;
    let topology = TopologyInfo {
        hash: HASH_NAME.into(),
        partitions: 1,
        node: 1,
        epoch: 3,
        nodes: [(1, follower), (2, leader)]
            .into_iter()
            .map(|(id, a)| NodeAddress { id, native: a.to_string(), ..NodeAddress::default() })
            .collect(),
        // A stale leader: the client must follow the follower's `WrongNode`.
        partition_map: vec![PartitionInfo { replicas: vec![1, 2], leader: 1 }],
        ..TopologyInfo::default()
    };
    *f.topology.lock().unwrap() = topology.clone();
    *l.topology.lock().unwrap() = TopologyInfo { node: 2, ..topology };
    let args = ["--connections", "2", "--pipeline", "4", "--warmup", "0", "--duration", "300ms"];
    let summary = run(&config(follower, &args)).await.unwrap();
    assert!(summary.count > 100, "{}", summary.count);
    assert_eq!(summary.errors, 0, "{:?}", summary.first_error);
    let (to_follower, to_leader) =
        (f.requests.load(Ordering::Relaxed), l.requests.load(Ordering::Relaxed));
    assert!(to_leader >= summary.count, "{to_leader} requests reached the leader");
    assert!(to_follower < 20, "{to_follower} requests reached the follower");
    // `node` sends everything where it is told: here every request is refused.
    let args = [&args[..], &["--routing", "node"]].concat();
    let summary = run(&config(follower, &args)).await.unwrap();
    assert_eq!(summary.count, 0);
    assert!(summary.first_error.unwrap().contains("not the leader"));
}

/// `--routing map` refuses a node that is not in a cluster, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_map_needs_a_cluster() {
    let (addr, _server) = fake_server(Behaviour::Store).await;
    let err = run(&config(addr, &["--routing", "map", "--duration", "100ms"])).await.unwrap_err();
    assert!(err.to_string().contains("a single node"), "{err}");
}
