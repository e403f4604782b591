//! TLS on the client ports, with certificates made by `tuning/make-certs.sh` (openssl) and
//! real clients: redis-cli, redis-py, the SDK, an HTTPS client. Plaintext to a TLS port fails
//! and the node serves on; client certificates are checked; SIGHUP swaps the certificate
//! without dropping a connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corekv_client::{ClientConfig, Tls, blocking};

use crate::harness::Node;

/// A dev CA and certificates for nodes 1..=4 and a client, in a fresh directory.
pub fn make_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_certs_in(dir.path());
    dir
}

pub fn make_certs_in(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/make-certs.sh");
    let out =
        Command::new("bash").arg(script).arg(dir).args(["1", "2", "3", "4"]).output().unwrap();
    assert!(
        out.status.success(),
        "make-certs.sh (needs openssl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

fn tls_node(certs: &Path, extra: &[&str]) -> Node {
    let (cert, key) = (path(certs, "node-1.pem"), path(certs, "node-1.key"));
    let mut flags = vec!["--tls-cert", &cert, "--tls-key", &key];
    flags.extend(extra);
    Node::start(&flags)
}

fn sdk(
    node: &Node,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> corekv_client::Result<blocking::Client> {
    let tls = Tls::from_pem_files(ca, client)?;
    let config =
        ClientConfig { tls: Some(tls), connect_timeout_ms: 3000, ..ClientConfig::default() };
    blocking::Client::connect(node.addr, config)
}

fn redis_cli(node: &Node, tls: Option<&[&str]>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &node.resp.port().to_string()]);
    if let Some(tls) = tls {
        cmd.arg("--tls").args(tls);
    }
    let out = cmd.args(args).output().expect("redis-cli");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.trim().to_string())
}

/// Sends `bytes` in plaintext and reads until the node closes: what came back.
fn plaintext_probe(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    back
}

fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .env_remove("PYTHONOPTIMIZE")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed (tests/run.sh installs redis-py):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn tls_ports_serve_tls_clients_and_refuse_plaintext() {
    let certs = make_certs();
    let dir = certs.path();
    let node = tls_node(dir, &[]);
    let ca = path(dir, "ca.pem");
    let tls = ["--cacert", ca.as_str()];
    assert_eq!(redis_cli(&node, Some(&tls), &["SET", "k", "v"]), (true, "OK".into()));
    assert_eq!(redis_cli(&node, Some(&tls), &["GET", "k"]), (true, "v".into()));

    // Plaintext on each port: refused, and nothing a plaintext client could take for an
    // answer comes back.
    let (_, plain) = redis_cli(&node, None, &["PING"]);
    assert!(!plain.contains("PONG"), "plaintext RESP was served: {plain}");
    let back = plaintext_probe(node.resp, b"PING\r\n");
    assert!(!back.starts_with(b"+PONG"), "{back:?}");
    let back = plaintext_probe(node.addr, &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(back.len() < 64, "a TLS alert at most: {back:?}");
    let back = plaintext_probe(node.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!back.starts_with(b"HTTP/1.1 200"), "{back:?}");

    // The node serves on: redis-cli, redis-py (RESP2 and RESP3), the SDK, HTTPS.
    assert_eq!(redis_cli(&node, Some(&tls), &["GET", "k"]), (true, "v".into()));
    let port = node.resp.port();
    let got = python(&format!(
        "import redis\n\
         for proto in (2, 3):\n\
         \x20   r = redis.Redis(host='127.0.0.1', port={port}, ssl=True, ssl_ca_certs='{ca}', \
         protocol=proto)\n\
         \x20   r.set('py', 'ok%d' % proto)\n\
         \x20   print(r.get('py').decode(), end=' ')\n"
    ));
    assert_eq!(got, "ok2 ok3");
    let client = sdk(&node, Path::new(&ca), None).expect("SDK over TLS");
    client.set("sdk", "yes").unwrap();
    assert_eq!(&client.get("sdk").unwrap().unwrap().value[..], b"yes");
    assert_eq!(&client.get("py").unwrap().unwrap().value[..], b"ok3");
    let http = node.http.port();
    let got = python(&format!(
        "import ssl, urllib.request\n\
         ctx = ssl.create_default_context(cafile='{ca}')\n\
         print(urllib.request.urlopen('https://127.0.0.1:{http}/healthz', context=ctx).status)"
    ));
    assert_eq!(got, "200");
    // A client that does not trust the node's CA stops at the handshake.
    let other = make_certs();
    let err = sdk(&node, &other.path().join("ca.pem"), None).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("TLS handshake"), "{err}");
}

