//! MySQL / MariaDB decoder: the client/server protocol paired into exchanges.
//!
//! - Handshake v10 and the client's HandshakeResponse41 give the [`MysqlSession`] (server
//!   version, user, schema, negotiated capabilities) carried by every exchange. The auth
//!   response, auth-switch and `caching_sha2` / native-password rounds are skipped and never
//!   stored; the login itself produces no exchange.
//! - Commands: COM_QUERY (text result sets), COM_STMT_PREPARE / EXECUTE (binary rows and
//!   parameters, decoded with the types the connection's prepare announced; statement id →
//!   SQL per connection), COM_STMT_CLOSE and COM_QUIT (no response), COM_STMT_RESET,
//!   COM_INIT_DB (updates the session schema), COM_PING. Other commands are kept raw and
//!   flagged `unsupported` (COM_CHANGE_USER without its data, then its auth rounds skipped).
//! - OK / ERR / EOF with and without `CLIENT_DEPRECATE_EOF`; multi-results
//!   (`SERVER_MORE_RESULTS_EXISTS`) become one `ResultSets` response (OK results between
//!   sets are not kept; a multi-result of only OKs keeps the last OK).
//! - LOCAL INFILE: the response is `LocalInfile` flagged `unsupported`; the file bytes the
//!   client sends are skipped.
//! - TLS (an SSLRequest) or compression (CLIENT_COMPRESS negotiated): one exchange flagged
//!   `encrypted` / `unsupported` (a `Raw` request, no response) and nothing more is decoded.
//! - Bounded memory: packets are cut at `max_body` (flagged `truncated`); rows past
//!   `max_body` bytes of a response are counted but not kept (flagged `truncated`).
//! - Gaps: the partial packet is dropped and the waiting command is emitted without
//!   response, flagged `gap`. Resync is at the next command the client sends after the
//!   response side went quiet: a request-side gap drops bytes until a packet with sequence
//!   id 0 and a known command byte; a response-side gap drops response packets until the
//!   next command. If the handshake itself is lost the connection is given up (one `Raw`
//!   exchange flagged `gap` + `unsupported`).

mod wire;

use std::collections::{HashMap, VecDeque};

use wire::{Framer, Packet, Reader};

use crate::{
    DecoderConfig, Direction, Exchange, Flags, MysqlColumn, MysqlCommand, MysqlResponse,
    MysqlResultSet, MysqlSession, MysqlValue, Payload, Protocol, Request, Response, SessionInfo,
    StreamDecoder, Timing,
};

const CLIENT_CONNECT_WITH_DB: u32 = 0x8;
const CLIENT_COMPRESS: u32 = 0x20;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
/// MariaDB extended capability (bit 35, i.e. bit 3 of the extended word).
const MARIADB_CLIENT_EXTENDED_METADATA: u32 = 1 << 3;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x8;
const UNSIGNED_FLAG: u16 = 0x20;

const COM_QUIT: u8 = 0x01;
const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;

/// Decoder for one MySQL connection. See the module docs for what it marks.
#[derive(Debug)]
pub struct MysqlDecoder {
    budget: usize,
    req: Framer,
    resp: Framer,
    packets: Vec<Packet>,
    phase: Phase,
    session: MysqlSession,
    /// Capabilities the server offered.
    server_caps: u32,
    /// MariaDB extended capabilities the server offered.
    server_ext_caps: u32,
    /// MariaDB extended column metadata negotiated (an extra field in column definitions).
    extended_metadata: bool,
    stmts: HashMap<u32, Stmt>,
    pending: VecDeque<Pending>,
    ready: Vec<Exchange>,
    seq: u64,
    /// Request bytes are LOCAL INFILE data until an empty packet.
    infile: bool,
    /// After a request-side gap: drop request packets until a plausible command start.
    req_resync: bool,
    /// After a response-side gap: drop response packets until the next command.
    resp_resync: bool,
    /// Mark for the next command.
    req_mark: Flags,
    /// Bytes of SQL held in `stmts`.
    stmt_bytes: usize,
    /// Approximate bytes held by `ready`.
    ready_bytes: usize,
}

/// Commands waiting for a response (MySQL clients rarely pipeline); past it the oldest is
/// emitted `unpaired` without response.
const MAX_PENDING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server greeting.
    Greeting,
    /// Waiting for the client's handshake response.
    Login,
    /// Auth rounds until the server's OK or ERR.
    Auth,
    /// Commands.
    Command,
    /// Nothing more is decoded (TLS, compression, failed login, lost handshake).
    Done,
}

