//! The exchanges the store benchmark and the `store_cpu` example measure: small HTTP calls.

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse, Payload,
    Protocol, Request, Response, Timing,
};
use deetune_store::{TaskRecord, TaskSpec, TaskState, TaskStats};

/// Exchange `n`: a GET with one header, a 22-byte JSON answer, 8 exchanges a connection.
pub(crate) fn small_http(n: u64) -> Exchange {
    let t0 = 1_700_000_000_000_000_000 + n * 1000;
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: n / 8,
            client: Endpoint {
                port: 40000,
                service: Some("web".to_owned()),
                ..Endpoint::default()
            },
            server: Endpoint {
                port: 8080,
                service: Some("checkout".to_owned()),
                ..Endpoint::default()
            },
        }),
        seq: n % 8,
        protocol: Protocol::Http,
        request: Request::Http(HttpRequest {
            method: "GET".to_owned(),
            target: format!("/api/items/{n}"),
            version: "HTTP/1.1".to_owned(),
            headers: vec![Header {
                name: "Host".to_owned(),
                value: "checkout".into(),
            }],
            body: Body::default(),
        }),
        response: Some(Response::Http(HttpResponse {
            version: "HTTP/1.1".to_owned(),
            status: 200,
            reason: "OK".to_owned(),
            headers: vec![Header {
                name: "Content-Type".to_owned(),
                value: "application/json".into(),
            }],
            body: Body {
                raw: Payload::from(format!("{{\"id\":{n},\"price\":12}}").as_str()),
                decoded: None,
                len: 22,
                truncated: false,
            },
        })),
        timing: Timing {
            request_start_ns: t0,
            request_end_ns: t0 + 10,
            response_start_ns: t0 + 100,
            response_end_ns: t0 + 120,
        },
        flags: Flags::default(),
        session: None,
    }
}

/// A stopped task record with this id.
pub(crate) fn task(id: &str) -> TaskRecord {
    TaskRecord {
        id: id.to_owned(),
        spec: TaskSpec::default(),
        state: TaskState::Stopped,
        stop_reason: None,
        started_ms: 1,
        stopped_ms: Some(2),
        stats: TaskStats::default(),
    }
}
