//! Incremental RESP2/RESP3 parser: bytes in (any split), whole values out, bounded memory.
//!
//! Bulk strings longer than the value budget are kept cut while the rest of their bytes are
//! counted and skipped, so a 100 MB value costs at most the budget. Aggregates past the
//! budget keep their framing but drop the elements that no longer fit.

use crate::{Payload, RespValue};

/// Longest header / simple-string / inline line we accept (Redis' own inline limit).
pub(super) const MAX_LINE: usize = 64 << 10;
/// Deepest aggregate nesting we accept.
const MAX_DEPTH: usize = 128;
/// Accounting overhead of one value, so that `*1000000\r\n:1\r\n…` is bounded too.
const VALUE_COST: usize = 16;

/// Which side of the connection the parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Client bytes: multibulk commands or inline commands.
    Request,
    /// Server bytes: any RESP2/RESP3 value.
    Response,
}

/// One complete top-level message.
#[derive(Debug)]
pub(super) enum Parsed {
    /// A RESP value (a multibulk command on the request side).
    Value {
        value: RespValue,
        /// Part of it was cut at the budget.
        truncated: bool,
        /// Time of the push that held its first byte.
        start_ts: u64,
    },
    /// An inline command (request side), split into words.
    Inline {
        args: Vec<Payload>,
        /// Words past the budget were cut or left out.
        truncated: bool,
        start_ts: u64,
    },
}

/// The bytes were not RESP; `at` is the input offset after the offending line or byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Invalid {
    pub(super) at: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggKind {
    Array,
    Set,
    Map,
    Push,
    Attribute,
}

#[derive(Debug)]
struct Agg {
    kind: AggKind,
    remaining: u64,
    items: Vec<RespValue>,
}

#[derive(Debug)]
struct Bulk {
    marker: u8,
    data: Vec<u8>,
    keep_left: usize,
    skip_left: u64,
    crlf_left: u8,
}

#[derive(Debug)]
enum State {
    Line,
    Bulk(Bulk),
}

/// The parser for one direction.
#[derive(Debug)]
pub(super) struct RespParser {
    side: Side,
    budget: usize,
    line: Vec<u8>,
    state: State,
    stack: Vec<Agg>,
    kept: usize,
    truncated: bool,
    start_ts: Option<u64>,
}

impl RespParser {
    pub(super) fn new(side: Side, budget: usize) -> Self {
        Self {
            side,
            budget,
            line: Vec::new(),
            state: State::Line,
            stack: Vec::new(),
            kept: 0,
            truncated: false,
            start_ts: None,
        }
    }

    /// The side this parser reads.
    pub(super) fn side(&self) -> Side {
        self.side
    }

    /// Bytes held for the message in progress (approximate: values count their payload plus
    /// a fixed overhead).
    pub(super) fn buffered(&self) -> usize {
        self.line.len() + self.kept + self.stack.len() * VALUE_COST
    }

    /// True when no message is partly read.
    pub(super) fn is_idle(&self) -> bool {
        self.start_ts.is_none()
    }

    /// Forget a partly read message.
    pub(super) fn reset(&mut self) {
        self.line.clear();
        self.state = State::Line;
        self.stack.clear();
        self.kept = 0;
        self.truncated = false;
        self.start_ts = None;
    }

