//! Boot and shutdown of one node.
//!
//! Boot order: validate config → lock the data directory → raise RLIMIT_MEMLOCK → check the
//! ports are not held by another process → reserve the shared port → start one pinned glommio
//! executor per core (each joins the mesh, binds its listeners, reports its shard port) →
//! publish the topology → print the ready line → serve.
//!
//! Shutdown order (SIGINT/SIGTERM): every core stops accepting and lets its connections finish
//! the requests they have parsed; once *all* cores have drained (so no forward can still be
//! in flight) or `drain_timeout_ms` has passed, each executor returns and the process exits 0.
//! A second SIGINT/SIGTERM exits at once.
//!
//! Hazard handled here: glommio binds with SO_REUSEPORT, so a second process could bind the
//! same port silently and steal half the connections. A plain bind (without SO_REUSEPORT)
//! first proves the port is free, and the data directory's `LOCK` file keeps two nodes off one
//! directory.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use corekv_schema::codec::{NodeAddress, TopologyInfo};
use corekv_schema::placement::{self, HASH_NAME};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use rustls::pki_types::pem::PemObject;

use crate::config::{Config, DurabilityMode, TTL_SWEEP_KEYS_MAX};
use crate::error::NodeError;
use crate::net::Serve;
use crate::shard::mesh::MeshBuilders;
use crate::shard::{self, Core, NodeInfo};
use crate::shutdown::{self, Shutdown};
use crate::storage::store::Store;
use crate::storage::wal::{self, SyncMode, Wal};
use crate::storage::{ExpiryRule, MemEngine, recovery};
use crate::tls::{Reloading, Reloads};

/// glommio refuses to start below this much locked memory (measured; see PLATFORM-NOTES).
const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;
/// glommio's own default io_memory per executor; we never ask for more.
const IO_MEMORY_BYTES_MAX: usize = 10 << 20;
const IO_MEMORY_BYTES_MIN: usize = 64 << 10;

/// What the boot thread learns from each core.
struct CoreReport {
    index: usize,
    shard_port: Option<u16>,
    result: Result<(), String>,
}

