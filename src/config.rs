//! Node configuration: defaults, the TOML file, command-line flags, and every limit.
//!
//! Precedence is flag > file > default. Every flag of `corekv serve` is also a key of the
//! file given by `--config` (same name, `_` for `-`), and unknown keys are an error so a typo
//! never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use corekv_schema::frame::Limits;
use corekv_schema::placement::PARTITIONS_DEFAULT;
use serde::Deserialize;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7379";
/// Where redis-cli and other Redis clients connect (`off` disables it).
pub const RESP_LISTEN_DEFAULT: &str = "127.0.0.1:7380";
/// The HTTP admin API and Prometheus `/metrics` (`off` disables it).
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7381";
pub const DATA_DIR_DEFAULT: &str = "corekv-data";
/// Messages buffered per direction between two cores before senders wait (back-pressure).
pub const MESH_CAPACITY_MESSAGES_DEFAULT: usize = 1024;
pub const TTL_SWEEP_INTERVAL_MS_DEFAULT: u64 = 100;
/// Keys the active sweep may remove per core per interval, so a mass expiry cannot stall a core.
pub const TTL_SWEEP_KEYS_MAX: usize = 20_000;
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 5_000;
pub const PARTIAL_FRAME_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Requests a connection parses before answering them, bounding per-connection memory.
pub const CONNECTION_BATCH_REQUESTS_MAX: usize = 1024;
/// Segment size at which the log moves to a new file.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Largest log record accepted on read: a maximal key and value (see `frame::Limits`) fit
/// with room to spare, and a corrupt `len` cannot make recovery read gigabytes.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

// A connection forwards at most one call per request it holds; a mesh that can hold a whole
// batch keeps one busy connection from filling it alone.
const _: () = assert!(CONNECTION_BATCH_REQUESTS_MAX <= MESH_CAPACITY_MESSAGES_DEFAULT);

/// How durable an acknowledged write is (per node; a request may ask for less).
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Acknowledge a write only after its log record is fdatasync'ed (group commit)
    #[default]
    Sync,
    /// Acknowledge at once; fdatasync the log every --fsync-interval-ms
    Periodic,
    /// Memory only: no log, nothing survives a restart
    None,
}

pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Client connections a node holds at most, unless `--max-connections` says otherwise.
pub const MAX_CONNECTIONS_DEFAULT: u64 = 10_000;
pub const CHECKPOINT_INTERVAL_S_DEFAULT: u64 = 300;
/// Smallest log segment: below this, rolling to a new file would dominate the write path.
pub const SEGMENT_BYTES_MIN: u64 = 1 << 20;
/// Largest log segment: record offsets in the index are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = (1 << 32) - 4096;
pub const COMPACTION_LIVE_RATIO_DEFAULT: f64 = 0.5;
pub const COMPACTION_BYTES_PER_S_DEFAULT: u64 = 64 << 20;
/// Cache when the machine's memory cannot be read.
const CACHE_BYTES_FALLBACK: u64 = 1 << 30;

pub const REPLICATION_FACTOR_DEFAULT: usize = 3;
pub const RAFT_TICK_MS_DEFAULT: u64 = 100;
pub const PLAN_STALL_S_DEFAULT: u64 = 600;
/// Partitions of a cluster: each is a Raft group on RF nodes, so fewer than a single node's.
pub const CLUSTER_PARTITIONS_DEFAULT: u32 = 64;

/// A request's consistency when it does not say.
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    /// Linearizable: writes commit through Raft, reads go through the leader (ReadIndex)
    #[default]
    Strong,
    /// Reads are served by any replica and may be stale; writes still commit through Raft
    Eventual,
}

/// Cluster mode: who this node is and who the others are.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// This node's Raft id.
    pub node: u64,
    /// Where this node accepts other nodes' links.
    pub listen: SocketAddr,
    /// Every node (this one included) and its cluster address, as listed.
    pub nodes: Vec<(u64, SocketAddr)>,
    pub replication_factor: usize,
    pub raft_tick_ms: u64,
    /// A membership plan with no partition done for this long fails (see `GET
    /// /api/rebalance`), so the operator can undo or retry it.
    pub plan_stall_s: u64,
    pub consistency: ConsistencyMode,
    /// Whether this node makes the groups the ring gives it on a first start (a founding
    /// member); a node that joins later is sent each group it is added to instead.
    pub bootstrap: bool,
    /// A joining node: the member it asks for the members and the map (which then replace
    /// `nodes`, this node alone until then).
    pub join: Option<SocketAddr>,
    /// What every node link's `Hello` carries: a hash of the founding members (see
    /// [`cluster_id_of`]); a joining node learns it from the member it joins through.
    pub cluster_id: u64,
    /// Mutual TLS on node links (`--peer-tls-*`); `None` only with `--insecure-peer-links`
    /// or on loopback.
    pub peer_tls: Option<crate::tls::PeerFiles>,
}

