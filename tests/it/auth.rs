//! Users and permissions on every port: `--requirepass`, Redis's AUTH and ACL commands (with
//! redis-cli and redis-py), the native `Authenticate` and its typed errors (through the
//! SDK), HTTP Bearer tokens with 401 and 403, users kept across a restart, and the caps:
//! `--max-connections`, Host and Origin checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use corekv_client::{ClientConfig, Credentials, Error, ErrorCode, blocking};
use corekv_schema::codec::Op;

use crate::harness::Node;

fn cli(node: &Node, auth: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.resp.port().to_string(), "--no-auth-warning"])
        .args(auth)
        .args(args)
        .output()
        .expect("redis-cli");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.trim().to_string()
}

fn sdk(node: &Node, credentials: Option<Credentials>) -> corekv_client::Result<blocking::Client> {
    let config = ClientConfig { credentials, pool_size: 1, ..ClientConfig::default() };
    blocking::Client::connect(node.addr, config)
}

fn user(name: &str, password: &str) -> Option<Credentials> {
    Some(Credentials { user: name.into(), password: password.into() })
}

fn code(e: &Error) -> Option<ErrorCode> {
    e.code()
}

/// One HTTP request with `headers`: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.starts_with("Host:")) {
        request += &format!("Host: {addr}\r\n");
    }
    for h in headers {
        request += &format!("{h}\r\n");
    }
    request += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[test]
