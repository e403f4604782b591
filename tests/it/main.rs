//! Integration tests, one binary: real `corekv` processes on ephemeral loopback ports.

mod admin;
mod auth;
mod bad_input;
mod cache;
mod cli;
mod cluster;
mod compaction;
mod durability;
mod enospc;
mod harness;
mod http;
mod lifecycle;
#[path = "../support/linearizable.rs"]
mod linearizable;
mod ops;
mod pipeline;
#[path = "../support/redis_server.rs"]
mod redis_server;
mod resp;
#[path = "../support/rng.rs"]
#[allow(dead_code)]
mod rng;
mod sdk;
mod tidy;
mod tls;
