//! Test harness: starts the real `corekv` binary on ephemeral ports and talks raw TCP.
//!
//! `Node` owns the child process and (unless started with `start_at` on a directory the test
//! keeps for restarts) its data directory; dropping it kills the child, so a failing test
//! never leaks a server. `boot_failure` runs a node that is expected to refuse to start,
//! bounded in time. `Wire` is a minimal synchronous protocol speaker built
//! on the schema crate, independent of the client SDK, so the node is tested against the
//! protocol itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{Consistency, Encoder, Op, Reply, Request, Response, decode_response};
use corekv_schema::frame::take_frame;

pub struct Node {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    /// The Redis-protocol and HTTP ports (tests always turn them on, on free ports).
    pub resp: SocketAddr,
    pub http: SocketAddr,
    pub shard_ports: Vec<u16>,
    pub dir: NodeDir,
    pub stderr_path: PathBuf,
}

/// Where a node keeps its files: a tempdir it owns (deleted on drop), or a directory the test
/// owns so that several nodes can run on it one after another (restarts).
pub enum NodeDir {
    Owned(tempfile::TempDir),
    At(PathBuf),
}

impl NodeDir {
    pub fn path(&self) -> &Path {
        match self {
            NodeDir::Owned(t) => t.path(),
            NodeDir::At(p) => p,
        }
    }
}

/// The native port of a node started in a network namespace (`Node::start_at_in`).
pub const NETNS_NATIVE_PORT: u16 = 7379;

/// How long a node may take to print its ready line (or fail) before the test gives up.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// Starts a node with `--listen 127.0.0.1:0 --shard-ports 0` plus `extra` flags.
    pub fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        Node::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Node {
        let stderr_path = dir.path().join("stderr.log");
        Node::boot(NodeDir::Owned(dir), stderr_path, None, extra)
    }

    /// Starts a node on `dir/data`, which may hold the files of an earlier node (a restart).
    /// `dir` is not deleted by the node; each boot writes its stderr to a new
    /// `dir/stderr-<n>.log`, so `stderr()` shows this boot only.
    pub fn start_at(dir: &Path, extra: &[&str]) -> Node {
        let stderr_path = next_stderr_path(dir);
        Node::boot(NodeDir::At(dir.to_path_buf()), stderr_path, None, extra)
    }

    /// `start_at` inside network namespace `netns`, every listener on `ip` (the namespace's
    /// own address): `ip netns exec` replaces itself with the node, so the pid is the node's.
    pub fn start_at_in(dir: &Path, netns: &str, ip: &str, extra: &[&str]) -> Node {
        let stderr_path = next_stderr_path(dir);
        Node::boot(NodeDir::At(dir.to_path_buf()), stderr_path, Some((netns, ip)), extra)
    }

    /// The `--data-dir` the node was started with.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn boot(
        dir: NodeDir,
        stderr_path: PathBuf,
        netns: Option<(&str, &str)>,
        extra: &[&str],
    ) -> Node {
        let (mut child, ready) = spawn_serve(dir.path(), &stderr_path, netns, extra);
        let line = match ready.recv_timeout(BOOT_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                String::new()
            }
        };
        let mut node = Node {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            resp: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
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
            if let Some(a) = field.strip_prefix("resp=") {
                node.resp = a.parse().expect("resp addr");
            }
            if let Some(a) = field.strip_prefix("http=") {
                node.http = a.parse().expect("http addr");
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
        let pid = self.pid();
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        assert!(status.expect("kill").success());
        self.wait_exit()
    }

    /// Waits (bounded) for a node that was told to stop, and reaps it.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.wait_exit_within(Duration::from_secs(15))
    }

    /// Waits up to `limit` for the node to exit by itself, and reaps it.
    pub fn wait_exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Node {
    /// SIGKILL, then reap: the node gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }
}

