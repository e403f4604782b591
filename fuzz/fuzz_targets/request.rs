//! Fuzz target: a node's request decoder on arbitrary bytes. It must never panic, and a
//! request it accepts must survive a re-encode/decode round trip unchanged.
#![no_main]

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{Encoder, decode_request};
use corekv_schema::frame::{Limits, take_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(request) = decode_request(&frame, &Limits::DEFAULT) {
        let mut out = BytesMut::new();
        Encoder::new().request(&request, &mut out);
        let again = take_frame(&mut out, usize::MAX).expect("own frame").expect("complete");
        assert_eq!(decode_request(&again, &Limits::DEFAULT).expect("own encoding"), request);
    }
});
