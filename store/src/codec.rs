//! Versioned store values: one version byte, then the record as JSON (the same canonical
//! JSON a bundle line holds, so export copies bytes).

use deetune_protocols::Exchange;
use serde::{de::DeserializeOwned, Serialize};

use crate::StoreError;

/// Version byte of every value this build writes (and the newest it reads).
pub(crate) const VALUE_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(512);
    out.push(VALUE_VERSION);
    serde_json::to_writer(&mut out, value).map_err(|source| StoreError::Encode { what, source })?;
    Ok(out)
}

/// The JSON of a stored value, after checking its version.
pub(crate) fn body<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => Ok(rest),
        Some((&v, _)) if v > VALUE_VERSION => Err(StoreError::NewerFormat {
            what: what.to_owned(),
            found: u32::from(v),
            supported: u32::from(VALUE_VERSION),
        }),
        Some((&v, _)) => Err(StoreError::Corrupt {
            what: what.to_owned(),
            detail: format!("unknown value version {v}"),
        }),
        None => Err(StoreError::Corrupt {
            what: what.to_owned(),
            detail: "empty value".to_owned(),
        }),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body(what, bytes)?).map_err(|e| StoreError::Corrupt {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

/// Parses one exchange line (a bundle line, an imported record): first with
/// [`fast::exchange`], a reader of exactly the canonical JSON this crate writes for an HTTP
/// exchange, and when it declines, with serde_json. The result is the same either way: the
/// fast reader accepts a subset of what serde_json accepts (no whitespace, keys in
/// serialization order, no `\u` escapes, no base64 payloads, …) and builds the same value;
/// anything else, including every malformed line, goes to serde_json (and its error).
pub(crate) fn exchange_from_json_line(line: &[u8]) -> Result<Exchange, serde_json::Error> {
    match std::str::from_utf8(line) {
        Ok(text) => match fast::exchange(text) {
            Some(x) => Ok(x),
            None => serde_json::from_str(text),
        },
        Err(_) => serde_json::from_slice(line),
    }
}

/// The canonical-form exchange reader (see [`exchange_from_json_line`]). serde_json spends
/// ≈ 25k instructions on a 740-byte HTTP exchange line (generic key matching, the internally
/// tagged request and response, a scratch copy and a restart at every escape of a JSON body);
/// this reader walks the fixed layout once.
pub(crate) mod fast {
    use std::net::IpAddr;

    use deetune_protocols::{
        Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse,
        Payload, Protocol, Request, Response, Timing,
    };

    /// A position in a line that is valid UTF-8 (checked by the caller).
    struct Cur<'a> {
        /// The line.
        s: &'a str,
        /// Its bytes.
        b: &'a [u8],
        i: usize,
    }

    impl Cur<'_> {
        /// Consumes `s` if the input continues with it.
        fn eat(&mut self, s: &[u8]) -> bool {
            if self.b[self.i..].starts_with(s) {
                self.i += s.len();
                true
            } else {
                false
            }
        }

        /// Consumes `s` or declines.
        fn lit(&mut self, s: &[u8]) -> Option<()> {
            self.eat(s).then_some(())
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        /// A JSON string's bytes (unescaped). Declines on `\u` escapes, invalid escapes and
        /// control characters (serde_json rejects the latter two; the first it reads itself).
        fn string_bytes(&mut self, out: &mut Vec<u8>) -> Option<()> {
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.i + 1;
            let n = memchr::memchr2(b'"', b'\\', &self.b[start..])?;
            let run = &self.b[start..start + n];
            if run.iter().any(|&c| c < 0x20) {
                return None;
            }
            out.extend_from_slice(run);
            self.i = start + n;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Some(());
            }
            // Escapes (a JSON body in a string has one every few bytes): find the end and
            // the unescaped length first, then copy into an allocation of that size (rather
            // than a search, a copy and a reallocation per escape).
            let mut j = self.i;
            let mut escapes = 0;
            loop {
                match *self.b.get(j)? {
                    b'"' => break,
                    b'\\' => {
                        if !matches!(
                            self.b.get(j + 1)?,
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'
                        ) {
                            return None;
                        }
                        escapes += 1;
                        j += 2;
                    }
                    0..0x20 => return None,
                    _ => j += 1,
                }
            }
            let start = out.len();
            out.resize(start + (j - self.i - escapes), 0);
            let dst = &mut out[start..];
            let (mut k, mut w) = (self.i, 0);
            while k < j {
                let mut c = self.b[k];
                k += 1;
                if c == b'\\' {
                    c = match self.b[k] {
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    };
                    k += 1;
                }
                dst[w] = c;
                w += 1;
            }
            self.i = j + 1;
            Some(())
        }

        /// A JSON string without escapes, borrowed (declines otherwise).
        fn plain_str(&mut self) -> Option<&str> {
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.i + 1;
            let n = memchr::memchr2(b'"', b'\\', &self.b[start..])?;
            if self.b[start + n] != b'"' || self.b[start..start + n].iter().any(|&c| c < 0x20) {
                return None;
            }
            self.i = start + n + 1;
            // Quotes are ASCII: both ends are character boundaries of the (valid) line.
            self.s.get(start..start + n)
        }

        fn string(&mut self) -> Option<String> {
            let save = self.i;
            if let Some(text) = self.plain_str() {
                return Some(text.to_owned());
            }
            self.i = save;
            let mut v = Vec::new();
            self.string_bytes(&mut v)?;
            String::from_utf8(v).ok()
        }

        fn payload(&mut self) -> Option<Payload> {
            let mut v = Vec::new();
            self.string_bytes(&mut v)?;
            Some(Payload(v))
        }

        /// An unsigned integer as serde_json reads one into `u64` (declines on a sign,
        /// fraction, exponent, leading zero or overflow).
        fn u64(&mut self) -> Option<u64> {
            let start = self.i;
            let mut v = 0u64;
            while let Some(d) = self.b.get(self.i).map(|c| c.wrapping_sub(b'0')) {
                if d > 9 {
                    break;
                }
                // Checked below: at most 19 digits, which cannot overflow.
                v = v.wrapping_mul(10).wrapping_add(u64::from(d));
                self.i += 1;
            }
            let digits = self.i - start;
            // 20 digits and more (≥ 10^19) are left to serde_json, as are leading zeros,
            // fractions and exponents.
            if digits == 0
                || digits > 19
                || (digits > 1 && self.b[start] == b'0')
                || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            Some(v)
        }

        fn u16(&mut self) -> Option<u16> {
            u16::try_from(self.u64()?).ok()
        }

        fn bool(&mut self) -> Option<bool> {
            if self.eat(b"true") {
                Some(true)
            } else if self.eat(b"false") {
                Some(false)
            } else {
                None
            }
        }

        fn endpoint(&mut self) -> Option<Endpoint> {
            self.lit(b"{\"addr\":")?;
            let addr: IpAddr = self.plain_str()?.parse().ok()?;
            self.lit(b",\"port\":")?;
            let port = self.u16()?;
            let pid = if self.eat(b",\"pid\":") {
                Some(u32::try_from(self.u64()?).ok()?)
            } else {
                None
            };
            let mut opt = |key: &[u8]| -> Option<Option<String>> {
                if self.eat(key) {
                    self.string().map(Some)
                } else {
                    Some(None)
                }
            };
            let process = opt(b",\"process\":")?;
            let cgroup = opt(b",\"cgroup\":")?;
            let service = opt(b",\"service\":")?;
            self.lit(b"}")?;
            Some(Endpoint {
                addr,
                port,
                pid,
                process,
                cgroup,
                service,
            })
        }

        fn headers(&mut self) -> Option<Vec<Header>> {
            self.lit(b"[")?;
            let mut out = Vec::new();
            if self.eat(b"]") {
                return Some(out);
            }
            loop {
                self.lit(b"{\"name\":")?;
                let name = self.string()?;
                self.lit(b",\"value\":")?;
                let value = self.payload()?;
                self.lit(b"}")?;
                out.push(Header { name, value });
                if self.eat(b"]") {
                    return Some(out);
                }
                self.lit(b",")?;
            }
        }

        fn body(&mut self) -> Option<Body> {
            self.lit(b"{\"raw\":")?;
            let raw = self.payload()?;
            let decoded = if self.eat(b",\"decoded\":") {
                Some(self.payload()?)
            } else {
                None
            };
            self.lit(b",\"len\":")?;
            let len = self.u64()?;
            let truncated = if self.eat(b",\"truncated\":") {
                self.bool()?
            } else {
                false
            };
            self.lit(b"}")?;
            Some(Body {
                raw,
                decoded,
                len,
                truncated,
            })
        }

        fn request(&mut self) -> Option<HttpRequest> {
            self.lit(b"{\"protocol\":\"http\",\"method\":")?;
            let method = self.string()?;
            self.lit(b",\"target\":")?;
            let target = self.string()?;
            self.lit(b",\"version\":")?;
            let version = self.string()?;
            self.lit(b",\"headers\":")?;
            let headers = self.headers()?;
            self.lit(b",\"body\":")?;
            let body = self.body()?;
            self.lit(b"}")?;
            Some(HttpRequest {
                method,
                target,
                version,
                headers,
                body,
            })
        }

        fn response(&mut self) -> Option<HttpResponse> {
            self.lit(b"{\"protocol\":\"http\",\"version\":")?;
            let version = self.string()?;
            self.lit(b",\"status\":")?;
            let status = self.u16()?;
            self.lit(b",\"reason\":")?;
            let reason = self.string()?;
            self.lit(b",\"headers\":")?;
            let headers = self.headers()?;
            self.lit(b",\"body\":")?;
            let body = self.body()?;
            self.lit(b"}")?;
            Some(HttpResponse {
                version,
                status,
                reason,
                headers,
                body,
            })
        }

        fn flags(&mut self) -> Option<Flags> {
            self.lit(b"{")?;
            let mut f = Flags::default();
            let mut first = true;
            for (key, slot) in [
                (&b"\"truncated\":"[..], &mut f.truncated),
                (b"\"gap\":", &mut f.gap),
                (b"\"unpaired\":", &mut f.unpaired),
                (b"\"encrypted\":", &mut f.encrypted),
                (b"\"unsupported\":", &mut f.unsupported),
            ] {
                let save = self.i;
                if !first && !self.eat(b",") {
                    continue;
                }
                if self.eat(key) {
                    *slot = self.bool()?;
                    first = false;
                } else {
                    self.i = save;
                }
            }
            self.lit(b"}")?;
            Some(f)
        }
    }

    /// An HTTP exchange in exactly the form `serde_json::to_writer` gives it, or `None`.
    pub(crate) fn exchange(line: &str) -> Option<Exchange> {
        let mut c = Cur {
            s: line,
            b: line.as_bytes(),
            i: 0,
        };
        c.lit(b"{\"conn\":{\"id\":")?;
        let id = c.u64()?;
        c.lit(b",\"client\":")?;
        let client = c.endpoint()?;
        c.lit(b",\"server\":")?;
        let server = c.endpoint()?;
        c.lit(b"},\"seq\":")?;
        let seq = c.u64()?;
        c.lit(b",\"protocol\":\"http\",\"request\":")?;
        let request = c.request()?;
        c.lit(b",\"response\":")?;
        let response = if c.eat(b"null") {
            None
        } else {
            Some(Response::Http(c.response()?))
        };
        c.lit(b",\"timing\":{\"request_start_ns\":")?;
        let request_start_ns = c.u64()?;
        c.lit(b",\"request_end_ns\":")?;
        let request_end_ns = c.u64()?;
        c.lit(b",\"response_start_ns\":")?;
        let response_start_ns = c.u64()?;
        c.lit(b",\"response_end_ns\":")?;
        let response_end_ns = c.u64()?;
        c.lit(b"}")?;
        let flags = if c.eat(b",\"flags\":") {
            c.flags()?
        } else {
            Flags::default()
        };
        c.lit(b"}")?;
        if c.i != line.len() {
            return None;
        }
        Some(Exchange {
            conn: std::sync::Arc::new(ConnectionMeta { id, client, server }),
            seq,
            protocol: Protocol::Http,
            request: Request::Http(request),
            response,
            timing: Timing {
                request_start_ns,
                request_end_ns,
                response_start_ns,
                response_end_ns,
            },
            flags,
            session: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deetune_protocols::{
        Body, ConnectionMeta, Endpoint, Flags, Header, HttpRequest, HttpResponse, Payload,
        Protocol, RedisCommand, Request, RespValue, Response, Timing,
    };

    fn http(body: &[u8], response: bool) -> Exchange {
        Exchange {
            conn: std::sync::Arc::new(ConnectionMeta {
                id: 7,
                client: Endpoint::default(),
                server: Endpoint {
                    service: Some("bench".into()),
                    ..Endpoint::default()
                },
            }),
            seq: 3,
            protocol: Protocol::Http,
            request: Request::Http(HttpRequest {
                method: "GET".into(),
                target: "/bench?q=\"x\"".into(),
                version: "HTTP/1.1".into(),
                headers: vec![Header {
                    name: "Host".into(),
                    value: "prod".into(),
                }],
                body: Body::default(),
            }),
            response: response.then(|| {
                Response::Http(HttpResponse {
                    version: "HTTP/1.1".into(),
                    status: 200,
                    reason: "OK".into(),
                    headers: vec![
                        Header {
                            name: "Content-Type".into(),
                            value: "application/json".into(),
                        },
                        Header {
                            name: "X-Path".into(),
                            value: "a\\b/c\td".into(),
                        },
                    ],
                    body: Body {
                        raw: Payload(body.to_vec()),
                        decoded: None,
                        len: body.len() as u64,
                        truncated: false,
                    },
                })
            }),
            timing: Timing {
                request_start_ns: 1_700_000_000_000_000_000,
                request_end_ns: 1_700_000_000_000_000_100,
                response_start_ns: 1_700_000_000_000_000_200,
                response_end_ns: 9_999_999_999_999_999_999,
            },
            flags: Flags::default(),
            session: None,
        }
    }

    /// Exchanges the fast reader must take (`true`) or leave to serde_json (`false`).
    fn cases() -> Vec<(Exchange, bool)> {
        let json = br#"{"items":[{"id":1,"name":"tea","price":4.5}],"total":2}"#;
        let mut full = http(
            "line 1\nline 2\r\n\u{e9}\u{1f600} \\ / \"q\"".as_bytes(),
            true,
        );
        std::sync::Arc::make_mut(&mut full.conn).client = Endpoint {
            addr: "::1".parse().unwrap(),
            port: 65535,
            pid: Some(4_000_000_000),
            process: Some("cur\"l".into()),
            cgroup: Some("/system.slice/x".into()),
            service: None,
        };
        full.flags = Flags {
            truncated: true,
            unsupported: true,
            ..Flags::default()
        };
        if let Request::Http(r) = &mut full.request {
            r.method = "POST".into();
            r.body = Body {
                raw: Payload(b"compressed, as text".to_vec()),
                decoded: Some(Payload(b"{}".to_vec())),
                len: 99,
                truncated: true,
            };
            r.headers.clear();
        }
        let mut all_flags = http(b"", false);
        all_flags.flags = Flags {
            truncated: true,
            gap: true,
            unpaired: true,
            encrypted: true,
            unsupported: true,
        };
        let mut binary = http(b"", true);
        if let Some(Response::Http(r)) = &mut binary.response {
            r.body.raw = Payload(vec![0xff, 0x00, 0x10]);
        }
        let mut redis = http(b"", false);
        redis.protocol = Protocol::Redis;
        redis.request = Request::Redis(RedisCommand {
            args: vec![Payload::from("GET"), Payload::from("k")],
            inline: false,
        });
        redis.response = Some(Response::Redis(RespValue::Null));
        let mut big = http(b"", true);
        big.timing.response_end_ns = u64::MAX;
        vec![
            (http(json, true), true),
            (http(json, false), true),
            (http(b"", true), true),
            (full, true),
            (all_flags, true),
            // Written with \u escapes (a control character) or as base64: serde_json's.
            (http(b"bell \x07", true), false),
            (binary, false),
            (redis, false),
            // 20 digits: serde_json's.
            (big, false),
        ]
    }

    #[test]
    fn fast_reader_agrees_with_serde_json() {
        for (ex, fast_path) in cases() {
            let line = serde_json::to_vec(&ex).unwrap();
            let text = String::from_utf8_lossy(&line);
            let fast = fast::exchange(std::str::from_utf8(&line).unwrap());
            assert_eq!(fast.is_some(), fast_path, "{text}");
            if let Some(f) = fast {
                assert_eq!(f, ex, "{text}");
            }
            assert_eq!(exchange_from_json_line(&line).unwrap(), ex, "{text}");
        }
    }

    /// Every one-byte change, deletion, insertion and cut of the lines above: whenever the fast reader
    /// accepts the result, serde_json reads the same exchange from it (and otherwise the
    /// serde_json result, error included, is what the caller gets).
    #[test]
    fn fast_reader_never_disagrees_on_damaged_lines() {
        let mut accepted = 0;
        let mut tried = 0;
        for (ex, _) in cases() {
            let line = serde_json::to_vec(&ex).unwrap();
            let mut variants: Vec<Vec<u8>> = Vec::new();
            for i in 0..line.len() {
                for b in [
                    b'"', b'\\', b'0', b'9', b'}', b',', b' ', b'n', b'e', b'-', 0x01,
                ] {
                    let mut m = line.clone();
                    m[i] = b;
                    variants.push(m);
                }
                let mut m = line.clone();
                m.remove(i);
                variants.push(m);
                for b in [b'0', b'9', b'"'] {
                    let mut m = line.clone();
                    m.insert(i, b);
                    variants.push(m);
                }
                variants.push(line[..i].to_vec());
            }
            for m in variants {
                let Ok(text) = std::str::from_utf8(&m) else {
                    continue;
                };
                tried += 1;
                let serde = serde_json::from_slice::<Exchange>(&m);
                if let Some(f) = fast::exchange(text) {
                    accepted += 1;
                    match serde {
                        Ok(s) => assert_eq!(f, s, "{}", String::from_utf8_lossy(&m)),
                        Err(e) => panic!(
                            "fast reader accepted what serde_json refuses ({e}): {}",
                            String::from_utf8_lossy(&m)
                        ),
                    }
                }
                let via = exchange_from_json_line(&m).map_err(|e| e.to_string());
                let direct = serde_json::from_slice::<Exchange>(&m).map_err(|e| e.to_string());
                assert_eq!(via, direct, "{}", String::from_utf8_lossy(&m));
            }
        }
        // The changes inside numbers and strings keep many lines valid: both readers ran.
        assert!(
            accepted > 1000,
            "only {accepted} of {tried} variants read fast"
        );
    }

    proptest::proptest! {
        /// Any text in the strings and bodies (quotes, backslashes, control characters,
        /// non-ASCII) and any bytes in a header value: read back equal, by the fast reader
        /// whenever it takes the line.
        #[test]
        fn any_http_text_reads_back(
            body in proptest::prelude::any::<String>(),
            target in proptest::prelude::any::<String>(),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            status in proptest::prelude::any::<u16>(),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let mut ex = http(body.as_bytes(), true);
            ex.seq = seq;
            if let Request::Http(r) = &mut ex.request {
                r.target = target;
                r.headers[0].value = Payload(value);
            }
            if let Some(Response::Http(r)) = &mut ex.response {
                r.status = status;
            }
            let line = serde_json::to_vec(&ex).unwrap();
            if let Some(f) = fast::exchange(std::str::from_utf8(&line).unwrap()) {
                proptest::prop_assert_eq!(&f, &ex);
            }
            proptest::prop_assert_eq!(exchange_from_json_line(&line).unwrap(), ex);
        }
    }
}
