//! HAR 1.2 export of HTTP exchanges (<http://www.softwareishard.com/blog/har-12-spec/>),
//! streamed: one entry at a time, constant memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use base64::Engine as _;
use deetune_protocols::{Body, Exchange, Header, Request, Response};
use serde_json::{json, Value};

use crate::BundleError;

/// Writes `exchanges` (HTTP only) as a HAR 1.2 document to `out`. Returns the entries
/// written.
///
/// # Errors
/// A non-HTTP exchange ([`BundleError::NotHttp`]), an error from the iterator, or writing.
pub fn write_har<W: Write>(
    out: &mut W,
    name: &Path,
    exchanges: impl Iterator<Item = Result<Exchange, BundleError>>,
) -> Result<u64, BundleError> {
    let io = |source| BundleError::Io {
        op: "write",
        path: name.to_path_buf(),
        source,
    };
    let creator = json!({"name": "deetune", "version": env!("CARGO_PKG_VERSION")});
    write!(
        out,
        "{{\"log\":{{\"version\":\"1.2\",\"creator\":{creator},\"entries\":["
    )
    .map_err(io)?;
    let mut n = 0u64;
    for x in exchanges {
        let x = x?;
        let entry = har_entry(&x).ok_or(BundleError::NotHttp {
            index: n,
            protocol: x.protocol,
        })?;
        if n > 0 {
            out.write_all(b",").map_err(io)?;
        }
        serde_json::to_writer(&mut *out, &entry).map_err(|source| BundleError::Encode {
            path: name.to_path_buf(),
            source,
        })?;
        n += 1;
    }
    out.write_all(b"]}}\n").map_err(io)?;
    Ok(n)
}

/// [`write_har`] into a file, written under a temporary name and renamed when complete.
pub(crate) fn write_har_file(
    path: &Path,
    exchanges: impl Iterator<Item = Result<Exchange, BundleError>>,
) -> Result<u64, BundleError> {
    let io = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| BundleError::Io {
            op,
            path: p,
            source,
        }
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp).map_err(io("create", &tmp))?);
        let n = write_har(&mut w, path, exchanges)?;
        let f = w
            .into_inner()
            .map_err(|e| io("write", &tmp)(e.into_error()))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename", path))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn text(p: &deetune_protocols::Payload) -> String {
    String::from_utf8_lossy(p.as_bytes()).into_owned()
}

fn headers(hs: &[Header]) -> Value {
    Value::Array(
        hs.iter()
            .map(|h| json!({"name": h.name, "value": text(&h.value)}))
            .collect(),
    )
}

fn header<'a>(hs: &'a [Header], name: &str) -> Option<&'a deetune_protocols::Payload> {
    hs.iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value)
}

fn cookies(hs: &[Header], name: &str, split: char) -> Value {
    let mut out = Vec::new();
    for h in hs.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        let v = text(&h.value);
        let parts: Vec<&str> = if split == ';' {
            v.split(';').collect()
        } else {
            // Set-Cookie: only the first pair is the cookie; the rest are attributes.
            v.split(';').take(1).collect()
        };
        for part in parts {
            if let Some((k, val)) = part.trim().split_once('=') {
                out.push(json!({"name": k.trim(), "value": val.trim()}));
            }
        }
    }
    Value::Array(out)
}

fn mime(hs: &[Header]) -> String {
    header(hs, "content-type").map_or_else(|| "x-unknown".to_owned(), text)
}

/// ISO 8601 UTC with milliseconds, from ns since the epoch.
pub(crate) fn iso8601(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn ms_between(a: u64, b: u64) -> f64 {
    if a == 0 || b < a {
        return 0.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "ms with µs precision is enough")]
    let d = (b - a) as f64 / 1e6;
    d
}

fn content(body: &Body, mime: &str) -> Value {
    let bytes = body.content();
    let mut c = json!({"size": bytes.len(), "mimeType": mime});
    if !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(t) => c["text"] = Value::String(t.to_owned()),
            Err(_) => {
                c["text"] = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
                c["encoding"] = Value::String("base64".to_owned());
            }
        }
    }
    c
}

fn har_entry(x: &Exchange) -> Option<Value> {
    let Request::Http(req) = &x.request else {
        return None;
    };
    let host = header(&req.headers, "host").map_or_else(
        || format!("{}:{}", x.conn.server.addr, x.conn.server.port),
        text,
    );
    let url = if req.target.starts_with("http://") || req.target.starts_with("https://") {
        req.target.clone()
    } else {
        format!("http://{host}{}", req.target)
    };
    let query: Vec<Value> = req
        .target
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            json!({"name": k, "value": v})
        })
        .collect();
    let mut request = json!({
        "method": req.method,
        "url": url,
        "httpVersion": req.version,
        "cookies": cookies(&req.headers, "cookie", ';'),
        "headers": headers(&req.headers),
        "queryString": query,
        "headersSize": -1,
        "bodySize": req.body.len,
    });
    if req.body.len > 0 || !req.body.raw.is_empty() {
        let c = content(&req.body, &mime(&req.headers));
        let mut post = json!({"mimeType": c["mimeType"].clone()});
        post["text"] = c
            .get("text")
            .cloned()
            .unwrap_or(Value::String(String::new()));
        if let Some(enc) = c.get("encoding") {
            post["comment"] = json!(format!("text is {}", enc.as_str().unwrap_or("")));
        }
        request["postData"] = post;
    }
    let t = &x.timing;
    let (response, send, wait, receive) = match &x.response {
        Some(Response::Http(resp)) => {
            let location = header(&resp.headers, "location").map_or_else(String::new, text);
            (
                json!({
                    "status": resp.status,
                    "statusText": resp.reason,
                    "httpVersion": resp.version,
                    "cookies": cookies(&resp.headers, "set-cookie", ','),
                    "headers": headers(&resp.headers),
                    "content": content(&resp.body, &mime(&resp.headers)),
                    "redirectURL": location,
                    "headersSize": -1,
                    "bodySize": resp.body.len,
                }),
                ms_between(t.request_start_ns, t.request_end_ns),
                ms_between(t.request_end_ns, t.response_start_ns),
                ms_between(t.response_start_ns, t.response_end_ns),
            )
        }
        _ => (
            json!({
                "status": 0,
                "statusText": "",
                "httpVersion": req.version,
                "cookies": [],
                "headers": [],
                "content": {"size": 0, "mimeType": "x-unknown"},
                "redirectURL": "",
                "headersSize": -1,
                "bodySize": -1,
                "comment": "no response was recorded",
            }),
            ms_between(t.request_start_ns, t.request_end_ns),
            0.0,
            0.0,
        ),
    };
    Some(json!({
        "startedDateTime": iso8601(t.request_start_ns),
        "time": send + wait + receive,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": send, "wait": wait, "receive": receive},
        "serverIPAddress": x.conn.server.addr.to_string(),
        "connection": x.conn.id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z
        assert_eq!(
            iso8601(1_709_210_096_789_000_000),
            "2024-02-29T12:34:56.789Z"
        );
    }
}
