//! One client connection: read frames, dispatch, answer in request order, write in one go.
//!
//! The loop parses every complete frame already buffered (up to
//! `CONNECTION_BATCH_REQUESTS_MAX`), turning each into a [`Slot`]; local requests are applied
//! at once, remote ones forwarded over the mesh and run concurrently. It then resolves the
//! slots in order, encodes the replies into one buffer and writes it with one call. So a
//! pipelining client gets in-order replies and one syscall per batch, and a connection whose
//! forwards meet a full mesh simply stops reading (back-pressure).
//!
//! Bad input: a frame over `frame_bytes_max`, one too short to be FlatBuffers, one that fails
//! verification or names an unknown operation is answered with an error frame (id 0 when the
//! id could not be read) and the connection closes. A request over a key/value/batch limit is
//! answered `TooLarge` and the connection goes on. A frame left half-sent for
//! `partial_frame_timeout_ms` (counted from when it started, not from the last byte) is
//! answered and closed, so a trickling client cannot hold memory; and the receive buffer only
//! grows with bytes that actually arrived, never with what a length prefix announces.
//!
//! Fairness: glommio reads and writes try the socket directly before waiting, so a client that
//! always has input queued would keep this task running forever and starve the core (other
//! connections, the mesh, the shutdown watcher). Each pass yields when the executor's time
//! slice is used up. Replies are flushed once `OUTPUT_FLUSH_BYTES` have accumulated, so a
//! pipeline of large values never builds one huge buffer.
//!
//! Shutdown: a connection checks for it before every read. Frames already received are
//! answered; bytes not yet read are left unread and the connection closes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use corekv_schema::codec::{Encoder, ErrorCode, Op, Reply, decode_request};
use corekv_schema::frame::{FrameError, take_frame};
use futures_lite::{AsyncReadExt, future};

use crate::auth::{Denied, Login, Principal};
use crate::config::CONNECTION_BATCH_REQUESTS_MAX;
use crate::shard::metrics::{Metrics, OP_OTHER, op_index, result_index};
use crate::shard::{Core, Origin, Slot};
use crate::shutdown::Shutdown;
use crate::time::now_ms;
use crate::tls::{Stream, send_all};

pub(super) const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Replies are written out once this much has accumulated, even mid-batch.
pub(super) const OUTPUT_FLUSH_BYTES: usize = 1024 * 1024;
/// Buffers (and the encoder) that grew past this for one huge reply are released after use.
pub(super) const BUFFER_KEEP_BYTES: usize = 4 * 1024 * 1024;

pub(super) enum ReadOutcome {
    Data(usize),
    Closed,
    Shutdown,
    Stalled,
}

