//! Property tests over all three decoders (through `new_decoder`): no panic and bounded memory
//! on arbitrary pushes, gaps and close; and an HTTP encode → decode round trip.

use deetune_protocols::{
    new_decoder, DecoderConfig, Direction, Exchange, Protocol, Request, Response,
};
use proptest::prelude::*;

/// Small caps so that the generated streams go past them.
const CONFIG: DecoderConfig = DecoderConfig {
    max_body: 256,
    max_decoded_body: 256,
    max_buffer: 512,
};

/// The memory bound checked after every call. The HTTP decoder queues at most 64 complete
/// messages per direction waiting for their partner (plus one in progress), each at most
/// `max_buffer` of head, `max_body` of raw body and `max_decoded_body` of decoded copy.
fn bound(c: DecoderConfig) -> usize {
    2 * (64 + 2) * (c.max_buffer + c.max_body + c.max_decoded_body) + 4 * c.max_buffer
}

/// Fragments that make the decoders go past their first state.
const FRAGMENTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"POST /a?b=1 HTTP/1.0\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Encoding: gzip\r\n",
    b"Upgrade: websocket\r\n",
    b"\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
    b"+OK\r\n",
    b"$-1\r\n",
    b"%1\r\n+a\r\n:1\r\n",
    b">3\r\n",
    b"PING\r\n",
    b"\x4a\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB\x00",
    b"\x05\x00\x00\x00\x03SELE",
    b"\x01\x00\x00\x01\x01",
    b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00",
    b"\xff\xff\xff\x00",
];

#[derive(Debug, Clone)]
enum Op {
    Push(Direction, Vec<u8>),
    /// The same bytes pushed many times (long streams without long generation).
    Repeat(Direction, Vec<u8>, u16),
    Gap(Direction, u64),
    Drain,
}

fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Request), Just(Direction::Response)]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::sample::select(FRAGMENTS).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 1..6)
            .prop_map(|v| v.concat()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (dir(), bytes()).prop_map(|(d, b)| Op::Push(d, b)),
        1 => (dir(), bytes(), 1..2000u16).prop_map(|(d, b, n)| Op::Repeat(d, b, n)),
        1 => (dir(), prop_oneof![0..10u64, 0..100_000u64]).prop_map(|(d, n)| Op::Gap(d, n)),
        1 => Just(Op::Drain),
    ]
}

fn run(protocol: Protocol, config: DecoderConfig, ops: &[Op]) -> Vec<Exchange> {
    let mut d = new_decoder(protocol, config).expect("decoder");
    let mut out = Vec::new();
    let limit = bound(config);
    for (i, op) in ops.iter().enumerate() {
        let ts = i as u64;
        match op {
            Op::Push(dir, b) => d.push(*dir, ts, b),
            Op::Repeat(dir, b, n) => {
                for _ in 0..*n {
                    d.push(*dir, ts, b);
                    assert!(
                        d.buffered_bytes() <= limit,
                        "{protocol}: {} buffered",
                        d.buffered_bytes()
                    );
                    if out.len() > 10_000 {
                        out.clear();
                    }
                    d.drain(&mut out);
                }
            }
            Op::Gap(dir, n) => d.gap(*dir, ts, *n),
            Op::Drain => d.drain(&mut out),
        }
        d.drain(&mut out);
        assert!(
            d.buffered_bytes() <= limit,
            "{protocol}: {} bytes buffered, bound {limit}",
            d.buffered_bytes()
        );
    }
    d.close(ops.len() as u64);
    d.drain(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// HTTP never panics and stays within the memory bound, whatever is pushed.
    #[test]
    fn http_no_panic_bounded_memory(ops in proptest::collection::vec(op(), 0..40)) {
        let _ = run(Protocol::Http, CONFIG, &ops);
    }

    /// Redis never panics and stays within the memory bound, whatever is pushed.
    #[test]
    fn redis_no_panic_bounded_memory(ops in proptest::collection::vec(op(), 0..40)) {
        let _ = run(Protocol::Redis, CONFIG, &ops);
    }

    /// MySQL never panics and stays within the memory bound, whatever is pushed.
    #[test]
    fn mysql_no_panic_bounded_memory(ops in proptest::collection::vec(op(), 0..40)) {
        let _ = run(Protocol::Mysql, CONFIG, &ops);
    }
}

// ---- HTTP round trip -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Msg {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: Option<Vec<usize>>,
}

