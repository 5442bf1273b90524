//! HTTP/1.0 and HTTP/1.1 stream decoder.
//!
//! Each direction runs its own message parser (head with `httparse`, then the body framed by
//! `Content-Length`, `chunked` or the end of the connection). Complete requests and final
//! responses are queued and paired by position (pipelining); 1xx interim responses are
//! skipped. Upgrades (`101`, a `2xx` answer to `CONNECT`) stop decoding: the exchange is
//! flagged `unsupported` and later bytes are counted, not parsed. Gaps inside a body of
//! known length only flag the message; any other gap drops the message in progress (a
//! placeholder keeps the pairing) and the parser resynchronises on the next line that starts
//! like a request line or status line. See `docs/protocols.md`.

mod encoding;

use std::collections::VecDeque;

use crate::{
    Body, DecoderConfig, Direction, Exchange, Flags, Header, HttpRequest, HttpResponse, Payload,
    Protocol, Request, Response, StreamDecoder, Timing,
};

/// Completed messages a direction may queue while waiting for its partner; past this the
/// oldest is emitted unpaired.
const MAX_PENDING: usize = 64;
/// Headers per message httparse is given room for; more is treated as garbage.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line accepted (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 1024;
/// Bytes of an unparsable head kept in the `Raw` placeholder.
const MAX_GARBAGE_KEPT: usize = 1024;

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
const STATUS_START: &[&[u8]] = &[b"HTTP/1."];

/// Decoder for one HTTP/1.x connection.
#[derive(Debug)]
pub struct HttpDecoder {
    config: DecoderConfig,
    req: Side,
    resp: Side,
    /// Heads of requests (by index) the response side may need (method, upgrade).
    req_heads: VecDeque<(u64, ReqInfo)>,
    /// Completed requests waiting for their response.
    req_done: VecDeque<(u64, Msg)>,
    /// Completed final responses waiting for their request.
    resp_done: VecDeque<(u64, Msg)>,
    /// Requests (by index) below this were emitted; a response for them is unpaired.
    req_emitted: u64,
    /// Responses (by index) below this were emitted without their request.
    resp_emitted: u64,
    ready: Vec<Exchange>,
    ready_bytes: usize,
    seq: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct ReqInfo {
    head: bool,
    connect: bool,
    upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

/// One direction's parser.
#[derive(Debug)]
struct Side {
    kind: Kind,
    state: State,
    /// Head bytes (Head state) or the candidate start (Resync state).
    buf: Vec<u8>,
    /// Where to continue looking for the end of the head in `buf`.
    scan_from: usize,
    /// Timestamp of the first byte of `buf` / of the message in progress.
    start_ts: u64,
    /// The message whose body is being read.
    msg: Option<Msg>,
    /// Index of the next message of this direction (final responses only).
    next_index: u64,
    /// Segments held while waiting to learn whether an upgrade happened.
    held: Vec<(u64, Vec<u8>)>,
    held_bytes: usize,
    /// Bytes seen after an upgrade (not parsed).
    tunnel_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for / reading a message head.
    Head,
    /// Body of known remaining length.
    Length(u64),
    /// Chunked body.
    Chunk(ChunkState),
    /// Body until the connection closes.
    UntilClose,
    /// After a gap or garbage: looking for the next message start. `bool`: at a line start.
    Resync(bool),
    /// Request side after a request asking for an upgrade, until its response says.
    AwaitUpgrade,
    /// After an upgrade: nothing is parsed any more.
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the chunk-size line (in `buf`).
    Size,
    /// Chunk data, this much left.
    Data(u64),
    /// The CRLF after chunk data (this many bytes of it seen).
    DataEnd(u8),
    /// Trailer section (lines in `buf`).
    Trailers,
}

/// A message in progress or complete.
#[derive(Debug)]
struct Msg {
    head: Head,
    body: Body,
    encoding: Option<Vec<u8>>,
    start_ts: u64,
    end_ts: u64,
    flags: Flags,
}

#[derive(Debug)]
enum Head {
    Request(HttpRequest),
    Response(HttpResponse),
    /// A message we know existed but could not decode (lost in a gap, or garbage).
    Lost(Payload),
}

impl Msg {
    fn lost(data: Payload, ts: u64, flags: Flags) -> Self {
        Self {
            head: Head::Lost(data),
            body: Body::default(),
            encoding: None,
            start_ts: ts,
            end_ts: ts,
            flags,
        }
    }

    fn bytes(&self) -> usize {
        let head = match &self.head {
            Head::Request(r) => r.target.len() + headers_bytes(&r.headers),
            Head::Response(r) => r.reason.len() + headers_bytes(&r.headers),
            Head::Lost(p) => p.len(),
        };
        head + self.body.raw.len() + self.body.decoded.as_ref().map_or(0, Payload::len)
    }
}

fn headers_bytes(h: &[Header]) -> usize {
    h.iter().map(|h| h.name.len() + h.value.len()).sum()
}

fn gap_flags() -> Flags {
    Flags {
        gap: true,
        ..Flags::default()
    }
}

fn unsupported_flags() -> Flags {
    Flags {
        unsupported: true,
        ..Flags::default()
    }
}

impl Side {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            state: State::Head,
            buf: Vec::new(),
            scan_from: 0,
            start_ts: 0,
            msg: None,
            next_index: 0,
            held: Vec::new(),
            held_bytes: 0,
            tunnel_bytes: 0,
        }
    }

