//! Framing: every message is `u32 little-endian length | payload`, the payload being a
//! FlatBuffers buffer (FlatBuffers' own "size-prefixed" form).
//!
//! A reader checks the length prefix against [`Limits::frame_bytes_max`], and never reserves
//! memory because a prefix announced it: the buffer grows only with bytes that arrived. A
//! hostile 4 GiB prefix costs nothing but a closed connection, and a 16 MiB one that never
//! completes costs only what was actually sent.

use bytes::{Bytes, BytesMut};

/// Bytes in the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Smallest payload that can hold a FlatBuffers root offset plus a vtable offset.
pub const PAYLOAD_BYTES_MIN: usize = 8;

/// Size limits enforced by a node on what clients send. Units are last in every name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    /// Largest payload (excluding the 4-byte prefix) accepted on a connection.
    pub frame_bytes_max: usize,
    pub batch_ops_max: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        key_bytes_max: 16 * 1024,
        value_bytes_max: 4 * 1024 * 1024,
        frame_bytes_max: 16 * 1024 * 1024,
        batch_ops_max: 10_000,
    };

    /// The one rule for keys, whatever protocol brought them.
    pub fn check_key(&self, key: &[u8]) -> Result<(), SizeError> {
        match key.len() {
            0 => Err(SizeError::EmptyKey),
            n if n > self.key_bytes_max => Err(SizeError::Key(n, self.key_bytes_max)),
            _ => Ok(()),
        }
    }

    /// The one rule for values, whatever protocol brought them.
    pub fn check_value(&self, value: &[u8]) -> Result<(), SizeError> {
        match value.len() {
            n if n > self.value_bytes_max => Err(SizeError::Value(n, self.value_bytes_max)),
            _ => Ok(()),
        }
    }
}

/// A key or value refused by [`Limits`]: `EmptyKey` is a bad request, the others too large.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty keys are not supported by corekv")]
    EmptyKey,
    #[error("key of {0} bytes exceeds key_bytes_max {1}")]
    Key(usize, usize),
    #[error("value of {0} bytes exceeds value_bytes_max {1}")]
    Value(usize, usize),
}

// A single maximal set must fit in one frame, with room for the request envelope.
const _: () = assert!(
    Limits::DEFAULT.key_bytes_max + Limits::DEFAULT.value_bytes_max + 1024
        <= Limits::DEFAULT.frame_bytes_max
);
// The length prefix is a u32.
const _: () = assert!(Limits::DEFAULT.frame_bytes_max <= u32::MAX as usize);

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a byte stream could not be split into frames. Every variant ends the connection:
/// after it, the reader no longer knows where the next frame starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    #[error("frame of {len_bytes} bytes is shorter than the minimum of {PAYLOAD_BYTES_MIN}")]
    TooShort { len_bytes: usize },
}

/// Takes one complete frame (prefix included) off the front of `buf`, if it holds one.
///
/// The prefix stays on the frame because FlatBuffers checks alignment relative to the start of
/// the buffer it was built in, which for size-prefixed buffers is the prefix.
/// Returns `Ok(None)` when more bytes are needed.
pub fn take_frame(buf: &mut BytesMut, frame_bytes_max: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(len_bytes) = peek_len(buf) else {
        return Ok(None);
    };
    if len_bytes > frame_bytes_max {
        return Err(FrameError::TooLarge { len_bytes, max_bytes: frame_bytes_max });
    }
    if len_bytes < PAYLOAD_BYTES_MIN {
        return Err(FrameError::TooShort { len_bytes });
    }
    let total = PREFIX_BYTES + len_bytes;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(buf.split_to(total).freeze()))
}

/// The payload length announced by the prefix at the front of `buf`, if the prefix is complete.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; PREFIX_BYTES] = buf.get(..PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_le_bytes(prefix) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn partial_prefix_and_partial_payload_wait_for_more() {
        let whole = framed(&[7u8; 20]);
        for cut in 0..whole.len() {
            let mut b = BytesMut::from(&whole[..cut]);
            assert_eq!(take_frame(&mut b, 1024), Ok(None), "cut at {cut}");
        }
        let mut b = whole.clone();
        assert_eq!(take_frame(&mut b, 1024).unwrap().unwrap().len(), 24);
        assert!(b.is_empty());
    }

    #[test]
    fn oversized_prefix_is_refused_without_reserving() {
        let mut b = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let cap = b.capacity();
        let err = take_frame(&mut b, 1 << 20).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len_bytes: u32::MAX as usize, max_bytes: 1 << 20 });
        assert_eq!(b.capacity(), cap);
    }

    #[test]
    fn tiny_frame_is_refused() {
        let mut b = framed(&[1, 2, 3]);
        assert_eq!(take_frame(&mut b, 1024), Err(FrameError::TooShort { len_bytes: 3 }));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut b = framed(&[1u8; 8]);
        b.extend_from_slice(&framed(&[2u8; 9]));
        assert_eq!(&take_frame(&mut b, 64).unwrap().unwrap()[4..], &[1u8; 8]);
        assert_eq!(&take_frame(&mut b, 64).unwrap().unwrap()[4..], &[2u8; 9]);
        assert_eq!(take_frame(&mut b, 64), Ok(None));
    }
}
