//! The command line and the validated run configuration it becomes.
//!
//! [`Cli`] is what clap parses (and what `--help` shows); [`Config`] is the checked, resolved form
//! the rest of the crate reads, and the `config` object of the JSON summary. Every bound on a flag
//! lives here, next to the flag: the key and value sizes are bounded by the node's own
//! [`Limits`], so the load generator never sends what a default node would refuse as too large.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use corekv_schema::frame::Limits;
use serde::Serialize;

use crate::workload::{KeyFormat, OpKind, key_digits};

/// Most connections one process opens; past this a run measures the client, not the server.
pub const CONNECTIONS_MAX: u32 = 100_000;
/// Most requests in flight on one connection.
pub const PIPELINE_MAX: u32 = 100_000;
/// Most tokio worker threads.
pub const THREADS_MAX: u32 = 1024;
/// Largest `--key-size`: what a node with default limits accepts.
const KEY_BYTES_MAX: i64 = Limits::DEFAULT.key_bytes_max as i64;
/// Largest `--value-size`: what a node with default limits accepts.
const VALUE_BYTES_MAX: i64 = Limits::DEFAULT.value_bytes_max as i64;
/// Longest `--duration` or `--warmup`: a day, which keeps every deadline far from overflow.
pub const PHASE_SECS_MAX: u64 = 86_400;

#[derive(Parser, Debug)]
#[command(
    name = "corekv-loadgen",
    version,
    about = "Load generator for corekv: closed or open loop, per-operation HdrHistogram latencies",
    long_about = None,
)]
pub struct Cli {
    /// Server address
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7379")]
    pub addr: String,

    /// Wire protocol
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,

    /// TCP connections to open
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=CONNECTIONS_MAX as i64))]
    pub connections: u32,

    /// Requests in flight per connection
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=PIPELINE_MAX as i64))]
    pub pipeline: u32,

    /// Tokio worker threads
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=THREADS_MAX as i64))]
    pub threads: u32,

    /// Measured run length, after the warmup (e.g. 10, 10s, 500ms, 2m)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub duration: Duration,

    /// Warmup before the measured run; its requests are not recorded
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Key space: keys are numbered 0..N
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// Bytes per key ("key:" + zero-padded index, fitted to this size)
    #[arg(long, value_name = "BYTES", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=KEY_BYTES_MAX))]
    pub key_size: u32,

    /// Bytes per value written by SET
    #[arg(long, value_name = "BYTES", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=VALUE_BYTES_MAX))]
    pub value_size: u32,

    /// Operation weights: comma-separated op=weight with op in get, set, del
    #[arg(long, value_name = "MIX", default_value = "get=80,set=15,del=5")]
    pub mix: Mix,

    /// How keys are chosen from the key space
    #[arg(long, value_enum, value_name = "DIST", default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// Zipf exponent, used with --distribution zipf (0 = uniform; YCSB uses 0.99)
    #[arg(long, value_name = "THETA", default_value_t = 0.99)]
    pub zipf_theta: f64,

    /// Before the run, SET every key of the key space once (pipelined)
    #[arg(long)]
    pub preload: bool,

    /// Open loop: target ops/s across all connections, latency measured from each request's
    /// intended send time (coordinated omission corrected) [default: closed loop]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Write the summary as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,

    /// Seed for key and operation choices (same seed, same sequence per connection)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// Native protocol, against a cluster: what each request asks for (default: the node's)
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Default)]
    pub consistency: ConsistencyArg,

    /// Native protocol: where requests go. With `map`, through the SDK's cluster routing, each
    /// to its partition's leader, --connections per node
    #[arg(long, value_enum, default_value_t = Routing::Auto)]
    pub routing: Routing,

    /// Speak TLS, trusting the CA certificate(s) in FILE (PEM) for the node's certificate
    /// [default: plaintext]
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// With --tls-ca: show this client certificate (PEM), for a node with --tls-client-ca
    #[arg(long, value_name = "FILE", requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// With --tls-ca: the name the node's certificate must carry [default: the IP address
    /// of --addr]
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,

    /// Authenticate every connection as this user (AUTH on RESP, Authenticate on the native
    /// protocol) [default: default, when --password is given]
    #[arg(long, value_name = "NAME", requires = "password")]
    pub user: Option<String>,

    /// The password to authenticate with (a node's --requirepass, or --user's)
    #[arg(long, value_name = "PASS")]
    pub password: Option<String>,
}

/// Where native requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// `map` when --addr is a cluster node, else `node`
    Auto,
    /// By the cluster's map, as the SDK routes: the key's partition leader, following
    /// `WrongNode` and retrying what provably did not apply (a cluster node is required)
    Map,
    /// Everything to --addr, which forwards what it does not lead
    Node,
}

/// The consistency requests ask for (native protocol; a cluster honours it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyArg {
    /// Whatever the node is configured with
    Default,
    /// Linearizable: through the partition's leader
    Strong,
    /// Any replica, possibly stale (reads)
    Eventual,
}

