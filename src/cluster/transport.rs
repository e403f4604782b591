//! Node-to-node links: Raft message batches and forwarded client requests, as `peer.fbs`
//! frames over TCP.
//!
//! Outgoing: every core keeps one link to every other node ([`Links`]): a task that connects
//! (retrying with back-off), says `Hello`, then writes the frames queued for it, and a reader
//! for the `Forwarded` answers that come back on the same connection. The queue is bounded;
//! when it is full or the link is down, Raft batches are dropped (Raft resends) and forwards
//! fail at once with `Unavailable`, so nothing waits on a dead peer.
//!
//! Incoming (`net::peer`): every core accepts on `--cluster-listen`. A Raft batch is split by
//! partition and handed to the core that owns each one (over the mesh when it is another
//! core). A forwarded request is run as if a client had sent it here, marked as forwarded so
//! it is never forwarded again, and its answer is written back on the link.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{Consistency, ErrorCode, Op, Reply, Request, decode_response};
use corekv_schema::frame::take_frame;
use corekv_schema::peer::{self, BATCH_MESSAGES_MAX, PEER_VERSION, PeerMessage, SnapshotChunk};
use futures_lite::{AsyncReadExt, future};
use glommio::net::TcpStream;
use protobuf::Message as _;
use raft::eraftpb::Message;
use rustls::ClientConfig;

use super::RaftCounters;
use crate::counters::{bump, bump_by};
use crate::tls::{Reloading, Stream, node_name, send_all};
use crate::waiting::{Waits, Wake};

/// How a link says who it is: this cluster's id, and with peer TLS the client side of the
/// handshake (the other node must show a certificate naming it).
#[derive(Clone)]
pub struct Credentials {
    pub cluster_id: u64,
    pub tls: Option<Rc<Reloading<ClientConfig>>>,
}

/// Frames queued per link before more are dropped (Raft) or refused (forwards).
pub(crate) const LINK_QUEUE_FRAMES: usize = 4096;
/// Largest answer read on a link this node dialled (a forwarded request's reply, which may
/// hold many values).
pub const PEER_FRAME_BYTES_MAX: usize = 256 << 20;

/// Largest frame read on a link another node opened. Snapshots travel in pieces
/// ([`SNAPSHOT_CHUNK_BYTES`]) and Raft batches are cut at [`RAFT_FRAME_BYTES`], so only a
/// single Raft entry or a forwarded request, each at most a client's largest frame, makes a
/// frame larger than that; a megabyte covers the envelope.
pub fn incoming_frame_bytes_max(limits: &corekv_schema::frame::Limits) -> usize {
    limits.frame_bytes_max.max(RAFT_FRAME_BYTES) + (1 << 20)
}
/// Raft messages per frame are cut at about this many bytes.
const RAFT_FRAME_BYTES: usize = 8 << 20;
/// Bytes of snapshot data per piece.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshots one core sends at once; more wait their turn.
pub const SNAPSHOT_STREAMS_MAX: usize = 2;
/// Most snapshot bytes per second one core sends, so that a snapshot never starves the link
/// of the Raft traffic and forwards sharing it.
pub const SNAPSHOT_BYTES_PER_S: u64 = 128 << 20;
/// Snapshot pieces a stream lets wait in a link's queue.
const SNAPSHOT_PIECES_QUEUED: usize = 4;
/// How long a forwarded request may take before the caller gives up on it.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// A node link's TLS handshake must complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Frames waiting for a link's writer; bounded by [`LINK_QUEUE_FRAMES`].
#[derive(Default)]
struct Outbox {
    frames: RefCell<VecDeque<Vec<u8>>>,
    wake: Wake,
}

impl Outbox {
    fn try_send(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        let mut frames = self.frames.borrow_mut();
        if frames.len() >= LINK_QUEUE_FRAMES {
            return Err(frame);
        }
        frames.push_back(frame);
        drop(frames);
        self.wake.notify();
        Ok(())
    }

