//! Task policies: a [`TaskSpec`] validated and compiled into a [`Policy`] that decides, per
//! exchange, whether a task wants it.

use deetune_protocols::{Exchange, Protocol};
use deetune_store::TaskSpec;
use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::redact::{JsonPath, Redactor};

/// A policy field that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A service or interface glob does not parse.
    #[error("invalid {field} pattern `{pattern}`")]
    BadGlob {
        /// Which field (`from`, `to`, `interface`).
        field: &'static str,
        /// The pattern as given.
        pattern: String,
        /// What globset said.
        #[source]
        source: globset::Error,
    },
    /// An interface pattern is empty or malformed.
    #[error("invalid interface `{pattern}`: {reason}")]
    BadInterface {
        /// The pattern as given.
        pattern: String,
        /// Why.
        reason: &'static str,
    },
    /// `count` is zero.
    #[error("count must be at least 1")]
    ZeroCount,
    /// `duration` is zero.
    #[error("duration must be longer than 0 seconds")]
    ZeroDuration,
    /// `sample` is not in (0, 1].
    #[error("sample must be in (0, 1], got {0}")]
    BadSample(f64),
    /// `max_body` is zero.
    #[error("max body must be at least 1 byte")]
    ZeroMaxBody,
    /// `protocol` is `unknown`.
    #[error("protocol must be http, redis or mysql")]
    UnknownProtocol,
    /// A header name to redact is not a valid header name.
    #[error("invalid header name `{0}` to redact")]
    BadHeader(String),
    /// A JSON path to redact does not parse.
    #[error("invalid JSON path `{path}`: {reason}")]
    BadJsonPath {
        /// The path as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
}

/// One interface pattern.
#[derive(Debug, Clone)]
enum InterfacePattern {
    /// A bare word (`GET`, `SELECT`, `PING`): matches the first word of the interface,
    /// case-insensitively (`SELECT` matches `SELECT users`).
    Verb(String),
    /// HTTP `METHOD path-glob` or `path-glob`, or any glob over the whole interface.
    Glob {
        /// Method when given (upper case), else any.
        method: Option<String>,
        /// Glob over the path (HTTP) or the whole interface (others).
        glob: GlobMatcher,
        /// The pattern starts with `/`: an HTTP path.
        path_only: bool,
    },
}

impl InterfacePattern {
    fn parse(pattern: &str) -> Result<Self, PolicyError> {
        let p = pattern.trim();
        if p.is_empty() {
            return Err(PolicyError::BadInterface {
                pattern: pattern.to_owned(),
                reason: "empty",
            });
        }
        let glob = |g: &str| -> Result<GlobMatcher, PolicyError> {
            GlobBuilder::new(g)
                .case_insensitive(false)
                .literal_separator(false)
                .build()
                .map(|g: Glob| g.compile_matcher())
                .map_err(|source| PolicyError::BadGlob {
                    field: "interface",
                    pattern: pattern.to_owned(),
                    source,
                })
        };
        let mut words = p.splitn(2, char::is_whitespace);
        let first = words.next().unwrap_or_default();
        let rest = words.next().map(str::trim);
        if first.starts_with('/') {
            if rest.is_some() {
                return Err(PolicyError::BadInterface {
                    pattern: pattern.to_owned(),
                    reason:
                        "a path pattern is one word (`/api/*`) or follows a method (`GET /api/*`)",
                });
            }
            return Ok(Self::Glob {
                method: None,
                glob: glob(first)?,
                path_only: true,
            });
        }
        match rest {
            None if !first.contains(['*', '?', '[', '{']) => {
                Ok(Self::Verb(first.to_ascii_uppercase()))
            }
            None => Ok(Self::Glob {
                method: None,
                glob: glob(&first.to_ascii_uppercase())?,
                path_only: false,
            }),
            Some(rest) if rest.starts_with('/') => Ok(Self::Glob {
                method: (first != "*").then(|| first.to_ascii_uppercase()),
                glob: glob(rest)?,
                path_only: true,
            }),
            Some(rest) => Ok(Self::Glob {
                method: None,
                glob: glob(&format!("{} {rest}", first.to_ascii_uppercase()))?,
                path_only: false,
            }),
        }
    }

