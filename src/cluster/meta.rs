//! The cluster's metadata group: the nodes with their client addresses, and the partition map
//! with its epoch, kept by a Raft group of its own.
//!
//! The group is partition number `partitions` (one past the data partitions), replicated on
//! every node, and its state is a few reserved keys ([`META_PREFIX`]) in the engine of the core
//! that owns it. So it is logged, applied, checkpointed, snapshotted and recovered exactly as a
//! data partition is, and needs no code of its own for any of that. The keys:
//! - `map`: each partition's replicas, preferred leader first. Written once, at bootstrap, by
//!   whichever node gets there first (if absent); every node proposes the same ring-derived
//!   map. Moving a partition later is a new value of this key.
//! - `node/<id>`: that node's client addresses, written by the node each time it starts.
//!
//! The map's epoch is the highest version among these keys, which is the metadata group's
//! Raft index of its last change: it only grows, so a client keeps the newest map it has seen.
//! Client requests never touch these keys: keys with the prefix are refused in cluster mode.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use corekv_schema::codec::{
    Condition, Consistency, ErrorCode, NodeAddress, Op, PartitionInfo, Reply, TopologyInfo,
};
use corekv_schema::placement;

use crate::shard::{Core, Origin};

/// Every metadata key starts with this; no client key may.
pub const META_PREFIX: &[u8] = b"\xffcorekv/meta/";

/// How often registration retries while the metadata group has no quorum.
const RETRY: Duration = Duration::from_millis(200);

pub fn is_meta(key: &[u8]) -> bool {
    key.starts_with(META_PREFIX)
}

/// The partition a key lives in, in cluster mode: the metadata group for metadata keys.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    if is_meta(key) { partitions } else { placement::partition_of(key, partitions) }
}

/// The metadata group's replicas: every node, lowest id first (its preferred leader).
pub fn replicas(nodes: &[(u64, std::net::SocketAddr)]) -> Vec<u64> {
    let mut ids: Vec<u64> = nodes.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids
}

fn key(name: &str) -> Bytes {
    let mut k = META_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    Bytes::from(k)
}

pub fn map_key() -> Bytes {
    key("map")
}

pub fn node_key(id: u64) -> Bytes {
    key(&format!("node/{id}"))
}

/// The map as text, one line per partition: its replicas separated by spaces.
pub fn encode_map(map: &[Vec<u64>]) -> Bytes {
    let mut out = String::new();
    for replicas in map {
        let ids: Vec<String> = replicas.iter().map(u64::to_string).collect();
        out.push_str(&ids.join(" "));
        out.push('\n');
    }
    Bytes::from(out)
}

pub fn decode_map(value: &[u8]) -> Result<Vec<Vec<u64>>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "partition map is not UTF-8".to_string())?;
    text.lines()
        .enumerate()
        .map(|(p, line)| {
            line.split(' ')
                .map(|id| id.parse().map_err(|_| format!("partition {p}: bad node id {id:?}")))
                .collect()
        })
        .collect()
}

/// A node's addresses as text: native, RESP and HTTP, separated by spaces, `-` when off.
pub fn encode_node(a: &NodeAddress) -> Bytes {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    Bytes::from(format!("{} {} {}", or_dash(&a.native), or_dash(&a.resp), or_dash(&a.http)))
}

pub fn decode_node(id: u64, value: &[u8]) -> Option<NodeAddress> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(' ').map(|s| if s == "-" { String::new() } else { s.to_string() });
    let (native, resp, http) = (parts.next()?, parts.next()?, parts.next()?);
    Some(NodeAddress { id, native, resp, http })
}

