//! What a Raft entry of a data partition carries: one client write, as the leader stamped it.
//!
//! Layout: `stamp` (u64 LE, the leader's Unix ms when it proposed) ++ one size-prefixed
//! `corekv.Request` frame (the client protocol's own encoding). The proposer knows its own
//! entry by (index, term), which Raft makes unique, so the entry carries no proposer id.
//!
//! Every replica applies the entry with `stamp` as the time, never its own clock, so TTLs and
//! conditions on expiring keys come out the same on every replica and on replay.

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{self, Encoder, Op, Request};
use corekv_schema::frame::Limits;

const HEADER_BYTES: usize = 8;

pub fn encode(stamp_ms: u64, op: &Op) -> Vec<u8> {
    let mut frame = BytesMut::new();
    Encoder::new().request(&Request::new(0, op.clone()), &mut frame);
    let mut out = Vec::with_capacity(HEADER_BYTES + frame.len());
    out.extend_from_slice(&stamp_ms.to_le_bytes());
    out.extend_from_slice(&frame);
    out
}

/// `(stamp, op)`. An entry that does not decode is a bug or a damaged log: the caller
/// stops applying the partition rather than diverge from the other replicas.
pub fn decode(data: &Bytes, limits: &Limits) -> Result<(u64, Op), String> {
    if data.len() < HEADER_BYTES {
        return Err(format!("raft entry of {} bytes is too short for a command", data.len()));
    }
    let stamp = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let request = codec::decode_request(&data.slice(HEADER_BYTES..), limits)
        .map_err(|e| format!("raft entry command: {e}"))?;
    Ok((stamp, request.op))
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
        ] {
            let data = Bytes::from(encode(123, &op));
            assert_eq!(decode(&data, &limits), Ok((123, op)));
        }
        assert!(decode(&Bytes::from_static(b"short"), &limits).is_err());
        assert!(decode(&Bytes::from(vec![0u8; 40]), &limits).is_err());
    }
}
