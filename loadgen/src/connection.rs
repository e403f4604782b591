//! One connection's loop: keep the window of requests in flight full, pair replies with requests,
//! time them, and survive the connection going away.
//!
//! A single task owns the socket. Each turn of the loop it (1) starts every request it may start
//! now, encoding them into one output buffer, (2) waits for whichever comes first: bytes to read,
//! room to write that buffer (one `write` for the whole batch), or the next deadline, and (3)
//! accounts for every complete reply. Reading and writing are never blocked on each other, so a
//! deep pipeline cannot deadlock against a server that writes replies before reading more.
//!
//! When a request *starts* decides how it is timed and where it is counted:
//! - closed loop: it starts when the window has room, and is written in the same turn;
//! - open loop: it starts at its intended time from [`Schedule`], even if the window is full
//!   then and it goes out later (coordinated-omission correction);
//! - it is counted as warmup or measured by its start time, and no request starts at or after
//!   the end of the run. Replies are awaited for a bounded grace period after that; requests still
//!   unanswered then are errors.
//!
//! If the connection drops, its requests in flight are errors; it then reconnects until the run
//! ends (main run) or stops with a message (preload).
//!
//! Outcomes are buffered as plain samples and recorded into the shared [`Totals`] every
//! [`FLUSH_INTERVAL`] (or [`SAMPLES_MAX`] samples), so the hot path takes no lock, and memory
//! follows the request rate rather than the number of connections (no histogram per connection).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::protocol::{Driver, ProtocolError};
use crate::schedule::Schedule;
use crate::stats::{Outcome, Stats};
use crate::workload::{KeyFormat, OpKind, Workload};

/// How often a connection records its buffered samples into the shared totals.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Most samples a connection buffers before recording them, whatever the time.
pub const SAMPLES_MAX: usize = 4096;
/// Longest wait for one connect attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnect attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Bytes the read buffer grows by when it runs low.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Initial capacity of the output buffer; it grows to the largest batch written.
const WRITE_BUFFER_BYTES: usize = 4 * 1024;

/// Statistics of a run, split by the phase in which each request started.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub warmup: Stats,
    pub measured: Stats,
}

impl Totals {
    pub(crate) fn record(&mut self, sample: Sample) {
        let phase = if sample.measured { &mut self.measured } else { &mut self.warmup };
        phase.record(sample.kind, sample.latency, sample.outcome);
    }

    /// Completed operations (hits plus misses) over both phases.
    pub fn count(&self) -> u64 {
        self.warmup.count() + self.measured.count()
    }

    pub fn errors(&self) -> u64 {
        self.warmup.errors() + self.measured.errors()
    }
}

/// The timeline every connection of one phase (preload or run) shares.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Origin of the open-loop schedule.
    pub start: Instant,
    /// Requests starting at or after this are measured; earlier ones are warmup.
    pub measure_start: Instant,
    /// No request starts at or after this.
    pub send_end: Instant,
    /// How long after `send_end` replies are still awaited.
    pub grace: Duration,
    /// Give up on a connection that has requests in flight and no reply for this long.
    pub stall_limit: Option<Duration>,
    /// Reconnect after losing the connection (until `send_end`), rather than stop.
    pub reconnect: bool,
}

/// Where a connection's operations come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The measured mix, without end.
    Mix(Workload),
    /// SET of keys `next, next + step, ...` below `end` (preload).
    Keys { next: u64, step: u64, end: u64 },
}

impl Source {
    pub(crate) fn next(&mut self) -> Option<(OpKind, u64)> {
        match self {
            Source::Mix(w) => Some(w.next()),
            Source::Keys { next, step, end } => {
                if *next >= *end {
                    return None;
                }
                let key = *next;
                *next = next.saturating_add(*step);
                Some((OpKind::Set, key))
            }
        }
    }
}

/// One outcome waiting to be recorded.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) kind: OpKind,
    /// Started inside the measured window (else: warmup).
    pub(crate) measured: bool,
    pub(crate) latency: Duration,
    pub(crate) outcome: Outcome,
}

/// A request written (or about to be) and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Pending {
    id: u64,
    kind: OpKind,
    /// Intended send time (open loop) or actual start (closed loop); latency is measured from it.
    start: Instant,
}

/// Why a session with the server ended early.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("connection closed by the server")]
    Closed,
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("no reply for {} s", .0.as_secs())]
    Stalled(Duration),
}

