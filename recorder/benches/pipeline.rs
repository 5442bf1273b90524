//! Pipeline cost per exchange, without the kernel: HTTP keep-alive connections seen from both
//! ends (loopback), decoded once, topology and one task recording everything (redaction
//! included). `cargo bench -p deetune-recorder --bench pipeline`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use deetune_protocols::{Direction, Role};
use deetune_recorder::{
    ConnInfo, Pipeline, PipelineConfig, ServiceNamer, StreamEvent, TaskManager, TopologyAggregator,
};
use deetune_store::TaskSpec;

const PER_CONN: usize = 100;
const CONNS: u64 = 10;

fn events() -> Vec<StreamEvent> {
    let req = b"GET /api/items/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAuthorization: Bearer x\r\n\r\n".to_vec();
    let resp = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"ok\":true,\"item\":42}".to_vec();
    let mut ev = Vec::new();
    let t0 = 1_800_000_000_000_000_000u64;
    for c in 0..CONNS {
        let sid = c * 2 + 1;
        let cid = c * 2 + 2;
        let cport = 40000 + u16::try_from(c).unwrap_or(0);
        let srv = "127.0.0.1:8080".parse().unwrap();
        let cli = format!("127.0.0.1:{cport}").parse().unwrap();
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
        ev.push(StreamEvent::Opened(info(
            sid,
            Role::Server,
            srv,
            cli,
            "nginx",
        )));
        ev.push(StreamEvent::Opened(info(
            cid,
            Role::Client,
            cli,
            srv,
            "wrk",
        )));
        for i in 0..PER_CONN as u64 {
            for id in [cid, sid] {
                ev.push(StreamEvent::Data {
                    conn: id,
                    dir: Direction::Request,
                    ts_ns: t0 + i * 1000,
                    bytes: req.clone(),
                });
                ev.push(StreamEvent::Data {
                    conn: id,
                    dir: Direction::Response,
                    ts_ns: t0 + i * 1000 + 500,
                    bytes: resp.clone(),
                });
            }
        }
        ev.push(StreamEvent::Closed {
            conn: cid,
            ts_ns: t0 + 1_000_000,
        });
        ev.push(StreamEvent::Closed {
            conn: sid,
            ts_ns: t0 + 1_000_000,
        });
    }
    ev
}

fn bench(c: &mut Criterion) {
    let ev = events();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(CONNS * PER_CONN as u64));
    g.bench_function("http_loopback_record_all", |b| {
        b.iter_batched(
            || ev.clone(),
            |ev| {
                let mut tasks = TaskManager::new();
                tasks
                    .start(
                        TaskSpec {
                            from: Some("wrk".into()),
                            to: Some("nginx".into()),
                            ..TaskSpec::default()
                        },
                        0,
                    )
                    .unwrap();
                let mut p = Pipeline::new(
                    PipelineConfig::default(),
                    ServiceNamer::default(),
                    tasks,
                    TopologyAggregator::default(),
                );
                for e in ev {
                    p.handle(e);
                }
                let out = p.take_output();
                assert_eq!(out.len(), (CONNS * PER_CONN as u64) as usize);
                black_box(out);
            },
            criterion::BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
