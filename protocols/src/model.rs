//! The exchange model: one request and its response on one connection, shared by the
//! recorder (which produces it), the store and bundles (which persist it) and the replayer
//! (which re-sends the request and diffs the response).
//!
//! Everything here is plain serde data. Field order is the JSON order in bundles; maps are
//! `BTreeMap`s so output is stable.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::payload::PayloadVisitor;
use crate::Payload;

/// Application protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.0 and HTTP/1.1.
    Http,
    /// Redis RESP2/RESP3.
    Redis,
    /// MySQL / MariaDB client protocol.
    Mysql,
    /// Not recognised (or not decoded).
    Unknown,
}

impl Protocol {
    /// Lower-case name as used on the command line and in files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Redis => "redis",
            Self::Mysql => "mysql",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(Self::Http),
            "redis" => Ok(Self::Redis),
            "mysql" | "mariadb" => Ok(Self::Mysql),
            other => Err(format!(
                "unknown protocol `{other}` (expected http, redis or mysql)"
            )),
        }
    }
}

/// Which side of a connection a process is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It called `connect`.
    Client,
    /// It called `accept`.
    Server,
}

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP address (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub addr: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Process id, when the process is on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Process name (`comm`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// cgroup path or container id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Service name given by the service rules (or the default naming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 0,
            pid: None,
            process: None,
            cgroup: None,
            service: None,
        }
    }
}

/// The connection an exchange was seen on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionMeta {
    /// Recorder-unique connection id; exchanges with the same id were on one connection and
    /// are replayed in order on one connection.
    pub id: u64,
    /// The end that connected.
    pub client: Endpoint,
    /// The end that accepted.
    pub server: Endpoint,
}

/// Per-exchange marks. All false is the normal case and is omitted from JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent marks, serialized by name"
)]
pub struct Flags {
    /// A body or value was larger than the cap and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Bytes of this exchange were lost by the capture.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gap: bool,
    /// A request without response (or a response without request).
    #[serde(default, skip_serializing_if = "is_false")]
    pub unpaired: bool,
    /// The connection is encrypted (TLS); the content is not decoded.
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
    /// The exchange uses a feature the decoder does not support (upgrade, compression,
    /// LOCAL INFILE, …); see the decoder docs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unsupported: bool,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl Flags {
    /// True when no mark is set.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }
}

/// Timestamps in nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timing {
    /// First byte of the request.
    pub request_start_ns: u64,
    /// Last byte of the request.
    pub request_end_ns: u64,
    /// First byte of the response (0 when there is none).
    #[serde(default)]
    pub response_start_ns: u64,
    /// Last byte of the response (0 when there is none).
    #[serde(default)]
    pub response_end_ns: u64,
}

impl Timing {
    /// Request start to response end, when there is a response.
    #[must_use]
    pub fn latency_ns(&self) -> Option<u64> {
        (self.response_end_ns >= self.request_start_ns && self.response_end_ns != 0)
            .then(|| self.response_end_ns - self.request_start_ns)
    }
}

/// One request and its response on one connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// The connection (decoders leave it default; the recorder fills it in). Shared: every
    /// exchange of a connection points at one copy (no per-exchange copy of its strings).
    pub conn: Arc<ConnectionMeta>,
    /// Position of this exchange on its connection, from 0.
    pub seq: u64,
    /// Protocol of the connection.
    pub protocol: Protocol,
    /// The request.
    pub request: Request,
    /// The response, or none when unanswered.
    pub response: Option<Response>,
    /// When it happened.
    pub timing: Timing,
    /// Marks.
    #[serde(default, skip_serializing_if = "Flags::is_clean")]
    pub flags: Flags,
    /// Per-connection session state the replayer needs (MySQL schema, user, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
}

impl Exchange {
    /// What policies and reports group by: HTTP `METHOD /path` (no query), the Redis command
    /// name (upper case), the SQL verb and first table (`SELECT users`), or the MySQL command.
    #[must_use]
    pub fn interface(&self) -> String {
        self.request.interface()
    }
}

