//! The client SDK against a real node: async and blocking, pipelining, shard-aware routing.

use corekv_client::{ClientConfig, Error, Op, SetOptions, blocking};

use crate::harness::{Node, key_on_core};

#[test]
fn blocking_client_end_to_end() {
    let node = Node::start(&["--cores", "2"]);
    let client = blocking::Client::connect(node.addr, ClientConfig::default()).unwrap();
    let v1 = client.set("a", "1").unwrap();
    let got = client.get("a").unwrap().expect("present");
    assert_eq!((got.value.as_ref(), got.version, got.ttl_ms), (&b"1"[..], v1, None));
    assert!(client.get("missing").unwrap().is_none());
    assert!(matches!(
        client.set_if_absent("a", "2"),
        Err(Error::ConditionFailed { current_version }) if current_version == v1
    ));
    let v2 = client.update("a", "2").unwrap();
    assert!(matches!(client.cas("a", "1", "3"), Err(Error::ConditionFailed { .. })));
    let v3 = client.cas("a", "2", "3").unwrap();
    assert!(matches!(client.cas_version("a", v2, "4"), Err(Error::ConditionFailed { .. })));
    client.cas_version("a", v3, "4").unwrap();
    let opts = SetOptions { ttl_ms: 60_000, ..Default::default() };
    client.set_with("t", "v", opts).unwrap();
    assert!(client.get("t").unwrap().unwrap().ttl_ms.is_some());
    assert!(client.delete("a").unwrap());
    assert!(!client.delete("a").unwrap());
    client.ping().unwrap();
    assert_eq!(client.topology().unwrap().cores, 2);
    let replies =
        client.batch((0..20).map(|i| Op::Get { key: format!("a{i}").into() }).collect()).unwrap();
    assert_eq!(replies.len(), 20);
}

#[test]
fn async_client_pipelines_across_cores_shard_aware() {
    let node = Node::start(&["--cores", "2"]);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = ClientConfig { shard_aware: true, pool_size: 2, ..Default::default() };
        let client = corekv_client::Client::connect(node.addr, config).await.unwrap();
        assert!(client.is_shard_aware());
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let c = client.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("sdk:{i}");
                let v = c.set(key.clone(), i.to_string()).await.unwrap();
                let got = c.get(key).await.unwrap().unwrap();
                assert_eq!(got.value, i.to_string());
                assert_eq!(got.version, v);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = client.stats().await.unwrap();
        assert_eq!(stats.cores.iter().map(|c| c.keys).sum::<u64>(), 2000);
        // Shard-aware routing sends each key straight to its owner: no key op is forwarded.
        // (Stats itself is the only fan-out.)
        let forwarded: u64 = stats.cores.iter().map(|c| c.forwarded_out).sum();
        assert!(forwarded <= 2, "shard-aware client caused {forwarded} forwards: {stats:?}");
    });
}

#[test]
fn shard_aware_keys_land_on_their_core_port() {
    let node = Node::start(&["--cores", "2"]);
    let config = ClientConfig { shard_aware: true, pool_size: 1, ..Default::default() };
    let client = blocking::Client::connect(node.addr, config).unwrap();
    for core in 0..2u16 {
        client.set(key_on_core("owned:", core, 2), "v").unwrap();
    }
    let stats = client.stats().unwrap();
    for c in &stats.cores {
        assert_eq!(c.keys, 1, "{stats:?}");
    }
}
