//! Diff rules: paths to ignore, arrays to compare without order, numeric tolerances; for
//! every interface or per interface. The same TOML format is read by `--rules` and written by
//! `--write-noise`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::path::Path;
use crate::ReplayError;

/// Headers never compared unless a rules file says otherwise: hop-by-hop headers and headers
/// that differ between any two responses (dates, caches, server identity, request ids).
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "age",
    "expires",
    "last-modified",
    "etag",
    "set-cookie",
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "traceparent",
    "tracestate",
    "x-runtime",
    "x-response-time",
    "via",
    "alt-svc",
    "report-to",
    "nel",
];

/// A numeric tolerance: numbers at `path` are equal when they differ by at most `absolute`
/// or by at most `relative` times the recorded value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// Path pattern (`body:$.total`).
    pub path: String,
    /// Largest absolute difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<f64>,
    /// Largest relative difference (0.01 = 1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
}

/// Rules for one interface (or every interface at the top of the file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterfaceRules {
    /// Paths whose differences are ignored (`header:etag`, `body:$.items[*].updated_at`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// Arrays compared as multisets (`body:$.tags`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unordered: Vec<String>,
    /// Numeric tolerances.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerance: Vec<Tolerance>,
}

/// A rules file (TOML).
///
/// ```toml
/// ignore = ["header:x-cache", "body:$.meta.generated_at"]
/// unordered = ["body:$.tags"]
/// unordered_rows = true          # MySQL result rows compared without order
/// compare_default_headers = false
///
/// [[tolerance]]
/// path = "body:$.total"
/// absolute = 0.01
///
/// [interface."GET /api/orders"]
/// ignore = ["body:$.items[*].updated_at"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulesFile {
    /// Paths ignored for every interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// Arrays compared without order for every interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unordered: Vec<String>,
    /// Numeric tolerances for every interface.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tolerance: Vec<Tolerance>,
    /// Compare MySQL result rows without order.
    #[serde(skip_serializing_if = "is_false")]
    pub unordered_rows: bool,
    /// Also compare the headers of [`DEFAULT_IGNORED_HEADERS`].
    #[serde(skip_serializing_if = "is_false")]
    pub compare_default_headers: bool,
    /// Rules for one interface (`GET /api/orders`, `HGETALL`, `SELECT users`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub interface: BTreeMap<String, InterfaceRules>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if signature"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl RulesFile {
    /// Reads a rules file.
    ///
    /// # Errors
    /// [`ReplayError::RulesFile`] when it cannot be read or parsed.
    pub fn load(path: &std::path::Path) -> Result<Self, ReplayError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReplayError::RulesFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ReplayError::RulesFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The file as TOML text.
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Adds the rules of `other` to these.
    pub fn merge(&mut self, other: Self) {
        self.ignore.extend(other.ignore);
        self.unordered.extend(other.unordered);
        self.tolerance.extend(other.tolerance);
        self.unordered_rows |= other.unordered_rows;
        self.compare_default_headers |= other.compare_default_headers;
        for (k, v) in other.interface {
            let e = self.interface.entry(k).or_default();
            e.ignore.extend(v.ignore);
            e.unordered.extend(v.unordered);
            e.tolerance.extend(v.tolerance);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledTolerance {
    pub(crate) path: Path,
    pub(crate) absolute: f64,
    pub(crate) relative: f64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    pub(crate) ignore: Vec<Path>,
    pub(crate) unordered: Vec<Path>,
    pub(crate) tolerance: Vec<CompiledTolerance>,
}

impl RuleSet {
    fn compile(r: &InterfaceRules) -> Result<Self, ReplayError> {
        let parse = |t: &str| {
            Path::parse(t).map_err(|reason| ReplayError::BadRule {
                rule: t.to_owned(),
                reason,
            })
        };
        Ok(Self {
            ignore: r
                .ignore
                .iter()
                .map(|t| parse(t))
                .collect::<Result<_, _>>()?,
            unordered: r
                .unordered
                .iter()
                .map(|t| parse(t))
                .collect::<Result<_, _>>()?,
            tolerance: r
                .tolerance
                .iter()
                .map(|t| {
                    Ok(CompiledTolerance {
                        path: parse(&t.path)?,
                        absolute: t.absolute.unwrap_or(0.0),
                        relative: t.relative.unwrap_or(0.0),
                    })
                })
                .collect::<Result<_, ReplayError>>()?,
        })
    }
}

/// Rules compiled for matching.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    pub(crate) global: RuleSet,
    /// Built-in ignores (default headers); kept apart so that they do not make an exchange
    /// "noise-only".
    pub(crate) builtin: Vec<Path>,
    pub(crate) per_interface: BTreeMap<String, RuleSet>,
}

impl Rules {
    pub(crate) fn compile(file: &RulesFile) -> Result<Self, ReplayError> {
        let mut global = RuleSet::compile(&InterfaceRules {
            ignore: file.ignore.clone(),
            unordered: file.unordered.clone(),
            tolerance: file.tolerance.clone(),
        })?;
        if file.unordered_rows {
            global
                .unordered
                .push(Path::parse("result:$.sets[*].rows").map_err(|reason| {
                    ReplayError::BadRule {
                        rule: "unordered_rows".to_owned(),
                        reason,
                    }
                })?);
        }
        let builtin = if file.compare_default_headers {
            Vec::new()
        } else {
            DEFAULT_IGNORED_HEADERS
                .iter()
                .map(|h| {
                    Path(vec![
                        crate::path::Seg::Key("header".into()),
                        crate::path::Seg::Key((*h).into()),
                    ])
                })
                .collect()
        };
        let per_interface = file
            .interface
            .iter()
            .map(|(k, v)| Ok((k.clone(), RuleSet::compile(v)?)))
            .collect::<Result<_, ReplayError>>()?;
        Ok(Self {
            global,
            builtin,
            per_interface,
        })
    }

    pub(crate) fn view<'a>(&'a self, interface: &str) -> RuleView<'a> {
        RuleView {
            rules: self,
            local: self.per_interface.get(interface),
        }
    }
}

