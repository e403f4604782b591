//! Key placement, the cluster step: partition → its replicas, by consistent hashing with
//! virtual nodes.
//!
//! Each node owns `vnodes` points on a 64-bit ring; a partition sits at its own point, and its
//! replicas are the first `rf` distinct nodes met walking clockwise from there. The first of
//! them is the partition's preferred leader. Positions come from crc32c and a fixed 64-bit
//! finalizer (splitmix64), so every machine, version and client language computes the same
//! map. Adding or removing a node moves only the partitions whose walk meets it (about
//! `rf / nodes` of the replica slots), which is what makes rebalancing a change of replica
//! sets, not a reshuffle.
//!
//! This is only the *initial* map. The cluster stores the partition map it decided on
//! (replicas per partition, with an epoch) and later changes edit that map; the ring says
//! where a partition should go, the stored map says where it is.

/// Virtual nodes per node unless configured otherwise: enough to keep the busiest node within
/// about 10 % of the mean for 3 to 10 nodes (see `testdata/placement.txt`).
pub const VNODES_DEFAULT: u32 = 256;

/// Replicas per partition unless configured otherwise.
pub const RF_DEFAULT: usize = 3;

/// splitmix64's finalizer: a fixed bijection that spreads nearby inputs over the ring.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where node `node`'s `vnode`th point sits.
fn node_point(node: u64, vnode: u32) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&node.to_le_bytes());
    bytes[8..].copy_from_slice(&vnode.to_le_bytes());
    // crc32c itself, not `placement::stable_hash`: ids are binary, and the key hash-tag rule
    // would hash only what lies between a `{` and a `}` byte.
    let low = u64::from(crc32c::crc32c(&bytes));
    mix64((u64::from(vnode) << 32 | low) ^ node.rotate_left(17))
}

/// Where partition `partition` sits.
fn partition_point(partition: u32) -> u64 {
    mix64(u64::from(partition) ^ 0x6a09_e667_f3bc_c908)
}

#[derive(Clone, Debug)]
pub struct Ring {
    /// (point, node), sorted by point.
    points: Vec<(u64, u64)>,
    nodes: usize,
}

impl Ring {
    /// A ring over `nodes` (ids, each non-zero and distinct; order does not matter).
    pub fn new(nodes: &[u64], vnodes: u32) -> Ring {
        let mut ids = nodes.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut points: Vec<(u64, u64)> = ids
            .iter()
            .flat_map(|&n| (0..vnodes.max(1)).map(move |v| (node_point(n, v), n)))
            .collect();
        // Equal points (astronomically rare) order by node id, so the map stays a function.
        points.sort_unstable();
        Ring { points, nodes: ids.len() }
    }

