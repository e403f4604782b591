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
use corekv_schema::peer::{self, BATCH_MESSAGES_MAX, PEER_VERSION, PeerMessage};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::net::TcpStream;

use super::RaftCounters;
use crate::counters::bump;
use crate::waiting::{Waits, Wake};

/// Frames queued per link before more are dropped (Raft) or refused (forwards).
pub(crate) const LINK_QUEUE_FRAMES: usize = 4096;
/// Largest peer frame read: a snapshot of a partition travels in one.
pub const PEER_FRAME_BYTES_MAX: usize = 1 << 30;
/// How long a forwarded request may take before the caller gives up on it.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
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
}

struct Link {
    tx: Rc<Outbox>,
    up: Rc<Cell<bool>>,
}

/// This core's links to the other nodes: those it started with, and members added since
/// ([`Links::ensure`]).
pub struct Links {
    node: u64,
    links: RefCell<HashMap<u64, Link>>,
    /// Forwards waiting for their answers, by id.
    pub waits: Rc<Waits<Reply>>,
    /// The driver's counters: links count the Raft frames they drop.
    counters: Rc<RaftCounters>,
}

impl Links {
    /// Starts a link task per other node (on the calling executor).
    pub fn start(
        node: u64,
        nodes: &[(u64, SocketAddr)],
        waits: Rc<Waits<Reply>>,
        counters: Rc<RaftCounters>,
    ) -> Links {
        let links = Links { node, links: RefCell::new(HashMap::new()), waits, counters };
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
        glommio::spawn_local(run_link(self.node, peer, addr, rx, up.clone(), waits)).detach();
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
        Links { node, links: RefCell::new(links), waits, counters }
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
        for chunk in messages.chunks(BATCH_MESSAGES_MAX) {
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

async fn run_link(
    node: u64,
    peer: u64,
    addr: SocketAddr,
    rx: Rc<Outbox>,
    up: Rc<Cell<bool>>,
    waits: Rc<Waits<Reply>>,
) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                // Frames queued while down are stale: Raft resends what still matters.
                rx.clear();
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let hello = peer::encode(&PeerMessage::Hello {
            cluster_id: 0,
            from_node: node,
            to_node: peer,
            version: PEER_VERSION,
        });
        if writer.write_all(&hello).await.is_err() {
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
                if writer.write_all(&batch).await.is_err() {
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
