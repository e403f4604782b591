//! The async client: connection pools, shard-aware routing, and the typed methods.
//!
//! A [`Client`] owns one pool of `pool_size` [`Connection`]s to the node's port and, when
//! `shard_aware` is on and the node reports per-core ports, one pool per core. Each single-key
//! operation goes to the pool of the core that owns the key (`placement::core_of`, the same
//! function the node uses), so it skips the node's cross-core hop; a batch goes to a core's pool
//! when all its keys live on that core, anything else to the node's port. Within a pool,
//! requests take the connections in turn.
//!
//! Pools re-connect lazily: a connection that has failed is replaced by the next call that picks
//! its slot (within `connect_timeout_ms`, which is not counted in `request_timeout_ms`). Calls
//! already in flight on it fail; nothing is resent behind the caller's back (see
//! [`Error::is_retryable`]).
//!
//! Connected to a cluster node (with `cluster_routing`, the default), single-key operations go
//! to their partition's leader instead, on a pool per node, and the map is refreshed from the
//! `WrongNode` answers that carry it (module `cluster`); batches and admin calls go to the node
//! connected to, which forwards them.
//!
//! The topology is read once, on connect. The client is cheap to clone; clones share the pools.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use corekv_schema::codec::{
    Condition, Consistency, Durability, Expected, Op, Reply, SetOp, StatsInfo, TopologyInfo,
};
use corekv_schema::placement::{HASH_NAME, core_of};
use tokio::net::ToSocketAddrs;

use crate::cluster::Cluster;
use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::ops::{self, SetOptions, Value};