/// A request, per protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum Request {
    /// HTTP request.
    Http(HttpRequest),
    /// Redis command.
    Redis(RedisCommand),
    /// MySQL command.
    Mysql(MysqlCommand),
    /// Undecoded bytes (unknown protocol or a marked exchange), kept up to the cap.
    Raw {
        /// The bytes.
        data: Payload,
    },
}

impl Request {
    /// See [`Exchange::interface`].
    #[must_use]
    pub fn interface(&self) -> String {
        match self {
            Self::Http(r) => {
                let path = r.target.split(['?', '#']).next().unwrap_or("");
                format!("{} {}", r.method, path)
            }
            Self::Redis(c) => c.name(),
            Self::Mysql(c) => c.interface(),
            Self::Raw { .. } => "RAW".to_owned(),
        }
    }
}

/// A response, per protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum Response {
    /// HTTP response.
    Http(HttpResponse),
    /// Redis reply.
    Redis(RespValue),
    /// MySQL response.
    Mysql(MysqlResponse),
    /// Undecoded bytes.
    Raw {
        /// The bytes.
        data: Payload,
    },
}

/// One HTTP header, as sent (name case kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Header {
    /// Name as on the wire.
    pub name: String,
    /// Value (bytes; almost always text).
    pub value: Payload,
}

/// An HTTP message body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Body {
    /// The body as received, after removing chunked framing but before content decoding,
    /// cut at the cap.
    pub raw: Payload,
    /// The content-decoded body (gzip, deflate, br), cut at the decode cap; none when the
    /// body had no content encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded: Option<Payload>,
    /// Real length on the wire (after de-chunking), even when `raw` was cut.
    pub len: u64,
    /// `raw` (or `decoded`) was cut at the cap.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

impl Body {
    /// The bytes to compare: the decoded copy when there is one, else the raw bytes.
    #[must_use]
    pub fn content(&self) -> &[u8] {
        self.decoded.as_ref().unwrap_or(&self.raw).as_bytes()
    }
}

/// An HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Request target as sent (`/api/orders?id=1`).
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Body (empty when none).
    #[serde(default)]
    pub body: Body,
}

/// An HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// `HTTP/1.1`, …
    pub version: String,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Body (empty when none).
    #[serde(default)]
    pub body: Body,
}

/// Case-insensitive header lookup shared by requests and responses.
pub(crate) fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a Payload> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value)
}

impl HttpRequest {
    /// First header with this name (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&Payload> {
        find_header(&self.headers, name)
    }
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&Payload> {
        find_header(&self.headers, name)
    }
}

/// A Redis command: the array of bulk strings the client sent (inline commands are split
/// into words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisCommand {
    /// Command name and arguments.
    pub args: Vec<Payload>,
    /// Sent as an inline command rather than a RESP array.
    #[serde(default, skip_serializing_if = "is_false")]
    pub inline: bool,
}

impl RedisCommand {
    /// Upper-case command name (`GET`, `CLIENT SETNAME` stays `CLIENT`).
    #[must_use]
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).to_ascii_uppercase())
            .unwrap_or_default()
    }
}

/// A RESP2/RESP3 value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Payload),
    /// `$-1`, `*-1`, `_`
    Null,
    /// `*…` / `>…` (push) / `~…` (set)
    Array(Vec<RespValue>),
    /// RESP3 `~` set.
    Set(Vec<RespValue>),
    /// RESP3 `%` map, in wire order.
    Map(Vec<(RespValue, RespValue)>),
    /// RESP3 `>` push (pub/sub messages, invalidations).
    Push(Vec<RespValue>),
    /// RESP3 `#t`/`#f`.
    Boolean(bool),
    /// RESP3 `,1.5`.
    Double(f64),
    /// RESP3 `(123…`.
    BigNumber(String),
    /// RESP3 `=`; format (`txt`, `mkd`) and text.
    Verbatim {
        /// Three-letter format.
        format: String,
        /// The text.
        text: Payload,
    },
    /// RESP3 `!` bulk error.
    BulkError(Payload),
}

/// MySQL session state the replayer needs to reproduce a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum SessionInfo {
    /// From the MySQL handshake (never authentication data).
    Mysql(MysqlSession),
}

