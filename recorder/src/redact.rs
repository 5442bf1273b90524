//! Redaction: secrets are replaced by `[REDACTED]` before an exchange is stored.
//!
//! Always on: the `Authorization`, `Proxy-Authorization`, `Cookie` and `Set-Cookie` headers,
//! the arguments of Redis `AUTH`, the credentials of `HELLO … AUTH user pass` and of
//! `MIGRATE … AUTH pass` / `AUTH2 user pass`. MySQL authentication data never reaches an
//! exchange (the decoder drops it). Tasks add header names and JSON paths into bodies.

use deetune_protocols::{
    parse_json_path, Body, Exchange, Header, JsonStep as Step, Payload, Request, Response,
};
use serde_json::Value;

use crate::policy::PolicyError;

/// The replacement text.
pub const REDACTED: &str = "[REDACTED]";

/// Headers redacted in every task.
pub const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// A JSON path into a body: `$.card.number`, `$.items[*].token`, `$['odd key'][0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses a path.
    ///
    /// # Errors
    /// [`PolicyError::BadJsonPath`] when it does not start with `$` or a step is malformed.
    pub fn parse(path: &str) -> Result<Self, PolicyError> {
        let bad = |reason| PolicyError::BadJsonPath {
            path: path.to_owned(),
            reason,
        };
        let steps = parse_json_path(path).map_err(|e| bad(e.reason()))?;
        if steps.is_empty() {
            return Err(bad("the path names nothing below `$`"));
        }
        Ok(Self { steps })
    }

    /// Replaces every value the path reaches; returns how many.
    fn apply(&self, v: &mut Value) -> usize {
        fn walk(steps: &[Step], v: &mut Value) -> usize {
            let Some((first, rest)) = steps.split_first() else {
                *v = Value::String(REDACTED.to_owned());
                return 1;
            };
            match (first, v) {
                (Step::Key(k), Value::Object(m)) => m.get_mut(k).map_or(0, |c| walk(rest, c)),
                (Step::Index(n), Value::Array(a)) => a.get_mut(*n).map_or(0, |c| walk(rest, c)),
                (Step::Any, Value::Array(a)) => a.iter_mut().map(|c| walk(rest, c)).sum(),
                (Step::Any, Value::Object(m)) => m.values_mut().map(|c| walk(rest, c)).sum(),
                _ => 0,
            }
        }
        walk(&self.steps, v)
    }
}

/// The redaction of one task.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    headers: Vec<String>,
    json: Vec<JsonPath>,
}

impl Redactor {
    /// The defaults plus `extra_headers` and `json` paths.
    #[must_use]
    pub fn new(extra_headers: &[String], json: Vec<JsonPath>) -> Self {
        let mut headers: Vec<String> = DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect();
        headers.extend(extra_headers.iter().map(|h| h.to_ascii_lowercase()));
        headers.sort();
        headers.dedup();
        Self { headers, json }
    }

    /// Redacts `ex` in place.
    pub fn apply(&self, ex: &mut Exchange) {
        match &mut ex.request {
            Request::Http(r) => {
                self.headers(&mut r.headers);
                self.body(&mut r.body);
            }
            Request::Redis(c) => redact_redis(&mut c.args),
            Request::Mysql(_) | Request::Raw { .. } => {}
        }
        if let Some(Response::Http(r)) = &mut ex.response {
            self.headers(&mut r.headers);
            self.body(&mut r.body);
        }
    }

    fn headers(&self, headers: &mut [Header]) {
        for h in headers {
            if self.headers.iter().any(|n| n.eq_ignore_ascii_case(&h.name)) {
                h.value = Payload::from(REDACTED);
            }
        }
    }

    fn body(&self, body: &mut Body) {
        if self.json.is_empty() {
            return;
        }
        redact_json_payload(&self.json, &mut body.raw);
        if let Some(d) = &mut body.decoded {
            redact_json_payload(&self.json, d);
        }
    }
}