#[derive(Debug, Clone, Default)]
struct Stmt {
    sql: String,
    params: u16,
    /// Parameter types from the last execute that sent them (type, unsigned).
    param_types: Vec<(u8, bool)>,
}

#[derive(Debug)]
struct Pending {
    cmd: MysqlCommand,
    start: u64,
    end: u64,
    flags: Flags,
    state: RespState,
    /// Response being built.
    sets: Vec<MysqlResultSet>,
    last_ok: Option<MysqlResponse>,
    kept: usize,
    response: Option<MysqlResponse>,
    resp_start: u64,
    binary: bool,
    /// UNSIGNED flag per column of the current set.
    unsigned: Vec<bool>,
    /// For a prepare: SQL and the OK's numbers.
    prepared: Option<(u32, u16, u16)>,
    /// Commands without a response (QUIT, STMT_CLOSE, …) the client sent after this one while
    /// it was still waiting: emitted right after it, so exchanges stay in request order.
    followers: Vec<(MysqlCommand, Timing, Flags)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespState {
    First,
    Columns { left: u64 },
    ColumnsEof,
    Rows,
    PrepParams { left: u16 },
    PrepParamsEof,
    PrepColumns { left: u16 },
    PrepColumnsEof,
    InfileResult,
}

impl MysqlDecoder {
    /// A decoder with these limits.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            budget: config.max_body,
            req: Framer::new(config.max_body),
            resp: Framer::new(config.max_body),
            packets: Vec::new(),
            phase: Phase::Greeting,
            session: MysqlSession::default(),
            server_caps: 0,
            server_ext_caps: 0,
            extended_metadata: false,
            stmts: HashMap::new(),
            pending: VecDeque::new(),
            ready: Vec::new(),
            seq: 0,
            infile: false,
            req_resync: false,
            resp_resync: false,
            req_mark: Flags::default(),
            stmt_bytes: 0,
            ready_bytes: 0,
        }
    }

    fn caps(&self) -> u32 {
        self.session.capabilities
    }

    fn emit(
        &mut self,
        request: Request,
        response: Option<MysqlResponse>,
        timing: Timing,
        flags: Flags,
    ) {
        self.ready_bytes +=
            64 + match &request {
                Request::Mysql(c) => c.sql().map_or(0, str::len),
                _ => 0,
            } + response.as_ref().map_or(0, response_size);
        self.ready.push(Exchange {
            conn: std::sync::Arc::default(),
            seq: self.seq,
            protocol: Protocol::Mysql,
            request,
            response: response.map(Response::Mysql),
            timing,
            flags,
            session: Some(SessionInfo::Mysql(self.session.clone())),
        });
        self.seq += 1;
    }

    /// Stop decoding this connection: a feature it does not decode.
    fn give_up_unsupported(&mut self, ts: u64) {
        self.give_up(
            ts,
            Flags {
                unsupported: true,
                ..Flags::default()
            },
        );
    }

    /// Stop decoding this connection with one marker exchange.
    fn give_up(&mut self, ts: u64, flags: Flags) {
        self.flush_pending(Flags {
            gap: flags.gap,
            ..Flags::default()
        });
        let timing = Timing {
            request_start_ns: ts,
            request_end_ns: ts,
            ..Timing::default()
        };
        self.emit(
            Request::Raw {
                data: Payload::default(),
            },
            None,
            timing,
            flags,
        );
        self.phase = Phase::Done;
        self.req.reset();
        self.resp.reset();
    }

    fn finish_front(&mut self, end: u64) {
        let Some(mut p) = self.pending.pop_front() else {
            return;
        };
        let response = p.response.take().or_else(|| {
            if p.sets.is_empty() {
                p.last_ok.take()
            } else {
                Some(MysqlResponse::ResultSets {
                    sets: std::mem::take(&mut p.sets),
                })
            }
        });
        if let (MysqlCommand::StmtPrepare { sql }, Some((id, params, _))) = (&p.cmd, p.prepared) {
            // Bounded: past 4 × max_body of statement text, new statements are not
            // remembered (their executes come out without SQL).
            if self.stmt_bytes + sql.len() > 4 * self.budget {
                return self.emit_finished(p, response, end);
            }
            self.stmt_bytes += sql.len() + 64;
            self.stmts.insert(
                id,
                Stmt {
                    sql: sql.clone(),
                    params,
                    param_types: Vec::new(),
                },
            );
        }
        if let (MysqlCommand::InitDb { schema }, Some(MysqlResponse::Ok { .. })) =
            (&p.cmd, &response)
        {
            self.session.schema = Some(schema.clone());
        }
        self.emit_finished(p, response, end);
    }

    fn emit_finished(&mut self, p: Pending, response: Option<MysqlResponse>, end: u64) {
        let timing = Timing {
            request_start_ns: p.start,
            request_end_ns: p.end,
            response_start_ns: p.resp_start,
            response_end_ns: end,
        };
        self.emit(Request::Mysql(p.cmd), response, timing, p.flags);
        self.emit_followers(p.followers);
    }

    fn emit_followers(&mut self, followers: Vec<(MysqlCommand, Timing, Flags)>) {
        for (cmd, timing, flags) in followers {
            self.emit(Request::Mysql(cmd), None, timing, flags);
        }
    }

    fn flush_pending(&mut self, mark: Flags) {
        while let Some(p) = self.pending.pop_front() {
            let mut flags = p.flags;
            flags.gap |= mark.gap;
            flags.unpaired |= mark.unpaired;
            flags.truncated |= mark.truncated;
            let timing = Timing {
                request_start_ns: p.start,
                request_end_ns: p.end,
                ..Timing::default()
            };
            self.emit(Request::Mysql(p.cmd), None, timing, flags);
            self.emit_followers(p.followers);
        }
    }

    fn on_request(&mut self, p: &Packet, ts: u64) {
        match self.phase {
            Phase::Greeting => {
                // The client spoke first: not a handshake we saw.
                self.give_up(
                    p.start_ts,
                    Flags {
                        gap: true,
                        unsupported: true,
                        ..Flags::default()
                    },
                );
            }
            Phase::Login => self.on_login(p),
            Phase::Auth | Phase::Done => {}
            Phase::Command => {
                if self.infile {
                    if p.len == 0 {
                        self.infile = false;
                    }
                    return;
                }
                if self.req_resync {
                    let plausible = p.seq == 0
                        && !p.truncated
                        && matches!(
                            p.payload.first(),
                            Some(
                                &(COM_QUERY
                                    | COM_STMT_PREPARE
                                    | COM_STMT_EXECUTE
                                    | COM_STMT_CLOSE
                                    | COM_PING
                                    | COM_INIT_DB
                                    | COM_QUIT
                                    | COM_STMT_RESET)
                            )
                        );
                    if !plausible {
                        return;
                    }
                    self.req_resync = false;
                }
                // A new command ends whatever the server was still sending for the last one:
                // framing restarts with the response to this command.
                if self.resp_resync {
                    self.resp.reset();
                    self.resp_resync = false;
                }
                self.on_command(p, ts);
            }
        }
    }

    fn on_login(&mut self, p: &Packet) {
        let mut r = Reader::new(&p.payload);
        let Some(client_caps) = r.u32() else {
            self.give_up_unsupported(p.start_ts);
            return;
        };
        let caps = client_caps & self.server_caps;
        self.session.capabilities = caps;
        if caps & CLIENT_PROTOCOL_41 == 0 {
            self.give_up_unsupported(p.start_ts);
            return;
        }
        if client_caps & CLIENT_SSL != 0 && p.len == 32 {
            self.give_up(
                p.start_ts,
                Flags {
                    encrypted: true,
                    ..Flags::default()
                },
            );
            return;
        }
        let _ = r.take(4 + 1 + 19);
        let client_ext = r.u32().unwrap_or(0);
        // Servers that are not MariaDB announce CLIENT_MYSQL (1) and have no extensions.
        if self.server_caps & 1 == 0 {
            self.extended_metadata =
                client_ext & self.server_ext_caps & MARIADB_CLIENT_EXTENDED_METADATA != 0;
        }
        self.session.user = lossy(r.nul_str().unwrap_or_default());
        // The auth response is skipped, never kept.
        let _ = if caps & CLIENT_PLUGIN_AUTH_LENENC != 0 {
            r.lenenc_bytes()
        } else if caps & CLIENT_SECURE_CONNECTION != 0 {
            r.u8().and_then(|n| r.take(usize::from(n)))
        } else {
            r.nul_str()
        };
        if caps & CLIENT_CONNECT_WITH_DB != 0 {
            if let Some(db) = r.nul_str() {
                if !db.is_empty() {
                    self.session.schema = Some(lossy(db));
                }
            }
        }
        self.phase = Phase::Auth;
    }

    fn on_command(&mut self, p: &Packet, ts: u64) {
        let mut r = Reader::new(&p.payload);
        let code = r.u8().unwrap_or(0);
        let body = r.rest();
        let mut flags = std::mem::take(&mut self.req_mark);
        flags.truncated |= p.truncated;
        let mut no_response = false;
        let cmd = match code {
            COM_QUERY => MysqlCommand::Query { sql: lossy(body) },
            COM_STMT_PREPARE => MysqlCommand::StmtPrepare { sql: lossy(body) },
            COM_STMT_EXECUTE => self.parse_execute(body, &mut flags),
            COM_STMT_CLOSE => {
                no_response = true;
                let id = Reader::new(body).u32().unwrap_or(0);
                if let Some(st) = self.stmts.remove(&id) {
                    self.stmt_bytes = self.stmt_bytes.saturating_sub(st.sql.len() + 64);
                }
                MysqlCommand::StmtClose { statement_id: id }
            }
            COM_STMT_RESET => MysqlCommand::StmtReset {
                statement_id: Reader::new(body).u32().unwrap_or(0),
            },
            COM_INIT_DB => MysqlCommand::InitDb {
                schema: lossy(body),
            },
            COM_PING => MysqlCommand::Ping,
            COM_QUIT => {
                no_response = true;
                MysqlCommand::Quit
            }
            COM_CHANGE_USER => {
                // Carries auth data: not kept. Its auth rounds follow.
                flags.unsupported = true;
                self.phase = Phase::Auth;
                MysqlCommand::Other {
                    code,
                    data: Payload::default(),
                }
            }
            _ => {
                flags.unsupported = true;
                no_response = code == COM_STMT_SEND_LONG_DATA;
                MysqlCommand::Other {
                    code,
                    data: Payload::from(body),
                }
            }
        };
        if no_response {
            let timing = Timing {
                request_start_ns: p.start_ts,
                request_end_ns: ts,
                ..Timing::default()
            };
            match self.pending.back_mut() {
                Some(waiting) if waiting.followers.len() < MAX_PENDING => {
                    waiting.followers.push((cmd, timing, flags));
                }
                _ => self.emit(Request::Mysql(cmd), None, timing, flags),
            }
            return;
        }
        let binary = matches!(cmd, MysqlCommand::StmtExecute { .. });
        self.pending.push_back(Pending {
            cmd,
            start: p.start_ts,
            end: ts,
            flags,
            state: RespState::First,
            sets: Vec::new(),
            last_ok: None,
            kept: 0,
            response: None,
            resp_start: 0,
            binary,
            unsigned: Vec::new(),
            prepared: None,
            followers: Vec::new(),
        });
        while self.pending.len() > MAX_PENDING {
            if let Some(p) = self.pending.pop_front() {
                let timing = Timing {
                    request_start_ns: p.start,
                    request_end_ns: p.end,
                    ..Timing::default()
                };
                let flags = Flags {
                    unpaired: true,
                    ..p.flags
                };
                self.emit(Request::Mysql(p.cmd), None, timing, flags);
                self.emit_followers(p.followers);
            }
        }
    }

    fn parse_execute(&mut self, body: &[u8], flags: &mut Flags) -> MysqlCommand {
        let mut r = Reader::new(body);
        let id = r.u32().unwrap_or(0);
        let _flags = r.u8();
        let _iterations = r.u32();
        let Some(stmt) = self.stmts.get_mut(&id) else {
            return MysqlCommand::StmtExecute {
                statement_id: id,
                sql: None,
                params: Vec::new(),
            };
        };
        let n = usize::from(stmt.params);
        let mut params = Vec::with_capacity(n);
        if n > 0 {
            let bitmap = r.take(n.div_ceil(8)).unwrap_or_default().to_vec();
            if r.u8() == Some(1) {
                stmt.param_types = (0..n)
                    .map(|_| {
                        let t = r.u16().unwrap_or(0);
                        ((t & 0xff) as u8, t & 0x8000 != 0)
                    })
                    .collect();
            }
            for i in 0..n {
                let null = bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
                if null {
                    params.push(MysqlValue::Null);
                    continue;
                }
                let (t, unsigned) = stmt.param_types.get(i).copied().unwrap_or((0xfe, false));
                match binary_value(&mut r, t, unsigned) {
                    Some(v) => params.push(v),
                    None => {
                        flags.unsupported = true;
                        break;
                    }
                }
            }
        }
        MysqlCommand::StmtExecute {
            statement_id: id,
            sql: Some(stmt.sql.clone()),
            params,
        }
    }

    fn on_response(&mut self, p: &Packet, ts: u64) {
        match self.phase {
            Phase::Greeting => self.on_greeting(p),
            Phase::Login | Phase::Done => {}
            Phase::Auth => match p.payload.first() {
                Some(0x00) => {
                    if let Some(front) = self.pending.front_mut() {
                        // The OK that ends a COM_CHANGE_USER.
                        front.response = Some(parse_ok(&p.payload).0);
                        self.finish_front(ts);
                    }
                    if self.caps() & CLIENT_COMPRESS != 0 {
                        self.give_up_unsupported(p.start_ts);
                    } else {
                        self.phase = Phase::Command;
                    }
                }
                Some(0xff) => {
                    // Login failed: emit the pending COM_CHANGE_USER, if any, then stop.
                    let err = parse_err(&p.payload);
                    if let Some(front) = self.pending.front_mut() {
                        front.response = Some(err);
                        self.finish_front(ts);
                    }
                    self.phase = Phase::Done;
                }
                _ => {}
            },
            Phase::Command => {
                if self.req_resync {
                    // The server answered the lost command: the client's next bytes start a
                    // new command.
                    self.req.reset();
                }
                if self.resp_resync {
                    return;
                }
                self.on_command_response(p, ts);
            }
        }
    }

    fn on_greeting(&mut self, p: &Packet) {
        let mut r = Reader::new(&p.payload);
        if r.u8() != Some(10) {
            self.give_up_unsupported(p.start_ts);
            return;
        }
        self.session.server_version = lossy(r.nul_str().unwrap_or_default());
        let _conn_id = r.u32();
        let _auth1 = r.take(9);
        let low = r.u16().unwrap_or(0);
        let _charset = r.u8();
        let _status = r.u16();
        let high = r.u16().unwrap_or(0);
        self.server_caps = u32::from(low) | u32::from(high) << 16;
        let _auth_len = r.u8();
        let _filler = r.take(6);
        // MariaDB puts its extended capabilities in the last 4 reserved bytes.
        self.server_ext_caps = r.u32().unwrap_or(0);
        self.phase = Phase::Login;
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one state machine, easier to read in one place"
    )]
    fn on_command_response(&mut self, p: &Packet, ts: u64) {
        let deprecate_eof = self.caps() & CLIENT_DEPRECATE_EOF != 0;
        let extended = self.extended_metadata;
        let budget = self.budget;
        let Some(front) = self.pending.front_mut() else {
            // Nothing waiting (the command was lost): dropped.
            return;
        };
        if front.resp_start == 0 {
            front.resp_start = p.start_ts;
        }
        front.flags.truncated |= p.truncated;
        let first = p.payload.first().copied();
        let is_eof = first == Some(0xfe) && p.len < 9;
        let mut done = false;
        match front.state {
            RespState::First => match first {
                Some(0x00) if matches!(front.cmd, MysqlCommand::StmtPrepare { .. }) => {
                    let mut r = Reader::new(&p.payload[1..]);
                    let id = r.u32().unwrap_or(0);
                    let cols = r.u16().unwrap_or(0);
                    let params = r.u16().unwrap_or(0);
                    front.prepared = Some((id, params, cols));
                    front.response = Some(MysqlResponse::Prepared {
                        statement_id: id,
                        params,
                        columns: cols,
                    });
                    front.state = if params > 0 {
                        RespState::PrepParams { left: params }
                    } else if cols > 0 {
                        RespState::PrepColumns { left: cols }
                    } else {
                        done = true;
                        RespState::First
                    };
                }
                Some(0x00) => {
                    let (ok, status) = parse_ok(&p.payload);
                    front.last_ok = Some(ok);
                    done = status & SERVER_MORE_RESULTS_EXISTS == 0;
                }
                Some(0xff) => {
                    front.response = Some(parse_err(&p.payload));
                    done = true;
                }
                Some(0xfb) if matches!(front.cmd, MysqlCommand::Query { .. }) => {
                    front.response = Some(MysqlResponse::LocalInfile {
                        filename: lossy(&p.payload[1..]),
                    });
                    front.flags.unsupported = true;
                    front.state = RespState::InfileResult;
                    self.infile = true;
                }
                _ => {
                    let n = Reader::new(&p.payload).lenenc();
                    match n {
                        Some(n) if n > 0 => {
                            front.sets.push(MysqlResultSet {
                                columns: Vec::new(),
                                rows: Vec::new(),
                            });
                            front.unsigned.clear();
                            front.state = RespState::Columns { left: n };
                        }
                        _ => {
                            front.flags.unsupported = true;
                            front.response = Some(MysqlResponse::Err {
                                code: 0,
                                sql_state: String::new(),
                                message: "undecodable response".to_owned(),
                            });
                            done = true;
                        }
                    }
                }
            },
            RespState::Columns { left } => {
                if let Some(set) = front.sets.last_mut() {
                    if let Some((c, unsigned)) = parse_column(&p.payload, extended) {
                        set.columns.push(c);
                        front.unsigned.push(unsigned);
                    } else {
                        front.flags.unsupported = true;
                    }
                }
                front.state = if left > 1 {
                    RespState::Columns { left: left - 1 }
                } else if deprecate_eof {
                    RespState::Rows
                } else {
                    RespState::ColumnsEof
                };
            }
            RespState::ColumnsEof => {
                front.state = RespState::Rows;
                if !is_eof {
                    front.flags.unsupported = true;
                }
            }
            RespState::Rows => {
                if first == Some(0xff) {
                    front.response = Some(parse_err(&p.payload));
                    done = true;
                } else if first == Some(0xfe) && p.len < 0xff_ffff && (is_eof || deprecate_eof) {
                    let status = if is_eof {
                        let mut r = Reader::new(&p.payload[1..]);
                        let _warnings = r.u16();
                        r.u16().unwrap_or(0)
                    } else {
                        parse_ok(&p.payload).1
                    };
                    if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                        done = true;
                    } else {
                        front.state = RespState::First;
                    }
                } else if front.kept > budget {
                    front.flags.truncated = true;
                } else if let Some(set) = front.sets.last_mut() {
                    front.kept += p.payload.len() + 8 * set.columns.len();
                    let row = if front.binary {
                        parse_binary_row(&p.payload, &set.columns, &front.unsigned)
                    } else {
                        parse_text_row(&p.payload, set.columns.len())
                    };
                    match row {
                        Some(row) => set.rows.push(row),
                        None => front.flags.unsupported = true,
                    }
                }
            }
            RespState::PrepParams { left } => {
                front.state = if left > 1 {
                    RespState::PrepParams { left: left - 1 }
                } else if deprecate_eof {
                    next_prep_columns(front.prepared)
                } else {
                    RespState::PrepParamsEof
                };
                done = front.state == RespState::First;
            }
            RespState::PrepParamsEof => {
                front.state = next_prep_columns(front.prepared);
                done = front.state == RespState::First;
            }
            RespState::PrepColumns { left } => {
                front.state = if left > 1 {
                    RespState::PrepColumns { left: left - 1 }
                } else if deprecate_eof {
                    done = true;
                    RespState::First
                } else {
                    RespState::PrepColumnsEof
                };
            }
            RespState::PrepColumnsEof => done = true,
            RespState::InfileResult => {
                // The server's OK/ERR after the file data; the response stays LocalInfile.
                self.infile = false;
                done = true;
            }
        }
        if done {
            self.finish_front(ts);
        }
    }

    fn lost(&mut self, dir: Direction, ts: u64) {
        match self.phase {
            Phase::Greeting | Phase::Login | Phase::Auth => {
                self.give_up(
                    ts,
                    Flags {
                        gap: true,
                        unsupported: true,
                        ..Flags::default()
                    },
                );
            }
            Phase::Done => {}
            Phase::Command => match dir {
                Direction::Request => {
                    self.req.reset();
                    self.req_resync = true;
                    self.infile = false;
                    self.req_mark.gap = true;
                }
                Direction::Response => {
                    self.resp.reset();
                    self.resp_resync = true;
                    self.flush_pending(Flags {
                        gap: true,
                        ..Flags::default()
                    });
                }
            },
        }
    }
}

