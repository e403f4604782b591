//! The client subcommands of the `corekv` binary: `get`, `set`, `del`, `cas`, `ping`, `stats`,
//! `admin`, and `cluster status` ([`cluster`]).
//!
//! Script-friendly by contract: `get` prints the value alone on stdout (`set` and `cas` print
//! the new version, which `cas --if-version` takes back); exit status 0 on success, 1 when the
//! key is not found or a condition failed, 2 on any other error, with the message on stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

pub mod cluster;
pub mod user;

use clap::{Args, Subcommand};
use corekv_client::{ClientConfig, Error, SetOptions, blocking::Client};

pub const ADDR_DEFAULT: &str = "127.0.0.1:7379";

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Node address (its native protocol port); in a cluster that node forwards the request
    /// to the leader of the key's partition
    #[arg(long, value_name = "HOST:PORT", default_value = ADDR_DEFAULT)]
    pub addr: String,
    /// Give up on a request after this long
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// In a cluster: strong (linearizable, through the partition's leader) or eventual
    /// (reads from any replica, possibly stale) [default: the node's --consistency]
    #[arg(long, value_enum, value_name = "MODE")]
    pub consistency: Option<crate::config::ConsistencyMode>,
    /// Speak TLS, trusting the CA certificate(s) in FILE (PEM) for the node's certificate,
    /// which must name the IP address of --addr (or --tls-server-name) [default: plaintext]
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: show this client certificate (PEM), for a node with --tls-client-ca
    #[arg(long, value_name = "FILE", requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name the node's certificate must carry [default: the IP address of --addr]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a key's value (exit 1 if absent). --meta adds version and TTL on stderr.
    Get {
        #[command(flatten)]
        target: Target,
        key: String,
        /// Also print `version=V ttl_ms=T|none` on stderr
        #[arg(long)]
        meta: bool,
    },
    /// Set a key; prints the new version. VALUE `-` reads the value from stdin.
    Set {
        #[command(flatten)]
        target: Target,
        key: String,
        value: String,
        /// Expire the key after this many milliseconds
        #[arg(long, value_name = "N")]
        ttl_ms: Option<u64>,
        /// Only if the key does not exist (exit 1 if it does)
        #[arg(long, conflicts_with = "if_present")]
        if_absent: bool,
        /// Only if the key exists (an update; exit 1 if it does not)
        #[arg(long)]
        if_present: bool,
    },
    /// Delete a key (exit 1 if absent).
    Del {
        #[command(flatten)]
        target: Target,
        key: String,
    },
    /// Compare-and-set: `cas KEY EXPECTED NEW` or `cas KEY --if-version V NEW`; prints the new
    /// version, exit 1 if the comparison failed.
    Cas {
        #[command(flatten)]
        target: Target,
        key: String,
        /// EXPECTED NEW, or just NEW with --if-version
        #[arg(num_args = 1..=2, value_names = ["EXPECTED", "NEW"], required = true)]
        values: Vec<String>,
        /// Compare against this version instead of a value (0 = key must be absent)
        #[arg(long, value_name = "V")]
        if_version: Option<u64>,
    },
    /// Round-trip a ping; prints PONG and the latency.
    Ping {
        #[command(flatten)]
        target: Target,
    },
    /// Per-core and total counters.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Operator commands: checkpoint, backup.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Checkpoint every core now: restart then replays only what follows, and the log
    /// shrinks to the live data.
    Checkpoint {
        #[command(flatten)]
        target: Target,
    },
    /// Write a consistent copy of the node's data into DIR (a path on the node's machine,
    /// absent or empty); `corekv serve --data-dir DIR` opens it.
    Backup {
        #[command(flatten)]
        target: Target,
        dir: String,
    },
}

impl ClientCommand {
    fn target(&self) -> &Target {
        match self {
            ClientCommand::Get { target, .. }
            | ClientCommand::Set { target, .. }
            | ClientCommand::Del { target, .. }
            | ClientCommand::Cas { target, .. }
            | ClientCommand::Ping { target }
            | ClientCommand::Stats { target }
            | ClientCommand::Admin(AdminCommand::Checkpoint { target })
            | ClientCommand::Admin(AdminCommand::Backup { target, .. }) => target,
        }
    }
}

pub fn run(command: ClientCommand) -> ExitCode {
    match execute(command) {
        Ok(code) => code,
        Err(Error::NotFound) => {
            eprintln!("corekv: not found");
            ExitCode::from(1)
        }
        Err(Error::ConditionFailed { current_version }) => {
            eprintln!("corekv: condition failed (current version {current_version})");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("corekv: {e}");
            ExitCode::from(2)
        }
    }
}

fn connect(target: &Target) -> Result<Client, Error> {
    let tls = match &target.tls_ca {
        None => None,
        Some(ca) => {
            let client = target.tls_cert.as_deref().zip(target.tls_key.as_deref());
            let mut tls = corekv_client::Tls::from_pem_files(ca, client)?;
            tls.server_name = target.tls_server_name.clone();
            Some(tls)
        }
    };
    // From the environment, as the HTTP commands take it: no secret on the command line.
    let credentials = std::env::var("COREKV_TOKEN").ok().map(|token| {
        let (user, password) = token.split_once(':').unwrap_or(("default", &token));
        corekv_client::Credentials { user: user.into(), password: password.into() }
    });
    let config = ClientConfig {
        tls,
        credentials,
        pool_size: 1,
        // One request per run: the node asked forwards it to the leader, which costs less
        // than reading the topology and opening a second connection, and the answer is that
        // node's (a node cut off from the cluster refuses instead of being routed around).
        cluster_routing: false,
        request_timeout_ms: target.timeout_ms,
        connect_timeout_ms: target.timeout_ms.min(5000),
        consistency: match target.consistency {
            None => corekv_client::Consistency::Default,
            Some(crate::config::ConsistencyMode::Strong) => corekv_client::Consistency::Strong,
            Some(crate::config::ConsistencyMode::Eventual) => corekv_client::Consistency::Eventual,
        },
        ..ClientConfig::default()
    };
    Client::connect(target.addr.as_str(), config)
}

