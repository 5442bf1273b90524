//! Redis decoder: RESP2/RESP3 commands and replies paired into exchanges.
//!
//! - Commands are multibulk arrays or inline lines; replies pair with commands in order, so
//!   pipelining and MULTI/EXEC (`+QUEUED` per queued command, EXEC's array for EXEC) need no
//!   special case. RESP3 (after `HELLO 3`) is parsed by the same parser (RESP3 is a superset).
//! - Pub/sub: a `(P|S)(UN)SUBSCRIBE` command pairs with its first confirmation. Further
//!   confirmations, published messages (RESP2 `message`/`pmessage`/`smessage` arrays while
//!   subscribed) and RESP3 `>` pushes each become an exchange flagged `unpaired`, whose
//!   request is the subscription command that asked for them (or an empty `Raw` request when
//!   none was seen, e.g. client-tracking invalidations).
//! - A reply with no command waiting becomes an `unpaired` exchange with an empty `Raw`
//!   request; a command with no reply at close is emitted `unpaired` with no response.
//! - Values longer than `max_body` (one bulk string, or the sum of an aggregate) are cut and
//!   flagged `truncated`; the skipped bytes are counted, never buffered.
//! - Gaps and garbage: the partial message is dropped and the direction resynchronises on the
//!   next plausible message start (`*<n>\r\n$` for commands, a well-formed header line for
//!   replies). A request-side loss flags the next command `gap`; a response-side loss emits
//!   every waiting command with no response, flagged `gap` (their replies cannot be told
//!   apart any more; later replies without command come out `unpaired`). Undecodable bytes
//!   are handled the same way but flagged `unsupported` instead of `gap`.

mod resp;

use std::collections::VecDeque;

use resp::{find_resync, Parsed, RespParser, Resync, Side};

use crate::{
    DecoderConfig, Direction, Exchange, Flags, Payload, Protocol, RedisCommand, Request, RespValue,
    Response, StreamDecoder, Timing,
};

/// Longest resync candidate we keep across pushes.
const RESYNC_KEEP: usize = 512;

/// Decoder for one Redis connection. See the module docs for what it marks.
#[derive(Debug)]
pub struct RedisDecoder {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    ready: Vec<Exchange>,
    seq: u64,
    /// Subscribed (RESP2 pushes are recognised only then).
    subscribed: bool,
    /// The last subscribe command, as the request of the pushes it caused.
    sub_cmd: Option<RedisCommand>,
    /// Scratch for parsed messages.
    parsed: Vec<Parsed>,
    /// Approximate bytes held by `pending`.
    pending_bytes: usize,
    /// Cap on `pending_bytes`; past it the oldest command is emitted without reply.
    max_pending_bytes: usize,
    /// Replies still owed to commands emitted early (they are dropped when they come, so that
    /// later replies stay in step).
    owed: u64,
    /// Approximate bytes held by `ready`.
    ready_bytes: usize,
}

#[derive(Debug)]
struct Half {
    parser: RespParser,
    /// Resynchronising: bytes since the loss, up to [`RESYNC_KEEP`].
    resync: Option<ResyncState>,
    /// Flags for the next message out of this direction.
    mark: Flags,
}

#[derive(Debug)]
struct ResyncState {
    buf: Vec<u8>,
    at_start: bool,
}

#[derive(Debug)]
struct Pending {
    cmd: RedisCommand,
    start: u64,
    end: u64,
    flags: Flags,
}