fn redis_auth_and_acl_with_key_patterns_across_cores() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_at(dir.path(), &["--cores", "2", "--requirepass", "s3cret"]);
    let admin = ["--user", "default", "--pass", "s3cret"];
    assert_eq!(cli(&node, &[], &["GET", "a"]), "NOAUTH Authentication required.");
    // HELLO before AUTH is refused and leaves the protocol as it was (RESP2 here).
    let mut s = TcpStream::connect(node.resp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HELLO 3\r\nAUTH s3cret\r\nGET missing\r\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("$-1") && !seen.contains("_\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {seen:?}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    assert!(
        seen.starts_with("-NOAUTH") && seen.contains("+OK") && seen.ends_with("$-1\r\n"),
        "{seen:?}"
    );
    assert!(cli(&node, &["-a", "wrong"], &["GET", "a"]).contains("WRONGPASS"));
    assert_eq!(cli(&node, &admin, &["SET", "a", "1"]), "OK");
    assert_eq!(cli(&node, &admin, &["ACL", "SETUSER", "ro", "on", ">ro-pw", "~*", "+@read"]), "OK");
    let app_rules =
        ["ACL", "SETUSER", "app", "on", ">app-pw", "~app:*", "%R~shared:*", "+@read", "+@write"];
    assert_eq!(cli(&node, &admin, &app_rules), "OK");
    assert!(cli(&node, &admin, &["ACL", "SETUSER", "x", "bogus"]).contains("Syntax error"));
    let ro = ["--user", "ro", "--pass", "ro-pw"];
    let app = ["--user", "app", "--pass", "app-pw"];
    assert_eq!(cli(&node, &ro, &["GET", "a"]), "1");
    assert!(cli(&node, &ro, &["SET", "a", "2"]).starts_with("NOPERM"));
    assert!(cli(&node, &ro, &["INCR", "a"]).starts_with("NOPERM"));
    assert!(cli(&node, &ro, &["FLUSHALL"]).starts_with("NOPERM"));
    assert!(cli(&node, &ro, &["ACL", "SETUSER", "ro", "+@write"]).starts_with("NOPERM"));
    assert_eq!(cli(&node, &ro, &["ACL", "WHOAMI"]), "ro");
    // Keys land on both cores: the pattern holds on each, and in every batch.
    for i in 0..20 {
        assert_eq!(cli(&node, &app, &["SET", &format!("app:{i}"), "x"]), "OK", "app:{i}");
    }
    assert!(cli(&node, &app, &["MSET", "app:1", "y", "other", "z"]).starts_with("NOPERM"));
    assert_eq!(cli(&node, &admin, &["EXISTS", "other"]), "0", "a refused batch writes nothing");
    assert!(cli(&node, &app, &["MGET", "app:1", "secret"]).starts_with("NOPERM"));
    assert_eq!(cli(&node, &admin, &["SET", "shared:k", "v"]), "OK");
    assert_eq!(cli(&node, &app, &["GET", "shared:k"]), "v");
    assert!(cli(&node, &app, &["SET", "shared:k", "w"]).contains("shared:k"));
    assert!(cli(&node, &app, &["SCAN", "0"]).starts_with("NOPERM"));
    assert!(cli(&node, &admin, &["ACL", "LIST"]).contains("user app on"));
    // redis-py: username and password, RESP2 and RESP3 (HELLO 3 AUTH), and its typed errors.
    let port = node.resp.port();
    let script = format!(
        "import redis\n\
         for proto in (2, 3):\n\
         \x20   r = redis.Redis(port={port}, username='app', password='app-pw', protocol=proto)\n\
         \x20   assert r.get('app:1') == b'x'\n\
         \x20   try:\n\
         \x20       r.set('other', 1); raise SystemExit('NOPERM expected')\n\
         \x20   except redis.exceptions.NoPermissionError:\n\
         \x20       pass\n\
         try:\n\
         \x20   redis.Redis(port={port}, password='bad').get('a'); raise SystemExit('auth')\n\
         except redis.exceptions.AuthenticationError:\n\
         \x20   pass\n\
         print('python ok')\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env_remove("PYTHONOPTIMIZE")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("python ok"), "{text}");

    // Users are kept in the data directory: a restart knows them.
    drop(node);
    let node = Node::start_at(dir.path(), &["--cores", "2", "--requirepass", "s3cret"]);
    assert_eq!(cli(&node, &app, &["GET", "app:1"]), "x");
    assert_eq!(cli(&node, &admin, &["ACL", "DELUSER", "app", "nobody"]), "1");
    assert!(cli(&node, &app, &["GET", "app:1"]).contains("WRONGPASS"));
}

#[test]
fn native_authenticate_and_typed_errors_through_the_sdk() {
    let node = Node::start(&["--cores", "2", "--requirepass", "pw"]);
    // Without credentials: refused as unauthenticated (the SDK's first request, for the
    // topology, already is).
    let e = sdk(&node, None).and_then(|c| c.get("k")).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unauthenticated), "{e}");
    // Wrong ones fail at connect.
    let e = sdk(&node, user("default", "nope")).map(|_| ()).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unauthenticated), "{e}");
    let admin = sdk(&node, Some(Credentials::password("pw"))).unwrap();
    admin.set("k", "v").unwrap();
    let mut w = node.wire();
    // The raw protocol too: a request before Authenticate is refused, after it served.
    match w.call(Op::get("k")) {
        corekv_schema::codec::Reply::Error(e) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        other => panic!("{other:?}"),
    }
    let auth = Op::Authenticate { user: "default".into(), password: "pw".into() };
    assert!(matches!(w.call(auth), corekv_schema::codec::Reply::Pong { .. }));
    assert!(matches!(w.call(Op::get("k")), corekv_schema::codec::Reply::Value { .. }));
    // A read-only user, through the RESP port's ACL.
    let rules = [
        "--user", "default", "--pass", "pw", "ACL", "SETUSER", "reader", "on", ">r", "~k*",
        "+@read",
    ];
    assert_eq!(cli(&node, &[], &rules), "OK");
    let reader = sdk(&node, user("reader", "r")).unwrap();
    assert_eq!(&reader.get("k").unwrap().unwrap().value[..], b"v");
    let e = reader.set("k", "w").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::PermissionDenied), "{e}");
    let e = reader.get("other").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::PermissionDenied), "{e}");
    assert!(!e.is_retryable() && !e.may_have_applied());
    let batch = Op::Batch(vec![Op::get("k1"), Op::get("secret")]);
    match reader.request(batch).unwrap() {
        corekv_schema::codec::Reply::Error(e) => assert_eq!(e.code, ErrorCode::PermissionDenied),
        other => panic!("a batch with one forbidden key: {other:?}"),
    }
    let e = reader.request(Op::Checkpoint).map(corekv_client::check).unwrap().unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::PermissionDenied), "{e}");
}