/// What the MySQL handshake told us (never the password or the auth response).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlSession {
    /// Server version string.
    pub server_version: String,
    /// User name the client logged in as.
    pub user: String,
    /// Initial schema, when the client named one (or switched with COM_INIT_DB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Negotiated capability flags.
    pub capabilities: u32,
}

/// A MySQL command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum MysqlCommand {
    /// COM_QUERY.
    Query {
        /// SQL text.
        sql: String,
    },
    /// COM_STMT_PREPARE.
    StmtPrepare {
        /// SQL text with `?` placeholders.
        sql: String,
    },
    /// COM_STMT_EXECUTE, with the statement's SQL resolved from the connection's prepares.
    StmtExecute {
        /// Statement id on the recorded connection.
        statement_id: u32,
        /// SQL of the statement, when its prepare was seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sql: Option<String>,
        /// Bound parameters.
        params: Vec<MysqlValue>,
    },
    /// COM_STMT_CLOSE (no response).
    StmtClose {
        /// Statement id.
        statement_id: u32,
    },
    /// COM_STMT_RESET.
    StmtReset {
        /// Statement id.
        statement_id: u32,
    },
    /// COM_INIT_DB.
    InitDb {
        /// Schema name.
        schema: String,
    },
    /// COM_PING.
    Ping,
    /// COM_QUIT (no response).
    Quit,
    /// Any other command, kept raw (marked unsupported).
    Other {
        /// Command byte.
        code: u8,
        /// Payload after the command byte.
        data: Payload,
    },
}

impl MysqlCommand {
    /// SQL text, for commands that carry it.
    #[must_use]
    pub fn sql(&self) -> Option<&str> {
        match self {
            Self::Query { sql } | Self::StmtPrepare { sql } => Some(sql),
            Self::StmtExecute { sql, .. } => sql.as_deref(),
            _ => None,
        }
    }

    /// `SELECT users`, `INSERT orders`, `PING`, `STMT_PREPARE SELECT users`, …
    #[must_use]
    pub fn interface(&self) -> String {
        match self {
            Self::Query { sql } => sql_interface(sql),
            Self::StmtPrepare { sql } => format!("PREPARE {}", sql_interface(sql)),
            Self::StmtExecute { sql: Some(sql), .. } => sql_interface(sql),
            Self::StmtExecute { sql: None, .. } => "EXECUTE".to_owned(),
            Self::StmtClose { .. } => "STMT_CLOSE".to_owned(),
            Self::StmtReset { .. } => "STMT_RESET".to_owned(),
            Self::InitDb { .. } => "INIT_DB".to_owned(),
            Self::Ping => "PING".to_owned(),
            Self::Quit => "QUIT".to_owned(),
            Self::Other { code, .. } => format!("COM_0x{code:02x}"),
        }
    }
}

/// SQL verb and first table: `SELECT users`, `INSERT orders`, `BEGIN`.
#[must_use]
pub fn sql_interface(sql: &str) -> String {
    let mut words = sql
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ';')
        .filter(|w| !w.is_empty());
    let Some(verb) = words.next() else {
        return String::new();
    };
    let verb = verb.to_ascii_uppercase();
    let keyword = match verb.as_str() {
        "SELECT" | "DELETE" => Some("FROM"),
        "INSERT" | "REPLACE" => Some("INTO"),
        "UPDATE" => None,
        _ => return verb,
    };
    let table = match keyword {
        None => words.find(|w| !is_modifier(w)),
        Some(k) => words
            .by_ref()
            .find(|w| w.eq_ignore_ascii_case(k))
            .and_then(|_| words.next()),
    };
    match table {
        Some(t) => format!("{verb} {}", t.trim_matches('`').to_ascii_lowercase()),
        None => verb,
    }
}

fn is_modifier(w: &str) -> bool {
    ["LOW_PRIORITY", "IGNORE"]
        .iter()
        .any(|m| w.eq_ignore_ascii_case(m))
}

/// A MySQL cell or statement parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MysqlValue {
    /// SQL NULL.
    Null,
    /// Signed integer.
    Int(i64),
    /// Unsigned integer above `i64::MAX`.
    UInt(u64),
    /// FLOAT / DOUBLE (binary protocol).
    Float(f64),
    /// Text-protocol cells, strings, decimals, dates (as MySQL prints them), blobs.
    Bytes(Payload),
}

