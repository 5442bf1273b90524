//! MySQL decoder over byte streams recorded from a real MariaDB
//! (`fixtures/streams/mysql/make.sh`): snapshots of the decoded exchanges, each fixture also
//! decoded in 1-byte chunks and at every two-way split; synthetic streams for what a local
//! server does not produce here (TLS, 16 MiB packets, gaps).

mod common;

use deetune_protocols::{
    DecoderConfig, Direction, Exchange, MysqlCommand, MysqlDecoder, MysqlResponse, MysqlValue,
    Protocol, Request, Response, SessionInfo, StreamDecoder,
};

fn check(name: &str) -> Vec<Exchange> {
    let path = common::fixture("mysql", name);
    let exchanges = common::assert_split_invariant(Protocol::Mysql, &path);
    insta::assert_json_snapshot!(name, exchanges);
    exchanges
}

fn resp(e: &Exchange) -> &MysqlResponse {
    match &e.response {
        Some(Response::Mysql(r)) => r,
        other => panic!("no mysql response: {other:?}"),
    }
}

#[test]
fn text_queries_errors_and_init_db() {
    let ex = check("queries");
    let Some(SessionInfo::Mysql(s)) = &ex[0].session else {
        panic!("session")
    };
    assert_eq!(s.user, "app");
    assert_eq!(s.schema.as_deref(), Some("shop"));
    assert!(s.server_version.contains("MariaDB"));
    let sel = ex
        .iter()
        .find(|e| e.interface() == "SELECT users")
        .expect("SELECT users");
    assert!(
        matches!(resp(sel), MysqlResponse::ResultSets { sets } if sets[0].rows.len() == 2 && sets[0].columns.len() == 9)
    );
    // Guards MariaDB's extended column metadata: types must not shift (3 = LONG).
    assert!(
        matches!(resp(sel), MysqlResponse::ResultSets { sets } if sets[0].columns[0].column_type == 3)
    );
    assert!(ex
        .iter()
        .any(|e| matches!(resp(e), MysqlResponse::Err { code: 1146, .. })));
    assert!(ex
        .iter()
        .any(|e| matches!(resp(e), MysqlResponse::Err { code: 1064, .. })));
    let init = ex
        .iter()
        .find(|e| e.interface() == "INIT_DB")
        .expect("USE other → COM_INIT_DB");
    assert!(matches!(resp(init), MysqlResponse::Ok { .. }));
    let Some(SessionInfo::Mysql(after)) = &ex.last().expect("last").session else {
        panic!()
    };
    assert_eq!(after.schema.as_deref(), Some("other"));
    // Guards: no auth data anywhere in the output.
    let json = serde_json::to_string(&ex).expect("json");
    assert!(!json.contains("secret") && !json.contains("mysql_native_password"));
    assert!(ex
        .iter()
        .all(|e| !e.flags.gap && !e.flags.unpaired || e.interface() == "QUIT"));
}

#[test]
fn multi_statements_and_procedures_give_several_sets() {
    let ex = check("multi");
    let multi = ex
        .iter()
        .find(|e| e.request_sql().is_some_and(|s| s.contains("SELECT 1 AS a")))
        .expect("multi");
    assert!(matches!(resp(multi), MysqlResponse::ResultSets { sets } if sets.len() == 2));
    let call = ex.iter().find(|e| e.interface() == "CALL").expect("CALL");
    assert!(
        matches!(resp(call), MysqlResponse::ResultSets { sets } if sets.len() == 2 && sets[1].rows.len() == 1)
    );
}

trait Sql {
    fn request_sql(&self) -> Option<&str>;
}
impl Sql for Exchange {
    fn request_sql(&self) -> Option<&str> {
        match &self.request {
            Request::Mysql(c) => c.sql(),
            _ => None,
        }
    }
}

