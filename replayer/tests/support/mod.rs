//! Test helpers: an in-process hyper "shop" service (v1, and v2 with one changed field) on a
//! free port, and builders for recorded exchanges.
#![allow(dead_code, unreachable_pub, reason = "each test binary uses a subset")]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse, Protocol,
    RedisCommand, Request, RespValue, Response, Timing,
};
use http_body_util::Full;
use hyper::body::Bytes;

/// Starts the service on 127.0.0.1:0 and returns its address. `version` 2 changes the
/// `price` of `GET /api/price` only.
pub async fn start_service(version: u8) -> SocketAddr {
    start(version, None).await
}

/// The same service over TLS with this certificate chain and key (PEM files).
pub async fn start_tls_service(
    version: u8,
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    start(
        version,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await
}

async fn start(version: u8, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let random = Arc::new(AtomicU64::new(0x9e37_79b9));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let random = Arc::clone(&random);
            let tls = tls.clone();
            tokio::spawn(async move {
                // Per connection: how many requests it carried so far (checks session order).
                let counter = Arc::new(AtomicU64::new(0));
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let r = random
                            .fetch_add(0x6a09_e667, Ordering::SeqCst)
                            .wrapping_mul(2_654_435_761);
                        async move { Ok::<_, Infallible>(handle(version, &req, n, r)) }
                    },
                );
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, svc).await;
                    }
                    Some(acceptor) => {
                        // A client that rejects the certificate ends the handshake.
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, svc).await;
                    }
                }
            });
        }
    });
    addr
}

fn handle(
    version: u8,
    req: &hyper::Request<hyper::body::Incoming>,
    n: u64,
    random: u64,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let (status, body) = match path.as_str() {
        "/api/items" => (
            200,
            r#"{"items":[{"id":1,"name":"tea"},{"id":2,"name":"cake"}]}"#.to_owned(),
        ),
        "/api/price" => {
            let price = if version == 2 { "4.75" } else { "4.5" };
            (
                200,
                format!(r#"{{"sku":"{query}","price":{price},"currency":"EUR"}}"#),
            )
        }
        "/api/noisy" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (
                200,
                format!(r#"{{"request_id":"{random:016x}","generated_at":{now},"name":"stable"}}"#),
            )
        }
        "/api/seq" => (
            200,
            format!(r#"{{"on_this_connection":{n},"query":"{query}"}}"#),
        ),
        _ => (404, r#"{"error":"not found"}"#.to_owned()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The production server the recordings claim to come from (never a test target).
pub fn prod() -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
        port: 8080,
        service: Some("shop".into()),
        ..Endpoint::default()
    }
}

pub fn exchange(
    conn: u64,
    seq: u64,
    protocol: Protocol,
    request: Request,
    response: Response,
) -> Exchange {
    let t = 1_700_000_000_000_000_000 + conn * 1_000_000_000 + seq * 1_000_000;
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: conn,
            client: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                port: 40000 + u16::try_from(conn % 1000).unwrap(),
                ..Endpoint::default()
            },
            server: prod(),
        }),
        seq,
        protocol,
        request,
        response: Some(response),
        timing: Timing {
            request_start_ns: t,
            request_end_ns: t + 1000,
            response_start_ns: t + 2000,
            response_end_ns: t + 3000,
        },
        flags: Flags::default(),
        session: None,
    }
}

/// A recorded `GET` and the JSON the production server answered.
pub fn http_get(conn: u64, seq: u64, target: &str, status: u16, body: &str) -> Exchange {
    let request = Request::Http(HttpRequest {
        method: "GET".into(),
        target: target.into(),
        version: "HTTP/1.1".into(),
        headers: vec![
            Header {
                name: "Host".into(),
                value: "shop.prod:8080".into(),
            },
            Header {
                name: "Accept".into(),
                value: "application/json".into(),
            },
        ],
        body: Body::default(),
    });
    let response = Response::Http(HttpResponse {
        version: "HTTP/1.1".into(),
        status,
        reason: "OK".into(),
        headers: vec![
            Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            },
            Header {
                name: "Date".into(),
                value: "Tue, 14 Nov 2023 22:13:20 GMT".into(),
            },
        ],
        body: Body {
            raw: body.into(),
            decoded: None,
            len: body.len() as u64,
            truncated: false,
        },
    });
    exchange(conn, seq, Protocol::Http, request, response)
}

pub fn redis(conn: u64, seq: u64, args: &[&str], reply: RespValue) -> Exchange {
    let request = Request::Redis(RedisCommand {
        args: args.iter().map(|a| (*a).into()).collect(),
        inline: false,
    });
    let mut x = exchange(conn, seq, Protocol::Redis, request, Response::Redis(reply));
    std::sync::Arc::make_mut(&mut x.conn).server.port = 6379;
    std::sync::Arc::make_mut(&mut x.conn).server.service = Some("cache".into());
    x
}

/// The recording of the shop: conn 1 items + price (2 regressions in v2), conn 2 a session of
/// ten ordered requests, conn 3 items.
pub fn shop_recording() -> Vec<Exchange> {
    let mut v = vec![
        http_get(
            1,
            0,
            "/api/items",
            200,
            r#"{"items":[{"id":1,"name":"tea"},{"id":2,"name":"cake"}]}"#,
        ),
        http_get(
            1,
            1,
            "/api/price?a1",
            200,
            r#"{"sku":"a1","price":4.5,"currency":"EUR"}"#,
        ),
        http_get(
            1,
            2,
            "/api/price?b2",
            200,
            r#"{"sku":"b2","price":4.5,"currency":"EUR"}"#,
        ),
    ];
    for i in 0..10 {
        v.push(http_get(
            2,
            i,
            &format!("/api/seq?i={i}"),
            200,
            &format!(r#"{{"on_this_connection":{i},"query":"i={i}"}}"#),
        ));
    }
    v.push(http_get(
        3,
        0,
        "/api/items",
        200,
        r#"{"items":[{"id":1,"name":"tea"},{"id":2,"name":"cake"}]}"#,
    ));
    v
}

pub fn ok_source(
    v: Vec<Exchange>,
) -> impl Iterator<Item = Result<Exchange, String>> + Send + 'static {
    v.into_iter().map(Ok)
}

/// A port nothing listens on.
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