/// What a connection is given.
pub struct Setup {
    pub index: usize,
    pub addr: String,
    pub tls: Option<corekv_client::Tls>,
    pub login: Option<Login>,
    pub source: Source,
    /// `Some` for an open loop.
    pub schedule: Option<Schedule>,
    /// Most requests in flight.
    pub window: usize,
    pub key_format: KeyFormat,
    pub value: Bytes,
    pub plan: Plan,
    pub shared: Arc<Mutex<Totals>>,
    pub consistency: corekv_schema::codec::Consistency,
}

/// Everything one connection owns.
pub struct Connection<D> {
    setup: Setup,
    driver: D,
    inflight: VecDeque<Pending>,
    /// Requests started so far; the open-loop schedule index of the next one, and the id of
    /// the last one sent (ids start at 1).
    seq: u64,
    exhausted: bool,
    key: Vec<u8>,
    /// Outcomes not yet recorded into `setup.shared`.
    samples: Vec<Sample>,
    last_flush: Instant,
}

impl<D: Driver + Default> Connection<D> {
    pub fn new(setup: Setup) -> Connection<D> {
        assert!(setup.window >= 1, "a connection needs room for one request");
        let mut driver = D::default();
        driver.set_consistency(setup.consistency);
        Connection {
            driver,
            inflight: VecDeque::with_capacity(setup.window),
            seq: 0,
            exhausted: false,
            key: vec![0; setup.key_format.size_bytes()],
            samples: Vec::with_capacity(256),
            last_flush: Instant::now(),
            setup,
        }
    }

    /// Drives the connection until its source is exhausted or the run ends, then records the last
    /// of its samples.
    pub async fn run(mut self, stream: Socket) {
        let mut stream = stream;
        loop {
            let lost = match self.session(&mut stream).await {
                Ok(()) => break,
                Err(lost) => lost,
            };
            let why = lost.to_string();
            self.fail_inflight(&why);
            self.flush(Instant::now());
            let n = self.setup.index;
            if !self.setup.plan.reconnect {
                eprintln!("connection {n}: {why}; stopping this connection");
                break;
            }
            if self.exhausted || Instant::now() >= self.setup.plan.send_end {
                eprintln!("connection {n}: {why}");
                break;
            }
            eprintln!("connection {n}: {why}; reconnecting");
            match self.reconnect().await {
                Some(s) => stream = s,
                None => break,
            }
        }
        self.flush(Instant::now());
    }