#[test]
fn prepared_statements_binary_protocol() {
    let ex = check("prepared");
    let prep = ex
        .iter()
        .filter(|e| matches!(&e.request, Request::Mysql(MysqlCommand::StmtPrepare { .. })))
        .count();
    assert_eq!(prep, 3);
    let exec: Vec<_> = ex
        .iter()
        .filter(|e| matches!(&e.request, Request::Mysql(MysqlCommand::StmtExecute { .. })))
        .collect();
    assert_eq!(exec.len(), 3);
    let Request::Mysql(MysqlCommand::StmtExecute { sql, params, .. }) = &exec[0].request else {
        panic!()
    };
    assert!(sql
        .as_deref()
        .is_some_and(|s| s.starts_with("SELECT id, name")));
    assert_eq!(params, &[MysqlValue::Int(1)]);
    let MysqlResponse::ResultSets { sets } = resp(exec[0]) else {
        panic!("rows")
    };
    assert_eq!(sets[0].rows.len(), 2);
    assert_eq!(sets[0].rows[0][0], MysqlValue::Int(1));
    assert_eq!(sets[0].rows[0][1], MysqlValue::Bytes("alice".into()));
    assert_eq!(
        sets[0].rows[0][4],
        MysqlValue::Float(2.5),
        "1.5 + 1 by the queries fixture"
    );
    assert_eq!(sets[0].rows[0][5], MysqlValue::Bytes("1990-01-02".into()));
    assert_eq!(sets[0].rows[1][2], MysqlValue::Null);
    let Request::Mysql(MysqlCommand::StmtExecute { params, .. }) = &exec[1].request else {
        panic!()
    };
    assert_eq!(params.len(), 5);
    assert_eq!(params[4], MysqlValue::Null);
    assert!(ex.iter().any(|e| e.interface() == "PING"));
}

#[test]
fn compression_is_marked_and_not_decoded() {
    let ex = check("compressed");
    assert_eq!(ex.len(), 1);
    assert!(ex[0].flags.unsupported);
}

#[test]
fn local_infile_is_marked() {
    let ex = check("infile");
    let load = ex
        .iter()
        .find(|e| e.interface() == "LOAD")
        .expect("LOAD DATA");
    assert!(load.flags.unsupported);
    assert!(
        matches!(resp(load), MysqlResponse::LocalInfile { filename } if filename.ends_with("people.csv"))
    );
    // The file bytes are skipped and the next query decodes normally.
    let count = ex
        .iter()
        .find(|e| e.interface() == "SELECT users")
        .expect("SELECT COUNT");
    assert!(count.flags.is_clean());
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut v = vec![
        (len & 0xff) as u8,
        (len >> 8 & 0xff) as u8,
        (len >> 16) as u8,
        seq,
    ];
    v.extend_from_slice(payload);
    v
}

/// Greeting + login + OK of the `queries` fixture, to start synthetic sessions from.
fn login(d: &mut MysqlDecoder) {
    let recs = common::load(&common::fixture("mysql", "queries"));
    for r in recs.iter().take(3) {
        if let common::Record::Data { dir, data } = r {
            d.push(*dir, 1, data);
        }
    }
}

#[test]
fn ssl_request_marks_encrypted_and_stops() {
    let recs = common::load(&common::fixture("mysql", "queries"));
    let common::Record::Data { data: greeting, .. } = &recs[0] else {
        panic!()
    };
    let mut d = MysqlDecoder::new(DecoderConfig::default());
    d.push(Direction::Response, 1, greeting);
    let mut ssl = Vec::new();
    ssl.extend_from_slice(&(0x0000_0a00u32 | 0x200 | 0x8000).to_le_bytes()); // SSL | PROTOCOL_41
    ssl.extend_from_slice(&[0; 28]);
    d.push(Direction::Request, 2, &packet(1, &ssl));
    d.push(Direction::Request, 3, b"\x16\x03\x01 garbage tls bytes");
    d.push(Direction::Response, 4, b"\x16\x03\x03 more");
    d.close(5);
    let mut out = Vec::new();
    d.drain(&mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.encrypted);
}

#[test]
fn packet_over_16_mib_is_joined_and_cut() {
    let mut d = MysqlDecoder::new(DecoderConfig::default());
    login(&mut d);
    let sql = format!("SELECT '{}'", "x".repeat(0xff_ffff));
    let mut payload = vec![0x03];
    payload.extend_from_slice(sql.as_bytes());
    let mut bytes = packet(0, &payload[..0xff_ffff]);
    bytes.extend(packet(1, &payload[0xff_ffff..]));
    for c in bytes.chunks(1 << 20) {
        d.push(Direction::Request, 2, c);
    }
    d.push(
        Direction::Response,
        3,
        &packet(
            1,
            &[0xff, 0x19, 0x04, b'#', b'0', b'8', b'S', b'0', b'1', b'x'],
        ),
    );
    let mut out = Vec::new();
    d.drain(&mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].flags.truncated);
    assert!(matches!(
        resp(&out[0]),
        MysqlResponse::Err { code: 1049, .. }
    ));
    assert_eq!(
        out[0].request_sql().map(str::len),
        Some(DecoderConfig::default().max_body - 1)
    );
}