/// Runs `corekv serve` on `dir/data` expecting it to refuse to boot; returns its exit code
/// and stderr. If the node starts after all (prints its ready line) or is still running after
/// 10 s, it is killed and the test fails.
pub fn boot_failure(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let stderr_path = next_stderr_path(dir);
    let (mut child, ready) = spawn_serve(dir, &stderr_path, None, extra);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return (status.code(), stderr);
        }
        let started = matches!(ready.try_recv(), Ok(line) if line.starts_with("corekv ready"));
        if started || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let what = if started { "started" } else { "neither started nor exited in 10 s" };
            panic!("expected a boot failure, but the node {what}; flags {extra:?}; {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns `corekv serve` on `dir/data` (with 1 MiB log segments); the receiver yields the
/// first stdout line (the ready line), or an empty string when stdout closes first.
fn spawn_serve(
    dir: &Path,
    stderr_path: &Path,
    netns: Option<(&str, &str)>,
    extra: &[&str],
) -> (Child, mpsc::Receiver<String>) {
    let stderr = std::fs::File::create(stderr_path).expect("stderr file");
    let binary = env!("CARGO_BIN_EXE_corekv");
    let (mut command, ip) = match netns {
        None => (Command::new(binary), "127.0.0.1"),
        Some((ns, ip)) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, binary]);
            (c, ip)
        }
    };
    let any = format!("{ip}:0");
    // In a namespace the node has its own address, so a fixed native port stays the same
    // across restarts (clients of a test reconnect to it).
    let native = if netns.is_some() { format!("{ip}:{NETNS_NATIVE_PORT}") } else { any.clone() };
    let mut child = command
        .arg("serve")
        .args(["--listen", &native, "--shard-ports", "0"])
        .args(["--resp-listen", &any, "--http-listen", &any])
        // Small segments: tests roll segments often, and boots do not preallocate 64 MiB.
        .args(["--segment-bytes-max", "1048576"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn corekv");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    (child, rx)
}

fn next_stderr_path(dir: &Path) -> PathBuf {
    (0..)
        .map(|n| dir.join(format!("stderr-{n}.log")))
        .find(|p| !p.exists())
        .expect("a free stderr file name")
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

    /// Like `call`, but `None` when the connection fails or closes (a node being killed).
    pub fn try_call(&mut self, op: Op) -> Option<Reply> {
        self.try_call_with(op, Consistency::Default)
    }

    /// `try_call` asking for a consistency (cluster mode).
    pub fn try_call_with(&mut self, op: Op, consistency: Consistency) -> Option<Reply> {
        let mut request = Request::new(0, op);
        request.consistency = consistency;
        self.try_request(request)
    }

    /// Sends `request` (its id replaced by the next one) and waits for the answer; `None` when
    /// the connection failed.
    pub fn try_request(&mut self, mut request: Request) -> Option<Reply> {
        let id = self.next_id;
        self.next_id += 1;
        let mut bytes = BytesMut::new();
        request.id = id;
        self.enc.request(&request, &mut bytes);
        self.stream.write_all(&bytes).ok()?;
        loop {
            if let Some(frame) = take_frame(&mut self.buf, 64 << 20).ok()? {
                let resp = decode_response(&frame).expect("decode response");
                assert_eq!(resp.id, id);
                return Some(resp.reply);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
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

/// Runs `tests/it/<script>` with python3 and `port`, and requires it to succeed and print
/// `done` (the scripts assert and print a last line when every check passed).
pub fn python_checks(script: &str, port: u16, done: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it").join(script);
    // Without optimization: the scripts' checks are asserts, which -O strips.
    let out = Command::new("python3")
        .arg(&path)
        .arg(port.to_string())
        .env_remove("PYTHONOPTIMIZE")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(done),
        "{script} failed (tests/run.sh installs its Python packages):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain HTTP/1.1 GET (connection closed after it): the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// A plain HTTP/1.1 request without a body: the status code and the body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_body(addr, method, path, "")
}

/// A plain HTTP/1.1 request with a JSON body: the status code and the body.
pub fn http_request_body(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect http");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Every core's stats.
/// One unlabelled sample of a node's `/metrics`.
pub fn metric(http: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(http, "/metrics");
    assert_eq!(status, 200, "{body}");
    let line = body.lines().find(|l| l.split(' ').next() == Some(name));
    let line = line.unwrap_or_else(|| panic!("no {name} in {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

pub fn core_stats(w: &mut Wire) -> Vec<corekv_schema::codec::CoreStats> {
    match w.call(Op::Stats) {
        Reply::Stats(s) => s.cores,
        other => panic!("stats: {other:?}"),
    }
}

/// One counter summed over cores.
pub fn stat_sum(w: &mut Wire, field: fn(&corekv_schema::codec::CoreStats) -> u64) -> u64 {
    core_stats(w).iter().map(field).sum()
}

/// Resident memory of process `pid`, from /proc.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
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

pub use crate::rng::Rng;