pub async fn serve(core: Rc<Core>, mut stream: Stream, shutdown: Rc<Shutdown>) {
    let Some(_gauge) = crate::shard::ConnectionGauge::new(core.clone()) else {
        let why = format!("max number of clients reached ({})", core.node.max_connections);
        let reply = Reply::error(ErrorCode::Overloaded, why);
        return last_word(&mut stream, &mut Encoder::new(), &reply).await;
    };
    let limits = core.limits;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut encoder = Encoder::new();
    // (request id, slot, operation kind and start time for metrics)
    let mut slots: Vec<(u64, Slot, usize, Instant)> = Vec::with_capacity(64);
    let metrics = &core.metrics;
    // When the frame at the head of `input` started arriving, if it is incomplete.
    let mut partial_since: Option<Instant> = None;
    let mut principal = Principal::connect(&core.node.users);
    loop {
        glommio::yield_if_needed().await;
        let mut close = false;
        while slots.len() < CONNECTION_BATCH_REQUESTS_MAX {
            match take_frame(&mut input, limits.frame_bytes_max) {
                Ok(Some(frame)) => {
                    partial_since = None;
                    let started = Instant::now();
                    match decode_request(&frame, &limits) {
                        Ok(request) if matches!(request.op, Op::Authenticate { .. }) => {
                            let reply = authenticate(&core, &mut principal, request.op);
                            slots.push((request.id, Slot::Ready(reply), OP_OTHER, started));
                        }
                        Ok(request) if principal.check(&core.node.users, &request.op).is_err() => {
                            let denied = principal.check(&core.node.users, &request.op);
                            let reply = denied_reply(denied.unwrap_err());
                            slots.push((request.id, Slot::Ready(reply), OP_OTHER, started));
                        }
                        Ok(request) => {
                            let kind = op_index(&request.op);
                            // Per request: a dispatch may have waited on a full mesh.
                            let slot = core
                                .dispatch(
                                    request.op,
                                    request.durability,
                                    request.consistency,
                                    if request.direct { Origin::Direct } else { Origin::Client },
                                    now_ms(),
                                )
                                .await;
                            slots.push((request.id, slot, kind, started));
                        }
                        Err(e) => {
                            let reply = Reply::error(e.code, e.message);
                            slots.push((e.id.unwrap_or(0), Slot::Ready(reply), OP_OTHER, started));
                            if e.fatal {
                                close = true;
                                break;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                        FrameError::TooShort { .. } => ErrorCode::BadRequest,
                    };
                    let reply = Slot::Ready(Reply::error(code, e.to_string()));
                    slots.push((0, reply, OP_OTHER, Instant::now()));
                    close = true;
                    break;
                }
            }
        }
        if !slots.is_empty() {
            for (id, slot, kind, started) in slots.drain(..) {
                let reply = core.resolve(slot).await;
                metrics.record(kind, started, result_index(&reply));
                encoder.response(id, &reply, &mut output);
                if !flush_full(&mut stream, &mut output, metrics).await {
                    return;
                }
            }
            if !flush(&mut stream, &mut output, metrics).await {
                return;
            }
            if encoder.peak_bytes() > BUFFER_KEEP_BYTES {
                encoder = Encoder::new();
            }
            if close {
                return;
            }
            // More complete frames may already be buffered: parse before reading again.
            continue;
        }
        let timeout_ms = core.node.partial_frame_timeout_ms;
        let outcome =
            fill(&mut stream, &mut chunk, &mut input, &mut partial_since, timeout_ms, &shutdown)
                .await;
        match outcome {
            ReadOutcome::Data(n) => metrics.add_in(n),
            ReadOutcome::Shutdown | ReadOutcome::Closed if input.is_empty() => return,
            // Part of a frame is left: say why we close, if the peer still listens.
            ReadOutcome::Shutdown => {
                let reply = Reply::error(
                    ErrorCode::ShuttingDown,
                    "node is shutting down; requests after the last reply were not executed",
                );
                return last_word(&mut stream, &mut encoder, &reply).await;
            }
            ReadOutcome::Closed | ReadOutcome::Stalled => {
                let reply = Reply::error(ErrorCode::BadRequest, "truncated frame");
                return last_word(&mut stream, &mut encoder, &reply).await;
            }
        }
    }
}

/// The answer to `Authenticate`: a Pong naming the user, or `Unauthenticated`.
fn authenticate(core: &Core, principal: &mut Principal, op: Op) -> Reply {
    let Op::Authenticate { user, password } = op else { unreachable!("matched by the caller") };
    match principal.authenticate(&core.node.users, &user, &password) {
        Login::Accepted => Reply::Pong { payload: user.into() },
        Login::Refused => Reply::error(
            ErrorCode::Unauthenticated,
            "invalid username-password pair or user is disabled",
        ),
        Login::TooMany(cap) => Reply::error(
            ErrorCode::Overloaded,
            format!(
                "max number of connections reached for user {user} \
                 (--max-connections-per-user {cap})"
            ),
        ),
    }
}

/// A refusal as a native error: `Unauthenticated` before authenticating, `PermissionDenied`
/// after.
pub(crate) fn denied_reply(denied: Denied) -> Reply {
    match denied {
        Denied::NoAuth => Reply::error(
            ErrorCode::Unauthenticated,
            "authentication required: send Authenticate first",
        ),
        Denied::NoPerm(why) => Reply::error(ErrorCode::PermissionDenied, why),
    }
}

/// Sends one final error frame (id 0) before the connection closes; a failure to send is moot.
async fn last_word(stream: &mut Stream, encoder: &mut Encoder, reply: &Reply) {
    let mut out = BytesMut::new();
    encoder.response(0, reply, &mut out);
    let _ = send_all(stream, &out).await;
}

/// Writes `out` to the client and counts the bytes; false once the client is gone. Shared by
/// the native and the Redis connection loops.
pub(super) async fn send(stream: &mut Stream, out: &[u8], metrics: &Metrics) -> bool {
    metrics.add_out(out.len());
    send_all(stream, out).await.is_ok()
}

/// A connection's reply buffer (the native one is a `BytesMut`, the Redis one a `Vec`).
pub(super) trait Output: AsRef<[u8]> {
    fn clear(&mut self);
    fn capacity(&self) -> usize;
    fn fresh() -> Self;
}

impl Output for BytesMut {
    fn clear(&mut self) {
        BytesMut::clear(self);
    }
    fn capacity(&self) -> usize {
        BytesMut::capacity(self)
    }
    fn fresh() -> Self {
        BytesMut::with_capacity(READ_CHUNK_BYTES)
    }
}

impl Output for Vec<u8> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
    fn fresh() -> Self {
        Vec::with_capacity(READ_CHUNK_BYTES)
    }
}

/// Writes the replies out once they reach `OUTPUT_FLUSH_BYTES`, even mid-batch, so a pipeline
/// of large values never builds one huge buffer. False when the client is gone.
pub(super) async fn flush_full(
    stream: &mut Stream,
    output: &mut impl Output,
    metrics: &Metrics,
) -> bool {
    if output.as_ref().len() < OUTPUT_FLUSH_BYTES {
        return true;
    }
    flush(stream, output, metrics).await
}

/// Writes every reply out, then releases a buffer one huge reply made grow. False when the
/// client is gone.
pub(super) async fn flush<O: Output>(
    stream: &mut Stream,
    output: &mut O,
    metrics: &Metrics,
) -> bool {
    if !send(stream, output.as_ref(), metrics).await {
        return false;
    }
    output.clear();
    if output.capacity() > BUFFER_KEEP_BYTES {
        *output = O::fresh();
    }
    true
}

/// Reads more input into `input` (shared by the native and the Redis connection loops).
/// While `input` holds part of a request, that request must complete within `timeout_ms` of
/// when it started arriving (`partial_since`); an idle connection gives way to shutdown.
pub(super) async fn fill(
    stream: &mut Stream,
    chunk: &mut [u8],
    input: &mut BytesMut,
    partial_since: &mut Option<Instant>,
    timeout_ms: u64,
    shutdown: &Shutdown,
) -> ReadOutcome {
    if input.is_empty() && input.capacity() > BUFFER_KEEP_BYTES {
        *input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    }
    let deadline = if input.is_empty() {
        None
    } else {
        let since = *partial_since.get_or_insert_with(Instant::now);
        Some(since + Duration::from_millis(timeout_ms))
    };
    if shutdown.is_fired() {
        return ReadOutcome::Shutdown;
    }
    let outcome = read(stream, chunk, deadline, shutdown).await;
    if let ReadOutcome::Data(n) = outcome {
        input.extend_from_slice(&chunk[..n]);
    }
    outcome
}

/// Reads what is available. An idle connection gives way to shutdown; a half-received frame
/// must complete by `deadline` (and also gives way to shutdown).
async fn read(
    stream: &mut Stream,
    chunk: &mut [u8],
    deadline: Option<Instant>,
    shutdown: &Shutdown,
) -> ReadOutcome {
    let data = async {
        match stream.read(chunk).await {
            Ok(0) | Err(_) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Data(n),
        }
    };
    let stop = async {
        match deadline {
            None => {
                shutdown.wait().await;
                ReadOutcome::Shutdown
            }
            Some(at) => {
                let stalled = async {
                    glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await;
                    ReadOutcome::Stalled
                };
                let stopping = async {
                    shutdown.wait().await;
                    ReadOutcome::Shutdown
                };
                future::or(stalled, stopping).await
            }
        }
    };
    future::or(data, stop).await
}
