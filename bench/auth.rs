//! What authentication and authorization cost per request: the check every request passes
//! (`Principal::check`) for a user allowed every key, for one scoped by a key pattern, and
//! for a 10-operation batch; and the secret's check, once per connection (`AUTH`).

use std::hint::black_box;

use bytes::Bytes;
use corekv::auth::{Principal, Registry, Users};
use corekv_schema::codec::Op;
use criterion::{Criterion, criterion_group, criterion_main};

fn registry() -> Registry {
    let mut users = Users::with_default(None);
    users.set_user("app", &["on", ">app-secret", "~app:*", "+@read", "+@write"]).unwrap();
    Registry::new(users, Some("pw".into()))
}

fn checks(c: &mut Criterion) {
    let registry = registry();
    let key = Bytes::from(format!("app:{}", "k".repeat(46)));
    let get = Op::Get { key: key.clone() };
    let batch = Op::Batch((0..10).map(|_| Op::Get { key: key.clone() }).collect());
    for (name, user, password) in
        [("default ~*", "default", "pw"), ("app ~app:*", "app", "app-secret")]
    {
        let mut p = Principal::connect(&registry);
        p.authenticate(&registry, user, password.as_bytes());
        c.bench_function(&format!("check get, {name}"), |b| {
            b.iter(|| black_box(p.check(&registry, black_box(&get)).is_ok()))
        });
        c.bench_function(&format!("check batch of 10 gets, {name}"), |b| {
            b.iter(|| black_box(p.check(&registry, black_box(&batch)).is_ok()))
        });
    }
    c.bench_function("AUTH (once per connection)", |b| {
        let mut p = Principal::connect(&registry);
        b.iter(|| black_box(p.authenticate(&registry, "app", b"app-secret")))
    });
}

criterion_group!(benches, checks);
criterion_main!(benches);