    /// Parse `input`; complete messages go to `out`. On error the parser is reset and the
    /// caller resynchronises from `input[at..]`.
    pub(super) fn feed(
        &mut self,
        input: &[u8],
        ts: u64,
        out: &mut Vec<Parsed>,
    ) -> Result<(), Invalid> {
        let mut pos = 0;
        while pos < input.len() {
            if self.start_ts.is_none() {
                self.start_ts = Some(ts);
            }
            let rest = &input[pos..];
            let step = match &mut self.state {
                State::Line => match rest.iter().position(|&b| b == b'\n') {
                    None => {
                        if self.line.len() + rest.len() > MAX_LINE {
                            self.reset();
                            return Err(Invalid { at: input.len() });
                        }
                        self.line.extend_from_slice(rest);
                        rest.len()
                    }
                    Some(i) => {
                        let ok = if self.line.is_empty() {
                            self.on_line(&rest[..i], out)
                        } else {
                            let mut line = std::mem::take(&mut self.line);
                            line.extend_from_slice(&rest[..i]);
                            let ok = self.on_line(&line, out);
                            line.clear();
                            self.line = line;
                            ok
                        };
                        if ok.is_err() {
                            self.reset();
                            return Err(Invalid { at: pos + i + 1 });
                        }
                        i + 1
                    }
                },
                State::Bulk(b) => {
                    let mut used = 0;
                    let take = b.keep_left.min(rest.len());
                    b.data.extend_from_slice(&rest[..take]);
                    b.keep_left -= take;
                    used += take;
                    let skip = usize::try_from(b.skip_left)
                        .unwrap_or(usize::MAX)
                        .min(rest.len() - used);
                    b.skip_left -= skip as u64;
                    used += skip;
                    while b.keep_left == 0
                        && b.skip_left == 0
                        && b.crlf_left > 0
                        && used < rest.len()
                    {
                        let want = if b.crlf_left == 2 { b'\r' } else { b'\n' };
                        if rest[used] != want {
                            self.reset();
                            return Err(Invalid { at: pos + used + 1 });
                        }
                        b.crlf_left -= 1;
                        used += 1;
                    }
                    if b.keep_left == 0 && b.skip_left == 0 && b.crlf_left == 0 {
                        let b = std::mem::replace(&mut self.state, State::Line);
                        if let State::Bulk(b) = b {
                            let value = bulk_value(b.marker, b.data);
                            self.complete(value, out);
                        }
                    }
                    used
                }
            };
            pos += step;
        }
        Ok(())
    }

    fn room(&self) -> usize {
        self.budget.saturating_sub(self.kept)
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<Parsed>) -> Result<(), ()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.side == Side::Request && self.stack.is_empty() && line.first() != Some(&b'*') {
            // Within the budget like a multibulk command: each word costs its bytes plus
            // VALUE_COST, and the words past the budget are cut (a line of many tiny words
            // would otherwise cost far more than its bytes).
            let mut args = Vec::new();
            let mut room = self.budget;
            let mut truncated = false;
            for w in line
                .split(u8::is_ascii_whitespace)
                .filter(|w| !w.is_empty())
            {
                if room <= VALUE_COST {
                    truncated = true;
                    break;
                }
                let keep = w.len().min(room - VALUE_COST);
                args.push(Payload::from(&w[..keep]));
                room -= keep + VALUE_COST;
                if keep < w.len() {
                    truncated = true;
                    break;
                }
            }
            let start_ts = self.start_ts.take().unwrap_or_default();
            self.reset();
            if !args.is_empty() {
                out.push(Parsed::Inline {
                    args,
                    truncated,
                    start_ts,
                });
            }
            return Ok(());
        }
        let (&marker, rest) = line.split_first().ok_or(())?;
        match marker {
            b'+' => self.complete(RespValue::Simple(lossy(rest)), out),
            b'-' => self.complete(RespValue::Error(lossy(rest)), out),
            b':' => self.complete(RespValue::Integer(parse_int(rest)?), out),
            b'_' => self.complete(RespValue::Null, out),
            b'#' => {
                let b = match rest {
                    b"t" => true,
                    b"f" => false,
                    _ => return Err(()),
                };
                self.complete(RespValue::Boolean(b), out);
            }
            b',' => {
                let d = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or(())?;
                self.complete(RespValue::Double(d), out);
            }
            b'(' => {
                if rest.is_empty()
                    || !rest
                        .iter()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && (*b == b'-' || *b == b'+')))
                {
                    return Err(());
                }
                self.complete(RespValue::BigNumber(lossy(rest)), out);
            }
            b'$' | b'!' | b'=' => {
                let n = parse_int(rest)?;
                if n == -1 && marker == b'$' {
                    self.complete(RespValue::Null, out);
                    return Ok(());
                }
                let n = u64::try_from(n).map_err(|_| ())?;
                let keep = usize::try_from(n).unwrap_or(usize::MAX).min(self.room());
                if (keep as u64) < n {
                    self.truncated = true;
                }
                self.kept += keep;
                self.state = State::Bulk(Bulk {
                    marker,
                    data: Vec::with_capacity(keep.min(64 << 10)),
                    keep_left: keep,
                    skip_left: n - keep as u64,
                    crlf_left: 2,
                });
            }
            b'*' | b'~' | b'%' | b'>' | b'|' => {
                let n = parse_int(rest)?;
                if n == -1 && marker == b'*' {
                    self.complete(RespValue::Null, out);
                    return Ok(());
                }
                let n = u64::try_from(n).map_err(|_| ())?;
                let kind = match marker {
                    b'*' => AggKind::Array,
                    b'~' => AggKind::Set,
                    b'%' => AggKind::Map,
                    b'>' => AggKind::Push,
                    _ => AggKind::Attribute,
                };
                let count = if matches!(kind, AggKind::Map | AggKind::Attribute) {
                    n.checked_mul(2).ok_or(())?
                } else {
                    n
                };
                if self.stack.len() >= MAX_DEPTH {
                    return Err(());
                }
                let agg = Agg {
                    kind,
                    remaining: count,
                    items: Vec::with_capacity(usize::try_from(count.min(16)).unwrap_or(16)),
                };
                if count == 0 {
                    if kind != AggKind::Attribute {
                        self.complete(agg.build(), out);
                    }
                } else {
                    self.stack.push(agg);
                }
            }
            _ => return Err(()),
        }
        Ok(())
    }

    fn complete(&mut self, mut value: RespValue, out: &mut Vec<Parsed>) {
        loop {
            let Some(top) = self.stack.last_mut() else {
                out.push(Parsed::Value {
                    value,
                    truncated: self.truncated,
                    start_ts: self.start_ts.unwrap_or_default(),
                });
                self.reset();
                return;
            };
            if self.kept <= self.budget {
                top.items.push(value);
                self.kept += VALUE_COST;
            } else {
                self.truncated = true;
            }
            top.remaining -= 1;
            if top.remaining > 0 {
                return;
            }
            let Some(agg) = self.stack.pop() else { return };
            if agg.kind == AggKind::Attribute {
                // An attribute annotates the value that follows; we drop it.
                return;
            }
            value = agg.build();
        }
    }
}