/// Runs a node until SIGINT/SIGTERM. Returns after a clean drain.
pub fn run(mut config: Config) -> Result<(), NodeError> {
    abort_on_panic();
    let _lock = lock_data_dir(&config.data_dir)?;
    refuse_if_removed(&config)?;
    if let Some(c) = config.cluster.as_mut()
        && let Some(member) = c.join
    {
        join(c, member, config.partitions, &config.data_dir)?;
    }
    let mut cpus = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(wanted) = &config.cpus {
        // In the order given: core i runs on the i-th listed CPU.
        let mut chosen = Vec::with_capacity(wanted.len());
        for &id in wanted {
            match cpus.iter().find(|c| c.id == id) {
                Some(c) => chosen.push(*c),
                None => return Err(NodeError::CpuUnavailable { cpu: id, available: cpus.len() }),
            }
        }
        cpus = chosen;
    }
    let cores = config.cores.unwrap_or(cpus.len().max(1));
    if cores > cpus.len() {
        return Err(NodeError::TooManyCores { wanted: cores, available: cpus.len() });
    }
    let reloads = check_tls(&config)?;
    // A cluster's users come from its metadata group, read once the node runs.
    let users = match config.cluster {
        Some(_) => None,
        None => crate::shard::users::load(&config.data_dir).map_err(NodeError::Users)?,
    };
    let users = users.unwrap_or_else(|| crate::auth::Users::with_default(None));
    let io_memory_bytes = raise_memlock(cores)?;
    if config.durability != DurabilityMode::None {
        check_layout(&config.data_dir, &layout(&config, cores))?;
    }

    let reserved = reserve_port(config.listen)?;
    let listen = reserved
        .local_addr()
        .and_then(|a| a.as_socket().ok_or_else(|| std::io::Error::other("not an IP address")))
        .map_err(|source| listen_err(config.listen, source))?;
    let (reserved_resp, resp) = reserve_optional(config.resp_listen)?;
    let (reserved_http, http) = reserve_optional(config.http_listen)?;
    if let Some(base) = config.shard_ports.filter(|&b| b != 0) {
        for i in 0..cores {
            let port = u16::try_from(usize::from(base) + i).map_err(|_| NodeError::Listen {
                addr: format!("{}:{base}+{i}", listen.ip()),
                source: std::io::Error::other("shard port out of range"),
            })?;
            drop(reserve_port(SocketAddr::new(listen.ip(), port))?);
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal exits at once; the first asks for a drain.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .map_err(|e| NodeError::Core { core: 0, message: format!("signal setup: {e}") })?;
    }

    let node = Arc::new(NodeInfo {
        topology: OnceLock::new(),
        started: Instant::now(),
        partitions: config.partitions,
        limits: config.limits,
        partial_frame_timeout_ms: config.partial_frame_timeout_ms,
        data_dir: config.data_dir.clone(),
        durability: format!("{:?}", config.durability).to_lowercase(),
        peers: Default::default(),
        view: Default::default(),
        users: crate::auth::Registry::with_cap(
            users,
            config.requirepass.clone(),
            config.max_connections_per_user,
        ),
        backup_dir: config.backup_dir.clone(),
        http_allowed_hosts: config.http_allowed_hosts.clone(),
        clients: Default::default(),
        max_connections: config.max_connections,
        clients_refused: Default::default(),
    });
    let meshes = MeshBuilders::new(cores, config.mesh_capacity_messages);
    let draining = Arc::new(AtomicUsize::new(cores));
    let (report_tx, report_rx) = mpsc::channel::<CoreReport>();
    let mut handles = Vec::with_capacity(cores);
    for cpu in cpus.iter().take(cores) {
        let boot = CoreBoot {
            config: config.clone(),
            cores,
            listen,
            resp,
            http,
            node: node.clone(),
            meshes: meshes.clone(),
            stop: stop.clone(),
            draining: draining.clone(),
            report: report_tx.clone(),
            reloads: reloads.clone(),
        };
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu.id))
            .name(&format!("corekv-cpu{}", cpu.id))
            .io_memory(io_memory_bytes);
        if config.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(config.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || core_main(boot))
            .map_err(|e| NodeError::Core { core: handles.len(), message: e.to_string() })?;
        handles.push(handle);
    }
    drop(report_tx);

    let mut shard_ports = vec![0u16; cores];
    let mut failure = None;
    // No timeout: recovering a large log takes as long as it takes (each core logs its replay
    // progress), and every core reports success or failure, or the process aborts on a panic.
    for _ in 0..cores {
        match report_rx.recv() {
            Ok(CoreReport { index, shard_port, result: Ok(()) }) => {
                shard_ports[index] = shard_port.unwrap_or(0);
            }
            Ok(CoreReport { index, result: Err(message), .. }) => {
                failure = Some(NodeError::Core { core: index, message });
                break;
            }
            Err(_) => {
                failure = Some(NodeError::Core {
                    core: 0,
                    message: "a core stopped during boot without reporting why".into(),
                });
                break;
            }
        }
    }
    if let Some(err) = failure {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        return Err(err);
    }
    drop(reserved);
    drop(reserved_resp);
    drop(reserved_http);

    let topology = TopologyInfo {
        node_id: config.node_id.clone().unwrap_or_else(|| listen.to_string()),
        cores: cores as u16,
        partitions: config.partitions,
        hash: HASH_NAME.to_string(),
        shard_ports: if config.shard_ports.is_some() { shard_ports.clone() } else { Vec::new() },
        // In a cluster the rest is filled per request from the metadata group; this node's own
        // addresses are what it records there.
        node: config.cluster.as_ref().map_or(0, |c| c.node),
        nodes: config
            .cluster
            .as_ref()
            .map_or_else(Vec::new, |c| vec![advertised(c, listen, resp, http)]),
        ..TopologyInfo::default()
    };
    let _ = node.topology.set(topology);

    let ports: Vec<String> = shard_ports.iter().map(u16::to_string).collect();
    let off = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    let cluster = config
        .cluster
        .as_ref()
        .map_or(String::new(), |c| format!(" node={} cluster={}", c.node, c.listen));
    println!(
        "corekv ready native={listen} shard_ports={} resp={} http={}{cluster} cores={cores} \
         data_dir={} pid={}",
        if config.shard_ports.is_some() { ports.join(",") } else { "off".into() },
        off(resp),
        off(http),
        config.data_dir.display(),
        std::process::id()
    );
    let resp_text = resp.map_or("off".to_string(), |a| a.to_string());
    let what = "serving; SIGINT or SIGTERM drains and exits";
    tracing::info!(%listen, resp = %resp_text, cores, "{what}");

    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                first_err.get_or_insert(NodeError::Core { core: i, message });
            }
            Err(e) => {
                first_err.get_or_insert(NodeError::Core { core: i, message: e.to_string() });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            tracing::info!("drained; exiting");
            Ok(())
        }
    }
}

struct CoreBoot {
    config: Config,
    cores: usize,
    listen: SocketAddr,
    resp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    node: Arc<NodeInfo>,
    meshes: MeshBuilders,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicUsize>,
    report: mpsc::Sender<CoreReport>,
    reloads: Reloads,
}

/// Reads every certificate and key once, so that a bad file stops the start with its name,
/// and has SIGHUP read them again. Warns about plaintext node links off loopback.
fn check_tls(config: &Config) -> Result<Reloads, NodeError> {
    let bad = |e: String| NodeError::Tls(e);
    let reloads = Reloads::default();
    if let Some(files) = &config.tls {
        files.load().map_err(bad)?;
    }
    if let Some(c) = &config.cluster {
        match &c.peer_tls {
            Some(files) => {
                files.server().map_err(bad)?;
                files.client().map_err(bad)?;
                let cert = std::fs::read(&files.cert).map_err(|e| bad(e.to_string()))?;
                let named = rustls::pki_types::CertificateDer::from_pem_slice(&cert)
                    .ok()
                    .is_some_and(|der| crate::tls::names_node(&der, c.node));
                if !named {
                    return Err(bad(format!(
                        "{}: does not name node-{} (a DNS subject alternative name); other \
                         nodes would refuse its links",
                        files.cert.display(),
                        c.node
                    )));
                }
            }
            None if !c.listen.ip().is_loopback() => tracing::warn!(
                listen = %c.listen,
                "node links are plaintext (--insecure-peer-links): anyone who reaches this \
                 port can act as a node"
            ),
            None => {}
        }
    }
    if config.tls.is_some() || config.cluster.as_ref().is_some_and(|c| c.peer_tls.is_some()) {
        reloads.on_sighup().map_err(|e| bad(format!("SIGHUP handler: {e}")))?;
    }
    Ok(reloads)
}

