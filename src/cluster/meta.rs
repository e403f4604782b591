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
//! - `members`, `plan`, `done/<p>`: the members and the membership operation under way
//!   (`plan.rs`).
//!
//! The map's epoch is the highest version among these keys, which is the metadata group's
//! Raft index of its last change: it only grows, so a client keeps the newest map it has seen.
//! Client requests never touch these keys: keys with the prefix are refused in cluster mode.
//! This file owns the keys and their encoding; reading and writing them through the cluster
//! (registration, the topology) is the router's, in `shard/topology.rs`.

use bytes::Bytes;
use corekv_schema::codec::NodeAddress;
use corekv_schema::placement;

/// Every metadata key starts with this; no client key may.
pub const META_PREFIX: &[u8] = b"\xffcorekv/meta/";

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

/// The members with their cluster addresses and standing (`plan::Member`), JSON.
pub fn members_key() -> Bytes {
    key("members")
}

/// The newest membership operation (`plan::Plan`), JSON.
pub fn plan_key() -> Bytes {
    key("plan")
}

/// The users and their permissions (`auth::Users`), JSON: every node reads them.
pub fn users_key() -> Bytes {
    key("users")
}

/// The id of the last plan whose target partition `p`'s leader reached.
pub fn done_key(p: u32) -> Bytes {
    key(&format!("done/{p}"))
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
