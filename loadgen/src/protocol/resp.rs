//! The Redis protocol (RESP2): GET, SET and DEL as arrays of bulk strings, so the same runs
//! drive redis-server and corekv's `--resp-listen` port side by side.
//!
//! A nil GET and a DEL that removed nothing (`:0`) are misses; an error reply counts as an
//! error; anything else of the wrong shape is an error too. Replies carry no id: the
//! connection pairs each with the oldest request in flight.

use bytes::{Buf, Bytes, BytesMut};

use super::{Driver, ProtocolError, Reply};
use crate::stats::Outcome;
use crate::workload::OpKind;

#[derive(Default)]
pub struct Resp;

fn bulk(out: &mut BytesMut, b: &[u8]) {
    out.extend_from_slice(b"$");
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

impl Driver for Resp {
    fn encode(&mut self, _id: u64, kind: OpKind, key: &[u8], value: &Bytes, out: &mut BytesMut) {
        match kind {
            OpKind::Get => {
                out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                bulk(out, key);
            }
            OpKind::Set => {
                out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                bulk(out, key);
                bulk(out, value);
            }
            OpKind::Del => {
                out.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n");
                bulk(out, key);
            }
        }
    }

    fn take_reply(
        &mut self,
        buf: &mut BytesMut,
        kind: OpKind,
    ) -> Result<Option<Reply>, ProtocolError> {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        if line_end == 0 {
            return Err(ProtocolError::Resp("reply line without a type byte".into()));
        }
        let line = String::from_utf8_lossy(&buf[1..line_end]).into_owned();
        let bad = || ProtocolError::Resp(format!("unparsable reply line {line:?}"));
        let (used, outcome) = match (buf.first().copied(), kind) {
            (Some(b'$'), _) => {
                let n: i64 = line.parse().map_err(|_| bad())?;
                if n < 0 {
                    (
                        line_end + 2,
                        if kind == OpKind::Get { Outcome::Miss } else { wrong(kind, "nil") },
                    )
                } else {
                    let total = line_end + 2 + n as usize + 2;
                    if buf.len() < total {
                        return Ok(None);
                    }
                    let hit =
                        if kind == OpKind::Get { Outcome::Hit } else { wrong(kind, "a value") };
                    (total, hit)
                }
            }
            (Some(b'+'), OpKind::Set) if line == "OK" => (line_end + 2, Outcome::Hit),
            (Some(b':'), OpKind::Del) => {
                let n: i64 = line.parse().map_err(|_| bad())?;
                (line_end + 2, if n > 0 { Outcome::Hit } else { Outcome::Miss })
            }
            (Some(b'-'), _) => (line_end + 2, Outcome::Error(line)),
            (Some(b'+' | b':'), _) => (line_end + 2, wrong(kind, &line)),
            _ => return Err(bad()),
        };
        buf.advance(used);
        Ok(Some(Reply { id: None, outcome }))
    }
}

fn wrong(kind: OpKind, got: &str) -> Outcome {
    Outcome::Error(format!("unexpected reply to {}: {got}", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_and_reads_replies_in_pieces() {
        let mut d = Resp;
        let mut out = BytesMut::new();
        d.encode(1, OpKind::Set, b"k", &Bytes::from_static(b"val"), &mut out);
        d.encode(2, OpKind::Get, b"k", &Bytes::new(), &mut out);
        d.encode(3, OpKind::Del, b"k", &Bytes::new(), &mut out);
        let want: &[&[u8]] = &[
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nval\r\n",
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
            b"*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n",
        ];
        assert_eq!(&out[..], &want.concat()[..]);
        let replies: &[(&[u8], OpKind, Outcome)] = &[
            (b"+OK\r\n", OpKind::Set, Outcome::Hit),
            (b"$3\r\nval\r\n", OpKind::Get, Outcome::Hit),
            (b"$-1\r\n", OpKind::Get, Outcome::Miss),
            (b":1\r\n", OpKind::Del, Outcome::Hit),
            (b":0\r\n", OpKind::Del, Outcome::Miss),
            (b"-ERR boom\r\n", OpKind::Get, Outcome::Error("ERR boom".into())),
        ];
        for (bytes, kind, want) in replies {
            // Every prefix waits; the whole reply is taken exactly.
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(d.take_reply(&mut buf, *kind).unwrap(), None, "{bytes:?} cut {cut}");
            }
            let mut buf = BytesMut::from(*bytes);
            buf.extend_from_slice(b"+OK\r\n");
            let got = d.take_reply(&mut buf, *kind).unwrap().unwrap();
            assert_eq!((got.id, &got.outcome), (None, want));
            assert_eq!(&buf[..], b"+OK\r\n");
        }
        assert!(d.take_reply(&mut BytesMut::from(&b"?\r\n"[..]), OpKind::Get).is_err());
        // A line with no type byte is an error, not a panic.
        assert!(d.take_reply(&mut BytesMut::from(&b"\r\n+OK\r\n"[..]), OpKind::Get).is_err());
    }
}
