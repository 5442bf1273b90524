//! Normalizing decoded responses into one tree per protocol and diffing two trees by path.

use deetune_protocols::{
    Body, HttpResponse, MysqlResponse, MysqlValue, Payload, RespValue, Response,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::path::Path;
use crate::rules::{Ignored, RuleView};

/// Longest rendering of one side of a difference in reports.
const MAX_SHOWN: usize = 300;
/// Differences kept per exchange.
pub(crate) const MAX_DIFFS: usize = 50;

/// One difference between an expected and an actual response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// Where: `status`, `header:content-type`, `body:$.items[0].price`, `value:$[1]`,
    /// `result:$.sets[0].rows[2].name`.
    pub path: String,
    /// Expected value (JSON text), none when missing.
    pub expected: Option<String>,
    /// Actual value (JSON text), none when missing.
    pub actual: Option<String>,
    /// This difference is noise (learned from the baseline or ignored by a rule).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub noise: bool,
    #[serde(skip)]
    pub(crate) key: Path,
}

/// True when `a` and `b` compare equal under any rules, checked without building comparison
/// trees (the common case of a replay): HTTP with the same status, body content and headers
/// in the same order (the default-ignored ones skipped when `skip_default_headers`); other
/// responses equal as values. False means "diff them", not "they differ".
pub(crate) fn identical(
    a: Option<&Response>,
    b: Option<&Response>,
    skip_default_headers: bool,
) -> bool {
    match (a, b) {
        (Some(Response::Http(a)), Some(Response::Http(b))) => {
            let kept = |h: &&deetune_protocols::Header| {
                !(skip_default_headers && default_ignored(&h.name))
            };
            if a.status != b.status || a.body.content() != b.body.content() {
                return false;
            }
            // One pass over both header lists.
            let (mut xs, mut ys) = (a.headers.iter().filter(kept), b.headers.iter().filter(kept));
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y))
                        if same_name(&x.name, &y.name)
                            && x.value.as_bytes().trim_ascii()
                                == y.value.as_bytes().trim_ascii() => {}
                    _ => return false,
                }
            }
        }
        (Some(Response::Http(_)), _) | (_, Some(Response::Http(_))) => false,
        (a, b) => a == b,
    }
}

/// Whether `name` is one of [`crate::rules::DEFAULT_IGNORED_HEADERS`] (which are lower
/// case), ignoring case: most headers of a response are checked here, against the whole
/// list. Names of another length or first letter are passed over without a comparison;
/// against a lower-case letter `d`, a byte `c` matches exactly when `c | 0x20 == d`.
fn default_ignored(name: &str) -> bool {
    let name = name.as_bytes();
    let Some(first) = name.first().map(|c| c | 0x20) else {
        return false;
    };
    crate::rules::DEFAULT_IGNORED_HEADERS.iter().any(|d| {
        let d = d.as_bytes();
        d.len() == name.len()
            && d[0] == first
            && d.iter().zip(name).all(|(&d, &c)| {
                if d.is_ascii_lowercase() {
                    c | 0x20 == d
                } else {
                    c == d
                }
            })
    })
}

/// Header names equal ignoring ASCII case (the same bytes, the common case, first).
fn same_name(a: &str, b: &str) -> bool {
    a == b || a.eq_ignore_ascii_case(b)
}

/// The comparable tree of a response. Keys of the top object are the path sections.
pub(crate) fn normalize(resp: Option<&Response>, other: Option<&Response>) -> Value {
    let mut m = Map::new();
    match resp {
        None => {
            m.insert("response".into(), Value::Null);
        }
        Some(Response::Http(h)) => {
            m.insert("status".into(), Value::from(h.status));
            m.insert("header".into(), headers(h));
            let same_body =
                matches!(other, Some(Response::Http(o)) if o.body.content() == h.body.content());
            m.insert(
                "body".into(),
                if same_body {
                    Value::Bool(true)
                } else {
                    body(&h.body, h)
                },
            );
        }
        Some(Response::Redis(v)) => {
            m.insert("value".into(), resp_value(v));
        }
        Some(Response::Mysql(r)) => {
            m.insert("result".into(), mysql(r));
        }
        Some(Response::Raw { data }) => {
            m.insert("raw".into(), payload(data));
        }
    }
    Value::Object(m)
}