fn value_arg(value: String) -> Result<Vec<u8>, Error> {
    if value != "-" {
        return Ok(value.into_bytes());
    }
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf).map_err(Error::Io)?;
    Ok(buf)
}

fn execute(command: ClientCommand) -> Result<ExitCode, Error> {
    let client = connect(command.target())?;
    let mut out = std::io::stdout().lock();
    match command {
        ClientCommand::Get { key, meta, .. } => match client.get(key)? {
            None => return Err(Error::NotFound),
            Some(found) => {
                let _ = out.write_all(&found.value);
                let _ = out.write_all(b"\n");
                if meta {
                    let ttl = found.ttl_ms.map_or("none".to_string(), |t| t.to_string());
                    eprintln!("version={} ttl_ms={ttl}", found.version);
                }
            }
        },
        ClientCommand::Set { key, value, ttl_ms, if_absent, if_present, .. } => {
            let value = value_arg(value)?;
            let condition = if if_absent {
                corekv_client::Condition::IfAbsent
            } else if if_present {
                corekv_client::Condition::IfPresent
            } else {
                corekv_client::Condition::Always
            };
            let options = SetOptions { ttl_ms: ttl_ms.unwrap_or(0), keep_ttl: false, condition };
            let version = client.set_with(key, value, options)?;
            let _ = writeln!(out, "{version}");
        }
        ClientCommand::Del { key, .. } => {
            if !client.delete(key)? {
                return Err(Error::NotFound);
            }
        }
        ClientCommand::Cas { key, mut values, if_version, .. } => {
            let version = match (if_version, values.len()) {
                (Some(v), 1) => client.cas_version(key, v, value_arg(values.remove(0))?)?,
                (None, 2) => {
                    let new = value_arg(values.remove(1))?;
                    client.cas(key, values.remove(0), new)?
                }
                (Some(_), _) => {
                    return Err(Error::Usage("cas KEY --if-version V NEW takes one value".into()));
                }
                (None, _) => {
                    return Err(Error::Usage("cas KEY EXPECTED NEW takes two values".into()));
                }
            };
            let _ = writeln!(out, "{version}");
        }
        ClientCommand::Ping { .. } => {
            let started = std::time::Instant::now();
            client.ping()?;
            let _ = writeln!(out, "PONG {} us", started.elapsed().as_micros());
        }
        ClientCommand::Stats { .. } => {
            let stats = client.stats()?;
            print_table(&mut out, &stats.cores, REQUEST_COLUMNS);
            print_table(&mut out, &stats.cores, STORAGE_COLUMNS);
            let _ = writeln!(out, "uptime_ms {}", stats.uptime_ms);
            for c in stats.cores.iter().filter(|c| !c.log_error.is_empty()) {
                let _ =
                    writeln!(out, "core {} log FAILED (writes refused): {}", c.core, c.log_error);
            }
        }
        ClientCommand::Admin(admin) => {
            let op = match admin {
                AdminCommand::Checkpoint { .. } => corekv_client::Op::Checkpoint,
                AdminCommand::Backup { dir, .. } => corekv_client::Op::Backup { dir },
            };
            match corekv_client::check(client.request(op)?)? {
                corekv_client::Reply::AdminDone { message, records, bytes } => {
                    let _ = writeln!(out, "{message}: {records} records, {bytes} bytes");
                }
                other => {
                    return Err(Error::Protocol(format!("unexpected {} reply", other.name())));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

type Column = (&'static str, fn(&corekv_client::CoreStats) -> u64);

const REQUEST_COLUMNS: &[Column] = &[
    ("keys", |c| c.keys),
    ("value_bytes", |c| c.value_bytes),
    ("requests", |c| c.requests),
    ("fwd_out", |c| c.forwarded_out),
    ("fwd_in", |c| c.forwarded_in),
    ("expired", |c| c.expired),
    ("backpr", |c| c.backpressure_events),
    ("conns", |c| c.connections),
];

const STORAGE_COLUMNS: &[Column] = &[
    ("cached_bytes", |c| c.cached_bytes),
    ("evicted", |c| c.evicted),
    ("fetches", |c| c.fetches),
    ("log_disk_bytes", |c| c.log_disk_bytes),
    ("log_live_bytes", |c| c.log_live_bytes),
    ("compacted_bytes", |c| c.compacted_bytes),
    ("segs_removed", |c| c.segments_removed),
];

/// One row per core and an `all` row of sums; each column as wide as its name (at least 10).
fn print_table(out: &mut impl Write, cores: &[corekv_client::CoreStats], columns: &[Column]) {
    let width = |name: &str| name.len().max(10);
    let mut line = format!("{:>5}", "core");
    for (name, _) in columns {
        line += &format!(" {name:>w$}", w = width(name));
    }
    let _ = writeln!(out, "{line}");
    let rows =
        cores.iter().map(|c| (c.core.to_string(), columns.iter().map(|(_, f)| f(c)).collect()));
    let all = ("all".to_string(), columns.iter().map(|(_, f)| cores.iter().map(f).sum()).collect());
    for (label, values) in rows.chain([all]) {
        let values: Vec<u64> = values;
        let mut line = format!("{label:>5}");
        for ((name, _), v) in columns.iter().zip(values) {
            line += &format!(" {v:>w$}", w = width(name));
        }
        let _ = writeln!(out, "{line}");
    }
}