    fn starts(&self) -> &'static [&'static [u8]] {
        match self.kind {
            Kind::Request => METHODS,
            Kind::Response => STATUS_START,
        }
    }

    fn bytes(&self) -> usize {
        self.buf.len() + self.held_bytes + self.msg.as_ref().map_or(0, Msg::bytes)
    }
}

impl HttpDecoder {
    /// A decoder with these limits.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            config,
            req: Side::new(Kind::Request),
            resp: Side::new(Kind::Response),
            req_heads: VecDeque::new(),
            req_done: VecDeque::new(),
            resp_done: VecDeque::new(),
            req_emitted: 0,
            resp_emitted: 0,
            ready: Vec::new(),
            ready_bytes: 0,
            seq: 0,
        }
    }

    fn side(&mut self, kind: Kind) -> &mut Side {
        match kind {
            Kind::Request => &mut self.req,
            Kind::Response => &mut self.resp,
        }
    }

    fn feed(&mut self, kind: Kind, ts: u64, mut input: &[u8]) {
        while !input.is_empty() {
            let n = self.step(kind, ts, input);
            input = &input[n..];
        }
    }

    /// Consume a prefix of `input` (at least one byte unless the state changed), return how
    /// much.
    fn step(&mut self, kind: Kind, ts: u64, input: &[u8]) -> usize {
        let max_buffer = self.config.max_buffer;
        let state = self.side(kind).state;
        match state {
            State::Tunnel => {
                self.side(kind).tunnel_bytes += input.len() as u64;
                input.len()
            }
            State::AwaitUpgrade => {
                let side = self.side(kind);
                // Bounded: past the cap the bytes are dropped and the request side is put
                // into resync if no upgrade happens (see `release_held`).
                let room = max_buffer.saturating_sub(side.held_bytes);
                let take = input.len().min(room);
                if take > 0 {
                    side.held.push((ts, input[..take].to_vec()));
                    side.held_bytes += take;
                }
                if take < input.len() {
                    hold_marker(side, ts); // bytes were dropped here
                }
                input.len()
            }
            State::Resync(at_line_start) => self.resync(kind, ts, input, at_line_start),
            State::Head => self.head(kind, ts, input),
            State::Length(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                self.body_bytes(kind, &input[..n]);
                let left = left - n as u64;
                if left == 0 {
                    self.finish_message(kind, ts, Flags::default());
                } else {
                    self.side(kind).state = State::Length(left);
                }
                n
            }
            State::UntilClose => {
                self.body_bytes(kind, input);
                input.len()
            }
            State::Chunk(cs) => self.chunk(kind, ts, input, cs),
        }
    }

    fn resync(&mut self, kind: Kind, ts: u64, input: &[u8], at_line_start: bool) -> usize {
        let side = self.side(kind);
        if !at_line_start {
            return match memchr(b'\n', input) {
                Some(p) => {
                    side.state = State::Resync(true);
                    p + 1
                }
                None => input.len(),
            };
        }
        // At a line start: collect up to the longest start pattern and compare.
        if side.buf.is_empty() {
            side.start_ts = ts;
        }
        let longest = side.starts().iter().map(|s| s.len()).max().unwrap_or(1);
        let take = longest.saturating_sub(side.buf.len()).min(input.len());
        side.buf.extend_from_slice(&input[..take]);
        let starts = side.starts();
        if starts.iter().any(|s| side.buf.starts_with(s)) {
            side.state = State::Head;
            side.scan_from = 0;
            return take;
        }
        if starts.iter().any(|s| s.starts_with(&side.buf)) {
            // Still a possible start: need more bytes (all of `input` was taken).
            return take;
        }
        // Not a start: drop through the next newline in what we hold; what follows it
        // starts a new line (and stays held as the next candidate).
        match memchr(b'\n', &side.buf) {
            Some(p) => {
                side.buf.drain(..=p);
                side.state = State::Resync(true);
            }
            None => {
                side.buf.clear();
                side.state = State::Resync(false);
            }
        }
        take
    }

    fn head(&mut self, kind: Kind, ts: u64, input: &[u8]) -> usize {
        let max_buffer = self.config.max_buffer;
        let side = self.side(kind);
        if side.buf.is_empty() {
            side.start_ts = ts;
            side.scan_from = 0;
            // Leading empty lines between messages are tolerated (RFC 9112 2.2).
            if input[0] == b'\r' || input[0] == b'\n' {
                return 1;
            }
            // Fast path: the whole head is in this push. httparse finds its end while it
            // parses (no separate scan for the blank line); a partial or invalid head takes
            // the buffered path below, which finds the end first, as before.
            if let Some((head, end)) = try_parse(kind, input) {
                if end <= max_buffer {
                    let start_ts = side.start_ts;
                    self.accept_head(kind, start_ts, ts, head);
                    return end;
                }
            }
        }
        let side = self.side(kind);
        let old = side.buf.len();
        let room = (max_buffer + 4).saturating_sub(old);
        let take = input.len().min(room);
        side.buf.extend_from_slice(&input[..take]);
        match find_head_end(&side.buf, side.scan_from.saturating_sub(3)) {
            Some(end) if end <= max_buffer => {
                let mut head = std::mem::take(&mut side.buf);
                let tail = head.split_off(end);
                let start_ts = side.start_ts;
                self.parse_head(kind, start_ts, ts, &head);
                if end >= old {
                    // The head ended in this input: the rest of it is consumed by the caller.
                    end - old
                } else {
                    // The head ended inside bytes held from before (a resync candidate):
                    // what follows it, held bytes and this input alike, is parsed now.
                    self.feed(kind, ts, &tail);
                    take
                }
            }
            Some(_) => {
                self.garbage(kind, ts, false);
                take
            }
            None => {
                side.scan_from = side.buf.len();
                if side.buf.len() > max_buffer {
                    self.garbage(kind, ts, false);
                }
                take
            }
        }
    }

    /// The head in `side.buf` cannot be parsed: queue a placeholder and resync.
    fn garbage(&mut self, kind: Kind, ts: u64, at_line_start: bool) {
        let side = self.side(kind);
        let buf = std::mem::take(&mut side.buf);
        let keep = buf.len().min(MAX_GARBAGE_KEPT);
        let start = side.start_ts;
        side.state = State::Resync(at_line_start);
        let mut msg = Msg::lost(Payload(buf[..keep].to_vec()), start, unsupported_flags());
        msg.end_ts = ts;
        self.complete(kind, msg);
    }

    fn parse_head(&mut self, kind: Kind, start_ts: u64, ts: u64, bytes: &[u8]) {
        let parsed = try_parse(kind, bytes).map(|(head, _)| head);
        let Some(head) = parsed else {
            let side = self.side(kind);
            side.buf.clear();
            side.buf.extend_from_slice(bytes);
            side.start_ts = start_ts;
            // The bytes up to the blank line were consumed: the next one starts a line.
            self.garbage(kind, ts, true);
            return;
        };
        self.accept_head(kind, start_ts, ts, head);
    }

    /// A parsed head: work out its framing, queue or finish the message.
    fn accept_head(&mut self, kind: Kind, start_ts: u64, ts: u64, head: Head) {
        let hdrs: &[Header] = match &head {
            Head::Request(r) => &r.headers,
            Head::Response(r) => &r.headers,
            Head::Lost(_) => &[],
        };
        let encoding = crate::model::find_header(hdrs, "content-encoding").map(|p| p.0.clone());
        let framing = framing(hdrs);
        let mut msg = Msg {
            head,
            body: Body::default(),
            encoding,
            start_ts,
            end_ts: ts,
            flags: Flags::default(),
        };
        let next = match &msg.head {
            Head::Request(r) => {
                let info = ReqInfo {
                    head: r.method.eq_ignore_ascii_case("HEAD"),
                    connect: r.method.eq_ignore_ascii_case("CONNECT"),
                    upgrade: crate::model::find_header(&r.headers, "upgrade").is_some(),
                };
                let idx = self.req.next_index;
                self.req_heads.push_back((idx, info));
                if self.req_heads.len() > MAX_PENDING {
                    self.req_heads.pop_front();
                }
                match framing {
                    Framing::Chunked => State::Chunk(ChunkState::Size),
                    Framing::Length(n) => State::Length(n),
                    // A request without length has no body (RFC 9112 6.3).
                    Framing::None | Framing::UntilClose => State::Head,
                    Framing::Invalid => {
                        msg.flags.unsupported = true;
                        State::Head
                    }
                }
            }
            Head::Response(r) => {
                let idx = self.resp.next_index;
                let info = self
                    .req_heads
                    .iter()
                    .find(|(i, _)| *i == idx)
                    .map(|(_, info)| *info)
                    .unwrap_or_default();
                let status = r.status;
                if (100..200).contains(&status) && status != 101 {
                    // Interim response (100 Continue, 103 Early Hints): not the final one.
                    return;
                }
                if status == 101 || (info.connect && (200..300).contains(&status)) {
                    msg.flags.unsupported = true;
                    self.start_tunnel();
                    self.resp.msg = Some(msg);
                    self.finish_message(Kind::Response, ts, Flags::default());
                    self.resp.state = State::Tunnel;
                    return;
                }
                if info.upgrade || info.connect {
                    self.release_held();
                }
                if info.head || status == 204 || status == 304 {
                    State::Head
                } else {
                    match framing {
                        Framing::Chunked => State::Chunk(ChunkState::Size),
                        Framing::Length(n) => State::Length(n),
                        Framing::None | Framing::UntilClose => State::UntilClose,
                        Framing::Invalid => {
                            msg.flags.unsupported = true;
                            State::UntilClose
                        }
                    }
                }
            }
            Head::Lost(_) => State::Head,
        };
        let side = self.side(kind);
        side.msg = Some(msg);
        match next {
            State::Head | State::Length(0) => {
                self.finish_message(kind, ts, Flags::default());
            }
            s => self.side(kind).state = s,
        }
        if kind == Kind::Request {
            // After a request that may switch protocols, hold the request side's bytes
            // until the response says whether it did.
            let info = self.req_heads.back().map(|(_, i)| *i).unwrap_or_default();
            if (info.upgrade || info.connect) && self.req.state == State::Head {
                self.req.state = State::AwaitUpgrade;
            }
        }
    }

    fn start_tunnel(&mut self) {
        self.req.state = State::Tunnel;
        self.req.held.clear();
        self.req.held_bytes = 0;
        self.req.buf.clear();
    }

    /// The response to an upgrade request did not switch protocols: parse what was held.
    fn release_held(&mut self) {
        if self.req.state != State::AwaitUpgrade {
            return;
        }
        self.req.state = State::Head;
        let held = std::mem::take(&mut self.req.held);
        self.req.held_bytes = 0;
        for (ts, bytes) in held {
            if bytes.is_empty() {
                // Bytes were dropped past the cap: what follows is not aligned.
                self.lose(Kind::Request, ts);
            } else {
                self.feed(Kind::Request, ts, &bytes);
            }
        }
    }

    fn body_bytes(&mut self, kind: Kind, bytes: &[u8]) {
        let max_body = self.config.max_body;
        let side = self.side(kind);
        if let Some(msg) = side.msg.as_mut() {
            let body = &mut msg.body;
            body.len += bytes.len() as u64;
            let room = max_body.saturating_sub(body.raw.len());
            if bytes.len() > room {
                body.truncated = true;
                msg.flags.truncated = true;
            }
            let take = room.min(bytes.len());
            body.raw.0.extend_from_slice(&bytes[..take]);
        }
    }

    fn chunk(&mut self, kind: Kind, ts: u64, input: &[u8], cs: ChunkState) -> usize {
        match cs {
            ChunkState::Size => {
                let side = self.side(kind);
                let (line_done, n) = match memchr(b'\n', input) {
                    Some(p) => (true, p + 1),
                    None => (false, input.len()),
                };
                side.buf.extend_from_slice(&input[..n]);
                if side.buf.len() > MAX_CHUNK_LINE {
                    self.abort_message(kind, ts, unsupported_flags());
                    return n;
                }
                if !line_done {
                    return n;
                }
                let line = std::mem::take(&mut side.buf);
                match parse_chunk_size(&line) {
                    Some(0) => {
                        side.scan_from = 0;
                        side.state = State::Chunk(ChunkState::Trailers);
                    }
                    Some(size) => side.state = State::Chunk(ChunkState::Data(size)),
                    None => self.abort_message(kind, ts, unsupported_flags()),
                }
                n
            }
            ChunkState::Data(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                self.body_bytes(kind, &input[..n]);
                let left = left - n as u64;
                self.side(kind).state = State::Chunk(if left == 0 {
                    ChunkState::DataEnd(0)
                } else {
                    ChunkState::Data(left)
                });
                n
            }
            ChunkState::DataEnd(seen) => {
                // Expect "\r\n" (a bare "\n" is tolerated).
                let b = input[0];
                let side = self.side(kind);
                match (seen, b) {
                    (0, b'\r') => side.state = State::Chunk(ChunkState::DataEnd(1)),
                    (_, b'\n') => side.state = State::Chunk(ChunkState::Size),
                    _ => self.abort_message(kind, ts, unsupported_flags()),
                }
                1
            }
            ChunkState::Trailers => {
                let max_buffer = self.config.max_buffer;
                let side = self.side(kind);
                let (line_done, n) = match memchr(b'\n', input) {
                    Some(p) => (true, p + 1),
                    None => (false, input.len()),
                };
                let line_start = side.scan_from.min(side.buf.len());
                side.buf.extend_from_slice(&input[..n]);
                if side.buf.len() > max_buffer {
                    self.abort_message(kind, ts, unsupported_flags());
                    return n;
                }
                if !line_done {
                    return n;
                }
                let line = &side.buf[line_start..];
                if line == b"\r\n" || line == b"\n" {
                    let trailers = std::mem::take(&mut side.buf);
                    side.scan_from = 0;
                    let parsed = parse_trailers(&trailers[..line_start]);
                    if let Some(msg) = side.msg.as_mut() {
                        match &mut msg.head {
                            Head::Request(r) => r.headers.extend(parsed),
                            Head::Response(r) => r.headers.extend(parsed),
                            Head::Lost(_) => {}
                        }
                    }
                    self.finish_message(kind, ts, Flags::default());
                } else {
                    side.scan_from = side.buf.len();
                }
                n
            }
        }
    }

    /// The message in progress breaks its framing: keep what we have, flagged, and resync.
    fn abort_message(&mut self, kind: Kind, ts: u64, flags: Flags) {
        self.finish_message(kind, ts, flags);
        let side = self.side(kind);
        side.buf.clear();
        side.scan_from = 0;
        side.state = State::Resync(false);
    }

    /// The message in progress is complete: decode its body and queue it.
    fn finish_message(&mut self, kind: Kind, ts: u64, extra: Flags) {
        let cap = self.config.max_decoded_body;
        let side = self.side(kind);
        side.state = State::Head;
        side.buf.clear();
        side.scan_from = 0;
        let Some(mut msg) = side.msg.take() else {
            return;
        };
        msg.end_ts = ts;
        merge(&mut msg.flags, extra);
        if let Some(enc) = msg.encoding.take() {
            if !msg.body.raw.is_empty() {
                if let Some((decoded, cut)) = encoding::decode(&enc, msg.body.raw.as_bytes(), cap) {
                    msg.body.decoded = Some(decoded);
                    if cut {
                        msg.body.truncated = true;
                        msg.flags.truncated = true;
                    }
                }
            }
        }
        let body = std::mem::take(&mut msg.body);
        match &mut msg.head {
            Head::Request(r) => r.body = body,
            Head::Response(r) => r.body = body,
            Head::Lost(_) => {}
        }
        self.complete(kind, msg);
    }

    /// A message of this direction is known to be lost: queue a placeholder and resync.
    fn lose(&mut self, kind: Kind, ts: u64) {
        let side = self.side(kind);
        side.buf.clear();
        side.scan_from = 0;
        side.state = State::Resync(true);
        self.complete(kind, Msg::lost(Payload::default(), ts, gap_flags()));
    }

    /// Queue a complete message (or placeholder) and pair what can be paired.
    fn complete(&mut self, kind: Kind, msg: Msg) {
        let side = self.side(kind);
        let idx = side.next_index;
        side.next_index += 1;
        match kind {
            Kind::Request => {
                if idx < self.resp_emitted {
                    self.emit(Some(msg), None);
                    self.req_emitted = self.req_emitted.max(idx + 1);
                } else {
                    self.req_done.push_back((idx, msg));
                }
            }
            Kind::Response => {
                if idx < self.req_emitted {
                    self.emit(None, Some(msg));
                    self.resp_emitted = self.resp_emitted.max(idx + 1);
                } else if self.resp_done.is_empty()
                    && self.req_done.front().is_some_and(|(qi, _)| *qi == idx)
                {
                    // The usual case: its request is first in line. Pair it right away
                    // (what `pair` would do) without queueing the response first.
                    if let Some((qi, q)) = self.req_done.pop_front() {
                        self.paired(qi, q, msg);
                    }
                    return;
                } else {
                    self.resp_done.push_back((idx, msg));
                }
            }
        }
        self.pair();
    }

    /// Emits request `qi` with its response.
    fn paired(&mut self, qi: u64, q: Msg, s: Msg) {
        self.req_emitted = qi + 1;
        self.resp_emitted = qi + 1;
        self.req_heads.retain(|(i, _)| *i > qi);
        self.emit(Some(q), Some(s));
    }

    fn pair(&mut self) {
        loop {
            match (self.req_done.front(), self.resp_done.front()) {
                (Some((qi, _)), Some((si, _))) if qi == si => {
                    let (qi, q) = self.req_done.pop_front().expect("front exists");
                    let (_, s) = self.resp_done.pop_front().expect("front exists");
                    self.paired(qi, q, s);
                }
                _ => break,
            }
        }
        while self.req_done.len() > MAX_PENDING {
            if let Some((qi, q)) = self.req_done.pop_front() {
                self.req_emitted = qi + 1;
                self.emit(Some(q), None);
            }
        }
        while self.resp_done.len() > MAX_PENDING {
            if let Some((si, s)) = self.resp_done.pop_front() {
                self.resp_emitted = si + 1;
                self.emit(None, Some(s));
            }
        }
    }

    fn emit(&mut self, req: Option<Msg>, resp: Option<Msg>) {
        let mut flags = Flags::default();
        let mut timing = Timing::default();
        if req.is_none() || resp.is_none() {
            flags.unpaired = true;
        }
        let request = match req {
            Some(m) => {
                merge(&mut flags, m.flags);
                timing.request_start_ns = m.start_ts;
                timing.request_end_ns = m.end_ts;
                match m.head {
                    Head::Request(r) => Request::Http(r),
                    Head::Response(_) => Request::Raw {
                        data: Payload::default(),
                    },
                    Head::Lost(data) => Request::Raw { data },
                }
            }
            None => Request::Raw {
                data: Payload::default(),
            },
        };
        let response = resp.map(|m| {
            merge(&mut flags, m.flags);
            timing.response_start_ns = m.start_ts;
            timing.response_end_ns = m.end_ts;
            match m.head {
                Head::Response(r) => Response::Http(r),
                Head::Request(_) => Response::Raw {
                    data: Payload::default(),
                },
                Head::Lost(data) => Response::Raw { data },
            }
        });
        if matches!(request, Request::Raw { .. }) && timing.request_start_ns == 0 {
            timing.request_start_ns = timing.response_start_ns;
            timing.request_end_ns = timing.response_start_ns;
        }
        let ex = Exchange {
            conn: std::sync::Arc::default(),
            seq: self.seq,
            protocol: Protocol::Http,
            request,
            response,
            timing,
            flags,
            session: None,
        };
        self.seq += 1;
        self.ready_bytes += exchange_bytes(&ex);
        self.ready.push(ex);
    }
}