impl RedisDecoder {
    /// A decoder with these limits.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        let budget = config.max_body;
        Self {
            req: Half::new(Side::Request, budget),
            resp: Half::new(Side::Response, budget),
            pending: VecDeque::new(),
            ready: Vec::new(),
            seq: 0,
            subscribed: false,
            sub_cmd: None,
            parsed: Vec::new(),
            pending_bytes: 0,
            max_pending_bytes: 2 * (config.max_body + config.max_buffer),
            owed: 0,
            ready_bytes: 0,
        }
    }

    fn emit(
        &mut self,
        request: Request,
        response: Option<RespValue>,
        timing: Timing,
        flags: Flags,
    ) {
        self.ready_bytes += request_size(&request) + response.as_ref().map_or(0, value_size);
        self.ready.push(Exchange {
            conn: std::sync::Arc::default(),
            seq: self.seq,
            protocol: Protocol::Redis,
            request,
            response: response.map(Response::Redis),
            timing,
            flags,
            session: None,
        });
        self.seq += 1;
    }

    fn on_request(&mut self, p: Parsed, ts: u64) {
        let (cmd, truncated, start) = match p {
            Parsed::Inline {
                args,
                truncated,
                start_ts,
            } => (RedisCommand { args, inline: true }, truncated, start_ts),
            Parsed::Value {
                value,
                truncated,
                start_ts,
            } => (
                RedisCommand {
                    args: command_args(value),
                    inline: false,
                },
                truncated,
                start_ts,
            ),
        };
        let mut flags = std::mem::take(&mut self.req.mark);
        flags.truncated |= truncated;
        self.pending_bytes += command_size(&cmd);
        self.pending.push_back(Pending {
            cmd,
            start,
            end: ts,
            flags,
        });
        // Bounded memory: a client that never gets replies (or whose replies the capture
        // lost) cannot grow the queue past the cap.
        while self.pending_bytes > self.max_pending_bytes && self.pending.len() > 1 {
            if let Some(p) = self.pop_pending() {
                self.owed += 1;
                let timing = Timing {
                    request_start_ns: p.start,
                    request_end_ns: p.end,
                    ..Timing::default()
                };
                let flags = Flags {
                    unpaired: true,
                    ..p.flags
                };
                self.emit(Request::Redis(p.cmd), None, timing, flags);
            }
        }
    }

    fn pop_pending(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        self.pending_bytes = self.pending_bytes.saturating_sub(command_size(&p.cmd));
        Some(p)
    }

    fn on_response(&mut self, p: Parsed, ts: u64) {
        let Parsed::Value {
            value,
            truncated,
            start_ts,
        } = p
        else {
            return;
        };
        let mut flags = std::mem::take(&mut self.resp.mark);
        flags.truncated |= truncated;
        let front_name = self.pending.front().map(|p| p.cmd.name());
        let confirm = confirmation(&value);
        let is_push = matches!(value, RespValue::Push(_))
            || (self.subscribed && confirm.is_none() && is_message(&value));

        if let Some((kind, count)) = &confirm {
            let expected = front_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(kind));
            if expected || self.subscribed || matches!(value, RespValue::Push(_)) {
                self.subscribed = *count > 0;
                if expected {
                    if kind.ends_with("subscribe") && !kind.ends_with("unsubscribe") {
                        self.sub_cmd = self.pending.front().map(|p| p.cmd.clone());
                    }
                    self.pair_front(value, start_ts, ts, flags);
                } else {
                    self.push_exchange(value, start_ts, ts, flags);
                }
                return;
            }
        }
        if is_push {
            self.push_exchange(value, start_ts, ts, flags);
            return;
        }
        self.pair_front(value, start_ts, ts, flags);
    }

    fn pair_front(&mut self, value: RespValue, start: u64, end: u64, mut flags: Flags) {
        if self.owed > 0 {
            // The reply of a command already emitted without one.
            self.owed -= 1;
            return;
        }
        match self.pop_pending() {
            Some(p) => {
                flags.truncated |= p.flags.truncated;
                flags.gap |= p.flags.gap;
                flags.unsupported |= p.flags.unsupported;
                let timing = Timing {
                    request_start_ns: p.start,
                    request_end_ns: p.end,
                    response_start_ns: start,
                    response_end_ns: end,
                };
                self.emit(Request::Redis(p.cmd), Some(value), timing, flags);
            }
            None => {
                flags.unpaired = true;
                // Most likely the reply of a command the capture lost.
                flags.gap |= self.req.mark.gap;
                let timing = Timing {
                    request_start_ns: start,
                    request_end_ns: start,
                    response_start_ns: start,
                    response_end_ns: end,
                };
                self.emit(
                    Request::Raw {
                        data: Payload::default(),
                    },
                    Some(value),
                    timing,
                    flags,
                );
            }
        }
    }

    fn push_exchange(&mut self, value: RespValue, start: u64, end: u64, mut flags: Flags) {
        flags.unpaired = true;
        let request = match &self.sub_cmd {
            Some(c) => Request::Redis(c.clone()),
            None => Request::Raw {
                data: Payload::default(),
            },
        };
        let timing = Timing {
            request_start_ns: start,
            request_end_ns: start,
            response_start_ns: start,
            response_end_ns: end,
        };
        self.emit(request, Some(value), timing, flags);
    }

    /// Emit the waiting commands without response (close, or a response-side loss).
    fn flush_pending(&mut self, mark: Flags) {
        self.owed = 0;
        while let Some(p) = self.pop_pending() {
            let mut flags = p.flags;
            flags.unpaired |= mark.unpaired;
            flags.gap |= mark.gap;
            flags.unsupported |= mark.unsupported;
            flags.truncated |= mark.truncated;
            let timing = Timing {
                request_start_ns: p.start,
                request_end_ns: p.end,
                response_start_ns: 0,
                response_end_ns: 0,
            };
            self.emit(Request::Redis(p.cmd), None, timing, flags);
        }
    }

    /// A loss (`gap`) or undecodable bytes (`!gap`) in `dir`.
    fn lost(&mut self, dir: Direction, gap: bool) {
        let mut mark = Flags::default();
        if gap {
            mark.gap = true;
        } else {
            mark.unsupported = true;
        }
        match dir {
            Direction::Request => {
                self.req.parser.reset();
                self.req.mark.gap |= mark.gap;
                self.req.mark.unsupported |= mark.unsupported;
                self.req.start_resync();
            }
            Direction::Response => {
                let partial = !self.resp.parser.is_idle();
                self.resp.parser.reset();
                if partial || gap {
                    self.flush_pending(mark);
                }
                self.resp.mark.gap |= mark.gap;
                self.resp.mark.unsupported |= mark.unsupported;
                self.resp.start_resync();
            }
        }
    }

    fn feed(&mut self, dir: Direction, ts: u64, bytes: &[u8]) {
        let mut input: std::borrow::Cow<'_, [u8]> = bytes.into();
        loop {
            let half = match dir {
                Direction::Request => &mut self.req,
                Direction::Response => &mut self.resp,
            };
            let side = half.parser_side();
            if let Some(rs) = &mut half.resync {
                // Look for a message start in the bytes kept so far plus the new ones.
                let at_start = rs.at_start;
                let mut buf = std::mem::take(&mut rs.buf);
                buf.extend_from_slice(&input);
                match find_resync(&buf, side, at_start) {
                    Resync::Found(i) => {
                        half.resync = None;
                        input = buf[i..].to_vec().into();
                    }
                    Resync::NeedMore(i) if buf.len() - i <= RESYNC_KEEP => {
                        rs.at_start = at_start && i == 0;
                        buf.drain(..i);
                        rs.buf = buf;
                        return;
                    }
                    Resync::NeedMore(_) | Resync::NotFound => {
                        // Keep the last byte: a response start must follow a newline.
                        rs.at_start = false;
                        let last = buf.last().copied();
                        rs.buf.clear();
                        rs.buf.extend(last);
                        return;
                    }
                }
            }
            let half = match dir {
                Direction::Request => &mut self.req,
                Direction::Response => &mut self.resp,
            };
            let mut parsed = std::mem::take(&mut self.parsed);
            let res = half.parser.feed(&input, ts, &mut parsed);
            for p in parsed.drain(..) {
                match dir {
                    Direction::Request => self.on_request(p, ts),
                    Direction::Response => self.on_response(p, ts),
                }
            }
            self.parsed = parsed;
            match res {
                Ok(()) => return,
                Err(invalid) => {
                    self.lost(dir, false);
                    input = input[invalid.at..].to_vec().into();
                    if input.is_empty() {
                        return;
                    }
                }
            }
        }
    }
}