/// The id of the cluster founded by `nodes`: the same on every founder, since they are
/// given the same list, and different for another cluster.
pub fn cluster_id_of(nodes: &[(u64, SocketAddr)]) -> u64 {
    let mut sorted = nodes.to_vec();
    sorted.sort();
    let text: String = sorted.iter().map(|(id, addr)| format!("{id}={addr},")).collect();
    let high = u64::from(crc32c::crc32c(text.as_bytes()));
    let low = u64::from(crc32c::crc32c_append(0x5eed_c0de, text.as_bytes()));
    (high << 32) | low
}

/// Flags of `corekv serve`. Each is also a key of the `--config` file.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (flags win over the file).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Native protocol address, accepted on every core (SO_REUSEPORT)
    /// [default: 127.0.0.1:7379]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Cores to run on, one pinned executor each [default: all CPUs this process may use,
    /// or those of --cpus]
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// CPUs the cores are pinned to, in order, e.g. 2,3 or 4-7 (several nodes on one machine
    /// each get their own) [default: the CPUs this process may use, lowest first]
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Data directory (created if missing; locked against a second node) [default: ./corekv-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also listen on BASE+i on core i, for shard-aware clients; 0 picks free ports
    /// [default: off]
    #[arg(long, value_name = "BASE")]
    pub shard_ports: Option<u16>,
    /// When a write is acknowledged: after fdatasync (sync), at once with a timed
    /// fdatasync (periodic), or never persisted (none) [default: sync]
    #[arg(long, value_enum, value_name = "MODE")]
    pub durability: Option<DurabilityMode>,
    /// With --durability periodic: how often the log is fdatasync'ed [default: 1000]
    #[arg(long, value_name = "MS")]
    pub fsync_interval_ms: Option<u64>,
    /// Start even if a log is corrupt in the middle: skip the damaged ranges, report them
    #[arg(long)]
    pub salvage: bool,
    /// Checkpoint each core at least this often when it has new writes (also whenever its
    /// log outgrows its live data) [default: 300]
    #[arg(long, value_name = "S")]
    pub checkpoint_interval_s: Option<u64>,
    /// Also speak the Redis protocol (RESP2) here, on every core; `off` to disable
    /// [default: 127.0.0.1:7380]
    #[arg(long, value_name = "HOST:PORT|off")]
    pub resp_listen: Option<String>,
    /// Serve the HTTP admin API (/api/*, Prometheus /metrics, /healthz) here, on every core;
    /// `off` to disable [default: 127.0.0.1:7381]
    #[arg(long, value_name = "HOST:PORT|off")]
    pub http_listen: Option<String>,
    /// Size at which a core's log moves on to a new segment file (preallocated)
    /// [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes_max: Option<u64>,
    /// Memory for values, shared out over the cores; a value beyond it stays on disk only
    /// and is read back with direct I/O (keys and the index always stay in memory). Ignored
    /// with --durability none [default: half of the machine's memory]
    #[arg(long, value_name = "BYTES")]
    pub cache_bytes: Option<u64>,
    /// Rewrite a log segment once less than this fraction of it is current values
    /// (disk use stays within about 1 / ratio of the live data) [default: 0.5]
    #[arg(long, value_name = "RATIO")]
    pub compaction_live_ratio: Option<f64>,
    /// Most bytes per second compaction reads and rewrites on each core, so foreground
    /// requests keep the disk [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub compaction_bytes_per_s: Option<u64>,
    /// Name of this node, reported in topology; in a cluster, its id: an integer from 1 to
    /// 4294967295, listed in --initial-cluster (a founder) or never used before (--join)
    /// [default: the listen address]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Partitions keys are hashed into; fixed for the life of the data
    /// [default: 1024; 64 in a cluster, where each one is a Raft group]
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Cluster mode, founding a cluster: every founding node as ID=HOST:PORT (their
    /// --cluster-listen), comma-separated, the same list on each of them; nodes added later
    /// use --join instead [default: off, a single node]
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub initial_cluster: Option<String>,
    /// Cluster mode, joining a running cluster: the cluster address of any member. The node
    /// starts empty, learns the members and the map from it, serves (forwarding what it does
    /// not hold) and waits to be added (`corekv cluster add`). Needs --node-id and
    /// --cluster-listen; give it again on every restart
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "initial_cluster")]
    pub join: Option<String>,
    /// Node-to-node address (Raft traffic and forwarded requests)
    /// [default: this node's entry in --initial-cluster; required with --join]
    #[arg(long, value_name = "HOST:PORT")]
    pub cluster_listen: Option<String>,
    /// Replicas of each partition, at most the node count [default: 3]
    #[arg(long, value_name = "N")]
    pub replication_factor: Option<usize>,
    /// Raft's clock: elections start after 10–20 ticks without a leader, heartbeats go every
    /// 2 [default: 100]
    #[arg(long, value_name = "MS")]
    pub raft_tick_ms: Option<u64>,
    /// A membership operation in which no partition finishes moving for this long fails,
    /// with the reason; another operation may then undo or retry it [default: 600]
    #[arg(long, value_name = "SECS")]
    pub plan_stall_s: Option<u64>,
    /// A request's consistency when it does not ask: strong (linearizable, through the
    /// partition's leader) or eventual (reads served by any replica, possibly stale)
    /// [default: strong]
    #[arg(long, value_enum, value_name = "MODE")]
    pub consistency: Option<ConsistencyMode>,
    /// Largest key accepted [default: 16384]
    #[arg(long, value_name = "BYTES")]
    pub key_bytes_max: Option<usize>,
    /// Largest value accepted [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub value_bytes_max: Option<usize>,
    /// Largest frame accepted; a larger one closes the connection [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub frame_bytes_max: Option<usize>,
    /// Most operations in one batch [default: 10000]
    #[arg(long, value_name = "N")]
    pub batch_ops_max: Option<usize>,
    /// Messages queued between two cores before the sender waits [default: 1024]
    #[arg(long, value_name = "N")]
    pub mesh_capacity_messages: Option<usize>,
    /// Busy-poll this long before an idle core sleeps: lower cross-core latency, but burns
    /// the CPU; only for cores dedicated to corekv [default: 0 = off]
    #[arg(long, value_name = "US")]
    pub spin_before_park_us: Option<u64>,
    /// Period of the active TTL sweep [default: 100]
    #[arg(long, value_name = "MS")]
    pub ttl_sweep_interval_ms: Option<u64>,
    /// On SIGINT/SIGTERM, how long connections may take to finish [default: 5000]
    #[arg(long, value_name = "MS")]
    pub drain_timeout_ms: Option<u64>,
    /// Close a connection whose frame has been arriving for this long without completing
    /// (on a TLS port, also one whose handshake takes this long) [default: 10000]
    #[arg(long, value_name = "MS")]
    pub partial_frame_timeout_ms: Option<u64>,
    /// Certificate chain (PEM) of the native, Redis and HTTP ports: with --tls-key, they
    /// speak TLS only. SIGHUP reads the files again [default: off, plaintext]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate(s) (PEM): clients must show a certificate it signed [default: off]
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// This node's certificate for node links (PEM); it must name `node-<id>` among its DNS
    /// subject alternative names. With --peer-tls-key and --peer-tls-ca, node links are
    /// mutual TLS [default: off]
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --peer-tls-cert
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// The CA (PEM) every node's link certificate must come from
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Allow plaintext node links on a non-loopback --cluster-listen: anyone who reaches
    /// the port can then act as a node. Without it, such a node refuses to start
    #[arg(long)]
    pub insecure_peer_links: bool,
    /// The `default` user's password, as Redis's requirepass: every connection must then
    /// authenticate (AUTH, HELLO AUTH, the native Authenticate, HTTP Bearer). Users made
    /// with ACL SETUSER are kept in the data directory (in a cluster, the metadata group).
    /// A flag shows in `ps`: prefer the config file's `requirepass` key
    /// [default: none: the default user needs no password]
    #[arg(long, value_name = "PASS")]
    pub requirepass: Option<String>,
    /// Where backups may be written: a Backup's directory must be under it
    /// [default: none: backups are refused]
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Most client connections (native, Redis and HTTP together) the node holds; more are
    /// refused with an error [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Most connections authenticated as any one user (AUTH, Authenticate); one more is
    /// refused at its AUTH [default: 0 = no cap per user]
    #[arg(long, value_name = "N")]
    pub max_connections_per_user: Option<u64>,
    /// Host names the HTTP API answers to (comma-separated; `*` for any). Requests naming
    /// another host are refused, so a web page cannot reach the API by DNS rebinding
    /// [default: none: IP addresses and localhost only]
    #[arg(long, value_name = "NAMES")]
    pub http_allowed_hosts: Option<String>,
}