/// Approximate heap size of a response.
fn response_size(r: &MysqlResponse) -> usize {
    match r {
        MysqlResponse::ResultSets { sets } => sets
            .iter()
            .map(|s| {
                s.columns.len() * 64
                    + s.rows
                        .iter()
                        .map(|r| {
                            r.iter()
                                .map(|v| match v {
                                    MysqlValue::Bytes(b) => b.len() + 32,
                                    _ => 32,
                                })
                                .sum::<usize>()
                        })
                        .sum::<usize>()
            })
            .sum(),
        MysqlResponse::Ok { info, .. } => 64 + info.len(),
        MysqlResponse::Err { message, .. } => 64 + message.len(),
        _ => 64,
    }
}

fn next_prep_columns(prepared: Option<(u32, u16, u16)>) -> RespState {
    match prepared {
        Some((_, _, cols)) if cols > 0 => RespState::PrepColumns { left: cols },
        _ => RespState::First,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// OK packet (0x00 or a 0xfe OK under DEPRECATE_EOF) and its status flags.
fn parse_ok(payload: &[u8]) -> (MysqlResponse, u16) {
    let mut r = Reader::new(payload.get(1..).unwrap_or_default());
    let affected_rows = r.lenenc().unwrap_or(0);
    let last_insert_id = r.lenenc().unwrap_or(0);
    let status = r.u16().unwrap_or(0);
    let warnings = r.u16().unwrap_or(0);
    let info = lossy(r.lenenc_bytes().unwrap_or_else(|| r.rest()));
    (
        MysqlResponse::Ok {
            affected_rows,
            last_insert_id,
            warnings,
            info,
        },
        status,
    )
}

fn parse_err(payload: &[u8]) -> MysqlResponse {
    let mut r = Reader::new(payload.get(1..).unwrap_or_default());
    let code = r.u16().unwrap_or(0);
    let mut sql_state = String::new();
    if r.rest().first() == Some(&b'#') {
        let _ = r.u8();
        sql_state = lossy(r.take(5).unwrap_or_default());
    }
    MysqlResponse::Err {
        code,
        sql_state,
        message: lossy(r.rest()),
    }
}

/// A column definition and whether it is UNSIGNED (needed to decode binary integers).
fn parse_column(payload: &[u8], extended: bool) -> Option<(MysqlColumn, bool)> {
    let mut r = Reader::new(payload);
    let _catalog = r.lenenc_bytes()?;
    let _schema = r.lenenc_bytes()?;
    let table = r.lenenc_bytes()?;
    let _org_table = r.lenenc_bytes()?;
    let name = r.lenenc_bytes()?;
    let _org_name = r.lenenc_bytes()?;
    if extended {
        let _extended_metadata = r.lenenc_bytes()?;
    }
    let _fixed = r.lenenc()?;
    let _charset = r.u16()?;
    let _len = r.u32()?;
    let column_type = r.u8()?;
    let flags = r.u16()?;
    Some((
        MysqlColumn {
            name: lossy(name),
            table: lossy(table),
            column_type,
        },
        flags & UNSIGNED_FLAG != 0,
    ))
}

fn parse_text_row(payload: &[u8], cols: usize) -> Option<Vec<MysqlValue>> {
    let mut r = Reader::new(payload);
    let mut row = Vec::with_capacity(cols);
    for _ in 0..cols {
        if r.rest().first() == Some(&0xfb) {
            let _ = r.u8();
            row.push(MysqlValue::Null);
        } else {
            row.push(MysqlValue::Bytes(Payload::from(r.lenenc_bytes()?)));
        }
    }
    r.is_empty().then_some(row)
}

fn parse_binary_row(
    payload: &[u8],
    cols: &[MysqlColumn],
    unsigned: &[bool],
) -> Option<Vec<MysqlValue>> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0 {
        return None;
    }
    let bitmap = r.take((cols.len() + 7 + 2) / 8)?;
    let mut row = Vec::with_capacity(cols.len());
    for (i, c) in cols.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            row.push(MysqlValue::Null);
        } else {
            let u = unsigned.get(i).copied().unwrap_or(false);
            row.push(binary_value(&mut r, c.column_type, u)?);
        }
    }
    Some(row)
}

