//! Shard engine micro-benchmarks: get hit, get miss and set on a `MemEngine` holding 1M keys
//! (50-byte keys, 500-byte values). Reports ns per operation, no I/O.

use std::hint::black_box;

use bytes::Bytes;
use corekv::storage::{Engine, MemEngine, NoLog};
use corekv_schema::codec::{Op, SetOp};
use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: usize = 1_000_000;

fn key(i: usize) -> Bytes {
    let mut k = format!("key:{i:046}").into_bytes();
    k.truncate(50);
    Bytes::from(k)
}

fn bench(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 500]);
    let mut engine = MemEngine::new();
    for i in 0..KEYS {
        engine.execute(
            Op::Set(SetOp { key: key(i), value: value.clone(), ..Default::default() }),
            0,
            &mut NoLog,
            None,
        );
    }
    let keys: Vec<Bytes> = (0..4096).map(|i| key(i * 241 % KEYS)).collect();
    let missing: Vec<Bytes> = (0..4096).map(|i| key(KEYS + i)).collect();
    let mut i = 0usize;
    c.bench_function("shard/get_hit", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(engine.execute(Op::Get { key: keys[i].clone() }, 0, &mut NoLog, None))
        })
    });
    c.bench_function("shard/get_miss", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(engine.execute(Op::Get { key: missing[i].clone() }, 0, &mut NoLog, None))
        })
    });
    c.bench_function("shard/set_overwrite", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let op =
                Op::Set(SetOp { key: keys[i].clone(), value: value.clone(), ..Default::default() });
            black_box(engine.execute(op, 0, &mut NoLog, None))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
