//! A whole run: connect, optionally preload, drive every connection, report progress, summarize.
//!
//! Order: all connections are opened before the clock starts, so an unreachable server fails fast
//! with the address and the OS error, and connection setup never counts as latency. The run then
//! lasts `warmup + duration` (no request starts later), plus at most [`GRACE`] for replies in
//! flight; nothing waits longer than that, so a run always ends.
//!
//! The preload is its own phase with its own connections: every key is SET once, the key space
//! split round-robin over the connections, each keeping at least [`PRELOAD_WINDOW_MIN`] requests
//! in flight. It ends when every key has been answered, or when a connection sees no reply for
//! [`PRELOAD_STALL_LIMIT`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, Protocol};
use crate::connection::{self, Connection, Plan, Setup, Socket, Source, Totals};
use crate::protocol::Driver;
use crate::protocol::native::Native;
use crate::protocol::resp::Resp;
use crate::routed;
use crate::schedule::Schedule;
use crate::stats::Summary;
use crate::workload::{self, KeyChooser, Workload};

/// How long replies are awaited after the last request of a run may start.
pub const GRACE: Duration = Duration::from_secs(2);
/// Requests in flight per connection during the preload, at least.
pub const PRELOAD_WINDOW_MIN: usize = 64;
/// A preload connection with requests in flight and no reply for this long gives up.
pub const PRELOAD_STALL_LIMIT: Duration = Duration::from_secs(10);
/// How often a progress line is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Stands in for "no deadline" (a preload ends when its keys run out, not at a time).
const FAR_FUTURE: Duration = Duration::from_secs(365 * 86_400);

/// Why a run could not be carried out. Each variant is a clear message for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
}

/// What the preload did.
#[derive(Clone, Debug, PartialEq)]
pub struct PreloadReport {
    pub keys_set: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// Runs the preload (if configured) and the measured run; returns the measured summary.
pub async fn run(cfg: &Config) -> Result<Summary, RunError> {
    // Check what the connections will need before touching the network.
    cfg.key_format().map_err(RunError::Config)?;
    KeyChooser::new(cfg.distribution, cfg.keys, cfg.zipf_theta).map_err(RunError::Config)?;
    match cfg.protocol {
        Protocol::Native => {
            let routed = routed::client_for(cfg).await?;
            run_with::<Native>(cfg, routed).await
        }
        Protocol::Resp => run_with::<Resp>(cfg, None).await,
    }
}

/// How a phase's connections reach the server.
enum Transport {
    /// A socket each, opened up front.
    Raw(Vec<Socket>),
    /// One client routing by the cluster's map, shared.
    Routed(corekv_client::Client),
}

impl Transport {
    async fn open(cfg: &Config, routed: &Option<corekv_client::Client>) -> Result<Self, RunError> {
        Ok(match routed {
            Some(client) => Transport::Routed(client.clone()),
            None => Transport::Raw(connect_all(cfg).await?),
        })
    }

    /// Spawns connection `index` of the phase, built from `setup`.
    fn spawn<D: Driver + Default>(&mut self, set: &mut JoinSet<()>, setup: Setup) {
        match self {
            Transport::Raw(streams) => {
                let stream = streams.remove(0);
                set.spawn(Connection::<D>::new(setup).run(stream));
            }
            Transport::Routed(client) => {
                set.spawn(routed::Driver { setup, client: client.clone() }.run());
            }
        }
    }
}

async fn run_with<D: Driver + Default>(
    cfg: &Config,
    routed: Option<corekv_client::Client>,
) -> Result<Summary, RunError> {
    if cfg.preload {
        let report = preload::<D>(cfg, &routed).await?;
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "preload: {} keys set in {:.2} s ({:.0} keys/s), {} errors",
            report.keys_set,
            secs,
            report.keys_set as f64 / secs,
            report.errors
        );
    }
    measured_run::<D>(cfg, &routed).await
}

/// Opens every connection of a phase, failing on the first that cannot be opened.
async fn connect_all(cfg: &Config) -> Result<Vec<Socket>, RunError> {
    let mut set = JoinSet::new();
    for index in 0..cfg.connections as usize {
        let (addr, tls, login) = (cfg.addr.clone(), cfg.tls.clone(), cfg.login());
        set.spawn(async move {
            let limit = connection::CONNECT_TIMEOUT;
            let r = connection::connect(&addr, tls.as_ref(), login.as_ref(), limit).await;
            (index, r)
        });
    }
    let mut streams: Vec<Option<Socket>> = (0..cfg.connections).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (index, result) = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let stream =
            result.map_err(|source| RunError::Connect { addr: cfg.addr.clone(), source })?;
        streams[index] = Some(stream);
    }
    Ok(streams.into_iter().flatten().collect())
}

fn lock(shared: &Mutex<Totals>) -> std::sync::MutexGuard<'_, Totals> {
    // A poisoned lock means a connection panicked; its panic is re-raised when it is joined.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for every connection task, calling `progress` once per [`PROGRESS_INTERVAL`] with the
/// end of the interval just over: `start` plus whole intervals (a late tick is skipped, never
/// shifted, so the labels stay on that grid).
async fn join_with_progress(
    set: &mut JoinSet<()>,
    start: Instant,
    mut progress: impl FnMut(Instant),
) {
    let mut ticker = tokio::time::interval_at(start + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => return,
                Some(Ok(())) => {}
                Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            },
            now = ticker.tick() => progress(now),
        }
    }
}

