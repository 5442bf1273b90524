//! Service naming: every endpoint of a connection gets a service name from the rules of the
//! configuration file, or a default (the process name for local processes, `ip:port` for
//! remote servers, the address for remote clients).

use std::collections::HashMap;
use std::net::IpAddr;

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// A configuration rule: an endpoint that satisfies every condition given is named `name`.
/// Rules are tried in file order; the first match wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceRule {
    /// Service name.
    pub name: String,
    /// The endpoint's TCP port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Process name (`comm`), a glob (`php-fpm*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Executable path, a glob (`/usr/sbin/nginx`, `/opt/shop/*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// cgroup v2 path, a glob (`/system.slice/checkout.service`, `/kubepods/*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Container id (or a prefix of it) appearing in the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Address range in CIDR notation (`10.1.0.0/16`, `::1/128`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
}

/// A rule that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ServiceRuleError {
    /// Empty name or no condition.
    #[error("service rule #{index} (`{name}`): {reason}")]
    Invalid {
        /// Position in the file, from 1.
        index: usize,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What is known about one end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Address.
    pub addr: Option<IpAddr>,
    /// Port.
    pub port: u16,
    /// Process id when local.
    pub pid: Option<u32>,
    /// Process name when local.
    pub process: Option<String>,
    /// Executable path when local.
    pub exe: Option<String>,
    /// cgroup path when local.
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = a.trim().parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = if b.is_empty() {
            max
        } else {
            b.trim().parse().ok()?
        };
        (bits <= max).then_some(Self { net, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
#[must_use]
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    port: Option<u16>,
    process: Option<GlobMatcher>,
    exe: Option<GlobMatcher>,
    cgroup: Option<GlobMatcher>,
    container: Option<String>,
    cidr: Option<Cidr>,
}

/// Names endpoints.
#[derive(Debug, Clone, Default)]
pub struct ServiceNamer {
    rules: Vec<Compiled>,
}

impl ServiceNamer {
    /// Compiles rules.
    ///
    /// # Errors
    /// A rule without a name or a condition, or with a bad glob or CIDR.
    pub fn new(rules: &[ServiceRule]) -> Result<Self, ServiceRuleError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let err = |reason: String| ServiceRuleError::Invalid {
                index: i + 1,
                name: r.name.clone(),
                reason,
            };
            if r.name.trim().is_empty() {
                return Err(err("no name".into()));
            }
            let glob =
                |g: &Option<String>, what: &str| -> Result<Option<GlobMatcher>, ServiceRuleError> {
                    g.as_ref()
                        .map(|p| {
                            GlobBuilder::new(p)
                                .literal_separator(false)
                                .build()
                                .map(|g| g.compile_matcher())
                                .map_err(|e| err(format!("bad {what} glob `{p}`: {e}")))
                        })
                        .transpose()
                };
            let cidr = r
                .cidr
                .as_ref()
                .map(|c| Cidr::parse(c).ok_or_else(|| err(format!("bad CIDR `{c}`"))))
                .transpose()?;
            let c = Compiled {
                name: r.name.clone(),
                port: r.port,
                process: glob(&r.process, "process")?,
                exe: glob(&r.exe, "exe")?,
                cgroup: glob(&r.cgroup, "cgroup")?,
                container: r.container.clone(),
                cidr,
            };
            if c.port.is_none()
                && c.process.is_none()
                && c.exe.is_none()
                && c.cgroup.is_none()
                && c.container.is_none()
                && c.cidr.is_none()
            {
                return Err(err(
                    "no condition (port, process, exe, cgroup, container or cidr)".into(),
                ));
            }
            out.push(c);
        }
        Ok(Self { rules: out })
    }

    /// The service name of an endpoint; `server` selects the default for remote ends
    /// (`ip:port` for a server, `ip` for a client).
    #[must_use]
    pub fn name(&self, e: &EndpointFacts, server: bool) -> String {
        for r in &self.rules {
            let ok = r.port.is_none_or(|p| p == e.port)
                && r.process
                    .as_ref()
                    .is_none_or(|g| e.process.as_deref().is_some_and(|p| g.is_match(p)))
                && r.exe
                    .as_ref()
                    .is_none_or(|g| e.exe.as_deref().is_some_and(|p| g.is_match(p)))
                && r.cgroup
                    .as_ref()
                    .is_none_or(|g| e.cgroup.as_deref().is_some_and(|p| g.is_match(p)))
                && r.container
                    .as_ref()
                    .is_none_or(|c| e.cgroup.as_deref().is_some_and(|p| p.contains(c.as_str())))
                && r.cidr
                    .as_ref()
                    .is_none_or(|c| e.addr.is_some_and(|a| c.contains(a)));
            if ok {
                return r.name.clone();
            }
        }
        if let Some(p) = &e.process {
            return p.clone();
        }
        match (e.addr, server) {
            (Some(IpAddr::V6(a)), true) => format!("[{a}]:{}", e.port),
            (Some(a), true) => format!("{a}:{}", e.port),
            (Some(a), false) => a.to_string(),
            (None, _) => "unknown".to_owned(),
        }
    }
}