    /// Everything queued (at least one frame), as one buffer.
    async fn take(&self) -> Vec<u8> {
        loop {
            if let Some(batch) = self.take_now() {
                return batch;
            }
            self.wake.wait().await;
        }
    }

    fn take_now(&self) -> Option<Vec<u8>> {
        let mut frames = self.frames.borrow_mut();
        let mut batch = frames.pop_front()?;
        while batch.len() < (1 << 20) {
            match frames.pop_front() {
                Some(more) => batch.extend_from_slice(&more),
                None => break,
            }
        }
        Some(batch)
    }

    fn clear(&self) {
        self.frames.borrow_mut().clear();
    }

    fn len(&self) -> usize {
        self.frames.borrow().len()
    }
}

struct Link {
    tx: Rc<Outbox>,
    up: Rc<Cell<bool>>,
}

/// This core's links to the other nodes: those it started with, and members added since
/// ([`Links::ensure`]).
pub struct Links {
    node: u64,
    credentials: Credentials,
    links: RefCell<HashMap<u64, Link>>,
    /// Forwards waiting for their answers, by id.
    pub waits: Rc<Waits<Reply>>,
    /// The driver's counters: links count the Raft frames they drop.
    counters: Rc<RaftCounters>,
    /// Snapshot streams under way.
    streams: Rc<Cell<usize>>,
    /// No sockets (the simulation): snapshots are queued whole, at once.
    simulated: bool,
}

impl Links {
    /// Starts a link task per other node (on the calling executor).
    pub fn start(
        node: u64,
        nodes: &[(u64, SocketAddr)],
        credentials: Credentials,
        waits: Rc<Waits<Reply>>,
        counters: Rc<RaftCounters>,
    ) -> Links {
        let links = Links {
            node,
            credentials,
            links: RefCell::new(HashMap::new()),
            waits,
            counters,
            streams: Rc::new(Cell::new(0)),
            simulated: false,
        };
        for &(peer, addr) in nodes {
            links.ensure(peer, addr);
        }
        links
    }

    /// Starts a link to `peer` at `addr` unless there is one (on the calling executor).
    pub fn ensure(&self, peer: u64, addr: SocketAddr) {
        if peer == self.node || self.links.borrow().contains_key(&peer) {
            return;
        }
        let tx = Rc::new(Outbox::default());
        let rx = tx.clone();
        let up = Rc::new(Cell::new(false));
        let waits = self.waits.clone();
        let who = self.credentials.clone();
        glommio::spawn_local(run_link(self.node, peer, addr, who, rx, up.clone(), waits)).detach();
        self.links.borrow_mut().insert(peer, Link { tx, up });
        tracing::info!(peer, %addr, "linking to a new member");
    }

    /// Links with no sockets behind them, for the simulation: what is sent to a peer waits
    /// in its queue until [`Links::drain`] takes it, and `set_up` plays the cable.
    #[cfg(test)]
    pub fn simulated(
        node: u64,
        peers: &[u64],
        waits: Rc<Waits<Reply>>,
        counters: Rc<RaftCounters>,
    ) -> Links {
        let links = peers
            .iter()
            .filter(|p| **p != node)
            .map(|&p| (p, Link { tx: Rc::new(Outbox::default()), up: Rc::new(Cell::new(true)) }))
            .collect();
        let streams = Rc::new(Cell::new(0));
        let credentials = Credentials { cluster_id: 1, tls: None };
        let links = RefCell::new(links);
        Links { node, credentials, links, waits, counters, streams, simulated: true }
    }