#[test]
fn gaps_flag_and_resync_on_the_next_command() {
    let mut d = MysqlDecoder::new(DecoderConfig::default());
    login(&mut d);
    let ok = packet(1, &[0, 0, 0, 2, 0, 0, 0]);
    d.push(Direction::Request, 2, &packet(0, b"\x03SELECT 1"));
    d.gap(Direction::Response, 3, 40);
    d.push(
        Direction::Response,
        3,
        b"\x01\x00\x00\x05\xfe tail of the lost result",
    );
    d.push(Direction::Request, 4, &packet(0, b"\x0e"));
    d.push(Direction::Response, 5, &ok);
    d.gap(Direction::Request, 6, 10);
    d.push(Direction::Request, 6, b"half of a lost command");
    d.push(Direction::Response, 6, &ok);
    d.push(Direction::Request, 7, &packet(0, b"\x0e"));
    d.push(Direction::Response, 8, &ok);
    d.close(9);
    let mut out = Vec::new();
    d.drain(&mut out);
    let shape: Vec<_> = out
        .iter()
        .map(|e| (e.interface(), e.flags.gap, e.response.is_some()))
        .collect();
    assert_eq!(shape[0], ("SELECT".into(), true, false));
    assert_eq!(shape[1], ("PING".into(), false, true));
    assert_eq!(shape.last().cloned(), Some(("PING".into(), true, true)));
}

#[test]
fn garbage_never_panics() {
    for seed in 0u32..200 {
        let mut d = MysqlDecoder::new(DecoderConfig {
            max_body: 64,
            ..DecoderConfig::default()
        });
        login(&mut d);
        let mut x = seed.wrapping_mul(2_654_435_761);
        let bytes: Vec<u8> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect();
        let (a, b) = bytes.split_at(300);
        d.push(Direction::Request, 1, &packet(0, b"\x03SELECT 1"));
        d.push(Direction::Response, 2, a);
        d.push(Direction::Request, 3, b);
        d.close(4);
        let mut out = Vec::new();
        d.drain(&mut out);
    }
}

#[test]
fn rows_past_max_body_are_dropped_and_flagged() {
    // Guards bounded memory: with a 64-byte cap the 2-row SELECT keeps what fits and is
    // flagged, and the session goes on decoding in step.
    let config = DecoderConfig {
        max_body: 64,
        ..DecoderConfig::default()
    };
    let path = common::fixture("mysql", "queries");
    let ex = common::assert_split_invariant_with(Protocol::Mysql, config, &path);
    let sel = ex
        .iter()
        .find(|e| e.interface() == "SELECT users")
        .expect("SELECT users");
    assert!(sel.flags.truncated);
    assert!(matches!(resp(sel), MysqlResponse::ResultSets { sets } if sets[0].rows.len() < 2));
    let last = ex.last().expect("exchanges");
    assert_eq!(last.interface(), "QUIT");
    assert!(ex
        .iter()
        .any(|e| e.interface() == "INIT_DB" && e.flags.is_clean()));
}

/// Guards the request order of `drain`: a command without response (QUIT, STMT_CLOSE) sent
/// while an earlier command still waits for its response comes out after that command.
#[test]
fn response_less_commands_keep_request_order() {
    let mut d = MysqlDecoder::new(DecoderConfig::default());
    login(&mut d);
    d.push(Direction::Request, 2, &packet(0, b"\x0e")); // PING, answered later
    d.push(Direction::Request, 3, &packet(0, b"\x19\x07\x00\x00\x00")); // STMT_CLOSE 7
    d.push(Direction::Request, 4, &packet(0, b"\x01")); // QUIT
    d.push(Direction::Response, 5, &packet(1, &[0, 0, 0, 2, 0, 0, 0]));
    d.close(6);
    let mut out = Vec::new();
    d.drain(&mut out);
    let shape: Vec<_> = out
        .iter()
        .map(|e| (e.interface(), e.response.is_some()))
        .collect();
    let n = shape.len();
    assert!(n >= 3, "{shape:?}");
    assert_eq!(
        shape[n - 3..],
        [
            ("PING".to_owned(), true),
            ("STMT_CLOSE".to_owned(), false),
            ("QUIT".to_owned(), false)
        ]
    );
    let seqs: Vec<u64> = out.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}
