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
//! `PARTIAL_FRAME_TIMEOUT_MS` is answered and closed, so a stalled client cannot hold memory.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use corekv_schema::codec::{Encoder, ErrorCode, Reply, decode_request};
use corekv_schema::frame::{FrameError, take_frame};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::net::TcpStream;

use crate::config::CONNECTION_BATCH_REQUESTS_MAX;
use crate::shard::{Core, Slot, now_ms};
use crate::shutdown::Shutdown;

const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Output buffers that grew past this (a huge batch reply) are released after use.
const OUT_BUFFER_KEEP_BYTES: usize = 1024 * 1024;
pub const PARTIAL_FRAME_TIMEOUT_MS: u64 = 10_000;

/// Keeps the per-core connection gauge right on every exit path.
struct ConnectionGauge(Rc<Core>);

impl ConnectionGauge {
    fn new(core: Rc<Core>) -> ConnectionGauge {
        let c = &core.counters.connections;
        c.set(c.get() + 1);
        ConnectionGauge(core)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        let c = &self.0.counters.connections;
        c.set(c.get() - 1);
    }
}

enum ReadOutcome {
    Data(usize),
    Closed,
    Shutdown,
    Stalled,
}

pub async fn serve(core: Rc<Core>, mut stream: TcpStream, shutdown: Rc<Shutdown>) {
    let _gauge = ConnectionGauge::new(core.clone());
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    let limits = core.limits;
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut input = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut output = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut encoder = Encoder::new();
    let mut slots: Vec<(u64, Slot)> = Vec::with_capacity(64);
    loop {
        let mut close = false;
        let now_ms = now_ms();
        while slots.len() < CONNECTION_BATCH_REQUESTS_MAX {
            match take_frame(&mut input, limits.frame_bytes_max) {
                Ok(Some(frame)) => match decode_request(&frame, &limits) {
                    Ok(request) => {
                        let slot = core.dispatch(request.op, now_ms).await;
                        slots.push((request.id, slot));
                    }
                    Err(e) => {
                        slots.push((
                            e.id.unwrap_or(0),
                            Slot::Ready(Reply::error(e.code, e.message)),
                        ));
                        if e.fatal {
                            close = true;
                            break;
                        }
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
                        FrameError::TooShort { .. } => ErrorCode::BadRequest,
                    };
                    slots.push((0, Slot::Ready(Reply::error(code, e.to_string()))));
                    close = true;
                    break;
                }
            }
        }
        if !slots.is_empty() {
            for (id, slot) in slots.drain(..) {
                let reply = core.resolve(slot).await;
                encoder.response(id, &reply, &mut output);
            }
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
            if output.capacity() > OUT_BUFFER_KEEP_BYTES {
                output = BytesMut::with_capacity(READ_CHUNK_BYTES);
            }
            if close {
                return;
            }
            // More complete frames may already be buffered: parse before reading again.
            continue;
        }
        match read(&mut stream, &mut chunk, !input.is_empty(), &shutdown).await {
            ReadOutcome::Data(n) => input.extend_from_slice(&chunk[..n]),
            ReadOutcome::Shutdown => return,
            ReadOutcome::Closed if input.is_empty() => return,
            ReadOutcome::Closed | ReadOutcome::Stalled => {
                // The peer stopped mid-frame: say why before closing, if it still listens.
                let reply = Reply::error(ErrorCode::BadRequest, "truncated frame");
                encoder.response(0, &reply, &mut output);
                let _ = stream.write_all(&output).await;
                return;
            }
        }
    }
}

/// Reads what is available; idle connections give way to shutdown, and a half-received frame
/// must complete within `PARTIAL_FRAME_TIMEOUT_MS`.
async fn read(
    stream: &mut TcpStream,
    chunk: &mut [u8],
    mid_frame: bool,
    shutdown: &Shutdown,
) -> ReadOutcome {
    let data = async {
        match stream.read(chunk).await {
            Ok(0) | Err(_) => ReadOutcome::Closed,
            Ok(n) => ReadOutcome::Data(n),
        }
    };
    let stop = async {
        if mid_frame {
            glommio::timer::sleep(Duration::from_millis(PARTIAL_FRAME_TIMEOUT_MS)).await;
            ReadOutcome::Stalled
        } else {
            shutdown.wait().await;
            ReadOutcome::Shutdown
        }
    };
    future::or(data, stop).await
}