#[test]
fn http_bearer_tokens_give_401_and_403() {
    let node = Node::start(&["--requirepass", "pw"]);
    let h = node.http;
    assert_eq!(http(h, "GET", "/healthz", &[], "").0, 200, "probes need no token");
    assert_eq!(http(h, "GET", "/api/nodes/status", &[], "").0, 401);
    assert_eq!(http(h, "GET", "/api/get/k", &["Authorization: Bearer nope"], "").0, 401);
    let admin = "Authorization: Bearer default:pw";
    let set = r#"{"key":"k","value":"v"}"#;
    assert_eq!(http(h, "POST", "/api/set", &[admin], set).0, 200);
    assert_eq!(http(h, "GET", "/api/get/k", &["Authorization: Bearer pw"], "").0, 200);
    let rules = r#"{"rules":"on >r ~k* +@read"}"#;
    assert_eq!(http(h, "PUT", "/api/users/reader", &[admin], rules).0, 200);
    let reader = "Authorization: Bearer reader:r";
    assert_eq!(http(h, "GET", "/api/get/k", &[reader], "").0, 200);
    assert_eq!(http(h, "POST", "/api/set", &[reader], set).0, 403);
    assert_eq!(http(h, "GET", "/api/get/other", &[reader], "").0, 403);
    assert_eq!(http(h, "GET", "/api/users", &[reader], "").0, 403);
    let (status, body) = http(h, "GET", "/api/users", &[admin], "");
    assert!(status == 200 && body.contains("user reader on"), "{status} {body}");
    assert_eq!(http(h, "DELETE", "/api/users/reader", &[admin], "").0, 200);
    assert_eq!(http(h, "GET", "/api/get/k", &[reader], "").0, 401);
    // A browser's cross-site request, and a Host that names another site, are refused.
    let origin = "Origin: http://evil.example";
    assert_eq!(http(h, "POST", "/api/set", &[admin, origin], set).0, 403);
    assert_eq!(http(h, "GET", "/api/get/k", &[admin, "Host: evil.example"], "").0, 403);
    let own = format!("Origin: http://{h}");
    assert_eq!(http(h, "POST", "/api/set", &[admin, &own], set).0, 200);
}

#[test]
fn connections_beyond_the_cap_are_refused_with_a_reason() {
    let node = Node::start(&["--cores", "1", "--max-connections", "2"]);
    let a = sdk(&node, None).unwrap();
    let b = sdk(&node, None).unwrap();
    a.set("k", "v").unwrap();
    b.get("k").unwrap();
    let e = sdk(&node, None).and_then(|c| c.get("k")).unwrap_err();
    assert!(e.to_string().contains("max number of clients"), "{e}");
    assert!(cli(&node, &[], &["PING"]).contains("max number of clients reached"));
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let c = sdk(&node, None).unwrap();
    c.get("k").unwrap();
    drop((b, c));
    std::thread::sleep(Duration::from_millis(300));
    let refused = crate::harness::metric(node.http, "corekv_connections_refused_total");
    assert!(refused >= 2.0, "{refused}");
}

/// `corekv user ...` with the environment that carries a token and a CA.
fn corekv_user(node: &Node, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let http = node.http.to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corekv"));
    cmd.arg("user").args(&args[..1]).args(["--http", &http]).args(&args[1..]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("corekv user");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn corekv_user_manages_users_over_https_with_a_token() {
    let certs = crate::tls::make_certs();
    let dir = certs.path();
    let (cert, key) = (dir.join("node-1.pem"), dir.join("node-1.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let node = Node::start(&["--tls-cert", cert, "--tls-key", key, "--requirepass", "pw"]);
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let admin = [("COREKV_TLS_CA", ca), ("COREKV_TOKEN", "default:pw")];
    let (ok, text) = corekv_user(&node, &admin, &["set", "app", "on", ">x", "~app:*", "+@read"]);
    assert!(ok, "{text}");
    let (ok, text) = corekv_user(&node, &admin, &["list"]);
    assert!(ok && text.contains("user app on") && text.contains("~app:*"), "{text}");
    let (ok, text) = corekv_user(&node, &[("COREKV_TLS_CA", ca)], &["list"]);
    assert!(!ok && text.contains("401"), "no token: {text}");
    let reader = [("COREKV_TLS_CA", ca), ("COREKV_TOKEN", "app:x")];
    let (ok, text) = corekv_user(&node, &reader, &["del", "app"]);
    assert!(!ok && text.contains("403"), "not an admin: {text}");
    let (ok, text) = corekv_user(&node, &admin, &["del", "app"]);
    assert!(ok, "{text}");
}

#[test]
fn a_user_holds_at_most_its_cap_of_connections() {
    let node = Node::start(&["--requirepass", "pw", "--max-connections-per-user", "2"]);
    let admin = Some(Credentials::password("pw"));
    let (a, b) = (sdk(&node, admin.clone()).unwrap(), sdk(&node, admin.clone()).unwrap());
    let e = sdk(&node, admin.clone()).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("max number of connections reached for user default"), "{e}");
    drop(a);
    std::thread::sleep(Duration::from_millis(300));
    let c = sdk(&node, admin).unwrap();
    c.set("k", "v").unwrap();
    b.get("k").unwrap();
}
