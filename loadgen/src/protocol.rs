//! Protocol drivers: how a connection turns operations into bytes and bytes back into outcomes.
//!
//! A [`Driver`] owns nothing but encoding state; the connection loop owns the socket, the buffers,
//! the window of requests in flight and the clock. Replies come back in request order on one
//! connection, so a driver only has to say what the next complete reply was: the connection pairs
//! it with the oldest request in flight (and checks the id when the protocol carries one).
//!
//! Two drivers: the native protocol ([`native::Native`]) and Redis's RESP2 ([`resp::Resp`]),
//! so the same runs drive redis-server and corekv side by side.

pub mod native;
pub mod resp;

use bytes::{Bytes, BytesMut};

use crate::stats::Outcome;
use crate::workload::OpKind;

/// One decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request id echoed by the server, for protocols that carry one.
    pub id: Option<u64>,
    pub outcome: Outcome,
}

/// The byte stream can no longer be trusted: the connection must be dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad frame from server: {0}")]
    Frame(#[from] corekv_schema::frame::FrameError),
    #[error("undecodable reply from server: {0}")]
    Decode(#[from] corekv_schema::codec::DecodeError),
    #[error("reply id {got} does not match the oldest request in flight, id {expected}")]
    IdMismatch { got: u64, expected: u64 },
    #[error("reply from server with no request in flight")]
    Unsolicited,
    #[error("bad RESP reply from server: {0}")]
    Resp(String),
}

/// Encodes requests and parses replies for one connection.
pub trait Driver: Send + 'static {
    /// Appends one encoded request to `out`. `value` is used by SET only.
    fn encode(&mut self, id: u64, kind: OpKind, key: &[u8], value: &Bytes, out: &mut BytesMut);

    /// Takes the next complete reply off the front of `buf`, if `buf` holds one. `kind` is the
    /// operation of the oldest request in flight, which that reply answers.
    fn take_reply(
        &mut self,
        buf: &mut BytesMut,
        kind: OpKind,
    ) -> Result<Option<Reply>, ProtocolError>;

    /// The consistency requests ask for, where the protocol can say (native only).
    fn set_consistency(&mut self, _consistency: corekv_schema::codec::Consistency) {}
}
