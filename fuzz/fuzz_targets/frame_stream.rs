//! Fuzz target: splitting a byte stream into frames with a small limit, fed in arbitrary
//! chunks. It must never panic, never return a frame over the limit, and never reserve memory
//! for a frame whose prefix failed the limit check.
#![no_main]

use bytes::BytesMut;
use corekv_schema::frame::{PREFIX_BYTES, take_frame};
use libfuzzer_sys::fuzz_target;

const LIMIT_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::new();
    let step = usize::from(data.first().copied().unwrap_or(1).max(1));
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match take_frame(&mut buf, LIMIT_BYTES) {
                Ok(Some(frame)) => assert!(frame.len() <= LIMIT_BYTES + PREFIX_BYTES),
                Ok(None) => break,
                Err(_) => {
                    assert!(buf.capacity() <= data.len().max(64) + LIMIT_BYTES + PREFIX_BYTES);
                    return;
                }
            }
        }
    }
});