impl Half {
    fn new(side: Side, budget: usize) -> Self {
        Self {
            parser: RespParser::new(side, budget),
            resync: None,
            mark: Flags::default(),
        }
    }

    fn parser_side(&self) -> Side {
        self.parser.side()
    }

    fn start_resync(&mut self) {
        self.resync = Some(ResyncState {
            buf: Vec::new(),
            at_start: true,
        });
    }
}

fn command_size(c: &RedisCommand) -> usize {
    64 + c.args.iter().map(|a| a.len() + 24).sum::<usize>()
}

fn request_size(r: &Request) -> usize {
    match r {
        Request::Redis(c) => command_size(c),
        _ => 64,
    }
}

/// Approximate heap size of a value (payload plus a fixed overhead per value).
fn value_size(v: &RespValue) -> usize {
    48 + match v {
        RespValue::Simple(s) | RespValue::Error(s) | RespValue::BigNumber(s) => s.len(),
        RespValue::Bulk(p) | RespValue::BulkError(p) => p.len(),
        RespValue::Verbatim { text, .. } => text.len(),
        RespValue::Array(items) | RespValue::Set(items) | RespValue::Push(items) => {
            items.iter().map(value_size).sum()
        }
        RespValue::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| value_size(k) + value_size(v))
            .sum(),
        RespValue::Null | RespValue::Integer(_) | RespValue::Boolean(_) | RespValue::Double(_) => 0,
    }
}