    /// The frames queued for `peer` (simulation).
    #[cfg(test)]
    pub fn drain(&self, peer: u64) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(batch) = self.links.borrow().get(&peer).and_then(|l| l.tx.take_now()) {
            all.extend_from_slice(&batch);
        }
        all
    }

    /// Connects or cuts the link to `peer` (simulation); a cut link drops what it held.
    #[cfg(test)]
    pub fn set_up(&self, peer: u64, up: bool) {
        if let Some(l) = self.links.borrow().get(&peer) {
            l.up.set(up);
            if !up {
                l.tx.clear();
            }
        }
    }

    pub fn is_up(&self, peer: u64) -> bool {
        self.links.borrow().get(&peer).is_some_and(|l| l.up.get())
    }

    /// Queues one frame for `peer`; false when it was dropped (link down or full).
    pub fn send_frame(&self, peer: u64, frame: Vec<u8>) -> bool {
        self.links.borrow().get(&peer).is_some_and(|l| l.up.get() && l.tx.try_send(frame).is_ok())
    }

    /// Queues Raft messages for `peer`; false when they were dropped (link down or full).
    pub fn send_raft(&self, peer: u64, messages: Vec<(u32, Bytes)>) -> bool {
        let links = self.links.borrow();
        let Some(link) = links.get(&peer) else { return false };
        let mut sent = true;
        for chunk in by_size(&messages) {
            let frame = peer::encode(&PeerMessage::Raft {
                from_node: self.node,
                to_node: peer,
                messages: chunk.to_vec(),
            });
            if !link.up.get() || link.tx.try_send(frame).is_err() {
                bump(&self.counters.link_frames_dropped);
                sent = false;
            }
        }
        sent
    }

    /// Streams a snapshot of `partition` at `index` to `peer`: its data in checked pieces,
    /// then `message` (the MsgSnapshot without its data); see `peer.fbs`. Paced, and at most
    /// [`SNAPSHOT_STREAMS_MAX`] at a time from this core. A stream whose link goes down is
    /// dropped: the leader sends the snapshot again.
    pub fn send_snapshot(
        &self,
        peer: u64,
        partition: u32,
        index: u64,
        message: Bytes,
        data: Bytes,
    ) {
        let Some((tx, up)) = self.links.borrow().get(&peer).map(|l| (l.tx.clone(), l.up.clone()))
        else {
            return;
        };
        let pieces = snapshot_pieces(self.node, partition, index, message, data);
        if self.simulated {
            for piece in pieces {
                let _ = tx.try_send(piece);
            }
            return;
        }
        let (streams, counters) = (self.streams.clone(), self.counters.clone());
        glommio::spawn_local(async move {
            while streams.get() >= SNAPSHOT_STREAMS_MAX {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            streams.set(streams.get() + 1);
            let _turn = Turn(streams);
            let started = std::time::Instant::now();
            let mut sent = 0u64;
            for piece in pieces {
                while tx.len() >= SNAPSHOT_PIECES_QUEUED && up.get() {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                let len = piece.len() as u64;
                if !up.get() || tx.try_send(piece).is_err() {
                    tracing::warn!(
                        peer,
                        partition,
                        index,
                        "snapshot stream cut: link down or full"
                    );
                    return;
                }
                sent += len;
                bump_by(&counters.snapshot_bytes_sent, len);
                let due = Duration::from_secs_f64(sent as f64 / SNAPSHOT_BYTES_PER_S as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    glommio::timer::sleep(wait).await;
                }
            }
        })
        .detach();
    }

    /// Sends a client request to `peer` to run there and waits for its answer. `Err` when it
    /// could not be sent (no link, or the link's queue is full): nothing happened there. An
    /// answer that does not come in time is `OutcomeUnknown`.
    pub async fn forward(
        &self,
        peer: u64,
        op: Op,
        consistency: Consistency,
    ) -> Result<Reply, Reply> {
        let Some((tx, up)) = self.links.borrow().get(&peer).map(|l| (l.tx.clone(), l.up.clone()))
        else {
            return Err(Reply::error(ErrorCode::Unavailable, format!("no link to node {peer}")));
        };
        if !up.get() {
            return Err(Reply::error(ErrorCode::Unavailable, format!("no link to node {peer}")));
        }
        let id = self.waits.open();
        let mut request = Request::new(id, op);
        request.consistency = consistency;
        let mut frame = BytesMut::new();
        super::command::with_encoder(|e| e.request(&request, &mut frame));
        let frame = peer::encode(&PeerMessage::Forward { id, request: frame.freeze() });
        if tx.try_send(frame).is_err() {
            self.waits.cancel(id);
            let full = format!("link to node {peer} is full");
            return Err(Reply::error(ErrorCode::Unavailable, full));
        }
        Ok(match self.waits.wait(id, FORWARD_TIMEOUT).await {
            Some(reply) => reply,
            None => Reply::error(
                ErrorCode::OutcomeUnknown,
                format!(
                    "node {peer} did not answer a forwarded request in time; it may or may not \
                     have been applied"
                ),
            ),
        })
    }
}

/// Gives a snapshot stream's turn back when the stream ends, however it ends.
struct Turn(Rc<Cell<usize>>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Raft messages in frames of about [`RAFT_FRAME_BYTES`] and at most [`BATCH_MESSAGES_MAX`]
/// messages (a single larger message goes alone).
fn by_size(messages: &[(u32, Bytes)]) -> Vec<&[(u32, Bytes)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, m)) in messages.iter().enumerate() {
        let full = i - start == BATCH_MESSAGES_MAX || bytes + m.len() > RAFT_FRAME_BYTES;
        if full && i > start {
            out.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.len();
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

/// A snapshot's frames: its data in pieces of [`SNAPSHOT_CHUNK_BYTES`] with their crcs, the
/// message on the last (an empty snapshot is one piece).
fn snapshot_pieces(
    node: u64,
    partition: u32,
    index: u64,
    message: Bytes,
    data: Bytes,
) -> Vec<Vec<u8>> {
    let total = data.len() as u64;
    let mut offsets: Vec<usize> = (0..data.len()).step_by(SNAPSHOT_CHUNK_BYTES).collect();
    if offsets.is_empty() {
        offsets.push(0);
    }
    let last = offsets.len() - 1;
    offsets
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            let piece = data.slice(at..(at + SNAPSHOT_CHUNK_BYTES).min(data.len()));
            peer::encode(&PeerMessage::SnapshotChunk(SnapshotChunk {
                from_node: node,
                partition,
                index,
                offset: at as u64,
                total,
                crc: crc32c::crc32c(&piece),
                data: piece,
                message: if i == last { message.clone() } else { Bytes::new() },
            }))
        })
        .collect()
}

/// Joins the pieces of the snapshots coming in on one link (one per partition at a time).
#[derive(Default)]
pub struct SnapshotAssembly {
    partial: HashMap<u32, (u64, u64, BytesMut)>,
}

impl SnapshotAssembly {
    /// Takes one piece. When it was the last: the partition and the whole Raft message,
    /// data restored, ready to deliver. A piece out of order or damaged drops its snapshot.
    pub fn take(&mut self, c: SnapshotChunk) -> Result<Option<(u32, Bytes)>, String> {
        let p = c.partition;
        let fail = |this: &mut Self, why: String| {
            this.partial.remove(&p);
            Err(format!("partition {p}: snapshot at {} dropped: {why}", c.index))
        };
        if crc32c::crc32c(&c.data) != c.crc {
            return fail(self, format!("piece at {} fails its crc", c.offset));
        }
        if c.offset == 0 {
            // Reserve what a first piece proves, not what a header claims.
            let room = (c.total as usize).min(64 << 20);
            self.partial.insert(p, (c.index, c.total, BytesMut::with_capacity(room)));
        }
        let Some((index, total, data)) = self.partial.get_mut(&p) else {
            return fail(self, format!("piece at {} without the ones before", c.offset));
        };
        if *index != c.index || *total != c.total || data.len() as u64 != c.offset {
            return fail(self, format!("piece at {} out of order", c.offset));
        }
        if data.len() as u64 + c.data.len() as u64 > *total {
            return fail(self, "more data than announced".into());
        }
        data.extend_from_slice(&c.data);
        if c.message.is_empty() {
            return Ok(None);
        }
        let (_, total, data) = self.partial.remove(&p).expect("present");
        if data.len() as u64 != total {
            return Err(format!(
                "partition {p}: snapshot ended at {} of {total} bytes",
                data.len()
            ));
        }
        let mut m = Message::parse_from_bytes(&c.message)
            .map_err(|e| format!("partition {p}: snapshot message: {e}"))?;
        m.mut_snapshot().data = data.freeze();
        let bytes = m.write_to_bytes().map_err(|e| format!("partition {p}: {e}"))?;
        Ok(Some((p, Bytes::from(bytes))))
    }
}

/// Connects to `peer`, with the TLS handshake when node links use it.
async fn connect(peer: u64, addr: SocketAddr, who: &Credentials) -> Result<Stream, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &who.tls else { return Ok(Stream::Plain(tcp)) };
    let connector = futures_rustls::TlsConnector::from(tls.get());
    let handshake = async { Some(connector.connect(node_name(peer), tcp).await) };
    let late = async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        None
    };
    match future::or(handshake, late).await {
        Some(Ok(s)) => Ok(Stream::Client(Box::new(s))),
        Some(Err(e)) => Err(format!("TLS handshake: {e}")),
        None => Err("TLS handshake timed out".into()),
    }
}

