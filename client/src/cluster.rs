//! Routing in a cluster: the map a node's topology gives, a pool per node, and which failures
//! are retried.
//!
//! A single-key operation goes to the leader of its key's partition as this client last heard
//! of it (the topology lists, per partition, the replicas and the leader the answering node
//! knows), marked `direct` so a node that does not lead answers `WrongNode` with the leader it
//! knows and the current map instead of forwarding it. The client then takes the newer map
//! (by epoch) and the hint, and sends again.
//!
//! A partition none of whose replicas has an address in the map yet (a node records its
//! addresses once it is up) goes to the node connected to, not `direct`, so that node forwards
//! it; the map is asked for again then, at most once per [`REFRESH_EVERY`].
//!
//! Retried, until `request_timeout_ms` has passed since the call, because nothing was applied:
//! `WrongNode`, `Unavailable` and `ShuttingDown` answers (a cluster node answers those only for
//! requests that did not take effect), and connections that could not be opened (nothing was
//! sent). Reads are retried after any failure. A write that may have taken effect is never
//! resent: `OutcomeUnknown`, a timeout or a dropped connection come back to the caller as they
//! are ([`Error::may_have_applied`] is true for them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use corekv_schema::codec::{Consistency, Durability, ErrorCode, Op, Reply, TopologyInfo};
use corekv_schema::placement::{HASH_NAME, partition_of};

use crate::aio::Pool;
use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// Pause before trying again when no leader is known (an election takes a few hundred ms).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What the client knows of the cluster.
#[derive(Debug)]
struct Map {
    epoch: u64,
    partitions: u32,
    replicas: Vec<Vec<u64>>,
    /// Per partition: the leader last heard of, 0 when unknown.
    leaders: Vec<u64>,
    nodes: HashMap<u64, SocketAddr>,
}

impl Map {
    /// The map in `t`, or `None` when `t` is not a cluster's (a single node).
    fn from_topology(t: &TopologyInfo) -> Result<Option<Map>> {
        if t.partition_map.is_empty() {
            return Ok(None);
        }
        if t.hash != HASH_NAME || t.partition_map.len() != t.partitions as usize {
            return Err(Error::Protocol(format!(
                "cluster topology with hash {:?} and {} partitions over {} map entries",
                t.hash,
                t.partitions,
                t.partition_map.len()
            )));
        }
        let nodes = t.nodes.iter().filter_map(|n| Some((n.id, n.native.parse().ok()?))).collect();
        Ok(Some(Map {
            epoch: t.epoch,
            partitions: t.partitions,
            replicas: t.partition_map.iter().map(|p| p.replicas.clone()).collect(),
            leaders: t.partition_map.iter().map(|p| p.leader).collect(),
            nodes,
        }))
    }

    /// Where to send for `partition` on try number `attempt`: the known leader, else the
    /// replicas in turn.
    fn target(&self, partition: u32, attempt: usize) -> Option<(u64, SocketAddr)> {
        let p = partition as usize;
        let leader = self.leaders.get(p).copied().unwrap_or(0);
        if leader != 0
            && let Some(addr) = self.nodes.get(&leader)
        {
            return Some((leader, *addr));
        }
        let replicas = self.replicas.get(p)?;
        (0..replicas.len()).find_map(|i| {
            let id = replicas[(attempt + i) % replicas.len()];
            self.nodes.get(&id).map(|a| (id, *a))
        })
    }
}

/// How often, at most, the map is asked for again while it lacks a partition's addresses.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The cluster routing state of a client; shared by its clones.
pub(crate) struct Cluster {
    map: RwLock<Map>,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    /// The node connected to: it forwards what the map cannot place yet.
    seed: SocketAddr,
    /// When the map was last asked for because it lacked addresses.
    refreshed: Mutex<Option<Instant>>,
}

impl Cluster {
    /// Routing for the cluster `t` describes, or `None` when `t` is a single node's.
    pub(crate) fn new(t: &TopologyInfo, seed: Arc<Pool>) -> Result<Option<Cluster>> {
        let Some(map) = Map::from_topology(t)? else { return Ok(None) };
        let addr = seed.addr;
        let pools = HashMap::from([(seed.addr, seed)]);
        Ok(Some(Cluster {
            map: RwLock::new(map),
            pools: Mutex::new(pools),
            seed: addr,
            refreshed: Mutex::new(None),
        }))
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.map.read().unwrap_or_else(PoisonError::into_inner).epoch
    }

    /// Takes `t` if it is at least as new as the map held; the leaders it lists win.
    pub(crate) fn learn(&self, t: &TopologyInfo) {
        let Ok(Some(fresh)) = Map::from_topology(t) else { return };
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if fresh.epoch >= map.epoch {
            *map = fresh;
        }
    }