/// Column definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlColumn {
    /// Column (alias) name.
    pub name: String,
    /// Table (alias), may be empty.
    #[serde(default)]
    pub table: String,
    /// MySQL column type byte.
    pub column_type: u8,
}

/// One result set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MysqlResultSet {
    /// Columns.
    pub columns: Vec<MysqlColumn>,
    /// Rows, in wire order.
    pub rows: Vec<Vec<MysqlValue>>,
}

/// A MySQL response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MysqlResponse {
    /// OK packet.
    Ok {
        /// Affected rows.
        affected_rows: u64,
        /// Last insert id.
        last_insert_id: u64,
        /// Warnings.
        warnings: u16,
        /// Info text.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        info: String,
    },
    /// ERR packet.
    Err {
        /// Error code.
        code: u16,
        /// SQLSTATE.
        sql_state: String,
        /// Message.
        message: String,
    },
    /// One or more result sets (multi-results in order), ending with the final OK/EOF.
    ResultSets {
        /// The sets.
        sets: Vec<MysqlResultSet>,
    },
    /// COM_STMT_PREPARE OK.
    Prepared {
        /// Statement id on this connection.
        statement_id: u32,
        /// Parameter count.
        params: u16,
        /// Column count.
        columns: u16,
    },
    /// LOCAL INFILE request (marked unsupported).
    LocalInfile {
        /// File name the server asked for.
        filename: String,
    },
}

// ---- deserialization ----
//
// serde's derived code for internally tagged and untagged enums buffers every value into an
// intermediate tree before decoding it (the tag may come last). The JSON our writer emits
// (derived `Serialize`) always puts the tag first, so these hand-written impls read the tag
// key first and decode the rest of the map straight from the input; only when the tag is not
// the first key do they buffer (into a `serde_json::Value`). The accepted JSON is the same.

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl tagged::Tagged for Request {
    const EXPECTING: &'static str = "a request (a map with a `protocol` key)";
    const TAG: &'static str = "protocol";
    const VARIANTS: &'static [&'static str] = &["http", "redis", "mysql", "raw"];

    fn content<'de, D: Deserializer<'de>>(variant: usize, d: D) -> Result<Self, D::Error> {
        Ok(match variant {
            0 => Self::Http(HttpRequest::deserialize(d)?),
            1 => Self::Redis(RedisCommand::deserialize(d)?),
            2 => Self::Mysql(MysqlCommand::deserialize(d)?),
            _ => Self::Raw {
                data: RawFields::deserialize(d)?.data,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl tagged::Tagged for Response {
    const EXPECTING: &'static str = "a response (a map with a `protocol` key)";
    const TAG: &'static str = "protocol";
    const VARIANTS: &'static [&'static str] = &["http", "redis", "mysql", "raw"];

    fn content<'de, D: Deserializer<'de>>(variant: usize, d: D) -> Result<Self, D::Error> {
        Ok(match variant {
            0 => Self::Http(HttpResponse::deserialize(d)?),
            1 => Self::Redis(RespValue::deserialize(d)?),
            2 => Self::Mysql(MysqlResponse::deserialize(d)?),
            _ => Self::Raw {
                data: RawFields::deserialize(d)?.data,
            },
        })
    }
}

impl<'de> Deserialize<'de> for SessionInfo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl tagged::Tagged for SessionInfo {
    const EXPECTING: &'static str = "session info (a map with a `protocol` key)";
    const TAG: &'static str = "protocol";
    const VARIANTS: &'static [&'static str] = &["mysql"];

    fn content<'de, D: Deserializer<'de>>(_variant: usize, d: D) -> Result<Self, D::Error> {
        Ok(Self::Mysql(MysqlSession::deserialize(d)?))
    }
}

impl<'de> Deserialize<'de> for MysqlCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl tagged::Tagged for MysqlCommand {
    const EXPECTING: &'static str = "a MySQL command (a map with a `command` key)";
    const TAG: &'static str = "command";
    const VARIANTS: &'static [&'static str] = &[
        "query",
        "stmt_prepare",
        "stmt_execute",
        "stmt_close",
        "stmt_reset",
        "init_db",
        "ping",
        "quit",
        "other",
    ];

    fn content<'de, D: Deserializer<'de>>(variant: usize, d: D) -> Result<Self, D::Error> {
        Ok(match variant {
            0 => Self::Query {
                sql: SqlFields::deserialize(d)?.sql,
            },
            1 => Self::StmtPrepare {
                sql: SqlFields::deserialize(d)?.sql,
            },
            2 => {
                let f = StmtExecuteFields::deserialize(d)?;
                Self::StmtExecute {
                    statement_id: f.statement_id,
                    sql: f.sql,
                    params: f.params,
                }
            }
            3 => Self::StmtClose {
                statement_id: StatementFields::deserialize(d)?.statement_id,
            },
            4 => Self::StmtReset {
                statement_id: StatementFields::deserialize(d)?.statement_id,
            },
            5 => Self::InitDb {
                schema: InitDbFields::deserialize(d)?.schema,
            },
            6 => {
                de::IgnoredAny::deserialize(d)?;
                Self::Ping
            }
            7 => {
                de::IgnoredAny::deserialize(d)?;
                Self::Quit
            }
            _ => {
                let f = OtherFields::deserialize(d)?;
                Self::Other {
                    code: f.code,
                    data: f.data,
                }
            }
        })
    }
}

impl<'de> Deserialize<'de> for MysqlResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}