/// Executable and cgroup of local processes, read from `/proc` once per pid.
#[derive(Debug, Default)]
pub struct ProcCache {
    by_pid: HashMap<u32, (Option<String>, Option<String>)>,
}

impl ProcCache {
    /// `(exe, cgroup)` of `pid`, when the process still exists.
    pub fn get(&mut self, pid: u32) -> (Option<String>, Option<String>) {
        if self.by_pid.len() > 65_536 {
            self.by_pid.clear();
        }
        self.by_pid
            .entry(pid)
            .or_insert_with(|| {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned());
                let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("0::"))
                            .map(str::to_owned)
                    });
                (exe, cgroup)
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_defaults() {
        let n = ServiceNamer::new(&[
            ServiceRule {
                name: "checkout".into(),
                port: Some(8080),
                ..ServiceRule::default()
            },
            ServiceRule {
                name: "db".into(),
                cidr: Some("10.1.0.0/16".into()),
                ..ServiceRule::default()
            },
            ServiceRule {
                name: "web".into(),
                process: Some("ngin*".into()),
                ..ServiceRule::default()
            },
            ServiceRule {
                name: "k8s".into(),
                container: Some("abc123".into()),
                ..ServiceRule::default()
            },
        ])
        .unwrap();
        let e = |addr: &str, port, process: Option<&str>, cgroup: Option<&str>| EndpointFacts {
            addr: Some(addr.parse().unwrap()),
            port,
            process: process.map(str::to_owned),
            cgroup: cgroup.map(str::to_owned),
            ..EndpointFacts::default()
        };
        assert_eq!(
            n.name(&e("127.0.0.1", 8080, Some("python3"), None), true),
            "checkout"
        );
        assert_eq!(n.name(&e("10.1.2.3", 3306, None, None), true), "db");
        assert_eq!(n.name(&e("::ffff:10.1.2.3", 3306, None, None), true), "db");
        assert_eq!(
            n.name(&e("127.0.0.1", 80, Some("nginx"), None), true),
            "web"
        );
        assert_eq!(
            n.name(
                &e("127.0.0.1", 80, Some("x"), Some("/kubepods/pod1/abc123def")),
                true
            ),
            "k8s"
        );
        assert_eq!(
            n.name(&e("127.0.0.1", 5000, Some("redis-server"), None), true),
            "redis-server"
        );
        assert_eq!(
            n.name(&e("192.0.2.1", 443, None, None), true),
            "192.0.2.1:443"
        );
        assert_eq!(
            n.name(&e("192.0.2.1", 40000, None, None), false),
            "192.0.2.1"
        );
    }

    #[test]
    fn bad_rules() {
        assert!(ServiceNamer::new(&[ServiceRule {
            name: "x".into(),
            ..ServiceRule::default()
        }])
        .is_err());
        assert!(ServiceNamer::new(&[ServiceRule {
            name: String::new(),
            port: Some(1),
            ..ServiceRule::default()
        }])
        .is_err());
        assert!(ServiceNamer::new(&[ServiceRule {
            name: "x".into(),
            cidr: Some("10.0.0.0/33".into()),
            ..ServiceRule::default()
        }])
        .is_err());
    }
}
