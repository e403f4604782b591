//! Native requests routed by the cluster's map, through the SDK (`corekv-client`), so a cluster
//! benchmark measures what SDK users get: each single-key request goes to its partition's
//! leader, a `WrongNode` answer moves the client to the newer map, and what provably did not
//! apply is sent again within the SDK's request timeout (that time counts in the latency).
//!
//! The run's shape is the raw connections' (`connection`): the same [`Source`], open-loop
//! [`Schedule`], [`Plan`] and buffered samples; only the transport differs. Each of the
//! `--connections` drivers keeps up to `--pipeline` calls in flight, each call a tokio task, on
//! one shared client whose pools hold `--connections` TCP connections per node.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use corekv_client::{Client, ClientConfig};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, Routing};
use crate::connection::{FLUSH_INTERVAL, SAMPLES_MAX, Sample, Setup};
use crate::protocol::native;
use crate::run::RunError;
use crate::stats::Outcome;
use crate::workload::OpKind;

/// How long `--routing auto` waits for the node's topology.
const PROBE_TIMEOUT_MS: u64 = 1_000;

/// A client routing by the map when `cfg` asks for it (or `auto` finds a cluster node);
/// `None` when requests go to `--addr` as they are.
pub async fn client_for(cfg: &Config) -> Result<Option<Client>, RunError> {
    if cfg.routing == Routing::Node || cfg.protocol != crate::config::Protocol::Native {
        return Ok(None);
    }
    let pool_size = (cfg.connections as usize).min(corekv_client::POOL_SIZE_MAX);
    let in_flight = (cfg.connections as usize).saturating_mul(cfg.pipeline as usize);
    let config = ClientConfig {
        pool_size,
        // The drivers bound what is in flight; the SDK's own window must not.
        max_in_flight: in_flight.clamp(1, corekv_client::IN_FLIGHT_MAX),
        cluster_routing: true,
        shard_aware: false,
        consistency: cfg.consistency.wire(),
        tls: cfg.tls.clone(),
        credentials: cfg.credentials(),
        ..ClientConfig::default()
    };
    // `auto` asks with a short timeout: a node that does not answer is benchmarked as is.
    let probing = cfg.routing == Routing::Auto;
    let probe = match probing {
        true => ClientConfig { request_timeout_ms: PROBE_TIMEOUT_MS, ..config.clone() },
        false => config.clone(),
    };
    let client = match Client::connect(cfg.addr.as_str(), probe).await {
        Ok(client) => client,
        Err(e) if cfg.routing == Routing::Map => {
            let source = std::io::Error::other(e.to_string());
            return Err(RunError::Connect { addr: cfg.addr.clone(), source });
        }
        // Unreachable: the raw connections report it, with the address.
        Err(corekv_client::Error::Connect { .. } | corekv_client::Error::Io(_)) => return Ok(None),
        Err(e) => {
            eprintln!(
                "cannot read the topology of {} ({e}): sending every request there",
                cfg.addr
            );
            return Ok(None);
        }
    };
    match client.cluster_epoch() {
        Some(epoch) => {
            eprintln!("routing by the cluster map (epoch {epoch}), as the SDK does");
            if !probing {
                return Ok(Some(client));
            }
            // Connected again with the SDK's own timeouts, which the run measures.
            let client = Client::connect(cfg.addr.as_str(), config).await.map_err(|e| {
                let source = std::io::Error::other(e.to_string());
                RunError::Connect { addr: cfg.addr.clone(), source }
            })?;
            Ok(Some(client))
        }
        None if cfg.routing == Routing::Map => Err(RunError::Config(format!(
            "--routing map needs a cluster node, and {} is a single node",
            cfg.addr
        ))),
        None => Ok(None),
    }
}

/// One routed driver: a connection's [`Setup`] (its `addr` and `consistency` unused: the
/// client was made with them), driven through `client`.
pub struct Driver {
    pub setup: Setup,
    pub client: Client,
}

