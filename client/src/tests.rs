//! End-to-end tests of the SDK against the in-process fake node of [`crate::testing`]: typed
//! results, pipelining and id matching, back-pressure, timeouts, connection loss and lazy
//! re-connect, shard-aware routing, and the blocking client.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_schema::codec::{ErrorCode, Op, Reply, TopologyInfo};
use corekv_schema::placement::core_of;

use crate::testing::{Behavior, FakeServer, plain_topology};
use crate::{
    Client, ClientConfig, Condition, Error, NodeAddress, PartitionInfo, SetOptions, blocking, check,
};

/// These tests count and script a fake node's frames: no Topology request on connect.
fn config() -> ClientConfig {
    ClientConfig {
        pool_size: 1,
        request_timeout_ms: 5_000,
        cluster_routing: false,
        ..ClientConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_methods_map_replies() {
    let server = FakeServer::start(Behavior::Serve).await;
    let client = Client::connect(server.addr, config()).await.unwrap();

    assert_eq!(client.get("k").await.unwrap(), None);
    let v1 = client.set("k", "a").await.unwrap();
    let found = client.get("k").await.unwrap().unwrap();
    assert_eq!((found.value.as_ref(), found.version), (&b"a"[..], v1));

    let err = client.set_if_absent("k", "b").await.unwrap_err();
    assert!(matches!(err, Error::ConditionFailed { current_version } if current_version == v1));
    let err = client.update("missing", "b").await.unwrap_err();
    assert!(matches!(err, Error::ConditionFailed { current_version: 0 }));
    let v2 = client.update("k", "b").await.unwrap();
    assert!(v2 > v1);

    let err = client.cas("k", "wrong", "c").await.unwrap_err();
    assert!(matches!(err, Error::ConditionFailed { current_version } if current_version == v2));
    let v3 = client.cas("k", "b", "c").await.unwrap();
    let err = client.cas_version("k", v2, "d").await.unwrap_err();
    assert!(matches!(err, Error::ConditionFailed { current_version } if current_version == v3));
    let v4 = client.cas_version("k", v3, "d").await.unwrap();
    let options =
        SetOptions { condition: Condition::IfVersion(v4), ttl_ms: 60_000, ..SetOptions::default() };
    client.set_with("k", "e", options).await.unwrap();

    assert!(client.delete("k").await.unwrap());
    assert!(!client.delete("k").await.unwrap());

    let replies = client
        .batch(vec![Op::Get { key: "k".into() }, Op::Ping { payload: Bytes::new() }])
        .await
        .unwrap();
    assert_eq!(replies.len(), 2);
    assert!(matches!(check(replies[0].clone()), Err(Error::NotFound)));
    assert!(matches!(replies[1], Reply::Pong { .. }));

    client.ping().await.unwrap();
    assert_eq!(client.topology().await.unwrap(), plain_topology());
    assert_eq!(client.stats().await.unwrap().uptime_ms, 1);
    let raw = client.request(Op::Get { key: "k".into() }).await.unwrap();
    assert!(matches!(raw, Reply::Error(e) if e.code == ErrorCode::NotFound));
}

/// Thousands of concurrent calls on one connection: every caller gets its own answer (ids are
/// checked in order), and the writer coalesced several frames into one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_calls_get_their_own_answers() {
    let server = FakeServer::start(Behavior::Serve).await;
    let client =
        Client::connect(server.addr, ClientConfig { max_in_flight: 64, ..config() }).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..2_000u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("key:{i}");
            let value = format!("value:{i}");
            client.set(key.clone(), value.clone()).await?;
            let found = client.get(key).await?;
            Ok::<_, Error>(found.map(|f| f.value) == Some(Bytes::from(value)))
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap().unwrap());
    }
    assert_eq!(server.connections(), 1);
    assert!(server.frames_per_read_max() > 1, "requests were not pipelined");
}

/// A server that never answers: calls time out, and the window stops the client from sending
/// more than `max_in_flight` unanswered requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_and_window_holds_back() {
    let server = FakeServer::start(Behavior::Silent).await;
    let client = Client::connect(
        server.addr,
        ClientConfig { request_timeout_ms: 100, max_in_flight: 4, ..config() },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.get(format!("k{i}")).await }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Timeout { after_ms: 100 }), "{err}");
        assert!(err.is_retryable() && err.may_have_applied());
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.seen().len(), 4);
}