/// The keys of the `--config` file: the flags of [`ServeArgs`] without `config`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    resp_listen: Option<String>,
    http_listen: Option<String>,
    durability: Option<DurabilityMode>,
    fsync_interval_ms: Option<u64>,
    salvage: Option<bool>,
    segment_bytes_max: Option<u64>,
    checkpoint_interval_s: Option<u64>,
    cache_bytes: Option<u64>,
    compaction_live_ratio: Option<f64>,
    compaction_bytes_per_s: Option<u64>,
    cores: Option<usize>,
    cpus: Option<String>,
    data_dir: Option<PathBuf>,
    shard_ports: Option<u16>,
    node_id: Option<String>,
    partitions: Option<u32>,
    initial_cluster: Option<String>,
    join: Option<String>,
    cluster_listen: Option<String>,
    replication_factor: Option<usize>,
    raft_tick_ms: Option<u64>,
    plan_stall_s: Option<u64>,
    consistency: Option<ConsistencyMode>,
    key_bytes_max: Option<usize>,
    value_bytes_max: Option<usize>,
    frame_bytes_max: Option<usize>,
    batch_ops_max: Option<usize>,
    mesh_capacity_messages: Option<usize>,
    spin_before_park_us: Option<u64>,
    ttl_sweep_interval_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    partial_frame_timeout_ms: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    insecure_peer_links: Option<bool>,
    requirepass: Option<String>,
    backup_dir: Option<PathBuf>,
    max_connections: Option<u64>,
    max_connections_per_user: Option<u64>,
    http_allowed_hosts: Option<String>,
}

