//! Shared helpers of the store tests: exchanges and tasks to store.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::net::{IpAddr, Ipv4Addr};

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse,
    MysqlColumn, MysqlCommand, MysqlResponse, MysqlResultSet, MysqlValue, Payload, Protocol,
    RedisCommand, Request, RespValue, Response, Timing,
};
use deetune_store::{TaskRecord, TaskSpec, TaskState, TaskStats};

pub(crate) fn task(id: &str, state: TaskState, started_ms: u64) -> TaskRecord {
    TaskRecord {
        id: id.to_owned(),
        spec: TaskSpec {
            name: Some(format!("task {id}")),
            to: Some("checkout".to_owned()),
            interfaces: vec!["POST /api/orders*".to_owned()],
            ..TaskSpec::default()
        },
        state,
        stop_reason: None,
        started_ms,
        stopped_ms: (state != TaskState::Running).then_some(started_ms + 1000),
        stats: TaskStats::default(),
    }
}

fn endpoint(last: u8, port: u16, service: &str) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
        pid: Some(100 + u32::from(last)),
        process: Some(service.to_owned()),
        cgroup: None,
        service: Some(service.to_owned()),
    }
}

/// A small HTTP exchange (~600 bytes of JSON), numbered `n`.
pub(crate) fn http(n: u64) -> Exchange {
    let t0 = 1_700_000_000_000_000_000 + n * 1_000_000;
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: n / 4,
            client: endpoint(1, 40000, "web"),
            server: endpoint(2, 8080, "checkout"),
        }),
        seq: n % 4,
        protocol: Protocol::Http,
        request: Request::Http(HttpRequest {
            method: "POST".to_owned(),
            target: format!("/api/orders?id={n}&x=1"),
            version: "HTTP/1.1".to_owned(),
            headers: vec![
                Header {
                    name: "Host".to_owned(),
                    value: "checkout:8080".into(),
                },
                Header {
                    name: "Content-Type".to_owned(),
                    value: "application/json".into(),
                },
                Header {
                    name: "Cookie".to_owned(),
                    value: "a=1; b=2".into(),
                },
            ],
            body: Body {
                raw: Payload::from(format!("{{\"item\":{n},\"qty\":2}}").as_str()),
                decoded: None,
                len: 20,
                truncated: false,
            },
        }),
        response: Some(Response::Http(HttpResponse {
            version: "HTTP/1.1".to_owned(),
            status: 201,
            reason: "Created".to_owned(),
            headers: vec![
                Header {
                    name: "Content-Type".to_owned(),
                    value: "application/json".into(),
                },
                Header {
                    name: "Set-Cookie".to_owned(),
                    value: "sid=abc; Path=/".into(),
                },
            ],
            body: Body {
                raw: Payload::from(format!("{{\"order\":{n},\"ok\":true}}").as_str()),
                decoded: None,
                len: 22,
                truncated: false,
            },
        })),
        timing: Timing {
            request_start_ns: t0,
            request_end_ns: t0 + 10_000,
            response_start_ns: t0 + 500_000,
            response_end_ns: t0 + 520_000,
        },
        flags: Flags::default(),
        session: None,
    }
}

/// HTTP with a binary body and no response.
pub(crate) fn http_binary(n: u64) -> Exchange {
    let mut x = http(n);
    if let Request::Http(r) = &mut x.request {
        r.body.raw = Payload(vec![0xff, 0x00, 0x80, n as u8]);
        r.body.len = 4;
    }
    x.response = None;
    x.flags.unpaired = true;
    x
}

pub(crate) fn redis(n: u64) -> Exchange {
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: 1000 + n / 8,
            client: endpoint(1, 41000, "web"),
            server: endpoint(3, 6379, "redis"),
        }),
        seq: n % 8,
        protocol: Protocol::Redis,
        request: Request::Redis(RedisCommand {
            args: vec![
                "SET".into(),
                format!("k{n}").as_str().into(),
                Payload(vec![0, 1, 2]),
            ],
            inline: false,
        }),
        response: Some(Response::Redis(RespValue::Array(vec![
            RespValue::Simple("OK".to_owned()),
            RespValue::Integer(-5),
            RespValue::Double(1.5),
            RespValue::Null,
        ]))),
        timing: Timing {
            request_start_ns: 1,
            request_end_ns: 2,
            response_start_ns: 3,
            response_end_ns: 4,
        },
        flags: Flags::default(),
        session: None,
    }
}

pub(crate) fn mysql(n: u64) -> Exchange {
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: 2000 + n,
            client: endpoint(1, 42000, "web"),
            server: endpoint(4, 3306, "db"),
        }),
        seq: 0,
        protocol: Protocol::Mysql,
        request: Request::Mysql(MysqlCommand::Query {
            sql: format!("SELECT id, name FROM users WHERE id = {n}"),
        }),
        response: Some(Response::Mysql(MysqlResponse::ResultSets {
            sets: vec![MysqlResultSet {
                columns: vec![MysqlColumn {
                    name: "id".to_owned(),
                    table: "users".to_owned(),
                    column_type: 3,
                }],
                rows: vec![vec![
                    MysqlValue::Int(n as i64),
                    MysqlValue::Null,
                    MysqlValue::Bytes("alice".into()),
                ]],
            }],
        })),
        timing: Timing::default(),
        flags: Flags::default(),
        session: None,
    }
}

/// A mix of every kind, numbered from 0.
pub(crate) fn mixed(count: u64) -> Vec<Exchange> {
    (0..count)
        .map(|n| match n % 4 {
            0 | 1 => http(n),
            2 => redis(n),
            _ => mysql(n),
        })
        .chain(std::iter::once(http_binary(count)))
        .collect()
}