impl tagged::Tagged for MysqlResponse {
    const EXPECTING: &'static str = "a MySQL response (a map with a `kind` key)";
    const TAG: &'static str = "kind";
    const VARIANTS: &'static [&'static str] =
        &["ok", "err", "result_sets", "prepared", "local_infile"];

    fn content<'de, D: Deserializer<'de>>(variant: usize, d: D) -> Result<Self, D::Error> {
        Ok(match variant {
            0 => {
                let f = OkFields::deserialize(d)?;
                Self::Ok {
                    affected_rows: f.affected_rows,
                    last_insert_id: f.last_insert_id,
                    warnings: f.warnings,
                    info: f.info,
                }
            }
            1 => {
                let f = ErrFields::deserialize(d)?;
                Self::Err {
                    code: f.code,
                    sql_state: f.sql_state,
                    message: f.message,
                }
            }
            2 => Self::ResultSets {
                sets: ResultSetsFields::deserialize(d)?.sets,
            },
            3 => {
                let f = PreparedFields::deserialize(d)?;
                Self::Prepared {
                    statement_id: f.statement_id,
                    params: f.params,
                    columns: f.columns,
                }
            }
            _ => Self::LocalInfile {
                filename: LocalInfileFields::deserialize(d)?.filename,
            },
        })
    }
}

// The fields of struct variants (the map minus its tag).

#[derive(Deserialize)]
struct RawFields {
    data: Payload,
}

#[derive(Deserialize)]
struct SqlFields {
    sql: String,
}

#[derive(Deserialize)]
struct StmtExecuteFields {
    statement_id: u32,
    #[serde(default)]
    sql: Option<String>,
    params: Vec<MysqlValue>,
}

#[derive(Deserialize)]
struct StatementFields {
    statement_id: u32,
}

#[derive(Deserialize)]
struct InitDbFields {
    schema: String,
}

#[derive(Deserialize)]
struct OtherFields {
    code: u8,
    data: Payload,
}

#[derive(Deserialize)]
struct OkFields {
    affected_rows: u64,
    last_insert_id: u64,
    warnings: u16,
    #[serde(default)]
    info: String,
}

#[derive(Deserialize)]
struct ErrFields {
    code: u16,
    sql_state: String,
    message: String,
}

#[derive(Deserialize)]
struct ResultSetsFields {
    sets: Vec<MysqlResultSet>,
}

#[derive(Deserialize)]
struct PreparedFields {
    statement_id: u32,
    params: u16,
    columns: u16,
}

#[derive(Deserialize)]
struct LocalInfileFields {
    filename: String,
}

