//! The compact binary form of an [`Exchange`] inside stored blocks (block version 2).
//!
//! Written by hand rather than through serde: the model's serde impls are shaped for JSON
//! (internally tagged enums, untagged `MysqlValue`, `Payload` as text or `{"base64": …}`,
//! skipped defaults) and do not round-trip through non-self-describing formats. Every
//! struct is destructured and every enum matched exhaustively, so a field or variant added
//! to the model fails to compile here until the codec handles it.
//!
//! Layout: fields in declaration order, no names. Integers are LEB128 varints (signed ones
//! zigzag), timestamps and floats 8 bytes little-endian, strings and payloads a varint
//! length then the bytes, `Option` a 0/1 byte then the value, enums a variant byte, flags one
//! bit each in a byte. Decoding checks everything (lengths against the input, UTF-8, variant
//! bytes, nesting depth) and never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse,
    MysqlColumn, MysqlCommand, MysqlResponse, MysqlResultSet, MysqlSession, MysqlValue, Payload,
    Protocol, RedisCommand, Request, RespValue, Response, SessionInfo, Timing,
};

/// Deepest nesting of Redis values written and read (the Redis decoder stops at 128).
const MAX_DEPTH: usize = 512;

/// Why bytes are not an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// What was being read.
    pub(crate) what: &'static str,
    /// Offset in the record.
    pub(crate) at: usize,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad binary exchange: {} at byte {}", self.what, self.at)
    }
}

/// The exchange cannot be written in the binary form (nested deeper than [`MAX_DEPTH`]);
/// the caller keeps it as JSON instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooDeep;

/// Connections most recently written by [`encode_exchange_cached`].
const CONN_CACHE: usize = 64;

/// The binary form of recent connections, by identity: every exchange of a connection shares
/// one `Arc` (see [`Exchange::conn`]), so a writer of many exchanges encodes each
/// connection's endpoints once rather than once per exchange (≈ 600 instructions each for a
/// loopback HTTP call). Holding the `Arc` keeps its address from being reused by another
/// connection, and an `Arc` that is changed after it was shared (`Arc::make_mut`) is a new
/// one, so a hit is always the same value.
#[derive(Debug, Default)]
pub(crate) struct ConnCache {
    slots: Vec<(Arc<ConnectionMeta>, Vec<u8>)>,
    /// The slot replaced next once all are taken.
    next: usize,
}

impl ConnCache {
    fn encoded(&mut self, c: &Arc<ConnectionMeta>) -> &[u8] {
        let at = match self.slots.iter().position(|(k, _)| Arc::ptr_eq(k, c)) {
            Some(at) => at,
            None => {
                let mut bytes = Vec::new();
                Writer(&mut bytes).conn(c);
                if self.slots.len() < CONN_CACHE {
                    self.slots.push((Arc::clone(c), bytes));
                    self.slots.len() - 1
                } else {
                    let at = self.next;
                    self.next = (at + 1) % CONN_CACHE;
                    self.slots[at] = (Arc::clone(c), bytes);
                    at
                }
            }
        };
        &self.slots[at].1
    }
}

/// [`encode_exchange`], the connection taken from (or added to) `cache`: the same bytes.
pub(crate) fn encode_exchange_cached(
    x: &Exchange,
    out: &mut Vec<u8>,
    cache: &mut ConnCache,
) -> Result<(), TooDeep> {
    out.extend_from_slice(cache.encoded(&x.conn));
    encode_after_conn(x, out)
}

/// Appends the binary form of `x` to `out`. On error `out` may hold a partial record: the
/// caller truncates it.
#[cfg(test)]
pub(crate) fn encode_exchange(x: &Exchange, out: &mut Vec<u8>) -> Result<(), TooDeep> {
    Writer(out).conn(&x.conn);
    encode_after_conn(x, out)
}

/// Everything of `x` after its connection.
fn encode_after_conn(x: &Exchange, out: &mut Vec<u8>) -> Result<(), TooDeep> {
    let Exchange {
        conn: _,
        seq,
        protocol,
        request,
        response,
        timing,
        flags,
        session,
    } = x;
    let mut w = Writer(out);
    w.varint(*seq);
    w.protocol(*protocol);
    w.request(request)?;
    match response {
        None => w.byte(0),
        Some(r) => {
            w.byte(1);
            w.response(r)?;
        }
    }
    w.timing(timing);
    w.flags(*flags);
    match session {
        None => w.byte(0),
        Some(SessionInfo::Mysql(s)) => {
            w.byte(1);
            w.mysql_session(s);
        }
    }
    Ok(())
}

