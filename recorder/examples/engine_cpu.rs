//! The daemon's user-space work per recorded exchange, without the kernel, for instruction
//! counts (callgrind) that a loaded machine does not blur: keep-alive HTTP connections shaped
//! like `ci/bench-record`'s wrk → nginx (the client end opened but carrying no data, as with
//! the kernel's loopback dedup), decoded, topology, one task recording every exchange, stored
//! through [`Engine::handle`] and [`StoreSink`] as the daemon does (encoded 16 exchanges at a
//! time, committed every 16,384) into a temporary store (block encoding, zstd, sled), with
//! the jemalloc allocator of the `deetune` binary.
//!
//! ```text
//! cargo build --release -p deetune-recorder --example engine_cpu
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/engine_cpu 20000   # and 40000: the difference / 20000
//! ```
//! Prints the exchanges stored and the stored bytes per exchange; the instructions per
//! exchange are the difference of two runs (start-up, the store's opening, cancels out).
//! Optional arguments after the count: the commit batch and the staging size.

use std::sync::Arc;

use deetune_protocols::{Direction, Protocol, Role};
use deetune_recorder::{
    ConnInfo, Engine, EngineOptions, Pipeline, PipelineConfig, ServiceNamer, ServiceRule,
    StoreSink, StreamEvent, TaskManager, TopologyAggregator,
};
use deetune_store::{Store, StoreOptions, TaskSpec};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const CONNS: u64 = 32;
const PORT: u16 = 8080;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    // The daemon's cache; no timed flush: under valgrind the run is slow and sled's flusher
    // would add work by the second, not by the exchange.
    let store_options = StoreOptions {
        cache_bytes: 16 << 20,
        flush_every_ms: 3_600_000,
    };
    let store = Arc::new(Store::open_with(dir.path(), &store_options).expect("store"));
    let rules: Vec<ServiceRule> = toml::from_str::<Rules>(&format!(
        "[[service]]\nname = \"bench-nginx\"\nport = {PORT}\n"
    ))
    .expect("rules")
    .service;
    let mut tasks = TaskManager::new();
    let task = tasks
        .start(
            TaskSpec {
                from: Some("wrk".into()),
                to: Some("bench-nginx".into()),
                protocol: Some(Protocol::Http),
                ..TaskSpec::default()
            },
            0,
        )
        .expect("task");
    let pipeline = Pipeline::new(
        PipelineConfig::default(),
        ServiceNamer::new(&rules).expect("namer"),
        tasks,
        TopologyAggregator::default(),
    );
    // A second argument sets the batch (exchanges per sled batch; the daemon's is 16,384).
    let mut options = EngineOptions::default();
    if let Some(b) = std::env::args().nth(2).and_then(|a| a.parse().ok()) {
        options.batch = b;
    }
    // A third, the exchanges handed to the sink at a time (the daemon's: 16).
    if let Some(b) = std::env::args().nth(3).and_then(|a| a.parse().ok()) {
        options.stage = b;
    }
    let mut engine = Engine::new(pipeline, StoreSink::new(store.clone()), options);
    let t0 = 1_800_000_000_000_000_000u64;
    let srv: std::net::SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("addr");
    let info = |id, role, local, remote, comm: &str| ConnInfo {
        id,
        pid: 10,
        comm: comm.into(),
        cgroup_id: 0,
        role,
        local,
        remote,
        opened_ns: t0,
    };
    for c in 0..CONNS {
        let cli: std::net::SocketAddr = format!("127.0.0.1:{}", 40000 + c).parse().expect("addr");
        engine.pipeline.handle(StreamEvent::Opened(info(
            c * 2 + 2,
            Role::Client,
            cli,
            srv,
            "wrk",
        )));
        engine.pipeline.handle(StreamEvent::Opened(info(
            c * 2 + 1,
            Role::Server,
            srv,
            cli,
            "nginx",
        )));
    }
    let req = format!("GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n\r\n").into_bytes();
    for i in 0..n {
        let conn = (i % CONNS) * 2 + 1;
        let ts = t0 + i * 10_000;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 18:{:02}:{:02} GMT\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: keep-alive\r\n\r\n{{\"ok\":true,\"item\":42}}",
            (i / 60_000) % 60,
            (i / 1000) % 60
        )
        .into_bytes();
        // As the capture hands them over: a fresh buffer per event.
        engine.handle(StreamEvent::Data {
            conn,
            dir: Direction::Request,
            ts_ns: ts,
            bytes: req.clone(),
        });
        engine.handle(StreamEvent::Data {
            conn,
            dir: Direction::Response,
            ts_ns: ts + 5_000,
            bytes: resp,
        });
    }
    engine.flush(true).expect("flush");
    // The store's count (reading every exchange back would cost more than storing them).
    let usage = store.task_usage(&task.id).expect("usage");
    let stored = usage.exchanges;
    assert_eq!(stored, n, "every exchange stored");
    println!(
        "{stored} exchanges stored, {:.1} bytes each",
        usage.bytes as f64 / stored.max(1) as f64
    );
}

#[derive(serde::Deserialize)]
struct Rules {
    service: Vec<ServiceRule>,
}
