//! Fuzz target: the client's response decoder on arbitrary bytes; it must never panic.
#![no_main]

use bytes::Bytes;
use corekv_schema::codec::decode_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_response(&Bytes::copy_from_slice(data));
});