/// Untagged in JSON: `null`, an integer, a float, or a payload (string or `{"base64": …}`),
/// told apart by the JSON type without buffering.
impl<'de> Deserialize<'de> for MysqlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MysqlValueVisitor)
    }
}

struct MysqlValueVisitor;

impl<'de> Visitor<'de> for MysqlValueVisitor {
    type Value = MysqlValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null, a number, a string or a map {\"base64\": \"…\"}")
    }

    fn visit_unit<E: de::Error>(self) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Null)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MysqlValue, E> {
        Ok(i64::try_from(v).map_or(MysqlValue::UInt(v), MysqlValue::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MysqlValue, E> {
        PayloadVisitor.visit_str(v).map(MysqlValue::Bytes)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<MysqlValue, E> {
        PayloadVisitor.visit_string(v).map(MysqlValue::Bytes)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MysqlValue, A::Error> {
        PayloadVisitor.visit_map(map).map(MysqlValue::Bytes)
    }
}

/// Internally tagged enums read tag-first (see above).
mod tagged {
    use std::marker::PhantomData;

    use serde::de::{self, value::MapAccessDeserializer, DeserializeSeed, MapAccess, Visitor};
    use serde::Deserializer;

    /// An enum stored as a map with a tag key naming the variant and the variant's fields.
    pub(super) trait Tagged: Sized {
        /// What the error says was expected.
        const EXPECTING: &'static str;
        /// The tag key.
        const TAG: &'static str;
        /// Tag values, by variant index.
        const VARIANTS: &'static [&'static str];
        /// The variant at `variant` (an index into `VARIANTS`) from the other fields.
        fn content<'de, D: Deserializer<'de>>(variant: usize, d: D) -> Result<Self, D::Error>;
    }

    pub(super) fn deserialize<'de, T: Tagged, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        d.deserialize_any(TaggedVisitor::<T>(PhantomData))
    }

    struct TaggedVisitor<T>(PhantomData<T>);

    impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(T::EXPECTING)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let first = map.next_key_seed(FirstKey { tag: T::TAG })?;
            match first {
                None => Err(de::Error::missing_field(T::TAG)),
                Some(None) => {
                    let variant = map.next_value_seed(VariantSeed {
                        variants: T::VARIANTS,
                    })?;
                    T::content(variant, MapAccessDeserializer::new(map))
                }
                Some(Some(key)) => buffered::<T, A>(key, map),
            }
        }
    }

    /// The slow path: the tag is not the first key. Buffers the map, then decodes.
    fn buffered<'de, T: Tagged, A: MapAccess<'de>>(
        first_key: String,
        mut map: A,
    ) -> Result<T, A::Error> {
        let mut rest = serde_json::Map::new();
        rest.insert(first_key, map.next_value::<serde_json::Value>()?);
        let mut tag = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == T::TAG {
                if tag.is_some() {
                    return Err(de::Error::duplicate_field(T::TAG));
                }
                tag = Some(map.next_value_seed(VariantSeed {
                    variants: T::VARIANTS,
                })?);
            } else {
                let value = map.next_value::<serde_json::Value>()?;
                rest.insert(key, value);
            }
        }
        let variant = tag.ok_or_else(|| de::Error::missing_field(T::TAG))?;
        T::content(variant, serde_json::Value::Object(rest)).map_err(de::Error::custom)
    }

    /// Reads a map key: `None` when it is the tag, the key otherwise.
    struct FirstKey {
        tag: &'static str,
    }

    impl<'de> DeserializeSeed<'de> for FirstKey {
        type Value = Option<String>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
            d.deserialize_identifier(self)
        }
    }

    impl Visitor<'_> for FirstKey {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a field name")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<String>, E> {
            Ok((v != self.tag).then(|| v.to_owned()))
        }
    }

    /// Reads a tag value: the index of the variant it names.
    struct VariantSeed {
        variants: &'static [&'static str],
    }

    impl<'de> DeserializeSeed<'de> for VariantSeed {
        type Value = usize;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_identifier(self)
        }
    }

    impl Visitor<'_> for VariantSeed {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a variant name")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            self.variants
                .iter()
                .position(|name| *name == v)
                .ok_or_else(|| E::unknown_variant(v, self.variants))
        }
    }
}
