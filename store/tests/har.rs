#![allow(
    dead_code,
    reason = "the model is checked by deserializing; not every field is read"
)]
//! HAR export checked against a strict model of the HAR 1.2 spec
//! (<http://www.softwareishard.com/blog/har-12-spec/>): every required field must be there
//! with its type, and no field the spec does not define (`deny_unknown_fields`; the spec's
//! optional `comment` is allowed).

mod common;

use deetune_store::{BundleError, Store, TaskState};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Har {
    log: Log,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Log {
    version: String,
    creator: Creator,
    #[serde(default)]
    browser: Option<Creator>,
    #[serde(default)]
    pages: Option<Vec<serde_json::Value>>,
    entries: Vec<Entry>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Creator {
    name: String,
    version: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    #[serde(default)]
    pageref: Option<String>,
    started_date_time: String,
    time: f64,
    request: Req,
    response: Resp,
    cache: Cache,
    timings: Timings,
    #[serde(default, rename = "serverIPAddress")]
    server_ip_address: Option<String>,
    #[serde(default)]
    connection: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cookie {
    name: String,
    value: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    http_only: Option<bool>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Req {
    method: String,
    url: String,
    http_version: String,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    query_string: Vec<NameValue>,
    #[serde(default)]
    post_data: Option<PostData>,
    headers_size: i64,
    body_size: i64,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PostData {
    mime_type: String,
    #[serde(default)]
    params: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Resp {
    status: i64,
    status_text: String,
    http_version: String,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    content: Content,
    #[serde(rename = "redirectURL")]
    redirect_url: String,
    headers_size: i64,
    body_size: i64,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Content {
    size: i64,
    #[serde(default)]
    compression: Option<i64>,
    mime_type: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cache {
    #[serde(default)]
    before_request: Option<serde_json::Value>,
    #[serde(default)]
    after_request: Option<serde_json::Value>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Timings {
    #[serde(default)]
    blocked: Option<f64>,
    #[serde(default)]
    dns: Option<f64>,
    #[serde(default)]
    connect: Option<f64>,
    send: f64,
    wait: f64,
    receive: f64,
    #[serde(default)]
    ssl: Option<f64>,
    #[serde(default)]
    comment: Option<String>,
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` (ISO 8601, as the spec asks).
fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn har_export_follows_the_har_1_2_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1))
        .unwrap();
    let xs: Vec<_> = (0..10)
        .map(common::http)
        .chain([common::http_binary(10)])
        .collect();
    store.append("t-1", &xs).unwrap();
    let path = tmp.path().join("out.har");
    assert_eq!(store.export_har("t-1", &path).unwrap(), 11);

    let text = std::fs::read_to_string(&path).unwrap();
    let har: Har = serde_json::from_str(&text).expect("HAR does not match the 1.2 model");
    assert_eq!(har.log.version, "1.2");
    assert_eq!(har.log.creator.name, "deetune");
    assert!(!har.log.creator.version.is_empty());
    assert_eq!(har.log.entries.len(), 11);
    for e in &har.log.entries {
        assert!(is_iso8601(&e.started_date_time), "{}", e.started_date_time);
        let sum = e.timings.send + e.timings.wait + e.timings.receive;
        assert!(
            (e.time - sum).abs() < 1e-9,
            "time is the sum of the timings"
        );
        assert!(e.timings.send >= 0.0 && e.timings.wait >= 0.0 && e.timings.receive >= 0.0);
        assert!(e
            .request
            .url
            .starts_with("http://checkout:8080/api/orders?id="));
        assert_eq!(e.request.method, "POST");
        assert_eq!(e.request.headers.len(), 3);
        assert_eq!(e.request.cookies.len(), 2);
        assert_eq!(e.request.query_string[1].name, "x");
        assert_eq!(e.request.headers_size, -1);
        assert!(e.request.post_data.is_some());
    }
    let first = &har.log.entries[0];
    assert_eq!(first.started_date_time, "2023-11-14T22:13:20.000Z");
    assert_eq!(first.response.status, 201);
    assert_eq!(first.response.content.mime_type, "application/json");
    assert_eq!(
        first.response.content.text.as_deref(),
        Some(r#"{"order":0,"ok":true}"#)
    );
    assert_eq!(first.response.cookies[0].name, "sid");
    assert!((first.time - 0.52).abs() < 1e-9, "{}", first.time);
    // No response: status 0, as browsers write aborted requests.
    assert_eq!(har.log.entries[10].response.status, 0);
}

#[test]
fn har_refuses_non_http() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("s")).unwrap();
    store
        .put_task(&common::task("t-1", TaskState::Stopped, 1))
        .unwrap();
    store.append("t-1", &common::mixed(4)).unwrap();
    let path = tmp.path().join("out.har");
    let err = store.export_har("t-1", &path).unwrap_err();
    assert!(
        matches!(err, BundleError::NotHttp { index: 2, .. }),
        "{err:?}"
    );
    assert!(!path.exists(), "a failed export leaves no file");
}
