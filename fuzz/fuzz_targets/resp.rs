//! Fuzz target: the RESP2 request parser (arrays of bulk strings and inline commands) on
//! arbitrary bytes. It must never panic, and every command it returns must consume bytes.
#![no_main]

use bytes::BytesMut;
use corekv_schema::resp::{Limits, parse_command};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    bulk_bytes_max: 1 << 20,
    args_max: 1024,
    inline_bytes_max: 64 << 10,
    command_bytes_max: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match parse_command(&mut buf, &LIMITS) {
            Ok(Some(_)) => assert!(buf.len() < before, "a command that consumed nothing"),
            Ok(None) | Err(_) => break,
        }
    }
});