    fn matches(&self, interface: &str) -> bool {
        match self {
            Self::Verb(v) => interface
                .split(' ')
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(v)),
            Self::Glob {
                method,
                glob,
                path_only: true,
            } => {
                let (m, path) = interface.split_once(' ').unwrap_or(("", interface));
                method.as_ref().is_none_or(|want| want == m) && glob.is_match(path)
            }
            Self::Glob { glob, .. } => glob.is_match(interface),
        }
    }
}

/// A compiled task policy.
#[derive(Debug, Clone)]
pub struct Policy {
    from: Option<GlobMatcher>,
    to: Option<GlobMatcher>,
    protocol: Option<Protocol>,
    interfaces: Vec<InterfacePattern>,
    /// Stop after this many recorded exchanges.
    pub count: Option<u64>,
    /// Stop after this long (ms).
    pub duration_ms: Option<u64>,
    /// Keep this fraction of matches.
    pub sample: Option<f64>,
    /// Cut bodies at this size.
    pub max_body: Option<u64>,
    /// Redaction (defaults plus the task's rules).
    pub redactor: Redactor,
}

fn service_glob(
    field: &'static str,
    pattern: Option<&String>,
) -> Result<Option<GlobMatcher>, PolicyError> {
    pattern
        .map(|p| {
            GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|source| PolicyError::BadGlob {
                    field,
                    pattern: p.clone(),
                    source,
                })
        })
        .transpose()
}

