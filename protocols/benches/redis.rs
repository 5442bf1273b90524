//! Redis decoder throughput: small commands (`SET key:N value-N`, `GET key:N`) and their
//! replies, one command per push (request/reply) and pipelined 16 per push (as
//! `redis-benchmark -P 16`).
//!
//! `cargo bench -p deetune-protocols --bench redis`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deetune_protocols::{new_decoder, DecoderConfig, Direction, Protocol};

const N: u64 = 10_000;

fn command(i: u64) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key:{i:06}");
    if i % 2 == 0 {
        let val = format!("value-{i:06}");
        (
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{val}\r\n",
                key.len(),
                val.len()
            )
            .into_bytes(),
            b"+OK\r\n".to_vec(),
        )
    } else {
        let val = format!("value-{:06}", i - 1);
        (
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes(),
            format!("${}\r\n{val}\r\n", val.len()).into_bytes(),
        )
    }
}

fn redis(c: &mut Criterion) {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..N).map(command).collect();
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(N));
    g.bench_function("request_reply_small_commands", |b| {
        let mut out = Vec::with_capacity(N as usize);
        b.iter(|| {
            let mut d = new_decoder(Protocol::Redis, DecoderConfig::default()).expect("redis");
            for (i, (req, resp)) in (0u64..).zip(&pairs) {
                d.push(Direction::Request, i * 2, req);
                d.push(Direction::Response, i * 2 + 1, resp);
                if i % 64 == 0 {
                    d.drain(&mut out);
                    out.clear();
                }
            }
            d.close(N * 2);
            d.drain(&mut out);
            assert!(out.len() <= 64, "exchanges drained as they complete");
            out.clear();
        });
    });
    let batches: Vec<(Vec<u8>, Vec<u8>)> = pairs
        .chunks(16)
        .map(|c| {
            (
                c.iter().flat_map(|p| p.0.clone()).collect(),
                c.iter().flat_map(|p| p.1.clone()).collect(),
            )
        })
        .collect();
    g.bench_function("pipelined_16_small_commands", |b| {
        let mut out = Vec::with_capacity(N as usize);
        b.iter(|| {
            let mut d = new_decoder(Protocol::Redis, DecoderConfig::default()).expect("redis");
            for (i, (reqs, resps)) in (0u64..).zip(&batches) {
                d.push(Direction::Request, i * 2, reqs);
                d.push(Direction::Response, i * 2 + 1, resps);
                d.drain(&mut out);
                out.clear();
            }
            d.close(N * 2);
            d.drain(&mut out);
            out.clear();
        });
    });
    g.finish();
}

criterion_group!(benches, redis);
criterion_main!(benches);