/// One connection slot of a pool.
struct Slot {
    /// The live connection, if any; held only long enough to clone the `Arc`.
    connection: Mutex<Option<Arc<Connection>>>,
    /// Serialises re-connects of this slot, so callers that find it dead wait for one connect
    /// instead of each opening their own.
    reconnect: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Connection>> {
        let connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        connection.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    fn store(&self, connection: Arc<Connection>) {
        *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = Some(connection);
    }
}

/// `pool_size` connections to one address, used round-robin.
pub(crate) struct Pool {
    pub(crate) addr: SocketAddr,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl Pool {
    /// Opens every connection now, so a wrong address or port fails `Client::connect`.
    pub(crate) async fn open(addr: SocketAddr, config: &ClientConfig) -> Result<Pool> {
        let mut slots = Vec::with_capacity(config.pool_size);
        for _ in 0..config.pool_size {
            let connection = Connection::connect(addr, config).await?;
            slots.push(Slot {
                connection: Mutex::new(Some(Arc::new(connection))),
                reconnect: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Pool { addr, slots, next: AtomicUsize::new(0) })
    }

    pub(crate) async fn connection(&self, config: &ClientConfig) -> Result<Arc<Connection>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let Some(slot) = self.slots.get(turn) else {
            return Err(Error::Usage("connection pool is empty".into()));
        };
        if let Some(connection) = slot.live() {
            return Ok(connection);
        }
        let _reconnecting = slot.reconnect.lock().await;
        if let Some(connection) = slot.live() {
            return Ok(connection);
        }
        let connection = Arc::new(Connection::connect(self.addr, config).await?);
        slot.store(connection.clone());
        Ok(connection)
    }
}

/// Per-core pools and what is needed to place a key on a core.
struct Shards {
    cores: u16,
    partitions: u32,
    /// Index = core.
    pools: Vec<Pool>,
}

impl Shards {
    /// The shard pools described by `topology`, or `None` when the node offers no per-core
    /// ports or places keys with a hash this client does not implement.
    async fn open(
        ip: IpAddr,
        topology: &TopologyInfo,
        config: &ClientConfig,
    ) -> Result<Option<Shards>> {
        if topology.shard_ports.is_empty() || topology.hash != HASH_NAME {
            return Ok(None);
        }
        if topology.cores == 0
            || topology.partitions == 0
            || topology.shard_ports.len() != usize::from(topology.cores)
        {
            return Err(Error::Protocol(format!(
                "inconsistent topology: {} cores, {} partitions, {} shard ports",
                topology.cores,
                topology.partitions,
                topology.shard_ports.len()
            )));
        }
        let mut pools = Vec::with_capacity(topology.shard_ports.len());
        for &port in &topology.shard_ports {
            pools.push(Pool::open(SocketAddr::new(ip, port), config).await?);
        }
        Ok(Some(Shards { cores: topology.cores, partitions: topology.partitions, pools }))
    }

    fn core_of(&self, key: &[u8]) -> u16 {
        core_of(key, self.partitions, self.cores)
    }

    /// The core every key of `op` lives on, if there is exactly one.
    fn core_of_op(&self, op: &Op) -> Option<u16> {
        match op {
            Op::Batch(ops) => {
                let mut cores = ops.iter().map(|op| op.key().map(|key| self.core_of(key)));
                let first = cores.next()??;
                cores.all(|core| core == Some(first)).then_some(first)
            }
            op => op.key().map(|key| self.core_of(key)),
        }
    }
}

struct Inner {
    config: ClientConfig,
    main: Arc<Pool>,
    shards: Option<Shards>,
    cluster: Option<Cluster>,
}

impl Inner {
    fn pool_for(&self, op: &Op) -> &Pool {
        self.shards
            .as_ref()
            .and_then(|shards| {
                let core = shards.core_of_op(op)?;
                shards.pools.get(usize::from(core))
            })
            .unwrap_or(&self.main)
    }
}

/// The async corekv client. Clone it freely: clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    durability: Durability,
    consistency: Consistency,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.main.addr)
            .field("shard_aware", &self.is_shard_aware())
            .field("durability", &self.durability)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to a node: opens `pool_size` connections to the first address of `addr` that
    /// accepts one and, when `config.shard_aware`, reads the topology and opens `pool_size`
    /// connections to each core's port on the same host.
    pub async fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let mut last_error = None;
        let mut main = None;
        for candidate in tokio::net::lookup_host(addr).await? {
            match Pool::open(candidate, &config).await {
                Ok(pool) => {
                    main = Some(pool);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(main) = main else {
            return Err(last_error.unwrap_or_else(|| {
                Error::Io(io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing"))
            }));
        };
        let main = Arc::new(main);
        let topology = if config.shard_aware || config.cluster_routing {
            let reply = main.connection(&config).await?.send(Op::Topology).await?;
            Some(ops::topology(reply)?)
        } else {
            None
        };
        let cluster = match &topology {
            Some(t) if config.cluster_routing => Cluster::new(t, main.clone())?,
            _ => None,
        };
        let shards = match &topology {
            Some(t) if config.shard_aware && cluster.is_none() => {
                Shards::open(main.addr.ip(), t, &config).await?
            }
            _ => None,
        };
        Ok(Client {
            durability: config.durability,
            consistency: config.consistency,
            inner: Arc::new(Inner { config, main, shards, cluster }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The node address this client connected to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.main.addr
    }

    /// True when single-key operations are routed to per-core ports.
    pub fn is_shard_aware(&self) -> bool {
        self.inner.shards.is_some()
    }

    #[cfg(test)]
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// The epoch of the cluster map this client routes by; `None` when it is connected to a
    /// single node (or `cluster_routing` is off).
    pub fn cluster_epoch(&self) -> Option<u64> {
        self.inner.cluster.as_ref().map(Cluster::epoch)
    }

    /// A handle sharing this client's connections whose requests ask for `durability`.
    pub fn with_durability(&self, durability: Durability) -> Client {
        Client { durability, ..self.clone() }
    }

    /// A handle sharing this client's connections whose requests ask for `consistency`.
    pub fn with_consistency(&self, consistency: Consistency) -> Client {
        Client { consistency, ..self.clone() }
    }

    /// Sends any operation, routed like the typed methods, and returns the reply as the server
    /// sent it: a server error is `Ok(Reply::Error(..))`; `Err` means no reply was read
    /// ([`crate::check`] turns the former into the latter).
    pub async fn request(&self, op: Op) -> Result<Reply> {
        if let Some(cluster) = &self.inner.cluster
            && op.key().is_some()
        {
            let config = &self.inner.config;
            return cluster.call(op, self.durability, self.consistency, config).await;
        }
        let connection = self.inner.pool_for(&op).connection(&self.inner.config).await?;
        connection.send_with(op, self.durability, self.consistency).await
    }

    /// The key's value, version and remaining time to live; `None` when absent or expired.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Value>> {
        ops::value(self.request(Op::Get { key: key.into() }).await?)
    }

    /// Writes the key without condition or expiry; returns the new version.
    pub async fn set(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.set_with(key, value, SetOptions::default()).await
    }

    /// Writes the key with an expiry and/or a condition; returns the new version, or
    /// [`Error::ConditionFailed`] when the condition does not hold.
    pub async fn set_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: SetOptions,
    ) -> Result<u64> {
        let op = Op::Set(SetOp {
            key: key.into(),
            value: value.into(),
            ttl_ms: options.ttl_ms,
            keep_ttl: options.keep_ttl,
            condition: options.condition,
        });
        ops::written("set", self.request(op).await?)
    }

    /// Writes the key only if it is absent; otherwise [`Error::ConditionFailed`] carrying the
    /// existing version.
    pub async fn set_if_absent(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<u64> {
        let options = SetOptions { condition: Condition::IfAbsent, ..SetOptions::default() };
        self.set_with(key, value, options).await
    }

    /// Overwrites the key only if it exists; otherwise [`Error::ConditionFailed`] with
    /// `current_version` 0. Like `set`, the new value does not expire (use
    /// [`Client::set_with`] with `keep_ttl` to keep the old expiry).
    pub async fn update(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let options = SetOptions { condition: Condition::IfPresent, ..SetOptions::default() };
        self.set_with(key, value, options).await
    }

    /// Deletes the key; `false` when it was absent.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        let op = Op::Delete { key: key.into(), condition: Condition::Always };
        ops::deleted(self.request(op).await?)
    }

    /// Replaces the value only if it currently equals `expected_value`; returns the new version
    /// or [`Error::ConditionFailed`]. The new value does not expire.
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expected_value: impl Into<Bytes>,
        new_value: impl Into<Bytes>,
    ) -> Result<u64> {
        let op = Op::Cas {
            key: key.into(),
            expected: Expected::Value(expected_value.into()),
            new_value: new_value.into(),
            ttl_ms: 0,
        };
        ops::written("cas", self.request(op).await?)
    }

    /// Replaces the value only if its version is still `expected_version` (from
    /// [`Value::version`] or an earlier write); returns the new version or
    /// [`Error::ConditionFailed`]. The new value does not expire.
    pub async fn cas_version(
        &self,
        key: impl Into<Bytes>,
        expected_version: u64,
        new_value: impl Into<Bytes>,
    ) -> Result<u64> {
        let op = Op::Cas {
            key: key.into(),
            expected: Expected::Version(expected_version),
            new_value: new_value.into(),
            ttl_ms: 0,
        };
        ops::written("cas_version", self.request(op).await?)
    }

    /// Sends `ops` in one frame; returns one reply per operation, in order. Each operation
    /// succeeds or fails on its own: inspect the replies (or pass each through
    /// [`crate::check`]). `Err` means the batch as a whole was refused or not answered.
    pub async fn batch(&self, ops: Vec<Op>) -> Result<Vec<Reply>> {
        let ops_count = ops.len();
        ops::batch(self.request(Op::Batch(ops)).await?, ops_count)
    }

    /// One round trip to the node.
    pub async fn ping(&self) -> Result<()> {
        let op = Op::Ping { payload: Bytes::new() };
        ops::pong(self.request(op).await?)
    }

    /// The node's current topology (cores, partitions, per-core ports).
    pub async fn topology(&self) -> Result<TopologyInfo> {
        ops::topology(self.request(Op::Topology).await?)
    }

    /// The node's per-core counters.
    pub async fn stats(&self) -> Result<StatsInfo> {
        ops::stats(self.request(Op::Stats).await?)
    }
}