impl ConsistencyArg {
    pub fn wire(self) -> corekv_schema::codec::Consistency {
        use corekv_schema::codec::Consistency;
        match self {
            ConsistencyArg::Default => Consistency::Default,
            ConsistencyArg::Strong => Consistency::Strong,
            ConsistencyArg::Eventual => Consistency::Eventual,
        }
    }
}

/// How keys are drawn from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipf,
}

/// Which wire protocol the connections speak (see `protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// corekv's FlatBuffers protocol (its native port, 7379)
    Native,
    /// Redis's RESP2 (redis-server, or corekv's --resp-listen port, 7380)
    Resp,
}

/// Relative weights of the operations, in `OpKind::ALL` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub get: u32,
    pub set: u32,
    pub del: u32,
}

impl Mix {
    pub fn weight(&self, kind: OpKind) -> u32 {
        match kind {
            OpKind::Get => self.get,
            OpKind::Set => self.set,
            OpKind::Del => self.del,
        }
    }

    /// Sum of the weights; at least 1 for a parsed mix.
    pub fn total(&self) -> u64 {
        OpKind::ALL.iter().map(|&k| u64::from(self.weight(k))).sum()
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "get={},set={},del={}", self.get, self.set, self.del)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix { get: 0, set: 0, del: 0 };
        let mut seen = [false; OpKind::ALL.len()];
        for part in s.split(',').map(str::trim) {
            let Some((name, weight)) = part.split_once('=') else {
                return Err(format!("expected op=weight, got '{part}' (e.g. get=80,set=15,del=5)"));
            };
            let name = name.trim();
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| format!("unknown operation '{name}' (known: get, set, del)"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("weight of {name} must be a non-negative integer, got '{}'", weight.trim())
            })?;
            if std::mem::replace(&mut seen[kind as usize], true) {
                return Err(format!("operation '{name}' appears twice"));
            }
            match kind {
                OpKind::Get => mix.get = weight,
                OpKind::Set => mix.set = weight,
                OpKind::Del => mix.del = weight,
            }
        }
        if mix.total() == 0 {
            return Err("weights sum to 0; give at least one operation a positive weight".into());
        }
        Ok(mix)
    }
}

