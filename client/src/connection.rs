//! One pipelined TCP connection to one port: the only code in the SDK that touches a socket.
//!
//! The stream (TCP_NODELAY) is split between two tasks. Callers of [`Connection::send`] encode
//! their request and hand the frame to the **writer task** over a channel; the writer drains
//! whatever has queued up (up to [`WRITE_COALESCE_BYTES_MAX`]) into one `write` call, and
//! registers each request's reply slot in the in-order queue *before* its bytes leave, so the
//! queue order is the wire order. The **reader task** splits the byte stream into frames and
//! hands each response to the slot at the front of the queue after checking that the ids match.
//!
//! Limits: at most `max_in_flight` requests are unanswered at a time (a semaphore permit travels
//! with each request and is returned when its answer arrives, even if the caller gave up), frames
//! in both directions are bounded by `frame_bytes_max`, and each call by `request_timeout_ms`.
//!
//! Failure: the first I/O error, end of stream, bad frame or id mismatch closes the connection
//! for good. Every waiting caller gets the same error ([`Error::Io`], [`Error::Closed`] or
//! [`Error::Protocol`]), later calls fail at once, and the owner (the pool) replaces it. A
//! request that timed out does not close the connection: its slot stays in the queue and is
//! consumed when its late answer arrives.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{
    Consistency, Durability, Encoder, Op, Reply, Request, Response, decode_response,
};
use corekv_schema::frame::{PREFIX_BYTES, take_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// Bytes of queued frames the writer gathers into one `write` call. A single larger frame is
/// written on its own.
pub const WRITE_COALESCE_BYTES_MAX: usize = 256 * 1024;

/// Bytes the reader asks the kernel for at a time (more when a long frame is partly read).
const READ_CHUNK_BYTES: usize = 64 * 1024;

thread_local! {
    /// One encoder per thread, so encoding runs on the caller's thread, in parallel, and its
    /// FlatBuffers builder is reused instead of allocated per request.
    static ENCODER: RefCell<Encoder> = RefCell::new(Encoder::new());
}

/// A caller's request on its way to the writer task.
struct Outgoing {
    frame: Bytes,
    waiter: Waiter,
}

/// A request on the wire, waiting for its answer.
struct Waiter {
    id: u64,
    reply: oneshot::Sender<Result<Reply>>,
    /// Returned to the window when the waiter is dropped: answered, or failed on close.
    _permit: OwnedSemaphorePermit,
}

/// Why the connection closed; turned into one [`Error`] per waiting caller.
#[derive(Clone, Debug)]
enum CloseReason {
    /// The server closed the stream.
    Eof,
    Io(io::ErrorKind, String),
    Protocol(String),
    /// The last handle to the connection was dropped.
    Dropped,
}

impl CloseReason {
    fn from_io(e: &io::Error) -> CloseReason {
        CloseReason::Io(e.kind(), e.to_string())
    }

    fn to_error(&self) -> Error {
        match self {
            CloseReason::Eof | CloseReason::Dropped => Error::Closed,
            CloseReason::Io(kind, message) => Error::Io(io::Error::new(*kind, message.clone())),
            CloseReason::Protocol(message) => Error::Protocol(message.clone()),
        }
    }
}

/// The in-order queue of requests on the wire, and whether it still accepts any.
struct Queue {
    waiters: VecDeque<Waiter>,
    closed: Option<CloseReason>,
}

/// State shared by the handle and its two tasks.
struct Shared {
    queue: Mutex<Queue>,
    /// Mirrors `queue.closed.is_some()` for the lock-free check at the start of each call.
    closed: AtomicBool,
    /// Set once on close, to stop whichever task is still running.
    closed_signal: watch::Sender<bool>,
    /// The pipelining window.
    permits: Arc<Semaphore>,
}

/// The data under the lock stays consistent across a panic (pushes and pops only), so a
/// poisoned lock is still usable.
fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Closes the connection once; fails every waiter with the first reason.
    fn close(&self, reason: CloseReason) {
        let waiters = {
            let mut queue = lock(&self.queue);
            if queue.closed.is_some() {
                return;
            }
            queue.closed = Some(reason.clone());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut queue.waiters)
        };
        self.permits.close();
        self.closed_signal.send_replace(true);
        for waiter in waiters {
            // The caller may have timed out and gone; nobody to tell then.
            let _ = waiter.reply.send(Err(reason.to_error()));
        }
    }

    fn closed_error(&self) -> Error {
        lock(&self.queue).closed.as_ref().map_or(Error::Closed, CloseReason::to_error)
    }

    /// Appends waiters to the queue, in wire order. After close they are failed instead and
    /// `false` is returned: nothing more may be written.
    fn register(&self, waiters: &mut Vec<Waiter>) -> bool {
        let mut queue = lock(&self.queue);
        if let Some(reason) = &queue.closed {
            let reason = reason.clone();
            drop(queue);
            for waiter in waiters.drain(..) {
                let _ = waiter.reply.send(Err(reason.to_error()));
            }
            return false;
        }
        queue.waiters.extend(waiters.drain(..));
        true
    }

    /// Hands one response frame to the request at the head of the queue. An error closes the
    /// connection; the head waiter has already been told why.
    fn deliver(&self, frame: &Bytes) -> std::result::Result<(), CloseReason> {
        let decoded = decode_response(frame);
        let Some(waiter) = lock(&self.queue).waiters.pop_front() else {
            if let Ok(Response { id: 0, reply: Reply::Error(e), .. }) = &decoded {
                // Refused before any request (too many clients, shutting down).
                let why = format!("the node closed the connection: {}", e.message);
                return Err(CloseReason::Protocol(why));
            }
            let id = decoded.map(|r| r.id.to_string()).unwrap_or_else(|_| "?".into());
            return Err(CloseReason::Protocol(format!(
                "response id {id} arrived with no request outstanding"
            )));
        };
        let message = match decoded {
            Ok(response) if response.id == waiter.id => {
                let _ = waiter.reply.send(Ok(response.reply));
                return Ok(());
            }
            // Id 0: the node's last word before it closes (shutting down, too many clients).
            Ok(response) if response.id == 0 && matches!(response.reply, Reply::Error(_)) => {
                let Reply::Error(e) = response.reply else { unreachable!("matched") };
                let message = format!("the node closed the connection: {}", e.message);
                let _ = waiter.reply.send(Err(e.into()));
                return Err(CloseReason::Protocol(message));
            }
            Ok(response) => format!(
                "response id {} does not match request id {} at the head of the queue",
                response.id, waiter.id
            ),
            Err(e) => format!("undecodable response to request id {}: {e}", waiter.id),
        };
        let _ = waiter.reply.send(Err(Error::Protocol(message.clone())));
        Err(CloseReason::Protocol(message))
    }
}