async fn run_link(
    node: u64,
    peer: u64,
    addr: SocketAddr,
    who: Credentials,
    rx: Rc<Outbox>,
    up: Rc<Cell<bool>>,
    waits: Rc<Waits<Reply>>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut said = String::new();
    loop {
        let stream = match connect(peer, addr, &who).await {
            Ok(s) => s,
            Err(e) => {
                if e != said && !e.contains("onnection refused") {
                    tracing::warn!(peer, %addr, error = %e, "link not made");
                }
                said = e;
                // Frames queued while down are stale: Raft resends what still matters.
                rx.clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        said.clear();
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let hello = peer::encode(&PeerMessage::Hello {
            cluster_id: who.cluster_id,
            from_node: node,
            to_node: peer,
            version: PEER_VERSION,
        });
        if send_all(&mut writer, &hello).await.is_err() {
            glommio::timer::sleep(backoff).await;
            continue;
        }
        backoff = RECONNECT_MIN;
        up.set(true);
        tracing::info!(peer, %addr, "link up");
        let answers = waits.clone();
        let read = async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                while let Ok(Some(frame)) = take_frame(&mut buf, PEER_FRAME_BYTES_MAX) {
                    if let Ok(PeerMessage::Forwarded { id, response }) = peer::decode(&frame) {
                        let reply = match decode_response(&response) {
                            Ok(r) => r.reply,
                            Err(e) => {
                                Reply::error(ErrorCode::Internal, format!("forwarded answer: {e}"))
                            }
                        };
                        answers.complete(id, reply);
                    }
                }
                if read_some(&mut reader, &mut buf).await == 0 {
                    return;
                }
            }
        };
        let write = async {
            loop {
                // Whatever is queued goes out in one write.
                let batch = rx.take().await;
                if send_all(&mut writer, &batch).await.is_err() {
                    return;
                }
            }
        };
        future::or(read, write).await;
        up.set(false);
        tracing::warn!(peer, %addr, "link down; reconnecting");
        glommio::timer::sleep(backoff).await;
    }
}

