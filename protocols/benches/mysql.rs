//! MySQL decoder throughput: after a real login (the handshake of
//! `fixtures/streams/mysql/queries.jsonl`), small COM_QUERY round trips — a
//! `SELECT id, name FROM users WHERE id = N` answered by a one-row text result set (column
//! count, 2 column definitions, 1 row, OK-as-EOF) — one message per push, as recorded.
//!
//! `cargo bench -p deetune-protocols --bench mysql`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deetune_protocols::{new_decoder, DecoderConfig, Direction, Protocol};

const N: u64 = 10_000;

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    v.extend_from_slice(payload);
    v
}

fn lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn column(name: &[u8], ty: u8) -> Vec<u8> {
    let mut c = Vec::new();
    for s in [&b"def"[..], b"shop", b"users", b"users", name, name] {
        lenenc_str(&mut c, s);
    }
    c.extend_from_slice(&[0x0c, 0x21, 0x00, 11, 0, 0, 0, ty, 0, 0, 0, 0, 0]);
    c
}

/// The login records of the `queries` fixture (greeting, handshake response, OK).
fn login() -> Vec<(Direction, Vec<u8>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/streams/mysql/queries.jsonl"
    );
    let text = std::fs::read_to_string(path).expect("queries fixture");
    text.lines()
        .take(3)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let dir = if v["dir"] == "request" {
                Direction::Request
            } else {
                Direction::Response
            };
            let data: deetune_protocols::Payload =
                serde_json::from_value(v["data"].clone()).expect("payload");
            (dir, data.0)
        })
        .collect()
}

fn mysql(c: &mut Criterion) {
    let login = login();
    let rounds: Vec<(Vec<u8>, Vec<u8>)> = (0..N)
        .map(|i| {
            let mut q = vec![0x03];
            q.extend_from_slice(format!("SELECT id, name FROM users WHERE id = {i}").as_bytes());
            let mut resp = packet(1, &[2]);
            resp.extend(packet(2, &column(b"id", 3)));
            resp.extend(packet(3, &column(b"name", 253)));
            let mut row = Vec::new();
            lenenc_str(&mut row, i.to_string().as_bytes());
            lenenc_str(&mut row, format!("user-{i}").as_bytes());
            resp.extend(packet(4, &row));
            resp.extend(packet(5, &[0xfe, 0, 0, 2, 0, 0, 0]));
            (packet(0, &q), resp)
        })
        .collect();
    let mut g = c.benchmark_group("mysql");
    g.throughput(Throughput::Elements(N));
    g.bench_function("select_one_row_round_trips", |b| {
        let mut out = Vec::with_capacity(N as usize);
        b.iter(|| {
            let mut d = new_decoder(Protocol::Mysql, DecoderConfig::default()).expect("mysql");
            for (dir, bytes) in &login {
                d.push(*dir, 0, bytes);
            }
            for (i, (req, resp)) in (0u64..).zip(&rounds) {
                d.push(Direction::Request, i * 2, req);
                d.push(Direction::Response, i * 2 + 1, resp);
                if i % 64 == 0 {
                    d.drain(&mut out);
                    out.clear();
                }
            }
            d.close(N * 2);
            d.drain(&mut out);
            assert!(
                !out.is_empty() && out.len() <= 64,
                "exchanges drained as they complete"
            );
            out.clear();
        });
    });
    g.finish();
}

criterion_group!(benches, mysql);
criterion_main!(benches);