/// The server hangs up with requests outstanding: every waiter fails, and the next call
/// re-connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drop_fails_waiters_then_reconnects() {
    let server = FakeServer::start(Behavior::HangUpFirstAfter(5)).await;
    let client = Client::connect(server.addr, config()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.get(format!("k{i}")).await }));
    }
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Closed | Error::Io(_)), "{err}");
    }
    client.set("k", "v").await.unwrap();
    assert_eq!(server.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_mismatch_is_a_protocol_error() {
    let server = FakeServer::start(Behavior::WrongId).await;
    let client = Client::connect(server.addr, config()).await.unwrap();
    let err = client.ping().await.unwrap_err();
    assert!(matches!(&err, Error::Protocol(m) if m.contains("does not match")), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_locally() {
    let server = FakeServer::start(Behavior::Serve).await;
    let client = Client::connect(server.addr, ClientConfig { frame_bytes_max: 1024, ..config() })
        .await
        .unwrap();
    let err = client.set("k", vec![0u8; 2048]).await.unwrap_err();
    assert!(matches!(err, Error::RequestTooLarge { frame_bytes_max: 1024, .. }), "{err}");
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    client.ping().await.unwrap();
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_typed_and_retryable() {
    let server = FakeServer::start(Behavior::Serve).await;
    let addr = server.addr;
    drop(server);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = Client::connect(addr, config()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_retryable() && !err.may_have_applied());
}

/// Two fake "cores" behind a fake node whose topology lists their ports: each key must reach
/// exactly the core that `placement::core_of` names, and the node port sees only the topology
/// request and operations that span cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_aware_routing_reaches_the_owning_core() {
    let cores =
        [FakeServer::start(Behavior::Serve).await, FakeServer::start(Behavior::Serve).await];
    let topology = TopologyInfo {
        node_id: "fake".into(),
        cores: 2,
        partitions: 1024,
        hash: "crc32c".into(),
        shard_ports: cores.iter().map(|c| c.addr.port()).collect(),
        ..TopologyInfo::default()
    };
    let node = FakeServer::start_with(Behavior::Serve, topology).await;
    let client =
        Client::connect(node.addr, ClientConfig { shard_aware: true, pool_size: 2, ..config() })
            .await
            .unwrap();
    assert!(client.is_shard_aware());

    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        client.set(key.clone(), "v").await.unwrap();
        assert!(client.get(key.clone()).await.unwrap().is_some());
    }
    for (core, server) in cores.iter().enumerate() {
        let expected: BTreeSet<&[u8]> = keys
            .iter()
            .map(|k| k.as_bytes())
            .filter(|k| usize::from(core_of(k, 1024, 2)) == core)
            .collect();
        let seen = server.keys_seen();
        let seen: BTreeSet<&[u8]> = seen.iter().map(|k| k.as_ref()).collect();
        assert!(!expected.is_empty());
        assert_eq!(seen, expected, "core {core}");
    }
    assert_eq!(node.seen(), vec![Op::Topology]);

    // A batch whose keys share a hash tag goes to their core; a mixed one to the node.
    let tagged = vec![Op::Get { key: "a{7}".into() }, Op::Get { key: "b{7}".into() }];
    client.batch(tagged).await.unwrap();
    let owner = usize::from(core_of(b"7", 1024, 2));
    assert!(cores[owner].keys_seen().contains(&Bytes::from("a{7}")));
    let mixed: Vec<Op> = keys.iter().map(|k| Op::Get { key: k.clone().into() }).collect();
    client.batch(mixed).await.unwrap();
    assert_eq!(node.keys_seen().len(), keys.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_aware_without_shard_ports_uses_the_node_port() {
    let node = FakeServer::start(Behavior::Serve).await;
    let config = ClientConfig { shard_aware: true, ..config() };
    let client = Client::connect(node.addr, config).await.unwrap();
    assert!(!client.is_shard_aware());
    client.set("k", "v").await.unwrap();
    assert_eq!(node.keys_seen(), vec![Bytes::from("k")]);
}

#[test]
fn blocking_client_basic_calls() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime.block_on(FakeServer::start(Behavior::Serve));
    let client = blocking::Client::connect(server.addr, config()).unwrap();

    assert_eq!(client.get("k").unwrap(), None);
    let v1 = client.set("k", "a").unwrap();
    assert_eq!(client.get("k").unwrap().unwrap().version, v1);
    assert!(matches!(client.set_if_absent("k", "b"), Err(Error::ConditionFailed { .. })));
    let v2 = client.cas_version("k", v1, "b").unwrap();
    client.cas("k", "b", "c").unwrap();
    assert!(matches!(client.cas_version("k", v2, "d"), Err(Error::ConditionFailed { .. })));
    assert!(client.delete("k").unwrap());
    assert!(!client.delete("k").unwrap());
    client.ping().unwrap();
    assert_eq!(client.topology().unwrap().cores, 1);

    // Shared across threads, calls pipeline on the same connection.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let client = &client;
            scope.spawn(move || {
                for i in 0..50 {
                    let key = format!("t{t}:{i}");
                    client.set(key.clone(), "x").unwrap();
                    assert!(client.get(key).unwrap().is_some());
                }
            });
        }
    });

    // Inside a runtime it refuses instead of blocking, and dropping it there does not panic.
    let inside = server_runtime.block_on(async { client.get("k") });
    assert!(matches!(inside, Err(Error::Usage(_))));
    server_runtime.block_on(async move { drop(client) });
    drop(server);
}