    async fn reconnect(&mut self) -> Option<Socket> {
        let n = self.setup.index;
        let mut reported = false;
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            let now = Instant::now();
            if now >= self.setup.plan.send_end {
                eprintln!(
                    "connection {n}: run ended before reconnecting; stopping this connection"
                );
                return None;
            }
            let limit = CONNECT_TIMEOUT.min(self.setup.plan.send_end - now);
            let (tls, login) = (self.setup.tls.as_ref(), self.setup.login.as_ref());
            match connect(&self.setup.addr, tls, login, limit).await {
                Ok(s) => {
                    eprintln!("connection {n}: reconnected");
                    return Some(s);
                }
                Err(e) if !reported => {
                    eprintln!(
                        "connection {n}: cannot reconnect to {}: {e}; retrying",
                        self.setup.addr
                    );
                    reported = true;
                }
                Err(_) => {}
            }
        }
    }

    async fn session(&mut self, stream: &mut Socket) -> Result<(), Lost> {
        self.driver = D::default();
        self.driver.set_consistency(self.setup.consistency);
        let tls = matches!(stream, Socket::Tls(_));
        // TLS keeps written records until flushed; plain TCP has nothing to flush.
        let mut unflushed = false;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut inb = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let mut out = BytesMut::with_capacity(WRITE_BUFFER_BYTES);
        let grace_end = self.setup.plan.send_end + self.setup.plan.grace;
        // Last time the connection was not waiting on the server: a reply came, or none was due.
        let mut last_reply = Instant::now();
        let mut wake = grace_end;
        let sleep = tokio::time::sleep_until(wake);
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            if now >= self.last_flush + FLUSH_INTERVAL {
                self.flush(now);
            }
            if self.inflight.is_empty() {
                last_reply = now;
            }
            self.fill(now, &mut out);
            let sending = !self.exhausted && now < self.setup.plan.send_end;
            if !sending && self.inflight.is_empty() {
                return Ok(());
            }
            if now >= grace_end {
                let why =
                    format!("no reply within {} s after the run", self.setup.plan.grace.as_secs());
                self.fail_inflight(&why);
                return Ok(());
            }
            if let Some(limit) = self.setup.plan.stall_limit
                && !self.inflight.is_empty()
                && now >= last_reply + limit
            {
                return Err(Lost::Stalled(limit));
            }

            let next_wake = self.next_wake(sending, grace_end, last_reply);
            if next_wake != wake {
                wake = next_wake;
                sleep.as_mut().reset(wake);
            }
            if inb.capacity() - inb.len() < READ_CHUNK_BYTES / 4 {
                inb.reserve(READ_CHUNK_BYTES);
            }
            let event = tokio::select! {
                r = rd.read_buf(&mut inb) => Event::Read(r),
                e = write_or_flush(&mut wr, &out), if !out.is_empty() || unflushed => e,
                () = &mut sleep => Event::Wake,
            };
            match event {
                Event::Read(Ok(0)) => return Err(Lost::Closed),
                Event::Read(Ok(_)) => {
                    let now = Instant::now();
                    if self.take_replies(&mut inb, now)? > 0 {
                        last_reply = now;
                    }
                }
                Event::Wrote(Ok(0)) => return Err(Lost::Closed),
                Event::Wrote(Ok(n)) => {
                    out.advance(n);
                    unflushed = tls;
                }
                Event::Flushed(Ok(())) => unflushed = false,
                Event::Read(Err(e)) | Event::Wrote(Err(e)) | Event::Flushed(Err(e)) => {
                    return Err(Lost::Io(e));
                }
                Event::Wake => {}
            }
        }
    }

    /// The earliest moment the loop must look again without any I/O happening.
    fn next_wake(&self, sending: bool, grace_end: Instant, last_reply: Instant) -> Instant {
        let mut wake = self.last_flush + FLUSH_INTERVAL;
        if sending {
            wake = wake.min(self.setup.plan.send_end);
            if let Some(s) = &self.setup.schedule
                && self.inflight.len() < self.setup.window
            {
                wake = wake.min(self.setup.plan.start + s.intended_offset(self.seq));
            }
        } else {
            wake = wake.min(grace_end);
        }
        if let Some(limit) = self.setup.plan.stall_limit {
            wake = wake.min(last_reply + limit);
        }
        wake
    }

    /// Starts every request that may start at `now`, encoding them into `out`.
    fn fill(&mut self, now: Instant, out: &mut BytesMut) {
        while !self.exhausted && self.inflight.len() < self.setup.window {
            let start = match &self.setup.schedule {
                None => now,
                Some(s) => {
                    let intended = self.setup.plan.start + s.intended_offset(self.seq);
                    if intended > now {
                        break;
                    }
                    intended
                }
            };
            if start >= self.setup.plan.send_end {
                self.exhausted = true;
                break;
            }
            let Some((kind, key_index)) = self.setup.source.next() else {
                self.exhausted = true;
                break;
            };
            self.setup.key_format.write(key_index, &mut self.key);
            self.seq += 1;
            let id = self.seq;
            self.driver.encode(id, kind, &self.key, &self.setup.value, out);
            self.inflight.push_back(Pending { id, kind, start });
        }
    }

    /// Accounts for every complete reply in `inb`; returns how many there were.
    fn take_replies(&mut self, inb: &mut BytesMut, now: Instant) -> Result<usize, Lost> {
        let mut replies = 0;
        loop {
            let Some(&front) = self.inflight.front() else {
                if inb.is_empty() {
                    return Ok(replies);
                }
                return Err(ProtocolError::Unsolicited.into());
            };
            let Some(reply) = self.driver.take_reply(inb, front.kind)? else {
                return Ok(replies);
            };
            if let Some(got) = reply.id
                && got != front.id
            {
                return Err(ProtocolError::IdMismatch { got, expected: front.id }.into());
            }
            self.inflight.pop_front();
            let latency = now.saturating_duration_since(front.start);
            self.push(front, latency, reply.outcome);
            replies += 1;
        }
    }

    fn push(&mut self, p: Pending, latency: Duration, outcome: Outcome) {
        self.samples.push(Sample {
            kind: p.kind,
            measured: p.start >= self.setup.plan.measure_start,
            latency,
            outcome,
        });
        if self.samples.len() >= SAMPLES_MAX {
            self.flush(Instant::now());
        }
    }

    /// Counts every request in flight as an error, and forgets them.
    fn fail_inflight(&mut self, why: &str) {
        while let Some(p) = self.inflight.pop_front() {
            self.push(p, Duration::ZERO, Outcome::Error(why.to_owned()));
        }
    }

    fn flush(&mut self, now: Instant) {
        self.last_flush = now;
        // A poisoned lock means another connection panicked; its panic is reported on join.
        let mut shared = self.setup.shared.lock().unwrap_or_else(|p| p.into_inner());
        for sample in self.samples.drain(..) {
            shared.record(sample);
        }
    }
}