impl Msg {
    fn wire(&self) -> Vec<u8> {
        let mut w = format!("{}\r\n", self.start).into_bytes();
        for (n, v) in &self.headers {
            w.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match &self.chunks {
            Some(sizes) => {
                w.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = &self.body[..];
                for s in sizes.iter().chain(std::iter::once(&usize::MAX)) {
                    if rest.is_empty() {
                        break;
                    }
                    let n = (*s).clamp(1, rest.len());
                    w.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    w.extend_from_slice(&rest[..n]);
                    w.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                w.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                w.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
                );
                w.extend_from_slice(&self.body);
            }
        }
        w
    }
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[ -~]{0,30}"), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(n, val)| (n, val.trim().to_owned()))
            .collect()
    })
}

fn framing(body_len: usize) -> impl Strategy<Value = Option<Vec<usize>>> {
    prop_oneof![
        Just(None),
        proptest::collection::vec(1..=body_len.max(1), 1..5).prop_map(Some),
    ]
}

fn request() -> impl Strategy<Value = Msg> {
    (
        proptest::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"][..]),
        "/[a-z0-9/._-]{0,20}(\\?[a-z]=[0-9]{1,3})?",
        headers(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_flat_map(|(m, path, h, body)| {
            let n = body.len();
            framing(n).prop_map(move |chunks| Msg {
                start: format!("{m} {path} HTTP/1.1"),
                headers: h.clone(),
                body: body.clone(),
                chunks,
            })
        })
}

fn response() -> impl Strategy<Value = Msg> {
    (
        proptest::sample::select(&[200u16, 201, 204, 301, 304, 400, 404, 500][..]),
        headers(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_flat_map(|(status, h, body)| {
            let body = if status == 204 || status == 304 {
                Vec::new()
            } else {
                body
            };
            let n = body.len();
            let fr = if status == 204 || status == 304 {
                Just(None).boxed()
            } else {
                framing(n).boxed()
            };
            fr.prop_map(move |chunks| Msg {
                start: format!("HTTP/1.1 {status} Reason {status}"),
                headers: h.clone(),
                body: body.clone(),
                chunks: if status == 204 || status == 304 {
                    None
                } else {
                    chunks
                },
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Generated requests and responses, serialized, pipelined and pushed in arbitrary
    /// pieces, decode to what was generated.
    #[test]
    fn http_round_trip(
        pairs in proptest::collection::vec((request(), response()), 1..8),
        cuts in proptest::collection::vec(1..200usize, 1..20),
    ) {
        let reqs: Vec<u8> = pairs.iter().flat_map(|(q, _)| q.wire()).collect();
        let resps: Vec<u8> = pairs.iter().flat_map(|(_, s)| {
            // 204/304 carry no body and no framing header is needed.
            let mut s = s.clone();
            let status: u16 = s.start[9..12].parse().unwrap_or(200);
            if status == 204 || status == 304 {
                let mut w = format!("{}\r\n", s.start).into_bytes();
                for (n, v) in &s.headers {
                    w.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                w.extend_from_slice(b"\r\n");
                s.body.clear();
                return w;
            }
            s.wire()
        }).collect();
        let mut d = new_decoder(Protocol::Http, DecoderConfig::default()).expect("decoder");
        // Interleave: request pieces and response pieces alternate, cut by `cuts`.
        let (mut qi, mut si, mut k) = (0usize, 0usize, 0usize);
        while qi < reqs.len() || si < resps.len() {
            let n = cuts[k % cuts.len()];
            k += 1;
            let qn = n.min(reqs.len() - qi);
            d.push(Direction::Request, k as u64, &reqs[qi..qi + qn]);
            qi += qn;
            // Responses never run ahead of their requests' heads by construction here:
            // they only follow once all requests are out, or in lock step.
            if qi == reqs.len() {
                let sn = n.min(resps.len() - si);
                d.push(Direction::Response, k as u64, &resps[si..si + sn]);
                si += sn;
            }
        }
        d.close(u64::MAX / 2);
        let mut out = Vec::new();
        d.drain(&mut out);
        prop_assert_eq!(out.len(), pairs.len());
        for (e, (q, s)) in out.iter().zip(&pairs) {
            prop_assert!(e.flags.is_clean(), "{:?}", e.flags);
            let Request::Http(r) = &e.request else { panic!("not http") };
            prop_assert_eq!(format!("{} {} {}", r.method, r.target, r.version), q.start.clone());
            prop_assert_eq!(r.body.raw.as_bytes(), &q.body[..]);
            for (n, v) in &q.headers {
                prop_assert!(r.headers.iter().any(|h| &h.name == n && h.value.as_bytes() == v.as_bytes()));
            }
            let Some(Response::Http(p)) = &e.response else { panic!("no response") };
            prop_assert_eq!(format!("{} {} {}", p.version, p.status, p.reason), s.start.clone());
            let want: &[u8] = if p.status == 204 || p.status == 304 { b"" } else { &s.body };
            prop_assert_eq!(p.body.raw.as_bytes(), want);
        }
    }
}

/// Guards the HTTP memory bound on long adversarial streams: a head that never ends, a
/// 10 MB body, and thousands of pipelined requests nobody answers.
#[test]
fn http_memory_stays_bounded_on_long_streams() {
    let limit = bound(CONFIG);
    let cases: Vec<Vec<(Direction, Vec<u8>)>> = vec![
        vec![(Direction::Request, b"GET / HTTP/1.1\r\nX: ".to_vec())]
            .into_iter()
            .chain(std::iter::repeat_n(
                (Direction::Request, vec![b'a'; 1000]),
                10_000,
            ))
            .collect(),
        vec![(
            Direction::Response,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".to_vec(),
        )]
        .into_iter()
        .chain(std::iter::repeat_n(
            (Direction::Response, vec![b'b'; 1000]),
            10_000,
        ))
        .collect(),
        std::iter::repeat_n(
            (Direction::Request, b"GET /x HTTP/1.1\r\n\r\n".to_vec()),
            10_000,
        )
        .collect(),
    ];
    for case in cases {
        let mut d = new_decoder(Protocol::Http, CONFIG).expect("decoder");
        let mut max = 0;
        for (i, (dir, b)) in case.iter().enumerate() {
            d.push(*dir, i as u64, b);
            max = max.max(d.buffered_bytes());
        }
        assert!(max <= limit, "{max} > {limit}");
        assert!(max > 0, "buffered_bytes reports what it holds");
    }
}

/// Found by `redis_no_panic_bounded_memory`: a 64 KiB inline line of tiny words (bytes
/// between whitespace) made one command accounted at twice the memory bound; an inline
/// command is now cut at the value budget like a multibulk one.
#[test]
fn redis_inline_line_of_many_tiny_words_stays_bounded() {
    let garbage = vec![
        0, 0, 14, 12, 14, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11, 0,
        0, 0, 0, 0, 0, 14, 32, 14, 0,
    ];
    let ops = [
        Op::Repeat(Direction::Request, vec![0; 5], 1360),
        Op::Push(Direction::Request, b"GET / HTTP/1.1\r\n".to_vec()),
        Op::Repeat(Direction::Request, garbage, 1548),
        Op::Push(Direction::Request, b"%1\r\n+a\r\n:1\r\n".to_vec()),
    ];
    let out = run(Protocol::Redis, CONFIG, &ops);
    assert!(
        out.iter().any(|e| e.flags.truncated),
        "the long inline command is flagged truncated"
    );
}