/// A fully resolved, validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: the Redis protocol is off.
    pub resp_listen: Option<SocketAddr>,
    /// `None`: the HTTP admin API is off.
    pub http_listen: Option<SocketAddr>,
    pub durability: DurabilityMode,
    pub fsync_interval_ms: u64,
    pub salvage: bool,
    pub segment_bytes_max: u64,
    pub checkpoint_interval_s: u64,
    /// For the whole node; each core gets its share.
    pub cache_bytes: u64,
    pub compaction_live_ratio: f64,
    pub compaction_bytes_per_s: u64,
    /// `None` = every CPU in this process's affinity mask (or of `cpus`).
    pub cores: Option<usize>,
    /// CPU ids to pin the cores to, in order; `None` = this process's affinity mask.
    pub cpus: Option<Vec<usize>>,
    pub data_dir: PathBuf,
    pub shard_ports: Option<u16>,
    pub node_id: Option<String>,
    pub partitions: u32,
    /// Cluster mode (`--initial-cluster`); `None` for a single node.
    pub cluster: Option<ClusterConfig>,
    pub limits: Limits,
    pub mesh_capacity_messages: usize,
    pub spin_before_park_us: u64,
    pub ttl_sweep_interval_ms: u64,
    pub drain_timeout_ms: u64,
    pub partial_frame_timeout_ms: u64,
    /// TLS on the native, Redis and HTTP ports; `None`: plaintext.
    pub tls: Option<crate::tls::ServerFiles>,
    pub requirepass: Option<String>,
    pub backup_dir: Option<PathBuf>,
    pub max_connections: u64,
    pub max_connections_per_user: u64,
    pub http_allowed_hosts: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid { key: &'static str, value: String, reason: String },
}

fn invalid(key: &'static str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), reason: reason.to_string() }
}