    /// The partition's replicas, preferred leader first: the first `rf` distinct nodes
    /// clockwise from the partition's point (fewer if the ring has fewer nodes).
    pub fn replicas(&self, partition: u32, rf: usize) -> Vec<u64> {
        let want = rf.min(self.nodes);
        let mut out = Vec::with_capacity(want);
        if want == 0 {
            return out;
        }
        let start = self.points.partition_point(|&(p, _)| p < partition_point(partition));
        for i in 0..self.points.len() {
            let (_, node) = self.points[(start + i) % self.points.len()];
            if !out.contains(&node) {
                out.push(node);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// Every partition's replicas.
    pub fn map(&self, partitions: u32, rf: usize) -> Vec<Vec<u64>> {
        (0..partitions).map(|p| self.replicas(p, rf)).collect()
    }
}

/// How evenly a map spreads: max / mean of replicas per node, and of preferred leaders (first
/// replicas) per node.
pub fn balance(map: &[Vec<u64>], nodes: &[u64]) -> (f64, f64) {
    let at = |n: u64| nodes.iter().position(|&m| m == n);
    let (mut replicas, mut leaders) = (vec![0usize; nodes.len()], vec![0usize; nodes.len()]);
    for r in map {
        for (i, &n) in r.iter().enumerate() {
            if let Some(k) = at(n) {
                replicas[k] += 1;
                leaders[k] += usize::from(i == 0);
            }
        }
    }
    let spread = |per: &[usize]| {
        let mean = per.iter().sum::<usize>() as f64 / per.len().max(1) as f64;
        if mean == 0.0 { 0.0 } else { per.iter().copied().max().unwrap_or(0) as f64 / mean }
    };
    (spread(&replicas), spread(&leaders))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the placement table in `testdata/placement.txt`'s format.
    fn table() -> String {
        let mut out = String::from(
            "# corekv placement: partition -> replicas (preferred leader first).\n\
             # Regenerate with COREKV_BLESS=1 cargo test -p corekv-schema ring; a change here\n\
             # moves data in every deployed cluster, so it needs a format version bump.\n",
        );
        for (nodes, partitions) in [(vec![1u64, 2, 3], 16u32), (vec![1, 2, 3, 4, 5], 16)] {
            let ring = Ring::new(&nodes, VNODES_DEFAULT);
            out += &format!("\nnodes={nodes:?} rf=3 vnodes={VNODES_DEFAULT}\n");
            for (p, r) in ring.map(partitions, RF_DEFAULT).iter().enumerate() {
                out += &format!("p{p}: {r:?}\n");
            }
        }
        out += "\n# balance, partitions=1024 rf=3: max/mean replicas per node, max/mean leaders\n";
        for n in [3u64, 4, 5, 7, 10] {
            let nodes: Vec<u64> = (1..=n).collect();
            let map = Ring::new(&nodes, VNODES_DEFAULT).map(1024, RF_DEFAULT);
            let (replicas, leaders) = balance(&map, &nodes);
            out += &format!("nodes={n}: replicas {replicas:.3}, leaders {leaders:.3}\n");
        }
        out
    }

    #[test]
    fn placements_match_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/placement.txt");
        let now = table();
        if std::env::var_os("COREKV_BLESS").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let want = std::fs::read_to_string(path).expect("testdata/placement.txt");
        assert_eq!(now, want, "placement changed; see the file's header");
    }

    #[test]
    fn replicas_are_distinct_and_spread() {
        for n in [3u64, 4, 5, 7, 10] {
            let nodes: Vec<u64> = (1..=n).collect();
            let map = Ring::new(&nodes, VNODES_DEFAULT).map(1024, 3);
            for r in &map {
                assert_eq!(r.len(), 3);
                assert!(r[0] != r[1] && r[1] != r[2] && r[0] != r[2], "{r:?}");
            }
            let (replicas, leaders) = balance(&map, &nodes);
            assert!(replicas < 1.12, "{n} nodes: replicas max/mean {replicas}");
            assert!(leaders < 1.25, "{n} nodes: leaders max/mean {leaders}");
        }
        // Fewer nodes than RF: every node, once.
        assert_eq!(Ring::new(&[7, 9], 8).replicas(3, 3).len(), 2);
        assert!(Ring::new(&[], 8).replicas(3, 3).is_empty());
    }

    /// The map does not depend on the order nodes are listed in.
    #[test]
    fn order_of_nodes_does_not_matter() {
        let a = Ring::new(&[1, 2, 3, 4], 64).map(256, 3);
        let b = Ring::new(&[4, 2, 1, 3], 64).map(256, 3);
        assert_eq!(a, b);
    }

    /// Adding a sixth node to five moves about a sixth of the replica slots, all of them to
    /// the new node.
    #[test]
    fn adding_a_node_moves_only_what_it_takes() {
        let five: Vec<u64> = (1..=5).collect();
        let six: Vec<u64> = (1..=6).collect();
        let before = Ring::new(&five, VNODES_DEFAULT).map(1024, 3);
        let after = Ring::new(&six, VNODES_DEFAULT).map(1024, 3);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            for node in a.iter().filter(|n| !b.contains(n)) {
                assert_eq!(*node, 6, "a replica moved between old nodes: {b:?} -> {a:?}");
                moved += 1;
            }
        }
        let share = moved as f64 / (1024.0 * 3.0);
        assert!((0.12..0.22).contains(&share), "moved {share}");
    }
}
