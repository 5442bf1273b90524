//! Replay targets: `[SERVICE=]URL` with `http://`, `https://`, `redis://`, `mysql://`.

use std::net::SocketAddr;

use deetune_protocols::Protocol;

use crate::ReplayError;

/// The scheme of a target URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://` (rustls, webpki roots)
    Https,
    /// `redis://`
    Redis,
    /// `mysql://`
    Mysql,
}

impl Scheme {
    /// The protocol the scheme speaks.
    #[must_use]
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Http | Self::Https => Protocol::Http,
            Self::Redis => Protocol::Redis,
            Self::Mysql => Protocol::Mysql,
        }
    }
}

/// Where to send one service's (or one protocol's) requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Service name the target applies to; none: every service of the protocol.
    pub service: Option<String>,
    /// URL scheme.
    pub scheme: Scheme,
    /// Host name or address.
    pub host: String,
    /// Port (scheme default when the URL has none).
    pub port: u16,
    /// User (Redis ACL user, MySQL user).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Redis database number or MySQL schema (the URL path).
    pub database: Option<String>,
}

impl Target {
    /// Parses `[SERVICE=]URL`.
    ///
    /// # Errors
    /// [`ReplayError::BadTarget`] when the text is not a supported URL.
    pub fn parse(spec: &str) -> Result<Self, ReplayError> {
        let bad = |reason: &str| ReplayError::BadTarget {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (service, url) = match spec.find("://") {
            Some(scheme_at) => match spec[..scheme_at].rfind('=') {
                Some(eq) => (Some(spec[..eq].to_owned()), &spec[eq + 1..]),
                None => (None, spec),
            },
            None => return Err(bad("expected a URL such as http://host:port")),
        };
        if service.as_deref() == Some("") {
            return Err(bad("empty service name before `=`"));
        }
        let (scheme_text, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "redis" => Scheme::Redis,
            "mysql" | "mariadb" => Scheme::Mysql,
            _ => return Err(bad("scheme must be http, https, redis or mysql")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty()).then(|| percent_decode(user)),
                    Some(percent_decode(pass)),
                ),
                None => (Some(percent_decode(u)), None),
            },
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p,
            None => match scheme {
                Scheme::Http => 80,
                Scheme::Https => 443,
                Scheme::Redis => 6379,
                Scheme::Mysql => 3306,
            },
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let database = (!path.is_empty()).then(|| percent_decode(path));
        if scheme == Scheme::Redis {
            if let Some(db) = &database {
                if db.parse::<u32>().is_err() {
                    return Err(bad("the Redis database must be a number"));
                }
            }
        }
        Ok(Self {
            service,
            scheme,
            host,
            port,
            user,
            password,
            database,
        })
    }

    /// The protocol of the target.
    #[must_use]
    pub fn protocol(&self) -> Protocol {
        self.scheme.protocol()
    }

    /// `host:port` as used in a `Host` header (port omitted when it is the default).
    #[must_use]
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.scheme, self.port) {
            (Scheme::Http, 80) | (Scheme::Https, 443) => host,
            _ => format!("{host}:{}", self.port),
        }
    }

    /// The target as text with the password hidden.
    #[must_use]
    pub fn display(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Redis => "redis",
            Scheme::Mysql => "mysql",
        };
        let service = self
            .service
            .as_ref()
            .map(|s| format!("{s}="))
            .unwrap_or_default();
        let user = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, Some(_)) => ":***@".to_owned(),
            (None, None) => String::new(),
        };
        let db = self
            .database
            .as_ref()
            .map(|d| format!("/{d}"))
            .unwrap_or_default();
        format!(
            "{service}{scheme}://{user}{}{db}",
            self.authority_with_port()
        )
    }

    fn authority_with_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this target applies to an exchange of `protocol` recorded for `service`.
    #[must_use]
    pub fn applies_to(&self, protocol: Protocol, service: Option<&str>) -> bool {
        self.protocol() == protocol
            && match &self.service {
                None => true,
                Some(s) => service == Some(s.as_str()),
            }
    }
}

/// Picks the target for an exchange: a target naming the service wins over a protocol-wide
/// one.
pub(crate) fn choose<'a, T: AsRef<Target>>(
    targets: &'a [T],
    protocol: Protocol,
    service: Option<&str>,
) -> Option<&'a T> {
    targets
        .iter()
        .find(|t| t.as_ref().service.is_some() && t.as_ref().applies_to(protocol, service))
        .or_else(|| {
            targets
                .iter()
                .find(|t| t.as_ref().service.is_none() && t.as_ref().applies_to(protocol, service))
        })
}

impl AsRef<Target> for Target {
    fn as_ref(&self) -> &Target {
        self
    }
}

/// A target with its addresses looked up once at the start.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) target: Target,
    /// Empty when the lookup failed (`lookup_error` says why).
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) lookup_error: Option<String>,
}

impl AsRef<Target> for Resolved {
    fn as_ref(&self) -> &Target {
        &self.target
    }
}

impl AsRef<Target> for std::sync::Arc<Resolved> {
    fn as_ref(&self) -> &Target {
        &self.target
    }
}

pub(crate) async fn resolve(target: Target) -> Resolved {
    let looked_up = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map(Iterator::collect::<Vec<_>>);
    match looked_up {
        Ok(addrs) => Resolved {
            addrs,
            target,
            lookup_error: None,
        },
        Err(e) => Resolved {
            lookup_error: Some(format!("cannot resolve {}: {e}", target.host)),
            target,
            addrs: Vec::new(),
        },
    }
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok()?))),
        None => Some((s.to_owned(), None)),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("checkout=http://staging:8080").unwrap();
        assert_eq!(t.service.as_deref(), Some("checkout"));
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Http, "staging", 8080)
        );
        let r = Target::parse("redis://:s%40cret@127.0.0.1:6380/2").unwrap();
        assert_eq!(r.password.as_deref(), Some("s@cret"));
        assert_eq!(r.database.as_deref(), Some("2"));
        assert_eq!(r.service, None);
        let m = Target::parse("db=mysql://app:pw@[::1]/shop").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 3306));
        assert_eq!(m.user.as_deref(), Some("app"));
        assert_eq!(m.database.as_deref(), Some("shop"));
        assert!(!m.display().contains("pw"));
        assert_eq!(Target::parse("https://x").unwrap().port, 443);
    }

    #[test]
    fn rejects_bad_targets() {
        for bad in [
            "staging:8080",
            "ftp://x",
            "http://",
            "http://x:notaport",
            "=http://x",
            "redis://x/abc",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ReplayError::BadTarget { .. })),
                "{bad}"
            );
        }
    }
}
