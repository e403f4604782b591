//! `corekv cluster status`: the whole cluster as one table, from the HTTP admin API of the
//! nodes.
//!
//! It asks one node for `/api/nodes/status` (every node's health from heartbeats, figures
//! and addresses), then every node that is up for `/api/replication/status`, and shows each
//! partition as its leader sees it (the leader alone knows its followers' lag).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::{Value, json};

/// Flags of `corekv cluster status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Any node's HTTP admin address (its --http-listen)
    #[arg(long, value_name = "HOST:PORT", default_value = crate::config::HTTP_LISTEN_DEFAULT)]
    pub http: String,
    /// Give up on a node after this long
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Print the merged status as JSON instead of tables
    #[arg(long)]
    pub json: bool,
}

/// Flags of `corekv cluster remove`.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoveArgs {
    /// The node to remove (alive or dead); its replicas move to the remaining nodes
    #[arg(value_name = "ID")]
    pub node: u64,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Flags of `corekv cluster add`.
#[derive(clap::Args, Debug, Clone)]
pub struct AddArgs {
    /// The new node's id: never used by a member before
    #[arg(value_name = "ID")]
    pub node: u64,
    /// The new node's cluster address (its --cluster-listen); start it with --join first
    #[arg(value_name = "HOST:PORT")]
    pub cluster_addr: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// How `add` and `remove` reach the cluster and wait.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// Any member's HTTP admin address (its --http-listen)
    #[arg(long, value_name = "HOST:PORT", default_value = crate::config::HTTP_LISTEN_DEFAULT)]
    pub http: String,
    /// Return once the operation has started, instead of waiting for it to finish
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this long (the operation goes on)
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub timeout_s: u64,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every node's health, figures and addresses, every partition's leader, term, commit
    /// index and follower lag, and the membership operation under way (exit 2 if the node
    /// cannot be asked)
    Status(StatusArgs),
    /// Removes a node, alive or dead, moving each of its replicas to the node the ring over
    /// the others names; shows progress until done. The id is never used again, and the
    /// removed node refuses to start on its data directory
    Remove(RemoveArgs),
    /// Adds a node started with --join, moving to it the replicas the ring now gives it;
    /// shows progress until done
    Add(AddArgs),
}

pub fn run(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Status(args) => status(&args),
        ClusterCommand::Remove(args) => {
            let path = format!("/api/nodes/remove/{}", args.node);
            operate(&args.wait, "DELETE", &path, None)
        }
        ClusterCommand::Add(args) => {
            let body = json!({"node_id": args.node, "cluster_addr": args.cluster_addr});
            operate(&args.wait, "POST", "/api/nodes/add", Some(body))
        }
    }
}

/// Starts a membership operation and follows it on `/api/rebalance` until it is done.
fn operate(args: &WaitArgs, method: &str, path: &str, body: Option<Value>) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let plan = send(&args.http, method, path, body.as_ref(), timeout)?;
    println!(
        "{}: plan {}, {} partitions to move",
        plan["operation"].as_str().unwrap_or("?"),
        plan["plan"],
        plan["partitions_total"]
    );
    if args.no_wait {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let r = match get(&args.http, "/api/rebalance", timeout) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("corekv cluster remove: {e}; asking again");
                continue;
            }
        };
        let line = format!(
            "{}: {}/{} partitions moved",
            r["state"].as_str().unwrap_or("?"),
            r["partitions_moved"],
            r["partitions_total"]
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        if r["plan"] == plan["plan"] && r["state"] == "idle" {
            println!("done in {:.1}s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        if r["state"] == "failed" {
            return Err(format!("the operation failed: {}", r["error"]));
        }
        if started.elapsed() > Duration::from_secs(args.timeout_s) {
            return Err(format!(
                "still {} after {}s; it goes on (see corekv cluster status)",
                r["state"], args.timeout_s
            ));
        }
    }
}

/// A minimal HTTP/1.1 GET (the node answers with a Content-Length body and closes).
fn get(addr: &str, path: &str, timeout: Duration) -> Result<Value, String> {
    send(addr, "GET", path, None, timeout)
}

/// What the HTTP commands read from the environment (kept off the command line, where other
/// users of the machine could read a token): `COREKV_TOKEN` (sent as `Authorization: Bearer`),
/// `COREKV_TLS_CA` (speak HTTPS, trusting that CA), `COREKV_TLS_CERT` and `COREKV_TLS_KEY`
/// (a client certificate).
pub const ENVIRONMENT_HELP: &str = "Environment: COREKV_TOKEN=USER:PASSWORD is sent as \
    'Authorization: Bearer' (nodes with --requirepass or users); COREKV_TLS_CA=FILE speaks \
    HTTPS, trusting that CA (nodes with --tls-cert), with COREKV_TLS_CERT and COREKV_TLS_KEY \
    as a client certificate (nodes with --tls-client-ca).";

/// A blocking socket, with or without TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Connects to `addr`, with TLS when `COREKV_TLS_CA` is set.
fn dial(addr: &str, timeout: Duration) -> Result<Box<dyn ReadWrite>, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let Ok(ca) = std::env::var("COREKV_TLS_CA") else { return Ok(Box::new(s)) };
    let cert = std::env::var("COREKV_TLS_CERT").ok();
    let key = std::env::var("COREKV_TLS_KEY").ok();
    let client =
        cert.as_deref().map(std::path::Path::new).zip(key.as_deref().map(std::path::Path::new));
    let tls = corekv_client::Tls::from_pem_files(std::path::Path::new(&ca), client)
        .map_err(|e| e.to_string())?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']);
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{addr}: {e}"))?,
    };
    let conn =
        rustls::ClientConnection::new(tls.config, name).map_err(|e| format!("{addr}: {e}"))?;
    Ok(Box::new(rustls::StreamOwned::new(conn, s)))
}

