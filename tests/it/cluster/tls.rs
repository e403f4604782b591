//! Node links over mutual TLS: a cluster whose nodes show certificates naming them, and
//! strangers at a node's cluster port: plaintext, no certificate, another CA, a certificate
//! naming another node, another cluster's id. Each is refused and the cluster serves on.
//! Then a peer that is who it says it is sends Raft messages raft-rs would abort on: they
//! are refused, and the node stays up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv::tls::{PeerFiles, node_name};
use corekv_schema::codec::{Op, Reply};
use corekv_schema::peer::{self, PEER_VERSION, PeerMessage};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

use super::{Cluster, PARTITIONS, key_in_partition};
use crate::tls::make_certs;

fn files(dir: &Path, node: u64) -> PeerFiles {
    PeerFiles {
        cert: dir.join(format!("node-{node}.pem")),
        key: dir.join(format!("node-{node}.key")),
        ca: dir.join("ca.pem"),
    }
}

/// A link to `addr` as TLS client with `config` (naming node `to`), or the handshake's error.
fn dial(
    addr: SocketAddr,
    to: u64,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(config, node_name(to)).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // The handshake runs with the first I/O; TLS 1.3 reports a refused client certificate
    // only on the first read after it.
    s.flush().map_err(|e| e.to_string())?;
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// Whether the node closed the link with nothing to show for it but a TLS alert: the read
/// ends (or fails) within its timeout.
fn closed(s: &mut impl Read) -> bool {
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => back.len() < 16,
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        }
    }
}

fn hello(cluster_id: u64, from: u64, to: u64) -> Vec<u8> {
    peer::encode(&PeerMessage::Hello {
        cluster_id,
        from_node: from,
        to_node: to,
        version: PEER_VERSION,
    })
}

fn raft(kind: MessageType, term: u64, change: impl FnOnce(&mut Message)) -> Bytes {
    let mut m = Message::default();
    m.set_msg_type(kind);
    (m.from, m.to, m.term) = (3, 1, term);
    change(&mut m);
    Bytes::from(m.write_to_bytes().unwrap())
}

fn cluster_port(c: &Cluster, id: usize) -> SocketAddr {
    let initial = &c.flags[0][3];
    let addr = initial.split(',').find_map(|e| e.strip_prefix(&format!("{id}="))).unwrap();
    addr.parse().unwrap()
}

