//! Key placement, step one: key → partition, identical on every machine, version and language.
//!
//! `partition = crc32c(hash_slot(key)) % partitions`, where `hash_slot` is the key itself or,
//! Redis-style, the text between the first `{` and the next `}` when that text is non-empty
//! (so `user:{42}:name` and `user:{42}:email` share a partition and can meet in one batch).
//! crc32c (Castagnoli, as in iSCSI/ext4) was chosen because it is fixed by a standard, fast in
//! hardware on x86 and ARM, and already used for record checksums; ahash is never used here
//! because its output changes with the CPU and the crate version.
//!
//! Step two, partition → core on a node, is `partition % cores`; the cluster layer adds
//! partition → replicas in between.

/// Partitions in a node or cluster unless configured otherwise. Fixed at creation.
pub const PARTITIONS_DEFAULT: u32 = 1024;

/// Name reported in `TopologyInfo.hash`, so clients can check they place keys the same way.
pub const HASH_NAME: &str = "crc32c";

/// The part of the key that is hashed: the hash tag if there is a non-empty one.
pub fn hash_slot(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The stable 32-bit hash of a key (after hash-tag extraction).
pub fn stable_hash(key: &[u8]) -> u32 {
    crc32c::crc32c(hash_slot(key))
}

pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    stable_hash(key) % partitions
}

pub fn core_of_partition(partition: u32, cores: u16) -> u16 {
    debug_assert!(cores > 0);
    (partition % u32::from(cores)) as u16
}

/// Convenience: the core that owns `key` on a node with `cores` cores.
pub fn core_of(key: &[u8], partitions: u32, cores: u16) -> u16 {
    core_of_partition(partition_of(key, partitions), cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed cases: a change here breaks every deployed client and every stored placement.
    #[test]
    fn placement_table() {
        let cases: &[(&str, &str, u32)] = &[
            ("foo", "foo", crc32c::crc32c(b"foo") % 1024),
            ("user:{42}:name", "42", crc32c::crc32c(b"42") % 1024),
            ("user:{42}:email", "42", crc32c::crc32c(b"42") % 1024),
            ("{}x", "{}x", crc32c::crc32c(b"{}x") % 1024),
            ("a{b", "a{b", crc32c::crc32c(b"a{b") % 1024),
            ("a}b{c}", "c", crc32c::crc32c(b"c") % 1024),
            ("{a}{b}", "a", crc32c::crc32c(b"a") % 1024),
        ];
        for &(key, slot, partition) in cases {
            assert_eq!(hash_slot(key.as_bytes()), slot.as_bytes(), "{key}");
            assert_eq!(partition_of(key.as_bytes(), 1024), partition, "{key}");
        }
        // The known value of CRC-32C pins the algorithm itself (RFC 3720 test vector).
        assert_eq!(stable_hash(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn partitions_spread_over_cores() {
        let mut per_core = [0u32; 3];
        for i in 0..30_000u32 {
            per_core[core_of(format!("key:{i}").as_bytes(), 1024, 3) as usize] += 1;
        }
        for n in per_core {
            assert!((9_000..11_000).contains(&n), "{per_core:?}");
        }
    }
}