fn exchange_bytes(ex: &Exchange) -> usize {
    let req = match &ex.request {
        Request::Http(r) => {
            r.target.len()
                + headers_bytes(&r.headers)
                + r.body.raw.len()
                + r.body.decoded.as_ref().map_or(0, Payload::len)
        }
        Request::Raw { data } => data.len(),
        _ => 0,
    };
    let resp = match &ex.response {
        Some(Response::Http(r)) => {
            r.reason.len()
                + headers_bytes(&r.headers)
                + r.body.raw.len()
                + r.body.decoded.as_ref().map_or(0, Payload::len)
        }
        Some(Response::Raw { data }) => data.len(),
        _ => 0,
    };
    req + resp
}

fn merge(into: &mut Flags, f: Flags) {
    into.truncated |= f.truncated;
    into.gap |= f.gap;
    into.unpaired |= f.unpaired;
    into.encrypted |= f.encrypted;
    into.unsupported |= f.unsupported;
}

impl StreamDecoder for HttpDecoder {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }

    fn push(&mut self, dir: Direction, ts_ns: u64, bytes: &[u8]) {
        let kind = kind_of(dir);
        self.feed(kind, ts_ns, bytes);
    }

    fn gap(&mut self, dir: Direction, ts_ns: u64, len: u64) {
        if len == 0 {
            return;
        }
        let kind = kind_of(dir);
        let side = self.side(kind);
        match side.state {
            State::Tunnel => side.tunnel_bytes += len,
            State::Length(left) if len < left => {
                side.state = State::Length(left - len);
                mark_body_gap(side, len);
            }
            State::Length(left) if len == left => {
                mark_body_gap(side, len);
                self.finish_message(kind, ts_ns, gap_flags());
            }
            State::Chunk(ChunkState::Data(left)) if len <= left => {
                mark_body_gap(side, len);
                side.state = State::Chunk(if len == left {
                    ChunkState::DataEnd(0)
                } else {
                    ChunkState::Data(left - len)
                });
            }
            State::UntilClose => mark_body_gap(side, len),
            State::Resync(_) => {
                // Still looking; the next byte may start a message.
                side.buf.clear();
                side.state = State::Resync(true);
            }
            State::AwaitUpgrade => hold_marker(side, ts_ns),
            State::Head => {
                // Between messages (at least one whole message was lost) or inside a head.
                self.lose(kind, ts_ns);
            }
            State::Length(_) | State::Chunk(_) => {
                // The gap runs past this body: keep the message, flagged, and resync.
                if let Some(m) = side.msg.as_mut() {
                    m.body.truncated = true;
                }
                self.finish_message(kind, ts_ns, gap_flags());
                let side = self.side(kind);
                side.state = State::Resync(true);
            }
        }
    }

    fn close(&mut self, ts_ns: u64) {
        if self.req.state == State::AwaitUpgrade {
            self.release_held();
        }
        for kind in [Kind::Request, Kind::Response] {
            let side = self.side(kind);
            match side.state {
                State::UntilClose => self.finish_message(kind, ts_ns, Flags::default()),
                State::Length(_) | State::Chunk(_) => {
                    if let Some(m) = side.msg.as_mut() {
                        m.body.truncated = true;
                    }
                    self.finish_message(
                        kind,
                        ts_ns,
                        Flags {
                            truncated: true,
                            ..Flags::default()
                        },
                    );
                }
                State::Head if !side.buf.is_empty() => {
                    // A head that never ended.
                    let side = self.side(kind);
                    let buf = std::mem::take(&mut side.buf);
                    let keep = buf.len().min(MAX_GARBAGE_KEPT);
                    let start = side.start_ts;
                    let mut msg = Msg::lost(
                        Payload(buf[..keep].to_vec()),
                        start,
                        Flags {
                            truncated: true,
                            ..Flags::default()
                        },
                    );
                    msg.end_ts = ts_ns;
                    self.complete(kind, msg);
                }
                _ => {}
            }
            let side = self.side(kind);
            side.buf.clear();
            side.state = State::Tunnel;
        }
        // Everything left is unpaired, in request order.
        let mut reqs = std::mem::take(&mut self.req_done);
        let mut resps = std::mem::take(&mut self.resp_done);
        loop {
            match (reqs.front(), resps.front()) {
                (None, None) => break,
                (Some((qi, _)), Some((si, _))) if qi == si => {
                    let q = reqs.pop_front().map(|(_, m)| m);
                    let s = resps.pop_front().map(|(_, m)| m);
                    self.emit(q, s);
                }
                (Some((qi, _)), Some((si, _))) if si < qi => {
                    let s = resps.pop_front().map(|(_, m)| m);
                    self.emit(None, s);
                }
                (Some(_), _) => {
                    let q = reqs.pop_front().map(|(_, m)| m);
                    self.emit(q, None);
                }
                (None, Some(_)) => {
                    let s = resps.pop_front().map(|(_, m)| m);
                    self.emit(None, s);
                }
            }
        }
        self.req_heads.clear();
    }

    fn drain(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.ready);
        self.ready_bytes = 0;
    }

    fn buffered_bytes(&self) -> usize {
        let queued: usize = self
            .req_done
            .iter()
            .chain(self.resp_done.iter())
            .map(|(_, m)| m.bytes())
            .sum();
        self.req.bytes() + self.resp.bytes() + queued + self.ready_bytes
    }
}

