//! The native corekv protocol: `u32-LE length | FlatBuffers` frames through `corekv-schema`.
//!
//! `NotFound` on a GET or DEL is a miss, the normal answer for an absent key; every other error
//! code, and a success of the wrong shape (say `Written` for a GET), counts as an error.

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{
    self, Condition, Encoder, ErrorCode, Op, Reply as WireReply, Request, SetOp,
};
use corekv_schema::frame::{self, Limits};

use super::{Driver, ProtocolError, Reply};
use crate::stats::Outcome;
use crate::workload::OpKind;

pub struct Native {
    encoder: Encoder,
    frame_bytes_max: usize,
    consistency: codec::Consistency,
}

impl Default for Native {
    fn default() -> Native {
        Native {
            encoder: Encoder::new(),
            frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
            consistency: codec::Consistency::Default,
        }
    }
}

impl Driver for Native {
    fn encode(&mut self, id: u64, kind: OpKind, key: &[u8], value: &Bytes, out: &mut BytesMut) {
        let mut request = Request::new(id, op(kind, Bytes::copy_from_slice(key), value));
        request.consistency = self.consistency;
        self.encoder.request(&request, out);
    }

    fn set_consistency(&mut self, consistency: codec::Consistency) {
        self.consistency = consistency;
    }

    fn take_reply(
        &mut self,
        buf: &mut BytesMut,
        kind: OpKind,
    ) -> Result<Option<Reply>, ProtocolError> {
        let Some(frame) = frame::take_frame(buf, self.frame_bytes_max)? else {
            return Ok(None);
        };
        let response = codec::decode_response(&frame)?;
        Ok(Some(Reply { id: Some(response.id), outcome: outcome(kind, response.reply) }))
    }
}

/// The request a `kind` operation on `key` sends. `value` is used by SET only.
pub(crate) fn op(kind: OpKind, key: Bytes, value: &Bytes) -> Op {
    match kind {
        OpKind::Get => Op::Get { key },
        OpKind::Set => Op::Set(SetOp { key, value: value.clone(), ..SetOp::default() }),
        OpKind::Del => Op::Delete { key, condition: Condition::Always },
    }
}

/// What `reply` to a `kind` request counts as.
pub(crate) fn outcome(kind: OpKind, reply: WireReply) -> Outcome {
    match (kind, reply) {
        (OpKind::Get, WireReply::Value { .. })
        | (OpKind::Set, WireReply::Written { .. })
        | (OpKind::Del, WireReply::Deleted { .. }) => Outcome::Hit,
        (OpKind::Get | OpKind::Del, WireReply::Error(e)) if e.code == ErrorCode::NotFound => {
            Outcome::Miss
        }
        (_, WireReply::Error(e)) => Outcome::Error(e.to_string()),
        (kind, other) => Outcome::Error(format!(
            "unexpected reply to {}: {}",
            kind.name(),
            WireReply::name(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(id: u64, reply: &WireReply, out: &mut BytesMut) {
        Encoder::new().response(id, reply, out);
    }

    #[test]
    fn requests_round_trip_through_the_node_decoder() {
        let mut d = Native::default();
        let mut out = BytesMut::new();
        let value = Bytes::from_static(b"v");
        d.encode(1, OpKind::Get, b"k1", &value, &mut out);
        d.encode(2, OpKind::Set, b"k2", &value, &mut out);
        d.encode(3, OpKind::Del, b"k3", &value, &mut out);
        let mut ops = Vec::new();
        while let Some(f) = frame::take_frame(&mut out, 1 << 20).unwrap() {
            ops.push(codec::decode_request(&f, &Limits::DEFAULT).unwrap());
        }
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].op, Op::Get { key: Bytes::from_static(b"k1") });
        assert!(matches!(&ops[1].op, Op::Set(s) if s.value == value && s.key == "k2"));
        assert!(
            matches!(&ops[2].op, Op::Delete { key, condition: Condition::Always } if key == "k3")
        );
        assert_eq!(ops.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn not_found_is_a_miss_and_other_errors_are_errors() {
        let mut d = Native::default();
        let mut buf = BytesMut::new();
        respond(1, &WireReply::error(ErrorCode::NotFound, "absent"), &mut buf);
        respond(2, &WireReply::error(ErrorCode::NotFound, "absent"), &mut buf);
        respond(3, &WireReply::error(ErrorCode::Overloaded, "busy"), &mut buf);
        respond(4, &WireReply::Written { version: 1 }, &mut buf);
        respond(5, &WireReply::Written { version: 1 }, &mut buf);
        let mut next = |kind| d.take_reply(&mut buf, kind).unwrap().unwrap();
        assert_eq!(next(OpKind::Get), Reply { id: Some(1), outcome: Outcome::Miss });
        assert_eq!(next(OpKind::Del).outcome, Outcome::Miss);
        assert!(matches!(next(OpKind::Get).outcome, Outcome::Error(m) if m.contains("overloaded")));
        assert_eq!(next(OpKind::Set).outcome, Outcome::Hit);
        assert!(matches!(next(OpKind::Get).outcome, Outcome::Error(m) if m.contains("written")));
        assert_eq!(d.take_reply(&mut buf, OpKind::Get), Ok(None));
    }

    #[test]
    fn partial_replies_wait_and_garbage_is_fatal() {
        let mut d = Native::default();
        let mut whole = BytesMut::new();
        respond(9, &WireReply::Deleted { version: 2 }, &mut whole);
        let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(d.take_reply(&mut buf, OpKind::Del), Ok(None));
        buf.extend_from_slice(&whole[whole.len() - 1..]);
        assert_eq!(d.take_reply(&mut buf, OpKind::Del).unwrap().unwrap().id, Some(9));
        let mut garbage =
            BytesMut::from(&[12u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12][..]);
        assert!(matches!(d.take_reply(&mut garbage, OpKind::Get), Err(ProtocolError::Decode(_))));
        let mut huge = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(d.take_reply(&mut huge, OpKind::Get), Err(ProtocolError::Frame(_))));
    }
}