/// One core's TLS configurations, each rebuilt after a SIGHUP.
struct CoreTls {
    clients: Option<Rc<Reloading<rustls::ServerConfig>>>,
    peer_server: Option<Rc<Reloading<rustls::ServerConfig>>>,
    peer_client: Option<Rc<Reloading<rustls::ClientConfig>>>,
}

fn tls_of_core(c: &Config, reloads: &Reloads) -> Result<CoreTls, String> {
    let clients = match c.tls.clone() {
        Some(files) => Some(Rc::new(Reloading::new("tls", reloads, move || files.load())?)),
        None => None,
    };
    let peer = c.cluster.as_ref().and_then(|cc| cc.peer_tls.clone());
    let (peer_server, peer_client) = match peer {
        Some(files) => {
            let for_client = files.clone();
            let server = Reloading::new("peer-tls", reloads, move || files.server())?;
            let client = Reloading::new("peer-tls", reloads, move || for_client.client())?;
            (Some(Rc::new(server)), Some(Rc::new(client)))
        }
        None => (None, None),
    };
    Ok(CoreTls { clients, peer_server, peer_client })
}

async fn core_main(boot: CoreBoot) -> Result<(), String> {
    let (index, mesh, calls, answers) = match boot.meshes.clone().join().await {
        Ok(joined) => joined,
        Err(e) => {
            let _ = boot.report.send(CoreReport {
                index: 0,
                shard_port: None,
                result: Err(e.to_string()),
            });
            return Err(e.to_string());
        }
    };
    let listeners = bind_listeners(&boot, index);
    let (main_listener, shard_listener, resp_listener, http_listener, cluster_listener) =
        match listeners {
            Ok(l) => l,
            Err(e) => {
                let _ = boot.report.send(CoreReport {
                    index,
                    shard_port: None,
                    result: Err(e.clone()),
                });
                return Err(e);
            }
        };
    let shard_port = shard_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
    let c = &boot.config;
    let (engine, wal, recovered) = match open_storage(c, index, boot.cores) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = boot.report.send(CoreReport { index, shard_port, result: Err(e.clone()) });
            return Err(e);
        }
    };
    if let Some((wal, _, kept)) = &wal
        && let Err(e) = wal.open_existing(kept).await
    {
        let e = format!("opening the log: {e}");
        let _ = boot.report.send(CoreReport { index, shard_port, result: Err(e.clone()) });
        return Err(e);
    }
    let flusher = wal.as_ref().map(|(wal, _, _)| glommio::spawn_local(wal.clone().run()));
    let checkpoint = wal.as_ref().map(|(_, at, _)| at.clone()).unwrap_or_default();
    let wal = wal.map(|(wal, _, _)| wal);
    let store = Rc::new(Store::new(index as u16, engine, wal, checkpoint));
    let tls = match tls_of_core(c, &boot.reloads) {
        Ok(tls) => tls,
        Err(e) => {
            let _ = boot.report.send(CoreReport { index, shard_port, result: Err(e.clone()) });
            return Err(e);
        }
    };
    let cluster = match &c.cluster {
        None => None,
        Some(cc) => {
            let made = crate::cluster::replica::Replicas::new(
                cc,
                c.partitions,
                index as u16,
                boot.cores as u16,
                recovered,
                store.clone(),
                boot.node.limits,
                tls.peer_client.clone(),
            );
            match made {
                Ok(r) => Some(Rc::new(r)),
                Err(e) => {
                    let _ =
                        boot.report.send(CoreReport { index, shard_port, result: Err(e.clone()) });
                    return Err(e);
                }
            }
        }
    };
    let core = Rc::new_cyclic(|this| {
        Core::new(
            index as u16,
            boot.cores as u16,
            boot.node.clone(),
            store,
            mesh,
            cluster.clone(),
            this.clone(),
        )
    });
    shard::spawn_mesh_tasks(&core, calls, answers);
    if let Some(replicas) = cluster {
        let (stop, dir) = (boot.stop.clone(), c.data_dir.clone());
        replicas.on_retired(Box::new(move || {
            let why = format!("told so at {} ms since the epoch", crate::time::now_ms());
            if let Err(e) = std::fs::write(dir.join(REMOVED_MARKER), &why) {
                tracing::error!(error = %e, "could not record the removal in the data directory");
            }
            tracing::error!("this node was removed from the cluster; stopping");
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }));
        glommio::spawn_local(crate::cluster::replica::run(replicas)).detach();
        if core.index == 0 {
            glommio::spawn_local(shard::status::report_loop(core.clone())).detach();
        }
        // The metadata group's core records this node in it, and follows its membership.
        if core.index == placement::core_of_partition(core.partitions, core.cores) {
            glommio::spawn_local(shard::topology::register(core.clone())).detach();
            glommio::spawn_local(shard::membership::watch(core.clone())).detach();
        }
        glommio::spawn_local(shard::membership::reconcile(core.clone())).detach();
    }
    let _ = boot.report.send(CoreReport { index, shard_port, result: Ok(()) });

    // Serve only once every core is up (others may still be replaying their logs), so
    // Topology is never half-known. The boot thread sets `stop` if any core failed.
    while boot.node.topology.get().is_none() {
        if boot.stop.load(Ordering::Relaxed) {
            boot.draining.fetch_sub(1, Ordering::AcqRel);
            return Err("stopped before every core had started".into());
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }

    let local_stop = Rc::new(Shutdown::default());
    glommio::spawn_local(shutdown::watch(boot.stop.clone(), local_stop.clone())).detach();
    let native: Serve = |c, s, d| Box::pin(crate::net::connection::serve(c, s, d));
    let resp: Serve = |c, s, d| Box::pin(crate::net::resp::serve(c, s, d));
    let http: Serve = |c, s, d| Box::pin(crate::admin::serve(c, s, d));
    let peer: Serve = |c, s, d| Box::pin(crate::net::peer::serve(c, s, d));
    let mut followed: Vec<Rc<dyn crate::tls::Refresh>> = Vec::new();
    followed.extend(tls.clients.clone().map(|c| c as Rc<dyn crate::tls::Refresh>));
    followed.extend(tls.peer_server.clone().map(|c| c as Rc<dyn crate::tls::Refresh>));
    followed.extend(tls.peer_client.clone().map(|c| c as Rc<dyn crate::tls::Refresh>));
    if !followed.is_empty() {
        glommio::spawn_local(crate::tls::follow(followed)).detach();
    }
    let (clients, peers) = (tls.clients, tls.peer_server);
    let listeners = [
        Some((main_listener, native, clients.clone())),
        shard_listener.map(|l| (l, native, clients.clone())),
        resp_listener.map(|l| (l, resp, clients.clone())),
        http_listener.map(|l| (l, http, clients.clone())),
        cluster_listener.map(|l| (l, peer, peers)),
    ];
    for (listener, serve, tls) in listeners.into_iter().flatten() {
        let stop = local_stop.clone();
        let accept = crate::net::accept_loop(core.clone(), listener, serve, tls, stop);
        glommio::spawn_local(accept).detach();
    }
    glommio::spawn_local(sweep_loop(core.clone(), c.ttl_sweep_interval_ms, local_stop.clone()))
        .detach();
    if core.store.wal.is_some() {
        let compact = compaction_loop(core.clone(), c.clone(), local_stop.clone());
        let queue = glommio::executor().create_task_queue(
            glommio::Shares::Static(COMPACTION_SHARES),
            glommio::Latency::NotImportant,
            "compaction",
        );
        match glommio::spawn_local_into(compact, queue) {
            Ok(task) => {
                task.detach();
            }
            Err(e) => tracing::error!(core = index, error = %e, "compaction not started"),
        }
    }

    local_stop.wait().await;
    let deadline = Instant::now() + Duration::from_millis(c.drain_timeout_ms);
    while core.counters.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let left = core.counters.connections.get();
    if left > 0 {
        tracing::warn!(core = index, connections = left, "drain timed out; closing");
    }
    // Keep answering other cores' forwards until every core has drained.
    boot.draining.fetch_sub(1, Ordering::AcqRel);
    while boot.draining.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Last: write and sync what the log holds, and close the segment.
    if let (Some(wal), Some(flusher)) = (&core.store.wal, flusher) {
        wal.close();
        flusher.await;
        if let Some(e) = wal.failure() {
            return Err(e.to_string());
        }
    }
    Ok(())
}