/// One binary-protocol value of MySQL type `t`.
fn binary_value(r: &mut Reader<'_>, t: u8, unsigned: bool) -> Option<MysqlValue> {
    let int = |v: i64, u: u64| {
        if unsigned {
            i64::try_from(u).map_or(MysqlValue::UInt(u), MysqlValue::Int)
        } else {
            MysqlValue::Int(v)
        }
    };
    Some(match t {
        0x01 => {
            let b = r.u8()?;
            int(i64::from(b as i8), u64::from(b))
        }
        0x02 | 0x0d => {
            let v = r.u16()?;
            int(i64::from(v as i16), u64::from(v))
        }
        0x03 | 0x09 => {
            let v = r.u32()?;
            int(i64::from(v as i32), u64::from(v))
        }
        0x08 => {
            let v = r.u64()?;
            int(v as i64, v)
        }
        0x04 => MysqlValue::Float(f64::from(f32::from_bits(r.u32()?))),
        0x05 => MysqlValue::Float(f64::from_bits(r.u64()?)),
        0x06 => MysqlValue::Null,
        0x07 | 0x0a | 0x0c | 0x12 => {
            let n = r.u8()?;
            let b = r.take(usize::from(n))?;
            MysqlValue::Bytes(Payload(format_datetime(t, b).into_bytes()))
        }
        0x0b | 0x13 => {
            let n = r.u8()?;
            let b = r.take(usize::from(n))?;
            MysqlValue::Bytes(Payload(format_time(b).into_bytes()))
        }
        _ => MysqlValue::Bytes(Payload::from(r.lenenc_bytes()?)),
    })
}

