//! HTTP decoder throughput: small keep-alive exchanges (a GET with a few headers and a
//! 200 with a short JSON body) pushed one message per `push`, as the recorder does.
//!
//! `cargo bench -p deetune-protocols --bench http`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deetune_protocols::{new_decoder, DecoderConfig, Direction, Protocol};

const REQUEST: &[u8] = b"GET /api/orders/42?expand=items HTTP/1.1\r\nHost: checkout:8080\r\n\
User-Agent: curl/7.88.1\r\nAccept: application/json\r\nX-Request-Id: 5f0c2a\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 27\r\nConnection: keep-alive\r\n\r\n\
{\"id\":42,\"status\":\"placed\"}";

fn keep_alive(c: &mut Criterion) {
    const N: u64 = 10_000;
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(N));
    g.bench_function("keep_alive_small_exchanges", |b| {
        let mut out = Vec::with_capacity(N as usize);
        b.iter(|| {
            let mut d =
                new_decoder(Protocol::Http, DecoderConfig::default()).expect("http decoder");
            for i in 0..N {
                d.push(Direction::Request, i * 2, REQUEST);
                d.push(Direction::Response, i * 2 + 1, RESPONSE);
                if i % 64 == 0 {
                    d.drain(&mut out);
                    out.clear();
                }
            }
            d.close(N * 2);
            d.drain(&mut out);
            out.clear();
        });
    });
    // The same traffic pipelined: 16 requests per push, then 16 responses per push.
    let reqs: Vec<u8> = REQUEST.repeat(16);
    let resps: Vec<u8> = RESPONSE.repeat(16);
    g.bench_function("pipelined_16_small_exchanges", |b| {
        let mut out = Vec::with_capacity(N as usize);
        b.iter(|| {
            let mut d =
                new_decoder(Protocol::Http, DecoderConfig::default()).expect("http decoder");
            for i in 0..N / 16 {
                d.push(Direction::Request, i * 2, &reqs);
                d.push(Direction::Response, i * 2 + 1, &resps);
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

criterion_group!(benches, keep_alive);
criterion_main!(benches);