/// The engine for core `index`, recovered from its log, and, unless durability is `none`, the
/// log to append to, the newest checkpoint's segment number and the segments recovery kept.
type OpenedStorage = (
    Box<dyn crate::storage::Engine>,
    Option<(Rc<Wal>, (u64, BTreeSet<u64>), Vec<(u64, std::path::PathBuf)>)>,
    HashMap<u32, crate::cluster::store::Recovered>,
);

fn open_storage(c: &Config, index: usize, cores: usize) -> Result<OpenedStorage, String> {
    let dir = c.data_dir.join(format!("core-{index}"));
    let clustered = c.cluster.is_some();
    // In a cluster only the Raft log removes expired keys (docs/CLUSTER.md, "Expiry").
    let rule = if clustered { ExpiryRule::Logged } else { ExpiryRule::Local };
    let mode = match c.durability {
        DurabilityMode::None => {
            if wal::segments(&dir).is_ok_and(|s| !s.is_empty()) {
                tracing::warn!(dir = %dir.display(), "--durability none: existing log ignored");
            }
            // Nothing is logged, so every value stays in memory.
            return Ok((Box::new(MemEngine::new().with_expiry(rule)), None, HashMap::new()));
        }
        DurabilityMode::Sync => SyncMode::Sync,
        DurabilityMode::Periodic => SyncMode::Periodic { interval_ms: c.fsync_interval_ms },
    };
    let mut engine = MemEngine::with_cache(c.cache_bytes / cores as u64).with_expiry(rule);
    let (report, raft) = if clustered {
        crate::cluster::store::recover(&dir, &mut engine, c.partitions, c.salvage)
    } else {
        let now = crate::time::now_ms();
        recovery::recover(&dir, &mut engine, c.salvage, now).map(|r| (r, HashMap::new()))
    }
    .map_err(|e| e.to_string())?;
    let secs = report.elapsed.as_secs_f64().max(1e-6);
    let (checkpoint_path, checkpoint_records) = match &report.checkpoint {
        Some((path, records)) => (path.display().to_string(), *records),
        None => ("none".to_string(), 0),
    };
    tracing::info!(
        core = index,
        checkpoint = %checkpoint_path,
        checkpoint_records,
        segments = report.segments,
        log_records = report.records - checkpoint_records,
        mb = format!("{:.1}", report.bytes as f64 / 1e6),
        ms = report.elapsed.as_millis() as u64,
        records_per_sec = (report.records as f64 / secs) as u64,
        mb_per_sec = format!("{:.1}", report.bytes as f64 / 1e6 / secs),
        keys = crate::storage::Engine::stats(&engine).keys,
        cached_bytes = crate::storage::Engine::stats(&engine).cached_bytes,
        "recovered"
    );
    let checkpoint = (report.checkpoint_seq, report.checkpoint_segments);
    let wal = Wal::new(dir, mode, c.segment_bytes_max, report.next_segment);
    Ok((Box::new(engine), Some((wal, checkpoint, report.kept)), raft))
}