/// The args of a multibulk command (anything that is not a bulk/simple string is rendered
/// as text so nothing is lost).
fn command_args(value: RespValue) -> Vec<Payload> {
    let items = match value {
        RespValue::Array(items) => items,
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| match v {
            RespValue::Bulk(p) => p,
            RespValue::Simple(s) => Payload(s.into_bytes()),
            RespValue::Integer(i) => Payload(i.to_string().into_bytes()),
            other => Payload(serde_json::to_vec(&other).unwrap_or_default()),
        })
        .collect()
}

fn text_of(v: &RespValue) -> Option<&[u8]> {
    match v {
        RespValue::Bulk(p) => Some(p.as_bytes()),
        RespValue::Simple(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// `(kind, count)` of a pub/sub (un)subscribe confirmation.
fn confirmation(v: &RespValue) -> Option<(String, i64)> {
    let (RespValue::Array(items) | RespValue::Push(items)) = v else {
        return None;
    };
    let [kind, _, RespValue::Integer(count)] = items.as_slice() else {
        return None;
    };
    let kind = std::str::from_utf8(text_of(kind)?)
        .ok()?
        .to_ascii_lowercase();
    matches!(
        kind.as_str(),
        "subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe" | "sunsubscribe"
    )
    .then_some((kind, *count))
}

/// A published message (`message`, `pmessage`, `smessage`).
fn is_message(v: &RespValue) -> bool {
    let (RespValue::Array(items) | RespValue::Push(items)) = v else {
        return false;
    };
    items.first().and_then(text_of).is_some_and(|k| {
        k.eq_ignore_ascii_case(b"message")
            || k.eq_ignore_ascii_case(b"pmessage")
            || k.eq_ignore_ascii_case(b"smessage")
    })
}

impl StreamDecoder for RedisDecoder {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn push(&mut self, dir: Direction, ts_ns: u64, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.feed(dir, ts_ns, bytes);
        }
    }

    fn gap(&mut self, dir: Direction, _ts_ns: u64, len: u64) {
        if len > 0 {
            self.lost(dir, true);
        }
    }

    fn close(&mut self, _ts_ns: u64) {
        let mut mark = Flags {
            unpaired: true,
            ..Flags::default()
        };
        if !self.resp.parser.is_idle() {
            mark.truncated = true;
        }
        self.req.parser.reset();
        self.resp.parser.reset();
        self.flush_pending(mark);
    }

    fn drain(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.ready);
        self.ready_bytes = 0;
    }

    fn buffered_bytes(&self) -> usize {
        let resync = |h: &Half| h.resync.as_ref().map_or(0, |r| r.buf.len());
        self.req.parser.buffered()
            + self.resp.parser.buffered()
            + resync(&self.req)
            + resync(&self.resp)
            + self.pending_bytes
            + self.ready_bytes
    }
}
