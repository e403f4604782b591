//! Node-to-node frames (`peer.fbs`): a link's `Hello`, then batches of Raft messages, each
//! batch holding every message one node has for another at that moment, and client requests
//! one node forwards to another (`Forward`, answered by `Forwarded` on the same link), and
//! each node's heartbeat with its figures (`Report`).
//!
//! Raft messages stay in raft-rs's protobuf encoding and are opaque here, so the client SDK,
//! which shares this crate, does not depend on raft-rs. Decoding verifies the buffer first and
//! hands message bytes out as slices of the frame (no copy). Frames are size-prefixed like
//! client frames, so [`crate::frame::take_frame`] cuts them from a stream.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, VerifierOptions};

use crate::generated_peer::corekv::peer as fb;

/// The node-to-node protocol version this build speaks.
pub const PEER_VERSION: u16 = 1;

/// Most Raft messages in one batch frame; a sender splits beyond it.
pub const BATCH_MESSAGES_MAX: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    Hello {
        cluster_id: u64,
        from_node: u64,
        to_node: u64,
        version: u16,
    },
    /// (partition, protobuf-encoded raft message) pairs, in send order.
    Raft {
        from_node: u64,
        to_node: u64,
        messages: Vec<(u32, Bytes)>,
    },
    /// A size-prefixed client request frame, forwarded; `id` matches the answer.
    Forward {
        id: u64,
        request: Bytes,
    },
    /// A size-prefixed client response frame: the answer to `Forward` `id`.
    Forwarded {
        id: u64,
        response: Bytes,
    },
    /// A node's heartbeat with its figures.
    Report(NodeReport),
    /// A node starting with --join asks a member for the cluster's members and map.
    JoinAsk {
        from_node: u64,
    },
    /// The answer to `JoinAsk`.
    JoinInfo(JoinInfo),
    /// A piece of a snapshot; see `peer.fbs`.
    SnapshotChunk(SnapshotChunk),
}

/// One piece of a snapshot on its way to a follower; see `peer.fbs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotChunk {
    pub from_node: u64,
    pub partition: u32,
    pub index: u64,
    pub offset: u64,
    pub total: u64,
    pub crc: u32,
    pub data: Bytes,
    /// The raft message without its data; empty on every piece but the last.
    pub message: Bytes,
}

/// What a joining node learns from a member: enough to link to every member and route.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinInfo {
    /// JSON, as the metadata group records the members.
    pub members: Bytes,
    /// The partition map's text, as the metadata group records it.
    pub map: Bytes,
    pub map_version: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    /// What every `Hello` in this cluster carries.
    pub cluster_id: u64,
}

/// What a node tells its peers of itself twice a second.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeReport {
    pub from_node: u64,
    pub uptime_ms: u64,
    pub keys: u64,
    pub log_bytes: u64,
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
    pub replicas_held: u32,
    pub partitions_led: Vec<u32>,
    /// Empty while every core's log is healthy.
    pub log_error: String,
}