/// A pipelined connection to one address. Cheap to share behind an `Arc`; every method takes
/// `&self`, and any number of calls may be in flight at once.
pub struct Connection {
    addr: SocketAddr,
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicU64,
    request_timeout_ms: u64,
    frame_bytes_max: usize,
    durability: Durability,
    consistency: Consistency,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Connection {
    /// Opens a connection within `config.connect_timeout_ms`. Must run inside a tokio runtime,
    /// which then also runs the connection's reader and writer tasks.
    pub async fn connect(addr: SocketAddr, config: &ClientConfig) -> Result<Connection> {
        config.validate()?;
        let stream = match tokio::time::timeout(
            Duration::from_millis(config.connect_timeout_ms),
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(Error::Connect { addr, source }),
            Err(_) => {
                let source = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {} ms", config.connect_timeout_ms),
                );
                return Err(Error::Connect { addr, source });
            }
        };
        stream.set_nodelay(true).map_err(|source| Error::Connect { addr, source })?;
        let (read, write) = match &config.tls {
            None => {
                let (read, write) = stream.into_split();
                (Box::new(read) as ReadHalf, Box::new(write) as WriteHalf)
            }
            Some(tls) => {
                let tls = handshake(addr, stream, tls, config.connect_timeout_ms).await?;
                let (read, write) = tokio::io::split(tls);
                (Box::new(read) as ReadHalf, Box::new(write) as WriteHalf)
            }
        };
        let (closed_signal, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiters: VecDeque::with_capacity(config.max_in_flight.min(1024)),
                closed: None,
            }),
            closed: AtomicBool::new(false),
            closed_signal,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
        });
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(run_reader(shared.clone(), read, config.frame_bytes_max));
        let writer = tokio::spawn(run_writer(shared.clone(), outgoing_rx, write));
        let connection = Connection {
            addr,
            shared,
            outgoing,
            next_id: AtomicU64::new(1),
            request_timeout_ms: config.request_timeout_ms,
            frame_bytes_max: config.frame_bytes_max,
            durability: config.durability,
            consistency: config.consistency,
            reader,
            writer,
        };
        if let Some(c) = &config.credentials {
            let op = Op::Authenticate { user: c.user.clone(), password: c.password.clone().into() };
            crate::error::check(connection.send(op).await?)?;
        }
        Ok(connection)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True once the connection has failed; every later call fails at once.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `op` with the configured durability and consistency and waits for its reply.
    /// A server error comes back as `Ok(Reply::Error(..))`; `Err` means no reply was read.
    pub async fn send(&self, op: Op) -> Result<Reply> {
        self.send_with(op, self.durability, self.consistency).await
    }

    /// [`Connection::send`] with an explicit durability and consistency.
    pub async fn send_with(
        &self,
        op: Op,
        durability: Durability,
        consistency: Consistency,
    ) -> Result<Reply> {
        self.send_request(op, durability, consistency, false).await
    }

    /// [`Connection::send_with`], marked `direct` when the caller routed it by the cluster's
    /// topology: a node that does not lead the key's partition then answers `WrongNode` with
    /// the leader and the map instead of forwarding it.
    pub async fn send_request(
        &self,
        op: Op,
        durability: Durability,
        consistency: Consistency,
        direct: bool,
    ) -> Result<Reply> {
        let after_ms = self.request_timeout_ms;
        let call = self.call(Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            op,
            durability,
            consistency,
            direct,
        });
        match tokio::time::timeout(Duration::from_millis(after_ms), call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { after_ms }),
        }
    }

    async fn call(&self, request: Request) -> Result<Reply> {
        if self.is_closed() {
            return Err(self.shared.closed_error());
        }
        let frame = ENCODER.with_borrow_mut(|encoder| {
            let mut out = BytesMut::new();
            encoder.request(&request, &mut out);
            out.freeze()
        });
        let frame_bytes = frame.len().saturating_sub(PREFIX_BYTES);
        if frame_bytes > self.frame_bytes_max {
            return Err(Error::RequestTooLarge {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max,
            });
        }
        let permit = self
            .shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.shared.closed_error())?;
        let (reply, answer) = oneshot::channel();
        let waiter = Waiter { id: request.id, reply, _permit: permit };
        self.outgoing.send(Outgoing { frame, waiter }).map_err(|_| self.shared.closed_error())?;
        // A dropped sender means the connection closed between registration and answer.
        answer.await.unwrap_or_else(|_| Err(self.shared.closed_error()))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close(CloseReason::Dropped);
        self.reader.abort();
        self.writer.abort();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The client side of a TLS handshake with the node at `addr`, within the connect timeout.