/// Reads one exchange written by [`encode_exchange`]; the whole input must be used.
pub(crate) fn decode_exchange(bytes: &[u8]) -> Result<Exchange, DecodeError> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        depth: 0,
    };
    let x = Exchange {
        conn: std::sync::Arc::new(r.conn()?),
        seq: r.varint("seq")?,
        protocol: r.protocol()?,
        request: r.request()?,
        response: if r.flag("response")? {
            Some(r.response()?)
        } else {
            None
        },
        timing: r.timing()?,
        flags: r.flags()?,
        session: if r.flag("session")? {
            Some(SessionInfo::Mysql(r.mysql_session()?))
        } else {
            None
        },
    };
    if r.pos != bytes.len() {
        return Err(r.err("trailing bytes"));
    }
    Ok(x)
}

// ---- writing ----

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn fixed(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn opt_str(&mut self, s: Option<&String>) {
        match s {
            None => self.byte(0),
            Some(s) => {
                self.byte(1);
                self.str(s);
            }
        }
    }

    fn payload(&mut self, p: &Payload) {
        self.bytes(&p.0);
    }

    fn bool(&mut self, b: bool) {
        self.byte(u8::from(b));
    }

    fn endpoint(&mut self, e: &Endpoint) {
        let Endpoint {
            addr,
            port,
            pid,
            process,
            cgroup,
            service,
        } = e;
        match addr {
            IpAddr::V4(a) => {
                self.byte(4);
                self.0.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.byte(6);
                self.0.extend_from_slice(&a.octets());
            }
        }
        self.varint(u64::from(*port));
        match pid {
            None => self.byte(0),
            Some(p) => {
                self.byte(1);
                self.varint(u64::from(*p));
            }
        }
        self.opt_str(process.as_ref());
        self.opt_str(cgroup.as_ref());
        self.opt_str(service.as_ref());
    }

    fn conn(&mut self, c: &ConnectionMeta) {
        let ConnectionMeta { id, client, server } = c;
        self.varint(*id);
        self.endpoint(client);
        self.endpoint(server);
    }

    fn protocol(&mut self, p: Protocol) {
        self.byte(match p {
            Protocol::Http => 0,
            Protocol::Redis => 1,
            Protocol::Mysql => 2,
            Protocol::Unknown => 3,
        });
    }

    fn timing(&mut self, t: &Timing) {
        let Timing {
            request_start_ns,
            request_end_ns,
            response_start_ns,
            response_end_ns,
        } = t;
        self.fixed(*request_start_ns);
        self.fixed(*request_end_ns);
        self.fixed(*response_start_ns);
        self.fixed(*response_end_ns);
    }

    fn flags(&mut self, f: Flags) {
        let Flags {
            truncated,
            gap,
            unpaired,
            encrypted,
            unsupported,
        } = f;
        self.byte(
            u8::from(truncated)
                | u8::from(gap) << 1
                | u8::from(unpaired) << 2
                | u8::from(encrypted) << 3
                | u8::from(unsupported) << 4,
        );
    }

    fn headers(&mut self, hs: &[Header]) {
        self.len(hs.len());
        for Header { name, value } in hs {
            self.str(name);
            self.payload(value);
        }
    }

    fn body(&mut self, b: &Body) {
        let Body {
            raw,
            decoded,
            len,
            truncated,
        } = b;
        self.payload(raw);
        match decoded {
            None => self.byte(0),
            Some(d) => {
                self.byte(1);
                self.payload(d);
            }
        }
        self.varint(*len);
        self.bool(*truncated);
    }

    fn request(&mut self, r: &Request) -> Result<(), TooDeep> {
        match r {
            Request::Http(h) => {
                let HttpRequest {
                    method,
                    target,
                    version,
                    headers,
                    body,
                } = h;
                self.byte(0);
                self.str(method);
                self.str(target);
                self.str(version);
                self.headers(headers);
                self.body(body);
            }
            Request::Redis(c) => {
                let RedisCommand { args, inline } = c;
                self.byte(1);
                self.len(args.len());
                for a in args {
                    self.payload(a);
                }
                self.bool(*inline);
            }
            Request::Mysql(c) => {
                self.byte(2);
                self.mysql_command(c);
            }
            Request::Raw { data } => {
                self.byte(3);
                self.payload(data);
            }
        }
        Ok(())
    }

    fn response(&mut self, r: &Response) -> Result<(), TooDeep> {
        match r {
            Response::Http(h) => {
                let HttpResponse {
                    version,
                    status,
                    reason,
                    headers,
                    body,
                } = h;
                self.byte(0);
                self.str(version);
                self.varint(u64::from(*status));
                self.str(reason);
                self.headers(headers);
                self.body(body);
            }
            Response::Redis(v) => {
                self.byte(1);
                self.resp(v, 0)?;
            }
            Response::Mysql(m) => {
                self.byte(2);
                self.mysql_response(m);
            }
            Response::Raw { data } => {
                self.byte(3);
                self.payload(data);
            }
        }
        Ok(())
    }

    fn resp_list(&mut self, tag: u8, items: &[RespValue], depth: usize) -> Result<(), TooDeep> {
        self.byte(tag);
        self.len(items.len());
        for v in items {
            self.resp(v, depth + 1)?;
        }
        Ok(())
    }

    fn resp(&mut self, v: &RespValue, depth: usize) -> Result<(), TooDeep> {
        if depth >= MAX_DEPTH {
            return Err(TooDeep);
        }
        match v {
            RespValue::Simple(s) => {
                self.byte(0);
                self.str(s);
            }
            RespValue::Error(s) => {
                self.byte(1);
                self.str(s);
            }
            RespValue::Integer(i) => {
                self.byte(2);
                self.zigzag(*i);
            }
            RespValue::Bulk(p) => {
                self.byte(3);
                self.payload(p);
            }
            RespValue::Null => self.byte(4),
            RespValue::Array(items) => self.resp_list(5, items, depth)?,
            RespValue::Set(items) => self.resp_list(6, items, depth)?,
            RespValue::Map(pairs) => {
                self.byte(7);
                self.len(pairs.len());
                for (k, v) in pairs {
                    self.resp(k, depth + 1)?;
                    self.resp(v, depth + 1)?;
                }
            }
            RespValue::Push(items) => self.resp_list(8, items, depth)?,
            RespValue::Boolean(b) => {
                self.byte(9);
                self.bool(*b);
            }
            RespValue::Double(d) => {
                self.byte(10);
                self.fixed(d.to_bits());
            }
            RespValue::BigNumber(s) => {
                self.byte(11);
                self.str(s);
            }
            RespValue::Verbatim { format, text } => {
                self.byte(12);
                self.str(format);
                self.payload(text);
            }
            RespValue::BulkError(p) => {
                self.byte(13);
                self.payload(p);
            }
        }
        Ok(())
    }

    fn mysql_value(&mut self, v: &MysqlValue) {
        match v {
            MysqlValue::Null => self.byte(0),
            MysqlValue::Int(i) => {
                self.byte(1);
                self.zigzag(*i);
            }
            MysqlValue::UInt(u) => {
                self.byte(2);
                self.varint(*u);
            }
            MysqlValue::Float(f) => {
                self.byte(3);
                self.fixed(f.to_bits());
            }
            MysqlValue::Bytes(p) => {
                self.byte(4);
                self.payload(p);
            }
        }
    }

    fn mysql_values(&mut self, vs: &[MysqlValue]) {
        self.len(vs.len());
        for v in vs {
            self.mysql_value(v);
        }
    }

    fn mysql_command(&mut self, c: &MysqlCommand) {
        match c {
            MysqlCommand::Query { sql } => {
                self.byte(0);
                self.str(sql);
            }
            MysqlCommand::StmtPrepare { sql } => {
                self.byte(1);
                self.str(sql);
            }
            MysqlCommand::StmtExecute {
                statement_id,
                sql,
                params,
            } => {
                self.byte(2);
                self.varint(u64::from(*statement_id));
                self.opt_str(sql.as_ref());
                self.mysql_values(params);
            }
            MysqlCommand::StmtClose { statement_id } => {
                self.byte(3);
                self.varint(u64::from(*statement_id));
            }
            MysqlCommand::StmtReset { statement_id } => {
                self.byte(4);
                self.varint(u64::from(*statement_id));
            }
            MysqlCommand::InitDb { schema } => {
                self.byte(5);
                self.str(schema);
            }
            MysqlCommand::Ping => self.byte(6),
            MysqlCommand::Quit => self.byte(7),
            MysqlCommand::Other { code, data } => {
                self.byte(8);
                self.byte(*code);
                self.payload(data);
            }
        }
    }

    fn mysql_response(&mut self, m: &MysqlResponse) {
        match m {
            MysqlResponse::Ok {
                affected_rows,
                last_insert_id,
                warnings,
                info,
            } => {
                self.byte(0);
                self.varint(*affected_rows);
                self.varint(*last_insert_id);
                self.varint(u64::from(*warnings));
                self.str(info);
            }
            MysqlResponse::Err {
                code,
                sql_state,
                message,
            } => {
                self.byte(1);
                self.varint(u64::from(*code));
                self.str(sql_state);
                self.str(message);
            }
            MysqlResponse::ResultSets { sets } => {
                self.byte(2);
                self.len(sets.len());
                for MysqlResultSet { columns, rows } in sets {
                    self.len(columns.len());
                    for MysqlColumn {
                        name,
                        table,
                        column_type,
                    } in columns
                    {
                        self.str(name);
                        self.str(table);
                        self.byte(*column_type);
                    }
                    self.len(rows.len());
                    for row in rows {
                        self.mysql_values(row);
                    }
                }
            }
            MysqlResponse::Prepared {
                statement_id,
                params,
                columns,
            } => {
                self.byte(3);
                self.varint(u64::from(*statement_id));
                self.varint(u64::from(*params));
                self.varint(u64::from(*columns));
            }
            MysqlResponse::LocalInfile { filename } => {
                self.byte(4);
                self.str(filename);
            }
        }
    }

    fn mysql_session(&mut self, s: &MysqlSession) {
        let MysqlSession {
            server_version,
            user,
            schema,
            capabilities,
        } = s;
        self.str(server_version);
        self.str(user);
        self.opt_str(schema.as_ref());
        self.varint(u64::from(*capabilities));
    }
}

