//! Replays against a real MariaDB. The recording is made the way the recorder makes it: real
//! client traffic (the `mariadb` command-line client for text queries, `USE`, a session
//! variable and an error; a small binary-protocol client below for prepared statements) goes
//! through an in-test TCP proxy that feeds both directions of every connection into the
//! MySQL decoder. Then the recording is replayed against the same server with its data
//! unchanged, reordered, changed and dropped.
//!
//! Needs `mariadbd`, `mariadb-install-db` and `mariadb` (Debian `mariadb-server`); without
//! them the test prints why and returns. It does not need root.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deetune_fixtures::{MariaDb, ServerError};
use deetune_protocols::{
    new_decoder, ConnectionMeta, DecoderConfig, Direction, Endpoint, Exchange, MysqlCommand,
    MysqlResponse, Protocol, Request, Response, StreamDecoder,
};
use deetune_replayer::{replay, Outcome, ReplayConfig, Report, Verdict};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize as _;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The recording proxy

type Shared<T> = Arc<Mutex<T>>;

/// A TCP proxy to `upstream` that decodes every connection it carries with the MySQL decoder
/// and keeps the exchanges, with connection metadata as the recorder would set it.
struct RecordingProxy {
    addr: SocketAddr,
    exchanges: Shared<Vec<Exchange>>,
    closed: Shared<u64>,
}