fn headers(h: &HttpResponse) -> Value {
    let mut m = Map::new();
    for hd in &h.headers {
        let k = hd.name.to_ascii_lowercase();
        let v = String::from_utf8_lossy(hd.value.as_bytes())
            .trim()
            .to_owned();
        match m.get_mut(&k) {
            Some(Value::String(s)) => {
                s.push_str(", ");
                s.push_str(&v);
            }
            _ => {
                m.insert(k, Value::String(v));
            }
        }
    }
    Value::Object(m)
}

fn body(b: &Body, h: &HttpResponse) -> Value {
    let bytes = b.content();
    if bytes.is_empty() {
        return Value::String(String::new());
    }
    let first = bytes.iter().find(|c| !c.is_ascii_whitespace()).copied();
    let json_type = h
        .header("content-type")
        .and_then(Payload::as_str)
        .is_some_and(|c| c.contains("json"));
    if json_type || matches!(first, Some(b'{' | b'[')) {
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return v;
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::String(binary_summary(bytes)),
    }
}

fn binary_summary(bytes: &[u8]) -> String {
    // FNV-1a: enough to tell two binary bodies apart in a report.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("<{} binary bytes, fnv1a {h:016x}>", bytes.len())
}

fn payload(p: &Payload) -> Value {
    match p.as_str() {
        Some(s) => Value::String(s.to_owned()),
        None => Value::String(binary_summary(p.as_bytes())),
    }
}

fn resp_value(v: &RespValue) -> Value {
    match v {
        RespValue::Simple(s) => Value::String(s.clone()),
        RespValue::Error(e) => error_obj(e),
        RespValue::BulkError(e) => error_obj(&String::from_utf8_lossy(e.as_bytes())),
        RespValue::Integer(i) => Value::from(*i),
        RespValue::Bulk(b) => payload(b),
        RespValue::Null => Value::Null,
        RespValue::Array(a) | RespValue::Set(a) | RespValue::Push(a) => {
            Value::Array(a.iter().map(resp_value).collect())
        }
        RespValue::Map(kv) => {
            let mut m = Map::new();
            for (k, v) in kv {
                let key = match resp_value(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(key, resp_value(v));
            }
            Value::Object(m)
        }
        RespValue::Boolean(b) => Value::Bool(*b),
        RespValue::Double(d) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Value::String(d.to_string()), Value::Number),
        RespValue::BigNumber(n) => Value::String(n.clone()),
        RespValue::Verbatim { text, .. } => payload(text),
    }
}

fn error_obj(e: &str) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), Value::String(e.to_owned()));
    Value::Object(m)
}

fn cell(v: &MysqlValue) -> Value {
    match v {
        MysqlValue::Null => Value::Null,
        MysqlValue::Int(i) => Value::from(*i),
        MysqlValue::UInt(u) => Value::from(*u),
        MysqlValue::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        MysqlValue::Bytes(b) => payload(b),
    }
}

fn mysql(r: &MysqlResponse) -> Value {
    let mut m = Map::new();
    match r {
        MysqlResponse::Ok {
            affected_rows,
            last_insert_id,
            warnings,
            info,
        } => {
            m.insert(
                "ok".into(),
                serde_json::json!({"affected_rows": affected_rows, "last_insert_id": last_insert_id, "warnings": warnings, "info": info}),
            );
        }
        MysqlResponse::Err {
            code,
            sql_state,
            message,
        } => {
            m.insert(
                "error".into(),
                serde_json::json!({"code": code, "sql_state": sql_state, "message": message}),
            );
        }
        MysqlResponse::ResultSets { sets } => {
            let sets = sets
                .iter()
                .map(|s| {
                    let names: Vec<String> =
                        unique_names(s.columns.iter().map(|c| c.name.as_str()));
                    let rows = s
                        .rows
                        .iter()
                        .map(|row| {
                            let mut o = Map::new();
                            for (i, v) in row.iter().enumerate() {
                                let name = names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
                                o.insert(name, cell(v));
                            }
                            Value::Object(o)
                        })
                        .collect();
                    serde_json::json!({"columns": names, "rows": Value::Array(rows)})
                })
                .collect();
            m.insert("sets".into(), Value::Array(sets));
        }
        // Statement ids differ between servers by nature: compare the shape only.
        MysqlResponse::Prepared {
            params, columns, ..
        } => {
            m.insert(
                "prepared".into(),
                serde_json::json!({"params": params, "columns": columns}),
            );
        }
        MysqlResponse::LocalInfile { filename } => {
            m.insert("local_infile".into(), Value::String(filename.clone()));
        }
    }
    Value::Object(m)
}

fn unique_names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let mut name = n.to_owned();
        let mut k = 2;
        while out.contains(&name) {
            name = format!("{n}#{k}");
            k += 1;
        }
        out.push(name);
    }
    out
}

