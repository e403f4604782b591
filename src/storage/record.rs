//! Log records: the byte layout of every mutation in a core's write-ahead log.
//!
//! ## Format (version 1, all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `crc32c` of bytes 4..`len` (everything after this field) |
//! | 4 | 4 | `len`: bytes in the whole record, header included |
//! | 8 | 1 | `kind`: 1 put, 2 delete, 3 clock, 4 index (checkpoints), 5 flush, 6 raft (see below) |
//! | 9 | 3 | reserved, zero |
//! | 12 | 4 | `key_len` |
//! | 16 | 8 | `version` |
//! | 24 | 8 | `expires_at_ms`: Unix ms, 0 = never (always 0 for a delete) |
//! | 32 | key_len | key |
//! | 32 + key_len | len − 32 − key_len | value (empty for a delete) |
//!
//! An index record (kind 4) says where a key's current put lives instead of carrying its
//! value: its value field is exactly 12 bytes, `segment` (u32), `offset` (u32) and `len` (u32)
//! of that put record. Only checkpoints hold index records; a log segment never does.
//!
//! A raft record (kind 6, cluster mode only) carries a Raft group's own state, not a key:
//! `key_len` is 0, `version` holds the partition, `expires_at_ms` the raft kind (1 entries,
//! 2 hard state, 3 snapshot point) and the value field its body (`cluster::store` owns that
//! layout). Recovery hands these to the partition's group store; the engine never sees them.
//!
//! Records follow each other with no padding. A segment may end in zero bytes (the unwritten
//! remainder of its last direct-I/O block): an all-zero tail is a clean end. `len` is checked
//! against [`RECORD_BYTES_MAX`] before anything is sized by it.
//!
//! Validity is asserted on both sides of the disk (TigerBeetle's pairing): [`encode`] checks the
//! length it wrote and [`decode`] recomputes the crc and every field bound on read.

use bytes::Bytes;

pub const CRC_OFFSET: usize = 0;
pub const LEN_OFFSET: usize = CRC_OFFSET + 4;
pub const KIND_OFFSET: usize = LEN_OFFSET + 4;
pub const RESERVED_OFFSET: usize = KIND_OFFSET + 1;
pub const KEY_LEN_OFFSET: usize = RESERVED_OFFSET + 3;
pub const VERSION_OFFSET: usize = KEY_LEN_OFFSET + 4;
pub const EXPIRES_AT_OFFSET: usize = VERSION_OFFSET + 8;
pub const HEADER_BYTES: usize = EXPIRES_AT_OFFSET + 8;

// The header is what the table above says, and 8-byte fields stay 8-byte aligned in it.
const _: () = assert!(HEADER_BYTES == 32);
const _: () = assert!(VERSION_OFFSET.is_multiple_of(8) && EXPIRES_AT_OFFSET.is_multiple_of(8));

pub use crate::config::RECORD_BYTES_MAX;

pub const KIND_PUT: u8 = 1;
pub const KIND_DELETE: u8 = 2;
/// Carries only a version: the highest one the core has issued. A checkpoint starts with it,
/// so versions keep growing after restart even when the key that held the highest one was
/// deleted (otherwise a re-created key could reuse an old version and pass a stale CAS).
pub const KIND_CLOCK: u8 = 3;
/// Checkpoints only: a key, its version and expiry, and where its put record lives.
pub const KIND_INDEX: u8 = 4;
/// No key: every key of the core is deleted (FLUSHDB); `version` is the flush's own.
pub const KIND_FLUSH: u8 = 5;
/// Cluster mode: a Raft group's entries, hard state or snapshot point (`cluster::store`).
pub const KIND_RAFT: u8 = 6;
/// Bytes of an index record's location field.
pub const LOC_BYTES: usize = 12;

/// Where a record lives in a core's log: segment number (from 1), byte offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub segment: std::num::NonZeroU32,
    pub offset: u32,
    pub len: u32,
}

impl Loc {
    pub fn new(segment: u64, offset: u64, len: usize) -> Loc {
        // Segment numbers start at 1; offsets and lengths are bounded by the segment size,
        // which the config keeps under 4 GiB.
        let segment = u32::try_from(segment).ok().and_then(std::num::NonZeroU32::new);
        Loc {
            segment: segment.expect("segment number in 1..=u32::MAX"),
            offset: u32::try_from(offset).expect("segment offset fits u32"),
            len: u32::try_from(len).expect("record length fits u32"),
        }
    }

    pub fn segment(&self) -> u64 {
        u64::from(self.segment.get())
    }

    /// Offset one past the record's last byte.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.len)
    }
}

