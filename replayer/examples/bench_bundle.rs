//! Writes a benchmark bundle for `ci/bench-replay`: N recorded `GET /bench` exchanges spread
//! over C connections, whose recorded response is what the bench nginx answers.
//!
//! `cargo run --release -p deetune-replayer --example bench_bundle -- OUT.jsonl N C`

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse, Protocol,
    Request, Response, Timing,
};
use deetune_store::{BundleHeader, BundleWriter, TaskRecord, TaskSpec, TaskState, TaskStats};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: bench_bundle OUT N CONNS")?;
    let n: u64 = args.next().ok_or("N")?.parse()?;
    let conns: u64 = args.next().ok_or("CONNS")?.parse()?;
    let header = BundleHeader::new(TaskRecord {
        id: "bench".into(),
        spec: TaskSpec::default(),
        state: TaskState::default(),
        stop_reason: None,
        started_ms: 0,
        stopped_ms: None,
        stats: TaskStats::default(),
    });
    let mut w = BundleWriter::create(&out, &header)?;
    let body = r#"{"items":[{"id":1,"name":"tea","price":4.5},{"id":2,"name":"cake","price":3.25}],"total":2}"#;
    for i in 0..n {
        let conn = i % conns;
        let t = 1_700_000_000_000_000_000 + i * 1000;
        w.write(&Exchange {
            conn: std::sync::Arc::new(ConnectionMeta {
                id: conn + 1,
                client: Endpoint::default(),
                server: Endpoint {
                    service: Some("bench".into()),
                    ..Endpoint::default()
                },
            }),
            seq: i / conns,
            protocol: Protocol::Http,
            request: Request::Http(HttpRequest {
                method: "GET".into(),
                target: "/bench".into(),
                version: "HTTP/1.1".into(),
                headers: vec![Header {
                    name: "Host".into(),
                    value: "prod".into(),
                }],
                body: Body::default(),
            }),
            response: Some(Response::Http(HttpResponse {
                version: "HTTP/1.1".into(),
                status: 200,
                reason: "OK".into(),
                headers: vec![Header {
                    name: "Content-Type".into(),
                    value: "application/json".into(),
                }],
                body: Body {
                    raw: body.into(),
                    decoded: None,
                    len: body.len() as u64,
                    truncated: false,
                },
            })),
            timing: Timing {
                request_start_ns: t,
                request_end_ns: t,
                response_start_ns: t,
                response_end_ns: t,
            },
            flags: Flags::default(),
            session: None,
        })?;
    }
    w.finish()?;
    Ok(())
}