/// Result of diffing two trees.
#[derive(Debug, Default)]
pub(crate) struct DiffOutcome {
    /// Differences that count.
    pub(crate) diffs: Vec<Difference>,
    /// Differences a user rule ignored (they make an exchange noise-only, not a pass).
    pub(crate) ignored_by_rule: usize,
    /// Total counting differences, beyond the ones kept.
    pub(crate) total: usize,
}

/// Diffs `expected` against `actual` under `rules`.
pub(crate) fn diff(expected: &Value, actual: &Value, rules: RuleView<'_>) -> DiffOutcome {
    let mut out = DiffOutcome::default();
    walk(expected, actual, &Path(Vec::new()), rules, &mut out);
    out
}

fn walk(e: &Value, a: &Value, path: &Path, rules: RuleView<'_>, out: &mut DiffOutcome) {
    if e == a {
        return;
    }
    if !path.0.is_empty() {
        if let Some(why) = rules.ignored(path) {
            if why == Ignored::Rule {
                out.ignored_by_rule += 1;
            }
            return;
        }
    }
    match (e, a) {
        (Value::Object(em), Value::Object(am)) => {
            for (k, ev) in em {
                let child = path.child_key(k);
                match am.get(k) {
                    Some(av) => walk(ev, av, &child, rules, out),
                    None => leaf(Some(ev), None, child, rules, out),
                }
            }
            for (k, av) in am {
                if !em.contains_key(k) {
                    leaf(None, Some(av), path.child_key(k), rules, out);
                }
            }
        }
        (Value::Array(ea), Value::Array(aa)) => {
            let (ea, aa) = if rules.unordered(path) {
                (sorted(ea), sorted(aa))
            } else {
                (ea.iter().collect(), aa.iter().collect())
            };
            for i in 0..ea.len().max(aa.len()) {
                let child = path.child_index(i);
                match (ea.get(i), aa.get(i)) {
                    (Some(x), Some(y)) => walk(x, y, &child, rules, out),
                    (x, y) => leaf(x.copied(), y.copied(), child, rules, out),
                }
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if let (Some((abs, rel)), Some(x), Some(y)) =
                (rules.tolerance(path), x.as_f64(), y.as_f64())
            {
                let d = (x - y).abs();
                if d <= abs || d <= rel * x.abs() {
                    return;
                }
            }
            leaf(Some(e), Some(a), path.clone(), rules, out);
        }
        (Value::String(x), Value::String(y)) if x.contains('\n') || y.contains('\n') => {
            // Text: show the first line that differs.
            let (n, xl, yl) = first_line_diff(x, y);
            push(
                out,
                path.clone(),
                Some(format!("line {n}: {}", clip(xl))),
                Some(format!("line {n}: {}", clip(yl))),
            );
        }
        _ => leaf(Some(e), Some(a), path.clone(), rules, out),
    }
}

fn leaf(
    e: Option<&Value>,
    a: Option<&Value>,
    path: Path,
    rules: RuleView<'_>,
    out: &mut DiffOutcome,
) {
    if let Some(why) = rules.ignored(&path) {
        if why == Ignored::Rule {
            out.ignored_by_rule += 1;
        }
        return;
    }
    push(out, path, e.map(render), a.map(render));
}

fn push(out: &mut DiffOutcome, key: Path, expected: Option<String>, actual: Option<String>) {
    out.total += 1;
    if out.diffs.len() < MAX_DIFFS {
        out.diffs.push(Difference {
            path: key.to_string(),
            expected,
            actual,
            noise: false,
            key,
        });
    }
}

fn sorted(v: &[Value]) -> Vec<&Value> {
    let mut keyed: Vec<(String, &Value)> = v.iter().map(|x| (x.to_string(), x)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, x)| x).collect()
}

fn first_line_diff<'a>(x: &'a str, y: &'a str) -> (usize, &'a str, &'a str) {
    let mut xs = x.lines();
    let mut ys = y.lines();
    let mut n = 1;
    loop {
        match (xs.next(), ys.next()) {
            (Some(a), Some(b)) if a == b => n += 1,
            (a, b) => return (n, a.unwrap_or(""), b.unwrap_or("")),
        }
    }
}

fn render(v: &Value) -> String {
    clip(&v.to_string())
}

