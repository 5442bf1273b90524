//! The exchange model's JSON: hand-written deserializers (tag read first, no buffering) must
//! accept exactly what the derived serde shapes accept. Every variant round-trips byte for
//! byte; the same JSON with its keys sorted (tags no longer first, the buffered path) decodes
//! to the same value; errors are errors, never panics.

use std::collections::BTreeMap;

use deetune_protocols::{
    Body, ConnectionMeta, Endpoint, Exchange, Flags, Header, HttpRequest, HttpResponse,
    MysqlColumn, MysqlCommand, MysqlResponse, MysqlResultSet, MysqlSession, MysqlValue, Payload,
    Protocol, RedisCommand, Request, RespValue, Response, SessionInfo, Timing,
};
use proptest::prelude::*;

fn base(protocol: Protocol, request: Request, response: Option<Response>) -> Exchange {
    Exchange {
        conn: std::sync::Arc::new(ConnectionMeta {
            id: 3,
            client: Endpoint {
                port: 40000,
                pid: Some(12),
                process: Some("curl".to_owned()),
                ..Endpoint::default()
            },
            server: Endpoint {
                addr: "::1".parse().unwrap(),
                port: 80,
                service: Some("web".to_owned()),
                cgroup: Some("/system.slice/x".to_owned()),
                ..Endpoint::default()
            },
        }),
        seq: 1,
        protocol,
        request,
        response,
        timing: Timing {
            request_start_ns: 1,
            request_end_ns: 2,
            response_start_ns: 3,
            response_end_ns: 4,
        },
        flags: Flags::default(),
        session: None,
    }
}

fn binary() -> Payload {
    Payload(vec![0xff, 0x00, b'a', 0x80])
}

fn all_shapes() -> Vec<Exchange> {
    let mut out = Vec::new();
    let http_req = Request::Http(HttpRequest {
        method: "POST".to_owned(),
        target: "/a?b=1".to_owned(),
        version: "HTTP/1.1".to_owned(),
        headers: vec![
            Header {
                name: "Host".to_owned(),
                value: "x".into(),
            },
            Header {
                name: "X-Bin".to_owned(),
                value: binary(),
            },
        ],
        body: Body {
            raw: binary(),
            decoded: Some("text \"quoted\" \u{e9}".into()),
            len: 4,
            truncated: true,
        },
    });
    let http_resp = Response::Http(HttpResponse {
        version: "HTTP/1.1".to_owned(),
        status: 404,
        reason: "Not Found".to_owned(),
        headers: vec![],
        body: Body::default(),
    });
    let mut x = base(Protocol::Http, http_req, Some(http_resp));
    x.flags = Flags {
        truncated: true,
        gap: true,
        unpaired: false,
        encrypted: false,
        unsupported: true,
    };
    out.push(x);

    let values = vec![
        RespValue::Simple("OK".to_owned()),
        RespValue::Error("ERR x".to_owned()),
        RespValue::Integer(-5),
        RespValue::Bulk(binary()),
        RespValue::Bulk("text".into()),
        RespValue::Null,
        RespValue::Set(vec![RespValue::Integer(1)]),
        RespValue::Map(vec![(RespValue::Simple("k".to_owned()), RespValue::Null)]),
        RespValue::Push(vec![]),
        RespValue::Boolean(true),
        RespValue::Double(1.5),
        RespValue::Double(-0.0),
        RespValue::BigNumber("123456789012345678901234567890".to_owned()),
        RespValue::Verbatim {
            format: "txt".to_owned(),
            text: "hello".into(),
        },
        RespValue::BulkError(binary()),
    ];
    let redis_req = Request::Redis(RedisCommand {
        args: vec!["SET".into(), "k".into(), binary()],
        inline: true,
    });
    for v in &values {
        out.push(base(
            Protocol::Redis,
            redis_req.clone(),
            Some(Response::Redis(v.clone())),
        ));
    }
    out.push(base(
        Protocol::Redis,
        redis_req,
        Some(Response::Redis(RespValue::Array(values))),
    ));

    let commands = vec![
        MysqlCommand::Query {
            sql: "SELECT 1".to_owned(),
        },
        MysqlCommand::StmtPrepare {
            sql: "SELECT ?".to_owned(),
        },
        MysqlCommand::StmtExecute {
            statement_id: 7,
            sql: Some("SELECT ?".to_owned()),
            params: vec![
                MysqlValue::Null,
                MysqlValue::Int(-1),
                MysqlValue::Int(i64::MAX),
                MysqlValue::UInt(u64::MAX),
                MysqlValue::Float(1.0),
                MysqlValue::Float(-2.5e-300),
                MysqlValue::Bytes("2024-01-01".into()),
                MysqlValue::Bytes(binary()),
            ],
        },
        MysqlCommand::StmtExecute {
            statement_id: 8,
            sql: None,
            params: vec![],
        },
        MysqlCommand::StmtClose { statement_id: 7 },
        MysqlCommand::StmtReset { statement_id: 7 },
        MysqlCommand::InitDb {
            schema: "shop".to_owned(),
        },
        MysqlCommand::Ping,
        MysqlCommand::Quit,
        MysqlCommand::Other {
            code: 0x1f,
            data: binary(),
        },
    ];
    let responses = vec![
        Some(MysqlResponse::Ok {
            affected_rows: 1,
            last_insert_id: 2,
            warnings: 3,
            info: String::new(),
        }),
        Some(MysqlResponse::Ok {
            affected_rows: 0,
            last_insert_id: 0,
            warnings: 0,
            info: "Rows matched: 1".to_owned(),
        }),
        Some(MysqlResponse::Err {
            code: 1146,
            sql_state: "42S02".to_owned(),
            message: "no table".to_owned(),
        }),
        Some(MysqlResponse::ResultSets {
            sets: vec![MysqlResultSet {
                columns: vec![MysqlColumn {
                    name: "id".to_owned(),
                    table: "t".to_owned(),
                    column_type: 3,
                }],
                rows: vec![vec![MysqlValue::Int(1)], vec![MysqlValue::Null]],
            }],
        }),
        Some(MysqlResponse::Prepared {
            statement_id: 1,
            params: 2,
            columns: 3,
        }),
        Some(MysqlResponse::LocalInfile {
            filename: "/etc/x".to_owned(),
        }),
        None,
    ];
    for (i, c) in commands.into_iter().enumerate() {
        let mut x = base(
            Protocol::Mysql,
            Request::Mysql(c),
            responses[i % responses.len()].clone().map(Response::Mysql),
        );
        x.session = Some(SessionInfo::Mysql(MysqlSession {
            server_version: "11.0".to_owned(),
            user: "app".to_owned(),
            schema: (i % 2 == 0).then(|| "shop".to_owned()),
            capabilities: 0xffff,
        }));
        out.push(x);
    }
    for r in responses.into_iter().flatten() {
        out.push(base(
            Protocol::Mysql,
            Request::Mysql(MysqlCommand::Ping),
            Some(Response::Mysql(r)),
        ));
    }
    out.push(base(
        Protocol::Unknown,
        Request::Raw { data: binary() },
        Some(Response::Raw {
            data: "plain".into(),
        }),
    ));
    out
}