/// Remember that held bytes were lost at this point (once per run of losses).
fn hold_marker(side: &mut Side, ts: u64) {
    if side.held.last().is_none_or(|(_, b)| !b.is_empty()) {
        side.held.push((ts, Vec::new()));
    }
}

fn mark_body_gap(side: &mut Side, len: u64) {
    if let Some(m) = side.msg.as_mut() {
        m.flags.gap = true;
        m.flags.truncated = true;
        m.body.len += len;
        m.body.truncated = true;
    }
}

fn kind_of(dir: Direction) -> Kind {
    match dir {
        Direction::Request => Kind::Request,
        Direction::Response => Kind::Response,
    }
}

fn version(v: Option<u8>) -> String {
    match v {
        Some(0) => "HTTP/1.0".to_owned(),
        _ => "HTTP/1.1".to_owned(),
    }
}

/// Parses a complete head at the start of `bytes`: the head and its length (through the
/// blank line). None when the head is incomplete or invalid.
fn try_parse(kind: Kind, bytes: &[u8]) -> Option<(Head, usize)> {
    // Uninitialised slots: httparse writes the ones it uses (saves a 4 KiB memset).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    match kind {
        Kind::Request => {
            let mut r = httparse::Request::new(&mut []);
            match r.parse_with_uninit_headers(bytes, &mut headers) {
                Ok(httparse::Status::Complete(n)) => Some((
                    Head::Request(HttpRequest {
                        method: r.method.unwrap_or_default().to_owned(),
                        target: r.path.unwrap_or_default().to_owned(),
                        version: version(r.version),
                        headers: to_headers(r.headers),
                        body: Body::default(),
                    }),
                    n,
                )),
                _ => None,
            }
        }
        Kind::Response => {
            let mut r = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut r,
                bytes,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(n)) => Some((
                    Head::Response(HttpResponse {
                        version: version(r.version),
                        status: r.code.unwrap_or_default(),
                        reason: r.reason.unwrap_or_default().to_owned(),
                        headers: to_headers(r.headers),
                        body: Body::default(),
                    }),
                    n,
                )),
                _ => None,
            }
        }
    }
}