fn format_datetime(t: u8, b: &[u8]) -> String {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    let year = u16::from_le_bytes([g(0), g(1)]);
    let date = format!("{year:04}-{:02}-{:02}", g(2), g(3));
    if t == 0x0a {
        return date;
    }
    let mut s = format!("{date} {:02}:{:02}:{:02}", g(4), g(5), g(6));
    if b.len() >= 11 {
        let us = u32::from_le_bytes([g(7), g(8), g(9), g(10)]);
        s.push_str(&format!(".{us:06}"));
    }
    s
}

fn format_time(b: &[u8]) -> String {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    let neg = g(0) == 1;
    let days = u32::from_le_bytes([g(1), g(2), g(3), g(4)]);
    let hours = days * 24 + u32::from(g(5));
    let mut s = format!(
        "{}{hours:02}:{:02}:{:02}",
        if neg { "-" } else { "" },
        g(6),
        g(7)
    );
    if b.len() >= 12 {
        let us = u32::from_le_bytes([g(8), g(9), g(10), g(11)]);
        s.push_str(&format!(".{us:06}"));
    }
    s
}

impl StreamDecoder for MysqlDecoder {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn push(&mut self, dir: Direction, ts_ns: u64, bytes: &[u8]) {
        if self.phase == Phase::Done || bytes.is_empty() {
            return;
        }
        let mut packets = std::mem::take(&mut self.packets);
        match dir {
            Direction::Request => self.req.feed(bytes, ts_ns, &mut packets),
            Direction::Response => self.resp.feed(bytes, ts_ns, &mut packets),
        }
        for p in packets.drain(..) {
            if self.phase == Phase::Done {
                break;
            }
            match dir {
                Direction::Request => self.on_request(&p, ts_ns),
                Direction::Response => self.on_response(&p, ts_ns),
            }
        }
        self.packets = packets;
    }

    fn gap(&mut self, dir: Direction, ts_ns: u64, len: u64) {
        if len > 0 {
            self.lost(dir, ts_ns);
        }
    }

    fn close(&mut self, _ts_ns: u64) {
        let partial = !self.resp.is_idle();
        self.req.reset();
        self.resp.reset();
        self.flush_pending(Flags {
            unpaired: true,
            truncated: partial,
            ..Flags::default()
        });
    }

    fn drain(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.ready);
        self.ready_bytes = 0;
    }

    fn buffered_bytes(&self) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .map(|p| 128 + p.kept + p.cmd.sql().map_or(0, str::len))
            .sum();
        self.req.buffered() + self.resp.buffered() + pending + self.stmt_bytes + self.ready_bytes
    }
}