/// Parses a CPU list as `taskset -c` takes it: ids and ranges, comma-separated (`0,2,4-7`).
pub fn parse_cpus(list: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = |why: &str| invalid("cpus", list, why);
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        let number = |s: &str| s.trim().parse::<usize>().map_err(|_| bad("expected e.g. 0,2,4-7"));
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last || last > usize::from(u16::MAX) {
            return Err(bad("a range must go up, within 0-65535"));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(bad("a CPU is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

impl Config {
    /// Resolves flags over the optional file over defaults, then validates.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cluster = cluster_config(args, &file)?;
        let tls = tls_files(args, &file)?;
        let listen_text =
            args.listen.clone().or(file.listen).unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let listen = resolve_addr(&listen_text).map_err(|r| invalid("listen", &listen_text, &r))?;
        let resp_text = args
            .resp_listen
            .clone()
            .or(file.resp_listen)
            .unwrap_or_else(|| RESP_LISTEN_DEFAULT.to_string());
        let resp_listen = match resp_text.as_str() {
            "off" => None,
            text => Some(resolve_addr(text).map_err(|r| invalid("resp_listen", text, &r))?),
        };
        let http_text = args
            .http_listen
            .clone()
            .or(file.http_listen)
            .unwrap_or_else(|| HTTP_LISTEN_DEFAULT.to_string());
        let http_listen = match http_text.as_str() {
            "off" => None,
            text => Some(resolve_addr(text).map_err(|r| invalid("http_listen", text, &r))?),
        };
        let d = Limits::DEFAULT;
        let limits = Limits {
            key_bytes_max: args.key_bytes_max.or(file.key_bytes_max).unwrap_or(d.key_bytes_max),
            value_bytes_max: args
                .value_bytes_max
                .or(file.value_bytes_max)
                .unwrap_or(d.value_bytes_max),
            frame_bytes_max: args
                .frame_bytes_max
                .or(file.frame_bytes_max)
                .unwrap_or(d.frame_bytes_max),
            batch_ops_max: args.batch_ops_max.or(file.batch_ops_max).unwrap_or(d.batch_ops_max),
        };
        let config = Config {
            listen,
            resp_listen,
            http_listen,
            durability: args.durability.or(file.durability).unwrap_or_default(),
            fsync_interval_ms: args
                .fsync_interval_ms
                .or(file.fsync_interval_ms)
                .unwrap_or(FSYNC_INTERVAL_MS_DEFAULT),
            salvage: args.salvage || file.salvage.unwrap_or(false),
            segment_bytes_max: args
                .segment_bytes_max
                .or(file.segment_bytes_max)
                .unwrap_or(SEGMENT_BYTES_MAX_DEFAULT),
            checkpoint_interval_s: args
                .checkpoint_interval_s
                .or(file.checkpoint_interval_s)
                .unwrap_or(CHECKPOINT_INTERVAL_S_DEFAULT),
            cache_bytes: args
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or_else(|| memory_bytes().map_or(CACHE_BYTES_FALLBACK, |m| m / 2)),
            compaction_live_ratio: args
                .compaction_live_ratio
                .or(file.compaction_live_ratio)
                .unwrap_or(COMPACTION_LIVE_RATIO_DEFAULT),
            compaction_bytes_per_s: args
                .compaction_bytes_per_s
                .or(file.compaction_bytes_per_s)
                .unwrap_or(COMPACTION_BYTES_PER_S_DEFAULT),
            cores: args.cores.or(file.cores),
            cpus: match args.cpus.clone().or(file.cpus) {
                Some(list) => Some(parse_cpus(&list)?),
                None => None,
            },
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)),
            shard_ports: args.shard_ports.or(file.shard_ports),
            node_id: args.node_id.clone().or(file.node_id),
            partitions: args.partitions.or(file.partitions).unwrap_or(if cluster.is_some() {
                CLUSTER_PARTITIONS_DEFAULT
            } else {
                PARTITIONS_DEFAULT
            }),
            cluster,
            limits,
            mesh_capacity_messages: args
                .mesh_capacity_messages
                .or(file.mesh_capacity_messages)
                .unwrap_or(MESH_CAPACITY_MESSAGES_DEFAULT),
            spin_before_park_us: args.spin_before_park_us.or(file.spin_before_park_us).unwrap_or(0),
            ttl_sweep_interval_ms: args
                .ttl_sweep_interval_ms
                .or(file.ttl_sweep_interval_ms)
                .unwrap_or(TTL_SWEEP_INTERVAL_MS_DEFAULT),
            drain_timeout_ms: args
                .drain_timeout_ms
                .or(file.drain_timeout_ms)
                .unwrap_or(DRAIN_TIMEOUT_MS_DEFAULT),
            partial_frame_timeout_ms: args
                .partial_frame_timeout_ms
                .or(file.partial_frame_timeout_ms)
                .unwrap_or(PARTIAL_FRAME_TIMEOUT_MS_DEFAULT),
            tls,
            requirepass: args.requirepass.clone().or(file.requirepass.clone()),
            backup_dir: args.backup_dir.clone().or(file.backup_dir.clone()),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(MAX_CONNECTIONS_DEFAULT),
            max_connections_per_user: args
                .max_connections_per_user
                .or(file.max_connections_per_user)
                .unwrap_or(0),
            http_allowed_hosts: args
                .http_allowed_hosts
                .clone()
                .or(file.http_allowed_hosts.clone())
                .map(|list| {
                    list.split(',')
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.cores == Some(0) {
            return Err(invalid("cores", 0, "must be at least 1"));
        }
        if let Some(cores) = self.cores
            && cores > usize::from(u16::MAX)
        {
            return Err(invalid("cores", cores, "too many"));
        }
        if self.partitions == 0 {
            return Err(invalid("partitions", 0, "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", 0, "must be at least 1"));
        }
        if self.requirepass.as_deref() == Some("") {
            return Err(invalid("requirepass", "", "must not be empty"));
        }
        // Raft's votes and log must be on disk before a node answers for them; periodic
        // syncing would stall every Raft round for the interval, and none forgets votes.
        if self.cluster.is_some() && self.durability != DurabilityMode::Sync {
            return Err(invalid(
                "durability",
                format!("{:?}", self.durability).to_lowercase(),
                "a cluster node needs sync (Raft persists votes and entries before answering)",
            ));
        }
        let l = &self.limits;
        if l.key_bytes_max == 0 {
            return Err(invalid("key_bytes_max", 0, "must be at least 1"));
        }
        if l.frame_bytes_max > u32::MAX as usize {
            return Err(invalid("frame_bytes_max", l.frame_bytes_max, "must fit in a u32 prefix"));
        }
        // A maximal single write must fit in a frame, with room for the envelope.
        if l.key_bytes_max.saturating_add(l.value_bytes_max).saturating_add(1024)
            > l.frame_bytes_max
        {
            return Err(invalid(
                "frame_bytes_max",
                l.frame_bytes_max,
                "must exceed key_bytes_max + value_bytes_max + 1024",
            ));
        }
        // A value must fit in one log record, or writing it would be a bug that aborts the node.
        let record_bytes = l.key_bytes_max.saturating_add(l.value_bytes_max).saturating_add(32);
        if record_bytes > RECORD_BYTES_MAX {
            return Err(invalid(
                "value_bytes_max",
                l.value_bytes_max,
                "key_bytes_max + value_bytes_max must stay under 64 MiB (one log record)",
            ));
        }
        if l.batch_ops_max == 0 {
            return Err(invalid("batch_ops_max", 0, "must be at least 1"));
        }
        if self.mesh_capacity_messages == 0 {
            return Err(invalid("mesh_capacity_messages", 0, "must be at least 1"));
        }
        if self.segment_bytes_max < SEGMENT_BYTES_MIN
            || !self.segment_bytes_max.is_multiple_of(4096)
        {
            return Err(invalid(
                "segment_bytes_max",
                self.segment_bytes_max,
                "must be a multiple of 4096, at least 1 MiB",
            ));
        }
        if self.segment_bytes_max > SEGMENT_BYTES_MAX {
            return Err(invalid(
                "segment_bytes_max",
                self.segment_bytes_max,
                "must be under 4 GiB",
            ));
        }
        if !(self.compaction_live_ratio > 0.0 && self.compaction_live_ratio < 1.0) {
            return Err(invalid(
                "compaction_live_ratio",
                self.compaction_live_ratio,
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if self.compaction_bytes_per_s < 1 << 20 {
            return Err(invalid(
                "compaction_bytes_per_s",
                self.compaction_bytes_per_s,
                "must be at least 1 MiB/s, or compaction could fall behind any write load",
            ));
        }
        if self.fsync_interval_ms == 0 {
            return Err(invalid("fsync_interval_ms", 0, "must be at least 1"));
        }
        if self.partial_frame_timeout_ms == 0 {
            return Err(invalid("partial_frame_timeout_ms", 0, "must be at least 1"));
        }
        if self.ttl_sweep_interval_ms == 0 {
            return Err(invalid("ttl_sweep_interval_ms", 0, "must be at least 1"));
        }
        Ok(())
    }
}

/// The machine's memory (MemTotal), if /proc says.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The cluster flags, when `--initial-cluster` is given.
fn cluster_config(
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Option<ClusterConfig>, ConfigError> {
    if let Some(text) = args.join.clone().or(file.join.clone()) {
        return join_config(args, file, &text).map(Some);
    }
    let Some(list) = args.initial_cluster.clone().or(file.initial_cluster.clone()) else {
        for (key, set) in [
            ("cluster_listen", args.cluster_listen.is_some() || file.cluster_listen.is_some()),
            (
                "replication_factor",
                args.replication_factor.is_some() || file.replication_factor.is_some(),
            ),
            (
                "peer_tls_cert",
                args.peer_tls_cert.is_some()
                    || file.peer_tls_cert.is_some()
                    || args.peer_tls_key.is_some()
                    || file.peer_tls_key.is_some()
                    || args.peer_tls_ca.is_some()
                    || file.peer_tls_ca.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(key, "set", "needs --initial-cluster (cluster mode)"));
            }
        }
        return Ok(None);
    };
    let mut nodes: Vec<(u64, SocketAddr)> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((id, addr)) = item.split_once('=') else {
            return Err(invalid("initial_cluster", item, "each entry is ID=HOST:PORT"));
        };
        let id = parse_node_id(id).map_err(|r| invalid("initial_cluster", item, &r))?;
        let addr = resolve_addr(addr).map_err(|r| invalid("initial_cluster", item, &r))?;
        if nodes.iter().any(|(n, _)| *n == id) {
            return Err(invalid("initial_cluster", item, "node id listed twice"));
        }
        nodes.push((id, addr));
    }
    if nodes.is_empty() {
        return Err(invalid("initial_cluster", &list, "lists no node"));
    }
    let id_text = args.node_id.clone().or(file.node_id.clone()).ok_or_else(|| {
        invalid("node_id", "unset", "cluster mode needs --node-id, one of --initial-cluster's ids")
    })?;
    let node = parse_node_id(&id_text).map_err(|r| invalid("node_id", &id_text, &r))?;
    let Some(&(_, listed)) = nodes.iter().find(|(n, _)| *n == node) else {
        return Err(invalid("node_id", node, "is not in --initial-cluster"));
    };
    let listen = match args.cluster_listen.clone().or(file.cluster_listen.clone()) {
        Some(text) => resolve_addr(&text).map_err(|r| invalid("cluster_listen", &text, &r))?,
        None => listed,
    };
    let replication_factor = args
        .replication_factor
        .or(file.replication_factor)
        .unwrap_or(REPLICATION_FACTOR_DEFAULT)
        .min(nodes.len());
    if replication_factor == 0 {
        return Err(invalid("replication_factor", 0, "must be at least 1"));
    }
    let raft_tick_ms = args.raft_tick_ms.or(file.raft_tick_ms).unwrap_or(RAFT_TICK_MS_DEFAULT);
    if !(1..=10_000).contains(&raft_tick_ms) {
        return Err(invalid("raft_tick_ms", raft_tick_ms, "must be 1..=10000"));
    }
    Ok(Some(ClusterConfig {
        node,
        listen,
        replication_factor,
        raft_tick_ms,
        plan_stall_s: plan_stall_s(args, file)?,
        consistency: args.consistency.or(file.consistency).unwrap_or_default(),
        bootstrap: true,
        join: None,
        cluster_id: cluster_id_of(&nodes),
        peer_tls: peer_tls(args, file, listen)?,
        nodes,
    }))
}

/// The cluster flags of a node joining a running cluster (`--join`).
fn join_config(
    args: &ServeArgs,
    file: &FileConfig,
    join: &str,
) -> Result<ClusterConfig, ConfigError> {
    if args.initial_cluster.is_some() || file.initial_cluster.is_some() {
        return Err(invalid(
            "join",
            join,
            "founds no cluster: give --join or --initial-cluster, not both",
        ));
    }
    let member = resolve_addr(join).map_err(|r| invalid("join", join, &r))?;
    let id_text = args.node_id.clone().or(file.node_id.clone()).ok_or_else(|| {
        invalid("node_id", "unset", "joining needs --node-id, an id no member has had")
    })?;
    let node = parse_node_id(&id_text).map_err(|r| invalid("node_id", &id_text, &r))?;
    let listen_text =
        args.cluster_listen.clone().or(file.cluster_listen.clone()).ok_or_else(|| {
            invalid(
                "cluster_listen",
                "unset",
                "joining needs --cluster-listen, where members reach this node",
            )
        })?;
    let listen =
        resolve_addr(&listen_text).map_err(|r| invalid("cluster_listen", &listen_text, &r))?;
    let replication_factor =
        args.replication_factor.or(file.replication_factor).unwrap_or(REPLICATION_FACTOR_DEFAULT);
    let raft_tick_ms = args.raft_tick_ms.or(file.raft_tick_ms).unwrap_or(RAFT_TICK_MS_DEFAULT);
    if !(1..=10_000).contains(&raft_tick_ms) {
        return Err(invalid("raft_tick_ms", raft_tick_ms, "must be 1..=10000"));
    }
    Ok(ClusterConfig {
        node,
        listen,
        nodes: vec![(node, listen)],
        replication_factor,
        raft_tick_ms,
        plan_stall_s: plan_stall_s(args, file)?,
        consistency: args.consistency.or(file.consistency).unwrap_or_default(),
        bootstrap: false,
        join: Some(member),
        // Learned from the member at the join (`node::join`).
        cluster_id: 0,
        peer_tls: peer_tls(args, file, listen)?,
    })
}

/// `--tls-cert`, `--tls-key` and `--tls-client-ca`, from the flags or the file.
fn tls_files(
    args: &ServeArgs,
    file: &FileConfig,
) -> Result<Option<crate::tls::ServerFiles>, ConfigError> {
    let cert = args.tls_cert.clone().or(file.tls_cert.clone());
    let key = args.tls_key.clone().or(file.tls_key.clone());
    let client_ca = args.tls_client_ca.clone().or(file.tls_client_ca.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::ServerFiles { cert, key, client_ca })),
        (None, None) if client_ca.is_none() => Ok(None),
        _ => Err(invalid(
            "tls_cert",
            "partly set",
            "TLS needs both --tls-cert and --tls-key (and --tls-client-ca needs them)",
        )),
    }
}

/// The node links' TLS. Plaintext links are allowed only on loopback or when asked for:
/// anyone who reaches a plaintext cluster port can act as a node.
fn peer_tls(
    args: &ServeArgs,
    file: &FileConfig,
    listen: SocketAddr,
) -> Result<Option<crate::tls::PeerFiles>, ConfigError> {
    let cert = args.peer_tls_cert.clone().or(file.peer_tls_cert.clone());
    let key = args.peer_tls_key.clone().or(file.peer_tls_key.clone());
    let ca = args.peer_tls_ca.clone().or(file.peer_tls_ca.clone());
    let insecure = args.insecure_peer_links || file.insecure_peer_links.unwrap_or(false);
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::PeerFiles { cert, key, ca })),
        (None, None, None) if insecure || listen.ip().is_loopback() => Ok(None),
        (None, None, None) => Err(invalid(
            "cluster_listen",
            listen,
            "is not loopback: node links need --peer-tls-cert, --peer-tls-key and \
             --peer-tls-ca (or --insecure-peer-links, which lets anyone who reaches the port \
             act as a node)",
        )),
        _ => Err(invalid(
            "peer_tls_cert",
            "partly set",
            "node links need all three of --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
        )),
    }
}

fn plan_stall_s(args: &ServeArgs, file: &FileConfig) -> Result<u64, ConfigError> {
    let secs = args.plan_stall_s.or(file.plan_stall_s).unwrap_or(PLAN_STALL_S_DEFAULT);
    if !(1..=86_400 * 7).contains(&secs) {
        return Err(invalid("plan_stall_s", secs, "must be 1..=604800 (a week)"));
    }
    Ok(secs)
}

fn parse_node_id(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        // Raft replica ids keep the node id in their low 32 bits (`cluster::group`).
        Ok(id) if (1..=u64::from(u32::MAX)).contains(&id) => Ok(id),
        _ => Err(format!("node id {text:?} must be an integer from 1 to {}", u32::MAX)),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    toml::from_str(&text)
        .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
}

fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let mut addrs = text.to_socket_addrs().map_err(|e| e.to_string())?;
    addrs.next().ok_or_else(|| "resolves to no address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::load(&ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), LISTEN_DEFAULT);
        assert_eq!(c.data_dir, PathBuf::from(DATA_DIR_DEFAULT));
        assert_eq!(c.partitions, 1024);
        assert_eq!(c.limits, Limits::DEFAULT);
        assert_eq!(c.shard_ports, None);
    }

    #[test]
    fn cpu_lists_read_as_taskset_writes_them() {
        assert_eq!(parse_cpus("3").unwrap(), [3]);
        assert_eq!(parse_cpus("2, 0,4-6").unwrap(), [2, 0, 4, 5, 6]);
        for bad in ["", "a", "1,,2", "3-1", "1,1", "0-2,2", "-1", "70000"] {
            let err = parse_cpus(bad).unwrap_err().to_string();
            assert!(err.contains("cpus"), "{bad:?}: {err}");
        }
        let c = Config::load(&ServeArgs { cpus: Some("1".into()), ..Default::default() });
        assert_eq!(c.unwrap().cpus, Some(vec![1]));
    }

    #[test]
    fn flags_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ncores = 3\nshard_ports = 9100\n")
            .unwrap();
        let args = ServeArgs { config: Some(path), cores: Some(1), ..Default::default() };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cores, Some(1));
        assert_eq!(c.shard_ports, Some(9100));
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Config::load(&ServeArgs { config: Some(path), ..Default::default() });
        assert!(err.unwrap_err().to_string().contains("lisen"));
        let err = Config::load(&ServeArgs { cores: Some(0), ..Default::default() });
        assert!(err.unwrap_err().to_string().contains("cores"));
        let err = Config::load(&ServeArgs { listen: Some("nope".into()), ..Default::default() });
        assert!(err.unwrap_err().to_string().contains("listen"));
        let err = Config::load(&ServeArgs { frame_bytes_max: Some(100), ..Default::default() });
        assert!(err.unwrap_err().to_string().contains("frame_bytes_max"));
    }

    #[test]
    fn cluster_flags() {
        let cluster = |id: &str, list: &str| ServeArgs {
            node_id: Some(id.into()),
            initial_cluster: Some(list.into()),
            ..Default::default()
        };
        let list = "1=127.0.0.1:7401, 2=127.0.0.1:7402,3=127.0.0.1:7403";
        let c = Config::load(&cluster("2", list)).unwrap();
        let cc = c.cluster.expect("cluster mode");
        assert_eq!(cc.node, 2);
        assert_eq!(cc.listen, "127.0.0.1:7402".parse().unwrap());
        assert_eq!(cc.nodes.len(), 3);
        assert_eq!(cc.replication_factor, 3);
        assert_eq!(c.partitions, CLUSTER_PARTITIONS_DEFAULT);
        // RF is capped by the node count.
        let one = Config::load(&cluster("1", "1=127.0.0.1:7401")).unwrap();
        assert_eq!(one.cluster.unwrap().replication_factor, 1);
        for (args, what) in [
            (cluster("4", list), "node_id"),
            (cluster("x", list), "node_id"),
            (cluster("1", "1=127.0.0.1:7401,1=127.0.0.1:7402"), "listed twice"),
            (cluster("1", "1@127.0.0.1:7401"), "ID=HOST:PORT"),
            (ServeArgs { node_id: None, ..cluster("1", list) }, "needs --node-id"),
            (
                ServeArgs { durability: Some(DurabilityMode::Periodic), ..cluster("1", list) },
                "needs sync",
            ),
            (
                ServeArgs { durability: Some(DurabilityMode::None), ..cluster("1", list) },
                "needs sync",
            ),
            (
                ServeArgs { cluster_listen: Some("127.0.0.1:1".into()), ..Default::default() },
                "needs --initial-cluster",
            ),
        ] {
            let err = Config::load(&args).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }

    /// The shipped example must stay loadable: every key in it, commented or not, is real.
    #[test]
    fn tuning_example_config_parses_with_every_key_enabled() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/corekv.toml.example");
        let text = std::fs::read_to_string(&path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let as_is = dir.path().join("as-is.toml");
        std::fs::write(&as_is, &text).unwrap();
        Config::load(&ServeArgs { config: Some(as_is), ..Default::default() }).unwrap();
        // Uncomment every `#key = value` line: each must be a known key with a valid value.
        let enabled: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let all = dir.path().join("all.toml");
        std::fs::write(&all, enabled).unwrap();
        let c = Config::load(&ServeArgs { config: Some(all), ..Default::default() });
        assert!(c.is_ok(), "{:?}", c.err().map(|e| e.to_string()));
    }
}
