//! Fuzz target: the node-to-node frame decoder on arbitrary bytes. It must never panic, and
//! what it accepts must encode back to a frame that decodes to the same message.
#![no_main]

use bytes::Bytes;
use corekv_schema::peer::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode(&Bytes::copy_from_slice(data)) {
        let again = decode(&Bytes::from(encode(&message))).expect("re-encoded frame decodes");
        assert_eq!(again, message);
    }
});