/// The JSON with every object's keys sorted (what `serde_json::Value` without
/// `preserve_order` prints): tags such as `protocol` or `command` are then rarely first.
fn sorted_keys(json: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    serde_json::to_string(&v).unwrap()
}

/// The JSON with every object's keys in reverse order of the original: tags come last.
fn reversed_keys(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            // `Map` sorts; print by hand to control the order.
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            keys.reverse();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap(),
                        reversed_keys(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        serde_json::Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(reversed_keys).collect();
            format!("[{}]", parts.join(","))
        }
        other => serde_json::to_string(other).unwrap(),
    }
}

#[test]
fn every_shape_round_trips_byte_for_byte() {
    for x in all_shapes() {
        let json = serde_json::to_vec(&x).unwrap();
        let back: Exchange = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        assert_eq!(back, x);
        assert_eq!(serde_json::to_vec(&back).unwrap(), json);
        // Through an owned reader too (strings arrive as `visit_str` from a scratch buffer).
        let back: Exchange = serde_json::from_reader(json.as_slice()).unwrap();
        assert_eq!(back, x);
    }
}

#[test]
fn tags_not_first_decode_the_same() {
    let mut tag_not_first = 0;
    for x in all_shapes() {
        let json = serde_json::to_vec(&x).unwrap();
        let sorted = sorted_keys(&json);
        let back: Exchange =
            serde_json::from_str(&sorted).unwrap_or_else(|e| panic!("{e}: {sorted}"));
        assert_eq!(back, x, "{sorted}");
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let reversed = reversed_keys(&value);
        let back: Exchange =
            serde_json::from_str(&reversed).unwrap_or_else(|e| panic!("{e}: {reversed}"));
        assert_eq!(back, x, "{reversed}");
        // From a `Value` (another deserializer than the JSON text one).
        let back: Exchange = serde_json::from_value(value).unwrap();
        assert_eq!(back, x);
        if !reversed.contains("\"request\":{\"protocol\"") {
            tag_not_first += 1;
        }
    }
    assert!(tag_not_first > 5, "the buffered path was exercised");
}

#[test]
fn mysql_values_by_json_type() {
    let cases: &[(&str, MysqlValue)] = &[
        ("null", MysqlValue::Null),
        ("0", MysqlValue::Int(0)),
        ("-9223372036854775808", MysqlValue::Int(i64::MIN)),
        ("9223372036854775807", MysqlValue::Int(i64::MAX)),
        ("9223372036854775808", MysqlValue::UInt(1 << 63)),
        ("18446744073709551615", MysqlValue::UInt(u64::MAX)),
        ("1.0", MysqlValue::Float(1.0)),
        ("1e3", MysqlValue::Float(1000.0)),
        ("\"abc\"", MysqlValue::Bytes("abc".into())),
        ("\"a\\u00e9\\n\"", MysqlValue::Bytes("a\u{e9}\n".into())),
        (
            "{\"base64\":\"/w==\"}",
            MysqlValue::Bytes(Payload(vec![0xff])),
        ),
    ];
    for (json, want) in cases {
        let got: MysqlValue = serde_json::from_str(json).unwrap();
        assert_eq!(&got, want, "{json}");
    }
    for bad in ["true", "[]", "{}", "{\"base64\":\"!!\"}", "{\"base64\":1}"] {
        assert!(serde_json::from_str::<MysqlValue>(bad).is_err(), "{bad}");
    }
}

