//! What a Raft entry of a data partition carries, as the leader stamped it: one client
//! operation, or the removal of keys that expired.
//!
//! Layout: `stamp` (u64 LE, the leader's Unix ms when it proposed), `kind` (u8), then the body:
//! - kind 1, a client operation: one size-prefixed `corekv.Request` frame (the client
//!   protocol's own encoding). A `Batch` here is ops on one partition with at most one write
//!   (`shard/clustered.rs` cuts batches so), applied at this one log position;
//! - kind 2, expiry: repeated (version u64 LE, key length u32 LE, key): remove each key that
//!   is still at that version and expired at `stamp`.
//!
//! The proposer knows its own entry by (index, term), which Raft makes unique, so the entry
//! carries no proposer id. Every replica applies the entry with `stamp` as the time, never its
//! own clock, and only kind 2 removes an expired key: so every replica holds the same keys at
//! the same index, whatever its clock did (docs/CLUSTER.md, "Expiry").

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{self, Encoder, Op, Request};
use corekv_schema::frame::Limits;

const HEADER_BYTES: usize = 9;
const KIND_OP: u8 = 1;
const KIND_EXPIRY: u8 = 2;
/// An expiry item's fixed part: version and key length.
const EXPIRY_ITEM_BYTES: usize = 12;

/// A decoded entry body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A client's operation.
    Op(Op),
    /// Keys to remove if still at these versions and expired at the entry's stamp.
    Expiry(Vec<(Bytes, u64)>),
}

fn header(stamp_ms: u64, kind: u8, body_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body_bytes);
    out.extend_from_slice(&stamp_ms.to_le_bytes());
    out.push(kind);
    out
}

thread_local! {
    /// One FlatBuffers builder per core thread, reused by every entry and forward the core
    /// encodes: a new one per proposal allocated and grew its buffer each time.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// A builder that grew past this for one huge value is dropped after use.
const ENCODER_KEEP_BYTES: usize = 4 << 20;

/// Runs `f` with this thread's encoder (`f` must not call back in here).
pub fn with_encoder<R>(f: impl FnOnce(&mut Encoder) -> R) -> R {
    ENCODER.with(|cell| {
        let mut encoder = cell.borrow_mut();
        let out = f(&mut encoder);
        if encoder.peak_bytes() > ENCODER_KEEP_BYTES {
            *encoder = Encoder::new();
        }
        out
    })
}

pub fn encode(stamp_ms: u64, op: &Op) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + 64 + op.key().map_or(0, |k| k.len()));
    out.extend_from_slice(&stamp_ms.to_le_bytes());
    out.extend_from_slice(&[KIND_OP]);
    with_encoder(|e| e.request(&Request::new(0, op.clone()), &mut out));
    Vec::from(out)
}

pub fn encode_expiry(stamp_ms: u64, keys: &[(Bytes, u64)]) -> Vec<u8> {
    let body: usize = keys.iter().map(|(k, _)| EXPIRY_ITEM_BYTES + k.len()).sum();
    let mut out = header(stamp_ms, KIND_EXPIRY, body);
    for (key, version) in keys {
        out.extend_from_slice(&version.to_le_bytes());
        let len = u32::try_from(key.len()).expect("keys are far below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(key);
    }
    out
}

/// `(stamp, command)`. An entry that does not decode is a bug or a damaged log: the caller
/// stops applying the partition rather than diverge from the other replicas.
pub fn decode(data: &Bytes, limits: &Limits) -> Result<(u64, Command), String> {
    if data.len() < HEADER_BYTES {
        return Err(format!("raft entry of {} bytes is too short for a command", data.len()));
    }
    let stamp = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let body = data.slice(HEADER_BYTES..);
    match data[8] {
        KIND_OP => {
            let request = codec::decode_request(&body, limits)
                .map_err(|e| format!("raft entry command: {e}"))?;
            Ok((stamp, Command::Op(request.op)))
        }
        KIND_EXPIRY => Ok((stamp, Command::Expiry(decode_expiry(&body)?))),
        kind => Err(format!("raft entry of unknown kind {kind}")),
    }
}

fn decode_expiry(body: &Bytes) -> Result<Vec<(Bytes, u64)>, String> {
    let mut keys = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let fixed = body.get(at..at + EXPIRY_ITEM_BYTES).ok_or("expiry entry: truncated item")?;
        let version = u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(fixed[8..].try_into().expect("4 bytes")) as usize;
        let start = at + EXPIRY_ITEM_BYTES;
        let end = start.checked_add(len).filter(|&e| e <= body.len());
        let end = end.ok_or("expiry entry: key runs past the end")?;
        keys.push((body.slice(start..end), version));
        at = end;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corekv_schema::codec::{Condition, Expected};

    #[test]
    fn round_trips_and_refuses_garbage() {
        let limits = Limits::DEFAULT;
        for op in [
            Op::set("k", "v"),
            Op::set_if("k", "v", Condition::IfValue(Bytes::from_static(b"old"))),
            Op::delete("gone"),
            Op::Cas {
                key: Bytes::from_static(b"c"),
                expected: Expected::Version(7),
                new_value: Bytes::from_static(b"n"),
                ttl_ms: 5,
            },
            Op::Batch(vec![Op::get("k"), Op::set("k", "v")]),
        ] {
            let data = Bytes::from(encode(123, &op));
            assert_eq!(decode(&data, &limits), Ok((123, Command::Op(op))));
        }
        assert!(decode(&Bytes::from_static(b"short"), &limits).is_err());
        assert!(decode(&Bytes::from(vec![0u8; 40]), &limits).is_err());
    }

    #[test]
    fn expiry_round_trips_and_every_truncation_is_refused() {
        let limits = Limits::DEFAULT;
        let keys = vec![(Bytes::from_static(b"a"), 7), (Bytes::from_static(b"longer key"), 9)];
        let data = encode_expiry(55, &keys);
        assert_eq!(decode(&Bytes::from(data.clone()), &limits), Ok((55, Command::Expiry(keys))));
        assert_eq!(
            decode(&Bytes::from(encode_expiry(1, &[])), &limits),
            Ok((1, Command::Expiry(Vec::new())))
        );
        let whole_items = [HEADER_BYTES, HEADER_BYTES + EXPIRY_ITEM_BYTES + 1];
        for cut in HEADER_BYTES..data.len() {
            let got = decode(&Bytes::copy_from_slice(&data[..cut]), &limits);
            assert_eq!(got.is_ok(), whole_items.contains(&cut), "cut at {cut}: {got:?}");
        }
    }
}