/// The data directory remembers the core count and partition count it was written with:
/// keys are placed on cores by them, so a different count would look in the wrong log.
/// What a data directory is laid out for. In a cluster it also names the node, its
/// membership and the replication factor: a directory holds one node's Raft votes and logs,
/// and the ring built from the membership decides which groups it holds, so reusing it under
/// another id or membership would break Raft's safety or orphan its logs.
/// The client addresses this node records in the metadata group. A listener on a wildcard
/// address is advertised with this node's host from `--initial-cluster`, which the other
/// nodes already reach it by.
fn advertised(
    c: &crate::config::ClusterConfig,
    native: SocketAddr,
    resp: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> NodeAddress {
    let host = c.nodes.iter().find(|(id, _)| *id == c.node).map(|(_, a)| a.ip());
    let show = |a: SocketAddr| match host {
        Some(ip) if a.ip().is_unspecified() => SocketAddr::new(ip, a.port()).to_string(),
        _ => a.to_string(),
    };
    NodeAddress {
        id: c.node,
        native: show(native),
        resp: resp.map(show).unwrap_or_default(),
        http: http.map(show).unwrap_or_default(),
    }
}

fn layout(config: &Config, cores: usize) -> String {
    let mut text = format!("format=1 cores={cores} partitions={}", config.partitions);
    if let Some(c) = &config.cluster {
        // Sorted: the ring does not depend on the order nodes are listed in.
        let mut ids: Vec<u64> = c.nodes.iter().map(|(n, _)| *n).collect();
        ids.sort_unstable();
        let mut members: Vec<String> = ids.iter().map(u64::to_string).collect();
        if c.join.is_some() {
            // Its members come from the cluster and change; it founded nothing.
            members = vec!["joined".into()];
        }
        text +=
            &format!(" node={} rf={} members={}", c.node, c.replication_factor, members.join(","));
    }
    text
}

fn check_layout(dir: &Path, wanted: &str) -> Result<(), NodeError> {
    let path = dir.join("META");
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim() == wanted => Ok(()),
        Ok(found) => Err(NodeError::Layout {
            path: dir.to_path_buf(),
            found: found.trim().to_string(),
            wanted: format!(
                "{wanted} (changing --cores, --partitions or the cluster's nodes needs a \
                 rebalance, not supported yet; a node id belongs to its data directory)"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let io = |source| NodeError::DataDir { path: dir.to_path_buf(), source };
            let tmp = dir.join("META.tmp");
            std::fs::write(&tmp, format!("{wanted}\n")).map_err(io)?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            File::open(dir).and_then(|f| f.sync_all()).map_err(io)
        }
        Err(source) => Err(NodeError::DataDir { path: dir.to_path_buf(), source }),
    }
}

/// This core's listeners: the shared native port, its own shard port, the shared Redis and
/// HTTP ports.
type Listeners = (
    TcpListener,
    Option<TcpListener>,
    Option<TcpListener>,
    Option<TcpListener>,
    Option<TcpListener>,
);

/// glommio's `TcpListener::bind`, plus SO_REUSEADDR: without it a node restarted right after
/// a crash cannot listen on its fixed port until the crashed process's connections leave
/// TIME_WAIT (up to a minute). Another live listener on the port still makes this fail: the
/// sockets share the port only with SO_REUSEPORT, which `reserve_port`'s plain bind refuses.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` is a listening TCP socket this function just created and owns alone
    // (`into_raw_fd` gave up socket2's ownership); glommio's listener takes it over.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(listener)
}

fn bind_listeners(boot: &CoreBoot, index: usize) -> Result<Listeners, String> {
    let main = listen(boot.listen).map_err(|e| format!("cannot listen on {}: {e}", boot.listen))?;
    let shard = match boot.config.shard_ports {
        None => None,
        Some(base) => {
            let port = if base == 0 { 0 } else { base + index as u16 };
            let addr = SocketAddr::new(boot.listen.ip(), port);
            Some(listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?)
        }
    };
    let bind = |addr: Option<SocketAddr>| match addr {
        None => Ok(None),
        Some(addr) => listen(addr).map(Some).map_err(|e| format!("cannot listen on {addr}: {e}")),
    };
    let cluster = bind(boot.config.cluster.as_ref().map(|c| c.listen))?;
    Ok((main, shard, bind(boot.resp)?, bind(boot.http)?, cluster))
}

/// Checkpoints when the log written since the last checkpoint exceeds that checkpoint's size
/// (and a floor of a few segments), and every `checkpoint_interval_s` if anything was written;
/// then compacts: segments before the checkpoint whose live ratio fell below
/// `compaction_live_ratio` are rewritten, one at a time, at a bounded rate. Runs in a task
/// queue with a small CPU share, so foreground requests go first.
async fn compaction_loop(core: Rc<Core>, c: Config, stop: Rc<Shutdown>) {
    let floor = 4 * c.segment_bytes_max;
    let mut last = Instant::now();
    while !stop.is_fired() {
        glommio::timer::sleep(Duration::from_millis(COMPACTION_CHECK_MS)).await;
        let Some((since, checkpoint_bytes)) = core.store.log_growth() else { return };
        let grown = since > checkpoint_bytes.max(floor);
        let due = since > 0 && last.elapsed().as_secs() >= c.checkpoint_interval_s;
        if (grown || due) && !stop.is_fired() {
            match core.checkpoint().await {
                Ok(w) => tracing::info!(
                    core = core.index,
                    records = w.records,
                    bytes = w.bytes,
                    log_bytes_since = since,
                    "checkpoint"
                ),
                Err(e) => {
                    let what = "checkpoint failed; retrying later";
                    tracing::warn!(core = core.index, error = %e, "{what}");
                    // Each attempt rolls the log (a new preallocated segment): do not turn a
                    // full disk into a storm of rolls.
                    glommio::timer::sleep(Duration::from_secs(CHECKPOINT_RETRY_S)).await;
                }
            }
            last = Instant::now();
        }
        // Compact until no covered segment is below the ratio (or shutdown).
        while !stop.is_fired() {
            match core.store.compact(c.compaction_live_ratio, c.compaction_bytes_per_s).await {
                Ok(done) if done.segment.is_none() => {
                    if done.segments_removed > 0 {
                        tracing::info!(
                            core = core.index,
                            segments_removed = done.segments_removed,
                            "compaction: removed log segments with no current values"
                        );
                    }
                    break;
                }
                Ok(done) => tracing::info!(
                    core = core.index,
                    segment = done.segment,
                    records_moved = done.records_moved,
                    bytes_moved = done.bytes_moved,
                    segments_removed = done.segments_removed,
                    "compaction"
                ),
                Err(e) => {
                    let what = "compaction failed; retrying later";
                    tracing::warn!(core = core.index, error = %e, "{what}");
                    glommio::timer::sleep(Duration::from_secs(CHECKPOINT_RETRY_S)).await;
                    break;
                }
            }
        }
    }
}

/// How often each core looks at whether its log needs a checkpoint or compaction.
const COMPACTION_CHECK_MS: u64 = 500;
/// Pause after a failed checkpoint or compaction before the next attempt.
const CHECKPOINT_RETRY_S: u64 = 30;
/// CPU shares of the compaction task queue (the default queue has 1000).
const COMPACTION_SHARES: usize = 100;

async fn sweep_loop(core: Rc<Core>, interval_ms: u64, stop: Rc<Shutdown>) {
    while !stop.is_fired() {
        glommio::timer::sleep(Duration::from_millis(interval_ms)).await;
        if core.cluster.is_some() {
            core.cluster_sweep(crate::time::now_ms(), TTL_SWEEP_KEYS_MAX);
        } else {
            core.store.sweep_expired(crate::time::now_ms(), TTL_SWEEP_KEYS_MAX);
        }
    }
}

/// A panic is a bug, and a node with one core gone would leave every forward to that core
/// waiting forever. Print the panic, then abort the whole process so the supervisor restarts
/// it (and, with the durable engine, recovery brings the data back).
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::cluster::group::stepping() {
            // raft-rs refused a peer's message by panicking: `Group::step` catches it,
            // refuses the message and rebuilds that one group.
            tracing::error!(panic = %info, "raft-rs panicked on a peer's message");
            return;
        }
        default(info);
        eprintln!("corekv: aborting after a panic (a bug: please report it with the lines above)");
        std::process::abort();
    }));
}

