//! Codec micro-benchmarks: encode and verified decode of each request and reply kind, with the
//! default load shape (50-byte keys, 500-byte values). Reports ns per operation.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{
    Condition, Encoder, Expected, Op, Reply, Request, SetOp, decode_request, decode_response,
};
use corekv_schema::frame::{Limits, take_frame};
use criterion::{Criterion, criterion_group, criterion_main};

fn key() -> Bytes {
    Bytes::from(vec![b'k'; 50])
}

fn value() -> Bytes {
    Bytes::from(vec![b'v'; 500])
}

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("get", Op::Get { key: key() }),
        ("set", Op::Set(SetOp { key: key(), value: value(), ..Default::default() })),
        ("delete", Op::Delete { key: key(), condition: Condition::Always }),
        (
            "cas",
            Op::Cas { key: key(), expected: Expected::Version(7), new_value: value(), ttl_ms: 0 },
        ),
        (
            "batch16_set",
            Op::Batch(
                (0..16)
                    .map(|_| Op::Set(SetOp { key: key(), value: value(), ..Default::default() }))
                    .collect(),
            ),
        ),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        ("value", Reply::Value { value: value(), version: 9, ttl_ms: None }),
        ("written", Reply::Written { version: 9 }),
        ("not_found", Reply::error(corekv_schema::codec::ErrorCode::NotFound, "key not found")),
    ]
}

fn bench(c: &mut Criterion) {
    let mut enc = Encoder::new();
    let mut out = BytesMut::with_capacity(64 * 1024);
    for (name, op) in ops() {
        let req = Request::new(1, op);
        c.bench_function(&format!("encode_request/{name}"), |b| {
            b.iter(|| {
                out.clear();
                enc.request(black_box(&req), &mut out);
            })
        });
        out.clear();
        enc.request(&req, &mut out);
        let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
        c.bench_function(&format!("decode_request/{name}"), |b| {
            b.iter(|| decode_request(black_box(&frame), &Limits::DEFAULT).unwrap())
        });
    }
    for (name, reply) in replies() {
        c.bench_function(&format!("encode_reply/{name}"), |b| {
            b.iter(|| {
                out.clear();
                enc.response(1, black_box(&reply), &mut out);
            })
        });
        out.clear();
        enc.response(1, &reply, &mut out);
        let frame = take_frame(&mut out, 1 << 24).unwrap().unwrap();
        c.bench_function(&format!("decode_reply/{name}"), |b| {
            b.iter(|| decode_response(black_box(&frame)).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