enum Event {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Flushed(io::Result<()>),
    Wake,
}

/// Writes what `out` holds, or when it is empty, flushes what TLS still holds.
async fn write_or_flush(wr: &mut (impl AsyncWrite + Unpin), out: &[u8]) -> Event {
    match out.is_empty() {
        false => Event::Wrote(wr.write(out).await),
        true => Event::Flushed(wr.flush().await),
    }
}

/// A connection to the server, with or without TLS.
pub enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens one connection with `TCP_NODELAY` (and the TLS handshake with `tls`), giving up
/// after `limit`.
pub async fn connect(
    addr: &str,
    tls: Option<&corekv_client::Tls>,
    login: Option<&Login>,
    limit: Duration,
) -> io::Result<Socket> {
    let mut socket = open(addr, tls, limit).await?;
    if let Some(login) = login {
        tokio::time::timeout(limit, login.run(&mut socket))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the login"))??;
    }
    Ok(socket)
}

/// Who a connection authenticates as, before its first request (`--user`, `--password`).
#[derive(Clone, Debug)]
pub struct Login {
    pub resp: bool,
    pub user: String,
    pub password: String,
}

impl Login {
    /// `AUTH user pass` (RESP) or `Authenticate` (native), and its answer.
    async fn run(&self, socket: &mut Socket) -> io::Result<()> {
        let refused = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
        let mut out = BytesMut::new();
        if self.resp {
            out.extend_from_slice(b"*3\r\n$4\r\nAUTH\r\n");
            for arg in [&self.user, &self.password] {
                out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
            }
        } else {
            let op = corekv_schema::codec::Op::Authenticate {
                user: self.user.clone(),
                password: self.password.clone().into(),
            };
            let request = corekv_schema::codec::Request::new(0, op);
            corekv_schema::codec::Encoder::new().request(&request, &mut out);
        }
        socket.write_all(&out).await?;
        socket.flush().await?;
        let mut inb = BytesMut::with_capacity(1024);
        loop {
            if self.resp {
                if let Some(end) = inb.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&inb[..end]).into_owned();
                    return if line == "+OK" { Ok(()) } else { Err(refused(line)) };
                }
            } else if let Some(frame) = corekv_schema::frame::take_frame(&mut inb, 1 << 20)
                .map_err(|e| refused(e.to_string()))?
            {
                let response = corekv_schema::codec::decode_response(&frame)
                    .map_err(|e| refused(e.to_string()))?;
                return match response.reply {
                    corekv_schema::codec::Reply::Pong { .. } => Ok(()),
                    other => Err(refused(format!("login refused: {other:?}"))),
                };
            }
            if socket.read_buf(&mut inb).await? == 0 {
                return Err(refused("closed during the login".into()));
            }
        }
    }
}

/// Opens the socket: TCP with `TCP_NODELAY`, and the TLS handshake with `tls`.
async fn open(addr: &str, tls: Option<&corekv_client::Tls>, limit: Duration) -> io::Result<Socket> {
    let late = || {
        io::Error::new(io::ErrorKind::TimedOut, format!("timed out after {} ms", limit.as_millis()))
    };
    let stream =
        tokio::time::timeout(limit, TcpStream::connect(addr)).await.map_err(|_| late())??;
    stream.set_nodelay(true)?;
    let Some(tls) = tls else { return Ok(Socket::Plain(stream)) };
    let name = match &tls.server_name {
        Some(name) => ServerName::try_from(name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => ServerName::IpAddress(stream.peer_addr()?.ip().into()),
    };
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let tls = tokio::time::timeout(limit, connector.connect(name, stream))
        .await
        .map_err(|_| late())??;
    Ok(Socket::Tls(Box::new(tls)))
}