pub(crate) fn clip(s: &str) -> String {
    if s.len() <= MAX_SHOWN {
        return s.to_owned();
    }
    let mut end = MAX_SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Rules, RulesFile};

    #[test]
    fn default_ignored_headers_in_any_case() {
        for d in crate::rules::DEFAULT_IGNORED_HEADERS {
            assert_eq!(*d, d.to_ascii_lowercase(), "the list is lower case");
            assert!(default_ignored(d), "{d}");
            if d.contains('-') {
                // '-' | 0x20 is '-' too, and so is '\r' | 0x20: not a letter, compared exactly.
                assert!(!default_ignored(&d.replace('-', "\r")), "{d}");
            }
            assert!(default_ignored(&d.to_ascii_uppercase()), "{d}");
        }
        for name in [
            "Content-Type",
            "",
            "dat",
            "dates",
            "Xate",
            "x-request-ids",
            "E-Tag",
        ] {
            assert!(!default_ignored(name), "{name}");
        }
    }
    use serde_json::json;

    fn paths(e: &Value, a: &Value, file: &RulesFile) -> Vec<String> {
        let rules = Rules::compile(file).unwrap();
        diff(e, a, rules.view("X"))
            .diffs
            .into_iter()
            .map(|d| d.path)
            .collect()
    }

    fn http(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response::Http(HttpResponse {
            version: "HTTP/1.1".into(),
            status,
            reason: "OK".into(),
            headers: headers
                .iter()
                .map(|(n, v)| deetune_protocols::Header {
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
        })
    }

    // Guards the fast path: "identical" only when a full diff could find nothing.
    #[test]
    fn identical_only_when_nothing_could_differ() {
        let a = http(200, &[("Date", "Mon"), ("X-A", "1")], "{}");
        let later = http(200, &[("x-a", " 1"), ("Date", "Tue")], "{}");
        assert!(identical(Some(&a), Some(&later), true));
        assert!(!identical(Some(&a), Some(&later), false));
        for other in [
            http(201, &[("Date", "Mon"), ("X-A", "1")], "{}"),
            http(200, &[("Date", "Mon"), ("X-A", "2")], "{}"),
            http(200, &[("Date", "Mon")], "{}"),
            http(200, &[("Date", "Mon"), ("X-A", "1")], "{ }"),
        ] {
            assert!(!identical(Some(&a), Some(&other), true), "{other:?}");
        }
        assert!(!identical(Some(&a), None, true));
        assert!(identical(None, None, true));
        let r = Response::Redis(RespValue::Integer(1));
        assert!(identical(Some(&r), Some(&r.clone()), true));
        assert!(!identical(
            Some(&r),
            Some(&Response::Redis(RespValue::Integer(2))),
            true
        ));
    }

    #[test]
    fn structural_paths() {
        let e = json!({"status": 200, "header": {"date": "a", "x": "1"}, "body": {"items": [{"price": 1, "id": 2}], "a b": true}});
        let a = json!({"status": 201, "header": {"date": "b"}, "body": {"items": [{"price": 2, "id": 2}, 5], "a b": false}});
        assert_eq!(
            paths(&e, &a, &RulesFile::default()),
            [
                "body:$['a b']",
                "body:$.items[0].price",
                "body:$.items[1]",
                "header:x",
                "status"
            ]
        );
        let rules = RulesFile {
            ignore: vec!["body:$.items[*].price".into(), "header:x".into()],
            ..RulesFile::default()
        };
        assert_eq!(
            paths(&e, &a, &rules),
            ["body:$['a b']", "body:$.items[1]", "status"]
        );
    }

    #[test]
    fn tolerance_and_order() {
        let e = json!({"body": {"t": 10.0, "tags": ["a", "b"]}});
        let a = json!({"body": {"t": 10.005, "tags": ["b", "a"]}});
        assert_eq!(
            paths(&e, &a, &RulesFile::default()),
            ["body:$.t", "body:$.tags[0]", "body:$.tags[1]"]
        );
        let rules: RulesFile = toml::from_str(
            "unordered = [\"body:$.tags\"]\n[[tolerance]]\npath = \"body:$.t\"\nabsolute = 0.01\n",
        )
        .unwrap();
        assert!(paths(&e, &a, &rules).is_empty());
    }

    #[test]
    fn text_bodies_show_the_first_different_line() {
        let e = json!({"body": "a\nb\nc"});
        let a = json!({"body": "a\nB\nc"});
        let rules = Rules::compile(&RulesFile::default()).unwrap();
        let d = diff(&e, &a, rules.view("X")).diffs;
        assert_eq!(d[0].path, "body");
        assert_eq!(d[0].expected.as_deref(), Some("line 2: b"));
    }
}