impl Policy {
    /// Validates `spec` and compiles it.
    ///
    /// # Errors
    /// The first field that does not make sense, as a [`PolicyError`].
    pub fn compile(spec: &TaskSpec) -> Result<Self, PolicyError> {
        let from = service_glob("from", spec.from.as_ref())?;
        let to = service_glob("to", spec.to.as_ref())?;
        if spec.protocol == Some(Protocol::Unknown) {
            return Err(PolicyError::UnknownProtocol);
        }
        let interfaces = spec
            .interfaces
            .iter()
            .map(|p| InterfacePattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        if spec.count == Some(0) {
            return Err(PolicyError::ZeroCount);
        }
        if spec.duration_secs == Some(0) {
            return Err(PolicyError::ZeroDuration);
        }
        if let Some(s) = spec.sample {
            if !(s > 0.0 && s <= 1.0) {
                return Err(PolicyError::BadSample(s));
            }
        }
        if spec.max_body == Some(0) {
            return Err(PolicyError::ZeroMaxBody);
        }
        for h in &spec.redact_headers {
            let valid = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                return Err(PolicyError::BadHeader(h.clone()));
            }
        }
        let paths = spec
            .redact_json
            .iter()
            .map(|p| JsonPath::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            from,
            to,
            protocol: spec.protocol,
            interfaces,
            count: spec.count,
            duration_ms: spec.duration_secs.map(|s| s.saturating_mul(1000)),
            sample: spec.sample,
            max_body: spec.max_body,
            redactor: Redactor::new(&spec.redact_headers, paths),
        })
    }

    /// Whether a connection between these services can carry exchanges this policy wants
    /// (protocol and interfaces aside).
    #[must_use]
    pub fn matches_pair(&self, client: &str, server: &str) -> bool {
        self.from.as_ref().is_none_or(|g| g.is_match(client))
            && self.to.as_ref().is_none_or(|g| g.is_match(server))
    }

    /// Whether this policy wants `ex` (its connection services must be filled in).
    #[must_use]
    pub fn matches(&self, ex: &Exchange) -> bool {
        let client = ex.conn.client.service.as_deref().unwrap_or("");
        let server = ex.conn.server.service.as_deref().unwrap_or("");
        self.matches_pair(client, server) && self.matches_rest(ex, &mut None)
    }

    /// Protocol and interfaces (the pair is checked apart, once per connection); `iface`
    /// caches the exchange's interface string across the tasks it is offered to.
    pub(crate) fn matches_rest(&self, ex: &Exchange, iface: &mut Option<String>) -> bool {
        if self.protocol.is_some_and(|p| p != ex.protocol) {
            return false;
        }
        if self.interfaces.is_empty() {
            return true;
        }
        let iface = iface.get_or_insert_with(|| ex.interface());
        self.interfaces.iter().any(|p| p.matches(iface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(p: &str, i: &str) -> bool {
        InterfacePattern::parse(p).unwrap().matches(i)
    }

    #[test]
    fn interface_patterns() {
        assert!(iface("POST /api/orders*", "POST /api/orders"));
        assert!(iface("POST /api/orders*", "POST /api/orders/12/items"));
        assert!(!iface("POST /api/orders*", "GET /api/orders"));
        assert!(!iface("POST /api/orders*", "POST /api/users"));
        assert!(iface("/health", "GET /health"));
        assert!(iface("* /x", "PUT /x"));
        assert!(iface("get", "GET"));
        assert!(iface("SELECT", "SELECT users"));
        assert!(!iface("SELECT", "INSERT users"));
        assert!(iface("select users", "SELECT users"));
        assert!(!iface("SELECT users", "SELECT orders"));
        assert!(iface("H*", "HGETALL"));
    }

    #[test]
    fn validation_errors() {
        let bad = |spec: TaskSpec| Policy::compile(&spec).unwrap_err();
        assert!(matches!(
            bad(TaskSpec {
                from: Some("web[".into()),
                ..TaskSpec::default()
            }),
            PolicyError::BadGlob { field: "from", .. }
        ));
        assert!(matches!(
            bad(TaskSpec {
                interfaces: vec!["GET /a[".into()],
                ..TaskSpec::default()
            }),
            PolicyError::BadGlob {
                field: "interface",
                ..
            }
        ));
        assert!(matches!(
            bad(TaskSpec {
                interfaces: vec![" ".into()],
                ..TaskSpec::default()
            }),
            PolicyError::BadInterface { .. }
        ));
        assert!(matches!(
            bad(TaskSpec {
                count: Some(0),
                ..TaskSpec::default()
            }),
            PolicyError::ZeroCount
        ));
        assert!(matches!(
            bad(TaskSpec {
                duration_secs: Some(0),
                ..TaskSpec::default()
            }),
            PolicyError::ZeroDuration
        ));
        assert!(matches!(
            bad(TaskSpec {
                sample: Some(1.5),
                ..TaskSpec::default()
            }),
            PolicyError::BadSample(_)
        ));
        assert!(matches!(
            bad(TaskSpec {
                sample: Some(f64::NAN),
                ..TaskSpec::default()
            }),
            PolicyError::BadSample(_)
        ));
        assert!(matches!(
            bad(TaskSpec {
                protocol: Some(Protocol::Unknown),
                ..TaskSpec::default()
            }),
            PolicyError::UnknownProtocol
        ));
        assert!(matches!(
            bad(TaskSpec {
                redact_headers: vec!["X Bad".into()],
                ..TaskSpec::default()
            }),
            PolicyError::BadHeader(_)
        ));
        assert!(matches!(
            bad(TaskSpec {
                redact_json: vec!["card.number".into()],
                ..TaskSpec::default()
            }),
            PolicyError::BadJsonPath { .. }
        ));
    }

    #[test]
    fn service_pair() {
        let p = Policy::compile(&TaskSpec {
            from: Some("web*".into()),
            to: Some("checkout".into()),
            ..TaskSpec::default()
        })
        .unwrap();
        assert!(p.matches_pair("web-1", "checkout"));
        assert!(!p.matches_pair("web-1", "redis"));
        assert!(!p.matches_pair("batch", "checkout"));
    }
}