async fn handshake(
    addr: SocketAddr,
    stream: TcpStream,
    tls: &crate::config::Tls,
    timeout_ms: u64,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = match &tls.server_name {
        Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| Error::Usage(format!("TLS server name {name:?}: {e}")))?,
        None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let failed = |source| Error::Connect { addr, source };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), connector.connect(name, stream))
        .await
    {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(failed(io::Error::new(e.kind(), format!("TLS handshake: {e}")))),
        Err(_) => Err(failed(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {timeout_ms} ms"),
        ))),
    }
}

async fn run_reader(shared: Arc<Shared>, read: ReadHalf, frame_bytes_max: usize) {
    let mut closed = shared.closed_signal.subscribe();
    tokio::select! {
        biased;
        _ = closed.wait_for(|closed| *closed) => {}
        reason = read_loop(&shared, read, frame_bytes_max) => shared.close(reason),
    }
}

async fn read_loop(shared: &Shared, mut read: ReadHalf, frame_bytes_max: usize) -> CloseReason {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match take_frame(&mut buf, frame_bytes_max) {
                Ok(Some(frame)) => {
                    if let Err(reason) = shared.deliver(&frame) {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(e) => return CloseReason::Protocol(format!("bad frame from server: {e}")),
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => return CloseReason::Eof,
            Ok(_) => {}
            Err(e) => return CloseReason::from_io(&e),
        }
    }
}

async fn run_writer(
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    write: WriteHalf,
) {
    let mut closed = shared.closed_signal.subscribe();
    tokio::select! {
        biased;
        _ = closed.wait_for(|closed| *closed) => {}
        reason = write_loop(&shared, outgoing, write) => {
            if let Some(reason) = reason {
                shared.close(reason);
            }
        }
    }
}

/// Returns why the connection must close, or `None` when it already has.
async fn write_loop(
    shared: &Shared,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    mut write: WriteHalf,
) -> Option<CloseReason> {
    let mut buf = BytesMut::with_capacity(WRITE_COALESCE_BYTES_MAX);
    let mut frames: Vec<Bytes> = Vec::new();
    let mut waiters: Vec<Waiter> = Vec::new();
    loop {
        let Some(first) = outgoing.recv().await else {
            return Some(CloseReason::Dropped);
        };
        let mut bytes = first.frame.len();
        frames.push(first.frame);
        waiters.push(first.waiter);
        while bytes < WRITE_COALESCE_BYTES_MAX {
            let Ok(next) = outgoing.try_recv() else { break };
            bytes += next.frame.len();
            frames.push(next.frame);
            waiters.push(next.waiter);
        }
        // Registered before the bytes leave, so the reader always finds the waiter.
        if !shared.register(&mut waiters) {
            return None;
        }
        let written = match frames.as_slice() {
            [single] => write.write_all(single).await,
            many => {
                buf.clear();
                for frame in many {
                    buf.extend_from_slice(frame);
                }
                write.write_all(&buf).await
            }
        };
        // TLS holds records until flushed (a no-op on plain TCP).
        let written = match written {
            Ok(()) => write.flush().await,
            Err(e) => Err(e),
        };
        frames.clear();
        if let Err(e) = written {
            return Some(CloseReason::from_io(&e));
        }
        // One huge batch should not pin its buffer for the life of the connection.
        if buf.capacity() > 4 * WRITE_COALESCE_BYTES_MAX {
            buf = BytesMut::with_capacity(WRITE_COALESCE_BYTES_MAX);
        }
    }
}
