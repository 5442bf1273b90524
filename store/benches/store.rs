//! Store and bundle throughput: batched inserts of small HTTP exchanges, reading a task
//! back, export and import of a bundle; prints bytes on disk per exchange.
//!
//! `cargo bench -p deetune-store --bench store`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deetune_protocols::Exchange;
use deetune_store::Store;

mod common;
use common::{small_http, task};

const BATCH: usize = 1000;
const TASK_SIZE: u64 = 100_000;

fn filled(dir: &std::path::Path, id: &str) -> Store {
    let store = Store::open(dir).unwrap();
    store.put_task(&task(id)).unwrap();
    let xs: Vec<_> = (0..TASK_SIZE).map(small_http).collect();
    for chunk in xs.chunks(BATCH) {
        store.append(id, chunk).unwrap();
    }
    store.flush().unwrap();
    store
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();

    // Bytes on disk per exchange (not a timing: printed once).
    {
        let dir = tmp.path().join("size");
        let store = filled(&dir, "t-size");
        let json = serde_json::to_vec(&small_http(1)).unwrap().len();
        let usage = store.task_usage("t-size").unwrap();
        let disk = store.size_on_disk().unwrap();
        drop(store);
        let du: u64 = walk(&dir);
        eprintln!(
            "bytes per exchange: json {json}, stored value {}, sled size_on_disk {}, files {}",
            usage.bytes / TASK_SIZE,
            disk / TASK_SIZE,
            du / TASK_SIZE
        );
    }

    let mut g = c.benchmark_group("store");
    g.measurement_time(Duration::from_secs(8)).sample_size(20);

    // The JSON cost alone (the model's serde shape), to tell it from sled's.
    let one = small_http(7);
    let line = serde_json::to_vec(&one).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("json encode one exchange", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, &one).unwrap();
        });
    });
    g.bench_function("json decode one exchange", |b| {
        b.iter(|| serde_json::from_slice::<Exchange>(&line).unwrap());
    });
    // What the store does: one UTF-8 check of the line, then no per-string checks.
    g.bench_function("json decode one exchange (utf-8 checked once)", |b| {
        b.iter(|| serde_json::from_str::<Exchange>(std::str::from_utf8(&line).unwrap()).unwrap());
    });

    let store = Store::open(tmp.path().join("insert")).unwrap();
    let xs: Vec<_> = (0..BATCH as u64).map(small_http).collect();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("insert small http, batches of 1000", |b| {
        b.iter(|| store.append("t-insert", &xs).unwrap());
    });
    drop(store);

    let read_dir = tmp.path().join("read");
    let store = filled(&read_dir, "t-read");
    g.throughput(Throughput::Elements(TASK_SIZE));
    g.bench_function("read back a task (decoded)", |b| {
        b.iter(|| {
            let n = store.exchanges("t-read").map(Result::unwrap).count();
            assert_eq!(n as u64, TASK_SIZE);
        });
    });

    let out = tmp.path().join("export.jsonl");
    store.export_bundle("t-read", &out).unwrap();
    let bytes = std::fs::metadata(&out).unwrap().len();
    eprintln!(
        "bundle: {bytes} bytes for {TASK_SIZE} exchanges ({} per line)",
        bytes / TASK_SIZE
    );
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("export bundle (jsonl)", |b| {
        b.iter(|| store.export_bundle("t-read", &out).unwrap());
    });
    let zst = tmp.path().join("export.jsonl.zst");
    g.bench_function("export bundle (jsonl.zst, bytes before compression)", |b| {
        b.iter(|| store.export_bundle("t-read", &zst).unwrap());
    });
    g.sample_size(10);
    g.bench_function("import bundle (jsonl)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let s = store.import_bundle(&out).unwrap();
                total += start.elapsed();
                store.delete_task(&s.task_id).unwrap();
            }
            total
        });
    });
    g.finish();
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

criterion_group!(benches, bench);
criterion_main!(benches);
