//! HTTP decoder tests over byte streams captured from a real nginx with curl and python
//! clients (see `fixtures/streams/http/README.md`): insta snapshots of the decoded exchanges,
//! each also decoded in 1-byte chunks and every two-way split.

mod common;

use common::{assert_split_invariant, fixture, load, split_offsets, Chunking, Record};
use deetune_protocols::{DecoderConfig, Direction, Exchange, Protocol, Request, Response};
use serde_json::Value;

/// Exchanges as JSON with long strings (bodies) replaced by their length and a hash, so
/// snapshots of >200 KB bodies stay readable.
fn summary(exchanges: &[Exchange]) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::String(s) if s.len() > 512 => {
                let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                *s = format!("<{} chars, fnv1a {hash:016x}>", s.len());
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(exchanges).expect("exchanges serialize");
    walk(&mut v);
    v
}

fn http(name: &str) -> Vec<Exchange> {
    let exchanges = assert_split_invariant(Protocol::Http, &fixture("http", name));
    insta::assert_yaml_snapshot!(name, summary(&exchanges));
    exchanges
}

/// For fixtures with large compressed bodies: the split invariance is checked with a small
/// decoded-body cap (decompressing 200 KB for each of ~40,000 splits takes minutes in a
/// debug build); the snapshot and the returned exchanges use the default configuration.
fn http_compressed(name: &str) -> Vec<Exchange> {
    let path = fixture("http", name);
    let small = DecoderConfig {
        max_decoded_body: 4096,
        ..DecoderConfig::default()
    };
    let capped = common::assert_split_invariant_with(Protocol::Http, small, &path);
    assert!(capped.iter().any(|e| e.flags.truncated), "the cap was hit");
    let exchanges = common::decode(Protocol::Http, &load(&path), Chunking::AsRecorded);
    let bytewise = common::decode(Protocol::Http, &load(&path), Chunking::Bytewise);
    assert_eq!(exchanges, bytewise);
    insta::assert_yaml_snapshot!(name, summary(&exchanges));
    exchanges
}

fn response(e: &Exchange) -> &deetune_protocols::HttpResponse {
    match &e.response {
        Some(Response::Http(r)) => r,
        other => panic!("no HTTP response: {other:?}"),
    }
}

fn request(e: &Exchange) -> &deetune_protocols::HttpRequest {
    match &e.request {
        Request::Http(r) => r,
        other => panic!("no HTTP request: {other:?}"),
    }
}

#[test]
fn keepalive_get_404_head() {
    let ex = http("keepalive");
    let got: Vec<(String, u16)> = ex
        .iter()
        .map(|e| (e.interface(), response(e).status))
        .collect();
    assert_eq!(
        got,
        [
            ("GET /".to_owned(), 200),
            ("GET /missing".to_owned(), 404),
            ("HEAD /index.html".to_owned(), 200)
        ]
    );
    // HEAD: Content-Length: 63 but no body.
    assert!(response(&ex[2]).body.raw.is_empty());
    assert!(ex.iter().all(|e| e.flags.is_clean()));
}

#[test]
fn not_modified_has_no_body() {
    let ex = http("not_modified");
    assert_eq!(ex.len(), 2);
    assert_eq!(response(&ex[1]).status, 304);
    assert!(response(&ex[1]).body.raw.is_empty());
}

#[test]
fn gzip_chunked_is_decoded() {
    let ex = http_compressed("gzip_chunked");
    assert_eq!(ex.len(), 1);
    let body = &response(&ex[0]).body;
    let decoded = body.decoded.as_ref().expect("a decoded copy");
    assert!(decoded.len() > 200 << 10, "{}", decoded.len());
    let json: Value = serde_json::from_slice(decoded.as_bytes()).expect("the JSON nginx served");
    assert_eq!(json.as_array().map(Vec::len), Some(4000));
    assert_eq!(body.len, body.raw.len() as u64);
}