async fn preload<D: Driver + Default>(
    cfg: &Config,
    routed: &Option<corekv_client::Client>,
) -> Result<PreloadReport, RunError> {
    let key_format = cfg.key_format().map_err(RunError::Config)?;
    let value = workload::value(cfg.value_size_bytes as usize, cfg.seed);
    let mut transport = Transport::open(cfg, routed).await?;
    let shared = Arc::new(Mutex::new(Totals::default()));
    let start = Instant::now();
    let plan = Plan {
        start,
        measure_start: start,
        send_end: start + FAR_FUTURE,
        grace: Duration::ZERO,
        stall_limit: Some(PRELOAD_STALL_LIMIT),
        reconnect: false,
    };
    let mut set = JoinSet::new();
    for index in 0..cfg.connections as usize {
        let setup = Setup {
            index,
            addr: cfg.addr.clone(),
            tls: cfg.tls.clone(),
            login: cfg.login(),
            source: Source::Keys {
                next: index as u64,
                step: u64::from(cfg.connections),
                end: cfg.keys,
            },
            schedule: None,
            window: (cfg.pipeline as usize).max(PRELOAD_WINDOW_MIN),
            key_format,
            value: value.clone(),
            plan,
            shared: Arc::clone(&shared),
            consistency: cfg.consistency.wire(),
        };
        transport.spawn::<D>(&mut set, setup);
    }
    let keys = cfg.keys;
    let mut last_done = 0;
    join_with_progress(&mut set, start, |_| {
        let done = lock(&shared).measured.outcomes();
        eprintln!(
            "preload {:>5.1}%  {done}/{keys} keys  {} keys/s",
            done as f64 * 100.0 / keys as f64,
            done - last_done
        );
        last_done = done;
    })
    .await;
    let totals = lock(&shared);
    Ok(PreloadReport {
        keys_set: totals.measured.count(),
        errors: totals.measured.errors(),
        elapsed: start.elapsed(),
    })
}

async fn measured_run<D: Driver + Default>(
    cfg: &Config,
    routed: &Option<corekv_client::Client>,
) -> Result<Summary, RunError> {
    let key_format = cfg.key_format().map_err(RunError::Config)?;
    let value = workload::value(cfg.value_size_bytes as usize, cfg.seed);
    let mut transport = Transport::open(cfg, routed).await?;
    let shared = Arc::new(Mutex::new(Totals::default()));
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let plan = Plan {
        start,
        measure_start,
        send_end: measure_start + cfg.duration,
        grace: GRACE,
        stall_limit: None,
        reconnect: true,
    };
    let mut set = JoinSet::new();
    for index in 0..cfg.connections as usize {
        let workload = Workload::for_connection(cfg, index as u64).map_err(RunError::Config)?;
        let schedule = cfg
            .rate_ops_per_sec
            .map(|rate| Schedule::new(rate, u64::from(cfg.connections), index as u64));
        let setup = Setup {
            index,
            addr: cfg.addr.clone(),
            tls: cfg.tls.clone(),
            login: cfg.login(),
            source: Source::Mix(workload),
            schedule,
            window: cfg.pipeline as usize,
            key_format,
            value: value.clone(),
            plan,
            shared: Arc::clone(&shared),
            consistency: cfg.consistency.wire(),
        };
        transport.spawn::<D>(&mut set, setup);
    }

    let mut last_count = 0;
    let mut last_stats: Option<(&str, crate::stats::Stats)> = None;
    join_with_progress(&mut set, start, |now| {
        // Copy out under the lock; the quantile is computed after releasing it.
        let (count, errors, phase_stats, phase) = {
            let t = lock(&shared);
            // `now` ends the second reported; label it by where that second lay.
            let (stats, phase) = if now <= measure_start {
                (t.warmup.clone(), "warmup")
            } else if now <= plan.send_end {
                (t.measured.clone(), "run")
            } else {
                (t.measured.clone(), "drain")
            };
            (t.count(), t.errors(), stats, phase)
        };
        let p99 = if phase_stats.count() == 0 {
            "-".to_owned()
        } else {
            phase_stats.quantile_all_us(0.99).to_string()
        };
        // The second just over alone: where a stall was (within a phase; a new phase starts
        // from nothing).
        let fresh = last_stats.as_ref().filter(|(p, _)| *p == phase).map(|(_, s)| s);
        let p99_now = match fresh {
            Some(before) => phase_stats.quantile_since_us(before, 0.99),
            None if phase_stats.count() > 0 => Some(phase_stats.quantile_all_us(0.99)),
            None => None,
        };
        let p99_now = p99_now.map_or_else(|| "-".to_owned(), |v| v.to_string());
        eprintln!(
            "[{:>5.1}s] {phase:<6} {:>10} ops/s  p99 {p99_now:>8} us (so far {p99:>8})  errors \
             {errors}",
            (now - start).as_secs_f64(),
            count - last_count,
        );
        last_count = count;
        last_stats = Some((phase, phase_stats));
    })
    .await;

    let totals = lock(&shared);
    Ok(totals.measured.summary(cfg, cfg.duration))
}

#[cfg(test)]
mod tests;