fn to_headers(h: &[httparse::Header<'_>]) -> Vec<Header> {
    h.iter()
        .map(|h| Header {
            name: h.name.to_owned(),
            value: Payload(h.value.to_vec()),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Chunked,
    Length(u64),
    UntilClose,
    Invalid,
}

/// Body framing from the headers (RFC 9112 6.3), before the status/method rules.
fn framing(headers: &[Header]) -> Framing {
    let mut te_seen = false;
    let mut chunked_last = false;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_seen = true;
            let last = h
                .value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            chunked_last = encoding_is(last, b"chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_length(h.value.as_bytes()) else {
                return Framing::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return Framing::Invalid;
            }
            length = Some(n);
        }
    }
    if te_seen {
        return if chunked_last {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
    }
    match length {
        Some(n) => Framing::Length(n),
        None => Framing::None,
    }
}

fn encoding_is(v: &[u8], name: &[u8]) -> bool {
    let v: Vec<u8> = v
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .collect();
    let end = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |e| e + 1);
    v[..end].eq_ignore_ascii_case(name)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    // "Content-Length: 5, 5" is allowed when all values agree.
    let mut out: Option<u64> = None;
    for part in v.split(|&b| b == b',') {
        let s = std::str::from_utf8(part).ok()?.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = s.parse().ok()?;
        if out.is_some_and(|o| o != n) {
            return None;
        }
        out = Some(n);
    }
    out
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line.split(|&b| b == b';').next()?;
    let size = std::str::from_utf8(size).ok()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

fn parse_trailers(bytes: &[u8]) -> Vec<Header> {
    let mut out = Vec::new();
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr(b':', line) else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = &line[colon + 1..];
        let start = value
            .iter()
            .position(|c| !c.is_ascii_whitespace())
            .unwrap_or(value.len());
        if !name.is_empty() {
            out.push(Header {
                name,
                value: Payload(value[start..].to_vec()),
            });
        }
    }
    out
}

/// End (exclusive) of a message head (`\r\n\r\n` or `\n\n`) in `buf`, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = memchr(b'\n', &buf[i.min(buf.len())..]) {
        let nl = i + p;
        if buf.get(nl + 1) == Some(&b'\n') {
            return Some(nl + 2);
        }
        if buf.get(nl + 1) == Some(&b'\r') && buf.get(nl + 2) == Some(&b'\n') {
            return Some(nl + 3);
        }
        i = nl + 1;
    }
    None
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[(Direction, &[u8])]) -> Vec<Exchange> {
        let mut d = HttpDecoder::new(DecoderConfig::default());
        for (i, (dir, b)) in chunks.iter().enumerate() {
            d.push(*dir, i as u64, b);
        }
        d.close(99);
        let mut out = Vec::new();
        d.drain(&mut out);
        out
    }

    /// Regression (found by `cargo fuzz`): a resync candidate that already holds the end of
    /// the head made the consumed count underflow.
    #[test]
    fn head_ending_inside_a_resync_candidate() {
        let mut d = HttpDecoder::new(DecoderConfig::default());
        d.push(Direction::Request, 1, b"\x00garbage\r\n\r\n");
        d.push(Direction::Request, 2, b"GET \n\nGE");
        d.push(Direction::Request, 3, b"T /ok HTTP/1.1\r\n\r\n");
        d.close(4);
        let mut out = Vec::new();
        d.drain(&mut out);
        assert!(out.iter().any(|e| e.interface() == "GET /ok"), "{out:#?}");
    }

    #[test]
    fn head_end_is_found_with_both_line_ends() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nX", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nX", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn framing_rules() {
        let h = |n: &str, v: &str| Header {
            name: n.to_owned(),
            value: Payload::from(v),
        };
        assert_eq!(framing(&[h("Content-Length", "5")]), Framing::Length(5));
        assert_eq!(framing(&[h("Content-Length", "5, 5")]), Framing::Length(5));
        assert_eq!(framing(&[h("Content-Length", "5, 6")]), Framing::Invalid);
        assert_eq!(framing(&[h("Content-Length", "-1")]), Framing::Invalid);
        assert_eq!(
            framing(&[
                h("Transfer-Encoding", "gzip, chunked"),
                h("Content-Length", "3")
            ]),
            Framing::Chunked
        );
        assert_eq!(
            framing(&[h("Transfer-Encoding", "gzip")]),
            Framing::UntilClose
        );
        assert_eq!(parse_chunk_size(b"1a;ext=1\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"zz\r\n"), None);
    }

    #[test]
    fn upgrade_stops_parsing() {
        let out = run(&[
            (
                Direction::Request,
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
            ),
            (
                Direction::Response,
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
            ),
            (Direction::Request, b"GET /not-parsed HTTP/1.1\r\n\r\n"),
        ]);
        assert_eq!(out.len(), 1);
        assert!(out[0].flags.unsupported);
        assert_eq!(out[0].interface(), "GET /ws");
    }

    #[test]
    fn refused_upgrade_keeps_parsing() {
        let out = run(&[
            (
                Direction::Request,
                b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            ),
            (
                Direction::Response,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
            ),
        ]);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out.iter().all(|e| e.flags.is_clean()), "{out:#?}");
        assert_eq!(out[1].interface(), "GET /b");
    }

    #[test]
    fn gap_inside_a_body_only_flags_it() {
        let mut d = HttpDecoder::new(DecoderConfig::default());
        d.push(Direction::Request, 1, b"GET / HTTP/1.1\r\n\r\n");
        d.push(
            Direction::Response,
            2,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab",
        );
        d.gap(Direction::Response, 3, 5);
        d.push(Direction::Response, 4, b"cde");
        d.push(Direction::Request, 5, b"GET /2 HTTP/1.1\r\n\r\n");
        d.push(Direction::Response, 6, b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut out = Vec::new();
        d.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert!(out[0].flags.gap && out[0].flags.truncated);
        let Some(Response::Http(r)) = &out[0].response else {
            panic!("no response");
        };
        assert_eq!((r.body.len, r.body.raw.as_bytes()), (10, &b"abcde"[..]));
        assert!(out[1].flags.is_clean());
    }

    #[test]
    fn gap_between_messages_resyncs_with_a_placeholder() {
        let mut d = HttpDecoder::new(DecoderConfig::default());
        d.push(Direction::Request, 1, b"GET /1 HTTP/1.1\r\n\r\n");
        d.gap(Direction::Request, 2, 100);
        d.push(Direction::Request, 3, b"y\r\nGET /3 HTTP/1.1\r\n\r\n");
        d.push(
            Direction::Response,
            4,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
        );
        d.push(
            Direction::Response,
            5,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3",
        );
        let mut out = Vec::new();
        d.drain(&mut out);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out[1].flags.gap);
        assert_eq!(out[2].interface(), "GET /3");
    }
}
