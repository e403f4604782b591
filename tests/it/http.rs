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
