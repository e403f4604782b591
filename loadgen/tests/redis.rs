//! The RESP driver against a real redis-server (tests/run.sh installs it): a preloaded mixed
//! run completes with no errors, and its misses are real (DEL and GET of absent keys).

use std::process::Command;

#[path = "../../tests/support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

#[test]
fn drives_redis_server_over_resp() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let out = Command::new(env!("CARGO_BIN_EXE_corekv-loadgen"))
        .args(["--addr", &redis.addr.to_string(), "--protocol", "resp"])
        .args(["--keys", "1000", "--preload", "--mix", "get=60,set=30,del=10"])
        .args(["--connections", "4", "--pipeline", "8", "--duration", "1", "--warmup", "0"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run loadgen");
    drop(redis);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["count"].as_u64().unwrap() > 1000, "{summary}");
    // DELs remove keys that later GETs and DELs then miss.
    let misses: u64 =
        ["get", "del"].iter().map(|op| summary["ops"][op]["misses"].as_u64().unwrap_or(0)).sum();
    assert!(misses > 0, "{summary}");
}