/// The production server the recording claims to come from (never the test target).
fn prod_server() -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        port: 3306,
        service: Some("db".into()),
        ..Endpoint::default()
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    dir: Direction,
    decoder: &Mutex<Box<dyn StreamDecoder>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Shown to the decoder before it is forwarded, so a response is never pushed before
        // its request.
        decoder.lock().unwrap().push(dir, now_ns(), &buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl RecordingProxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let exchanges: Shared<Vec<Exchange>> = Arc::default();
        let closed: Shared<u64> = Arc::default();
        let (ex2, closed2) = (Arc::clone(&exchanges), Arc::clone(&closed));
        std::thread::spawn(move || {
            for (conn_id, client) in (1u64..).zip(listener.incoming()) {
                let Ok(client) = client else { break };
                let (ex, closed) = (Arc::clone(&ex2), Arc::clone(&closed2));
                std::thread::spawn(move || {
                    let up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                    let client_port = client.peer_addr().unwrap().port();
                    let decoder: Shared<Box<dyn StreamDecoder>> = Arc::new(Mutex::new(
                        new_decoder(Protocol::Mysql, DecoderConfig::default()).unwrap(),
                    ));
                    let a = {
                        let (c, u, d) = (
                            client.try_clone().unwrap(),
                            up.try_clone().unwrap(),
                            Arc::clone(&decoder),
                        );
                        std::thread::spawn(move || pump(c, u, Direction::Request, &d))
                    };
                    let b = {
                        let d = Arc::clone(&decoder);
                        std::thread::spawn(move || pump(up, client, Direction::Response, &d))
                    };
                    a.join().unwrap();
                    b.join().unwrap();
                    let mut d = decoder.lock().unwrap();
                    d.close(now_ns());
                    let mut out = Vec::new();
                    d.drain(&mut out);
                    for x in &mut out {
                        x.conn = std::sync::Arc::new(ConnectionMeta {
                            id: conn_id,
                            client: Endpoint {
                                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                                port: client_port,
                                ..Endpoint::default()
                            },
                            server: prod_server(),
                        });
                    }
                    ex.lock().unwrap().extend(out);
                    *closed.lock().unwrap() += 1;
                });
            }
        });
        Self {
            addr,
            exchanges,
            closed,
        }
    }

    /// Waits until `n` connections have ended and returns the recording, by connection and
    /// sequence.
    fn recording(&self, n: u64) -> Vec<Exchange> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while *self.closed.lock().unwrap() < n {
            assert!(
                Instant::now() < deadline,
                "the proxied connections did not end"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut v = self.exchanges.lock().unwrap().clone();
        v.sort_by_key(|x| (x.conn.id, x.seq));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// A small binary-protocol client (prepared statements), framed by its own MySQL decoder

struct Client {
    s: TcpStream,
    framer: Box<dyn StreamDecoder>,
}

enum Param<'a> {
    Int(i64),
    Double(f64),
    Text(&'a str),
    Null,
}

impl Client {
    fn read_packet(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 4];
        self.s.read_exact(&mut head).unwrap();
        let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).unwrap();
        self.framer.push(Direction::Response, now_ns(), &head);
        self.framer.push(Direction::Response, now_ns(), &payload);
        (head[3], payload)
    }

    fn write_packet(&mut self, seq: u8, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
        let mut p = vec![len[0], len[1], len[2], seq];
        p.extend_from_slice(payload);
        self.framer.push(Direction::Request, now_ns(), &p);
        self.s.write_all(&p).unwrap();
    }

    /// Logs in with `mysql_native_password` (MariaDB's default).
    fn login(addr: SocketAddr, user: &str, password: &str, db: &str) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Self {
            s,
            framer: new_decoder(Protocol::Mysql, DecoderConfig::default()).unwrap(),
        };
        let (_, greeting) = c.read_packet();
        let hs: HandshakePacket<'_> = ParseBuf(&greeting).parse(()).unwrap();
        let caps = (CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_LONG_FLAG
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_MULTI_RESULTS
            | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
            | CapabilityFlags::CLIENT_DEPRECATE_EOF)
            & hs.capabilities();
        let scramble = |nonce: &[u8]| {
            mysql_common::auth::plugins::mysql_native_password::scramble_native(
                nonce,
                password.as_bytes(),
            )
            .unwrap()
            .to_vec()
        };
        let auth = scramble(&hs.nonce());
        let resp = HandshakeResponse::new(
            Some(auth.as_slice()),
            hs.server_version_parsed().unwrap_or((10, 11, 0)),
            Some(user.as_bytes()),
            Some(db.as_bytes()),
            Some(AuthPlugin::MysqlNativePassword),
            caps,
            None,
            16 << 20,
        );
        let mut payload = Vec::new();
        resp.serialize(&mut payload);
        c.write_packet(1, &payload);
        loop {
            let (seq, p) = c.read_packet();
            match p.first() {
                Some(0x00) => break,
                Some(0xfe) => {
                    let sw: AuthSwitchRequest<'_> = ParseBuf(&p).parse(()).unwrap();
                    let data = scramble(sw.plugin_data());
                    c.write_packet(seq.wrapping_add(1), &data);
                }
                other => panic!("login failed: {other:?} {}", String::from_utf8_lossy(&p)),
            }
        }
        let mut sink = Vec::new();
        c.framer.drain(&mut sink);
        c
    }

    /// Sends one command and reads until its exchange is complete.
    fn command(&mut self, payload: &[u8]) -> Exchange {
        self.write_packet(0, payload);
        let mut out = Vec::new();
        loop {
            self.framer.drain(&mut out);
            if let Some(x) = out.pop() {
                return x;
            }
            self.read_packet();
        }
    }

    fn prepare(&mut self, sql: &str) -> u32 {
        let x = self.command(&[&[0x16][..], sql.as_bytes()].concat());
        match x.response {
            Some(Response::Mysql(MysqlResponse::Prepared { statement_id, .. })) => statement_id,
            other => panic!("prepare {sql}: {other:?}"),
        }
    }

    fn execute(&mut self, id: u32, params: &[Param<'_>]) -> Exchange {
        let mut b = vec![0x17];
        b.extend_from_slice(&id.to_le_bytes());
        b.push(0);
        b.extend_from_slice(&1u32.to_le_bytes());
        if !params.is_empty() {
            let mut nulls = vec![0u8; params.len().div_ceil(8)];
            for (i, p) in params.iter().enumerate() {
                if matches!(p, Param::Null) {
                    nulls[i / 8] |= 1 << (i % 8);
                }
            }
            b.extend_from_slice(&nulls);
            b.push(1);
            for p in params {
                b.extend_from_slice(match p {
                    Param::Int(_) => &[0x08, 0],
                    Param::Double(_) => &[0x05, 0],
                    Param::Text(_) => &[0xfd, 0],
                    Param::Null => &[0x06, 0],
                });
            }
            for p in params {
                match p {
                    Param::Int(i) => b.extend_from_slice(&i.to_le_bytes()),
                    Param::Double(f) => b.extend_from_slice(&f.to_le_bytes()),
                    Param::Text(t) => {
                        b.push(u8::try_from(t.len()).unwrap());
                        b.extend_from_slice(t.as_bytes());
                    }
                    Param::Null => {}
                }
            }
        }
        self.command(&b)
    }

    /// A command without response (COM_STMT_CLOSE, COM_QUIT).
    fn send_only(&mut self, payload: &[u8]) {
        self.write_packet(0, payload);
        let mut done = Vec::new();
        self.framer.drain(&mut done);
        assert_eq!(done.len(), 1, "{done:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn start_mariadb() -> Option<MariaDb> {
    match MariaDb::start() {
        Ok(db) => Some(db),
        Err(e @ ServerError::NotInstalled { .. }) => {
            deetune_fixtures::skip(e);
            None
        }
        Err(e) => panic!("MariaDB did not start: {e}"),
    }
}

fn rows(x: &Exchange) -> usize {
    match &x.response {
        Some(Response::Mysql(MysqlResponse::ResultSets { sets })) => {
            sets.iter().map(|s| s.rows.len()).sum()
        }
        _ => 0,
    }
}

/// (interface, conn, seq, verdict) of every exchange that did not pass.
fn not_passing(report: &Report) -> Vec<(String, u64, u64, Verdict)> {
    report
        .interfaces
        .iter()
        .flat_map(|i| {
            i.exchanges
                .iter()
                .filter(|x| x.verdict != Verdict::Pass)
                .map(move |x| (i.name.clone(), x.conn, x.seq, x.verdict))
        })
        .collect()
}

/// Paths of the differences found for (conn, seq).
fn diff_paths(report: &Report, conn: u64, seq: u64) -> Vec<String> {
    report
        .interfaces
        .iter()
        .flat_map(|i| &i.exchanges)
        .filter(|x| x.conn == conn && x.seq == seq)
        .flat_map(|x| x.finding.iter().flat_map(|f| f.diffs.iter()))
        .map(|d| d.path.clone())
        .collect()
}

fn run(recording: &[Exchange], db: &MariaDb, edit: impl FnOnce(&mut ReplayConfig)) -> Report {
    let mut cfg = ReplayConfig::with_targets(&[format!("db={}", db.url())]).unwrap();
    cfg.concurrency = 4;
    edit(&mut cfg);
    let owned: Vec<Exchange> = recording.to_vec();
    replay(owned.into_iter().map(Ok::<_, String>), cfg).unwrap()
}

fn find(rec: &[Exchange], pred: impl Fn(&MysqlCommand) -> bool) -> &Exchange {
    rec.iter()
        .find(|x| matches!(&x.request, Request::Mysql(c) if pred(c)))
        .unwrap()
}

fn query<'a>(rec: &'a [Exchange], sql: &str) -> &'a Exchange {
    find(
        rec,
        |c| matches!(c, MysqlCommand::Query { sql: s } if s.trim_end_matches(';') == sql),
    )
}

