//! Test harness: starts the real `corekv` binary on ephemeral ports and talks raw TCP.
//!
//! `Node` owns the child process and its data directory; dropping it kills the child, so a
//! failing test never leaks a server. `Wire` is a minimal synchronous protocol speaker built
//! on the schema crate, independent of the client SDK, so the node is tested against the
//! protocol itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{Encoder, Op, Reply, Request, Response, decode_response};
use corekv_schema::frame::take_frame;

pub struct Node {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub shard_ports: Vec<u16>,
    pub dir: tempfile::TempDir,
    pub stderr_path: std::path::PathBuf,
}

impl Node {
    /// Starts a node with `--listen 127.0.0.1:0 --shard-ports 0` plus `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        Node::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Node {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_corekv"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--shard-ports", "0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn corekv");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read ready line");
        let mut node = Node {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            shard_ports: vec![],
            dir,
            stderr_path,
        };
        assert!(
            line.starts_with("corekv ready "),
            "no ready line: {line:?}; stderr: {}",
            node.stderr()
        );
        for field in line.split_whitespace() {
            if let Some(a) = field.strip_prefix("native=") {
                node.addr = a.parse().expect("native addr");
            }
            if let Some(p) = field.strip_prefix("shard_ports=")
                && p != "off"
            {
                node.shard_ports = p.split(',').map(|x| x.parse().expect("port")).collect();
            }
        }
        node
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn wire(&self) -> Wire {
        Wire::connect(self.addr)
    }

    pub fn shard_wire(&self, core: usize) -> Wire {
        Wire::connect(SocketAddr::new(self.addr.ip(), self.shard_ports[core]))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and waits for the exit status (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking, synchronous protocol speaker for tests.
pub struct Wire {
    pub stream: TcpStream,
    buf: BytesMut,
    enc: Encoder,
    next_id: u64,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire { stream, buf: BytesMut::new(), enc: Encoder::new(), next_id: 1 }
    }

    pub fn encode(&mut self, id: u64, op: Op) -> BytesMut {
        let mut out = BytesMut::new();
        self.enc.request(&Request::new(id, op), &mut out);
        out
    }

    pub fn send(&mut self, op: Op) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = self.encode(id, op);
        self.stream.write_all(&bytes).expect("write");
        id
    }

    /// Next response, or `None` when the node closed the connection.
    pub fn recv(&mut self) -> Option<Response> {
        loop {
            if let Some(frame) = take_frame(&mut self.buf, 64 << 20).expect("frame") {
                return Some(decode_response(&frame).expect("decode response"));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn call(&mut self, op: Op) -> Reply {
        let id = self.send(op);
        let resp = self.recv().expect("connection closed");
        assert_eq!(resp.id, id);
        resp.reply
    }
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A key owned by `core` on a node with `cores` cores (default 1024 partitions).
pub fn key_on_core(prefix: &str, core: u16, cores: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| corekv_schema::placement::core_of(k.as_bytes(), 1024, cores) == core)
        .expect("some key lands on every core")
}