/// One logged mutation, as the engine produced it and recovery replays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `data` is key ++ value, `key_len` splits it (the engine's own entry layout).
    Put {
        data: Bytes,
        key_len: usize,
        version: u64,
        expires_at_ms: u64,
    },
    Delete {
        key: Bytes,
        version: u64,
    },
    Clock {
        version: u64,
    },
    /// Every key of the core deleted.
    Flush {
        version: u64,
    },
    /// A Raft group's own state (cluster mode): `what` says which, `body` is its bytes.
    Raft {
        partition: u32,
        what: u8,
        body: Bytes,
    },
    /// A key whose value lives in the log at `loc` (checkpoints only).
    Index {
        key: Bytes,
        version: u64,
        expires_at_ms: u64,
        loc: Loc,
    },
}

impl Mutation {
    /// A put of `key` = `value` (copied into one buffer, the engine's entry layout).
    pub fn put(key: &[u8], value: &[u8], version: u64, expires_at_ms: u64) -> Mutation {
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Mutation::Put { data: Bytes::from(data), key_len: key.len(), version, expires_at_ms }
    }

    pub fn key(&self) -> &[u8] {
        match self {
            Mutation::Put { data, key_len, .. } => &data[..*key_len],
            Mutation::Delete { key, .. } | Mutation::Index { key, .. } => key,
            Mutation::Clock { .. } | Mutation::Flush { .. } | Mutation::Raft { .. } => &[],
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Mutation::Put { version, .. }
            | Mutation::Delete { version, .. }
            | Mutation::Index { version, .. }
            | Mutation::Flush { version }
            | Mutation::Clock { version } => *version,
            // Not a key's version: raft records are ordered by their Raft index, inside.
            Mutation::Raft { .. } => 0,
        }
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + match self {
                Mutation::Put { data, .. } => data.len(),
                Mutation::Delete { key, .. } => key.len(),
                Mutation::Index { key, .. } => key.len() + LOC_BYTES,
                Mutation::Clock { .. } | Mutation::Flush { .. } => 0,
                Mutation::Raft { body, .. } => body.len(),
            }
    }
}