impl Agg {
    fn build(self) -> RespValue {
        match self.kind {
            AggKind::Array => RespValue::Array(self.items),
            AggKind::Set => RespValue::Set(self.items),
            AggKind::Push => RespValue::Push(self.items),
            AggKind::Map | AggKind::Attribute => {
                let mut pairs = Vec::with_capacity(self.items.len() / 2);
                let mut it = self.items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                RespValue::Map(pairs)
            }
        }
    }
}

fn bulk_value(marker: u8, data: Vec<u8>) -> RespValue {
    match marker {
        b'!' => RespValue::BulkError(Payload(data)),
        b'=' => {
            if data.len() >= 4 && data[3] == b':' {
                RespValue::Verbatim {
                    format: lossy(&data[..3]),
                    text: Payload(data[4..].to_vec()),
                }
            } else {
                RespValue::Verbatim {
                    format: String::new(),
                    text: Payload(data),
                }
            }
        }
        _ => RespValue::Bulk(Payload(data)),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_int(b: &[u8]) -> Result<i64, ()> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(());
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(());
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or(())?;
    }
    Ok(if neg { -v } else { v })
}

/// Where a resynchronisation may start in `buf` (the bytes after a gap or garbage), for the
/// given side: `Some(i)` found, `None` not in these bytes. `at_start` says `buf[0]` directly
/// follows the gap (a message may start there). `need_more` is set when a candidate at the
/// end of `buf` cannot be judged yet; the caller keeps `buf[keep_from..]`.
pub(super) fn find_resync(buf: &[u8], side: Side, at_start: bool) -> Resync {
    for i in 0..buf.len() {
        let candidate = match side {
            Side::Request => buf[i] == b'*',
            Side::Response => (i == 0 && at_start) || (i > 0 && buf[i - 1] == b'\n'),
        };
        if !candidate {
            continue;
        }
        match check_start(&buf[i..], side) {
            Check::Yes => return Resync::Found(i),
            Check::No => {}
            Check::NeedMore => return Resync::NeedMore(i),
        }
    }
    Resync::NotFound
}

/// Outcome of [`find_resync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resync {
    /// A message starts at this offset.
    Found(usize),
    /// A candidate starts here but more bytes are needed to judge it.
    NeedMore(usize),
    /// No candidate in these bytes.
    NotFound,
}

enum Check {
    Yes,
    No,
    NeedMore,
}

