//! Storage micro-benchmarks: log record encode and decode (50-byte key, 500-byte value),
//! replay parsing throughput (what bounds recovery MB/s before the index), and appending to
//! the write-ahead log through group commit on a real file (fdatasync included, amortised
//! over the batch the benchmark appends).

use std::hint::black_box;

use bytes::Bytes;
use corekv::storage::record::{self, Mutation};
use corekv::storage::wal::{SyncMode, Wal};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn put(i: u64) -> Mutation {
    let key = format!("key:{i:046}");
    Mutation::put(&key.as_bytes()[..50], &[b'v'; 500], i + 1, 0)
}

fn bench(c: &mut Criterion) {
    let m = put(7);
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("record/encode_550B", |b| {
        b.iter(|| {
            buf.clear();
            record::encode(black_box(&m), &mut buf);
        })
    });
    buf.clear();
    record::encode(&m, &mut buf);
    let one = Bytes::from(buf.clone());
    c.bench_function("record/decode_550B", |b| b.iter(|| record::decode(black_box(&one), 0)));

    let mut segment = Vec::new();
    for i in 0..20_000 {
        record::encode(&put(i), &mut segment);
    }
    let segment = Bytes::from(segment);
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Bytes(segment.len() as u64));
    group.bench_function("scan_20k_records", |b| {
        b.iter(|| {
            let mut n = 0u64;
            record::scan(&segment, false, |_, _| n += 1, |_, _, _| {});
            n
        })
    });
    group.finish();

    // Group commit on a real file: a batch of 64 appends, then one wait for durability.
    let dir = tempfile::tempdir().expect("tempdir");
    let executor = glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .make()
        .expect("glommio executor");
    let records: Vec<Mutation> = (0..64).map(put).collect();
    let mut runs = 0u32;
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(64));
    group.sample_size(20);
    group.bench_function("append_64_and_sync", |b| {
        b.iter_custom(|iters| {
            runs += 1;
            let path = dir.path().join(format!("run{runs}"));
            std::fs::create_dir_all(&path).expect("run dir");
            let records = records.clone();
            executor.run(async move {
                let wal = Wal::new(path, SyncMode::Sync, 64 << 20, 1);
                let flusher = glommio::spawn_local(wal.clone().run());
                let (warm, _) = wal.append(&records[0]).expect("append");
                wal.wait(warm).await.expect("durable");
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let mut last = 0;
                    for r in &records {
                        last = wal.append(r).expect("append").0;
                    }
                    wal.wait(last).await.expect("durable");
                }
                let elapsed = started.elapsed();
                wal.close();
                flusher.await;
                elapsed
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