#[test]
fn client_certificates_are_required_and_checked() {
    let certs = make_certs();
    let dir = certs.path();
    let ca = path(dir, "ca.pem");
    let node = tls_node(dir, &["--tls-client-ca", &ca]);
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let with = sdk(&node, Path::new(&ca), Some((&cert, &key))).expect("with a client certificate");
    with.set("a", "1").unwrap();
    // Without one, the first request fails: the node ends the handshake.
    let without = sdk(&node, Path::new(&ca), None).and_then(|c| c.get("a").map(|_| ()));
    assert!(without.is_err(), "served a client without a certificate");
    // One from another CA is refused too.
    let other = make_certs();
    let (ocert, okey) = (other.path().join("client.pem"), other.path().join("client.key"));
    let stranger =
        sdk(&node, Path::new(&ca), Some((&ocert, &okey))).and_then(|c| c.get("a").map(|_| ()));
    assert!(stranger.is_err(), "served a client whose certificate another CA signed");
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = ["--cacert", ca.as_str(), "--cert", c, "--key", k];
    assert_eq!(redis_cli(&node, Some(&tls), &["GET", "a"]), (true, "1".into()));
    let (_, without) = redis_cli(&node, Some(&["--cacert", ca.as_str()]), &["GET", "a"]);
    assert_ne!(without, "1", "redis-cli without a client certificate was served");
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_connections() {
    let (first, second) = (make_certs(), make_certs());
    let live = tempfile::tempdir().unwrap();
    let put = |from: &Path| {
        for name in ["node-1.pem", "node-1.key"] {
            // Written aside and renamed, as an operator's rotation does.
            let tmp: PathBuf = live.path().join(format!("{name}.new"));
            std::fs::copy(from.join(name), &tmp).unwrap();
            std::fs::rename(&tmp, live.path().join(name)).unwrap();
        }
    };
    put(first.path());
    let node = tls_node(live.path(), &[]);
    let (ca1, ca2) = (first.path().join("ca.pem"), second.path().join("ca.pem"));
    let old = sdk(&node, &ca1, None).expect("the first certificate");
    old.set("before", "1").unwrap();
    assert!(sdk(&node, &ca2, None).and_then(|c| c.get("before")).is_err());

    put(second.path());
    let pid = node.child.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        match sdk(&node, &ca2, None).and_then(|c| c.get("before").map(|_| c)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the new certificate never served: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(&new.get("before").unwrap().unwrap().value[..], b"1");
    // Every core takes the new files within its 100 ms look, handshakes or not.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..8 {
        assert!(
            sdk(&node, &ca2, None).and_then(|c| c.get("before")).is_ok(),
            "a core kept the old one"
        );
    }
    // New handshakes show the new certificate only; the connection made before goes on.
    assert!(sdk(&node, &ca1, None).and_then(|c| c.get("before")).is_err());
    old.set("after", "2").unwrap();
    assert_eq!(&old.get("after").unwrap().unwrap().value[..], b"2");

    // A broken file is reported and the certificate in use stays.
    std::fs::write(live.path().join("node-1.pem"), "not a certificate").unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let again = sdk(&node, &ca2, None).expect("still the second certificate");
    assert_eq!(&again.get("after").unwrap().unwrap().value[..], b"2");
    assert!(node.stderr().contains("TLS reload failed"), "{}", node.stderr());
}

#[test]
fn a_bad_tls_file_stops_the_start_with_its_name() {
    let certs = make_certs();
    let dir = certs.path();
    let (cert, key) = (path(dir, "node-1.pem"), path(dir, "node-2.key"));
    let run = tempfile::tempdir().unwrap();
    let (code, out) =
        crate::harness::boot_failure(run.path(), &["--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("TLS") && out.contains("node-1.pem"), "{out}");
    let missing = path(dir, "missing.pem");
    let (code, out) =
        crate::harness::boot_failure(run.path(), &["--tls-cert", &missing, "--tls-key", &key]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("missing.pem"), "{out}");
}