/// Writes this node's addresses and, if nobody has yet, the partition map into the metadata
/// group; retries until both are committed. Runs once per start, beside the serving loop.
pub async fn register(core: Rc<Core>) {
    let Some(r) = core.cluster.as_ref() else { return };
    let me = loop {
        // The addresses are published once every core listens.
        if let Some(t) = core.node.topology.get() {
            break t.node(r.node).cloned().unwrap_or_default();
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    };
    let partitions = core.partitions as usize;
    let ring_map = encode_map(&r.map[..partitions]);
    let writes = [
        (Op::set_if(map_key(), ring_map.clone(), Condition::IfAbsent), "partition map"),
        (Op::set(node_key(r.node), encode_node(&me)), "addresses"),
    ];
    for (op, what) in writes {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match core.cluster_op(op.clone(), Consistency::Strong, Origin::Client).await {
                Reply::Written { version } => {
                    tracing::info!(version, "metadata: {what} recorded");
                    break;
                }
                Reply::Error(e) if e.code == ErrorCode::ConditionFailed => {
                    // Another node recorded the map first; it must be the one this node uses.
                    // Read through the leader: this replica may not have applied it yet.
                    match stored_map(&core, Consistency::Strong).await {
                        Some((m, _)) if encode_map(&m) == ring_map => break,
                        Some(_) => {
                            tracing::error!(
                                "metadata: the recorded partition map differs from this \
                                 node's; check that every node lists the same \
                                 --initial-cluster and --replication-factor"
                            );
                            break;
                        }
                        // Not readable yet (an election): ask again.
                        None => {}
                    }
                }
                Reply::Error(e) => {
                    // Quiet while the cluster is forming; loud if it stays without a quorum.
                    if tries.is_multiple_of(50) {
                        tracing::warn!(error = %e, tries, "metadata: {what} not recorded yet");
                    }
                }
                other => tracing::error!(reply = other.name(), "metadata: unexpected answer"),
            }
            glommio::timer::sleep(RETRY).await;
        }
    }
}

/// The recorded map with its version (None: not recorded, or not readable at `consistency`).
async fn stored_map(core: &Rc<Core>, consistency: Consistency) -> Option<(Vec<Vec<u64>>, u64)> {
    match core.cluster_op(Op::get(map_key()), consistency, Origin::Client).await {
        Reply::Value { value, version, .. } => match decode_map(&value) {
            Ok(map) => Some((map, version)),
            Err(e) => {
                tracing::error!(error = %e, "metadata: unreadable partition map");
                None
            }
        },
        _ => None,
    }
}

/// The topology a client routes by: this replica's copy of the metadata (possibly a little
/// stale; the epoch tells a client which of two maps is newer), and the leader of each
/// partition this node holds. Before the map is recorded, the ring's map with epoch 0.
pub async fn topology(core: &Rc<Core>) -> Reply {
    let (Some(base), Some(r)) = (core.node.topology.get(), core.cluster.as_ref()) else {
        return Reply::error(ErrorCode::Unavailable, "node is still starting");
    };
    let partitions = core.partitions as usize;
    let (map, mut epoch) = match stored_map(core, Consistency::Eventual).await {
        Some((map, version)) if map.len() == partitions => (map, version),
        _ => (r.map[..partitions].to_vec(), 0),
    };
    let mut nodes = Vec::new();
    for id in replicas(&r.config.nodes) {
        let get = Op::get(node_key(id));
        if let Reply::Value { value, version, .. } =
            core.cluster_op(get, Consistency::Eventual, Origin::Client).await
            && let Some(address) = decode_node(id, &value)
        {
            epoch = epoch.max(version);
            nodes.push(address);
        }
    }
    let mut partition_map: Vec<PartitionInfo> =
        map.into_iter().map(|replicas| PartitionInfo { replicas, leader: 0 }).collect();
    if let Ok((groups, _)) = core.cluster_status().await {
        for g in groups {
            if let Some(p) = partition_map.get_mut(g.partition as usize) {
                p.leader = g.leader;
            }
        }
    }
    let t = TopologyInfo { node: r.node, epoch, nodes, partition_map, ..base.clone() };
    Reply::Topology(Box::new(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_addresses_round_trip() {
        let map = vec![vec![1, 2, 3], vec![3, 1, 2], vec![2]];
        assert_eq!(decode_map(&encode_map(&map)).unwrap(), map);
        assert!(decode_map(b"1 2\nx 3\n").unwrap_err().contains("partition 1"));
        let a = NodeAddress {
            id: 4,
            native: "10.0.0.4:7379".into(),
            resp: String::new(),
            http: "10.0.0.4:8080".into(),
        };
        assert_eq!(decode_node(4, &encode_node(&a)), Some(a));
        assert_eq!(decode_node(4, b"only-one"), None);
    }

    #[test]
    fn metadata_keys_have_their_own_partition() {
        assert_eq!(partition_of(&map_key(), 16), 16);
        assert_eq!(partition_of(&node_key(3), 16), 16);
        assert!(partition_of(b"user:1", 16) < 16);
        assert!(!is_meta(b"corekv/meta/map"));
    }
}