/// Reads what the socket has into `buf`; 0 at end of stream or on error.
pub(crate) async fn read_some<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> usize {
    let mut chunk = [0u8; 64 << 10];
    match reader.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces_of(data: &[u8]) -> Vec<SnapshotChunk> {
        let mut m = Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        m.mut_snapshot().mut_metadata().index = 42;
        let message = Bytes::from(m.write_to_bytes().unwrap());
        snapshot_pieces(2, 7, 42, message, Bytes::copy_from_slice(data))
            .into_iter()
            .map(|frame| match peer::decode(&Bytes::from(frame)).unwrap() {
                PeerMessage::SnapshotChunk(c) => c,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn joined(whole: Option<(u32, Bytes)>) -> Message {
        let (p, bytes) = whole.expect("the last piece completes it");
        assert_eq!(p, 7);
        Message::parse_from_bytes(&bytes).unwrap()
    }

    #[test]
    fn a_snapshot_goes_in_checked_pieces_and_comes_back_whole() {
        let data: Vec<u8> = (0..(2 * SNAPSHOT_CHUNK_BYTES + 123)).map(|i| i as u8).collect();
        let pieces = pieces_of(&data);
        assert_eq!(pieces.len(), 3);
        assert!(pieces[..2].iter().all(|p| p.message.is_empty()) && !pieces[2].message.is_empty());
        let mut a = SnapshotAssembly::default();
        assert_eq!(a.take(pieces[0].clone()), Ok(None));
        assert_eq!(a.take(pieces[1].clone()), Ok(None));
        let m = joined(a.take(pieces[2].clone()).unwrap());
        assert_eq!(m.get_snapshot().get_metadata().index, 42);
        assert_eq!(&m.get_snapshot().data[..], &data[..]);
        // An empty snapshot is one piece.
        let empty = pieces_of(&[]);
        assert_eq!(empty.len(), 1);
        assert!(joined(a.take(empty[0].clone()).unwrap()).get_snapshot().data.is_empty());
    }

    #[test]
    fn a_damaged_missing_or_short_piece_drops_the_snapshot() {
        let data = vec![9u8; SNAPSHOT_CHUNK_BYTES * 2 + 5];
        let pieces = pieces_of(&data);
        let mut a = SnapshotAssembly::default();
        let mut bad = pieces[1].clone();
        bad.data = Bytes::from(vec![8u8; bad.data.len()]);
        a.take(pieces[0].clone()).unwrap();
        assert!(a.take(bad).unwrap_err().contains("crc"));
        // What came before the damage is gone: the rest cannot complete it.
        assert!(a.take(pieces[2].clone()).unwrap_err().contains("without the ones before"));
        a.take(pieces[0].clone()).unwrap();
        assert!(a.take(pieces[2].clone()).unwrap_err().contains("out of order"));
        let mut short = pieces[2].clone();
        short.total += 10;
        short.offset = 0;
        short.crc = crc32c::crc32c(&short.data);
        assert!(a.take(short).unwrap_err().contains("ended at"));
        // A new stream starts over whatever was half done.
        a.take(pieces[0].clone()).unwrap();
        a.take(pieces[0].clone()).unwrap();
        a.take(pieces[1].clone()).unwrap();
        assert_eq!(&joined(a.take(pieces[2].clone()).unwrap()).get_snapshot().data[..], &data[..]);
    }

    #[test]
    fn raft_frames_are_cut_by_size_and_count() {
        let big = |n: usize| (0u32, Bytes::from(vec![0u8; n]));
        let messages = vec![big(5 << 20), big(5 << 20), big(20 << 20), big(1)];
        let cut: Vec<usize> = by_size(&messages).iter().map(|c| c.len()).collect();
        assert_eq!(cut, vec![1, 1, 1, 1]);
        let small: Vec<(u32, Bytes)> = (0..BATCH_MESSAGES_MAX + 3).map(|_| big(10)).collect();
        let cut: Vec<usize> = by_size(&small).iter().map(|c| c.len()).collect();
        assert_eq!(cut, vec![BATCH_MESSAGES_MAX, 3]);
        assert!(by_size(&[]).is_empty());
    }
}