/// Fakes as the nodes of a one-partition cluster: node i is `nodes[i - 1]`, the partition's
/// replicas are `replicas` and its leader `leader` (0: unknown); node 1 is the seed.
async fn fake_cluster(behaviors: &[Behavior], replicas: &[u64], leader: u64) -> Vec<FakeServer> {
    let mut nodes = Vec::new();
    for &b in behaviors {
        nodes.push(FakeServer::start(b).await);
    }
    let topology = TopologyInfo {
        hash: "crc32c".into(),
        partitions: 1,
        epoch: 1,
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeAddress {
                id: i as u64 + 1,
                native: n.addr.to_string(),
                ..NodeAddress::default()
            })
            .collect(),
        partition_map: vec![PartitionInfo { replicas: replicas.to_vec(), leader }],
        ..TopologyInfo::default()
    };
    nodes.iter().for_each(|n| n.set_topology(topology.clone()));
    nodes
}

fn cluster_config() -> ClientConfig {
    ClientConfig { cluster_routing: true, request_timeout_ms: 2_000, ..config() }
}

/// Writes go to the leader the map names, and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_go_to_the_leader() {
    let nodes = fake_cluster(&[Behavior::Serve; 3], &[3, 2, 1], 2).await;
    let client = Client::connect(nodes[0].addr, cluster_config()).await.unwrap();
    assert_eq!(client.cluster_epoch(), Some(1));
    client.set("k", "v").await.unwrap();
    assert_eq!(nodes[0].seen(), vec![Op::Topology]);
    assert_eq!(nodes[1].keys_seen(), vec![Bytes::from_static(b"k")]);
    assert!(nodes[2].seen().is_empty());
}

/// `Unavailable` says the write did not apply: the SDK sends it to the next replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resends_what_did_not_apply() {
    let behaviors = [Behavior::Serve, Behavior::Serve, Behavior::Refuse(ErrorCode::Unavailable)];
    let nodes = fake_cluster(&behaviors, &[3, 2, 1], 0).await;
    let client = Client::connect(nodes[0].addr, cluster_config()).await.unwrap();
    client.set("k", "v").await.unwrap();
    assert_eq!(nodes[2].keys_seen().len(), 1, "tried the first replica once");
    assert_eq!(nodes[1].keys_seen().len(), 1, "then the next one, which applied it");
}

/// A write whose outcome is unknown — the node said so, or hung up — is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_never_resends_a_write_that_may_have_applied() {
    for leader in [Behavior::Refuse(ErrorCode::OutcomeUnknown), Behavior::HangUpFirstAfter(1)] {
        let nodes = fake_cluster(&[Behavior::Serve, leader, Behavior::Serve], &[2, 3, 1], 2).await;
        let client = Client::connect(nodes[0].addr, cluster_config()).await.unwrap();
        let err = client.set("k", "v").await.unwrap_err();
        assert!(err.may_have_applied(), "{leader:?}: {err}");
        assert_eq!(nodes[1].keys_seen().len(), 1, "{leader:?}");
        assert!(nodes[2].seen().is_empty() && nodes[0].seen() == vec![Op::Topology]);
    }
}

/// A map older than the one held is ignored; leaders a newer map names are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_the_newest_map() {
    let nodes = fake_cluster(&[Behavior::Serve; 3], &[3, 2, 1], 2).await;
    let client = Client::connect(nodes[0].addr, cluster_config()).await.unwrap();
    let cluster = client.cluster().unwrap();
    let mut newer = client.topology().await.unwrap();
    newer.epoch = 5;
    newer.partition_map[0].leader = 3;
    cluster.learn(&newer);
    let mut older = newer.clone();
    older.epoch = 4;
    older.partition_map[0].leader = 1;
    cluster.learn(&older);
    assert_eq!(client.cluster_epoch(), Some(5));
    client.set("k", "v").await.unwrap();
    assert_eq!(nodes[2].keys_seen().len(), 1, "sent to node 3, the newer map's leader");
}

/// A map without the leader's address yet (a node records its addresses once it is up): the
/// node connected to forwards the request, and the map is asked for again, so once it names
/// the address requests go straight to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forwards_through_the_seed_until_the_map_has_addresses() {
    let nodes = fake_cluster(&[Behavior::Serve; 3], &[2, 3, 1], 2).await;
    let whole = nodes[0].topology();
    let mut partial = whole.clone();
    partial.nodes.retain(|n| n.id == 1);
    partial.partition_map[0].replicas = vec![2, 3];
    nodes[0].set_topology(partial);
    let client = Client::connect(nodes[0].addr, cluster_config()).await.unwrap();
    client.set("k", "v").await.unwrap();
    assert_eq!(nodes[0].keys_seen(), vec![Bytes::from_static(b"k")], "forwarded by the seed");
    assert_eq!(nodes[0].seen().iter().filter(|op| **op == Op::Topology).count(), 2);
    nodes[0].set_topology(whole);
    tokio::time::sleep(super::cluster::REFRESH_EVERY).await;
    client.set("k2", "v").await.unwrap();
    client.set("k3", "v").await.unwrap();
    assert_eq!(nodes[1].keys_seen().len(), 2, "then straight to the leader");
}
