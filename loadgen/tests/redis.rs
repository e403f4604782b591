//! The RESP driver against a real redis-server (tests/run.sh installs it): a preloaded mixed
//! run completes with no errors, and its misses are real (DEL and GET of absent keys).

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn drives_redis_server_over_resp() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (tests/run.sh installs it: apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let out = Command::new(env!("CARGO_BIN_EXE_corekv-loadgen"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "--protocol", "resp"])
        .args(["--keys", "1000", "--preload", "--mix", "get=60,set=30,del=10"])
        .args(["--connections", "4", "--pipeline", "8", "--duration", "1", "--warmup", "0"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run loadgen");
    let _ = redis.kill();
    let _ = redis.wait();
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