/// Reserves an optional listen address (the Redis and HTTP ports): the socket that holds it
/// during boot, and the address it resolved to (port 0 becomes a free port).
fn reserve_optional(
    asked: Option<SocketAddr>,
) -> Result<(Option<socket2::Socket>, Option<SocketAddr>), NodeError> {
    let Some(asked) = asked else { return Ok((None, None)) };
    let socket = reserve_port(asked)?;
    let addr = socket
        .local_addr()
        .and_then(|a| a.as_socket().ok_or_else(|| std::io::Error::other("not an IP address")))
        .map_err(|source| listen_err(asked, source))?;
    Ok((Some(socket), Some(addr)))
}

fn listen_err(addr: SocketAddr, source: std::io::Error) -> NodeError {
    NodeError::Listen { addr: addr.to_string(), source }
}

/// Proves `addr` is free (a plain bind fails if any socket, SO_REUSEPORT or not, holds it),
/// then holds it with an SO_REUSEPORT socket that is bound but never listens, so the cores can
/// join it and, for port 0, all land on the same port.
fn reserve_port(addr: SocketAddr) -> Result<socket2::Socket, NodeError> {
    if addr.port() != 0 {
        let probe = StdListener::bind(addr).map_err(|source| listen_err(addr, source))?;
        drop(probe);
    }
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .and_then(|s| {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&addr.into())?;
            Ok(s)
        })
        .map_err(|source| listen_err(addr, source))?;
    Ok(sock)
}