const CLI_SCRIPT: &str = "\
use deetune
SELECT id, name, price FROM items ORDER BY id;
SELECT name FROM tags;
SELECT * FROM no_such_table;
SET @x = 41;
SELECT @x + 1 AS answer;
UPDATE items SET stock = stock WHERE id = 1;
SELECT COUNT(*) AS n FROM items WHERE price > 3;
";

const PRICE_SQL: &str =
    "SELECT id, name, price, stock FROM items WHERE id >= ? AND name <> ? ORDER BY id";
const TOTAL_SQL: &str = "SELECT price * ? AS total FROM items WHERE id = ?";

/// Records the CLI session (conn 1) and the prepared-statement session (conn 2) through the
/// decoding proxy.
fn record(db: &MariaDb) -> Vec<Exchange> {
    let proxy = RecordingProxy::start(db.port());
    let c = db.config();
    let mut cli = Command::new("mariadb")
        .arg("--no-defaults")
        .args(["--protocol=tcp", "--host=127.0.0.1"])
        .arg(format!("--port={}", proxy.addr.port()))
        .arg(format!("--user={}", c.user))
        .arg(format!("--password={}", c.password))
        .args(["--batch", "--force", "--skip-ssl", "--skip-auto-rehash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cli.stdin
        .take()
        .unwrap()
        .write_all(CLI_SCRIPT.as_bytes())
        .unwrap();
    let out = cli.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // --force: the error statement fails (as recorded), the rest runs.
    assert!(stderr.contains("no_such_table"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("answer\n42"), "{stdout}");
    // Conn 1 must be complete before conn 2 starts, so that the ids are in this order.
    let first = proxy.recording(1);
    assert!(first.iter().all(|x| x.conn.id == 1));

    let mut p = Client::login(proxy.addr, &c.user, &c.password, &c.database);
    let price = p.prepare(PRICE_SQL);
    let total = p.prepare(TOTAL_SQL);
    assert_ne!(price, total);
    let x = p.execute(price, &[Param::Int(2), Param::Text("cake")]);
    assert_eq!(rows(&x), 3, "{x:?}");
    let x = p.execute(total, &[Param::Double(2.0), Param::Int(3)]);
    assert_eq!(rows(&x), 1, "{x:?}");
    let x = p.execute(price, &[Param::Int(1), Param::Null]);
    assert_eq!(rows(&x), 0, "name <> NULL is never true: {x:?}");
    p.command(&[&[0x1a][..], &price.to_le_bytes()].concat()); // COM_STMT_RESET
    p.send_only(&[&[0x19][..], &total.to_le_bytes()].concat()); // COM_STMT_CLOSE
    p.command(&[0x0e]); // COM_PING
    p.send_only(&[0x01]); // COM_QUIT
    drop(p);
    proxy.recording(2)
}

const SETUP: &str = "\
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, price DECIMAL(8,2) NOT NULL, stock INT NULL);
INSERT INTO items VALUES (1,'tea',4.50,10),(2,'cake',3.25,NULL),(3,'scone',2.75,7),(4,'jam',5.00,0),(5,'bun',1.20,3);
CREATE TABLE tags (name VARCHAR(20) NOT NULL);
INSERT INTO tags VALUES ('red'),('green'),('blue');
";

// Guards: the MySQL sender against a real MariaDB. Recorded from real traffic, the same data
// replays clean (text queries, USE, a session variable, an ERR, prepared statements
// re-prepared on the target with their ids mapped); a row reordering is a regression unless
// --unordered-rows; a changed row is a regression at exactly its result path; an ERR where
// rows were recorded is a regression.
#[test]
fn mariadb_replay() {
    let Some(db) = start_mariadb() else { return };
    db.sql(SETUP).unwrap();
    let rec = record(&db);
    let conn1: Vec<_> = rec.iter().filter(|x| x.conn.id == 1).collect();
    let conn2: Vec<_> = rec.iter().filter(|x| x.conn.id == 2).collect();
    eprintln!(
        "recorded: {:#?}",
        rec.iter()
            .map(|x| (x.conn.id, x.seq, x.interface(), x.flags))
            .collect::<Vec<_>>()
    );
    // The recording is what the decoder made of real traffic: check its shape first.
    assert!(
        rec.iter().all(|x| x.flags.is_clean()
            || matches!(
                &x.request,
                Request::Mysql(MysqlCommand::Quit | MysqlCommand::StmtClose { .. })
            )),
        "{rec:#?}"
    );
    assert!(conn1
        .iter()
        .any(|x| matches!(&x.request, Request::Mysql(MysqlCommand::InitDb { schema }) if schema == "deetune")));
    let err = query(&rec, "SELECT * FROM no_such_table");
    assert!(
        matches!(
            &err.response,
            Some(Response::Mysql(MysqlResponse::Err { code: 1146, .. }))
        ),
        "{err:?}"
    );
    assert_eq!(
        rows(query(&rec, "SELECT id, name, price FROM items ORDER BY id")),
        5
    );
    assert_eq!(conn2.len(), 9, "{conn2:#?}");
    let session = conn2[0].session.as_ref().unwrap();
    let deetune_protocols::SessionInfo::Mysql(s) = session;
    assert_eq!(s.user, "deetune");
    assert_eq!(s.schema.as_deref(), Some("deetune"));

    // 1. The same data replays clean. Only QUIT is skipped (not replayed by design).
    let report = run(&rec, &db, |_| {});
    let bad = not_passing(&report);
    assert!(
        bad.iter()
            .all(|(i, _, _, v)| i == "QUIT" && *v == Verdict::Skipped),
        "{bad:?}\n{}",
        report.summary()
    );
    assert_eq!(report.outcome(), Outcome::Clean);
    let answered = report.totals.answered;
    assert_eq!(
        answered,
        u64::try_from(rec.len() - bad.len()).unwrap(),
        "{}",
        report.summary()
    );

    // 2. Prepares filtered out: the executes re-prepare from their recorded SQL on the target,
    //    where the statement ids differ from the recorded ones (recorded `total` has id 2,
    //    re-prepared after `price` it may be 1 or 2; both executes of `price` map to one id).
    let report = run(&rec, &db, |c| {
        c.interfaces = vec!["SELECT items".into(), "STMT_RESET".into()];
    });
    assert!(
        not_passing(&report).is_empty(),
        "{:?}\n{}",
        not_passing(&report),
        report.summary()
    );
    let executes = report
        .interfaces
        .iter()
        .filter(|i| i.name == "SELECT items")
        .map(|i| i.counts.pass)
        .sum::<u64>();
    // Three executes and the CLI's two `items` queries.
    assert_eq!(executes, 5, "{}", report.summary());

    // 3. Row order: tags re-inserted in reverse (no primary key: rows come back in insertion
    //    order). A regression without --unordered-rows, clean with it.
    db.sql("DELETE FROM tags; INSERT INTO tags VALUES ('blue'),('green'),('red');")
        .unwrap();
    let tags = query(&rec, "SELECT name FROM tags");
    let report = run(&rec, &db, |_| {});
    assert_eq!(
        not_passing(&report)
            .into_iter()
            .filter(|v| v.3 != Verdict::Skipped)
            .collect::<Vec<_>>(),
        vec![("SELECT tags".to_owned(), 1, tags.seq, Verdict::Regression)],
        "{}",
        report.summary()
    );
    let report = run(&rec, &db, |c| c.rules.unordered_rows = true);
    assert_eq!(report.outcome(), Outcome::Clean, "{}", report.summary());

    // 4. A changed row: scone's price. Exactly the exchanges that return it regress, at the
    //    changed cell.
    db.sql("DELETE FROM tags; INSERT INTO tags VALUES ('red'),('green'),('blue');")
        .unwrap();
    db.sql("UPDATE items SET price = 2.95 WHERE id = 3")
        .unwrap();
    let report = run(&rec, &db, |_| {});
    let mut regressions: Vec<_> = not_passing(&report)
        .into_iter()
        .filter(|v| v.3 != Verdict::Skipped)
        .map(|v| (v.1, v.2))
        .collect();
    regressions.sort_unstable();
    let listing = query(&rec, "SELECT id, name, price FROM items ORDER BY id");
    let execs: Vec<&Exchange> = conn2
        .iter()
        .copied()
        .filter(|x| matches!(&x.request, Request::Mysql(MysqlCommand::StmtExecute { .. })))
        .collect();
    assert_eq!(execs.len(), 3);
    // price >= 2 (tea..bun minus cake: scone is row 1), total for id 3; the NULL execute has
    // no rows and passes.
    let want = vec![(1, listing.seq), (2, execs[0].seq), (2, execs[1].seq)];
    assert_eq!(regressions, want, "{}", report.summary());
    assert_eq!(
        diff_paths(&report, 1, listing.seq),
        vec!["result:$.sets[0].rows[2].price".to_owned()]
    );
    assert_eq!(
        diff_paths(&report, 2, execs[0].seq),
        vec!["result:$.sets[0].rows[0].price".to_owned()]
    );
    assert_eq!(
        diff_paths(&report, 2, execs[1].seq),
        vec!["result:$.sets[0].rows[0].total".to_owned()]
    );
    let f = report
        .interfaces
        .iter()
        .flat_map(|i| &i.exchanges)
        .find(|x| x.conn == 1 && x.seq == listing.seq)
        .and_then(|x| x.finding.as_ref())
        .unwrap();
    assert_eq!(f.diffs[0].expected.as_deref(), Some("\"2.75\""));
    assert_eq!(f.diffs[0].actual.as_deref(), Some("\"2.95\""));
    assert_eq!(report.outcome(), Outcome::Regressions);

    // 5. An ERR where rows were recorded (the table is gone) is a regression; the recorded
    //    ERR still compares equal.
    db.sql("DROP TABLE tags").unwrap();
    let report = run(&rec, &db, |c| {
        c.interfaces = vec!["SELECT tags".into(), "SELECT no_such_table".into()];
    });
    let bad = not_passing(&report);
    assert_eq!(
        bad,
        vec![("SELECT tags".to_owned(), 1, tags.seq, Verdict::Regression)],
        "{}",
        report.summary()
    );
    let paths = diff_paths(&report, 1, tags.seq);
    assert!(
        paths.iter().any(|p| p.starts_with("result:$.error")),
        "{paths:?}"
    );
    let err_result = report
        .interfaces
        .iter()
        .find(|i| i.name == "SELECT no_such_table")
        .unwrap();
    assert_eq!(err_result.counts.pass, 1, "{}", report.summary());
}
