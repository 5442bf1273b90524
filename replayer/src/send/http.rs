//! HTTP/1.x requests, rewritten for the target.

use deetune_protocols::HttpRequest;

use super::SendOptions;

/// Hop-by-hop and framing headers, which the replayer sets itself.
const DROPPED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) fn rewrite_target(target: &str, rules: &[(String, String)]) -> String {
    for (from, to) in rules {
        if let Some(rest) = target.strip_prefix(from.as_str()) {
            return format!("{to}{rest}");
        }
    }
    target.to_owned()
}

/// The request line the response decoder is shown in place of the request (see
/// `Wire::round_trip_as`): the same method, no headers, no body.
pub(crate) fn write_shown(req: &HttpRequest, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_bytes());
    out.extend_from_slice(b" / HTTP/1.1\r\n\r\n");
}

/// Writes the request as bytes for the target into `out` (cleared first; a buffer reused
/// across the session's requests); `authority` is [`crate::target::Target::authority`]
/// (computed once per session by the caller).
pub(crate) fn write_request(
    req: &HttpRequest,
    authority: &str,
    opts: &SendOptions,
    out: &mut Vec<u8>,
) {
    let body = req.body.raw.as_bytes();
    out.clear();
    out.reserve(256 + body.len());
    let path = if opts.rewrite_path.is_empty() {
        std::borrow::Cow::Borrowed(req.target.as_str())
    } else {
        std::borrow::Cow::Owned(rewrite_target(&req.target, &opts.rewrite_path))
    };
    let version = if req.version.starts_with("HTTP/1.") {
        req.version.as_str()
    } else {
        "HTTP/1.1"
    };
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.push(b' ');
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\r\nHost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &req.headers {
        if DROPPED.iter().any(|d| h.name.eq_ignore_ascii_case(d))
            || opts
                .set_headers
                .iter()
                .any(|(n, _)| h.name.eq_ignore_ascii_case(n))
            || h.name
                .bytes()
                .any(|b| b == b'\r' || b == b'\n' || b == b':')
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        let value = h.value.as_bytes();
        if value.iter().any(|b| *b == b'\r' || *b == b'\n') {
            out.extend(value.iter().filter(|b| **b != b'\r' && **b != b'\n'));
        } else {
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    for (n, v) in &opts.set_headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if version == "HTTP/1.0" {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    let needs_length = !body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH");
    if needs_length {
        use std::io::Write as _;
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;
    use deetune_protocols::{Body, Header};

    #[test]
    fn rewrites_host_headers_and_path() {
        let req = HttpRequest {
            method: "POST".into(),
            target: "/v1/orders?x=1".into(),
            version: "HTTP/1.1".into(),
            headers: vec![
                Header {
                    name: "Host".into(),
                    value: "prod:80".into(),
                },
                Header {
                    name: "X-Token".into(),
                    value: "old".into(),
                },
                Header {
                    name: "Transfer-Encoding".into(),
                    value: "chunked".into(),
                },
                Header {
                    name: "Accept".into(),
                    value: "*/*".into(),
                },
            ],
            body: Body {
                raw: "{}".into(),
                decoded: None,
                len: 2,
                truncated: false,
            },
        };
        let target = Target::parse("http://staging:8080").unwrap();
        let opts = SendOptions {
            set_headers: vec![("X-Token".into(), "new".into())],
            rewrite_path: vec![("/v1/".into(), "/v2/".into())],
            ..SendOptions::default()
        };
        let mut out = b"left over from the previous request".to_vec();
        write_request(&req, &target.authority(), &opts, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /v2/orders?x=1 HTTP/1.1\r\nHost: staging:8080\r\nAccept: */*\r\nX-Token: new\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