/// How long a joining node keeps asking its member before it gives up.
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks `member` for the cluster's members and map (retrying while it cannot be reached),
/// and makes them this node's: links to every member, and the map to route by until its own
/// replica of the metadata group has one.
fn join(
    c: &mut crate::config::ClusterConfig,
    member: SocketAddr,
    partitions: u32,
    data_dir: &Path,
) -> Result<(), NodeError> {
    use crate::cluster::plan::{Standing, decode_members};
    let refuse = |why: String| NodeError::Join { member: member.to_string(), why };
    // A restart: the members learned at the join (the metadata group's replica here has the
    // newer ones and relinks to them), whether or not the member joined through is still up.
    if let Some((cluster_id, mut nodes)) = read_joined(data_dir) {
        nodes.retain(|(id, _)| *id != c.node);
        nodes.push((c.node, c.listen));
        tracing::info!(members = nodes.len() - 1, "joined before: starting with the members then");
        c.nodes = nodes;
        c.cluster_id = cluster_id;
        return Ok(());
    }
    let tls = match &c.peer_tls {
        Some(files) => Some(files.join_client().map_err(NodeError::Tls)?),
        None => None,
    };
    let started = Instant::now();
    let info = loop {
        match ask_to_join(c.node, member, tls.clone()) {
            Ok(info) => break info,
            Err(e) if started.elapsed() < JOIN_PATIENCE => {
                tracing::warn!(%member, error = %e, "joining: asking again in a second");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(refuse(format!("{e} (for {}s)", JOIN_PATIENCE.as_secs()))),
        }
    };
    if info.partitions != partitions {
        return Err(refuse(format!(
            "the cluster has {} partitions and this node --partitions {partitions}",
            info.partitions
        )));
    }
    if info.replication_factor as usize != c.replication_factor {
        return Err(refuse(format!(
            "the cluster keeps {} replicas and this node --replication-factor {}",
            info.replication_factor, c.replication_factor
        )));
    }
    let members = decode_members(&info.members).map_err(refuse)?;
    if let Some(me) = members.iter().find(|m| m.id == c.node) {
        if me.standing == Standing::Removed {
            let why = "its id is a removed member's".to_string();
            return Err(NodeError::Removed { path: data_dir.to_path_buf(), node: c.node, why });
        }
        if me.addr != c.listen {
            let (recorded, listen) = (me.addr, c.listen);
            tracing::warn!(%recorded, %listen, "joining: a member already, at another address");
        }
    }
    let mut nodes: Vec<(u64, SocketAddr)> = members
        .iter()
        .filter(|m| m.standing != Standing::Removed && m.id != c.node)
        .map(|m| (m.id, m.addr))
        .collect();
    nodes.push((c.node, c.listen));
    let (members, map_version) = (nodes.len() - 1, info.map_version);
    tracing::info!(%member, members, map_version, "joining: learned the cluster");
    write_joined(data_dir, info.cluster_id, &nodes)
        .map_err(|source| NodeError::DataDir { path: data_dir.to_path_buf(), source })?;
    c.nodes = nodes;
    c.cluster_id = info.cluster_id;
    Ok(())
}

/// The file a joined node keeps the cluster's id (`cluster=ID`) and its members in
/// (`ID=HOST:PORT` a line, this node's own too), so that a restart does not depend on the
/// member it joined through.
pub const JOINED_FILE: &str = "JOINED";

fn write_joined(dir: &Path, cluster_id: u64, nodes: &[(u64, SocketAddr)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let members = nodes.iter().map(|(id, addr)| format!("{id}={addr}\n"));
    let text: String = std::iter::once(format!("cluster={cluster_id}\n")).chain(members).collect();
    let tmp = dir.join(format!("{JOINED_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(JOINED_FILE))?;
    File::open(dir)?.sync_all()
}

/// The cluster id and members [`write_joined`] kept; `None` when there are none (or the file
/// is damaged, or older than the cluster id: then the node asks its member again).
fn read_joined(dir: &Path) -> Option<(u64, Vec<(u64, SocketAddr)>)> {
    let text = std::fs::read_to_string(dir.join(JOINED_FILE)).ok()?;
    let mut lines = text.lines();
    let cluster_id = lines.next()?.strip_prefix("cluster=")?.parse().ok()?;
    let nodes: Option<Vec<_>> = lines
        .map(|line| {
            let (id, addr) = line.split_once('=')?;
            Some((id.parse().ok()?, addr.parse().ok()?))
        })
        .collect();
    Some((cluster_id, nodes.filter(|n| !n.is_empty())?))
}

/// One `JoinAsk` to `member` and its answer (over mutual TLS when node links use it).
fn ask_to_join(
    node: u64,
    member: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<corekv_schema::peer::JoinInfo, String> {
    use corekv_schema::peer::{self, PeerMessage};
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let tcp = std::net::TcpStream::connect_timeout(&member, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            // The member's id is not known: the name asked for is a placeholder, and the
            // verifier accepts any node's certificate from the cluster's CA.
            let tls = rustls::ClientConnection::new(config, crate::tls::node_name(0))
                .map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(tls, tcp))
        }
    };
    s.write_all(&peer::encode(&PeerMessage::JoinAsk { from_node: node }))
        .and_then(|()| s.flush())
        .map_err(|e| e.to_string())?;
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        if let Some(frame) =
            corekv_schema::frame::take_frame(&mut buf, 64 << 20).map_err(|e| e.to_string())?
        {
            return match peer::decode(&frame)? {
                PeerMessage::JoinInfo(info) => Ok(info),
                other => Err(format!("answered {other:?} instead of the members")),
            };
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed the link without answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A blocking socket, with or without TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// The file a node writes in its data directory once it learns it was removed from the
/// cluster (its replica of the metadata group was).
pub const REMOVED_MARKER: &str = "REMOVED";

fn refuse_if_removed(config: &Config) -> Result<(), NodeError> {
    let Some(cluster) = &config.cluster else { return Ok(()) };
    match std::fs::read_to_string(config.data_dir.join(REMOVED_MARKER)) {
        Ok(why) => Err(NodeError::Removed {
            path: config.data_dir.clone(),
            node: cluster.node,
            why: why.trim().to_string(),
        }),
        Err(_) => Ok(()),
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, NodeError> {
    let io = |source| NodeError::DataDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(NodeError::DataDirLocked { path: dir.to_path_buf() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Raises RLIMIT_MEMLOCK as far as allowed and sizes each executor's registered I/O memory to
/// fit: glommio registers it three times per executor against the limit.
fn raise_memlock(cores: usize) -> Result<usize, NodeError> {
    use rlimit::Resource;
    let (soft, hard) = Resource::MEMLOCK.get().unwrap_or((0, 0));
    let target = hard.max(soft);
    let limit = if target > soft && Resource::MEMLOCK.set(target, hard).is_ok() {
        target
    } else if Resource::MEMLOCK.set(rlimit::INFINITY, rlimit::INFINITY).is_ok() {
        rlimit::INFINITY
    } else {
        soft
    };
    if limit < MEMLOCK_BYTES_MIN {
        return Err(NodeError::MemlockTooLow {
            limit_bytes: limit,
            needed_bytes: MEMLOCK_BYTES_MIN,
        });
    }
    let share = usize::try_from(limit / (3 * cores as u64)).unwrap_or(usize::MAX);
    Ok(share.clamp(IO_MEMORY_BYTES_MIN, IO_MEMORY_BYTES_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterConfig, ConsistencyMode};

    #[test]
    fn wildcard_listeners_are_advertised_with_the_cluster_host() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let c = ClusterConfig {
            node: 2,
            listen: addr("0.0.0.0:7390"),
            nodes: vec![(1, addr("10.0.0.1:7390")), (2, addr("10.0.0.2:7390"))],
            replication_factor: 3,
            raft_tick_ms: 100,
            plan_stall_s: crate::config::PLAN_STALL_S_DEFAULT,
            consistency: ConsistencyMode::default(),
            bootstrap: true,
            join: None,
            cluster_id: 1,
            peer_tls: None,
        };
        let a = advertised(&c, addr("0.0.0.0:7379"), Some(addr("127.0.0.1:7380")), None);
        assert_eq!(a.id, 2);
        assert_eq!(a.native, "10.0.0.2:7379");
        assert_eq!(a.resp, "127.0.0.1:7380", "a specific address is kept as it is");
        assert_eq!(a.http, "", "a listener that is off is empty");
    }
}