// ---- reading ----

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: usize,
}

type R<T> = Result<T, DecodeError>;

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { what, at: self.pos }
    }

    #[inline]
    fn byte(&mut self, what: &'static str) -> R<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err(what))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    #[inline]
    fn varint(&mut self, what: &'static str) -> R<u64> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.byte(what)?;
            if shift == 63 && b > 1 {
                return Err(self.err(what));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(self.err(what));
            }
        }
    }

    fn small<T: TryFrom<u64>>(&mut self, what: &'static str) -> R<T> {
        let v = self.varint(what)?;
        T::try_from(v).map_err(|_| self.err(what))
    }

    fn zigzag(&mut self, what: &'static str) -> R<i64> {
        let v = self.varint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn fixed(&mut self, what: &'static str) -> R<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length, checked against the bytes left (each item takes at least `min_item` bytes),
    /// so a corrupt length cannot make a huge allocation.
    /// A counted list of items of at least `min_item` bytes each, read by `item`.
    fn list<T>(
        &mut self,
        min_item: usize,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> R<T>,
    ) -> R<Vec<T>> {
        let n = self.len(min_item, what)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn len(&mut self, min_item: usize, what: &'static str) -> R<usize> {
        let n: usize = self.small(what)?;
        if n.saturating_mul(min_item) > self.buf.len() - self.pos {
            return Err(self.err(what));
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &'static str) -> R<&'a [u8]> {
        let n = self.len(1, what)?;
        self.take(n, what)
    }

    fn string(&mut self, what: &'static str) -> R<String> {
        let at = self.pos;
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError { what, at })
    }

    fn opt_string(&mut self, what: &'static str) -> R<Option<String>> {
        Ok(if self.flag(what)? {
            Some(self.string(what)?)
        } else {
            None
        })
    }

    fn payload(&mut self, what: &'static str) -> R<Payload> {
        Ok(Payload(self.bytes(what)?.to_vec()))
    }

    fn flag(&mut self, what: &'static str) -> R<bool> {
        match self.byte(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError {
                what,
                at: self.pos - 1,
            }),
        }
    }

    fn endpoint(&mut self) -> R<Endpoint> {
        let addr = match self.byte("address family")? {
            4 => {
                let b = self.take(4, "IPv4 address")?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16, "IPv6 address")?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(self.err("address family")),
        };
        Ok(Endpoint {
            addr,
            port: self.small("port")?,
            pid: if self.flag("pid")? {
                Some(self.small("pid")?)
            } else {
                None
            },
            process: self.opt_string("process")?,
            cgroup: self.opt_string("cgroup")?,
            service: self.opt_string("service")?,
        })
    }

    fn conn(&mut self) -> R<ConnectionMeta> {
        Ok(ConnectionMeta {
            id: self.varint("connection id")?,
            client: self.endpoint()?,
            server: self.endpoint()?,
        })
    }

    fn protocol(&mut self) -> R<Protocol> {
        Ok(match self.byte("protocol")? {
            0 => Protocol::Http,
            1 => Protocol::Redis,
            2 => Protocol::Mysql,
            3 => Protocol::Unknown,
            _ => return Err(self.err("protocol")),
        })
    }

    fn timing(&mut self) -> R<Timing> {
        Ok(Timing {
            request_start_ns: self.fixed("timing")?,
            request_end_ns: self.fixed("timing")?,
            response_start_ns: self.fixed("timing")?,
            response_end_ns: self.fixed("timing")?,
        })
    }

    fn flags(&mut self) -> R<Flags> {
        let b = self.byte("flags")?;
        if b >> 5 != 0 {
            return Err(DecodeError {
                what: "flags",
                at: self.pos - 1,
            });
        }
        Ok(Flags {
            truncated: b & 1 != 0,
            gap: b & 2 != 0,
            unpaired: b & 4 != 0,
            encrypted: b & 8 != 0,
            unsupported: b & 16 != 0,
        })
    }

    fn headers(&mut self) -> R<Vec<Header>> {
        self.list(2, "header count", |d| {
            Ok(Header {
                name: d.string("header name")?,
                value: d.payload("header value")?,
            })
        })
    }

    fn body(&mut self) -> R<Body> {
        Ok(Body {
            raw: self.payload("body")?,
            decoded: if self.flag("decoded body")? {
                Some(self.payload("decoded body")?)
            } else {
                None
            },
            len: self.varint("body length")?,
            truncated: self.flag("body truncated")?,
        })
    }

    fn request(&mut self) -> R<Request> {
        Ok(match self.byte("request kind")? {
            0 => Request::Http(HttpRequest {
                method: self.string("method")?,
                target: self.string("target")?,
                version: self.string("version")?,
                headers: self.headers()?,
                body: self.body()?,
            }),
            1 => Request::Redis(RedisCommand {
                args: self.list(1, "argument count", |d| d.payload("argument"))?,
                inline: self.flag("inline")?,
            }),
            2 => Request::Mysql(self.mysql_command()?),
            3 => Request::Raw {
                data: self.payload("raw request")?,
            },
            _ => return Err(self.err("request kind")),
        })
    }

    fn response(&mut self) -> R<Response> {
        Ok(match self.byte("response kind")? {
            0 => Response::Http(HttpResponse {
                version: self.string("version")?,
                status: self.small("status")?,
                reason: self.string("reason")?,
                headers: self.headers()?,
                body: self.body()?,
            }),
            1 => Response::Redis(self.resp()?),
            2 => Response::Mysql(self.mysql_response()?),
            3 => Response::Raw {
                data: self.payload("raw response")?,
            },
            _ => return Err(self.err("response kind")),
        })
    }

    fn resp_list(&mut self) -> R<Vec<RespValue>> {
        self.list(1, "Redis array length", Self::resp)
    }

    fn resp(&mut self) -> R<RespValue> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err("Redis value nested too deep"));
        }
        self.depth += 1;
        let v = self.resp_inner();
        self.depth -= 1;
        v
    }

    fn resp_inner(&mut self) -> R<RespValue> {
        Ok(match self.byte("Redis value kind")? {
            0 => RespValue::Simple(self.string("Redis simple string")?),
            1 => RespValue::Error(self.string("Redis error")?),
            2 => RespValue::Integer(self.zigzag("Redis integer")?),
            3 => RespValue::Bulk(self.payload("Redis bulk string")?),
            4 => RespValue::Null,
            5 => RespValue::Array(self.resp_list()?),
            6 => RespValue::Set(self.resp_list()?),
            7 => RespValue::Map(self.list(2, "Redis map length", |d| Ok((d.resp()?, d.resp()?)))?),
            8 => RespValue::Push(self.resp_list()?),
            9 => RespValue::Boolean(self.flag("Redis boolean")?),
            10 => RespValue::Double(f64::from_bits(self.fixed("Redis double")?)),
            11 => RespValue::BigNumber(self.string("Redis big number")?),
            12 => RespValue::Verbatim {
                format: self.string("Redis verbatim format")?,
                text: self.payload("Redis verbatim text")?,
            },
            13 => RespValue::BulkError(self.payload("Redis bulk error")?),
            _ => return Err(self.err("Redis value kind")),
        })
    }

    fn mysql_value(&mut self) -> R<MysqlValue> {
        Ok(match self.byte("MySQL value kind")? {
            0 => MysqlValue::Null,
            1 => MysqlValue::Int(self.zigzag("MySQL integer")?),
            2 => MysqlValue::UInt(self.varint("MySQL integer")?),
            3 => MysqlValue::Float(f64::from_bits(self.fixed("MySQL float")?)),
            4 => MysqlValue::Bytes(self.payload("MySQL bytes")?),
            _ => return Err(self.err("MySQL value kind")),
        })
    }

    fn mysql_values(&mut self) -> R<Vec<MysqlValue>> {
        self.list(1, "MySQL value count", Self::mysql_value)
    }

    fn mysql_command(&mut self) -> R<MysqlCommand> {
        Ok(match self.byte("MySQL command kind")? {
            0 => MysqlCommand::Query {
                sql: self.string("SQL")?,
            },
            1 => MysqlCommand::StmtPrepare {
                sql: self.string("SQL")?,
            },
            2 => MysqlCommand::StmtExecute {
                statement_id: self.small("statement id")?,
                sql: self.opt_string("SQL")?,
                params: self.mysql_values()?,
            },
            3 => MysqlCommand::StmtClose {
                statement_id: self.small("statement id")?,
            },
            4 => MysqlCommand::StmtReset {
                statement_id: self.small("statement id")?,
            },
            5 => MysqlCommand::InitDb {
                schema: self.string("schema")?,
            },
            6 => MysqlCommand::Ping,
            7 => MysqlCommand::Quit,
            8 => MysqlCommand::Other {
                code: self.byte("command code")?,
                data: self.payload("command data")?,
            },
            _ => return Err(self.err("MySQL command kind")),
        })
    }

    fn mysql_response(&mut self) -> R<MysqlResponse> {
        Ok(match self.byte("MySQL response kind")? {
            0 => MysqlResponse::Ok {
                affected_rows: self.varint("affected rows")?,
                last_insert_id: self.varint("last insert id")?,
                warnings: self.small("warnings")?,
                info: self.string("info")?,
            },
            1 => MysqlResponse::Err {
                code: self.small("error code")?,
                sql_state: self.string("SQL state")?,
                message: self.string("error message")?,
            },
            2 => MysqlResponse::ResultSets {
                sets: self.list(2, "result set count", |d| {
                    Ok(MysqlResultSet {
                        columns: d.list(3, "column count", |d| {
                            Ok(MysqlColumn {
                                name: d.string("column name")?,
                                table: d.string("column table")?,
                                column_type: d.byte("column type")?,
                            })
                        })?,
                        rows: d.list(1, "row count", Self::mysql_values)?,
                    })
                })?,
            },
            3 => MysqlResponse::Prepared {
                statement_id: self.small("statement id")?,
                params: self.small("parameter count")?,
                columns: self.small("column count")?,
            },
            4 => MysqlResponse::LocalInfile {
                filename: self.string("file name")?,
            },
            _ => return Err(self.err("MySQL response kind")),
        })
    }

    fn mysql_session(&mut self) -> R<MysqlSession> {
        Ok(MysqlSession {
            server_version: self.string("server version")?,
            user: self.string("user")?,
            schema: self.opt_string("schema")?,
            capabilities: self.small("capabilities")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,12}"
    }

    fn payload() -> impl Strategy<Value = Payload> {
        vec(any::<u8>(), 0..24).prop_map(Payload)
    }

    fn finite() -> impl Strategy<Value = f64> {
        any::<f64>().prop_filter("finite (NaN != NaN)", |d| d.is_finite())
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        let addr = prop_oneof![
            any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        ];
        (
            addr,
            any::<u16>(),
            any::<Option<u32>>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(addr, port, pid, process, cgroup, service)| Endpoint {
                addr,
                port,
                pid,
                process,
                cgroup,
                service,
            })
    }

    fn body() -> impl Strategy<Value = Body> {
        (
            payload(),
            proptest::option::of(payload()),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(raw, decoded, len, truncated)| Body {
                raw,
                decoded,
                len,
                truncated,
            })
    }

    fn headers() -> impl Strategy<Value = Vec<Header>> {
        vec(
            (text(), payload()).prop_map(|(name, value)| Header { name, value }),
            0..4,
        )
    }

    fn mysql_value() -> impl Strategy<Value = MysqlValue> {
        prop_oneof![
            Just(MysqlValue::Null),
            any::<i64>().prop_map(MysqlValue::Int),
            any::<u64>().prop_map(MysqlValue::UInt),
            finite().prop_map(MysqlValue::Float),
            payload().prop_map(MysqlValue::Bytes),
        ]
    }

    fn resp() -> impl Strategy<Value = RespValue> {
        let leaf = prop_oneof![
            text().prop_map(RespValue::Simple),
            text().prop_map(RespValue::Error),
            any::<i64>().prop_map(RespValue::Integer),
            payload().prop_map(RespValue::Bulk),
            Just(RespValue::Null),
            any::<bool>().prop_map(RespValue::Boolean),
            finite().prop_map(RespValue::Double),
            text().prop_map(RespValue::BigNumber),
            (text(), payload()).prop_map(|(format, text)| RespValue::Verbatim { format, text }),
            payload().prop_map(RespValue::BulkError),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(RespValue::Array),
                vec(inner.clone(), 0..4).prop_map(RespValue::Set),
                vec(inner.clone(), 0..4).prop_map(RespValue::Push),
                vec((inner.clone(), inner), 0..3).prop_map(RespValue::Map),
            ]
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        let mysql = prop_oneof![
            text().prop_map(|sql| MysqlCommand::Query { sql }),
            text().prop_map(|sql| MysqlCommand::StmtPrepare { sql }),
            (
                any::<u32>(),
                proptest::option::of(text()),
                vec(mysql_value(), 0..4)
            )
                .prop_map(|(statement_id, sql, params)| MysqlCommand::StmtExecute {
                    statement_id,
                    sql,
                    params
                }),
            any::<u32>().prop_map(|statement_id| MysqlCommand::StmtClose { statement_id }),
            any::<u32>().prop_map(|statement_id| MysqlCommand::StmtReset { statement_id }),
            text().prop_map(|schema| MysqlCommand::InitDb { schema }),
            Just(MysqlCommand::Ping),
            Just(MysqlCommand::Quit),
            (any::<u8>(), payload()).prop_map(|(code, data)| MysqlCommand::Other { code, data }),
        ];
        prop_oneof![
            (text(), text(), text(), headers(), body()).prop_map(
                |(method, target, version, headers, body)| Request::Http(HttpRequest {
                    method,
                    target,
                    version,
                    headers,
                    body
                })
            ),
            (vec(payload(), 0..4), any::<bool>())
                .prop_map(|(args, inline)| Request::Redis(RedisCommand { args, inline })),
            mysql.prop_map(Request::Mysql),
            payload().prop_map(|data| Request::Raw { data }),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        let column =
            (text(), text(), any::<u8>()).prop_map(|(name, table, column_type)| MysqlColumn {
                name,
                table,
                column_type,
            });
        let set = (vec(column, 0..3), vec(vec(mysql_value(), 0..3), 0..3))
            .prop_map(|(columns, rows)| MysqlResultSet { columns, rows });
        let mysql = prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u16>(), text()).prop_map(
                |(affected_rows, last_insert_id, warnings, info)| MysqlResponse::Ok {
                    affected_rows,
                    last_insert_id,
                    warnings,
                    info
                }
            ),
            (any::<u16>(), text(), text()).prop_map(|(code, sql_state, message)| {
                MysqlResponse::Err {
                    code,
                    sql_state,
                    message,
                }
            }),
            vec(set, 0..3).prop_map(|sets| MysqlResponse::ResultSets { sets }),
            (any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
                |(statement_id, params, columns)| MysqlResponse::Prepared {
                    statement_id,
                    params,
                    columns
                }
            ),
            text().prop_map(|filename| MysqlResponse::LocalInfile { filename }),
        ];
        prop_oneof![
            (text(), any::<u16>(), text(), headers(), body()).prop_map(
                |(version, status, reason, headers, body)| Response::Http(HttpResponse {
                    version,
                    status,
                    reason,
                    headers,
                    body
                })
            ),
            resp().prop_map(Response::Redis),
            mysql.prop_map(Response::Mysql),
            payload().prop_map(|data| Response::Raw { data }),
        ]
    }

    fn exchange() -> impl Strategy<Value = Exchange> {
        let protocol = prop_oneof![
            Just(Protocol::Http),
            Just(Protocol::Redis),
            Just(Protocol::Mysql),
            Just(Protocol::Unknown),
        ];
        let session = (text(), text(), proptest::option::of(text()), any::<u32>()).prop_map(
            |(server_version, user, schema, capabilities)| {
                SessionInfo::Mysql(MysqlSession {
                    server_version,
                    user,
                    schema,
                    capabilities,
                })
            },
        );
        let conn = (any::<u64>(), endpoint(), endpoint())
            .prop_map(|(id, client, server)| ConnectionMeta { id, client, server });
        let timing = any::<[u64; 4]>().prop_map(|t| Timing {
            request_start_ns: t[0],
            request_end_ns: t[1],
            response_start_ns: t[2],
            response_end_ns: t[3],
        });
        let flags = any::<[bool; 5]>().prop_map(|f| Flags {
            truncated: f[0],
            gap: f[1],
            unpaired: f[2],
            encrypted: f[3],
            unsupported: f[4],
        });
        (
            conn,
            any::<u64>(),
            protocol,
            request(),
            proptest::option::of(response()),
            timing,
            flags,
            proptest::option::of(session),
        )
            .prop_map(
                |(conn, seq, protocol, request, response, timing, flags, session)| Exchange {
                    conn: conn.into(),
                    seq,
                    protocol,
                    request,
                    response,
                    timing,
                    flags,
                    session,
                },
            )
    }

    fn encoded(x: &Exchange) -> Vec<u8> {
        let mut out = Vec::new();
        encode_exchange(x, &mut out).unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every field and variant of the model survives encode → decode exactly.
        #[test]
        fn any_exchange_round_trips(x in exchange()) {
            let bytes = encoded(&x);
            prop_assert_eq!(decode_exchange(&bytes), Ok(x));
        }

        /// Cut or damaged records are errors, never panics (and a cut one is always an error).
        #[test]
        fn damaged_records_never_panic(x in exchange(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let bytes = encoded(&x);
            let cut = at.index(bytes.len());
            prop_assert!(decode_exchange(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            flipped[cut] = byte;
            let _ = decode_exchange(&flipped);
        }

        #[test]
        fn garbage_never_panics(bytes in vec(any::<u8>(), 0..400)) {
            let _ = decode_exchange(&bytes);
        }

        /// With the connection cache the bytes are the same: exchanges drawn from more
        /// connections than the cache holds (misses, hits, evictions), and a connection
        /// changed after it was cached (`Arc::make_mut`) is written as changed.
        #[test]
        fn cached_connections_encode_the_same_bytes(
            xs in vec(exchange(), 1..6),
            picks in vec((0usize..100, 0usize..6), 1..300),
        ) {
            let mut conns: Vec<Arc<ConnectionMeta>> = (0..100u64)
                .map(|id| Arc::new(ConnectionMeta { id, ..xs[0].conn.as_ref().clone() }))
                .collect();
            let mut cache = ConnCache::default();
            for (n, (c, x)) in picks.into_iter().enumerate() {
                if n % 50 == 49 {
                    Arc::make_mut(&mut conns[c]).client.port ^= 1;
                }
                let mut x = xs[x % xs.len()].clone();
                x.conn = Arc::clone(&conns[c]);
                let mut cached = Vec::new();
                encode_exchange_cached(&x, &mut cached, &mut cache).unwrap();
                prop_assert_eq!(&cached, &encoded(&x));
            }
        }
    }

    /// Floats are kept bit for bit (NaN, -0.0), unlike JSON.
    #[test]
    fn doubles_keep_their_bits() {
        let mut x = Exchange {
            conn: std::sync::Arc::default(),
            seq: 0,
            protocol: Protocol::Redis,
            request: Request::Raw {
                data: Payload::default(),
            },
            response: None,
            timing: Timing::default(),
            flags: Flags::default(),
            session: None,
        };
        for d in [f64::NAN, -0.0, f64::INFINITY, f64::MIN_POSITIVE] {
            x.response = Some(Response::Redis(RespValue::Double(d)));
            let back = decode_exchange(&encoded(&x)).unwrap();
            let Some(Response::Redis(RespValue::Double(got))) = back.response else {
                panic!("not a double: {back:?}");
            };
            assert_eq!(got.to_bits(), d.to_bits());
        }
    }

    /// Nesting past the limit is refused by the encoder (the store keeps such an exchange
    /// as JSON) and by the decoder, without overflowing the stack.
    #[test]
    fn deep_nesting_is_bounded() {
        let mut v = RespValue::Null;
        for _ in 0..MAX_DEPTH {
            v = RespValue::Array(vec![v]);
        }
        let x = Exchange {
            conn: std::sync::Arc::default(),
            seq: 0,
            protocol: Protocol::Redis,
            request: Request::Raw {
                data: Payload::default(),
            },
            response: Some(Response::Redis(v)),
            timing: Timing::default(),
            flags: Flags::default(),
            session: None,
        };
        assert_eq!(encode_exchange(&x, &mut Vec::new()), Err(TooDeep));
        // A hand-made record nested 100,000 deep: response flag, kind Redis, then arrays of
        // one element; the last 35 bytes of a record without response are its response
        // flag, timing (32), flags and session flag.
        let mut bytes = encoded(&Exchange {
            response: None,
            ..x
        });
        let tail = bytes.split_off(bytes.len() - 35);
        bytes.extend_from_slice(&[1, 1]);
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[5, 1]);
        }
        bytes.push(4);
        bytes.extend_from_slice(&tail[1..]);
        let err = decode_exchange(&bytes).unwrap_err();
        assert_eq!(err.what, "Redis value nested too deep");
    }
}