#[test]
fn large_body_is_kept_whole_under_the_cap() {
    let ex = http("large_body");
    let body = &response(&ex[0]).body;
    assert_eq!(
        (body.len, body.raw.len(), body.truncated),
        (300_000, 300_000, false)
    );
}

/// Guards the body cap: the same stream with a small `max_body` keeps the real length.
#[test]
fn large_body_is_cut_at_the_cap() {
    let config = DecoderConfig {
        max_body: 1000,
        max_decoded_body: 1000,
        max_buffer: 4096,
    };
    let ex =
        common::assert_split_invariant_with(Protocol::Http, config, &fixture("http", "large_body"));
    let body = &response(&ex[0]).body;
    assert_eq!(
        (body.len, body.raw.len(), body.truncated),
        (300_000, 1000, true)
    );
    assert!(ex[0].flags.truncated);
    // The gzip copy is capped too.
    let ex = common::decode_with(
        Protocol::Http,
        config,
        &load(&fixture("http", "gzip_chunked")),
        Chunking::AsRecorded,
    );
    let body = &response(&ex[0]).body;
    assert_eq!(
        body.decoded.as_ref().map(deetune_protocols::Payload::len),
        Some(1000)
    );
    assert!(body.truncated);
}

#[test]
fn post_with_length_and_chunked_bodies() {
    let ex = http("post");
    assert_eq!(ex.len(), 2);
    assert_eq!(request(&ex[0]).body.raw.as_bytes(), b"item=42&qty=3");
    assert_eq!(
        request(&ex[1]).body.raw.as_bytes(),
        b"chunked body from curl"
    );
    assert_eq!(
        response(&ex[1]).body.raw.as_bytes(),
        b"created\nchunked body from curl"
    );
}

#[test]
fn expect_100_continue_pairs_with_the_final_response() {
    let ex = http("continue");
    assert_eq!(ex.len(), 1);
    assert_eq!(response(&ex[0]).status, 200);
    assert_eq!(request(&ex[0]).body.len, 2048);
    assert!(ex[0].flags.is_clean());
}

#[test]
fn pipelined_requests_pair_in_order() {
    let ex = http("pipelined");
    let got: Vec<(String, u16)> = ex
        .iter()
        .map(|e| (e.interface(), response(e).status))
        .collect();
    assert_eq!(
        got,
        [
            ("GET /".to_owned(), 200),
            ("GET /missing".to_owned(), 404),
            ("HEAD /index.html".to_owned(), 200)
        ]
    );
}

#[test]
fn http10_body_until_close() {
    let ex = http_compressed("http10_close");
    assert_eq!(ex.len(), 1);
    assert_eq!(request(&ex[0]).version, "HTTP/1.0");
    let body = &response(&ex[0]).body;
    assert!(body.decoded.as_ref().is_some_and(|d| d.len() > 200 << 10));
    assert!(ex[0].flags.is_clean());
}

#[test]
fn gaps_flag_and_resync() {
    let ex = http("keepalive_gap");
    // Request 2 was lost whole; response 1's body lost some bytes.
    assert_eq!(ex.len(), 3, "{ex:#?}");
    assert!(ex[0].flags.gap && !ex[0].flags.unpaired);
    assert!(ex[1].flags.gap);
    assert_eq!(ex[2].interface(), "HEAD /index.html");
    assert!(ex[2].flags.is_clean());
}

/// Guards the harness itself: split offsets cover every byte of a small stream.
#[test]
fn harness_split_offsets_cover_small_streams() {
    let records = vec![
        Record::Data {
            dir: Direction::Request,
            data: b"abc".to_vec(),
        },
        Record::Gap {
            dir: Direction::Response,
            len: 5,
        },
        Record::Data {
            dir: Direction::Response,
            data: b"de".to_vec(),
        },
    ];
    assert_eq!(split_offsets(&records), vec![1, 2, 3, 4]);
}