/// Parses `10`, `10s`, `1.5s`, `500ms` or `2m` into a duration of at most [`PHASE_SECS_MAX`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, unit_secs) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10, 10s, 500ms, 2m)"))?;
    let secs = value * unit_secs;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a non-negative duration"));
    }
    if secs > PHASE_SECS_MAX as f64 {
        return Err(format!("'{s}' exceeds the limit of {PHASE_SECS_MAX} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The checked configuration of one run. Serialized as the `config` object of the JSON summary.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub addr: String,
    pub protocol: Protocol,
    pub connections: u32,
    pub pipeline: u32,
    pub threads: u32,
    #[serde(rename = "duration_secs", serialize_with = "secs")]
    pub duration: Duration,
    #[serde(rename = "warmup_secs", serialize_with = "secs")]
    pub warmup: Duration,
    pub keys: u64,
    pub key_size_bytes: u32,
    pub value_size_bytes: u32,
    pub mix: Mix,
    pub distribution: Distribution,
    pub zipf_theta: f64,
    pub preload: bool,
    /// Open-loop target across all connections; `None` is closed loop.
    pub rate_ops_per_sec: Option<u64>,
    pub seed: u64,
    pub consistency: ConsistencyArg,
    /// As asked; the run resolves `auto` once it has seen the node.
    pub routing: Routing,
    /// Whether the connections speak TLS.
    #[serde(serialize_with = "is_some")]
    pub tls: Option<corekv_client::Tls>,
    /// Who the connections authenticate as (the password is never written out).
    pub user: Option<String>,
    #[serde(skip)]
    pub password: Option<String>,
}

impl Config {
    /// The login every raw connection makes first, if any.
    pub fn login(&self) -> Option<crate::connection::Login> {
        let password = self.password.clone()?;
        let user = self.user.clone().unwrap_or_else(|| "default".into());
        Some(crate::connection::Login { resp: self.protocol == Protocol::Resp, user, password })
    }

    /// The SDK's credentials, for the routed transport.
    pub fn credentials(&self) -> Option<corekv_client::Credentials> {
        let login = self.login()?;
        Some(corekv_client::Credentials { user: login.user, password: login.password })
    }
}

fn is_some<S: serde::Serializer, T>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(v.is_some())
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Config {
    /// Checks the relations between flags that clap cannot check one flag at a time.
    pub fn from_cli(cli: &Cli) -> Result<Config, String> {
        if cli.duration.is_zero() {
            return Err("--duration must be greater than 0".into());
        }
        if KeyFormat::new(cli.keys, cli.key_size as usize).is_none() {
            return Err(format!(
                "--key-size {} cannot hold {} distinct keys: it needs at least {} bytes",
                cli.key_size,
                cli.keys,
                key_digits(cli.keys)
            ));
        }
        if !(cli.zipf_theta.is_finite() && cli.zipf_theta >= 0.0) {
            return Err(format!(
                "--zipf-theta must be a finite number >= 0, got {}",
                cli.zipf_theta
            ));
        }
        if cli.routing == Routing::Map && cli.protocol != Protocol::Native {
            return Err(
                "--routing map needs --protocol native (RESP is forwarded by the node)".into()
            );
        }
        let tls = match &cli.tls_ca {
            None => None,
            Some(ca) => {
                let client = cli.tls_cert.as_deref().zip(cli.tls_key.as_deref());
                let mut tls =
                    corekv_client::Tls::from_pem_files(ca, client).map_err(|e| e.to_string())?;
                tls.server_name = cli.tls_server_name.clone();
                Some(tls)
            }
        };
        Ok(Config {
            tls,
            user: cli
                .password
                .as_ref()
                .map(|_| cli.user.clone().unwrap_or_else(|| "default".into())),
            password: cli.password.clone(),
            addr: cli.addr.clone(),
            protocol: cli.protocol,
            connections: cli.connections,
            pipeline: cli.pipeline,
            threads: cli.threads,
            duration: cli.duration,
            warmup: cli.warmup,
            keys: cli.keys,
            key_size_bytes: cli.key_size,
            value_size_bytes: cli.value_size,
            mix: cli.mix,
            distribution: cli.distribution,
            zipf_theta: cli.zipf_theta,
            preload: cli.preload,
            rate_ops_per_sec: cli.rate,
            seed: cli.seed,
            consistency: cli.consistency,
            routing: cli.routing,
        })
    }

    /// The shape of this run's keys; an error when the key size cannot hold the key space.
    pub fn key_format(&self) -> Result<KeyFormat, String> {
        KeyFormat::new(self.keys, self.key_size_bytes as usize).ok_or_else(|| {
            format!("key size {} cannot hold {} distinct keys", self.key_size_bytes, self.keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_the_default_and_partial_mixes() {
        let m: Mix = "get=80,set=15,del=5".parse().unwrap();
        assert_eq!(m, Mix { get: 80, set: 15, del: 5 });
        assert_eq!(m.to_string(), "get=80,set=15,del=5");
        assert_eq!(m.total(), 100);
        let m: Mix = " set = 1 ".parse().unwrap();
        assert_eq!((m.get, m.set, m.del), (0, 1, 0));
        let m: Mix = "del=2,get=0".parse().unwrap();
        assert_eq!((m.get, m.set, m.del), (0, 0, 2));
    }

    #[test]
    fn mix_refuses_what_it_cannot_run() {
        let cases = [
            ("put=1", "unknown operation 'put'"),
            ("get=-1", "non-negative integer"),
            ("get=1.5", "non-negative integer"),
            ("get=x", "non-negative integer"),
            ("get", "expected op=weight"),
            ("", "expected op=weight"),
            ("get=1,,set=1", "expected op=weight"),
            ("get=1,get=2", "appears twice"),
            ("get=0,set=0,del=0", "sum to 0"),
            ("get=4294967296", "non-negative integer"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Mix>().unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn durations_take_plain_seconds_and_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "ten", "-1", "1h", "NaN", "inf", "86401"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn cli_defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["corekv-loadgen"]).unwrap();
        let cfg = Config::from_cli(&cli).unwrap();
        assert_eq!(cfg.addr, "127.0.0.1:7379");
        assert_eq!((cfg.connections, cfg.pipeline, cfg.threads), (50, 1, 1));
        assert_eq!(cfg.duration, Duration::from_secs(10));
        assert_eq!(cfg.warmup, Duration::from_secs(2));
        assert_eq!((cfg.keys, cfg.key_size_bytes, cfg.value_size_bytes), (100_000, 50, 500));
        assert_eq!(cfg.mix.to_string(), "get=80,set=15,del=5");
        assert_eq!(cfg.distribution, Distribution::Uniform);
        assert_eq!(cfg.zipf_theta, 0.99);
        assert!(!cfg.preload);
        assert_eq!(cfg.rate_ops_per_sec, None);
        assert_eq!(cfg.routing, Routing::Auto);
    }

    #[test]
    fn cli_refuses_impossible_combinations() {
        let parse = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("corekv-loadgen").chain(args.iter().copied()))
                    .map_err(|e| e.to_string())?;
            Config::from_cli(&cli)
        };
        assert!(parse(&["--connections", "0"]).is_err());
        assert!(parse(&["--mix", "get=0"]).unwrap_err().contains("sum to 0"));
        assert!(parse(&["--duration", "0"]).unwrap_err().contains("--duration"));
        let err = parse(&["--keys", "100000", "--key-size", "4"]).unwrap_err();
        assert!(err.contains("at least 5 bytes"), "{err}");
        assert!(parse(&["--keys", "100000", "--key-size", "5"]).is_ok());
        assert!(parse(&["--zipf-theta", "-1"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert_eq!(parse(&["--rate", "5000"]).unwrap().rate_ops_per_sec, Some(5000));
        let err = parse(&["--protocol", "resp", "--routing", "map"]).unwrap_err();
        assert!(err.contains("--protocol native"), "{err}");
        assert!(parse(&["--protocol", "resp", "--routing", "node"]).is_ok());
    }
}
