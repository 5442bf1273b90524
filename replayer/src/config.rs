//! Replay configuration: one struct for the CLI flags and for in-process callers.

use std::time::Duration;

use crate::rules::RulesFile;
use crate::target::Target;
use crate::ReplayError;

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Pace {
    /// As fast as the targets answer (within `concurrency`).
    #[default]
    AsFastAsPossible,
    /// The recorded timing, scaled: 2.0 replays twice as fast as recorded.
    Speed(f64),
    /// A fixed rate over all sessions, in requests per second.
    Rps(f64),
}

impl Pace {
    /// Parses `--speed` text: `1x`, `2x`, `0.5`, ….
    ///
    /// # Errors
    /// A message when the text is not a positive number.
    pub fn parse_speed(text: &str) -> Result<Self, String> {
        let n: f64 = text
            .trim()
            .trim_end_matches(['x', 'X'])
            .parse()
            .map_err(|_| format!("`{text}` is not a speed such as 1x or 2.5x"))?;
        if n.is_finite() && n > 0.0 {
            Ok(Self::Speed(n))
        } else {
            Err(format!("speed must be positive, not `{text}`"))
        }
    }
}

/// Everything a replay needs besides the recording.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Candidate targets (`[SERVICE=]URL`).
    pub targets: Vec<Target>,
    /// Baseline targets for noise detection (the current version), same syntax.
    pub baselines: Vec<Target>,
    /// Sessions replayed at the same time.
    pub concurrency: usize,
    /// Pace.
    pub pace: Pace,
    /// Only exchanges whose interface matches one of these globs (`GET /api/*`); empty: all.
    pub interfaces: Vec<String>,
    /// Only reads: HTTP GET/HEAD/OPTIONS, Redis read commands, SQL SELECT/SHOW.
    pub only_reads: bool,
    /// Headers set on every HTTP request (replacing recorded ones of the same name).
    pub set_headers: Vec<(String, String)>,
    /// HTTP path prefix rewrites `FROM` → `TO`, first match wins.
    pub rewrite_path: Vec<(String, String)>,
    /// Allow a target that is the recorded production server.
    pub allow_production_target: bool,
    /// Diff rules (flags merged into the rules file).
    pub rules: RulesFile,
    /// Timeout for connecting and for each response.
    pub timeout: Duration,
    /// https targets and baselines: accept any server certificate (self-signed staging).
    /// The connection is still encrypted, but the server is not authenticated.
    pub insecure: bool,
    /// https targets and baselines: PEM files of CA certificates trusted in addition to the
    /// built-in web roots (a staging CA, or a self-signed certificate itself).
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Non-passing exchanges whose full responses are kept for the HTML report.
    pub max_details: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            baselines: Vec::new(),
            concurrency: 32,
            pace: Pace::AsFastAsPossible,
            interfaces: Vec::new(),
            only_reads: false,
            set_headers: Vec::new(),
            rewrite_path: Vec::new(),
            allow_production_target: false,
            rules: RulesFile::default(),
            timeout: Duration::from_secs(10),
            insecure: false,
            ca_certs: Vec::new(),
            progress: false,
            max_details: 500,
        }
    }
}

impl ReplayConfig {
    /// A configuration replaying against these targets (`[SERVICE=]URL`).
    ///
    /// # Errors
    /// [`ReplayError::BadTarget`] for a malformed target.
    pub fn with_targets<S: AsRef<str>>(targets: &[S]) -> Result<Self, ReplayError> {
        Ok(Self {
            targets: targets
                .iter()
                .map(|t| Target::parse(t.as_ref()))
                .collect::<Result<_, _>>()?,
            ..Self::default()
        })
    }
}

/// Parses `Name: value` (`--set-header`).
///
/// # Errors
/// A message when there is no colon or the name is empty.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (n, v) = text
        .split_once(':')
        .ok_or_else(|| format!("expected `Name: value`, got `{text}`"))?;
    let n = n.trim();
    if n.is_empty()
        || n.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("bad header name in `{text}`"));
    }
    Ok((n.to_owned(), v.trim().to_owned()))
}

/// Parses `FROM=TO` (`--rewrite-path`).
///
/// # Errors
/// A message when there is no `=` or `FROM` does not start with `/`.
pub fn parse_rewrite(text: &str) -> Result<(String, String), String> {
    let (f, t) = text
        .split_once('=')
        .ok_or_else(|| format!("expected `FROM=TO`, got `{text}`"))?;
    if !f.starts_with('/') || !t.starts_with('/') {
        return Err(format!("paths must start with `/` in `{text}`"));
    }
    Ok((f.to_owned(), t.to_owned()))
}

/// Read-only commands, for `--only-reads`.
pub(crate) fn is_read(ex: &deetune_protocols::Exchange) -> bool {
    use deetune_protocols::{MysqlCommand, Request};
    match &ex.request {
        Request::Http(r) => matches!(r.method.as_str(), "GET" | "HEAD" | "OPTIONS"),
        Request::Redis(c) => REDIS_READS.contains(&c.name().as_str()),
        Request::Mysql(c) => match c {
            MysqlCommand::Ping | MysqlCommand::InitDb { .. } | MysqlCommand::StmtClose { .. } => {
                true
            }
            other => other.sql().is_some_and(|sql| {
                let verb = sql.split_whitespace().next().unwrap_or("");
                ["SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"]
                    .iter()
                    .any(|v| verb.eq_ignore_ascii_case(v))
            }),
        },
        Request::Raw { .. } => false,
    }
}

const REDIS_READS: &[&str] = &[
    "GET",
    "MGET",
    "GETRANGE",
    "STRLEN",
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "KEYS",
    "SCAN",
    "DBSIZE",
    "RANDOMKEY",
    "HGET",
    "HMGET",
    "HGETALL",
    "HKEYS",
    "HVALS",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HSCAN",
    "HRANDFIELD",
    "LRANGE",
    "LLEN",
    "LINDEX",
    "LPOS",
    "SMEMBERS",
    "SISMEMBER",
    "SMISMEMBER",
    "SCARD",
    "SSCAN",
    "SRANDMEMBER",
    "SINTER",
    "SUNION",
    "SDIFF",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZRANGEBYLEX",
    "ZREVRANGE",
    "ZREVRANGEBYSCORE",
    "ZSCORE",
    "ZMSCORE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZRANK",
    "ZREVRANK",
    "ZSCAN",
    "BITCOUNT",
    "GETBIT",
    "BITPOS",
    "PFCOUNT",
    "XRANGE",
    "XREVRANGE",
    "XLEN",
    "XREAD",
    "XINFO",
    "GEOPOS",
    "GEODIST",
    "GEOSEARCH",
    "GEOHASH",
    "PING",
    "ECHO",
    "INFO",
    "TIME",
    "SELECT",
    "HELLO",
    "CLIENT",
    "OBJECT",
    "MEMORY",
    "DUMP",
    "LCS",
    "SUBSTR",
];