/// Does a plausible message start at `b[0]`? Requests: `*<n>\r\n$`. Responses: a header line
/// with a valid shape.
fn check_start(b: &[u8], side: Side) -> Check {
    let Some(&marker) = b.first() else {
        return Check::NeedMore;
    };
    let nl = b.iter().take(512).position(|&c| c == b'\n');
    let Some(nl) = nl else {
        return if b.len() >= 512 {
            Check::No
        } else {
            Check::NeedMore
        };
    };
    let Some(line) = b.get(1..nl).and_then(|l| l.strip_suffix(b"\r")) else {
        return Check::No;
    };
    match side {
        Side::Request => {
            if marker != b'*' || parse_int(line).map_or(true, |n| n <= 0) {
                return Check::No;
            }
            match b.get(nl + 1) {
                None => Check::NeedMore,
                Some(b'$') => Check::Yes,
                Some(_) => Check::No,
            }
        }
        Side::Response => match marker {
            b'+' | b'-' => {
                if line.iter().all(|c| !c.is_ascii_control()) {
                    Check::Yes
                } else {
                    Check::No
                }
            }
            b':' | b'$' | b'*' | b'%' | b'~' | b'>' => {
                if parse_int(line).is_ok_and(|n| n >= -1) {
                    Check::Yes
                } else {
                    Check::No
                }
            }
            b'_' if line.is_empty() => Check::Yes,
            _ => Check::No,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(side: Side, bytes: &[u8], budget: usize) -> Vec<Parsed> {
        let mut p = RespParser::new(side, budget);
        let mut out = Vec::new();
        p.feed(bytes, 1, &mut out).unwrap();
        out
    }

    #[test]
    fn resp3_types() {
        let bytes = b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n~1\r\n#t\r\n,1.5\r\n(12345678901234567890\r\n=8\r\ntxt:some\r\n!3\r\nbad\r\n_\r\n>2\r\n$7\r\nmessage\r\n*-1\r\n|1\r\n+k\r\n+v\r\n:7\r\n";
        let out = parse_all(Side::Response, bytes, 1 << 20);
        let values: Vec<_> = out
            .into_iter()
            .map(|p| match p {
                Parsed::Value { value, .. } => value,
                Parsed::Inline { .. } => panic!("inline on the response side"),
            })
            .collect();
        assert_eq!(values.len(), 8);
        assert_eq!(values[7], RespValue::Integer(7), "attribute dropped");
        assert!(matches!(&values[0], RespValue::Map(m) if m.len() == 2));
        assert_eq!(
            values[2],
            RespValue::BigNumber("12345678901234567890".into())
        );
        assert_eq!(
            values[3],
            RespValue::Verbatim {
                format: "txt".into(),
                text: "some".into()
            }
        );
    }

    #[test]
    fn big_bulk_is_cut_and_skipped() {
        let mut bytes = b"$10\r\n0123456789\r\n+OK\r\n".to_vec();
        bytes.extend_from_slice(b"");
        let out = parse_all(Side::Response, &bytes, 4);
        assert!(
            matches!(&out[0], Parsed::Value { value: RespValue::Bulk(p), truncated: true, .. } if p.as_bytes() == b"0123")
        );
        assert!(matches!(
            &out[1],
            Parsed::Value {
                truncated: false,
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_invalid() {
        let mut p = RespParser::new(Side::Response, 100);
        let mut out = Vec::new();
        assert_eq!(
            p.feed(b"?what\r\n+OK\r\n", 1, &mut out),
            Err(Invalid { at: 7 })
        );
        assert!(p.is_idle());
    }

    #[test]
    fn resync_candidate_that_is_a_newline() {
        // Regression (found by the property test): a candidate byte that is itself `\n`.
        assert_eq!(find_resync(b"\n\n", Side::Response, true), Resync::NotFound);
    }

    #[test]
    fn resync_finds_commands() {
        assert_eq!(
            find_resync(b"xx*2\r\n$3\r\nGET", Side::Request, true),
            Resync::Found(2)
        );
        assert_eq!(
            find_resync(b"xx*2\r", Side::Request, true),
            Resync::NeedMore(2)
        );
        assert_eq!(
            find_resync(b"lo\r\n+OK\r\n", Side::Response, false),
            Resync::Found(4)
        );
    }
}