/// Encodes one size-prefixed frame. A batch holds at most [`BATCH_MESSAGES_MAX`] messages:
/// the sender splits larger ones (a bigger one is a bug in the caller, and panics).
pub fn encode(message: &PeerMessage) -> Vec<u8> {
    if let PeerMessage::Raft { messages, .. } = message {
        assert!(messages.len() <= BATCH_MESSAGES_MAX, "raft batch of {}", messages.len());
    }
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let (body_type, body) = match message {
        PeerMessage::Hello { cluster_id, from_node, to_node, version } => {
            let hello = fb::Hello::create(
                &mut fbb,
                &fb::HelloArgs {
                    cluster_id: *cluster_id,
                    from_node: *from_node,
                    to_node: *to_node,
                    version: *version,
                },
            );
            (fb::Body::Hello, hello.as_union_value())
        }
        PeerMessage::Raft { from_node, to_node, messages } => {
            let items: Vec<_> = messages
                .iter()
                .map(|(partition, bytes)| {
                    let message = fbb.create_vector(bytes);
                    fb::RaftMessage::create(
                        &mut fbb,
                        &fb::RaftMessageArgs { partition: *partition, message: Some(message) },
                    )
                })
                .collect();
            let messages = fbb.create_vector(&items);
            let batch = fb::RaftBatch::create(
                &mut fbb,
                &fb::RaftBatchArgs {
                    from_node: *from_node,
                    to_node: *to_node,
                    messages: Some(messages),
                },
            );
            (fb::Body::RaftBatch, batch.as_union_value())
        }
        PeerMessage::Forward { id, request } => {
            let request = fbb.create_vector(request);
            let f =
                fb::Forward::create(&mut fbb, &fb::ForwardArgs { id: *id, request: Some(request) });
            (fb::Body::Forward, f.as_union_value())
        }
        PeerMessage::Forwarded { id, response } => {
            let response = fbb.create_vector(response);
            let f = fb::Forwarded::create(
                &mut fbb,
                &fb::ForwardedArgs { id: *id, response: Some(response) },
            );
            (fb::Body::Forwarded, f.as_union_value())
        }
        PeerMessage::Report(r) => {
            let partitions_led = Some(fbb.create_vector(&r.partitions_led));
            let log_error = (!r.log_error.is_empty()).then(|| fbb.create_string(&r.log_error));
            let args = fb::ReportArgs {
                from_node: r.from_node,
                uptime_ms: r.uptime_ms,
                keys: r.keys,
                log_bytes: r.log_bytes,
                disk_free_bytes: r.disk_free_bytes,
                disk_total_bytes: r.disk_total_bytes,
                replicas_held: r.replicas_held,
                partitions_led,
                log_error,
            };
            (fb::Body::Report, fb::Report::create(&mut fbb, &args).as_union_value())
        }
        PeerMessage::SnapshotChunk(c) => {
            let data = Some(fbb.create_vector(&c.data));
            let message = (!c.message.is_empty()).then(|| fbb.create_vector(&c.message));
            let args = fb::SnapshotChunkArgs {
                from_node: c.from_node,
                partition: c.partition,
                index: c.index,
                offset: c.offset,
                total: c.total,
                crc: c.crc,
                data,
                message,
            };
            (fb::Body::SnapshotChunk, fb::SnapshotChunk::create(&mut fbb, &args).as_union_value())
        }
        PeerMessage::JoinAsk { from_node } => {
            let ask = fb::JoinAsk::create(&mut fbb, &fb::JoinAskArgs { from_node: *from_node });
            (fb::Body::JoinAsk, ask.as_union_value())
        }
        PeerMessage::JoinInfo(info) => {
            let members = Some(fbb.create_vector(&info.members));
            let map = Some(fbb.create_vector(&info.map));
            let args = fb::JoinInfoArgs {
                members,
                map,
                map_version: info.map_version,
                partitions: info.partitions,
                replication_factor: info.replication_factor,
                cluster_id: info.cluster_id,
            };
            (fb::Body::JoinInfo, fb::JoinInfo::create(&mut fbb, &args).as_union_value())
        }
    };
    let root = fb::PeerFrame::create(&mut fbb, &fb::PeerFrameArgs { body_type, body: Some(body) });
    fbb.finish_size_prefixed(root, None);
    fbb.finished_data().to_vec()
}

