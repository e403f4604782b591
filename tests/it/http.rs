//! The HTTP admin API with a real HTTP client (Python's urllib, tests/it/http_client.py): every
//! route, binary values in base64, malformed JSON, and `/metrics` parsed by prometheus-client's
//! text parser after traffic on all three protocols. tests/run.sh installs prometheus-client.

use crate::harness::Node;

#[test]
fn http_routes_and_prometheus_metrics() {
    let node = Node::start(&["--cores", "2"]);
    // Some traffic on the native and Redis ports first, so the metrics have something to say.
    let mut w = node.wire();
    for i in 0..50 {
        let key = crate::harness::b(&format!("native:{i}"));
        w.call(corekv_schema::codec::Op::set(key.clone(), crate::harness::b("v")));
        w.call(corekv_schema::codec::Op::get(key));
    }
    crate::harness::python_checks("http_client.py", node.http.port(), "http: all checks passed");
}

/// HTTP connections count in the connections gauge, and one that sends its headers slower
/// than `--partial-frame-timeout-ms` (or idles that long) is closed; the node goes on serving.
#[test]
fn slow_http_headers_are_cut_off_and_connections_are_counted() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    let node = Node::start(&["--cores", "1", "--partial-frame-timeout-ms", "400"]);
    let gauge = || crate::harness::metric(node.http, "corekv_connections") as u64;
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(node.http).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    // The three idle ones and the scrape itself.
    assert_eq!(gauge(), 4);
    let mut slow = TcpStream::connect(node.http).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: corekv\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "{rest:?}");
    // Idle connections are closed too: the ones that never sent anything, and one that was
    // served a request and then went quiet.
    let mut served = TcpStream::connect(node.http).unwrap();
    served.write_all(b"GET /healthz HTTP/1.1\r\nHost: corekv\r\n\r\n").unwrap();
    served.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = [0u8; 512];
    let n = served.read(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    for mut conn in idle.into_iter().chain([served]) {
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).unwrap(), 0, "an idle connection is closed");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(gauge(), 1, "closed connections leave the gauge");
    assert_eq!(crate::harness::http_get(node.http, "/healthz").0, 200);
}