/// The rules that apply to one interface.
#[derive(Clone, Copy)]
pub(crate) struct RuleView<'a> {
    rules: &'a Rules,
    local: Option<&'a RuleSet>,
}

/// Why a difference does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// A built-in ignore (volatile header): dropped silently.
    Builtin,
    /// A user rule: reported as noise.
    Rule,
}

impl RuleView<'_> {
    fn sets(&self) -> impl Iterator<Item = &RuleSet> {
        std::iter::once(&self.rules.global).chain(self.local)
    }

    pub(crate) fn ignored(&self, path: &Path) -> Option<Ignored> {
        if self.rules.builtin.iter().any(|p| p.matches(path)) {
            return Some(Ignored::Builtin);
        }
        self.sets()
            .any(|s| s.ignore.iter().any(|p| p.matches(path)))
            .then_some(Ignored::Rule)
    }

    pub(crate) fn unordered(&self, path: &Path) -> bool {
        self.sets().any(|s| {
            s.unordered
                .iter()
                .any(|p| p.0.len() == path.0.len() && p.matches(path))
        })
    }

    pub(crate) fn tolerance(&self, path: &Path) -> Option<(f64, f64)> {
        self.sets()
            .flat_map(|s| s.tolerance.iter())
            .find(|t| t.path.matches(path))
            .map(|t| (t.absolute, t.relative))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_errors() {
        let text = r#"
ignore = ["header:x-cache"]
unordered_rows = true
[[tolerance]]
path = "body:$.total"
absolute = 0.01
[interface."GET /api/orders"]
ignore = ["body:$.items[*].updated_at"]
"#;
        let f: RulesFile = toml::from_str(text).unwrap();
        assert_eq!(f.interface["GET /api/orders"].ignore.len(), 1);
        let back: RulesFile = toml::from_str(&f.to_toml()).unwrap();
        assert_eq!(back, f);
        let rules = Rules::compile(&f).unwrap();
        let v = rules.view("GET /api/orders");
        assert_eq!(
            v.ignored(&Path::parse("body:$.items[2].updated_at").unwrap()),
            Some(Ignored::Rule)
        );
        assert_eq!(
            v.ignored(&Path::parse("header:date").unwrap()),
            Some(Ignored::Builtin)
        );
        assert_eq!(
            rules
                .view("GET /other")
                .ignored(&Path::parse("body:$.items[2].updated_at").unwrap()),
            None
        );
        assert!(v.unordered(&Path::parse("result:$.sets[0].rows").unwrap()));
        assert!(toml::from_str::<RulesFile>("bogus = 1").is_err());
        let bad = RulesFile {
            ignore: vec!["body:nope".into()],
            ..RulesFile::default()
        };
        assert!(matches!(
            Rules::compile(&bad),
            Err(ReplayError::BadRule { .. })
        ));
    }
}