/// Appends the record for `m` to `out`.
pub fn encode(m: &Mutation, out: &mut Vec<u8>) {
    let start = out.len();
    let len = m.encoded_len();
    assert!(len <= RECORD_BYTES_MAX, "record of {len} bytes over RECORD_BYTES_MAX");
    let loc_bytes;
    let (kind, key_len, version, expires_at_ms, body, tail): (u8, usize, u64, u64, &[u8], &[u8]) =
        match m {
            Mutation::Put { data, key_len, version, expires_at_ms } => {
                (KIND_PUT, *key_len, *version, *expires_at_ms, data, &[])
            }
            Mutation::Delete { key, version } => (KIND_DELETE, key.len(), *version, 0, key, &[]),
            Mutation::Clock { version } => (KIND_CLOCK, 0, *version, 0, &[], &[]),
            Mutation::Flush { version } => (KIND_FLUSH, 0, *version, 0, &[], &[]),
            Mutation::Raft { partition, what, body } => {
                (KIND_RAFT, 0, u64::from(*partition), u64::from(*what), body, &[])
            }
            Mutation::Index { key, version, expires_at_ms, loc } => {
                let mut b = [0u8; LOC_BYTES];
                b[..4].copy_from_slice(&loc.segment.get().to_le_bytes());
                b[4..8].copy_from_slice(&loc.offset.to_le_bytes());
                b[8..].copy_from_slice(&loc.len.to_le_bytes());
                loc_bytes = b;
                (KIND_INDEX, key.len(), *version, *expires_at_ms, key, &loc_bytes[..])
            }
        };
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(key_len as u32).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(tail);
    assert_eq!(out.len() - start, len, "record length");
    let crc = crc32c::crc32c(&out[start + LEN_OFFSET..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at some offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than the header, or than `len` says.
    Incomplete,
    /// `len`, `kind`, reserved bytes or `key_len` out of bounds.
    BadHeader,
    /// The crc does not match the bytes.
    BadCrc { stored: u32, computed: u32 },
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the record at the start of `buf`. `source` is the buffer `buf` was sliced from,
/// so keys and values come out as zero-copy slices of it.
pub fn decode(source: &Bytes, at: usize) -> Result<(Mutation, usize), Invalid> {
    let buf = &source[at..];
    if buf.len() < HEADER_BYTES {
        return Err(Invalid::Incomplete);
    }
    let len = u32_at(buf, LEN_OFFSET) as usize;
    let kind = buf[KIND_OFFSET];
    let key_len = u32_at(buf, KEY_LEN_OFFSET) as usize;
    let keyed = (HEADER_BYTES..=RECORD_BYTES_MAX).contains(&len)
        && key_len > 0
        && key_len <= len - HEADER_BYTES
        && (kind == KIND_PUT
            || (kind == KIND_DELETE && key_len == len - HEADER_BYTES)
            || (kind == KIND_INDEX && key_len + LOC_BYTES == len - HEADER_BYTES));
    let clock = (kind == KIND_CLOCK || kind == KIND_FLUSH) && key_len == 0 && len == HEADER_BYTES;
    let raft = kind == KIND_RAFT
        && key_len == 0
        && (HEADER_BYTES..=RECORD_BYTES_MAX).contains(&len)
        && u32::try_from(u64_at(buf, VERSION_OFFSET)).is_ok()
        && u8::try_from(u64_at(buf, EXPIRES_AT_OFFSET)).is_ok();
    let header_ok =
        (keyed || clock || raft) && buf[RESERVED_OFFSET..RESERVED_OFFSET + 3] == [0, 0, 0];
    if !header_ok {
        return Err(Invalid::BadHeader);
    }
    if buf.len() < len {
        return Err(Invalid::Incomplete);
    }
    let stored = u32_at(buf, CRC_OFFSET);
    let computed = crc32c::crc32c(&buf[LEN_OFFSET..len]);
    if stored != computed {
        return Err(Invalid::BadCrc { stored, computed });
    }
    let version = u64_at(buf, VERSION_OFFSET);
    let body = source.slice(at + HEADER_BYTES..at + len);
    let m = match kind {
        KIND_PUT => {
            let expires_at_ms = u64_at(buf, EXPIRES_AT_OFFSET);
            Mutation::Put { data: body, key_len, version, expires_at_ms }
        }
        KIND_DELETE => Mutation::Delete { key: body, version },
        KIND_INDEX => {
            let at = HEADER_BYTES + key_len;
            let segment = std::num::NonZeroU32::new(u32_at(buf, at)).ok_or(Invalid::BadHeader)?;
            let loc = Loc { segment, offset: u32_at(buf, at + 4), len: u32_at(buf, at + 8) };
            // The put it points at holds at least a header and this key.
            if (loc.len as usize) < HEADER_BYTES + key_len
                || loc.offset.checked_add(loc.len).is_none()
            {
                return Err(Invalid::BadHeader);
            }
            let expires_at_ms = u64_at(buf, EXPIRES_AT_OFFSET);
            Mutation::Index { key: body.slice(..key_len), version, expires_at_ms, loc }
        }
        KIND_FLUSH => Mutation::Flush { version },
        KIND_RAFT => Mutation::Raft {
            partition: version as u32,
            what: u64_at(buf, EXPIRES_AT_OFFSET) as u8,
            body,
        },
        _ => Mutation::Clock { version },
    };
    Ok((m, len))
}

/// How a segment's bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every byte was a record or zero padding after the last one.
    Clean,
    /// Bytes from `offset` on are not a record and no record follows them: a write cut short.
    TornTail { offset: usize, invalid: Invalid },
    /// The bytes at `offset` are not a record, yet a valid record starts at `resumes_at`.
    Corrupt { offset: usize, invalid: Invalid, resumes_at: usize },
}

/// Walks the records of one segment, calling `apply` for each valid one, and says how it ends.
/// With `salvage`, corruption is skipped (the walk resumes at the next valid record) and each
/// skipped range is reported through `skipped`.
pub fn scan(
    segment: &Bytes,
    salvage: bool,
    mut apply: impl FnMut(Mutation, usize),
    mut skipped: impl FnMut(usize, usize, Invalid),
) -> Ending {
    let mut at = 0;
    loop {
        if all_zero(&segment[at..]) {
            return Ending::Clean;
        }
        match decode(segment, at) {
            Ok((m, len)) => {
                apply(m, at);
                at += len;
            }
            Err(invalid) => match next_valid(segment, at + 1) {
                None => return Ending::TornTail { offset: at, invalid },
                Some(resumes_at) if salvage => {
                    skipped(at, resumes_at, invalid);
                    at = resumes_at;
                }
                Some(resumes_at) => return Ending::Corrupt { offset: at, invalid, resumes_at },
            },
        }
    }
}

/// Whether every byte is zero; a word at a time, since a crashed segment ends in megabytes of
/// preallocated zeros.
fn all_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let body = words
        .by_ref()
        .all(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0);
    body && words.remainder().iter().all(|&b| b == 0)
}

/// The first offset at or after `from` where a valid record starts.
fn next_valid(segment: &Bytes, from: usize) -> Option<usize> {
    (from..segment.len().saturating_sub(HEADER_BYTES - 1)).find(|&at| decode(segment, at).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, version: u64, expires_at_ms: u64) -> Mutation {
        Mutation::put(key.as_bytes(), value.as_bytes(), version, expires_at_ms)
    }

    fn del(key: &str, version: u64) -> Mutation {
        Mutation::Delete { key: Bytes::copy_from_slice(key.as_bytes()), version }
    }

    fn log(ms: &[Mutation]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in ms {
            encode(m, &mut out);
        }
        out
    }

    fn replay(bytes: Vec<u8>, salvage: bool) -> (Vec<Mutation>, Ending, Vec<(usize, usize)>) {
        let mut got = Vec::new();
        let mut skips = Vec::new();
        let ending =
            scan(&Bytes::from(bytes), salvage, |m, _| got.push(m), |a, b, _| skips.push((a, b)));
        (got, ending, skips)
    }

    /// An index record pointing at fewer bytes than a put of its key could take is refused,
    /// not turned into a negative value length.
    #[test]
    fn an_index_record_too_short_for_its_key_is_invalid() {
        let m = Mutation::Index {
            key: Bytes::from_static(b"a-long-key"),
            version: 1,
            expires_at_ms: 0,
            loc: Loc::new(1, 0, HEADER_BYTES + 3),
        };
        let bytes = Bytes::from(log(&[m]));
        assert_eq!(decode(&bytes, 0).unwrap_err(), Invalid::BadHeader);
    }

    #[test]
    fn roundtrip_every_kind() {
        let ms = vec![
            put("k", "v", 1, 0),
            put("key", "", 2, 99),
            del("k", 3),
            Mutation::Clock { version: 9 },
            Mutation::Flush { version: 10 },
            Mutation::Index {
                key: Bytes::from_static(b"idx"),
                version: 7,
                expires_at_ms: 5,
                loc: Loc::new(3, 4096, 77),
            },
        ];
        let (got, ending, _) = replay(log(&ms), false);
        assert_eq!(got, ms);
        assert_eq!(ending, Ending::Clean);
        assert_eq!(log(&ms[..1]).len(), HEADER_BYTES + 2);
    }

    #[test]
    fn zero_padding_is_a_clean_end() {
        let ms = vec![put("a", "1", 1, 0)];
        let mut bytes = log(&ms);
        bytes.resize(4096, 0);
        let (got, ending, _) = replay(bytes, false);
        assert_eq!((got, ending), (ms, Ending::Clean));
    }

    #[test]
    fn every_truncation_is_a_torn_tail_keeping_whole_records() {
        let ms: Vec<_> = (0..5).map(|i| put(&format!("key{i}"), "value", i + 1, 0)).collect();
        let bytes = log(&ms);
        let record = bytes.len() / 5;
        for cut in 1..bytes.len() {
            let (got, ending, _) = replay(bytes[..cut].to_vec(), false);
            assert_eq!(got.len(), cut / record, "cut {cut}");
            if cut % record == 0 {
                assert_eq!(ending, Ending::Clean, "cut {cut}");
            } else {
                assert!(
                    matches!(ending, Ending::TornTail { offset, .. }
                        if offset == cut / record * record),
                    "cut {cut}: {ending:?}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_mid_log_is_corruption_and_salvage_skips_it() {
        let ms: Vec<_> = (0..10).map(|i| put(&format!("key{i}"), "value", i + 1, 0)).collect();
        let bytes = log(&ms);
        let record = bytes.len() / 10;
        for flip_at in [record * 4 + 1, record * 4 + 9, record * 4 + 40] {
            let mut bad = bytes.clone();
            bad[flip_at] ^= 0x10;
            let (got, ending, _) = replay(bad.clone(), false);
            assert_eq!(got.len(), 4, "flip at {flip_at}");
            assert!(
                matches!(ending, Ending::Corrupt { offset, resumes_at, .. }
                    if offset == record * 4 && resumes_at == record * 5),
                "flip at {flip_at}: {ending:?}"
            );
            let (got, ending, skips) = replay(bad, true);
            assert_eq!(got.len(), 9);
            assert_eq!(ending, Ending::Clean);
            assert_eq!(skips, vec![(record * 4, record * 5)]);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_is_a_torn_tail() {
        let ms: Vec<_> = (0..3).map(|i| put(&format!("k{i}"), "v", i + 1, 0)).collect();
        let mut bytes = log(&ms);
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        let (got, ending, _) = replay(bytes, false);
        assert_eq!(got.len(), 2);
        assert!(matches!(ending, Ending::TornTail { invalid: Invalid::BadCrc { .. }, .. }));
    }

    #[test]
    fn hostile_lengths_are_rejected_before_use() {
        let mut bytes = log(&[put("k", "v", 1, 0)]);
        bytes[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(bytes), 0).unwrap_err(), Invalid::BadHeader);
    }
}