/// A minimal HTTP/1.1 request with an optional JSON body; the answer's JSON, or its status
/// and reason.
pub(crate) fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, String> {
    let mut s = dial(addr, timeout)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let token = std::env::var("COREKV_TOKEN")
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{token}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).and_then(|()| s.flush()).map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify: what came before that counts.
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(format!("{addr}{path}: {e}"));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(format!("{addr}{path}: no answer"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(format!("{addr}{path}: HTTP {status}: {body}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{addr}{path}: {e}"))
}

fn status(args: &StatusArgs) -> Result<(), String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    // Printed at once, and a closed stdout (`| head`) is not an error.
    let mut out = String::new();
    let asked = get(&args.http, "/api/nodes/status", timeout)?;
    let cluster = &asked["cluster"];
    if cluster.is_null() {
        return Err(format!("{} is a single node, not a cluster member", args.http));
    }
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    // Each partition as its leader sees it; else as any replica does.
    let mut partitions: BTreeMap<u64, Value> = BTreeMap::new();
    let mut metadata = Value::Null;
    let mut unreachable = Vec::new();
    for n in &nodes {
        let http = n["http"].as_str().unwrap_or("");
        if n["health"] == "down" || http.is_empty() {
            continue;
        }
        let replication = match get(http, "/api/replication/status", timeout) {
            Ok(v) => v,
            Err(e) => {
                unreachable.push(e);
                continue;
            }
        };
        for p in replication["partitions"].as_array().into_iter().flatten() {
            let id = p["partition"].as_u64().unwrap_or(0);
            if p["role"] == "leader" || !partitions.contains_key(&id) {
                partitions.insert(id, p.clone());
            }
        }
        let m = &replication["metadata"];
        if m["role"] == "leader" || metadata.is_null() {
            metadata = m.clone();
        }
    }
    if args.json {
        let merged = json!({
            "asked": args.http,
            "epoch": cluster["epoch"],
            "nodes": nodes,
            "partitions": partitions.values().collect::<Vec<_>>(),
            "metadata": metadata,
            "unreachable": unreachable,
        });
        let _ =
            writeln!(out, "{}", serde_json::to_string_pretty(&merged).map_err(|e| e.to_string())?);
        let _ = std::io::stdout().write_all(out.as_bytes());
        return Ok(());
    }
    let _ = writeln!(
        out,
        "cluster of {} nodes, map epoch {}, asked node {} at {}",
        nodes.len(),
        cluster["epoch"],
        cluster["node"],
        args.http
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<5} {:<9} {:>8} {:<22} {:<22} {:>9} {:>10} {:>12} {:>5} {:>4}",
        "NODE", "HEALTH", "HEARD", "NATIVE", "HTTP", "KEYS", "LOG", "DISK FREE", "HELD", "LED"
    );
    for n in &nodes {
        let heard = match n["last_heartbeat_ms"].as_u64() {
            Some(0) => "now".to_string(),
            Some(ms) => format!("{ms}ms"),
            None => "never".to_string(),
        };
        let count = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
        let bytes = |v: &Value| v.as_u64().map_or("-".to_string(), human_bytes);
        let _ = writeln!(
            out,
            "{:<5} {:<9} {:>8} {:<22} {:<22} {:>9} {:>10} {:>12} {:>5} {:>4}",
            n["node"].to_string(),
            n["health"].as_str().unwrap_or("?"),
            heard,
            n["native"].as_str().unwrap_or(""),
            n["http"].as_str().unwrap_or(""),
            count(&n["keys"]),
            bytes(&n["log_bytes"]),
            bytes(&n["disk_free_bytes"]),
            count(&n["replicas_held"]),
            n["partitions_led"].as_array().map_or("-".to_string(), |l| l.len().to_string()),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>6} {:>6} {:>9} {:>9}  FOLLOWER LAG (node:entries)",
        "PARTITION", "REPLICAS", "LEADER", "TERM", "COMMIT", "APPLIED"
    );
    let rows = partitions.values().map(|p| (p["partition"].to_string(), p));
    for (name, p) in rows.chain(std::iter::once(("meta".to_string(), &metadata))) {
        if p.is_null() {
            continue;
        }
        let replicas: Vec<String> =
            p["replicas"].as_array().into_iter().flatten().map(|r| r.to_string()).collect();
        let lag: Vec<String> = p["followers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("{}:{}", f["node"], f["lag"]))
            .collect();
        let leader = match p["leader"].as_u64() {
            Some(0) | None => "none".to_string(),
            Some(l) => l.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<10} {:>6} {:>6} {:>9} {:>9}  {}",
            name,
            replicas.join(","),
            leader,
            p["term"].to_string(),
            p["commit"].to_string(),
            p["applied"].to_string(),
            if lag.is_empty() { "-".to_string() } else { lag.join(" ") }
        );
    }
    if let Ok(r) = get(&args.http, "/api/rebalance", timeout) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "membership: {}{}, {}/{} partitions moved, map epoch {}{}",
            r["state"].as_str().unwrap_or("?"),
            r["operation"].as_str().map_or(String::new(), |o| format!(" ({o})")),
            r["partitions_moved"],
            r["partitions_total"],
            r["map_epoch"],
            r["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map_or(String::new(), |e| format!(", error: {e}")),
        );
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    for e in &unreachable {
        eprintln!("corekv cluster status: not asked: {e}");
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
