//! `corekv dev-cluster`: a local cluster on loopback for demos and tests.
//!
//! Starts N `corekv serve` processes of this same binary, node i on ports `BASE + 10·i + k`
//! (k = 0 native, 1 Redis, 2 HTTP, 3 node-to-node), each with its own data directory under
//! `--data-dir`, and its own CPUs (`--cpus`, node after node over the CPUs this process may
//! use, unless the serve flags give `--cpus`). Prints every node's addresses once all are
//! ready, then waits. Ctrl-C (or
//! SIGTERM) stops every node with SIGTERM, so each drains, and exits 0 once all have. A node
//! that dies on its own is reported, and the others keep running (a demo of failover).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct DevClusterArgs {
    /// Nodes to start
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: u16,
    /// Node i listens on BASE+10·i (native), +1 (Redis), +2 (HTTP), +3 (node-to-node)
    #[arg(long, value_name = "PORT", default_value_t = 7400)]
    pub base_port: u16,
    /// Parent of every node's data directory (node-1, node-2, ...); kept between runs
    #[arg(long, value_name = "DIR", default_value = "corekv-dev-cluster")]
    pub data_dir: PathBuf,
    /// Cores per node
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cores: usize,
    /// Partitions (Raft groups), fixed for the life of the data
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub partitions: u32,
    /// Replicas per partition
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub replication_factor: usize,
    /// Any further `corekv serve` flags, after `--`, passed to every node
    #[arg(last = true, value_name = "SERVE FLAGS")]
    pub serve: Vec<String>,
}

struct Running {
    id: u16,
    child: Child,
    line: String,
}

/// The `--cpus` list of node `node` (1, 2, ...) of a local cluster of `cores`-core nodes:
/// each node its own CPUs, in turn over those this process may use. Left to itself, every
/// node pins its cores from the lowest CPU of its mask up, and they would all share it.
/// `None` when a node needs more CPUs than there are (it then refuses to start, saying so).
pub fn cpus_of_node(node: usize, cores: usize) -> Option<String> {
    let available: Vec<usize> =
        core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if !(1..=available.len()).contains(&cores) {
        return None;
    }
    let first = node.saturating_sub(1) * cores;
    let cpus: Vec<String> =
        (first..first + cores).map(|k| available[k % available.len()].to_string()).collect();
    Some(cpus.join(","))
}

pub fn run(args: &DevClusterArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let last = u32::from(args.base_port) + 10 * u32::from(args.nodes) + 3;
    if last > u32::from(u16::MAX) {
        return Err(format!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port, args.nodes
        ));
    }
    let port = |i: u16, k: u16| args.base_port + 10 * i + k;
    let initial: Vec<String> =
        (1..=args.nodes).map(|i| format!("{i}=127.0.0.1:{}", port(i, 3))).collect();
    let initial = initial.join(",");
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signals: {e}"))?;
    }
    let mut running: Vec<Running> = Vec::new();
    let mut failed = None;
    let pick_cpus = !args.serve.iter().any(|a| a == "--cpus" || a.starts_with("--cpus="));
    for i in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("node.log");
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(["--node-id", &i.to_string(), "--initial-cluster", &initial])
            .args(["--listen", &format!("127.0.0.1:{}", port(i, 0))])
            .args(["--resp-listen", &format!("127.0.0.1:{}", port(i, 1))])
            .args(["--http-listen", &format!("127.0.0.1:{}", port(i, 2))])
            .args(["--cluster-listen", &format!("127.0.0.1:{}", port(i, 3))])
            .args(["--data-dir", &dir.join("data").display().to_string()])
            .args(["--cores", &args.cores.to_string()])
            .args(["--partitions", &args.partitions.to_string()])
            .args(["--replication-factor", &args.replication_factor.to_string()])
            .args(&args.serve)
            .stdout(Stdio::piped())
            .stderr(stderr);
        if pick_cpus && let Some(cpus) = cpus_of_node(usize::from(i), args.cores) {
            command.args(["--cpus", &cpus]);
        }
        let mut child = command.spawn().map_err(|e| format!("starting node {i}: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        // Every node waits for the others' links, not for them to be up: start all, then
        // collect the ready lines.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("corekv ready") => {
                running.push(Running { id: i, child, line })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                failed = Some(format!("node {i} did not start; see {}", log.display()));
                break;
            }
        }
    }
    if let Some(e) = failed {
        stop_all(&mut running);
        return Err(e);
    }
    println!(
        "corekv dev-cluster: {} nodes, {} partitions, RF {}",
        args.nodes, args.partitions, args.replication_factor
    );
    for r in &running {
        let fields: Vec<&str> = r
            .line
            .split_whitespace()
            .filter(|f| {
                ["native=", "resp=", "http=", "cluster=", "pid="].iter().any(|p| f.starts_with(p))
            })
            .collect();
        println!("  node {}: {}", r.id, fields.join(" "));
    }
    println!(
        "  logs: {}/node-N/node.log   status: curl http://127.0.0.1:{}/api/replication/status",
        args.data_dir.display(),
        port(1, 2)
    );
    println!("Ctrl-C stops every node.");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        for r in &mut running {
            if let Ok(Some(status)) = r.child.try_wait() {
                eprintln!(
                    "corekv dev-cluster: node {} exited ({status}); the others keep serving",
                    r.id
                );
            }
        }
        running.retain_mut(|r| !matches!(r.child.try_wait(), Ok(Some(_))));
    }
    stop_all(&mut running);
    Ok(())
}

/// SIGTERM every node (each drains), then wait; SIGKILL what is still there after 20 s.
fn stop_all(running: &mut Vec<Running>) {
    for r in running.iter() {
        let _ = Command::new("kill").args(["-TERM", &r.child.id().to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in running.iter_mut() {
        loop {
            match r.child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("corekv dev-cluster: node {} stopped ({status})", r.id);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    eprintln!("corekv dev-cluster: node {} killed after 20 s", r.id);
                    break;
                }
            }
        }
    }
    running.clear();
}