fn redact_json_payload(paths: &[JsonPath], p: &mut Payload) {
    let Ok(mut v) = serde_json::from_slice::<Value>(p.as_bytes()) else {
        return;
    };
    let n: usize = paths.iter().map(|path| path.apply(&mut v)).sum();
    if n > 0 {
        if let Ok(bytes) = serde_json::to_vec(&v) {
            *p = Payload(bytes);
        }
    }
}

fn redact_redis(args: &mut [Payload]) {
    let Some(name) = args
        .first()
        .map(|a| String::from_utf8_lossy(a.as_bytes()).to_ascii_uppercase())
    else {
        return;
    };
    let secret = || Payload::from(REDACTED);
    match name.as_str() {
        "AUTH" => args.iter_mut().skip(1).for_each(|a| *a = secret()),
        "HELLO" | "MIGRATE" => {
            let mut i = 1;
            while i < args.len() {
                let word = String::from_utf8_lossy(args[i].as_bytes()).to_ascii_uppercase();
                let n = match word.as_str() {
                    "AUTH" if name == "HELLO" => 2,
                    "AUTH" => 1,
                    "AUTH2" => 2,
                    _ => 0,
                };
                for a in args.iter_mut().skip(i + 1).take(n) {
                    *a = secret();
                }
                i += 1 + n;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deetune_protocols::{Flags, HttpRequest, Protocol, RedisCommand, Timing};

    fn http(headers: &[(&str, &str)], body: &str) -> Exchange {
        Exchange {
            conn: std::sync::Arc::default(),
            seq: 0,
            protocol: Protocol::Http,
            request: Request::Http(HttpRequest {
                method: "POST".into(),
                target: "/pay".into(),
                version: "HTTP/1.1".into(),
                headers: headers
                    .iter()
                    .map(|(n, v)| Header {
                        name: (*n).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                body: Body {
                    raw: body.into(),
                    decoded: None,
                    len: body.len() as u64,
                    truncated: false,
                },
            }),
            response: None,
            timing: Timing::default(),
            flags: Flags::default(),
            session: None,
        }
    }

    #[test]
    fn headers_and_json() {
        let r = Redactor::new(
            &["X-Api-Key".into()],
            vec![
                JsonPath::parse("$.card.number").unwrap(),
                JsonPath::parse("$.items[*].token").unwrap(),
            ],
        );
        let mut ex = http(
            &[
                ("authorization", "Bearer s3cret"),
                ("X-API-KEY", "k"),
                ("Accept", "*/*"),
            ],
            r#"{"card":{"number":"4111","exp":"12/30"},"items":[{"token":"a"},{"token":"b"}]}"#,
        );
        r.apply(&mut ex);
        let Request::Http(req) = &ex.request else {
            unreachable!()
        };
        assert_eq!(req.headers[0].value.as_str(), Some(REDACTED));
        assert_eq!(req.headers[1].value.as_str(), Some(REDACTED));
        assert_eq!(req.headers[2].value.as_str(), Some("*/*"));
        let body = req.body.raw.as_str().unwrap();
        assert!(
            !body.contains("4111") && !body.contains("\"a\"") && body.contains("12/30"),
            "{body}"
        );
    }

    #[test]
    fn redis_credentials() {
        let mut args: Vec<Payload> = ["hello", "3", "AUTH", "u", "p", "SETNAME", "x"]
            .iter()
            .map(|s| Payload::from(*s))
            .collect();
        redact_redis(&mut args);
        let s: Vec<_> = args.iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(
            s,
            ["hello", "3", "AUTH", REDACTED, REDACTED, "SETNAME", "x"]
        );
        let mut auth: Vec<Payload> = ["AUTH", "pw"].iter().map(|s| Payload::from(*s)).collect();
        redact_redis(&mut auth);
        assert_eq!(auth[1].as_str(), Some(REDACTED));
        let _ = RedisCommand {
            args,
            inline: false,
        };
    }

    #[test]
    fn bad_paths() {
        for p in ["card", "$", "$.", "$[", "$[x]", "$.a..b"] {
            assert!(JsonPath::parse(p).is_err(), "{p}");
        }
        assert!(JsonPath::parse("$['a b'][0].c").is_ok());
    }
}