    fn set_leader(&self, partition: u32, leader: u64) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = map.leaders.get_mut(partition as usize) {
            *l = leader;
        }
    }

    /// Asks the node connected to for the map, once per [`REFRESH_EVERY`] at most; true when
    /// it got one.
    async fn refresh(&self, config: &ClientConfig) -> bool {
        {
            let mut at = self.refreshed.lock().unwrap_or_else(PoisonError::into_inner);
            if at.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return false;
            }
            *at = Some(Instant::now());
        }
        let Ok(pool) = self.pool(self.seed, config).await else { return false };
        let Ok(c) = pool.connection(config).await else { return false };
        match c.send(Op::Topology).await {
            Ok(Reply::Topology(t)) => {
                self.learn(&t);
                true
            }
            _ => false,
        }
    }

    async fn pool(&self, addr: SocketAddr, config: &ClientConfig) -> Result<Arc<Pool>> {
        if let Some(pool) = self.pools.lock().unwrap_or_else(PoisonError::into_inner).get(&addr) {
            return Ok(pool.clone());
        }
        let pool = Arc::new(Pool::open(addr, config).await?);
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(pools.entry(addr).or_insert(pool).clone())
    }

    /// Sends a single-key `op` to its partition's leader; see the module doc for what is
    /// retried.
    pub(crate) async fn call(
        &self,
        op: Op,
        durability: Durability,
        consistency: Consistency,
        config: &ClientConfig,
    ) -> Result<Reply> {
        let key = op.key().cloned().unwrap_or_default();
        let is_read = matches!(op, Op::Get { .. });
        let deadline = Instant::now() + Duration::from_millis(config.request_timeout_ms);
        let mut attempt = 0usize;
        let mut hops = 0u32;
        loop {
            let (partition, target) = {
                let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
                let partition = partition_of(&key, map.partitions);
                (partition, map.target(partition, attempt))
            };
            attempt += 1;
            // A node records its addresses in the map once it is up: until then the node
            // connected to forwards (not `direct`), and the map is asked for again.
            let target = match target {
                Some(t) => Some(t),
                None if self.refresh(config).await => {
                    let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
                    map.target(partition, attempt)
                }
                None => None,
            };
            let (node, addr, direct) = match target {
                Some((node, addr)) => (node, addr, true),
                None => (0, self.seed, false),
            };
            let sent = match self.pool(addr, config).await {
                Ok(pool) => match pool.connection(config).await {
                    Ok(c) => c.send_request(op.clone(), durability, consistency, direct).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let failure = match sent {
                Ok(Reply::Error(e)) if e.code == ErrorCode::WrongNode => {
                    if let Some(t) = &e.topology {
                        self.learn(t);
                    }
                    // A hint of this same node means it has just lost the lead: ask around.
                    let leader = if e.leader == node { 0 } else { e.leader };
                    self.set_leader(partition, leader);
                    // Follow a hint at once, but two nodes with stale views must not bounce
                    // a request between them at full speed: pause after a few hops.
                    hops += 1;
                    if leader != 0 && hops <= 3 && Instant::now() < deadline {
                        continue;
                    }
                    Ok(Reply::Error(e))
                }
                Ok(Reply::Error(e))
                    if matches!(e.code, ErrorCode::Unavailable | ErrorCode::ShuttingDown)
                        || (is_read && e.code == ErrorCode::OutcomeUnknown) =>
                {
                    self.set_leader(partition, 0);
                    Ok(Reply::Error(e))
                }
                Ok(reply) => return Ok(reply),
                Err(e @ Error::Connect { .. }) => {
                    self.set_leader(partition, 0);
                    Err(e)
                }
                Err(e) if is_read && e.is_retryable() => {
                    self.set_leader(partition, 0);
                    Err(e)
                }
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return failure;
            }
            hops = 0;
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use corekv_schema::codec::{NodeAddress, PartitionInfo};

    use super::*;

    fn topology(epoch: u64, leader: u64) -> TopologyInfo {
        TopologyInfo {
            hash: HASH_NAME.into(),
            partitions: 2,
            epoch,
            nodes: (1..=3)
                .map(|id| NodeAddress {
                    id,
                    native: format!("127.0.0.{id}:7379"),
                    ..NodeAddress::default()
                })
                .collect(),
            partition_map: vec![
                PartitionInfo { replicas: vec![1, 2, 3], leader },
                PartitionInfo { replicas: vec![3, 1, 2], leader: 0 },
            ],
            ..TopologyInfo::default()
        }
    }

    #[test]
    fn routes_to_the_leader_else_the_replicas_in_turn() {
        let map = Map::from_topology(&topology(1, 2)).unwrap().unwrap();
        assert_eq!(map.target(0, 0).unwrap().0, 2);
        assert_eq!(map.target(0, 5).unwrap().0, 2);
        let order: Vec<u64> = (0..4).map(|a| map.target(1, a).unwrap().0).collect();
        assert_eq!(order, [3, 1, 2, 3]);
    }

    #[test]
    fn a_single_node_has_no_map_and_a_bad_one_is_refused() {
        assert!(Map::from_topology(&TopologyInfo::default()).unwrap().is_none());
        let bad = TopologyInfo { partitions: 3, ..topology(1, 0) };
        assert!(matches!(Map::from_topology(&bad), Err(Error::Protocol(_))));
    }

    #[test]
    fn replicas_without_an_address_are_skipped() {
        let mut t = topology(1, 0);
        t.nodes.retain(|n| n.id != 3);
        let map = Map::from_topology(&t).unwrap().unwrap();
        assert_eq!(map.target(1, 0).unwrap().0, 1);
        t.nodes.clear();
        assert!(Map::from_topology(&t).unwrap().unwrap().target(1, 0).is_none());
    }
}