impl Driver {
    /// Keeps the window full until the source is exhausted or the run ends, then waits out
    /// the grace period and records every outcome.
    pub async fn run(self) {
        let Driver { setup, client } = self;
        let Setup { index, mut source, schedule, window, key_format, value, plan, shared, .. } =
            setup;
        let flush = |samples: &mut Vec<Sample>| {
            // A poisoned lock means another driver panicked; its panic is reported on join.
            let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
            samples.drain(..).for_each(|sample| shared.record(sample));
        };
        let mut calls: JoinSet<(Duration, Outcome)> = JoinSet::new();
        // What each call in flight is, so one cut short is still counted where it started.
        let mut started: HashMap<tokio::task::Id, (OpKind, Instant)> = HashMap::new();
        let mut samples: Vec<Sample> = Vec::with_capacity(256);
        let mut key = vec![0; key_format.size_bytes()];
        let (mut seq, mut exhausted) = (0u64, false);
        let grace_end = plan.send_end + plan.grace;
        let mut last_flush = Instant::now();
        let mut last_reply = Instant::now();
        loop {
            let now = Instant::now();
            if now >= last_flush + FLUSH_INTERVAL || samples.len() >= SAMPLES_MAX {
                flush(&mut samples);
                last_flush = now;
            }
            if calls.is_empty() {
                last_reply = now;
            }
            // Start every request that may start now.
            while !exhausted && calls.len() < window {
                let start = match &schedule {
                    None => now,
                    Some(s) => {
                        let intended = plan.start + s.intended_offset(seq);
                        if intended > now {
                            break;
                        }
                        intended
                    }
                };
                if start >= plan.send_end {
                    exhausted = true;
                    break;
                }
                let Some((kind, index)) = source.next() else {
                    exhausted = true;
                    break;
                };
                key_format.write(index, &mut key);
                seq += 1;
                let op = native::op(kind, Bytes::copy_from_slice(&key), &value);
                let client = client.clone();
                let call = calls.spawn(async move {
                    let outcome = match client.request(op).await {
                        Ok(reply) => native::outcome(kind, reply),
                        Err(e) => Outcome::Error(e.to_string()),
                    };
                    (Instant::now().saturating_duration_since(start), outcome)
                });
                started.insert(call.id(), (kind, start));
            }
            let sending = !exhausted && now < plan.send_end;
            if !sending && calls.is_empty() {
                break;
            }
            let stalled = plan.stall_limit.filter(|&limit| now >= last_reply + limit);
            if now >= grace_end || (stalled.is_some() && !calls.is_empty()) {
                let why = match stalled {
                    Some(limit) => format!("no reply for {} s", limit.as_secs()),
                    None => {
                        format!("no reply within {} s after the run", plan.grace.as_secs())
                    }
                };
                eprintln!("connection {}: {why}; stopping this connection", index);
                calls.abort_all();
                for (_, (kind, start)) in started.drain() {
                    let measured = start >= plan.measure_start;
                    let outcome = Outcome::Error(why.clone());
                    samples.push(Sample { kind, measured, latency: Duration::ZERO, outcome });
                }
                break;
            }
            let mut wake = (last_flush + FLUSH_INTERVAL).min(grace_end);
            if sending {
                wake = wake.min(plan.send_end);
                if let Some(s) = &schedule
                    && calls.len() < window
                {
                    wake = wake.min(plan.start + s.intended_offset(seq));
                }
            }
            if let Some(limit) = plan.stall_limit {
                wake = wake.min(last_reply + limit);
            }
            tokio::select! {
                Some(done) = calls.join_next_with_id() => {
                    let (id, (latency, outcome)) =
                        done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                    last_reply = Instant::now();
                    if let Some((kind, start)) = started.remove(&id) {
                        let measured = start >= plan.measure_start;
                        samples.push(Sample { kind, measured, latency, outcome });
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        flush(&mut samples);
    }
}