#[test]
fn payload_forms() {
    let p: Payload = serde_json::from_str("\"hi\"").unwrap();
    assert_eq!(p, Payload::from("hi"));
    let p: Payload = serde_json::from_str("{\"base64\":\"/w==\"}").unwrap();
    assert_eq!(p, Payload(vec![0xff]));
    // Unknown keys beside `base64` are ignored, as the derived untagged form did.
    let p: Payload = serde_json::from_str("{\"x\":[1,{}],\"base64\":\"AA==\"}").unwrap();
    assert_eq!(p, Payload(vec![0]));
    for bad in [
        "{}",
        "{\"base64\":\"AA==\",\"base64\":\"AA==\"}",
        "{\"base64\":\"not base64\"}",
        "1",
        "null",
        "[\"AA==\"]",
        "\"unterminated",
    ] {
        assert!(serde_json::from_str::<Payload>(bad).is_err(), "{bad}");
    }
}

#[test]
fn tagged_errors_name_the_problem() {
    let err = |json: &str| {
        serde_json::from_str::<Request>(json)
            .unwrap_err()
            .to_string()
    };
    assert!(err("{\"method\":\"GET\"}").contains("missing field `protocol`"));
    assert!(err("{}").contains("missing field `protocol`"));
    assert!(err("{\"protocol\":\"gopher\"}").contains("unknown variant `gopher`"));
    assert!(err("{\"data\":\"x\",\"protocol\":\"gopher\"}").contains("unknown variant `gopher`"));
    assert!(err("{\"protocol\":\"raw\"}").contains("missing field `data`"));
    assert!(
        err("{\"data\":\"x\",\"protocol\":\"raw\",\"protocol\":\"raw\"}").contains("duplicate")
    );
    assert!(err("{\"protocol\":3}").contains("invalid type"));
    assert!(err("\"http\"").contains("invalid type"));
    assert!(err("{\"protocol\":\"mysql\",\"command\":\"fly\"}").contains("unknown variant `fly`"));
    // Unknown fields are ignored (as the derived shapes did), in both paths.
    let r: Request =
        serde_json::from_str("{\"protocol\":\"raw\",\"data\":\"x\",\"extra\":1}").unwrap();
    assert_eq!(r, Request::Raw { data: "x".into() });
    let r: Request =
        serde_json::from_str("{\"extra\":{\"a\":[1]},\"data\":\"x\",\"protocol\":\"raw\"}")
            .unwrap();
    assert_eq!(r, Request::Raw { data: "x".into() });
    let c: MysqlCommand = serde_json::from_str("{\"command\":\"ping\",\"x\":{\"y\":1}}").unwrap();
    assert_eq!(c, MysqlCommand::Ping);
}

fn leaf_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
        Just("1.5".to_owned()),
        "[a-z_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(vec![
            "\"protocol\"",
            "\"http\"",
            "\"redis\"",
            "\"mysql\"",
            "\"raw\"",
            "\"command\"",
            "\"query\"",
            "\"kind\"",
            "\"ok\"",
            "\"type\"",
            "\"bulk\"",
            "\"base64\"",
            "\"/w==\"",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_tree() -> impl Strategy<Value = String> {
    leaf_json().prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "protocol",
                        "command",
                        "kind",
                        "type",
                        "value",
                        "data",
                        "sql",
                        "base64",
                        "method",
                        "args",
                        "params",
                        "statement_id",
                        "sets",
                        "x",
                    ]),
                    inner
                ),
                0..6
            )
            .prop_map(|v| {
                let parts: Vec<String> =
                    v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", parts.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Garbage and near-miss JSON never panics, and whatever decodes re-encodes to JSON that
    /// decodes to the same value.
    #[test]
    fn near_miss_json_never_panics(tree in json_tree(), cut in any::<prop::sample::Index>()) {
        let cut_at = cut.index(tree.len() + 1);
        for text in [tree.as_str(), &tree[..cut_at]] {
            if let Ok(r) = serde_json::from_str::<Request>(text) {
                let again = serde_json::to_string(&r).unwrap();
                prop_assert_eq!(serde_json::from_str::<Request>(&again).unwrap(), r);
            }
            if let Ok(r) = serde_json::from_str::<Response>(text) {
                let again = serde_json::to_string(&r).unwrap();
                prop_assert_eq!(serde_json::from_str::<Response>(&again).unwrap(), r);
            }
            let _ = serde_json::from_str::<Vec<MysqlValue>>(text);
            let _ = serde_json::from_str::<BTreeMap<String, MysqlCommand>>(text);
            let _ = serde_json::from_str::<Exchange>(text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_slice::<Exchange>(&bytes);
        let _ = serde_json::from_slice::<Request>(&bytes);
        let _ = serde_json::from_slice::<Payload>(&bytes);
    }
}