/// Decodes one size-prefixed frame (as cut by `take_frame`). Anything malformed is an error
/// naming what was wrong; the link that sent it is closed by the caller.
pub fn decode(frame: &Bytes) -> Result<PeerMessage, String> {
    let opts = VerifierOptions {
        max_depth: 8,
        max_tables: BATCH_MESSAGES_MAX + 8,
        max_apparent_size: 1 << 31,
        ignore_missing_null_terminator: false,
    };
    let prefix = frame.get(..4).map(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
    if prefix.is_none_or(|n| n as usize + 4 != frame.len()) {
        return Err(format!("peer frame of {} bytes with a wrong length prefix", frame.len()));
    }
    let root = flatbuffers::size_prefixed_root_with_opts::<fb::PeerFrame>(&opts, frame)
        .map_err(|e| format!("malformed peer frame: {e}"))?;
    let nonzero = |what: &str, id: u64| {
        if id == 0 { Err(format!("peer frame with {what} 0")) } else { Ok(id) }
    };
    if let Some(h) = root.body_as_hello() {
        return Ok(PeerMessage::Hello {
            cluster_id: h.cluster_id(),
            from_node: nonzero("from_node", h.from_node())?,
            to_node: nonzero("to_node", h.to_node())?,
            version: h.version(),
        });
    }
    if let Some(b) = root.body_as_raft_batch() {
        let items = b.messages().ok_or("raft batch without messages")?;
        if items.len() > BATCH_MESSAGES_MAX {
            return Err(format!(
                "raft batch of {} messages; at most {BATCH_MESSAGES_MAX}",
                items.len()
            ));
        }
        let mut messages = Vec::with_capacity(items.len());
        for item in items {
            let bytes = item.message().ok_or("raft message without bytes")?;
            messages.push((item.partition(), frame.slice_ref(bytes.bytes())));
        }
        return Ok(PeerMessage::Raft {
            from_node: nonzero("from_node", b.from_node())?,
            to_node: nonzero("to_node", b.to_node())?,
            messages,
        });
    }
    if let Some(f) = root.body_as_forward() {
        let request = f.request().ok_or("forward without a request")?;
        return Ok(PeerMessage::Forward { id: f.id(), request: frame.slice_ref(request.bytes()) });
    }
    if let Some(f) = root.body_as_forwarded() {
        let response = f.response().ok_or("forwarded without a response")?;
        return Ok(PeerMessage::Forwarded {
            id: f.id(),
            response: frame.slice_ref(response.bytes()),
        });
    }
    if let Some(r) = root.body_as_report() {
        return Ok(PeerMessage::Report(NodeReport {
            from_node: nonzero("from_node", r.from_node())?,
            uptime_ms: r.uptime_ms(),
            keys: r.keys(),
            log_bytes: r.log_bytes(),
            disk_free_bytes: r.disk_free_bytes(),
            disk_total_bytes: r.disk_total_bytes(),
            replicas_held: r.replicas_held(),
            partitions_led: r.partitions_led().map(|p| p.iter().collect()).unwrap_or_default(),
            log_error: r.log_error().unwrap_or_default().to_owned(),
        }));
    }
    if let Some(c) = root.body_as_snapshot_chunk() {
        let bytes = |v: Option<flatbuffers::Vector<'_, u8>>| {
            v.map_or_else(Bytes::new, |v| frame.slice_ref(v.bytes()))
        };
        return Ok(PeerMessage::SnapshotChunk(SnapshotChunk {
            from_node: nonzero("from_node", c.from_node())?,
            partition: c.partition(),
            index: c.index(),
            offset: c.offset(),
            total: c.total(),
            crc: c.crc(),
            data: bytes(c.data()),
            message: bytes(c.message()),
        }));
    }
    if let Some(a) = root.body_as_join_ask() {
        return Ok(PeerMessage::JoinAsk { from_node: nonzero("from_node", a.from_node())? });
    }
    if let Some(j) = root.body_as_join_info() {
        let bytes = |v: Option<flatbuffers::Vector<'_, u8>>| {
            v.map_or_else(Bytes::new, |v| frame.slice_ref(v.bytes()))
        };
        return Ok(PeerMessage::JoinInfo(JoinInfo {
            members: bytes(j.members()),
            map: bytes(j.map()),
            map_version: j.map_version(),
            partitions: j.partitions(),
            replication_factor: j.replication_factor(),
            cluster_id: j.cluster_id(),
        }));
    }
    Err(format!("peer frame with unknown body type {}", root.body_type().0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let hello =
            PeerMessage::Hello { cluster_id: 7, from_node: 1, to_node: 2, version: PEER_VERSION };
        assert_eq!(decode(&Bytes::from(encode(&hello))), Ok(hello));
        let batch = PeerMessage::Raft {
            from_node: 3,
            to_node: 1,
            messages: vec![
                (0, Bytes::from_static(b"\x08\x01")),
                (1023, Bytes::new()),
                (5, Bytes::from(vec![0xAB; 70_000])),
            ],
        };
        let frame = Bytes::from(encode(&batch));
        let decoded = decode(&frame).unwrap();
        assert_eq!(decoded, batch);
        // Zero-copy: the message bytes are inside the frame.
        let PeerMessage::Raft { messages, .. } = &decoded else { unreachable!() };
        let inside = frame.as_ptr_range();
        assert!(inside.contains(&messages[2].1.as_ptr()));
        for m in [
            PeerMessage::Forward { id: 9, request: Bytes::from_static(b"\x02\0\0\0ab") },
            PeerMessage::Forwarded { id: u64::MAX, response: Bytes::new() },
            PeerMessage::JoinAsk { from_node: 4 },
            PeerMessage::SnapshotChunk(SnapshotChunk {
                from_node: 2,
                partition: 5,
                index: 77,
                offset: 1 << 20,
                total: 3 << 20,
                crc: 0xdead_beef,
                data: Bytes::from(vec![7; 1000]),
                message: Bytes::from_static(b"\x08\x07"),
            }),
            PeerMessage::JoinInfo(JoinInfo {
                members: Bytes::from_static(b"[]"),
                map: Bytes::from_static(b"1 2 3\n"),
                map_version: 12,
                partitions: 8,
                replication_factor: 3,
                cluster_id: 0x1234_5678_9abc,
            }),
            PeerMessage::Report(NodeReport {
                from_node: 3,
                uptime_ms: 1,
                keys: 2,
                log_bytes: 3,
                disk_free_bytes: 4,
                disk_total_bytes: 5,
                replicas_held: 6,
                partitions_led: vec![7, 8],
                log_error: "disk full".into(),
            }),
        ] {
            assert_eq!(decode(&Bytes::from(encode(&m))), Ok(m));
        }
        // A frame cut from a stream by the shared framing decodes the same.
        let mut stream = bytes::BytesMut::from(&frame[..]);
        let cut = crate::frame::take_frame(&mut stream, 1 << 20).unwrap().unwrap();
        assert_eq!(decode(&cut).unwrap(), batch);
    }

    #[test]
    fn refuses_bad_frames() {
        assert!(decode(&Bytes::from_static(b"\x04\0\0\0abcd")).is_err());
        let zero = PeerMessage::Raft { from_node: 0, to_node: 1, messages: vec![] };
        assert_eq!(decode(&Bytes::from(encode(&zero))), Err("peer frame with from_node 0".into()));
        // Every truncation and every single-byte change of a valid frame: an error or a frame,
        // never a panic.
        let valid = encode(&PeerMessage::Raft {
            from_node: 1,
            to_node: 2,
            messages: vec![(1, Bytes::from_static(b"hello")), (2, Bytes::from_static(b"x"))],
        });
        for cut in 0..valid.len() {
            assert!(decode(&Bytes::copy_from_slice(&valid[..cut])).is_err(), "cut at {cut}");
        }
        let hello = PeerMessage::Hello { cluster_id: 1, from_node: 1, to_node: 0, version: 1 };
        assert!(decode(&Bytes::from(encode(&hello))).is_err());
        for at in 0..valid.len() {
            for flip in [0x01u8, 0x80, 0xFF] {
                let mut bad = valid.clone();
                bad[at] ^= flip;
                let _ = decode(&Bytes::from(bad));
            }
        }
    }
}