fn served(c: &Cluster, via: usize, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut w = c.node(via).wire();
    loop {
        match w.try_call(Op::set(key.to_string(), "v")) {
            Some(Reply::Written { .. }) => return,
            other => {
                assert!(Instant::now() < deadline, "node {via} stopped serving: {other:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn node_links_are_mutual_tls_and_refuse_strangers() {
    let certs = make_certs();
    let dir = certs.path().to_str().unwrap().to_string();
    let (cert, key, ca) = (
        format!("{dir}/node-{{id}}.pem"),
        format!("{dir}/node-{{id}}.key"),
        format!("{dir}/ca.pem"),
    );
    let tls = ["--peer-tls-cert", &cert, "--peer-tls-key", &key, "--peer-tls-ca", &ca];
    let mut c = Cluster::start_flags(3, None, PARTITIONS, 1, &tls);
    c.wait_writable();
    // Replication and forwarding cross the links: a write through one node, read at another.
    let key_ = key_in_partition(1, "tls");
    served(&c, 1, &key_);
    let mut w = c.node(3).wire();
    assert!(matches!(w.call(Op::get(key_.clone())), Reply::Value { .. }));

    let port = cluster_port(&c, 1);
    let nodes: Vec<(u64, SocketAddr)> = (1..=3).map(|i| (i as u64, cluster_port(&c, i))).collect();
    let cluster_id = corekv::config::cluster_id_of(&nodes);
    let before = c.node(1).stderr().len();

    // Plaintext: the Hello is never read; the link closes at the handshake.
    let mut plain = TcpStream::connect(port).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(&hello(cluster_id, 3, 1)).unwrap();
    assert!(closed(&mut plain), "a plaintext link was served");

    // No client certificate, or one from another CA: refused at the handshake.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(certs.path().join("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap()).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refused = |r: Result<rustls::StreamOwned<_, _>, String>| match r {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(&hello(cluster_id, 3, 1));
            let _ = s.flush();
            closed(&mut s)
        }
    };
    assert!(refused(dial(port, 1, Arc::new(anonymous))), "a link without a certificate");
    let other = make_certs();
    let stranger = files(other.path(), 3).client().unwrap();
    assert!(refused(dial(port, 1, stranger)), "a link with another CA's certificate");

    // The cluster's own CA, but the certificate names node 3 and the Hello says node 2.
    let as3 = files(certs.path(), 3).client().unwrap();
    let mut s = dial(port, 1, as3.clone()).expect("node 3's certificate is good");
    s.write_all(&hello(cluster_id, 2, 1)).unwrap();
    s.flush().unwrap();
    assert!(closed(&mut s), "node 3's certificate passed for node 2");
    // Another cluster's id.
    let mut s = dial(port, 1, as3.clone()).unwrap();
    s.write_all(&hello(cluster_id ^ 1, 3, 1)).unwrap();
    s.flush().unwrap();
    assert!(closed(&mut s), "a link from another cluster was served");

    // Node 3 itself, sending what raft-rs aborts on (or what would put anything in the log).
    let mut s = dial(port, 1, as3).unwrap();
    s.write_all(&hello(cluster_id, 3, 1)).unwrap();
    let hostile = vec![
        (1, raft(MessageType::MsgHeartbeat, 50, |m| m.commit = 1 << 40)),
        (1, raft(MessageType::MsgPropose, 0, |m| m.mut_entries().push(Default::default()))),
        (
            2,
            raft(MessageType::MsgAppend, 50, |m| {
                (m.index, m.log_term) = (1 << 30, 0);
                m.commit = 1 << 31;
            }),
        ),
        (3, raft(MessageType::MsgRequestVote, 0, |_| {})),
        (
            4,
            raft(MessageType::MsgSnapshot, 50, |m| m.mut_snapshot().mut_metadata().index = 1 << 20),
        ),
        (5, Bytes::from_static(b"\xff\xff not protobuf")),
    ];
    let frame = peer::encode(&PeerMessage::Raft { from_node: 3, to_node: 1, messages: hostile });
    s.write_all(&frame).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_secs(1));

    for id in 1..=3 {
        served(&c, id, &format!("after-{id}"));
    }
    let log = c.node(1).stderr()[before..].to_string();
    for said in ["does not name node-2", "link from another cluster", "raft message refused"] {
        assert!(log.contains(said), "node 1 never said {said:?}:\n{log}");
    }
    assert!(!log.contains("aborting"), "{log}");

    // A fourth node joins over the same mutual TLS (its JoinAsk too), and is added.
    let cluster_addr = c.join(4, 1);
    assert!(c.node(4).stderr().contains("joining: learned the cluster"), "{}", c.node(4).stderr());
    let body = format!(r#"{{"node_id": 4, "cluster_addr": "{cluster_addr}"}}"#);
    let (status, answer) =
        crate::harness::http_request_body(c.node(2).http, "POST", "/api/nodes/add", &body);
    assert_eq!(status, 202, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, rebalance) = crate::harness::http_get(c.node(1).http, "/api/rebalance");
        // Idle after this very operation (node 1's view may lag the plan at first).
        if rebalance.contains(r#""state":"idle""#) && rebalance.contains("add node 4") {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 was not added: {rebalance}");
        std::thread::sleep(Duration::from_millis(200));
    }
    served(&c, 4, "through-node-4");
}

#[test]
fn a_cluster_node_off_loopback_needs_peer_tls_or_says_it_is_insecure() {
    let run = tempfile::tempdir().unwrap();
    let flags = ["--node-id", "1", "--initial-cluster", "1=0.0.0.0:7990"];
    let (code, out) = crate::harness::boot_failure(run.path(), &flags);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--peer-tls-cert") && out.contains("--insecure-peer-links"), "{out}");
    // A certificate that names another node is refused at the start, with the reason.
    let certs = make_certs();
    let f = files(certs.path(), 2);
    let (cert, key, ca) =
        (f.cert.to_str().unwrap(), f.key.to_str().unwrap(), f.ca.to_str().unwrap());
    let tls = ["--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca];
    let (code, out) = crate::harness::boot_failure(run.path(), &[&flags[..], &tls[..]].concat());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("does not name node-1"), "{out}");
}

/// redis-cli against node `id`'s Redis port as `user`.
fn cli(c: &Cluster, id: usize, user: &str, pass: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &c.node(id).resp.port().to_string(), "--no-auth-warning"])
        .args(["--user", user, "--pass", pass])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_made_on_one_node_hold_on_every_node() {
    let c = Cluster::start_flags(3, None, PARTITIONS, 1, &["--requirepass", "pw"]);
    until("the cluster serves", || cli(&c, 1, "default", "pw", &["SET", "k", "v"]) == "OK");
    let refused = cli(&c, 2, "default", "wrong", &["GET", "k"]);
    assert!(refused != "v" && (refused.is_empty() || refused.contains("NOAUTH")), "{refused}");
    let rules = ["ACL", "SETUSER", "app", "on", ">apw", "~app:*", "+@read", "+@write"];
    assert_eq!(cli(&c, 1, "default", "pw", &rules), "OK");
    // Kept in the metadata group: every node knows the user within its metadata watch.
    for id in [2, 3] {
        until("the user reaches every node", || {
            cli(&c, id, "app", "apw", &["SET", &format!("app:{id}"), "x"]) == "OK"
        });
        assert!(cli(&c, id, "app", "apw", &["SET", "other", "x"]).starts_with("NOPERM"));
    }
    // Writes forwarded to another node's leader were checked where they came in.
    assert_eq!(cli(&c, 3, "app", "apw", &["GET", "app:2"]), "x");
    assert_eq!(cli(&c, 2, "default", "pw", &["ACL", "DELUSER", "app"]), "1");
    until("the deletion reaches node 1", || {
        cli(&c, 1, "app", "apw", &["GET", "app:2"]).starts_with("NOAUTH")
    });
}
